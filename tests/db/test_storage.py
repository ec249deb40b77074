"""The database layer: open_database, migrations, every repository query, and Storage's DB thread.

Tests taking ``storage_db``, ``ranked_db`` or ``raw_db`` run on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from peewee import Database, PostgresqlDatabase, SqliteDatabase

from leaderboard_bot.db import repository
from leaderboard_bot.db.migrations import LATEST_VERSION, MIGRATIONS, SchemaTooNew, current_version, migrate
from leaderboard_bot.db.models import (
    DailyActivity,
    MemberName,
    MemberStats,
    Season,
    VoiceSession,
    database_proxy,
)
from leaderboard_bot.db.storage import Storage, StorageError, check_integrity, open_database
from leaderboard_bot.domain import ActivityBatch, RankedEntry, SessionClose, SessionOpen
from tests.conftest import close_database, connect_raw

G = 111  # guild id
OTHER_G = 222


@pytest.fixture
def storage_db(database_url: str) -> Iterator[Database]:
    """A freshly opened and migrated database bound to the models (each backend), closed afterwards."""
    db = open_database(database_url)
    try:
        yield db
    finally:
        close_database(db)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = open_database(f"sqlite:///{tmp_path}/x.db")
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def raw_db(database_url: str) -> Iterator[Database]:
    """An empty database, connected but not migrated nor bound to the models (each backend)."""
    db = connect_raw(database_url)
    try:
        yield db
    finally:
        db.close()


def batch(*, heartbeat_at: float = 1_000.0, season: int = 1, guild_id: int = G, **kw: object) -> ActivityBatch:
    return ActivityBatch(guild_id=guild_id, season=season, heartbeat_at=heartbeat_at, **kw)  # type: ignore[arg-type]


def stats_rows(guild_id: int = G) -> dict[tuple[int, int], tuple[int, float]]:
    query = MemberStats.select().where((MemberStats.guild_id == guild_id) & (MemberStats.season > 0))
    return {(r.season, r.user_id): (r.messages, r.voice_seconds) for r in query}


def daily_rows(guild_id: int = G) -> dict[tuple[str, int], tuple[int, float]]:
    query = DailyActivity.select().where(DailyActivity.guild_id == guild_id)
    return {(r.day, r.user_id): (r.messages, r.voice_seconds) for r in query}


def session(key: str) -> VoiceSession:
    return VoiceSession.get(VoiceSession.key == key)


def table_names(db: Database) -> set[str]:
    return set(db.get_tables())


def index_names(db: Database) -> set[str]:
    if isinstance(db, PostgresqlDatabase):
        sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'index'"
    return {r[0] for r in db.execute_sql(sql).fetchall()}


# --------------------------------------------------------------------------- open_database / pragmas


def test_open_database_sets_pragmas(sqlite_db: SqliteDatabase) -> None:
    assert sqlite_db.execute_sql("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    assert sqlite_db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert sqlite_db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1


def test_open_database_binds_the_models(storage_db: Database) -> None:
    assert database_proxy.obj is storage_db


def test_open_database_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "bot.db"
    db = open_database(f"sqlite:///{path}")
    try:
        assert path.is_file()
        assert current_version(db) == LATEST_VERSION
    finally:
        db.close()


def test_open_database_rejects_urls_of_other_databases(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a SQLite URL"):
        open_database(f"mysql://user:pw@host/{tmp_path}")


# --------------------------------------------------------------------------- migrations


def test_migrate_creates_schema_at_latest_version(storage_db: Database) -> None:
    assert LATEST_VERSION == len(MIGRATIONS) >= 2
    assert current_version(storage_db) == LATEST_VERSION
    assert {
        "schema_version",
        "setting",
        "member_stats",
        "daily_activity",
        "voice_session",
        "member_name",
        "season",
    } <= table_names(storage_db)
    rows = storage_db.execute_sql('SELECT "id", "version" FROM "schema_version"').fetchall()
    assert rows == [(1, LATEST_VERSION)]


def test_migrate_is_idempotent(storage_db: Database) -> None:
    before = (table_names(storage_db), index_names(storage_db))
    assert migrate(storage_db) == LATEST_VERSION
    assert migrate(storage_db) == LATEST_VERSION
    assert (table_names(storage_db), index_names(storage_db)) == before
    assert storage_db.execute_sql('SELECT COUNT(*) FROM "schema_version"').fetchone()[0] == 1


def test_migrate_runs_each_step_once_in_order(raw_db: Database) -> None:
    db = raw_db
    calls: list[str] = []
    steps = [lambda d: calls.append("a"), lambda d: calls.append("b"), lambda d: calls.append("c")]
    assert migrate(db, target=2, migrations=steps) == 2
    assert calls == ["a", "b"]
    assert migrate(db, migrations=steps, target=3) == 3
    assert migrate(db, migrations=steps, target=3) == 3
    assert calls == ["a", "b", "c"]


def test_a_failing_migration_rolls_back_and_keeps_the_old_version(raw_db: Database) -> None:
    db = raw_db

    def broken(d: Database) -> None:
        d.execute_sql('CREATE TABLE "half_done" ("x" INTEGER)')
        raise sqlite3.OperationalError("boom")

    with pytest.raises(sqlite3.OperationalError):
        migrate(db, migrations=(MIGRATIONS[0], broken), target=2)
    assert current_version(db) == 1
    assert "half_done" not in table_names(db)  # PostgreSQL's DDL is transactional too
    assert "member_stats" in table_names(db)


def test_old_version_1_database_upgrades_in_place_keeping_rows(raw_db: Database, database_url: str) -> None:
    old = raw_db
    assert migrate(old, target=1) == 1
    assert "season" not in table_names(old)
    mark = old.param
    old.execute_sql(
        'INSERT INTO "member_stats" ("guild_id", "season", "user_id", "messages", "voice_seconds") '
        f"VALUES ({mark}, 1, 7, 12, 30.5), ({mark}, 1, 8, 3, 0)",
        (G, G),
    )
    old.execute_sql(
        'INSERT INTO "member_name" ("guild_id", "user_id", "display_name", "username", "updated_at") '
        f"VALUES ({mark}, 7, 'Seven', 'seven', 1.0)",
        (G,),
    )
    old.close()

    db = open_database(database_url)
    try:
        assert current_version(db) == LATEST_VERSION
        assert {"season"} <= table_names(db)
        assert {"member_stats_board_messages", "member_stats_board_voice"} <= index_names(db)
        assert db.get_primary_keys("season") == ["guild_id", "number"]  # one row per season number
        assert repository.member_totals(G, 1, 7) == (12, 30.5)
        assert repository.top(G, 1, "messages", 10) == [RankedEntry(7, 12.0), RankedEntry(8, 3.0)]
        assert repository.names(G, [7]) == {7: "Seven"}
        # And the new schema is usable on top of the old rows.
        repository.apply_batch(batch(messages={("2024-01-01", 7): 1}))
        assert repository.member_totals(G, 1, 7) == (13, 30.5)
        assert repository.ensure_season(G, 0.0, 10.0).number == 1
    finally:
        close_database(db)


def test_database_newer_than_the_bot_raises(raw_db: Database, database_url: str) -> None:
    db = open_database(database_url)
    db.execute_sql(f'UPDATE "schema_version" SET "version" = {db.param} WHERE "id" = 1', (LATEST_VERSION + 1,))
    close_database(db)
    with pytest.raises(SchemaTooNew, match="newer"):
        open_database(database_url)
    close_database(database_proxy.obj)
    with pytest.raises((SchemaTooNew, StorageError)):
        migrate(raw_db)
    assert current_version(raw_db) == LATEST_VERSION + 1  # untouched


# --------------------------------------------------------------------------- apply_batch


def test_apply_batch_splits_into_season_totals_and_daily_rows(storage_db: Database) -> None:
    repository.apply_batch(
        batch(
            messages={("2024-03-09", 1): 3, ("2024-03-10", 1): 2, ("2024-03-10", 2): 5},
            voice={("2024-03-09", 1): 600.0, ("2024-03-10", 3): 90.5},
        )
    )
    assert stats_rows() == {(1, 1): (5, 600.0), (1, 2): (5, 0.0), (1, 3): (0, 90.5)}
    assert daily_rows() == {
        ("2024-03-09", 1): (3, 600.0),
        ("2024-03-10", 1): (2, 0.0),
        ("2024-03-10", 2): (5, 0.0),
        ("2024-03-10", 3): (0, 90.5),
    }


def test_apply_batch_twice_adds_to_stored_counts(storage_db: Database) -> None:
    b = batch(messages={("2024-03-10", 1): 4}, voice={("2024-03-10", 1): 12.5, ("2024-03-11", 2): 7.0})
    repository.apply_batch(b)
    repository.apply_batch(b)
    assert stats_rows() == {(1, 1): (8, 25.0), (1, 2): (0, 14.0)}
    assert daily_rows() == {("2024-03-10", 1): (8, 25.0), ("2024-03-11", 2): (0, 14.0)}


def test_apply_batch_keeps_seasons_and_guilds_apart(storage_db: Database) -> None:
    repository.apply_batch(batch(season=1, messages={("2024-03-10", 1): 1}))
    repository.apply_batch(batch(season=2, messages={("2024-03-11", 1): 2}))
    repository.apply_batch(batch(guild_id=OTHER_G, messages={("2024-03-11", 1): 50}))
    assert stats_rows() == {(1, 1): (1, 0.0), (2, 1): (2, 0.0)}
    assert stats_rows(OTHER_G) == {(1, 1): (50, 0.0)}
    assert daily_rows() == {("2024-03-10", 1): (1, 0.0), ("2024-03-11", 1): (2, 0.0)}


def test_apply_batch_handles_more_rows_than_sqlite_binds_in_one_statement(storage_db: Database) -> None:
    if isinstance(storage_db, SqliteDatabase):
        # Lower the bound-variable limit to SQLite's historical default so an unchunked insert of
        # 2,500 rows x 5 columns would fail with "too many SQL variables".
        storage_db.connection().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    users = range(1, 2_501)
    repository.apply_batch(
        batch(
            messages={("2024-03-10", u): u % 7 + 1 for u in users},
            voice={("2024-03-11", u): float(u) for u in users},
            opened=[SessionOpen(f"k{u}", u, 5, 900.0) for u in users],
            names={u: (f"user {u}", None) for u in users},
        )
    )
    assert MemberStats.select().where(MemberStats.season > 0).count() == 2_500
    assert DailyActivity.select().count() == 5_000
    assert VoiceSession.select().count() == 2_500
    assert MemberName.select().count() == 2_500
    assert repository.member_totals(G, 1, 2_500) == (2_500 % 7 + 1, 2_500.0)
    total_msgs = MemberStats.select().where((MemberStats.guild_id == G) & (MemberStats.season > 0))
    assert sum(r.messages for r in total_msgs) == sum(u % 7 + 1 for u in users)


def test_apply_batch_is_atomic(storage_db: Database) -> None:
    bad = batch(messages={("2024-03-10", 1): 1}, names={2: ("x", None)})
    bad.names[3] = (None, None)  # type: ignore[assignment]  # display_name is NOT NULL -> fails late
    with pytest.raises(Exception):  # noqa: B017 - any error must roll the whole batch back
        repository.apply_batch(bad)
    assert stats_rows() == {}
    assert daily_rows() == {}
    assert repository.get_setting(G, "heartbeat") is None


def test_apply_batch_opens_then_closes_sessions(storage_db: Database) -> None:
    repository.apply_batch(
        batch(heartbeat_at=100.0, opened=[SessionOpen("a", 1, 5, 40.0), SessionOpen("b", 2, 6, 70.0)])
    )
    a, b = session("a"), session("b")
    assert (a.user_id, a.channel_id, a.guild_id, a.started_at, a.ended_at) == (1, 5, G, 40.0, None)
    assert a.last_seen_at == 100.0 and b.last_seen_at == 100.0  # heartbeat of open sessions

    repository.apply_batch(batch(heartbeat_at=200.0, closed=[SessionClose("a", 150.0)]))
    a, b = session("a"), session("b")
    assert (a.ended_at, a.last_seen_at) == (150.0, 150.0)
    assert (b.ended_at, b.last_seen_at) == (None, 200.0)
    assert [s.key for s in repository.open_sessions(G)] == ["b"]


def test_apply_batch_open_and_close_in_the_same_batch(storage_db: Database) -> None:
    repository.apply_batch(
        batch(heartbeat_at=100.0, opened=[SessionOpen("a", 1, 5, 10.0)], closed=[SessionClose("a", 60.0)])
    )
    a = session("a")
    assert (a.started_at, a.ended_at, a.last_seen_at) == (10.0, 60.0, 60.0)
    assert repository.open_sessions(G) == []


def test_apply_batch_does_not_reopen_or_move_a_closed_session(storage_db: Database) -> None:
    repository.apply_batch(
        batch(heartbeat_at=100.0, opened=[SessionOpen("a", 1, 5, 10.0)], closed=[SessionClose("a", 60.0)])
    )
    # A retried batch re-sends the same open and close.
    repository.apply_batch(
        batch(heartbeat_at=300.0, opened=[SessionOpen("a", 1, 5, 10.0)], closed=[SessionClose("a", 250.0)])
    )
    a = session("a")
    assert VoiceSession.select().count() == 1
    assert (a.started_at, a.ended_at, a.last_seen_at) == (10.0, 60.0, 60.0)


def test_heartbeat_moves_last_seen_of_open_sessions_only_in_its_guild(storage_db: Database) -> None:
    repository.apply_batch(batch(heartbeat_at=10.0, opened=[SessionOpen("a", 1, 5, 10.0)]))
    repository.apply_batch(batch(guild_id=OTHER_G, heartbeat_at=10.0, opened=[SessionOpen("z", 1, 5, 10.0)]))
    repository.apply_batch(batch(heartbeat_at=70.0))
    assert session("a").last_seen_at == 70.0
    assert session("z").last_seen_at == 10.0


def test_the_write_sequence_only_moves_up(storage_db: Database) -> None:
    for number in (3, 2, 5, None):
        b = batch(heartbeat_at=1.0)
        b.sequence = number
        repository.apply_batch(b)
    assert repository.get_setting(G, repository.WRITE_SEQUENCE_KEY) == 5
    assert repository.get_setting(OTHER_G, repository.WRITE_SEQUENCE_KEY) is None


def test_close_orphan_sessions_closes_at_last_heartbeat(storage_db: Database) -> None:
    repository.apply_batch(
        batch(
            heartbeat_at=50.0,
            opened=[SessionOpen("a", 1, 5, 10.0), SessionOpen("b", 2, 5, 20.0)],
            closed=[SessionClose("b", 30.0)],
        )
    )
    repository.apply_batch(batch(heartbeat_at=100.0))
    repository.apply_batch(batch(guild_id=OTHER_G, heartbeat_at=90.0, opened=[SessionOpen("z", 3, 5, 80.0)]))
    # Opened at 120, then the clock was set back: the flush's heartbeat, 110, is before its start.
    repository.apply_batch(batch(heartbeat_at=110.0, opened=[SessionOpen("c", 4, 5, 120.0)]))

    assert repository.close_orphan_sessions(G) == 2
    a, b, z = session("a"), session("b"), session("z")
    assert session("c").ended_at == 120.0  # never before its start
    assert a.ended_at == 110.0  # the last heartbeat, not the wall clock
    assert b.ended_at == 30.0  # already closed: untouched
    assert z.ended_at is None  # other guild: untouched
    assert repository.open_sessions(G) == []
    assert repository.close_orphan_sessions(G) == 0


def test_names_upsert_and_lookup(storage_db: Database) -> None:
    repository.apply_batch(batch(heartbeat_at=10.0, names={1: ("Alice", "alice"), 2: ("Bob", None)}))
    repository.apply_batch(batch(heartbeat_at=20.0, names={1: ("Alicia", "alice2"), 3: ("C" * 300, "")}))
    repository.apply_batch(batch(guild_id=OTHER_G, names={1: ("Elsewhere", None)}))
    assert repository.names(G, [1, 2, 3, 4]) == {1: "Alicia", 2: "Bob", 3: "C" * 255}
    assert repository.names(G, []) == {}
    assert repository.names(G, iter([2])) == {2: "Bob"}
    row = MemberName.get((MemberName.guild_id == G) & (MemberName.user_id == 1))
    assert (row.username, row.updated_at) == ("alice2", 20.0)
    assert MemberName.get((MemberName.guild_id == G) & (MemberName.user_id == 3)).username is None


# --------------------------------------------------------------------------- ranking reads


@pytest.fixture
def ranked_db(storage_db: Database) -> Database:
    # messages: 5 -> 10, 3 -> 10 (tie), 9 -> 7, 1 -> 2, 4 -> 0 (voice only)
    # voice:    4 -> 300, 1 -> 300 (tie), 3 -> 12.5, others 0
    repository.apply_batch(
        batch(
            messages={
                ("2024-03-10", 5): 10,
                ("2024-03-10", 3): 10,
                ("2024-03-10", 9): 7,
                ("2024-03-11", 1): 2,
            },
            voice={("2024-03-10", 4): 300.0, ("2024-03-11", 1): 300.0, ("2024-03-12", 3): 12.5},
        )
    )
    repository.apply_batch(batch(season=2, messages={("2024-04-01", 8): 1000}))
    repository.apply_batch(batch(guild_id=OTHER_G, messages={("2024-03-10", 5): 1000}))
    return storage_db


def test_top_orders_by_value_then_user_id(ranked_db: Database) -> None:
    assert repository.top(G, 1, "messages", 10) == [
        RankedEntry(3, 10.0),
        RankedEntry(5, 10.0),
        RankedEntry(9, 7.0),
        RankedEntry(1, 2.0),
    ]
    assert repository.top(G, 1, "voice", 10) == [
        RankedEntry(1, 300.0),
        RankedEntry(4, 300.0),
        RankedEntry(3, 12.5),
    ]


def test_top_excludes_zero_values_and_applies_the_limit(ranked_db: Database) -> None:
    assert 4 not in {e.user_id for e in repository.top(G, 1, "messages", 100)}
    assert repository.top(G, 1, "messages", 2) == [RankedEntry(3, 10.0), RankedEntry(5, 10.0)]
    assert repository.top(G, 1, "voice", 1) == [RankedEntry(1, 300.0)]
    assert repository.top(G, 3, "messages", 10) == []
    assert repository.top(G, 2, "messages", 10) == [RankedEntry(8, 1000.0)]


@pytest.mark.parametrize("board", ["messages", "voice"])
def test_rank_of_matches_top_order(ranked_db: Database, board: str) -> None:
    order = repository.top(G, 1, board, 100)  # type: ignore[arg-type]
    assert order
    for position, entry in enumerate(order, start=1):
        assert repository.rank_of(G, 1, board, entry.user_id) == position  # type: ignore[arg-type]


def test_rank_of_is_none_without_activity(ranked_db: Database) -> None:
    assert repository.rank_of(G, 1, "messages", 4) is None  # voice only
    assert repository.rank_of(G, 1, "voice", 5) is None  # messages only
    assert repository.rank_of(G, 1, "messages", 12345) is None  # no row at all
    assert repository.rank_of(G, 3, "messages", 5) is None  # no such season


def test_ranked_count(ranked_db: Database) -> None:
    assert repository.ranked_count(G, 1, "messages") == 4
    assert repository.ranked_count(G, 1, "voice") == 3
    assert repository.ranked_count(G, 2, "messages") == 1
    assert repository.ranked_count(G, 2, "voice") == 0


def test_member_totals(ranked_db: Database) -> None:
    assert repository.member_totals(G, 1, 3) == (10, 12.5)
    assert repository.member_totals(G, 1, 4) == (0, 300.0)
    assert repository.member_totals(G, 1, 777) == (0, 0.0)
    assert repository.member_totals(OTHER_G, 1, 5) == (1000, 0.0)


def test_daily_totals_over_an_inclusive_day_range(ranked_db: Database) -> None:
    assert repository.daily_totals(G, "2024-03-10", "2024-03-10") == {
        5: (10, 0.0),
        3: (10, 0.0),
        9: (7, 0.0),
        4: (0, 300.0),
    }
    assert repository.daily_totals(G, "2024-03-11", "2024-03-12") == {1: (2, 300.0), 3: (0, 12.5)}
    assert repository.daily_totals(G, "2024-03-10", "2024-04-30")[3] == (10, 12.5)
    assert repository.daily_totals(G, "2024-05-01", "2024-05-31") == {}


# --------------------------------------------------------------------------- seasons


def test_ensure_season_creates_season_one_once(storage_db: Database) -> None:
    first = repository.ensure_season(G, 1_000.0, 3_600.0)
    assert (first.number, first.started_at, first.ends_at, first.ended_at) == (1, 1_000.0, 4_600.0, None)
    again = repository.ensure_season(G, 9_999.0, 60.0)
    assert again.id == first.id
    assert (again.number, again.started_at, again.ends_at) == (1, 1_000.0, 4_600.0)
    assert Season.select().count() == 1
    assert repository.current_season(G).id == first.id
    assert repository.current_season(OTHER_G) is None


def test_roll_season_archives_and_opens_the_next_idempotently(storage_db: Database) -> None:
    repository.ensure_season(G, 0.0, 100.0)
    nxt = repository.roll_season(G, 1, 100.0, 100.0)
    assert (nxt.number, nxt.started_at, nxt.ends_at, nxt.ended_at) == (2, 100.0, 200.0, None)
    old = Season.get((Season.guild_id == G) & (Season.number == 1))
    assert old.ended_at == 100.0

    again = repository.roll_season(G, 1, 150.0, 100.0)  # e.g. two tasks noticing the end
    assert again.id == nxt.id
    assert Season.get((Season.guild_id == G) & (Season.number == 1)).ended_at == 100.0
    assert Season.select().where(Season.guild_id == G).count() == 2
    assert repository.current_season(G).number == 2
    assert repository.ensure_season(G, 500.0, 100.0).id == nxt.id


def test_ensure_season_after_all_seasons_ended_numbers_on(storage_db: Database) -> None:
    repository.ensure_season(G, 0.0, 100.0)
    Season.update(ended_at=100.0).execute()
    assert repository.ensure_season(G, 100.0, 100.0).number == 2


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "value", [42, 1.5, "text", True, None, [1, 2, 3], {"channel": 123456789012345678, "ids": [1, 2]}]
)
def test_setting_round_trips_json_values(storage_db: Database, value: object) -> None:
    repository.set_setting(G, "k", value)
    assert repository.get_setting(G, "k", default="missing") == value


def test_setting_overwrite_default_and_guild_scope(storage_db: Database) -> None:
    assert repository.get_setting(G, "k") is None
    assert repository.get_setting(G, "k", default=7) == 7
    repository.set_setting(G, "k", {"a": 1})
    repository.set_setting(G, "k", {"a": 2})
    repository.set_setting(OTHER_G, "k", "other")
    assert repository.get_setting(G, "k") == {"a": 2}
    assert repository.get_setting(OTHER_G, "k") == "other"


# --------------------------------------------------------------------------- Storage (async)


async def test_storage_runs_everything_on_one_dedicated_thread(tmp_path: Path) -> None:
    storage = Storage(f"sqlite:///{tmp_path}/async.db")
    await storage.open()
    try:
        loop_thread = threading.current_thread()
        threads = [await storage.run(threading.current_thread) for _ in range(5)]
        assert len({t.ident for t in threads}) == 1
        assert len({t.name for t in threads}) == 1
        assert threads[0].name.startswith("leaderboard-db")
        assert threads[0] is not loop_thread
        assert threads[0] is not threading.main_thread()

        # Concurrent calls are serialised onto that same thread too.
        many = await asyncio.gather(*(storage.run(threading.current_thread) for _ in range(10)))
        assert {t.ident for t in many} == {threads[0].ident}

        # Arguments and results pass through; repository calls work.
        await storage.run(repository.set_setting, G, key="k", value=[1, 2])
        assert await storage.run(repository.get_setting, G, "k") == [1, 2]
        assert await storage.run(current_version, database_proxy.obj) == LATEST_VERSION
    finally:
        await storage.close()


async def test_storage_run_propagates_exceptions(tmp_path: Path) -> None:
    storage = Storage(f"sqlite:///{tmp_path}/async.db")
    await storage.open()

    def fail() -> None:
        raise sqlite3.OperationalError("database is locked")

    try:
        with pytest.raises(StorageError, match="locked") as caught:
            await storage.run(fail)
        assert caught.value.kind == "locked"
        assert await storage.run(lambda: 5) == 5  # the thread survives
    finally:
        await storage.close()


def _objects_reachable_from(error: BaseException) -> list[object]:
    """Everything an exception keeps alive through its chain and its traceback's frames."""
    found: list[object] = []
    chain: list[BaseException | None] = [error]
    while chain:
        item = chain.pop()
        if item is None:
            continue
        chain += [item.__context__, item.__cause__]
        tb = item.__traceback__
        while tb is not None:
            found.extend(tb.tb_frame.f_locals.values())
            tb = tb.tb_next
    return found


async def test_a_query_failing_on_a_lock_held_by_another_process_hands_the_loop_no_cursor(tmp_path: Path) -> None:
    """A cursor freed on the loop thread waits for the connection mutex, which the database
    thread holds through its busy timeout: the loop froze for seconds (issue: the SQLite lock)."""
    path = tmp_path / "locked.db"
    storage = Storage(f"sqlite:///{path}")
    await storage.open()
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a backup or an admin shell
    try:
        await storage.run(lambda: database_proxy.obj.execute_sql("PRAGMA busy_timeout = 50"))
        with pytest.raises(StorageError) as caught:
            await storage.run(repository.set_setting, G, "k", 1)
        error = caught.value
        assert error.kind == "locked" and "database is locked" in str(error)
        assert error.__context__ is None and error.__cause__ is None
        reachable = _objects_reachable_from(error)
        assert not [o for o in reachable if isinstance(o, sqlite3.Cursor | BaseException) and o is not error]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await storage.close()


@contextlib.asynccontextmanager
async def running_on(path: Path, key: str) -> AsyncIterator[Storage]:
    """A Storage on the SQLite file ``path`` as the bot holds it: ``key`` written once (1) and read
    back, so the reader thread has connected too; closed on the way out."""
    storage = Storage(f"sqlite:///{path}")
    await storage.open()
    try:
        await storage.run(repository.set_setting, G, key, 1)
        assert await storage.read(repository.get_setting, G, key) == 1
        yield storage
    finally:
        await storage.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_writes_to_a_database_file_deleted_or_replaced_under_the_bot_fail_and_say_why(
    tmp_path: Path, how: str
) -> None:
    """The open connection would go on writing into the old file, which vanishes when the bot
    stops: every count since would be lost. Failing writes keep them in memory and on disk."""
    path = tmp_path / "board.db"
    async with running_on(path, "k") as storage:
        if how == "replaced":  # a backup moved over it (mv backup.db board.db)
            backup = tmp_path / "backup.db"
            sqlite3.connect(backup).close()
            os.replace(backup, path)
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        with pytest.raises(StorageError) as caught:
            await storage.run(repository.set_setting, G, "k", 2)
        error = caught.value
        assert error.kind == "replaced" and str(path) in str(error) and "restart the bot" in error.advice
        assert await storage.read(repository.get_setting, G, "k") == 1  # reads still answer
        assert await storage.close()


def stored_settings(path: Path) -> dict[str, str]:
    """What a new process finds in the file at ``path`` (as after a kill -9 of the bot)."""
    conn = sqlite3.connect(path)
    try:
        return {str(k): str(v) for k, v in conn.execute('SELECT "key", "value" FROM "setting"')}
    finally:
        conn.close()


async def test_a_backup_moved_over_the_database_is_used_as_it_is_at_the_next_start(tmp_path: Path) -> None:
    """The old file's -wal and -shm stayed beside the restored one, and SQLite read them into it at
    the next start: the file damaged, or the restore silently undone (found by a tester)."""
    path = tmp_path / "board.db"
    async with running_on(path, "k") as storage:
        backup = tmp_path / "backup.db"
        await storage.run(lambda: repository.database_proxy.execute_sql(f"VACUUM INTO '{backup}'"))
        await storage.run(repository.set_setting, G, "k", 2)  # after the backup: in the -wal only
        os.replace(backup, path)  # mv backup.db board.db
        with pytest.raises(StorageError):
            await storage.run(repository.set_setting, G, "k", 3)
        assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
        assert len(list(tmp_path.glob("board.db-wal.replaced-*"))) == 1
    # kill -9 or a stop alike: the next start opens the backup as it was.
    assert stored_settings(path)["k"] == "1"
    check_integrity(str(path))


async def test_a_wal_deleted_under_the_bot_loses_nothing_at_a_crash(tmp_path: Path) -> None:
    """Until the next checkpoint the -wal holds every write: deleted (a clean-up script), it was
    reachable only through the bot's open handle, and a kill -9 lost the whole database (found by
    a tester). Now what it holds goes into the file at once, and every later write too."""
    path = tmp_path / "board.db"
    async with running_on(path, "before") as storage:
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink()
        await storage.run(repository.set_setting, G, "after", 2)
        # A kill -9 now: a new process finds everything in the file itself.
        found = stored_settings(path)
        assert found["before"] == "1" and found["after"] == "2"
        await storage.run(repository.set_setting, G, "later", 3)
        assert stored_settings(path)["later"] == "3"
        assert await storage.read(repository.get_setting, G, "later") == 3


async def test_a_full_disk_is_reported_as_such_not_as_a_failed_rollback(tmp_path: Path) -> None:
    storage = Storage(f"sqlite:///{tmp_path}/full.db")
    await storage.open()

    def fill() -> None:
        db = database_proxy.obj
        pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
        db.execute_sql(f"PRAGMA max_page_count = {pages + 2}")  # the disk has two pages left
        repository.apply_batch(
            ActivityBatch(guild_id=G, season=1, heartbeat_at=1.0, messages={("2024-01-01", u): 1 for u in range(5000)})
        )

    try:
        with pytest.raises(StorageError) as caught:
            await storage.run(fill)
        assert caught.value.kind == "disk full"
        assert "full" in str(caught.value) and "rollback" not in str(caught.value)
        # Space is back: the next write works.
        await storage.run(lambda: database_proxy.obj.execute_sql("PRAGMA max_page_count = 1073741823"))
        await storage.run(repository.set_setting, G, "k", 1)
        assert await storage.run(repository.get_setting, G, "k") == 1
    finally:
        await storage.close()


async def test_storage_close_closes_the_database_and_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "async.db"
    storage = Storage(f"sqlite:///{path}")
    await storage.open()
    db = database_proxy.obj
    assert await storage.run(db.is_closed) is False
    await storage.run(repository.set_setting, G, "k", 1)
    wal = f"{path}-wal"
    assert await asyncio.to_thread(os.path.exists, wal)  # WAL mode with an open connection
    await storage.close()
    # SQLite removes the WAL file when the last connection closes: the DB-thread connection is gone.
    assert not await asyncio.to_thread(os.path.exists, wal)
    with pytest.raises(StorageError, match="closed"):
        await storage.run(lambda: None)
    # The file is intact and reopenable.
    reopened = open_database(f"sqlite:///{path}")
    try:
        assert current_version(reopened) == LATEST_VERSION
        assert repository.get_setting(G, "k") == 1
    finally:
        reopened.close()


async def test_a_rollback_failing_after_the_real_error_reports_the_real_error(tmp_path: Path) -> None:
    """On a full disk SQLite rolls back by itself, then peewee's own rollback fails with "cannot
    rollback - no transaction is active", hiding the cause."""
    storage = Storage(f"sqlite:///{tmp_path}/r.db")
    await storage.open()

    def write_then_rollback() -> None:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")  # noqa: B904

    try:
        with pytest.raises(StorageError) as caught:
            await storage.run(write_then_rollback)
        assert caught.value.kind == "disk full"
        assert str(caught.value) == "OperationalError: database or disk is full"
        assert "free some space" in caught.value.advice
    finally:
        await storage.close()


def make_damaged_database(path: Path) -> bytes:
    """A real database with thousands of rows whose middle pages were overwritten; returns its bytes."""
    db = open_database(f"sqlite:///{path}")
    try:
        repository.apply_batch(
            ActivityBatch(guild_id=G, season=1, heartbeat_at=1.0, messages={("2024-01-01", u): u for u in range(5000)})
        )
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    data = bytearray(path.read_bytes())
    page = 4096
    pages = len(data) // page
    assert pages > 10
    for number in range(pages // 2, pages // 2 + 4):  # four pages of garbage, as a bad sector or a bad copy
        data[number * page : (number + 1) * page] = bytes((i * 37 + 11) % 256 for i in range(page))
    path.write_bytes(bytes(data))
    return bytes(data)


def test_a_damaged_database_is_refused_at_open_and_left_untouched(tmp_path: Path) -> None:
    from leaderboard_bot.db.storage import DatabaseDamaged

    path = tmp_path / "damaged.db"
    damaged = make_damaged_database(path)
    with pytest.raises(DatabaseDamaged) as caught:
        open_database(f"sqlite:///{path}")
    message = str(caught.value)
    assert str(path) in message and "damaged" in message and "backup" in message
    assert path.read_bytes() == damaged  # nothing was written to it


def test_a_healthy_database_passes_the_check_and_an_overlong_check_is_skipped(tmp_path: Path) -> None:
    from leaderboard_bot.db.storage import check_integrity

    path = tmp_path / "fine.db"
    open_database(f"sqlite:///{path}").close()
    check_integrity(str(path))  # no error
    check_integrity(str(path), budget=0.0)  # out of time at once: skipped, not failed
    check_integrity(str(tmp_path / "missing.db"))  # a new database has nothing to check


@pytest.mark.parametrize(
    ("raised", "kind", "advice"),
    [
        (sqlite3.OperationalError("disk I/O error"), "i/o", "read-only or immutable"),
        (sqlite3.OperationalError("attempt to write a readonly database"), "read-only", "not writable"),
        (sqlite3.OperationalError("database or disk is full"), "disk full", "free some space"),
        (sqlite3.DatabaseError("database disk image is malformed"), "damaged", "restore a backup"),
    ],
)
def test_each_kind_of_storage_failure_comes_with_its_advice(raised: Exception, kind: str, advice: str) -> None:
    described = StorageError.describe(raised)
    assert described.kind == kind and advice in described.advice


async def test_a_checkpoint_that_fails_after_a_write_never_makes_the_write_look_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write committed; had the copy into the file raised, the batch would have been given
    back and written again: every count doubled (found by review)."""
    path = tmp_path / "board.db"
    async with running_on(path, "k") as storage:
        Path(f"{path}-wal").unlink()
        database = storage.database
        assert database is not None
        real = database.execute_sql

        def refuse_checkpoints(sql: str, *args: Any, **kwargs: Any) -> Any:
            if "wal_checkpoint" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return real(sql, *args, **kwargs)

        monkeypatch.setattr(database, "execute_sql", refuse_checkpoints)
        await storage.run(repository.set_setting, G, "k", 2)  # no StorageError
        assert await storage.read(repository.get_setting, G, "k") == 2
        monkeypatch.undo()
        await storage.run(repository.set_setting, G, "k", 3)  # copied again at the next write
        assert stored_settings(path)["k"] == "3"


async def test_companions_that_cannot_be_moved_aside_are_named_in_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leaderboard_bot.db import storage as storage_module

    path = tmp_path / "board.db"
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    try:
        async with running_on(path, "k") as storage:
            backup = tmp_path / "backup.db"
            sqlite3.connect(backup).close()
            real_replace = os.replace

            def refuse_wal_moves(source: str, target: str) -> None:
                if "-wal" in str(source) or "-shm" in str(source):
                    raise PermissionError(13, "Permission denied")
                real_replace(source, target)

            monkeypatch.setattr(storage_module.os, "replace", refuse_wal_moves)
            real_replace(backup, path)
            with pytest.raises(StorageError):
                await storage.run(repository.set_setting, G, "k", 2)
            with pytest.raises(StorageError):
                await storage.run(repository.set_setting, G, "k", 3)
    finally:
        logger.remove(sink)
    moved = [e for e in errors if "could not move" in e]
    assert len(moved) == 2 and "before restarting" in moved[0]  # -wal and -shm, each said once


async def test_with_the_wal_deleted_a_write_a_read_held_back_is_copied_once_the_read_ends(tmp_path: Path) -> None:
    """A copy into the file cannot pass a reader's snapshot: it is tried again when the read ends,
    not only at the next write (found by review)."""
    path = tmp_path / "board.db"
    async with running_on(path, "before") as storage:
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink()
        await storage.run(repository.set_setting, G, "after", 2)
        held, gate = threading.Event(), threading.Event()

        def long_read() -> None:
            with database_proxy.atomic():
                database_proxy.execute_sql('SELECT count(*) FROM "setting"').fetchone()
                held.set()
                assert gate.wait(10)

        reading = asyncio.ensure_future(storage.read(long_read))
        assert await asyncio.to_thread(held.wait, 5)
        await storage.run(repository.set_setting, G, "during", 3)
        gate.set()
        await reading
        for _ in range(100):  # no write meanwhile: the copy queued when the read ended
            if stored_settings(path).get("during") == "3":
                break
            await asyncio.sleep(0.02)
        assert stored_settings(path)["during"] == "3"
