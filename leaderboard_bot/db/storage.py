"""Opening the database and running blocking peewee work off the event loop.

SQLite has one write lock, and peewee connections are per thread, so all database work runs
on one dedicated worker thread: no "database is locked" fights, no blocking of the event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

from peewee import SqliteDatabase

from ..config import sqlite_path
from .migrations import migrate
from .models import database_proxy

P = ParamSpec("P")
T = TypeVar("T")

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",  # safe with WAL: a power cut may lose the last commit, never corrupt
    "foreign_keys": 1,
    "cache_size": -16_000,  # 16 MB page cache
    "temp_store": "memory",
}
BUSY_TIMEOUT_SECONDS = 5.0  # also bounds how long a shutdown waits for a locked database


def open_database(database_url: str) -> SqliteDatabase:
    """Connect, set pragmas and migrate to the latest schema (blocking)."""
    path = sqlite_path(database_url)
    if path != ":memory:":
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
    db = SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    database_proxy.initialize(db)
    db.connect(reuse_if_open=True)
    migrate(db)
    return db


class Storage:
    """Owns the database and the single thread every query runs on."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leaderboard-db")
        self._db: SqliteDatabase | None = None

    async def open(self) -> None:
        self._db = await self.run(open_database, self.database_url)

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(func, *args, **kwargs))

    def _close_db(self) -> None:
        if self._db is not None and not self._db.is_closed():
            self._db.close()

    async def close(self) -> None:
        if self._db is not None:
            await self.run(self._close_db)
            self._db = None
        self._executor.shutdown(wait=True)
