"""The database: peewee models, migrations, and the one place that runs SQL."""

from . import repository
from .storage import Storage, open_database

__all__ = ["Storage", "open_database", "repository"]
