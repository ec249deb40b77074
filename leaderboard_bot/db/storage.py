"""Opening the database and running blocking peewee work off the event loop.

SQLite has one write lock, and peewee connections are per thread, so all database work runs
on one dedicated worker thread: no "database is locked" fights, no blocking of the event loop.

Nothing made on that thread reaches the loop except plain results and :class:`StorageError`:
a failed query's exception holds frames that hold a ``sqlite3.Cursor``, and freeing that cursor
on the loop thread waits for the connection mutex the database thread holds through its busy
timeout. So errors are translated, and their frames cleared, on the database thread.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import ParamSpec, TypeVar

from peewee import SqliteDatabase

from ..config import sqlite_path
from ..worker import DaemonWorker
from .migrations import SchemaTooNew, migrate
from .models import database_proxy
from .repository import LeaseLost

P = ParamSpec("P")
T = TypeVar("T")

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",  # safe with WAL: a power cut may lose the last commit, never corrupt
    "foreign_keys": 1,
    # A season of a million members is ~150 MB of file, of which a flush and the ranks touch the
    # totals, their primary key and two board indexes (~100 MB). 64 MB of SQLite's own cache (filled
    # only as pages are read) keeps the hot index pages; mmap serves the rest of reads straight from
    # the OS page cache (no copy into SQLite's cache, memory the kernel can take back) instead of a
    # read() per page. Writes still go through the WAL, so a full disk is still an error, not SIGBUS.
    "cache_size": -64_000,
    "mmap_size": 256 * 1024 * 1024,
    "temp_store": "memory",
}
# PRAGMA optimize runs ANALYZE where the planner would gain from it; the limit bounds each table's
# analysis to a sample, so it stays a few milliseconds on a huge file (at open and at close).
OPTIMIZE_ANALYSIS_LIMIT = 1000
BUSY_TIMEOUT_SECONDS = 5.0
INTEGRITY_CHECK_SECONDS = 20.0  # a quick_check of a huge file stops here rather than delay the start


class StorageError(Exception):
    """A database failure, described in words, carrying nothing from the database thread."""

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind  # "locked", "disk full", "damaged", "newer schema", "read-only", "error"

    @classmethod
    def describe(cls, error: BaseException) -> StorageError:
        cause = _real_cause(error)
        text = str(cause) or type(cause).__name__
        lowered = text.lower()
        if isinstance(cause, SchemaTooNew):
            kind = "newer schema"
        elif isinstance(cause, LeaseLost):
            kind = "lease lost"
        elif "locked" in lowered or "busy" in lowered:
            kind = "locked"
        elif "disk is full" in lowered or (isinstance(cause, OSError) and cause.errno == errno.ENOSPC):
            kind = "disk full"
        elif "malformed" in lowered or "not a database" in lowered:
            kind = "damaged"
        elif "readonly" in lowered or "read-only" in lowered:
            kind = "read-only"
        else:
            kind = "error"
        return cls(f"{type(cause).__name__}: {text}", kind=kind)

    @property
    def advice(self) -> str:
        return {
            "locked": "another program (a backup, an admin shell) holds the database's write lock",
            "disk full": "the disk is full: free some space; counting resumes by itself",
            "read-only": "the database file or its folder is not writable by the bot",
            "damaged": "the database file is damaged: restore a backup",
            "newer schema": "the database was made by a newer version of leaderboard-bot: upgrade the bot",
            "lease lost": "another instance of the bot counts for this server now",
        }.get(self.kind, "")


class DatabaseDamaged(StorageError):
    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"the database file {path} is damaged ({detail}). Nothing was written to it. Stop the bot, move "
            f"{path} (and any {path}-wal, {path}-shm) aside, copy your latest backup to {path}, then start again",
            kind="damaged",
        )


def _real_cause(error: BaseException) -> BaseException:
    """peewee's rollback after a failed statement can fail too ("cannot rollback - no transaction
    is active" once SQLite rolled back by itself, as on a full disk): report what failed first."""
    seen = error
    while "cannot rollback" in str(seen) and seen.__context__ is not None:
        seen = seen.__context__
    return seen


def _release(error: BaseException) -> None:
    """Drop every frame (and so every cursor) an exception chain holds, on this thread."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if item.__traceback__ is not None:
            traceback.clear_frames(item.__traceback__)
            item.__traceback__ = None
        stack.extend((item.__context__, item.__cause__))


def _guarded(func: Callable[[], T]) -> T:
    try:
        return func()
    except Exception as error:  # every failure is translated, none escapes raw
        clean = StorageError.describe(error)
        _release(error)
    raise clean  # outside the except block: no __context__ pointing back at the original


def check_integrity(path: str, budget: float = INTEGRITY_CHECK_SECONDS) -> None:
    """``PRAGMA quick_check`` on a read-only connection (nothing is written to a damaged file).
    Raises DatabaseDamaged; a check that runs out of time is abandoned, not failed."""
    if path == ":memory:" or not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    deadline = time.monotonic() + budget
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS)
    except sqlite3.Error as error:
        raise DatabaseDamaged(path, str(error)) from None
    try:
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            rows = conn.execute("PRAGMA quick_check(5)").fetchall()
        except sqlite3.OperationalError as error:
            if "interrupted" in str(error):
                from loguru import logger

                logger.warning("the integrity check of {} took over {:.0f}s and was skipped", path, budget)
                return
            if "locked" in str(error) or "busy" in str(error):
                return  # held by another program: the instance lock and the flushes deal with that
            raise DatabaseDamaged(path, str(error)) from None
        except sqlite3.DatabaseError as error:
            raise DatabaseDamaged(path, str(error)) from None
        # SQLite's report can span lines ("*** in database main ***\nPage 5: ..."): keep it one line.
        problems = [" ".join(str(r[0]).split()) for r in rows if r and r[0] != "ok"]
        if problems:
            raise DatabaseDamaged(path, "; ".join(problems)[:300])
    finally:
        conn.close()


def open_database(database_url: str) -> SqliteDatabase:
    """Check, connect, set pragmas and migrate to the latest schema (blocking)."""
    path = sqlite_path(database_url)
    if path != ":memory:":
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        check_integrity(path)
    db = SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    database_proxy.initialize(db)
    db.connect(reuse_if_open=True)
    migrate(db)
    optimize(db)
    return db


def optimize(db: SqliteDatabase) -> None:
    """Let SQLite refresh its planner statistics (sampled): the bot never runs ANALYZE itself."""
    db.execute_sql(f"PRAGMA analysis_limit = {OPTIMIZE_ANALYSIS_LIMIT}")
    db.execute_sql("PRAGMA optimize")


class Storage:
    """Owns the database, the one thread every write runs on, and a reader thread.

    The reader has its own connection (peewee keeps one per thread): in WAL mode it reads the last
    commit while a write waits on a lock, so a write stuck behind a backup never holds up a
    command, and a long read never delays a write. An in-memory database is one connection, so
    there reads share the database thread.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._thread = DaemonWorker("leaderboard-db", wrap=_guarded)
        self._reader: DaemonWorker | None = None
        self._db: SqliteDatabase | None = None
        self._closed = False

    async def open(self) -> None:
        if self._db is not None:
            return  # already open (a standby opens it before it knows its role)
        self._db = await self.run(open_database, self.database_url)
        if sqlite_path(self.database_url) != ":memory:":
            self._reader = DaemonWorker("leaderboard-db-read", wrap=_guarded)

    async def read(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the read-only ``func`` on the reader thread (it must not write: SQLite has one
        writer, the database thread); failures arrive as :class:`StorageError`."""
        if self._closed:
            raise StorageError("the database is closed")
        if self._reader is None:
            return await self._thread.run(partial(func, *args, **kwargs))
        return await self._reader.run(partial(func, *args, **kwargs))

    def _close_reader_connection(self) -> None:
        if self._db is not None and not self._db.is_closed():
            self._db.close()  # this thread's connection only

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func`` on the database thread; failures arrive as :class:`StorageError`."""
        if self._closed:
            raise StorageError("the database is closed")
        return await self._thread.run(partial(func, *args, **kwargs))

    def _close_db(self) -> None:
        if self._db is not None and not self._db.is_closed():
            try:
                # What this run's queries taught the planner, for the next start; ANALYZE writes, so
                # a lock held elsewhere makes it give up at once rather than stretch the close.
                self._db.execute_sql("PRAGMA busy_timeout = 100")
                optimize(self._db)
            except Exception as error:  # a busy or read-only file must not stop the close
                from loguru import logger

                logger.debug("PRAGMA optimize at close skipped: {}", error)
            self._db.close()

    async def close(self, wait: float = 2.0) -> bool:
        """Close the database; gives up after ``wait`` seconds if a query is stuck (the thread is
        a daemon, so the process can still exit). Returns whether it closed cleanly."""
        closed = True
        if self._closed:
            return True
        if self._db is not None:
            if self._reader is not None:
                try:
                    await asyncio.wait_for(self._reader.run(self._close_reader_connection), wait / 2)
                except (TimeoutError, StorageError):
                    closed = False
            try:
                await asyncio.wait_for(self.run(self._close_db), wait)
            except (TimeoutError, StorageError):
                closed = False
            self._db = None
        self._closed = True
        reader_stopped = self._reader is None or self._reader.stop(0.5 if closed else 0.0)
        return self._thread.stop(0.5 if closed else 0.0) and reader_stopped and closed
