"""Ranks at scale (v4): exact against brute force from both ends, the kept board size, the planner's
use of the board indexes; and the flush's executemany upsert (adds, never replaces; all or nothing).
Tests taking ``db`` or ``raw`` run on SQLite and on PostgreSQL."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from peewee import Database, IntegrityError, SqliteDatabase

from leaderboard_bot.db import repository
from leaderboard_bot.db.migrations import LATEST_VERSION, migrate
from leaderboard_bot.db.models import DailyActivity, MemberStats, VoiceSession, database_proxy
from leaderboard_bot.db.storage import open_database
from leaderboard_bot.domain import (
    ALL_TIME,
    MONTH,
    ROLLING_WINDOWS,
    TODAY,
    WEEK,
    ActivityBatch,
    Board,
    SeasonRoll,
    SessionClose,
    SessionOpen,
    shift_day,
)
from tests.conftest import close_database, connect_raw

G = 111
BOARDS: tuple[Board, ...] = ("messages", "voice")

IN_SEASONS = MemberStats.season > 0  # season rows, not the windows' (negative scopes)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = open_database(database_url)
    repository._medians.clear()
    try:
        yield database
    finally:
        close_database(database)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = open_database(f"sqlite:///{tmp_path}/r.db")
    repository._medians.clear()
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def raw(database_url: str) -> Iterator[Database]:
    database = connect_raw(database_url)
    try:
        yield database
    finally:
        database.close()


def schema_names(database: Database) -> set[str]:
    """Every table, index and trigger (and, on PostgreSQL, function) in the database."""
    if isinstance(database, SqliteDatabase):
        return {row[0] for row in database.execute_sql("SELECT name FROM sqlite_master").fetchall()}
    sql = (
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
        "UNION SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
        "UNION SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
        "UNION SELECT proname FROM pg_proc WHERE pronamespace = current_schema()::regnamespace"
    )
    return {row[0] for row in database.execute_sql(sql).fetchall()}


def fail_season_inserts(database: Database) -> None:
    """A trigger that makes the season roll, last in a flush's transaction, fail."""
    if isinstance(database, SqliteDatabase):
        database.execute_sql(
            "CREATE TRIGGER fail_roll BEFORE INSERT ON season BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
        return
    database.execute_sql(
        "CREATE FUNCTION fail_roll() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'disk on fire' USING ERRCODE = 'integrity_constraint_violation'; END $$"
    )
    database.execute_sql("CREATE TRIGGER fail_roll BEFORE INSERT ON season FOR EACH ROW EXECUTE FUNCTION fail_roll()")


def drop_fail_season_inserts(database: Database) -> None:
    database.execute_sql("DROP TRIGGER fail_roll" + ("" if isinstance(database, SqliteDatabase) else " ON season"))


def batch(season: int = 1, **kw: object) -> ActivityBatch:
    return ActivityBatch(guild_id=G, season=season, heartbeat_at=1_000.0, **kw)  # type: ignore[arg-type]


def brute_force_order(season: int, board: Board) -> list[int]:
    """The board by definition: value above zero, value descending, then user id ascending."""
    rows = [
        (r.user_id, r.messages if board == "messages" else r.voice_seconds)
        for r in MemberStats.select().where((MemberStats.guild_id == G) & (MemberStats.season == season))
    ]
    return [user for user, value in sorted((r for r in rows if r[1] > 0), key=lambda r: (-r[1], r[0]))]


def fill_with_ties(rng: random.Random, members: int, season: int = 1) -> None:
    """Few distinct values, so most members tie; some on one board only; written in several flushes."""
    users = rng.sample(range(1, 10 * members), members)
    for part in range(0, members, members // 4):
        chunk = users[part : part + members // 4]
        repository.apply_batch(
            batch(
                season=season,
                messages={("2024-03-10", u): rng.choice((1, 1, 1, 2, 2, 3, 7)) for u in chunk if rng.random() < 0.8},
                voice={("2024-03-10", u): rng.choice((30.0, 30.0, 60.5, 900.25)) for u in chunk if rng.random() < 0.4},
            )
        )


# --------------------------------------------------------------------------- ranks


@pytest.mark.parametrize("board", BOARDS)
def test_rank_of_is_exact_from_both_ends_with_many_ties(db: Database, board: Board) -> None:
    rng = random.Random(5)
    fill_with_ties(rng, 400)
    repository.apply_batch(batch(season=2, messages={("2024-03-11", 1): 9}))  # another season: not counted
    order = brute_force_order(1, board)
    assert len(order) > 64  # large enough for rank_of to choose an end by the median
    ranked = repository.ranked_count(G, 1, board)
    assert ranked == len(order)
    rows = MemberStats.select().where(IN_SEASONS)
    value = {r.user_id: (r.messages if board == "messages" else r.voice_seconds) for r in rows}
    for position, user in enumerate(order, start=1):
        assert repository.rank_from_top(G, 1, board, value[user], user) == position
        assert repository.rank_from_bottom(G, 1, board, value[user], user, ranked) == position
        assert repository.rank_of(G, 1, board, user) == position
    unranked = [u for u in value if u not in set(order)]
    assert unranked and all(repository.rank_of(G, 1, board, u) is None for u in unranked)


def test_rank_of_stays_exact_with_a_stale_median(db: Database) -> None:
    rng = random.Random(9)
    fill_with_ties(rng, 300)
    before = brute_force_order(1, "messages")
    assert repository.rank_of(G, 1, "messages", before[0]) == 1  # remembers this board's median
    # Everyone below the old median climbs far above it: the remembered median is now wrong (the
    # board's size did not change, so it is not refreshed).
    climbers = before[len(before) // 2 :]
    repository.apply_batch(batch(messages={("2024-03-12", u): 50 for u in climbers}))
    order = brute_force_order(1, "messages")
    for position, user in enumerate(order, start=1):
        assert repository.rank_of(G, 1, "messages", user) == position


def test_ranked_count_is_kept_through_inserts_updates_and_deletes(db: Database) -> None:
    repository.apply_batch(batch(voice={("2024-03-10", 1): 5.0}))  # voice only: not on messages
    assert (repository.ranked_count(G, 1, "messages"), repository.ranked_count(G, 1, "voice")) == (0, 1)
    repository.apply_batch(batch(messages={("2024-03-10", 1): 2, ("2024-03-10", 2): 1}))
    assert (repository.ranked_count(G, 1, "messages"), repository.ranked_count(G, 1, "voice")) == (2, 1)
    MemberStats.insert(guild_id=G, season=1, user_id=3, messages=0, voice_seconds=0.0).execute()
    assert repository.ranked_count(G, 1, "messages") == 2  # a zero row ranks nowhere
    MemberStats.update(messages=4).where(MemberStats.user_id == 3).execute()
    assert repository.ranked_count(G, 1, "messages") == 3
    MemberStats.update(messages=0).where(MemberStats.user_id == 2).execute()
    MemberStats.delete().where(MemberStats.user_id == 1).execute()
    assert (repository.ranked_count(G, 1, "messages"), repository.ranked_count(G, 1, "voice")) == (1, 0)
    assert repository.ranked_count(G, 2, "messages") == 0
    for board in BOARDS:
        count = MemberStats.select().where((MemberStats.guild_id == G) & (repository._board_column(board) > 0)).count()
        assert repository.ranked_count(G, 1, board) == count


def query_plan(database: SqliteDatabase, query: object) -> str:
    sql, params = query.sql()  # type: ignore[attr-defined]
    return " | ".join(str(row[-1]) for row in database.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params).fetchall())


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh", "after-analyze"])
@pytest.mark.parametrize("board", BOARDS)
def test_every_rank_count_and_the_top_walk_the_board_index(
    sqlite_db: SqliteDatabase, board: Board, analyzed: bool
) -> None:
    db = sqlite_db  # SQLite's planner; PostgreSQL's plans depend on its statistics (bench/rank_scale.py)
    rng = random.Random(3)
    fill_with_ties(rng, 400)
    if analyzed:
        db.execute_sql("ANALYZE")  # what PRAGMA optimize may do: the plan must not move to the primary key
    index = f"member_stats_board_{board}"
    for query in repository.rank_queries(G, 1, board, 2.0, 1234):
        plan = query_plan(db, query)
        assert f"COVERING INDEX {index}" in plan, plan
        assert "sqlite_autoindex" not in plan and "SCAN" not in plan, plan
    top = (
        MemberStats.select(MemberStats.user_id)
        .where((MemberStats.guild_id == G) & (MemberStats.season == 1) & (repository._board_column(board) > 0))
        .order_by(repository._board_column(board).desc(), MemberStats.user_id.asc())
        .limit(10)
    )
    plan = query_plan(db, top)
    assert index in plan and "TEMP B-TREE" not in plan, plan  # the index is in board order: no sort


def test_a_count_from_a_snapshot_older_than_an_erasure_is_never_reused_after_it(db: Database) -> None:
    """/privacy delete removes rows without a new write number. A reader whose snapshot began
    before the erase can store its count after it: that count must not serve later reads (found
    by review: ranks counted from the bottom were one off until the next write)."""
    repository.apply_batch(batch(messages={("2024-03-10", u): u for u in (1, 2, 3)}, sequence=1))
    in_snapshot, erased = threading.Event(), threading.Event()
    counted: list[int] = []

    def old_reader() -> None:
        with repository.snapshot():
            sequence = repository.write_sequence(G)  # the snapshot begins here
            in_snapshot.set()
            assert erased.wait(10)
            counted.append(repository.ranked_count(G, 1, "messages", sequence))
        db.close()

    reader = threading.Thread(target=old_reader)
    reader.start()
    assert in_snapshot.wait(10)
    repository.erase_member(G, 2, {repository.privacy_key(2): "stopped"})
    erased.set()
    reader.join(10)
    assert counted == [3]  # what its snapshot held
    with repository.snapshot():
        assert repository.ranked_count(G, 1, "messages", repository.write_sequence(G)) == 2


def hide_some(rng: random.Random, share: float) -> set[int]:
    """Store a privacy choice for a share of the season's members (and one for a member with no row)."""
    users = [int(u) for (u,) in MemberStats.select(MemberStats.user_id).where(MemberStats.season == 1).tuples()]
    hidden = {u for u in users if rng.random() < share} | {99_999_999}
    for user in hidden:
        repository.set_setting(G, repository.privacy_key(user), '{"hidden": true}')
    repository.set_setting(G, "privacy_note", "not a member's choice")
    return hidden


@pytest.mark.parametrize("board", BOARDS)
def test_the_unlisted_members_ahead_are_counted_from_their_privacy_rows(db: Database, board: Board) -> None:
    rng = random.Random(11)
    fill_with_ties(rng, 400)
    hidden = hide_some(rng, 0.2)
    column = repository._board_column(board)
    rows = {
        int(u): float(v)
        for u, v in MemberStats.select(MemberStats.user_id, column).where(MemberStats.season == 1).tuples()
    }
    for user_id in [*rng.sample(sorted(rows), 40), *sorted(hidden)[:5]]:
        for value in (rows.get(user_id, 1.0), 1.0, 2.0, 900.25, 0.5):
            expected = sum(
                1
                for other, held in rows.items()
                if other in hidden and other != user_id and (held > value or (held == value and other < user_id))
            )
            assert repository.count_unlisted_beating(G, 1, board, value, user_id) == expected


@pytest.mark.parametrize("board", BOARDS)
def test_the_unlisted_count_looks_members_up_by_key_never_walks_the_board(
    sqlite_db: SqliteDatabase, board: Board
) -> None:
    rng = random.Random(3)
    fill_with_ties(rng, 400)
    hide_some(rng, 0.05)
    sqlite_db.execute_sql("ANALYZE")
    plan = query_plan(sqlite_db, repository.unlisted_beating_query(G, 1, board, 1.0, 1234))
    assert "member_stats_board" not in plan and "SCAN member_stats" not in plan, plan
    assert "PRIMARY KEY" in plan, plan


def test_open_database_runs_optimize_and_sizes_the_cache(sqlite_db: SqliteDatabase) -> None:
    db = sqlite_db
    assert db.execute_sql("PRAGMA cache_size").fetchone()[0] <= -64_000  # at least 64 MB
    assert db.execute_sql("PRAGMA mmap_size").fetchone()[0] == 0  # the writer's: its own cache only
    seen: list[int] = []

    def read() -> None:  # another thread: a reader's connection maps the file
        seen.append(db.execute_sql("PRAGMA mmap_size").fetchone()[0])
        db.close()

    reader = threading.Thread(target=read)
    reader.start()
    reader.join()
    assert seen[0] >= 256 * 1024 * 1024


# --------------------------------------------------------------------------- migration v4


def test_v4_keeps_every_row_of_a_v3_database_and_counts_its_boards(raw: Database) -> None:
    database = raw
    assert migrate(database, target=3) == 3
    rows = [(G, 1, u, u % 4, float(u % 3) * 10.5) for u in range(1, 201)] + [(G, 2, 7, 3, 0.0), (222, 1, 7, 0, 1.5)]
    marks = "(" + ", ".join(database.param for _ in range(5)) + ")"
    database.execute_sql(
        "INSERT INTO member_stats VALUES " + ", ".join(marks for _ in rows),
        [v for r in rows for v in r],
    )
    database.execute_sql(
        f'INSERT INTO "daily_activity" VALUES {marks}, {marks}',
        (G, "2024-03-10", 5, 2, 1.5, G, "2024-03-11", 5, 1, 0.0),
    )
    assert migrate(database, target=4) == 4
    assert sorted(database.execute_sql('SELECT * FROM "member_stats"').fetchall()) == sorted(rows)
    assert database.execute_sql('SELECT * FROM "daily_activity" ORDER BY "day"').fetchall() == [
        (G, "2024-03-10", 5, 2, 1.5),
        (G, "2024-03-11", 5, 1, 0.0),
    ]
    sizes = database.execute_sql('SELECT * FROM "board_size" ORDER BY "guild_id", "season"').fetchall()
    expected_1 = (sum(1 for r in rows[:200] if r[3] > 0), sum(1 for r in rows[:200] if r[4] > 0))
    assert sizes == [(G, 1, *expected_1), (G, 2, 1, 0), (222, 1, 0, 1)]
    names = schema_names(database)
    assert {"member_stats_board_messages", "member_stats_board_voice"} <= names
    assert not {"member_stats_rank_messages", "member_stats_rank_voice"} & names  # superseded
    # And the migrated file ranks exactly.
    database_proxy.initialize(database)
    repository._medians.clear()
    for board in BOARDS:
        for position, user in enumerate(brute_force_order(1, board), start=1):
            assert repository.rank_of(G, 1, board, user) == position


def board_sizes(database: Database) -> list[tuple[int, ...]]:
    rows = database.execute_sql('SELECT * FROM "board_size" ORDER BY "guild_id", "season"').fetchall()
    return [tuple(int(v) for v in row) for row in rows]


def counted_sizes(database: Database) -> list[tuple[int, ...]]:
    rows = database.execute_sql(
        'SELECT "guild_id", "season", SUM(CASE WHEN "messages" > 0 THEN 1 ELSE 0 END), '
        'SUM(CASE WHEN "voice_seconds" > 0 THEN 1 ELSE 0 END) FROM "member_stats" GROUP BY "guild_id", "season" '
        'ORDER BY "guild_id", "season"'
    ).fetchall()
    return [tuple(int(v) for v in row) for row in rows]


def test_v4s_triggers_keep_the_board_sizes_exact_on_every_backend(raw: Database) -> None:
    """v4's triggers (SQLite's, PostgreSQL's plpgsql) through inserts, updates across zero and deletes."""
    database = raw
    assert migrate(database, target=4) == 4
    p = database.param
    insert = f'INSERT INTO "member_stats" VALUES ({p}, {p}, {p}, {p}, {p})'
    for row in [(G, 1, 1, 3, 0.0), (G, 1, 2, 0, 5.5), (G, 1, 3, 0, 0.0), (G, 2, 1, 1, 1.0), (222, 1, 9, 2, 2.0)]:
        database.execute_sql(insert, row)
    assert board_sizes(database) == counted_sizes(database) == [(G, 1, 1, 1), (G, 2, 1, 1), (222, 1, 1, 1)]
    for sql in (
        'UPDATE "member_stats" SET "messages" = "messages" + 4 WHERE "guild_id" = 111 AND "season" = 1',  # 2, 3 join
        'UPDATE "member_stats" SET "voice_seconds" = 0 WHERE "user_id" = 2',  # leaves the voice board
        'UPDATE "member_stats" SET "messages" = 0 WHERE "user_id" = 1 AND "season" = 2',
        'DELETE FROM "member_stats" WHERE "user_id" = 9',
        'DELETE FROM "member_stats" WHERE "user_id" = 3',
    ):
        database.execute_sql(sql)
        assert [r for r in board_sizes(database) if r[2:] != (0, 0)] == counted_sizes(database), sql
    assert migrate(database) == LATEST_VERSION  # v6 drops them again
    assert not {n for n in schema_names(database) if "board_size" in n}


# --------------------------------------------------------------------------- the flush's upsert


def totals() -> dict[int, tuple[int, float]]:
    in_season = (MemberStats.guild_id == G) & (MemberStats.season == 1)
    return {r.user_id: (r.messages, r.voice_seconds) for r in MemberStats.select().where(in_season)}


def test_the_upsert_adds_to_stored_counters_in_every_shape(db: Database) -> None:
    MemberStats.insert(guild_id=G, season=1, user_id=1, messages=10, voice_seconds=100.0).execute()
    MemberStats.insert(guild_id=G, season=1, user_id=2, messages=10, voice_seconds=100.0).execute()
    MemberStats.insert(guild_id=G, season=1, user_id=3, messages=10, voice_seconds=100.0).execute()
    day = "2024-03-10"
    repository.apply_batch(
        batch(
            messages={(day, 1): 2, (day, 3): 1, (day, 4): 5},  # 1: messages only; 3: both; 4: new
            voice={(day, 2): 7.5, (day, 3): 0.5, (day, 5): 60.0},  # 2: voice only; 5: new, voice only
        )
    )
    assert totals() == {1: (12, 100.0), 2: (10, 107.5), 3: (11, 100.5), 4: (5, 0.0), 5: (0, 60.0)}
    repository.apply_batch(batch(messages={(day, 1): 1, ("2024-03-11", 1): 1}, voice={(day, 5): 0.25}))
    assert totals()[1] == (14, 100.0) and totals()[5] == (0, 60.25)
    daily = {(r.day, r.user_id): (r.messages, r.voice_seconds) for r in DailyActivity.select()}
    assert daily[(day, 1)] == (3, 0.0) and daily[("2024-03-11", 1)] == (1, 0.0) and daily[(day, 3)] == (1, 0.5)


def test_the_upsert_uses_the_databases_placeholder(db: Database) -> None:
    sql = repository._upsert_sql("member_stats", ("guild_id", "season", "user_id"), ("messages",), "%s")
    assert sql.count("%s") == 5 and "?" not in sql
    assert 'ON CONFLICT ("guild_id", "season", "user_id") DO UPDATE SET' in sql
    assert '"messages" = "member_stats"."messages" + excluded."messages"' in sql
    assert 'voice_seconds" = ' not in sql  # a message-only row leaves the voice column (and its index) alone


def test_a_failure_late_in_the_batch_rolls_the_upserts_back_whole(db: Database) -> None:
    day = "2024-03-10"
    repository.apply_batch(batch(messages={(day, u): 1 for u in range(1, 101)}, sequence=1))
    before = (totals(), repository.ranked_count(G, 1, "messages"), repository.get_setting(G, "write_sequence"))
    fail_season_inserts(db)  # the season roll, last in the transaction, fails after every upsert ran
    bad = batch(
        messages={(day, u): 5 for u in range(1, 201)},
        voice={(day, u): 9.0 for u in range(50, 150)},
        sequence=2,
        roll=SeasonRoll(number=1, ended_at=2_000.0, period=10.0),
    )
    with pytest.raises(IntegrityError, match="disk on fire"):  # peewee's error types, as from its own queries
        repository.apply_batch(bad)
    assert (totals(), repository.ranked_count(G, 1, "messages"), repository.get_setting(G, "write_sequence")) == before
    assert DailyActivity.select().count() == 100
    drop_fail_season_inserts(db)
    repository.apply_batch(bad)  # the same batch once the cause is gone: applied exactly once
    assert totals()[1] == (6, 0.0) and totals()[150] == (5, 0.0) and totals()[60] == (6, 9.0)
    assert repository.get_setting(G, "write_sequence") == 2


def test_the_upsert_fails_cleanly_on_a_constraint(db: Database) -> None:
    with pytest.raises(IntegrityError):
        repository.apply_batch(batch(messages={("2024-03-10", None): 1}))
    assert totals() == {}
    if isinstance(db, SqliteDatabase):
        assert sqlite3.sqlite_version_info >= (3, 24)  # ON CONFLICT ... DO UPDATE needs it


def test_ranked_counts_are_counted_once_per_write_number(db: Database) -> None:
    repository.apply_batch(batch(messages={("2026-12-02", 1): 2}, sequence=1))
    repository.count_ranked_boards(G, 1)
    assert repository.ranked_count(G, 1, "messages", 1) == 1
    MemberStats.insert(guild_id=G, season=1, user_id=99, messages=5, voice_seconds=0).execute()  # behind its back
    assert repository.ranked_count(G, 1, "messages", 1) == 1  # the count at write 1 is kept...
    assert repository.ranked_count(G, 1, "messages") == 2  # ...an uncached count sees the row
    repository.apply_batch(batch(messages={("2026-12-02", 2): 1}, sequence=2))
    assert repository.ranked_count(G, 1, "messages", 2) == 3  # a new write number: counted again
    repository.apply_batch(batch(messages={("2026-12-02", 3): 1}))  # a write without a number...
    assert repository.ranked_count(G, 1, "messages", 2) == 4  # ...forgets the counts it moved


def test_v6_drops_the_board_size_triggers_and_table(db: Database) -> None:
    names = schema_names(db)
    assert "board_size" not in names and not {n for n in names if n.startswith("member_stats_board_size")}
    assert {"member_stats_board_messages", "member_stats_board_voice", "lease"} <= names


def test_a_flush_across_midnight_adds_each_window_only_its_days(db: Database) -> None:
    """Every scope of one batch holding three days: the season and all time get all of it, each
    window only the days it spans (on SQLite each such part is summed in SQL from the temp table)."""
    repository.apply_batch(batch(messages={("2026-11-01", 9): 1}, today="2026-11-01"))
    days = ("2026-11-03", "2026-11-09", "2026-11-10")  # the month, the week and today end on the 10th
    repository.apply_batch(
        batch(
            messages={(days[0], 1): 1, (days[1], 1): 2, (days[2], 1): 4, (days[2], 2): 8},
            voice={(days[0], 2): 1.5, (days[1], 3): 2.5, (days[2], 1): 0.25},
            names={1: ("Ann", "ann"), 2: ("Bo", None)},
            today=days[2],
        )
    )
    assert totals() == {1: (7, 0.25), 2: (8, 1.5), 3: (0, 2.5), 9: (1, 0.0)}
    assert window_rows(ALL_TIME.scope) == totals()
    assert window_rows(TODAY.scope) == {1: (4, 0.25), 2: (8, 0.0)}
    assert window_rows(WEEK.scope) == {1: (6, 0.25), 2: (8, 0.0), 3: (0, 2.5)}
    assert window_rows(MONTH.scope) == {1: (7, 0.25), 2: (8, 1.5), 3: (0, 2.5), 9: (1, 0.0)}
    check_windows(days[2])
    assert repository.names(G, [1, 2]) == {1: "Ann", 2: "Bo"}


def test_a_big_flush_gives_memory_back_after_it_commits(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[bool] = []
    monkeypatch.setattr(repository, "release_memory", lambda database: released.append(database.in_transaction()))
    repository.apply_batch(batch(messages={("2026-12-02", u): 1 for u in range(1, repository.BIG_FLUSH_ROWS)}))
    assert released == []  # a flush below the size leaves the caches as they are
    repository.apply_batch(batch(messages={("2026-12-02", u): 1 for u in range(1, repository.BIG_FLUSH_ROWS + 1)}))
    assert released == [False]  # once, after the commit
    assert totals()[1] == (2, 0.0) and totals()[repository.BIG_FLUSH_ROWS] == (1, 0.0)
    monkeypatch.undo()
    repository.release_memory(db)  # for real: SQLite's shrink_memory and glibc's malloc_trim; nothing lost
    with db.atomic():
        repository.release_memory(db)  # inside a transaction it does nothing
    assert len(totals()) == repository.BIG_FLUSH_ROWS


def test_a_flush_hands_sqlite_many_rows_per_statement(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite3 lets go of the GIL for every statement: a statement per row made a flush during a busy
    event loop wait for the GIL once per row (100,000 rows: 24 s; bench/README.md). Exact values, a
    partial last statement, and a number of statements that does not grow with the rows."""
    if not isinstance(db, SqliteDatabase):
        pytest.skip("PostgreSQL: psycopg pipelines executemany instead")
    monkeypatch.setattr(repository, "MULTI_ROW_INSERT_ROWS", 700)
    day = "2026-12-02"

    def flush(members: int) -> int:
        statements: list[str] = []
        db.connection().set_trace_callback(statements.append)
        try:
            repository.apply_batch(
                batch(
                    messages={(day, u): u % 7 + 1 for u in range(1, members + 1)},
                    voice={(day, u): u / 10 for u in range(1, members + 1, 3)},
                    names={u: (f"Member \u200b{u}", f"m{u}") for u in range(1, members + 1)},
                )
            )
        finally:
            db.connection().set_trace_callback(None)
        return len(statements)

    small, large = flush(1_500), flush(3_000)
    assert large - small <= 2 * (3_000 - 1_500) // 700 + 2  # two more statements per 700 rows, not per row
    stored = totals()
    assert len(stored) == 3_000
    assert stored[2_998] == (2_998 % 7 + 1, 299.8) and stored[2_999] == (2_999 % 7 + 1, 0.0)
    assert stored[4] == (2 * 5, 0.4 + 0.4) and stored[1_498] == (2 * (1_498 % 7 + 1), 149.8 + 149.8)
    assert repository.names(G, [1, 2_999]) == {1: "Member \u200b1", 2_999: "Member \u200b2999"}

    # A mass disconnect: 2,000 sessions end in one flush, one of them twice (the first end holds),
    # one already ended (it keeps its end).
    opened = [SessionOpen(f"s{n}", n, 5, 100.0) for n in range(2_000)]
    repository.apply_batch(batch(opened=opened))
    repository.apply_batch(batch(closed=[SessionClose("s0", 150.0)]))
    closed = [SessionClose(f"s{n}", 200.0 + n) for n in range(2_000)] + [SessionClose("s1", 999.0)]
    statements: list[str] = []
    db.connection().set_trace_callback(statements.append)
    try:
        repository.apply_batch(batch(closed=closed))
    finally:
        db.connection().set_trace_callback(None)
    assert len(statements) < 30
    ends = {s.key: (s.ended_at, s.last_seen_at) for s in VoiceSession.select()}
    assert ends["s0"] == (150.0, 150.0) and ends["s1"] == (201.0, 201.0) and ends["s1999"] == (2_199.0, 2_199.0)
    assert all(end is not None for end, _ in ends.values())


@pytest.mark.parametrize("per", [1, 7, 700, 1_024])
def test_statement_sizes_cover_the_rows_with_few_distinct_sizes(per: int) -> None:
    sizes_seen: set[int] = set()
    for count in [*range(0, 3 * per + 2), 10_007, 99_999]:
        sizes = list(repository._statement_sizes(count, per))
        assert sum(sizes) == count
        assert all(size == per or (size < per and size & (size - 1) == 0) for size in sizes)
        assert len(sizes) <= count // per + per.bit_length()
        sizes_seen.update(sizes)
    assert len(sizes_seen) <= per.bit_length() + 1


def test_flushes_of_any_size_prepare_a_bounded_set_of_insert_statements(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite3 keeps every statement text it ran prepared (128 per connection), and a prepared
    multi-row INSERT holds SQLite memory in proportion to its rows (5,000 rows: 2.3 MB). A statement
    per remainder size made every flush of a new size add one: 16 MB held after the memory benchmark."""
    if not isinstance(db, SqliteDatabase):
        pytest.skip("PostgreSQL: psycopg pipelines executemany instead")
    monkeypatch.setattr(repository, "MULTI_ROW_INSERT_ROWS", 64)
    day = "2026-12-02"
    texts: set[str] = set()
    db.connection().set_trace_callback(texts.add)
    try:
        first = 1
        for members in (1, 2, 3, 5, 17, 29, 45, 63, 64, 65, 100, 127, 200, 250, 333, 1_000):
            users = range(first, first + members)
            repository.apply_batch(
                batch(messages={(day, u): 1 for u in users}, names={u: (f"n{u}", f"u{u}") for u in users})
            )
            first += members
    finally:
        db.connection().set_trace_callback(None)
    # Traced texts have their values bound in; the shape is what the cache keys on.
    inserts = {text.split(" VALUES ")[0] + f" x{text.count('), (') + 1}" for text in texts if " VALUES (" in text}
    assert len(inserts) <= 2 * ((64).bit_length() + 1)
    assert len(totals()) == first - 1


@pytest.mark.parametrize("rows", [[(1, 2), (3,), (4, 5, 6)], [(1, 2), (3, 4, 5)], [(1, 2, 3)]])
def test_a_row_of_the_wrong_width_is_refused_before_anything_is_written(rows: list[tuple[int, ...]]) -> None:
    """Rows are flattened into one parameter list per statement, so a short row would shift every
    later value into another column (and the lengths of the first example even add up)."""
    import sqlite3

    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (a, b)")
    with pytest.raises(ValueError, match="2 values"):
        repository._insert_rows(connection.cursor(), "INSERT INTO t", 2, rows)
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_v8_stores_the_flushed_tables_without_rowid_on_sqlite(db: Database) -> None:
    if not isinstance(db, SqliteDatabase):
        pytest.skip("PostgreSQL has no rowid: v8 changes nothing there")
    for table in ("member_stats", "daily_activity"):
        sql = db.execute_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
        assert sql.rstrip().upper().endswith("WITHOUT ROWID"), sql
    assert {"member_stats_board_messages", "member_stats_board_voice"} <= schema_names(db)


# --------------------------------------------------------------------------- windows


def window_rows(scope: int) -> dict[int, tuple[int, float]]:
    rows = MemberStats.select().where((MemberStats.guild_id == G) & (MemberStats.season == scope))
    return {r.user_id: (int(r.messages), float(r.voice_seconds)) for r in rows}


def bucket_truth(first_day: str, last_day: str) -> dict[int, tuple[int, float]]:
    """A window by definition: the daily buckets of its days, summed; members with nothing left out."""
    out: dict[int, tuple[int, float]] = {}
    in_days = (DailyActivity.guild_id == G) & DailyActivity.day.between(first_day, last_day)
    for r in DailyActivity.select().where(in_days):
        m, v = out.get(r.user_id, (0, 0.0))
        out[r.user_id] = (m + r.messages, v + r.voice_seconds)
    return {u: (m, pytest.approx(v)) for u, (m, v) in out.items() if m > 0 or v > 0}  # type: ignore[misc]


def check_windows(today: str) -> None:
    for window in ROLLING_WINDOWS:
        assert window.days is not None
        assert window_rows(window.scope) == bucket_truth(shift_day(today, 1 - window.days), today), window


def test_windows_follow_the_days_exactly_as_they_move_on(db: Database) -> None:
    rng = random.Random(7)
    day = "2026-11-01"
    for step in range(45):
        if rng.random() < 0.7:
            day = shift_day(day, rng.choice([1, 1, 1, 2, 3, 9]) if step else 0)
        messages = {(day, rng.randint(1, 30)): rng.randint(1, 4) for _ in range(rng.randint(0, 12))}
        voice = {(day, rng.randint(1, 30)): rng.choice([0.1, 0.2, 0.7, 60.0]) for _ in range(rng.randint(0, 8))}
        repository.apply_batch(batch(messages=messages, voice=voice, today=day))
        check_windows(day)
    assert repository.get_setting(G, repository.WINDOWS_DAY_KEY) == day


def test_an_idle_day_empties_today_and_a_long_gap_empties_every_window(db: Database) -> None:
    repository.apply_batch(batch(messages={("2026-11-01", 1): 3}, voice={("2026-11-01", 2): 30.0}, today="2026-11-01"))
    assert window_rows(TODAY.scope) == {1: (3, 0.0), 2: (0, 30.0)}
    repository.apply_batch(batch(today="2026-11-02"))  # a flush with nothing in it, after midnight
    assert window_rows(TODAY.scope) == {}
    assert window_rows(WEEK.scope) == {1: (3, 0.0), 2: (0, 30.0)}
    repository.apply_batch(batch(today="2026-11-08"))
    assert window_rows(WEEK.scope) == {}  # the 1st fell out of the week ending on the 8th
    assert window_rows(MONTH.scope) == {1: (3, 0.0), 2: (0, 30.0)}
    repository.apply_batch(batch(today="2027-01-01"))
    assert window_rows(MONTH.scope) == {}
    assert window_rows(ALL_TIME.scope) == {1: (3, 0.0), 2: (0, 30.0)}  # all time never forgets


def test_windows_never_move_back_and_late_rows_of_a_past_day_land_where_they_belong(db: Database) -> None:
    repository.apply_batch(batch(messages={("2026-11-10", 1): 1}, today="2026-11-10"))
    # A batch read back from a recovery file after the windows moved on: its own days only.
    repository.apply_batch(batch(messages={("2026-11-09", 1): 2, ("2026-11-01", 2): 5}))
    assert repository.get_setting(G, repository.WINDOWS_DAY_KEY) == "2026-11-10"
    assert window_rows(TODAY.scope) == {1: (1, 0.0)}
    assert window_rows(WEEK.scope) == {1: (3, 0.0)}  # the 1st is outside the week
    assert window_rows(MONTH.scope) == {1: (3, 0.0), 2: (5, 0.0)}
    check_windows("2026-11-10")


def test_windows_ending_after_today_at_start_are_built_again_for_today_when_the_zone_moved_west(
    db: Database,
) -> None:
    """TIMEZONE moved west over midnight (UTC's 06-02 is still 06-01 in Los Angeles): the windows
    ended on 06-02 and today's counts, on 06-01, never reached today's board (found by a tester)."""
    repository.apply_batch(batch(messages={("2026-06-01", 1): 4, ("2026-06-02", 2): 1}, today="2026-06-02"))
    assert repository.prepare_windows(G, "2026-06-02", "UTC") is False
    assert repository.prepare_windows(G, "2026-06-01", "America/Los_Angeles") is True  # built again
    assert repository.windows_day(G) == "2026-06-01"
    repository.apply_batch(batch(messages={("2026-06-01", 3): 3}, today="2026-06-01"))
    assert window_rows(TODAY.scope) == {1: (4, 0.0), 3: (3, 0.0)}
    check_windows("2026-06-01")
    assert repository.prepare_windows(G, "2026-06-01", "America/Los_Angeles") is False


def test_a_clock_behind_at_start_leaves_the_windows_as_they_are(db: Database) -> None:
    """The same zone, a day earlier: a clock not yet synchronised at boot (no real-time clock).
    Built again, the windows would lose the later day's counts for good (found by review)."""
    repository.apply_batch(batch(messages={("2026-06-01", 1): 4, ("2026-06-02", 2): 1}, today="2026-06-02"))
    assert repository.prepare_windows(G, "2026-06-02", "UTC") is False
    assert repository.prepare_windows(G, "2026-06-01", "UTC") is False
    assert repository.windows_day(G) == "2026-06-02"
    check_windows("2026-06-02")


def test_windows_are_built_from_what_is_stored_the_first_time(db: Database) -> None:
    """An upgraded database: seasons and daily buckets written before windows existed."""
    for season, user, messages in [(1, 1, 10), (2, 1, 5), (2, 2, 7)]:
        MemberStats.insert(guild_id=G, season=season, user_id=user, messages=messages, voice_seconds=0.0).execute()
    for day, user, messages in [("2026-11-30", 1, 4), ("2026-11-25", 2, 7), ("2026-10-01", 1, 11)]:
        DailyActivity.insert(guild_id=G, day=day, user_id=user, messages=messages, voice_seconds=0.0).execute()
    repository.apply_batch(batch(messages={("2026-12-01", 2): 1}, today="2026-12-01"))
    assert window_rows(ALL_TIME.scope) == {1: (15, 0.0), 2: (8, 0.0)}
    assert window_rows(WEEK.scope) == {1: (4, 0.0), 2: (8, 0.0)}
    assert window_rows(TODAY.scope) == {2: (1, 0.0)}
    check_windows("2026-12-01")


def test_a_voice_total_subtracted_to_a_rounding_error_leaves_the_board(db: Database) -> None:
    day1, day2 = "2026-11-01", "2026-11-02"
    repository.apply_batch(batch(voice={(day1, 1): 0.1}, today=day1))
    repository.apply_batch(batch(voice={(day1, 1): 0.2}, today=day1))
    repository.apply_batch(batch(voice={(day1, 1): 0.7}, messages={(day1, 2): 1}, today=day1))
    repository.apply_batch(batch(today=day2))
    assert window_rows(TODAY.scope) == {}
    assert repository.top(G, TODAY.scope, "voice", 10) == []
    assert repository.rank_of(G, TODAY.scope, "voice", 1) is None


def test_window_boards_rank_like_season_boards(db: Database) -> None:
    day = "2026-11-05"
    repository.apply_batch(batch(messages={(day, u): u % 7 + 1 for u in range(1, 40)}, today=day))
    for window in (TODAY, WEEK, MONTH, ALL_TIME):
        order = brute_force_order(window.scope, "messages")
        assert [e.user_id for e in repository.top(G, window.scope, "messages", 10)] == order[:10]
        assert [repository.rank_of(G, window.scope, "messages", u) for u in order] == list(range(1, len(order) + 1))


# --------------------------------------------------------------------------- best placings


def brute_force_best(seasons: list[int], user: int) -> tuple[int, str, int, float] | None:
    best = None
    for season in seasons:  # in order: a later season wins a tie
        for board in BOARDS:  # messages first: it wins a tie within a season
            order = brute_force_order(season, board)
            if user in order:
                rank = order.index(user) + 1
                value = next(
                    float(r.messages if board == "messages" else r.voice_seconds)
                    for r in MemberStats.select().where(
                        (MemberStats.guild_id == G) & (MemberStats.season == season) & (MemberStats.user_id == user)
                    )
                )
                if best is None or rank < best[2] or (rank == best[2] and season > best[0]):
                    best = (season, board, rank, value)
    return best


def test_best_placings_match_brute_force_over_seasons(db: Database) -> None:
    rng = random.Random(11)
    seasons = [1, 2, 3, 4]
    for season in seasons:
        for user in rng.sample(range(1, 60), 35):
            MemberStats.insert(
                guild_id=G,
                season=season,
                user_id=user,
                messages=rng.choice([0, 1, 1, 2, 3, 5, 8, 40]),
                voice_seconds=rng.choice([0.0, 0.0, 30.0, 60.0, 3600.5]),
            ).execute()
        repository.record_placings(G, season)
        repository.record_placings(G, season)  # twice (a roll retried): the same
        for user in range(1, 60):
            assert repository.best_placing(G, user) == brute_force_best(seasons[:season], user), (season, user)
    assert repository.get_setting(G, repository.PLACINGS_KEY) == 4


def test_placings_pass_over_members_hidden_when_the_season_ends(db: Database) -> None:
    """The final standings leave out who chose not to be listed and renumber the rest: a member's
    best finished season says the place those standings gave them."""
    for user, messages in ((5, 9), (6, 7), (7, 3)):
        MemberStats.insert(guild_id=G, season=1, user_id=user, messages=messages, voice_seconds=0.0).execute()
    repository.set_setting(G, repository.privacy_key(5), "hidden")
    repository.set_setting(G + 1, repository.privacy_key(6), "hidden")  # another server's choice
    MemberStats.insert(guild_id=G, season=1, user_id=8, messages=5, voice_seconds=0.0).execute()
    repository.set_setting(G, repository.privacy_key(8), "hidden,stopped")
    repository.record_placings(G, 1)
    assert repository.best_placing(G, 6) == (1, "messages", 1, 7.0)
    assert repository.best_placing(G, 7) == (1, "messages", 2, 3.0)
    # Those hidden are placed among the listed members (as their own /stats ranks them), for when
    # they show themselves again: 9 is ahead of everyone listed, 5 behind 7 only.
    assert repository.best_placing(G, 5) == (1, "messages", 1, 9.0)
    assert repository.best_placing(G, 8) == (1, "messages", 2, 5.0)


def test_placings_of_seasons_that_ended_before_they_existed_are_filled_in_order(db: Database) -> None:
    for number in (1, 2, 3):
        repository.ensure_season(G, 1_000.0 * number, 100.0)
        MemberStats.insert(guild_id=G, season=number, user_id=7, messages=number, voice_seconds=0.0).execute()
        MemberStats.insert(guild_id=G, season=number, user_id=8, messages=2, voice_seconds=0.0).execute()
        repository.Season.update(ended_at=1_000.0 * number + 50).where(repository.Season.number == number).execute()
    assert repository.prepare_placings(G) == 3
    assert repository.best_placing(G, 7) == (3, "messages", 1, 3.0)
    assert repository.best_placing(G, 8) == (1, "messages", 1, 2.0)  # then #2 (a tie, lower id first) and #2
    assert repository.prepare_placings(G) == 0
