"""Opening the database and running blocking peewee work off the event loop.

SQLite has one write lock, and peewee connections are per thread, so all writes run on one
dedicated worker thread: no "database is locked" fights, no blocking of the event loop. With
PostgreSQL (``postgresql://``, the ``postgres`` extra) writes keep that one thread, so they commit
in the order they were asked for, and reads get a few threads; every job borrows a connection
from peewee's pool for its duration (a connection the server dropped is replaced at the next).

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
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any, ParamSpec, TypeVar

from peewee import Database, SqliteDatabase
from playhouse.pool import PooledPostgresqlDatabase  # type: ignore[import-untyped]  # untyped module

from ..config import is_postgres, postgres_url, sqlite_path
from ..worker import DaemonWorker
from .migrations import SchemaTooNew, migrate
from .models import database_proxy
from .repository import SNAPSHOT_ISOLATION, LeaseLost

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
    # The flush's TEMP tables (repository.apply_batch) are emptied at its end: with this (set before
    # the temp database holds anything) their pages are given back, not kept on its free list (5 MB
    # after a flush of 100,000 members).
    "temp.auto_vacuum": "full",
}
# The connection opened by open_database is the writer's (Storage opens it on its database thread).
# It reads through its own cache only: every page a write changes is copied into that cache anyway,
# and pages it also mapped would count twice in the process's resident memory (once mapped, once
# copied: 25 MB after a flush of 100,000 new members into a season and its four windows). Readers
# keep the map. Measured: no change to the flush's time.
WRITER_MMAP_SIZE = 0
# PRAGMA optimize runs ANALYZE where the planner would gain from it; the limit bounds each table's
# analysis to a sample, so it stays a few milliseconds on a huge file (at open and at close).
OPTIMIZE_ANALYSIS_LIMIT = 1000
BUSY_TIMEOUT_SECONDS = 5.0
INTEGRITY_CHECK_SECONDS = 20.0  # a quick_check of a huge file stops here rather than delay the start

# PostgreSQL: the writer thread and POSTGRES_READERS reader threads each hold at most one pooled
# connection at a time. Reads are short index walks (a few ms at a million members), so three
# serve a burst of commands while a flush writes; one spare for a job that outlives a close.
POSTGRES_READERS = 3
POSTGRES_POOL_SIZE = 1 + POSTGRES_READERS + 1
POSTGRES_CONNECT_SECONDS = 10
# A write waits this long for a row lock another session holds (SQLite's busy timeout's match).
POSTGRES_LOCK_TIMEOUT_MS = int(BUSY_TIMEOUT_SECONDS * 1000)
# SQLSTATE classes and codes that name a failure the owner can act on.
_POSTGRES_KINDS = {
    "55P03": "locked",  # lock_not_available (lock_timeout)
    "40P01": "locked",  # deadlock_detected
    "53100": "disk full",
    "25006": "read-only",  # read_only_sql_transaction (a standby server)
    "XX001": "damaged",  # data_corrupted
    "XX002": "damaged",  # index_corrupted
}


class StorageError(Exception):
    """A database failure, described in words, carrying nothing from the database thread."""

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind  # "locked", "disk full", "damaged", "newer schema", "read-only", "i/o", "error"

    @classmethod
    def describe(cls, error: BaseException) -> StorageError:
        cause = _real_cause(error)
        if isinstance(cause, StorageError):  # already in words
            return cls(str(cause), kind=cause.kind)
        text = str(cause) or type(cause).__name__
        lowered = text.lower()
        sqlstate = _sqlstate(error)
        if isinstance(cause, SchemaTooNew):
            kind = "newer schema"
        elif isinstance(cause, LeaseLost):
            kind = "lease lost"
        elif sqlstate is not None and (sqlstate in _POSTGRES_KINDS or sqlstate.startswith("08")):
            kind = _POSTGRES_KINDS.get(sqlstate, "unreachable")  # class 08: connection exception
        elif "connection" in lowered and ("refused" in lowered or "closed" in lowered or "server" in lowered):
            kind = "unreachable"  # psycopg reports a failed connect without a SQLSTATE
        elif "locked" in lowered or "busy" in lowered:
            kind = "locked"
        elif "disk is full" in lowered or (isinstance(cause, OSError) and cause.errno == errno.ENOSPC):
            kind = "disk full"
        elif "malformed" in lowered or "not a database" in lowered:
            kind = "damaged"
        elif "readonly" in lowered or "read-only" in lowered:
            kind = "read-only"
        elif "disk i/o error" in lowered:
            kind = "i/o"
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
            "i/o": "the file system refused the write (the file or its -wal made read-only or immutable, a "
            "failing disk, a network drive gone): check them; counting resumes by itself",
            "newer schema": "the database was made by a newer version of leaderboard-bot: upgrade the bot",
            "lease lost": "another instance of the bot counts for this server now",
            "unreachable": "the PostgreSQL server cannot be reached: is it running, and are the host, port "
            "and password in DATABASE_URL right?",
            "replaced": "counting goes on in memory and in the recovery file beside it; restart the bot to "
            "use the file now at that path (a new one if there is none): what was counted meanwhile is "
            "written there",
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


def _sqlstate(error: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of a failure (psycopg 3: ``sqlstate``, psycopg2: ``pgcode``), if any;
    peewee wraps the driver's exception, so its chain is searched."""
    seen: set[int] = set()
    item: BaseException | None = error
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        code = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
        if isinstance(code, str):
            return code
        item = item.__cause__ or item.__context__
    return None


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


WAL_FILES = ("-wal", "-shm")  # SQLite's companions of a database file in WAL mode


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


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
    if os.path.isdir(path):
        raise StorageError(
            f"{path} is a folder, not a database file: name a file in it, e.g. sqlite:///{path.rstrip('/')}/leaderboard.db"
        )
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


def open_database(database_url: str) -> Database:
    """Check, connect, set pragmas and migrate to the latest schema (blocking)."""
    if is_postgres(database_url):
        return open_postgres(database_url)
    path = sqlite_path(database_url)
    if path != ":memory:":
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        check_integrity(path)
    db = SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    database_proxy.initialize(db)
    db.connect(reuse_if_open=True)
    db.execute_sql(f"PRAGMA mmap_size = {WRITER_MMAP_SIZE}")
    migrate(db)
    optimize(db)
    return db


def open_postgres(database_url: str) -> PostgresDatabase:
    """The pooled PostgreSQL database, migrated; the connection used to migrate goes back to the
    pool. There is no integrity check: the server owns its files (``amcheck`` is the tool)."""
    db = PostgresDatabase(
        postgres_url(database_url),
        max_connections=POSTGRES_POOL_SIZE,
        stale_timeout=3600,  # recycled hourly: a server-side idle limit never catches one mid-job
        timeout=POSTGRES_CONNECT_SECONDS,  # waiting for a free connection
        prefer_psycopg3=True,
        connect_timeout=POSTGRES_CONNECT_SECONDS,
        application_name="leaderboard-bot",
        options=f"-c lock_timeout={POSTGRES_LOCK_TIMEOUT_MS}",
    )
    database_proxy.initialize(db)
    db.connect(reuse_if_open=True)
    try:
        migrate(db)
    finally:
        db.close()
    return db


_reading = threading.local()  # set on Storage's reader threads


class PostgresDatabase(PooledPostgresqlDatabase):  # type: ignore[misc]  # untyped base
    """peewee's pooled PostgreSQL database; a transaction begun on a reader thread is a snapshot
    (REPEATABLE READ, READ ONLY), so every read transaction sees one commit, however it was begun."""

    def begin(self, isolation_level: Any = None) -> None:
        if isolation_level is None and getattr(_reading, "active", False):
            isolation_level = SNAPSHOT_ISOLATION
        super().begin(isolation_level)


def _pooled(db: Database, func: Callable[[], T]) -> T:
    """Run ``func`` on a connection borrowed from the pool for this job only."""
    db.connect(reuse_if_open=True)
    try:
        return func()
    finally:
        db.close()  # back to the pool; one left in a transaction is rolled back first


def optimize(db: SqliteDatabase) -> None:
    """Let SQLite refresh its planner statistics (sampled): the bot never runs ANALYZE itself."""
    db.execute_sql(f"PRAGMA analysis_limit = {OPTIMIZE_ANALYSIS_LIMIT}")
    db.execute_sql("PRAGMA optimize")


class Storage:
    """Owns the database, the one thread every write runs on, and the reader threads.

    A reader has its own connection (peewee keeps one per thread): in WAL mode it reads the last
    commit while a write waits on a lock, so a write stuck behind a backup never holds up a
    command, and a long read never delays a write. An in-memory database is one connection, so
    there reads share the database thread. PostgreSQL gets POSTGRES_READERS readers, each job on a
    pooled connection; a read asked for after a write returned sees that write (it committed
    before the write's result reached the loop), which is all the ranking cache relies on.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.postgres = is_postgres(database_url)
        self._thread = DaemonWorker("leaderboard-db", wrap=self._job)
        self._readers: list[DaemonWorker] = []
        self._pending: dict[int, int] = {}  # reads queued or running, per reader
        self._db: Database | None = None
        self._closed = False
        self._file: tuple[str, tuple[int, int] | None] | None = None  # a SQLite file: (path, its identity)
        self._companions: dict[str, tuple[int, int] | None] = {}  # its -wal and -shm as opened
        self._wal_lost = False  # the -wal was deleted under us: every write is checkpointed at once
        self._copy_pending = False  # a checkpoint stopped short at a reader's snapshot
        self._copy_queued = False

    def _job(self, func: Callable[[], T]) -> T:
        writing = self._file is not None and not getattr(_reading, "active", False) and func != self._close_db
        if writing:
            self._check_files()
        db = self._db
        if isinstance(db, PooledPostgresqlDatabase) and func != self._close_db:  # closing borrows none
            return _guarded(partial(_pooled, db, func))
        result = _guarded(func)
        if writing and self._wal_lost and func != self._copy_again:
            # The -wal it went to is gone from the folder: into the file now (as far as readers
            # allow; otherwise again once a read ends, see _read_job).
            self._copy_pending = not self._checkpoint()
        return result

    def _copy_again(self) -> None:
        self._copy_queued = False
        self._copy_pending = not self._checkpoint()

    def _checkpoint(self) -> bool:
        """Copy the -wal into the database file, as far as readers allow (PASSIVE: never waits for
        one); True when all of it is there. Never raises: the write before it has committed, and
        a failure here must not make it look failed (it would be written again)."""
        if self._db is None:
            return False
        try:
            busy, frames, copied = self._db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except Exception as error:
            _release(error)
            return False
        return not busy and copied >= frames

    def _read_job(self, func: Callable[[], T]) -> T:
        _reading.active = True
        try:
            return self._job(func)
        finally:
            if self._copy_pending and not self._copy_queued:  # a read held back the last copy
                self._copy_queued = True
                self._thread.submit(self._copy_again)

    async def open(self) -> None:
        if self._db is not None:
            return  # already open (a standby opens it before it knows its role)
        self._db = await self.run(open_database, self.database_url)
        if self.postgres:
            self._readers = [
                DaemonWorker(f"leaderboard-db-read-{n}", wrap=self._read_job) for n in range(POSTGRES_READERS)
            ]
        elif (path := sqlite_path(self.database_url)) != ":memory:":
            self._readers = [DaemonWorker("leaderboard-db-read", wrap=self._read_job)]
            self._file = (path, await self._thread.run(partial(_file_identity, path)))  # a stat: off the loop
            self._companions = {
                suffix: await self._thread.run(partial(_file_identity, path + suffix)) for suffix in WAL_FILES
            }
        self._pending = {id(reader): 0 for reader in self._readers}

    def _check_files(self) -> None:
        """Writes go to the file opened at start. Deleted, or another file moved over it (``mv``),
        while the bot runs, that file is gone once the bot stops: every write then fails, so what
        is counted stays in memory and in the recovery file, for the file at that path. The old
        file's -wal and -shm are moved aside then: SQLite would read them into the file now at that
        path at the next start (a restored backup damaged, or silently undone). (Copied over in
        place, as by ``cp``, it is the same file: that cannot be told, and would be damaged.)

        The -wal deleted under the bot (the file itself still there) holds every write since the
        last checkpoint, reachable only through the bot's open handle: copied into the file at once,
        and after every write from then on, so that a crash loses nothing."""
        assert self._file is not None
        path, identity = self._file
        if identity is not None and _file_identity(path) != identity:
            self._move_companions_aside(path)
            raise StorageError(f"the database file {path} was deleted or replaced while the bot runs", kind="replaced")
        wal = self._companions.get("-wal")
        if not self._wal_lost and wal is not None and _file_identity(path + "-wal") != wal:
            self._wal_lost = True
            copied = self._checkpoint()
            from loguru import logger

            logger.warning(
                "the database's {}-wal file was deleted or replaced while the bot runs: it holds the writes not "
                "yet in the database file, {}; every write is copied there from now on; restart the bot when "
                "convenient",
                path,
                "now copied there" if copied else "copied there as soon as readers allow",
            )

    def _move_companions_aside(self, path: str) -> None:
        for suffix, opened in list(self._companions.items()):
            if opened is None or _file_identity(path + suffix) != opened:
                continue  # not the file this process opened (or already moved)
            aside = f"{path}{suffix}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            from loguru import logger

            try:
                os.replace(path + suffix, aside)
            except OSError as error:
                logger.error(
                    "could not move {}{} aside ({}): it belongs to the database file that was replaced, and "
                    "SQLite would read it into the file now at that path. Move it away before restarting the bot",
                    path,
                    suffix,
                    error,
                )
                self._companions[suffix] = None  # said once
                continue

            logger.warning(
                "moved {}{} aside to {}: it belongs to the database file that was replaced", path, suffix, aside
            )
            self._companions[suffix] = None

    @property
    def database(self) -> Database | None:
        return self._db

    async def read(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the read-only ``func`` on a reader thread (it must not write: SQLite has one
        writer, the database thread); failures arrive as :class:`StorageError`."""
        if self._closed:
            raise StorageError("the database is closed")
        if not self._readers:
            return await self._thread.run(partial(func, *args, **kwargs))
        reader = min(self._readers, key=lambda r: self._pending[id(r)])  # the least busy
        self._pending[id(reader)] += 1
        try:
            return await reader.run(partial(func, *args, **kwargs))
        finally:
            self._pending[id(reader)] -= 1

    def _close_reader_connection(self) -> None:
        if self._db is not None and not self._db.is_closed():
            self._db.close()  # this thread's connection only

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func`` on the database thread; failures arrive as :class:`StorageError`."""
        if self._closed:
            raise StorageError("the database is closed")
        return await self._thread.run(partial(func, *args, **kwargs))

    def _close_db(self) -> None:
        if isinstance(self._db, PooledPostgresqlDatabase):
            self._db.close_all()  # every pooled connection, idle or not: no reader runs any more
            return
        if self._db is not None and not self._db.is_closed():
            try:
                # What this run's queries taught the planner, for the next start; ANALYZE writes, so
                # a lock held elsewhere makes it give up at once rather than stretch the close.
                self._db.execute_sql("PRAGMA busy_timeout = 100")
                optimize(self._db)  # type: ignore[arg-type]
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
            if self._readers and not self.postgres:
                try:
                    await asyncio.wait_for(self._readers[0].run(self._close_reader_connection), wait / 2)
                except (TimeoutError, StorageError):
                    closed = False
            elif self._readers:  # pooled: a reader gives its connection back after each job
                stops = [asyncio.to_thread(reader.stop, wait / 2) for reader in self._readers]
                closed = all(await asyncio.gather(*stops))
            try:
                await asyncio.wait_for(self._thread.run(self._close_db), wait)
            except (TimeoutError, StorageError):
                closed = False
            self._db = None
        self._closed = True
        readers_stopped = all([reader.stop(0.5 if closed else 0.0) for reader in self._readers])
        return self._thread.stop(0.5 if closed else 0.0) and readers_stopped and closed
