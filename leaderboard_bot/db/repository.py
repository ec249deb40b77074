"""Every query the bot runs. All functions are blocking: call them through ``Storage.run``."""

from __future__ import annotations

import json
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain, islice
from operator import itemgetter
from typing import Any

import peewee
from peewee import EXCLUDED, Case, Cast, PostgresqlDatabase, chunked, fn

from ..domain import ALL_TIME, ROLLING_WINDOWS, ActivityBatch, Board, RankedEntry, days_between, shift_day
from .models import (
    BestPlacing,
    DailyActivity,
    Lease,
    MemberName,
    MemberStats,
    Season,
    Setting,
    VoiceSession,
    database_proxy,
)

# SQLite caps bound variables per statement; 5 columns x 100 rows stays far below it.
CHUNK_ROWS = 100
WRITE_SEQUENCE_KEY = "write_sequence"  # the highest numbered batch committed (see services.recovery)
RECOVERY_MARKER_PREFIX = "recovered:"  # format-1 recovery files' applied-markers
WINDOWS_DAY_KEY = "windows_day"  # the day the rolling windows end on (they hold the days up to it)
WINDOWS_ZONE_KEY = "windows_zone"  # the TIMEZONE the bot last started with (its days)
PLACINGS_KEY = "placings_through"  # the last finished season whose placings are in best_placing


# --------------------------------------------------------------------------- writes


def apply_batch(batch: ActivityBatch) -> None:
    """Add a flush's counts, record voice sessions and move the heartbeat, atomically."""
    database = database_proxy.obj
    with database_proxy.atomic():
        if batch.lease is not None:
            renew_lease(batch.guild_id, batch.lease.holder, batch.lease.expires_at, batch.lease.renewed_at)
        # Windows first: built for the first time, they must not already hold this batch.
        days = {day for day, _ in batch.messages} | {day for day, _ in batch.voice}
        last_day = move_windows(batch.guild_id, max(days | ({batch.today} if batch.today else set()), default=None))
        # Each scope the batch adds to: the season, all time, and each rolling window with the part
        # of the batch on its days ((first, last) day; None: all of the batch).
        scopes: list[tuple[int, tuple[str, str] | None]] = [(batch.season, None), (ALL_TIME.scope, None)]
        if last_day is not None and days:
            for window in ROLLING_WINDOWS:
                assert window.days is not None
                first_day = shift_day(last_day, 1 - window.days)
                if all(first_day <= day <= last_day for day in days):  # nearly always: all of it is today's
                    scopes.append((window.scope, None))
                else:
                    scopes.append((window.scope, (first_day, last_day)))
        if isinstance(database, PostgresqlDatabase):
            _add_batch_per_row(batch, scopes)
        else:
            _add_batch_in_sql(batch, scopes, len(days))
        for sessions in chunked(batch.opened, CHUNK_ROWS):
            VoiceSession.insert_many(
                [
                    {
                        "key": s.key,
                        "guild_id": batch.guild_id,
                        "user_id": s.user_id,
                        "channel_id": s.channel_id,
                        "started_at": s.started_at,
                        "last_seen_at": s.started_at,
                    }
                    for s in sessions
                ]
            ).on_conflict_ignore().execute()
        if batch.closed:
            _close_sessions(batch)
        # Every open session has been credited up to this flush: that is its heartbeat.
        VoiceSession.update(last_seen_at=batch.heartbeat_at).where(
            (VoiceSession.guild_id == batch.guild_id) & VoiceSession.ended_at.is_null()
        ).execute()
        if batch.names:
            _write_names(batch)
        if batch.sequence is not None and batch.sequence > int(get_setting(batch.guild_id, WRITE_SEQUENCE_KEY, 0)):
            _set_setting(batch.guild_id, WRITE_SEQUENCE_KEY, batch.sequence)
        if batch.recovery_id is not None:
            _set_setting(batch.guild_id, f"{RECOVERY_MARKER_PREFIX}{batch.recovery_id}", batch.heartbeat_at)
        if batch.roll is not None:
            roll = batch.roll
            roll_season(batch.guild_id, roll.number, roll.ended_at, roll.period, starts_at=roll.next_start)
    if batch.sequence is None:  # (tests, format-1 recovery files) counts moved without a new number
        counts = _ranked.get(database_proxy.obj, {})
        for key in [k for k in counts if k[0] == batch.guild_id]:
            counts.pop(key, None)
    if len(batch.messages) + len(batch.voice) + len(batch.names) >= BIG_FLUSH_ROWS:
        release_memory(database)


def _add_batch_per_row(batch: ActivityBatch, scopes: list[tuple[int, tuple[str, str] | None]]) -> None:
    """PostgreSQL: each scope's and the daily buckets' rows upserted with executemany."""
    messages: dict[int, int] = {}
    voice: dict[int, float] = {}
    for (_, user), count in batch.messages.items():
        messages[user] = messages.get(user, 0) + count
    for (_, user), seconds in batch.voice.items():
        voice[user] = voice.get(user, 0.0) + seconds
    season_key = ("guild_id", "season", "user_id")
    for scope, between in scopes:
        if between is None:
            _add_counters("member_stats", season_key, (batch.guild_id, scope), messages, voice)
        else:
            in_window = _per_member_between(batch, *between)
            _add_counters("member_stats", season_key, (batch.guild_id, scope), *in_window)
    _add_counters("daily_activity", ("guild_id", "day", "user_id"), (batch.guild_id,), batch.messages, batch.voice)


# SQLite: the batch goes once into a TEMP table (in memory, rolled back with the transaction), fed
# lazily (no list of 100,000 rows in Python); each scope's upsert is then one INSERT ... SELECT ...
# ON CONFLICT that SQLite runs without coming back to Python per row. The per-member sums are split
# by shape (1: messages only, 2: voice only, 3: both) so a message-only row's update leaves the voice
# column, and its board index entry, alone (an UPDATE rewrites the index of every column it SETs),
# and kept in member id order within a shape (each insert lands beside the previous one).
_FLUSH_TEMP_TABLES = (
    'CREATE TEMP TABLE IF NOT EXISTS "flush_daily" ("day" TEXT NOT NULL, "user_id" INTEGER NOT NULL, '
    '"messages" INTEGER NOT NULL, "voice_seconds" REAL NOT NULL, PRIMARY KEY ("day", "user_id")) WITHOUT ROWID',
    'CREATE TEMP TABLE IF NOT EXISTS "flush_member" ("shape" INTEGER NOT NULL, "user_id" INTEGER NOT NULL, '
    '"messages" INTEGER NOT NULL, "voice_seconds" REAL NOT NULL, PRIMARY KEY ("shape", "user_id")) WITHOUT ROWID',
)
_ALL_DAYS = ("0000-00-00", "9999-12-31")  # every day name (YYYY-MM-DD) is between these
_SHAPE = 'CASE WHEN "voice_seconds" = 0 THEN 1 WHEN "messages" = 0 THEN 2 ELSE 3 END'
_FILL_MEMBERS_ONE_DAY = (
    f'INSERT INTO temp."flush_member" SELECT {_SHAPE}, "user_id", "messages", "voice_seconds" FROM temp."flush_daily"'
)
_FILL_MEMBERS = (
    f'INSERT INTO temp."flush_member" SELECT {_SHAPE}, "user_id", "messages", "voice_seconds" FROM ('
    'SELECT "user_id", SUM("messages") AS "messages", SUM("voice_seconds") AS "voice_seconds" '
    'FROM temp."flush_daily" WHERE "day" BETWEEN ? AND ? GROUP BY "user_id")'
)
_SHAPE_UPDATES = {
    1: '"messages" = "member_stats"."messages" + excluded."messages"',
    2: '"voice_seconds" = "member_stats"."voice_seconds" + excluded."voice_seconds"',
    3: '"messages" = "member_stats"."messages" + excluded."messages", '
    '"voice_seconds" = "member_stats"."voice_seconds" + excluded."voice_seconds"',
}
_ADD_SCOPE = {
    shape: 'INSERT INTO "member_stats" ("guild_id", "season", "user_id", "messages", "voice_seconds") '
    'SELECT ?, ?, "user_id", "messages", "voice_seconds" FROM temp."flush_member" WHERE "shape" = ? '
    f'ORDER BY "user_id" ON CONFLICT ("guild_id", "season", "user_id") DO UPDATE SET {updates}'
    for shape, updates in _SHAPE_UPDATES.items()
}
# daily_activity has no index beside its key: one statement updates both counters.
_ADD_DAILY = (
    'INSERT INTO "daily_activity" ("guild_id", "day", "user_id", "messages", "voice_seconds") '
    'SELECT ?, "day", "user_id", "messages", "voice_seconds" FROM temp."flush_daily" WHERE true '
    'ORDER BY "day", "user_id" ON CONFLICT ("guild_id", "day", "user_id") DO UPDATE SET '
    '"messages" = "daily_activity"."messages" + excluded."messages", '
    '"voice_seconds" = "daily_activity"."voice_seconds" + excluded."voice_seconds"'
)


def _daily_rows(batch: ActivityBatch) -> Iterator[tuple[str, int, int, float]]:
    """(day, user, messages, voice seconds) per (day, user) key of the batch, made one at a time."""
    messages, voice = batch.messages, batch.voice
    for key, count in messages.items():
        yield key[0], key[1], count, voice.get(key, 0.0)
    for key, seconds in voice.items():
        if key not in messages:
            yield key[0], key[1], 0, seconds


# The most rows one multi-row INSERT carries (fewer when SQLite allows fewer bound variables).
# sqlite3 lets go of the GIL around every statement it runs, and executemany runs one per row: while
# the event loop is busy (a burst, exactly when a flush is big) each row then waits up to the switch
# interval for the GIL to come back. 100,000 rows took 24 s that way instead of 0.1 s (bench/README.md,
# "the flush under load"). Not more: sqlite3 keeps each statement text it ran prepared (its statement
# cache, 128 per connection), and a prepared statement of 5,000 rows holds about 2.3 MB of SQLite's
# memory; a statement of 1,024 four-value rows about 0.5 MB.
MULTI_ROW_INSERT_ROWS = 1_024


def _statement_sizes(count: int, per: int) -> Iterator[int]:
    """How many rows each statement carries for ``count`` rows: ``per`` at a time, the rest in
    powers of two. Only these few distinct statement texts are ever prepared (and cached), whatever
    the counts: at most one more than the bits of ``per`` for each kind of insert."""
    while count >= per:
        yield per
        count -= per
    bit = 1 << max(count.bit_length() - 1, 0)
    while count:
        if count & bit:
            yield bit
            count -= bit
        bit >>= 1


def _insert_rows(cursor: Any, head: str, width: int, rows: Iterable[tuple[Any, ...]], tail: str = "") -> None:
    """SQLite: ``head VALUES (?, ...), ... tail`` over ``rows`` (each ``width`` values), many rows
    per statement, the rows taken from ``rows`` as they go (never all of them in a list)."""
    limit = cursor.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per = max(1, min(MULTI_ROW_INSERT_ROWS, limit // width))
    row = "(" + ", ".join(["?"] * width) + ")"
    texts: dict[int, str] = {}
    source = iter(rows)
    while chunk := list(islice(source, per)):
        if any(len(values) != width for values in chunk):  # it would shift later values into other columns
            raise ValueError(f"rows for {head!r} must each have {width} values")
        params = list(chain.from_iterable(chunk))
        start = 0
        for size in _statement_sizes(len(params) // width, per):
            text = texts.get(size)
            if text is None:
                text = texts[size] = f"{head} VALUES {', '.join([row] * size)}{tail}"
            end = start + size * width
            cursor.execute(text, params if start == 0 and end == len(params) else params[start:end])
            start = end


def _add_batch_in_sql(batch: ActivityBatch, scopes: list[tuple[int, tuple[str, str] | None]], days: int) -> None:
    if not (batch.messages or batch.voice):
        return
    database = database_proxy.obj
    with _PEEWEE_ERRORS:  # the same error types as peewee's own queries raise
        cursor = database.cursor()
        try:
            for sql in _FLUSH_TEMP_TABLES:
                cursor.execute(sql)
            cursor.execute('DELETE FROM temp."flush_daily"')
            cursor.execute('DELETE FROM temp."flush_member"')
            _insert_rows(cursor, 'INSERT INTO temp."flush_daily"', 4, _daily_rows(batch))
            filled: tuple[str, str] | None = None
            # The scopes taking the whole batch first, then any window taking only part of it (rare:
            # a batch across midnight), each after the per-member sums of its days; in scope order,
            # so that new rows are appended to each B-tree rather than inserted into its middle.
            for scope, between in sorted(scopes, key=lambda s: (s[1] is not None, s[0])):
                wanted = between or _ALL_DAYS
                if filled != wanted:
                    if filled is not None:
                        cursor.execute('DELETE FROM temp."flush_member"')
                    if between is None and days == 1:
                        cursor.execute(_FILL_MEMBERS_ONE_DAY)  # one row per member already
                    else:
                        cursor.execute(_FILL_MEMBERS, wanted)
                    filled = wanted
                for shape, sql in _ADD_SCOPE.items():
                    cursor.execute(sql, (batch.guild_id, scope, shape))
            cursor.execute(_ADD_DAILY, (batch.guild_id,))
            cursor.execute('DELETE FROM temp."flush_daily"')
            cursor.execute('DELETE FROM temp."flush_member"')
        finally:
            cursor.close()


_CLOSE_SESSION = (
    'UPDATE "voice_session" SET "ended_at" = %s, "last_seen_at" = %s WHERE "key" = %s AND "ended_at" IS NULL'
)
_CLOSED_TEMP_TABLE = (
    'CREATE TEMP TABLE IF NOT EXISTS "flush_closed" ("key" TEXT NOT NULL PRIMARY KEY, "ended_at" REAL NOT NULL) '
    "WITHOUT ROWID"
)
_CLOSE_SESSIONS = (
    'UPDATE "voice_session" SET ("ended_at", "last_seen_at") = (SELECT c."ended_at", c."ended_at" '
    'FROM temp."flush_closed" AS c WHERE c."key" = "voice_session"."key") '
    'WHERE "ended_at" IS NULL AND "key" IN (SELECT "key" FROM temp."flush_closed")'
)


def _close_sessions(batch: ActivityBatch) -> None:
    """End the batch's closed sessions (a session already ended keeps its end): on SQLite in one
    statement from a TEMP table filled many rows at a time (see _insert_rows: a mass disconnect is
    thousands of sessions), on PostgreSQL with executemany (psycopg pipelines it)."""
    database = database_proxy.obj
    with _PEEWEE_ERRORS:
        cursor = database.cursor()
        try:
            if isinstance(database, PostgresqlDatabase):
                cursor.executemany(_CLOSE_SESSION, ((c.ended_at, c.ended_at, c.key) for c in batch.closed))
                return
            cursor.execute(_CLOSED_TEMP_TABLE)
            cursor.execute('DELETE FROM temp."flush_closed"')
            # OR IGNORE: as the statement per session did, the first end given for a session holds.
            _insert_rows(
                cursor, 'INSERT OR IGNORE INTO temp."flush_closed"', 2, ((c.key, c.ended_at) for c in batch.closed)
            )
            cursor.execute(_CLOSE_SESSIONS)
            cursor.execute('DELETE FROM temp."flush_closed"')
        finally:
            cursor.close()


_NAME_INSERT = 'INSERT INTO "member_name" ("guild_id", "user_id", "display_name", "username", "updated_at")'
_NAME_CONFLICT = (
    ' ON CONFLICT ("guild_id", "user_id") DO UPDATE SET '
    '"display_name" = excluded."display_name", "username" = excluded."username", "updated_at" = excluded."updated_at"'
)


def _write_names(batch: ActivityBatch) -> None:
    """The batch's names upserted, over rows made one at a time: on SQLite many rows per statement,
    on PostgreSQL one prepared statement run with executemany (psycopg pipelines it)."""
    database = database_proxy.obj
    names, guild_id, at = batch.names, batch.guild_id, batch.heartbeat_at
    # In member order: two writers (processes) that take row locks in one order never deadlock.
    rows = ((guild_id, user, names[user][0][:255], names[user][1] or None, at) for user in sorted(names))
    with _PEEWEE_ERRORS:
        cursor = database.cursor()
        try:
            if isinstance(database, PostgresqlDatabase):
                p = database.param
                cursor.executemany(f"{_NAME_INSERT} VALUES ({p}, {p}, {p}, {p}, {p}){_NAME_CONFLICT}", rows)
            else:
                _insert_rows(cursor, _NAME_INSERT, 5, rows, _NAME_CONFLICT)
        finally:
            cursor.close()


# After a flush of this many rows (a burst of new members), the writer connection's page cache
# (filled by the upserts, all clean once committed) and the memory the C allocator keeps free are
# handed back to the system: the next small flush reads the few pages it needs again.
BIG_FLUSH_ROWS = 10_000
# glibc raises its mmap threshold each time it frees a large mapped block (up to 32 MB), after which
# large blocks (the table of a 100,000-entry dict: a few MB) come from the heap and stay there once
# freed. Fixed at its default, they are mapped and unmapped: given back as soon as they are freed.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_libc: list[Any] = []


def release_memory(database: Any) -> None:
    """SQLite's shrink_memory on this connection, then glibc's malloc_trim (outside a transaction)."""
    if isinstance(database, PostgresqlDatabase) or database.in_transaction():
        return
    database.execute_sql("PRAGMA shrink_memory")
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc() -> Any:
    """The C library when it is glibc (malloc_trim, mallopt), else None; the mmap threshold is
    fixed the first time."""
    if not _libc:
        libc: Any = None
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.malloc_trim, libc.mallopt  # noqa: B018  # both exist: glibc
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        except (OSError, AttributeError):
            libc = None
        _libc.append(libc)
    return _libc[0]


def _per_member_between(batch: ActivityBatch, first_day: str, last_day: str) -> tuple[dict[int, int], dict[int, float]]:
    """The batch's counts on days from ``first_day`` to ``last_day``, per member."""
    messages: dict[int, int] = {}
    voice: dict[int, float] = {}
    for (day, user), count in batch.messages.items():
        if first_day <= day <= last_day:
            messages[user] = messages.get(user, 0) + count
    for (day, user), seconds in batch.voice.items():
        if first_day <= day <= last_day:
            voice[user] = voice.get(user, 0.0) + seconds
    return messages, voice


# Rolling windows (today, week, month) are rows of member_stats under their scope numbers, each
# the sum of the daily buckets of its days up to WINDOWS_DAY_KEY. Moving to a later day subtracts
# the buckets of the days that fell out (or empties a window the gap outran): per expired day, one
# statement over the members active that day. A voice total left a rounding error above zero by the
# subtraction is set to zero (below VOICE_EPSILON: nobody earns a millisecond), and rows left
# with nothing are deleted, so the board's "value above zero" stays the test of being ranked.
VOICE_EPSILON = 0.001


def move_windows(guild_id: int, day: str | None) -> str | None:
    """Move the rolling windows on to ``day`` (never back); the day they end on afterwards. The
    first call builds them from the daily buckets (see :func:`rebuild_windows`)."""
    with database_proxy.atomic():
        last_day = windows_day(guild_id)
        if last_day is None:
            if day is None:
                return None
            rebuild_windows(guild_id, day)
            return day
        if day is None or day <= last_day:
            return last_day
        gap = days_between(last_day, day)
        for window in ROLLING_WINDOWS:
            assert window.days is not None
            if gap >= window.days:
                MemberStats.delete().where(
                    (MemberStats.guild_id == guild_id) & (MemberStats.season == window.scope)
                ).execute()
                continue
            for k in range(gap):
                _subtract_day(guild_id, window.scope, shift_day(last_day, k + 1 - window.days))
            _drop_emptied(guild_id, window.scope)
        _set_setting(guild_id, WINDOWS_DAY_KEY, day)
        return day


def windows_day(guild_id: int) -> str | None:
    """The day the stored rolling windows end on (None before they are first built)."""
    day = get_setting(guild_id, WINDOWS_DAY_KEY)
    return None if day is None else str(day)


def prepare_windows(guild_id: int, day: str, zone: str = "UTC") -> bool:
    """At start: build the windows if they are new, or move them on to ``day`` (a bot that was
    down over midnight). True if they were built. Windows ending after ``day`` because TIMEZONE
    moved west (``zone`` is not the one they were moved in) are built again for ``day``: they
    never move back, and a write adds to them only days up to the one they end on (today's counts
    would be left out of today until the old day came round). A clock merely behind (not yet
    synchronised at boot) leaves them as they are: rebuilt, they would lose the later day's counts."""
    with database_proxy.atomic():
        stored = windows_day(guild_id)
        moved_west = stored is not None and stored > day and get_setting(guild_id, WINDOWS_ZONE_KEY) not in (None, zone)
        built = stored is None or moved_west
        if moved_west:
            rebuild_windows(guild_id, day)
        else:
            move_windows(guild_id, day)
        _set_setting(guild_id, WINDOWS_ZONE_KEY, zone)
    counts = _ranked.get(database_proxy.obj, {})
    for key in [k for k in counts if k[0] == guild_id and k[1] < 0]:
        counts.pop(key, None)  # moved without a new write number
    return built


def _subtract_day(guild_id: int, scope: int, day: str) -> None:
    database = database_proxy.obj
    p = database.param
    database.execute_sql(
        'UPDATE "member_stats" SET "messages" = "member_stats"."messages" - d."messages", '
        '"voice_seconds" = "member_stats"."voice_seconds" - d."voice_seconds" '
        'FROM "daily_activity" AS d '
        f'WHERE "member_stats"."guild_id" = {p} AND "member_stats"."season" = {p} '
        f'AND d."guild_id" = {p} AND d."day" = {p} AND d."user_id" = "member_stats"."user_id"',
        (guild_id, scope, guild_id, day),
    )


def _drop_emptied(guild_id: int, scope: int) -> None:
    in_scope = (MemberStats.guild_id == guild_id) & (MemberStats.season == scope)
    MemberStats.update(voice_seconds=0.0).where(
        in_scope & (MemberStats.voice_seconds < VOICE_EPSILON) & (MemberStats.voice_seconds != 0)
    ).execute()
    # "voice_seconds + 0" keeps SQLite off the voice board's index (which would walk every member
    # without voice time, most of them) and on the messages one's short range of rows at zero.
    MemberStats.delete().where(
        in_scope & (MemberStats.messages <= 0) & ((MemberStats.voice_seconds + 0) <= 0)
    ).execute()


def rebuild_windows(guild_id: int, day: str) -> None:
    """Build every window from what is stored: the rolling ones from the daily buckets of their
    days up to ``day``, all-time from the seasons' totals. Run once, when the windows are new."""
    database = database_proxy.obj
    p = database.param
    with database_proxy.atomic():
        MemberStats.delete().where((MemberStats.guild_id == guild_id) & (MemberStats.season < 0)).execute()
        for window in ROLLING_WINDOWS:
            assert window.days is not None
            database.execute_sql(
                'INSERT INTO "member_stats" ("guild_id", "season", "user_id", "messages", "voice_seconds") '
                f'SELECT {p}, {p}, "user_id", SUM("messages"), SUM("voice_seconds") FROM "daily_activity" '
                f'WHERE "guild_id" = {p} AND "day" BETWEEN {p} AND {p} GROUP BY "user_id" ORDER BY "user_id"',
                (guild_id, window.scope, guild_id, shift_day(day, 1 - window.days), day),
            )
        database.execute_sql(
            'INSERT INTO "member_stats" ("guild_id", "season", "user_id", "messages", "voice_seconds") '
            f'SELECT {p}, {p}, "user_id", SUM("messages"), SUM("voice_seconds") FROM "member_stats" '
            f'WHERE "guild_id" = {p} AND "season" > 0 GROUP BY "user_id" ORDER BY "user_id"',
            (guild_id, ALL_TIME.scope, guild_id),
        )
        _set_setting(guild_id, WINDOWS_DAY_KEY, day)


# PostgreSQL (see _add_batch_per_row): one prepared statement per shape, run with executemany:
# peewee would build the SQL of every 100-row chunk in Python (about half of a 100,000-member
# flush, holding the GIL). Rows are split by
# which counters moved, so a message-only row does not rewrite the voice board's index entry (an
# UPDATE rewrites the index of every column it SETs).
_COUNTERS = ("messages", "voice_seconds")
_PEEWEE_ERRORS = peewee.__exception_wrapper__  # type: ignore[attr-defined]  # peewee 4: module-level, not on the Database
_upsert_sql_cache: dict[tuple[str, tuple[str, ...], tuple[str, ...], str], str] = {}


def _upsert_sql(table: str, key: tuple[str, ...], adding: tuple[str, ...], param: str) -> str:
    cache_key = (table, key, adding, param)
    sql = _upsert_sql_cache.get(cache_key)
    if sql is None:
        columns = (*key, *_COUNTERS)
        quoted = ", ".join(f'"{c}"' for c in columns)
        conflict = ", ".join(f'"{c}"' for c in key)
        marks = ", ".join(param for _ in columns)
        # ON CONFLICT ... DO UPDATE with excluded: SQLite >= 3.24 and PostgreSQL alike. The counter
        # is qualified by its table: PostgreSQL would find a bare name ambiguous with excluded's.
        updates = ", ".join(f'"{c}" = "{table}"."{c}" + excluded."{c}"' for c in adding)
        sql = f'INSERT INTO "{table}" ({quoted}) VALUES ({marks}) ON CONFLICT ({conflict}) DO UPDATE SET {updates}'
        _upsert_sql_cache[cache_key] = sql
    return sql


def _add_counters(
    table: str,
    key: tuple[str, ...],
    prefix: tuple[Any, ...],
    messages: Mapping[Any, int],
    voice: Mapping[Any, float],
) -> None:
    """Upsert rows whose counters add to the stored ones (never replace: that would reset them).
    Both maps are keyed by the rest of the key after ``prefix``: a member id, or ``(day, user)``.
    Runs on the current transaction's connection, so it commits or rolls back with it."""
    both = messages.keys() & voice.keys() if voice else set()
    if len(key) - len(prefix) == 1:  # keyed by member id: no tuple to unpack per row
        shapes: dict[tuple[str, ...], list[tuple[Any, ...]]] = {
            ("messages",): [(*prefix, k, m, 0.0) for k, m in messages.items() if k not in both],
            ("voice_seconds",): [(*prefix, k, 0, v) for k, v in voice.items() if k not in both],
            _COUNTERS: [(*prefix, k, messages[k], voice[k]) for k in both],
        }
    else:
        shapes = {
            ("messages",): [(*prefix, *k, m, 0.0) for k, m in messages.items() if k not in both],
            ("voice_seconds",): [(*prefix, *k, 0, v) for k, v in voice.items() if k not in both],
            _COUNTERS: [(*prefix, *k, messages[k], voice[k]) for k in both],
        }
    database = database_proxy.obj
    order: Callable[[tuple[Any, ...]], Any] = itemgetter(len(key) - 1)
    if isinstance(database, PostgresqlDatabase):
        # PostgreSQL writes a new version of the row, and an entry in every index, for any update,
        # so the shapes save nothing there; one pass in full key order takes row locks in the same
        # order in every writer, so two processes adding to the same members never deadlock.
        shapes = {_COUNTERS: [row for part in shapes.values() for row in part]}
        order = itemgetter(*range(len(prefix), len(key)))
    for adding, rows in shapes.items():
        if not rows:
            continue
        # By member id, the key's last column: each insert lands beside the previous one in the
        # B-tree (about a fifth off a 100,000-member flush of new members).
        rows.sort(key=order)
        sql = _upsert_sql(table, key, adding, database.param)
        with _PEEWEE_ERRORS:  # the same error types as peewee's own queries raise
            cursor = database.cursor()
            try:
                cursor.executemany(sql, rows)  # psycopg 3 pipelines these: no round trip per row
            finally:
                cursor.close()


class LeaseLost(Exception):
    """The writer no longer holds the guild's lease: another instance counts now."""


def renew_lease(guild_id: int, holder: str, expires_at: float, renewed_at: float = 0.0) -> None:
    """Move the lease's expiry (inside the caller's transaction); raise LeaseLost if ``holder``
    does not hold it, which rolls the whole write back: one that lost it can never double counts.
    ``renewed_at`` (the holder's clock; 0: not told) tells a standby how long the holder claims it."""
    changes: dict[Any, float] = {Lease.expires_at: expires_at}
    if renewed_at:
        changes[Lease.acquired_at] = renewed_at
    renewed = Lease.update(changes).where((Lease.guild_id == guild_id) & (Lease.holder == holder)).execute()
    if renewed != 1:
        current = Lease.get_or_none(Lease.guild_id == guild_id)
        raise LeaseLost(f"the lease is held by {current.holder if current else 'nobody'}")


def acquire_lease(
    guild_id: int,
    holder: str,
    now: float,
    expires_at: float,
    *,
    force: bool = False,
    stale: tuple[str, float] | None = None,
) -> tuple[str, float]:
    """Take the guild's lease if it is free, expired or already ours (or ``force``: its holder is
    known to be gone; or it still stands as ``stale``, seen unrenewed for long enough); returns
    (holder, expires_at) as stored afterwards."""
    with database_proxy.atomic():
        current = Lease.get_or_none(Lease.guild_id == guild_id)
        if current is None:
            Lease.insert(
                guild_id=guild_id, holder=holder, acquired_at=now, expires_at=expires_at
            ).on_conflict_ignore().execute()
        elif (
            force
            or current.holder == holder
            or current.expires_at <= now
            or (current.holder, float(current.expires_at)) == stale
        ):
            Lease.update(holder=holder, acquired_at=now, expires_at=expires_at).where(
                (Lease.guild_id == guild_id)
                & (Lease.holder == current.holder)
                & (Lease.expires_at == current.expires_at)
            ).execute()
        row = Lease.get(Lease.guild_id == guild_id)
        return str(row.holder), float(row.expires_at)


def lease_of(guild_id: int) -> tuple[str, float, float] | None:
    """(holder, expires_at, when it last took or renewed it), both times on the holder's clock."""
    row = Lease.get_or_none(Lease.guild_id == guild_id)
    return None if row is None else (str(row.holder), float(row.expires_at), float(row.acquired_at))


def close_orphan_sessions(guild_id: int) -> int:
    """Close sessions a crash left open at their last heartbeat: time after it was never credited.
    Never before their start: a heartbeat written after the clock was set back can be earlier."""
    heartbeat, started = VoiceSession.last_seen_at, VoiceSession.started_at
    return (
        VoiceSession.update(ended_at=Case(None, [(heartbeat < started, started)], heartbeat))
        .where((VoiceSession.guild_id == guild_id) & VoiceSession.ended_at.is_null())
        .execute()
    )


def prune_closed_sessions(guild_id: int, ended_before: float, limit: int = 500) -> int:
    """Delete up to ``limit`` voice sessions that ended before ``ended_before`` (small batches, so
    the write lock is held briefly). The time they counted stays in the totals and daily buckets."""
    keys = [
        row.key
        for row in VoiceSession.select(VoiceSession.key)
        .where(
            (VoiceSession.guild_id == guild_id)
            & VoiceSession.ended_at.is_null(False)
            & (VoiceSession.ended_at < ended_before)
        )
        .limit(limit)
    ]
    if not keys:
        return 0
    with database_proxy.atomic():
        return int(VoiceSession.delete().where(VoiceSession.key.in_(keys)).execute())


def prune_recovery_markers(guild_id: int, older_than: float) -> int:
    """Format-1 applied-markers only matter while such a file may still exist; drop old ones.
    The retired ``heartbeat`` setting (written, never read) goes too."""
    rows = list(
        Setting.select().where(
            (Setting.guild_id == guild_id)
            & ((Setting.key.startswith(RECOVERY_MARKER_PREFIX)) | (Setting.key == "heartbeat"))
        )
    )
    stale = [r.key for r in rows if r.key == "heartbeat" or float(json.loads(r.value)) < older_than]
    if not stale:
        return 0
    with database_proxy.atomic():
        return int(Setting.delete().where((Setting.guild_id == guild_id) & Setting.key.in_(stale)).execute())


def _set_setting(guild_id: int, key: str, value: Any) -> None:
    Setting.insert(guild_id=guild_id, key=key, value=json.dumps(value)).on_conflict(
        conflict_target=[Setting.guild_id, Setting.key], update={Setting.value: EXCLUDED.value}
    ).execute()


def set_setting(guild_id: int, key: str, value: Any) -> None:
    with database_proxy.atomic():
        _set_setting(guild_id, key, value)


def settings_with_prefix(guild_id: int, prefix: str) -> dict[str, Any]:
    rows = Setting.select().where((Setting.guild_id == guild_id) & Setting.key.startswith(prefix))
    return {str(r.key): json.loads(r.value) for r in rows}


def delete_setting(guild_id: int, key: str) -> None:
    delete_settings(guild_id, [key])


def delete_settings(guild_id: int, keys: list[str]) -> None:
    """Delete several stored settings in one statement: all of them, or (on a failure) none."""
    with database_proxy.atomic():
        Setting.delete().where((Setting.guild_id == guild_id) & Setting.key.in_(keys)).execute()


def get_setting(guild_id: int, key: str, default: Any = None) -> Any:
    row = Setting.get_or_none((Setting.guild_id == guild_id) & (Setting.key == key))
    return default if row is None else json.loads(row.value)


# --------------------------------------------------------------------------- reads


def _board_column(board: Board) -> Any:
    return MemberStats.messages if board == "messages" else MemberStats.voice_seconds


def top(guild_id: int, season: int, board: Board, limit: int) -> list[RankedEntry]:
    """The highest totals of a season, ties broken by user id so the order is stable."""
    column = _board_column(board)
    query: Any = (
        MemberStats.select(MemberStats.user_id, column.alias("value"))
        .where((MemberStats.guild_id == guild_id) & (MemberStats.season == season) & (column > 0))
        .order_by(column.desc(), MemberStats.user_id.asc())
        .limit(limit)
        .tuples()
    )
    return [RankedEntry(int(user), float(value)) for user, value in query]


def member_totals(guild_id: int, season: int, user_id: int) -> tuple[int, float]:
    row = MemberStats.get_or_none(
        (MemberStats.guild_id == guild_id) & (MemberStats.season == season) & (MemberStats.user_id == user_id)
    )
    return (0, 0.0) if row is None else (int(row.messages), float(row.voice_seconds))


def rank_of(guild_id: int, season: int, board: Board, user_id: int) -> int | None:
    """1-based position the member holds in ``top`` order, or None with nothing on that board.

    Counted on the board index from the nearer end: from the top, the members ahead; from the
    bottom, the ranked count (see ranked_count) minus the members behind. Either way at most about
    half the board is counted, and rank #1 or the very last are a few index seeks."""
    # One read transaction: the value, the board size and the counts must see the same commit
    # (reads may run on their own connection while a flush commits); a savepoint inside another.
    with snapshot():
        mine = _board_value(guild_id, season, board, user_id)
        if mine is None:
            return None
        ranked = ranked_count(guild_id, season, board, write_sequence(guild_id))
        if _nearer_the_top(guild_id, season, board, mine, user_id, ranked):
            return rank_from_top(guild_id, season, board, mine, user_id)
        return rank_from_bottom(guild_id, season, board, mine, user_id, ranked)


def _board_value(guild_id: int, season: int, board: Board, user_id: int) -> float | None:
    column = _board_column(board)
    value = (
        MemberStats.select(column)
        .where((MemberStats.guild_id == guild_id) & (MemberStats.season == season) & (MemberStats.user_id == user_id))
        .scalar()
    )
    return None if value is None or value <= 0 else value


def _count(guild_id: int, season: int, condition: Any) -> Any:
    """A count over one season's board: each condition is one range on the board index."""
    return MemberStats.select(fn.COUNT(MemberStats.user_id)).where(
        (MemberStats.guild_id == guild_id) & (MemberStats.season == season) & condition
    )


def rank_queries(guild_id: int, season: int, board: Board, value: float, user_id: int) -> list[Any]:
    """The four range counts a rank is made of (top side: ahead, tied ahead; bottom side: below,
    tied behind); separate queries, so the planner gives each its index range (an OR of them makes
    SQLite scan the whole season)."""
    column = _board_column(board)
    return [
        _count(guild_id, season, column > value),
        _count(guild_id, season, (column == value) & (MemberStats.user_id < user_id)),
        _count(guild_id, season, (column > 0) & (column < value)),
        _count(guild_id, season, (column == value) & (MemberStats.user_id > user_id)),
    ]


def unlisted_beating_query(guild_id: int, season: int, board: Board, value: float, user_id: int) -> Any:
    """How many members who chose not to be listed (a stored privacy choice) hold a stored value
    ahead of ``value`` held by ``user_id`` on the board, the member left out. Driven from the
    privacy rows (one key lookup each): ``+ 0`` keeps the planner off the board index, whose range
    ahead of a member low on the board would be most of the season."""
    column = _board_column(board)
    listed_not = Setting.select(Cast(fn.SUBSTR(Setting.key, len(PRIVACY_PREFIX) + 1), "BIGINT")).where(
        (Setting.guild_id == guild_id) & (fn.SUBSTR(Setting.key, 1, len(PRIVACY_PREFIX)) == PRIVACY_PREFIX)
    )
    live = column + 0
    return MemberStats.select(fn.COUNT(MemberStats.user_id)).where(
        (MemberStats.guild_id == guild_id)
        & (MemberStats.season == season)
        & MemberStats.user_id.in_(listed_not)
        & (MemberStats.user_id != user_id)
        & ((live > value) | ((live == value) & (MemberStats.user_id < user_id)))
    )


def count_unlisted_beating(guild_id: int, season: int, board: Board, value: float, user_id: int) -> int:
    return int(unlisted_beating_query(guild_id, season, board, value, user_id).scalar())


def rank_from_top(guild_id: int, season: int, board: Board, value: float, user_id: int) -> int:
    ahead, tied_ahead, _, _ = rank_queries(guild_id, season, board, value, user_id)
    return int(ahead.scalar()) + int(tied_ahead.scalar()) + 1


def rank_from_bottom(guild_id: int, season: int, board: Board, value: float, user_id: int, ranked: int) -> int:
    _, _, below, tied_behind = rank_queries(guild_id, season, board, value, user_id)
    return ranked - int(below.scalar()) - int(tied_behind.scalar())


# Which end is nearer is decided against the board's median entry, remembered per board. A stale
# median only costs speed, never exactness (both ends count exactly), so it is refreshed when the
# board has grown or shrunk by a sixteenth or is older than MEDIAN_MAX_AGE seconds: finding it walks
# half the index once (about 12 ms at a million members).
MEDIAN_MAX_AGE = 300.0
_medians: dict[tuple[int, int, int, str], tuple[int, float, float, int]] = {}


def _nearer_the_top(guild_id: int, season: int, board: Board, value: float, user_id: int, ranked: int) -> bool:
    if ranked < 64:
        return True  # nothing to save on a small board
    key = (id(database_proxy.obj), guild_id, season, board)
    now = time.monotonic()
    cached = _medians.get(key)
    if cached is None or abs(cached[0] - ranked) * 16 > ranked or now - cached[1] > MEDIAN_MAX_AGE:
        column = _board_column(board)
        row = (
            MemberStats.select(column, MemberStats.user_id)
            .where((MemberStats.guild_id == guild_id) & (MemberStats.season == season) & (column > 0))
            .order_by(column.desc(), MemberStats.user_id.asc())
            .limit(1)
            .offset(ranked // 2)
            .tuples()
            .first()
        )
        if row is None:
            return True
        cached = (ranked, now, float(row[0]), int(row[1]))
        _medians[key] = cached
    _, _, median_value, median_user = cached
    return value > median_value or (value == median_value and user_id <= median_user)


# Ranked members per board, counted on the board index (about 25 ms at a million) at most once per
# write number: every write that changes counts moves it (apply_batch), so a count taken in a read
# transaction at number S holds for any read at S. Refreshed off the hot path after each flush.
# Per database object (weakly: a new database never inherits an old one's counts).
# An erasure (/privacy delete) removes rows without a write number: it counts erasures instead
# (ERASURES_KEY, in its own transaction), and a count holds for one (write number, erasures).
_ranked: weakref.WeakKeyDictionary[Any, dict[tuple[int, int, str], tuple[int, int, int]]] = (
    weakref.WeakKeyDictionary()
)
ERASURES_KEY = "erasures"


def ranked_count(guild_id: int, season: int, board: Board, sequence: int | None = None) -> int:
    """Members with a value above zero on the board, for a read transaction at write ``sequence``."""
    counts = _ranked.setdefault(database_proxy.obj, {})
    key = (guild_id, season, board)
    cached = counts.get(key)
    erasures = int(get_setting(guild_id, ERASURES_KEY, 0)) if sequence is not None else 0
    if sequence is not None and cached is not None and cached[:2] == (sequence, erasures):
        return cached[2]
    column = _board_column(board)
    count = int(
        MemberStats.select(fn.COUNT(MemberStats.user_id))
        .where((MemberStats.guild_id == guild_id) & (MemberStats.season == season) & (column > 0))
        .scalar()
        or 0
    )
    if sequence is not None:
        counts[key] = (sequence, erasures, count)
    return count


def count_ranked_boards(guild_id: int, *scopes: int) -> None:
    """Count both boards of each scope (a season or a window) at the current write number (and find
    their medians the first time), so the next rank finds them ready."""
    with database_proxy.atomic():
        sequence = write_sequence(guild_id)
        for scope in scopes:
            for board in ("messages", "voice"):
                ranked = ranked_count(guild_id, scope, board, sequence)
                _nearer_the_top(guild_id, scope, board, 0.0, 0, ranked)


# PostgreSQL's default, READ COMMITTED, takes a new snapshot for every statement: a rank's counts
# and the write number beside them could then come from different commits. REPEATABLE READ keeps
# the transaction's first snapshot for all of it (and READ ONLY: a read never takes a lock a write
# would wait on). Writes stay READ COMMITTED: an upsert adds to the latest committed row instead of
# failing with a serialization error when another process updated it. (Every transaction on a
# Storage reader thread is begun this way too: storage.PostgresDatabase.)
SNAPSHOT_ISOLATION = "REPEATABLE READ, READ ONLY"


def snapshot() -> Any:
    """One read transaction: every query inside sees the same committed state (SQLite's WAL read
    mark; PostgreSQL's REPEATABLE READ). Inside another transaction it is a savepoint of it."""
    database = database_proxy.obj
    if isinstance(database, PostgresqlDatabase):
        return database.atomic(isolation_level=SNAPSHOT_ISOLATION)
    return database_proxy.atomic()


def database_size() -> int:
    """PostgreSQL: the bytes the server holds for this database (its tables, indexes and TOAST)."""
    return int(database_proxy.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0])


def write_sequence(guild_id: int) -> int:
    """The number of the last write committed (stored in the same transaction as the write)."""
    return int(get_setting(guild_id, WRITE_SEQUENCE_KEY, 0))


def totals_of(guild_id: int, season: int, user_ids: Iterable[int]) -> dict[int, tuple[int, float]]:
    """Stored (messages, voice seconds) of these members; members without a row are left out."""
    out: dict[int, tuple[int, float]] = {}
    for chunk in chunked(list(user_ids), 500):
        query: Any = (
            MemberStats.select(MemberStats.user_id, MemberStats.messages, MemberStats.voice_seconds)
            .where((MemberStats.guild_id == guild_id) & (MemberStats.season == season) & MemberStats.user_id.in_(chunk))
            .tuples()
        )
        out.update({int(u): (int(m), float(v)) for u, m, v in query})
    return out


def count_beating(
    guild_id: int, season: int, board: Board, value: float, user_id: int, own: float, sequence: int
) -> int:
    """How many stored members rank ahead of ``value`` held by ``user_id`` (ties: lower id first),
    not counting the member's own row (``own``: its stored value). Counted from the nearer end;
    ``sequence`` is the write number the caller's read transaction sees."""
    ranked = ranked_count(guild_id, season, board, sequence)
    if _nearer_the_top(guild_id, season, board, value, user_id, ranked):
        return rank_from_top(guild_id, season, board, value, user_id) - 1
    # From the bottom the member's own row is "not behind" only when it holds exactly ``value``.
    return rank_from_bottom(guild_id, season, board, value, user_id, ranked) - (1 if own == value > 0 else 0)


def best_placing(guild_id: int, user_id: int) -> tuple[int, Board, int, float] | None:
    """The member's best placing in any finished season, as (season, board, rank, value)."""
    row = BestPlacing.get_or_none((BestPlacing.guild_id == guild_id) & (BestPlacing.user_id == user_id))
    if row is None:
        return None
    board: Board = "voice" if row.board == "voice" else "messages"
    return int(row.season), board, int(row.rank), float(row.value)


def names(guild_id: int, user_ids: Iterable[int]) -> dict[int, str]:
    ids = list(user_ids)
    if not ids:
        return {}
    query: Any = MemberName.select(MemberName.user_id, MemberName.display_name).where(
        (MemberName.guild_id == guild_id) & (MemberName.user_id.in_(ids))
    )
    return {int(u): str(n) for u, n in query.tuples()}


def open_sessions(guild_id: int) -> list[VoiceSession]:
    return list(VoiceSession.select().where((VoiceSession.guild_id == guild_id) & VoiceSession.ended_at.is_null()))


def daily_totals(guild_id: int, first_day: str, last_day: str) -> Mapping[int, tuple[int, float]]:
    """Per-member sums over a range of UTC days (inclusive): a week or a chart is this query."""
    query: Any = (
        DailyActivity.select(DailyActivity.user_id, fn.SUM(DailyActivity.messages), fn.SUM(DailyActivity.voice_seconds))
        .where((DailyActivity.guild_id == guild_id) & (DailyActivity.day.between(first_day, last_day)))
        .group_by(DailyActivity.user_id)
        .tuples()
    )
    return {int(u): (int(m or 0), float(v or 0.0)) for u, m, v in query}


# --------------------------------------------------------------------------- seasons


def current_season(guild_id: int) -> Season | None:
    return (
        Season.select()
        .where((Season.guild_id == guild_id) & Season.ended_at.is_null())
        .order_by(Season.number.desc())
        .first()
    )


def ensure_season(guild_id: int, now: float, period: float) -> Season:
    """The open season, starting the first one at ``now`` if there is none."""
    with database_proxy.atomic():
        season = current_season(guild_id)
        if season is None:
            last = Season.select(fn.MAX(Season.number)).where(Season.guild_id == guild_id).scalar() or 0
            season = Season.create(guild_id=guild_id, number=last + 1, started_at=now, ends_at=now + period)
        return season


def roll_season(
    guild_id: int, number: int, ended_at: float, period: float, *, starts_at: float | None = None
) -> Season:
    """Archive season ``number`` (ended at ``ended_at``) and open the next, starting at
    ``starts_at`` (default: ``ended_at``) and lasting ``period``; idempotent."""
    start = ended_at if starts_at is None else starts_at
    with database_proxy.atomic():
        Season.update(ended_at=ended_at).where(
            (Season.guild_id == guild_id) & (Season.number == number) & Season.ended_at.is_null()
        ).execute()
        nxt = Season.get_or_none((Season.guild_id == guild_id) & (Season.number == number + 1))
        if nxt is None:
            nxt = Season.create(guild_id=guild_id, number=number + 1, started_at=start, ends_at=start + period)
        record_placings(guild_id, number)
        return nxt


def _unlisted(table: str, p: str) -> str:
    """SQL: the member of ``table``'s row chose not to be listed (any stored privacy choice: hidden,
    or not counted; a choice taken back is deleted)."""
    return (
        f'EXISTS (SELECT 1 FROM "setting" AS "s" WHERE "s"."guild_id" = {table}."guild_id" '
        f'AND "s"."key" = CAST({p} AS TEXT) || CAST({table}."user_id" AS TEXT))'
    )


def _placings_sql(p: str) -> str:
    """Each member's best placing in the finished season, from both boards at once (board order:
    value descending, then user id; a member's better board wins, messages on a tie), kept where it
    is at least as good as the stored one (a later season wins a tie: seasons end in order).

    Placed as the season's final standings list them: members who chose not to be listed are left
    out and the rest renumbered. Such a member is placed among those listed (1 + the listed members
    ahead of them, as their own /stats ranks them), for when they are listed again. One pass per
    board: a row's place is its place among all, less the unlisted members up to it, plus one for
    an unlisted row (itself was counted among them)."""
    ranked = []
    unlisted = _unlisted('"m"', p)
    for board, column in (("messages", "messages"), ("voice", "voice_seconds")):
        order = f'ORDER BY "{column}" DESC, "user_id"'
        ranked.append(
            f"""SELECT "guild_id", "user_id", "season", '{board}' AS "board", "value", """
            '"place" - "unlisted_so_far" + "unlisted" AS "rank" FROM ('
            f'SELECT "guild_id", "user_id", "season", CAST("{column}" AS DOUBLE PRECISION) AS "value", "unlisted", '
            f'ROW_NUMBER() OVER ({order}) AS "place", '
            f'SUM("unlisted") OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS "unlisted_so_far" '
            f'FROM (SELECT "m".*, CASE WHEN {unlisted} THEN 1 ELSE 0 END AS "unlisted" '
            f'FROM "member_stats" AS "m" WHERE "m"."guild_id" = {p} AND "m"."season" = {p} AND "m"."{column}" > 0'
            f') AS "flagged") AS "placed"'
        )
    return (
        'INSERT INTO "best_placing" ("guild_id", "user_id", "season", "board", "rank", "value") '
        'SELECT "guild_id", "user_id", "season", "board", "rank", "value" FROM ('
        'SELECT "ranked".*, ROW_NUMBER() OVER (PARTITION BY "user_id" ORDER BY "rank", "board") AS "pick" FROM ('
        + " UNION ALL ".join(ranked)
        + ') AS "ranked") AS "best" WHERE "pick" = 1 '
        'ON CONFLICT ("guild_id", "user_id") DO UPDATE SET "season" = excluded."season", '
        '"board" = excluded."board", "rank" = excluded."rank", "value" = excluded."value" '
        'WHERE excluded."rank" <= "best_placing"."rank"'
    )


def record_placings(guild_id: int, number: int) -> None:
    """Fold finished season ``number`` into each member's best placing (idempotent)."""
    database = database_proxy.obj
    with database_proxy.atomic():
        database.execute_sql(_placings_sql(database.param), (PRIVACY_PREFIX, guild_id, number) * 2)
        if number > int(get_setting(guild_id, PLACINGS_KEY, 0)):
            _set_setting(guild_id, PLACINGS_KEY, number)


def prepare_placings(guild_id: int) -> int:
    """At start: fold in the finished seasons not yet in best_placing (those that ended before it
    existed), oldest first. Returns how many."""
    through = int(get_setting(guild_id, PLACINGS_KEY, 0))
    query: Any = (
        Season.select(Season.number)
        .where((Season.guild_id == guild_id) & Season.ended_at.is_null(False) & (Season.number > through))
        .order_by(Season.number)
        .tuples()
    )
    numbers = [int(n) for (n,) in query]
    for number in numbers:
        record_placings(guild_id, number)
    return len(numbers)


def set_season_end(guild_id: int, number: int, ends_at: float) -> None:
    Season.update(ends_at=ends_at).where((Season.guild_id == guild_id) & (Season.number == number)).execute()


def unannounced_seasons(guild_id: int) -> list[Season]:
    return list(
        Season.select()
        .where((Season.guild_id == guild_id) & Season.ended_at.is_null(False) & Season.announced_at.is_null())
        .order_by(Season.number)
    )


def mark_season_announced(guild_id: int, number: int, at: float | None = None) -> None:
    Season.update(announced_at=time.time() if at is None else at).where(
        (Season.guild_id == guild_id) & (Season.number == number)
    ).execute()


def finished_seasons(guild_id: int, limit: int) -> list[tuple[int, float, float]]:
    """(number, started_at, ended_at) of the most recent finished seasons, newest first."""
    query: Any = (
        Season.select(Season.number, Season.started_at, Season.ended_at)
        .where((Season.guild_id == guild_id) & Season.ended_at.is_null(False))
        .order_by(Season.number.desc())
        .limit(limit)
        .tuples()
    )
    return [(int(n), float(s), float(e)) for n, s, e in query]


def season(guild_id: int, number: int) -> Season | None:
    return Season.get_or_none((Season.guild_id == guild_id) & (Season.number == number))


# --------------------------------------------------------------------------- charts (issue 12)
# A member's daily buckets for the /stats chart. One point lookup per day on the primary key
# (guild_id, day, user_id), not a scan of every member's rows on those days.


def member_days(guild_id: int, user_id: int, days: Iterable[str]) -> dict[str, tuple[int, float]]:
    """The member's stored (messages, voice seconds) on each of ``days`` that has a bucket."""
    out: dict[str, tuple[int, float]] = {}
    for chunk in chunked(sorted(set(days)), 400):
        query: Any = (
            DailyActivity.select(DailyActivity.day, DailyActivity.messages, DailyActivity.voice_seconds)
            .where(
                (DailyActivity.guild_id == guild_id) & DailyActivity.day.in_(chunk) & (DailyActivity.user_id == user_id)
            )
            .tuples()
        )
        out.update({str(d): (int(m or 0), float(v or 0.0)) for d, m, v in query})
    return out


def member_days_at(guild_id: int, user_id: int, days: Iterable[str]) -> tuple[int, dict[str, tuple[int, float]]]:
    """:func:`member_days` with the write number of the same snapshot (one read transaction)."""
    with snapshot():
        return write_sequence(guild_id), member_days(guild_id, user_id, days)


# --------------------------------------------------------------------------- privacy and exports (issue 12)
# A member's privacy choice is a setting row ``privacy:<user id>`` (see services.privacy); /privacy
# export reads everything stored about one member, /privacy delete erases it, /leaderboard export
# streams one scope's rows with their ranks (see services.exports).

PRIVACY_PREFIX = "privacy:"
EXPORT_CHUNK = 2_000  # rows handed to the CSV writer at a time


def privacy_key(user_id: int) -> str:
    return f"{PRIVACY_PREFIX}{user_id}"


def member_tables() -> list[type[Any]]:
    """Every table with a ``user_id`` column, scoped by ``guild_id``: what names a member."""
    from .models import ALL_MODELS

    return [m for m in ALL_MODELS if "user_id" in m._meta.fields and "guild_id" in m._meta.fields]


def _names_member(key: str, user_id: int) -> bool:
    """Whether a setting key holds the member's id as one of its numbers (``privacy:<id>``)."""
    return str(user_id) in "".join(ch if ch.isdigit() else " " for ch in key).split()


def erase_member(guild_id: int, user_id: int, keep: Mapping[str, Any]) -> dict[str, int]:
    """Delete every row about the member in this guild (every table with a user_id column: every
    season's and window's totals, daily buckets, voice sessions, name, best placing; and settings
    whose key names them), then store the ``keep`` settings (the stop marker), in one transaction.
    Returns the rows deleted per table."""
    deleted: dict[str, int] = {}
    with database_proxy.atomic():
        for model in member_tables():
            table = model._meta.table_name
            deleted[table] = int(
                model.delete().where((model.guild_id == guild_id) & (model.user_id == user_id)).execute()
            )
        naming: Any = (
            Setting.select(Setting.key)
            .where((Setting.guild_id == guild_id) & Setting.key.contains(str(user_id)))
            .tuples()
        )
        keys = [str(k) for (k,) in naming if _names_member(str(k), user_id)]
        if keys:
            deleted["setting"] = int(
                Setting.delete().where((Setting.guild_id == guild_id) & Setting.key.in_(keys)).execute()
            )
        for key, value in keep.items():
            _set_setting(guild_id, key, value)
        # The boards shrank without a new write number: counts taken before are stale.
        _set_setting(guild_id, ERASURES_KEY, int(get_setting(guild_id, ERASURES_KEY, 0)) + 1)
    return deleted


def member_data(guild_id: int, user_id: int) -> dict[str, Any]:
    """Everything stored about one member, from one read transaction (for /privacy export)."""
    with snapshot():
        season_query: Any = (
            Season.select(Season.number, Season.started_at, Season.ended_at).where(Season.guild_id == guild_id).tuples()
        )
        seasons = {int(n): (float(s), None if e is None else float(e)) for n, s, e in season_query}
        totals: Any = (
            MemberStats.select(MemberStats.season, MemberStats.messages, MemberStats.voice_seconds)
            .where((MemberStats.guild_id == guild_id) & (MemberStats.user_id == user_id))
            .order_by(MemberStats.season)
            .tuples()
        )
        season_rows, window_rows = [], []
        for number, messages, voice in totals:
            row = {"messages": int(messages), "voice_seconds": float(voice)}
            if number > 0:
                started, ended = seasons.get(int(number), (None, None))
                season_rows.append({"season": int(number), "started_at": started, "ended_at": ended, **row})
            else:
                window_rows.append({"scope": int(number), **row})
        days: Any = (
            DailyActivity.select(DailyActivity.day, DailyActivity.messages, DailyActivity.voice_seconds)
            .where((DailyActivity.guild_id == guild_id) & (DailyActivity.user_id == user_id))
            .order_by(DailyActivity.day)
            .tuples()
        )
        sessions: Any = (
            VoiceSession.select(
                VoiceSession.channel_id, VoiceSession.started_at, VoiceSession.last_seen_at, VoiceSession.ended_at
            )
            .where((VoiceSession.guild_id == guild_id) & (VoiceSession.user_id == user_id))
            .order_by(VoiceSession.started_at)
            .tuples()
        )
        name = MemberName.get_or_none((MemberName.guild_id == guild_id) & (MemberName.user_id == user_id))
        best = best_placing(guild_id, user_id)
        return {
            "seasons": season_rows,
            "windows": window_rows,
            "days": [{"day": str(d), "messages": int(m), "voice_seconds": float(v)} for d, m, v in days],
            "voice_sessions": [
                {
                    "channel_id": int(c),
                    "started_at": float(s),
                    "last_seen_at": float(seen),
                    "ended_at": None if e is None else float(e),
                }
                for c, s, seen, e in sessions
            ],
            "name": None
            if name is None
            else {"display_name": str(name.display_name), "username": name.username, "updated_at": name.updated_at},
            "best_placing": None
            if best is None
            else {"season": best[0], "board": best[1], "rank": best[2], "value": best[3]},
            "privacy": get_setting(guild_id, privacy_key(user_id)),
        }


# One export row: (day or None, user id, stored name or None, messages, voice seconds, message
# rank, voice rank); ranks are board order (value descending, then user id) over every row of the
# scope (per day: of that day), hidden members included: the writer renumbers without them.
ExportRow = tuple[str | None, int, str | None, int, float, int, int]

_EXPORT_NAME = 'LEFT JOIN "member_name" AS n ON n."guild_id" = t."guild_id" AND n."user_id" = t."user_id"'


def _export_sql(param: str, *, scope: int | None, per_day: bool) -> str:
    p = param
    if per_day:
        return (
            'SELECT t."day", t."user_id", n."display_name", t."messages", t."voice_seconds", '
            'ROW_NUMBER() OVER (PARTITION BY t."day" ORDER BY t."messages" DESC, t."user_id") AS "mr", '
            'ROW_NUMBER() OVER (PARTITION BY t."day" ORDER BY t."voice_seconds" DESC, t."user_id") AS "vr" '
            f'FROM "daily_activity" AS t {_EXPORT_NAME} '
            f'WHERE t."guild_id" = {p} AND t."day" BETWEEN {p} AND {p} ORDER BY t."day", "mr"'
        )
    if scope is not None:
        source = f'(SELECT "guild_id", "user_id", "messages", "voice_seconds" FROM "member_stats" WHERE "guild_id" = {p} AND "season" = {p})'  # noqa: E501
    else:
        source = (
            '(SELECT "guild_id", "user_id", SUM("messages") AS "messages", SUM("voice_seconds") AS "voice_seconds" '
            f'FROM "daily_activity" WHERE "guild_id" = {p} AND "day" BETWEEN {p} AND {p} '
            'GROUP BY "guild_id", "user_id")'
        )
    return (
        'SELECT NULL, t."user_id", n."display_name", t."messages", t."voice_seconds", '
        'ROW_NUMBER() OVER (ORDER BY t."messages" DESC, t."user_id") AS "mr", '
        'ROW_NUMBER() OVER (ORDER BY t."voice_seconds" DESC, t."user_id") AS "vr" '
        f'FROM {source} AS t {_EXPORT_NAME} ORDER BY "mr"'
    )


def export_values_of(
    guild_id: int, user_ids: Iterable[int], *, scope: int | None, first_day: str, last_day: str, per_day: bool
) -> list[tuple[str | None, int, int, float]]:
    """(day or None, user, messages, voice seconds) of these members in the export's scope."""
    out: list[tuple[str | None, int, int, float]] = []
    for chunk in chunked(sorted(set(user_ids)), 500):
        if scope is not None and not per_day:
            for user, (messages, voice) in totals_of(guild_id, scope, chunk).items():
                out.append((None, user, messages, voice))
            continue
        where = (
            (DailyActivity.guild_id == guild_id)
            & DailyActivity.day.between(first_day, last_day)
            & DailyActivity.user_id.in_(chunk)
        )
        if per_day:
            query: Any = (
                DailyActivity.select(
                    DailyActivity.day, DailyActivity.user_id, DailyActivity.messages, DailyActivity.voice_seconds
                )
                .where(where)
                .tuples()
            )
            out.extend((str(d), int(u), int(m), float(v)) for d, u, m, v in query)
        else:
            query = (
                DailyActivity.select(
                    DailyActivity.user_id, fn.SUM(DailyActivity.messages), fn.SUM(DailyActivity.voice_seconds)
                )
                .where(where)
                .group_by(DailyActivity.user_id)
                .tuples()
            )
            out.extend((None, int(u), int(m or 0), float(v or 0.0)) for u, m, v in query)
    return out


def export_rows(
    guild_id: int,
    *,
    scope: int | None,
    first_day: str,
    last_day: str,
    per_day: bool,
    excluded: Iterable[int],
    on_excluded: Callable[[list[tuple[str | None, int, int, float]]], None],
    emit: Callable[[list[ExportRow]], None],
    chunk: int = EXPORT_CHUNK,
) -> None:
    """Stream an export from one read transaction: first the ``excluded`` members' values (so
    the writer can renumber the ranks without them), then every row in chunks, in rank order.
    ``scope``: a season number or window scope (member_stats), or None for the daily buckets from
    ``first_day`` to ``last_day``; ``per_day``: one row per member per day of that day range."""
    database = database_proxy.obj
    with snapshot():
        on_excluded(
            export_values_of(guild_id, excluded, scope=scope, first_day=first_day, last_day=last_day, per_day=per_day)
        )
        sql = _export_sql(database.param, scope=None if per_day else scope, per_day=per_day)
        params: tuple[Any, ...] = (
            (guild_id, scope) if scope is not None and not per_day else (guild_id, first_day, last_day)
        )
        with _PEEWEE_ERRORS:
            # PostgreSQL: a server-side (named) cursor, so the client holds one chunk, not the result.
            postgres = isinstance(database, PostgresqlDatabase)
            cursor = database.connection().cursor(name="leaderboard_export") if postgres else database.cursor()
            try:
                cursor.execute(sql, params)
                while rows := cursor.fetchmany(chunk):
                    emit(
                        [
                            (
                                None if d is None else str(d),
                                int(u),
                                None if n is None else str(n),
                                int(m),
                                float(v),
                                int(mr),
                                int(vr),
                            )
                            for d, u, n, m, v, mr, vr in rows
                        ]
                    )
            finally:
                cursor.close()


def stored_days(guild_id: int) -> tuple[str, str] | None:
    """The first and last day with a daily bucket (None: none yet)."""
    row = (
        DailyActivity.select(fn.MIN(DailyActivity.day), fn.MAX(DailyActivity.day))
        .where(DailyActivity.guild_id == guild_id)
        .tuples()
        .first()
    )
    if row is None or row[0] is None:
        return None
    return str(row[0]), str(row[1])
