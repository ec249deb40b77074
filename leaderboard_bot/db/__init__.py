"""The database: peewee models, migrations, and the one place that runs SQL."""

from . import repository
from .repository import ActivityBatch, Board, RankedEntry, SeasonRoll, SessionClose, SessionOpen
from .storage import Storage, open_database

__all__ = [
    "ActivityBatch",
    "Board",
    "RankedEntry",
    "SeasonRoll",
    "SessionClose",
    "SessionOpen",
    "Storage",
    "open_database",
    "repository",
]
