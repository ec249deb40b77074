"""Ranks and tops with a million members in one season: the v3 query (baseline) against v4's, same run.

    python bench/rank_scale.py [--members 1000000] [--samples 300] [--database-url URL|pg]

Builds a scratch SQLite file at schema v3 with ``--members`` members (heavy-tailed message counts, so
most members tie on a few small values, as on a real server; voice for 30% of them), times the v3
``rank_of`` query (one OR-ed count, on v3's indexes) and ``top``, migrates to v4 (timed), and times
v4's ``rank_of`` (two index ranges from the nearer end), the top-side-only variant (what ranks cost
without the kept board size), and ``top``. Members are sampled across the whole board, rank 1 and
the very last included; every v4 rank is checked against the true position. Warm cache figures.

``--database-url`` runs the same on PostgreSQL (benchmark 7): a server URL whose user may create
databases (a fresh one is made and dropped), or ``pg`` for a throw-away cluster (tests/pg.py).
There ``VACUUM (ANALYZE)`` stands in for ``PRAGMA optimize``: autovacuum runs it after a large write, and
its visibility map is what lets a count stay on the index (an index-only scan).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loguru import logger
from peewee import Database, PostgresqlDatabase, SqliteDatabase, fn

from leaderboard_bot.db import repository
from leaderboard_bot.db.migrations import migrate
from leaderboard_bot.db.models import MemberStats, database_proxy
from leaderboard_bot.db.storage import SQLITE_PRAGMAS, optimize
from leaderboard_bot.domain import Board

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/pg.py: the PostgreSQL helpers
from tests import pg

GUILD = 1
SEASON = 1


def v3_rank_of(board: Board, user_id: int) -> int | None:
    """The query rank_of ran before v4, kept as the baseline."""
    column = MemberStats.messages if board == "messages" else MemberStats.voice_seconds
    row = MemberStats.get_or_none(
        (MemberStats.guild_id == GUILD) & (MemberStats.season == SEASON) & (MemberStats.user_id == user_id)
    )
    mine = 0 if row is None else (row.messages if board == "messages" else row.voice_seconds)
    if not mine or mine <= 0:
        return None
    ahead = (
        MemberStats.select(fn.COUNT(MemberStats.user_id))
        .where(
            (MemberStats.guild_id == GUILD)
            & (MemberStats.season == SEASON)
            & ((column > mine) | ((column == mine) & (MemberStats.user_id < user_id)))
        )
        .scalar()
    )
    return int(ahead) + 1


def fill(db: Database, members: int, rng: random.Random) -> None:
    rows = []
    for i in range(members):
        user = 10**17 + i * 7_919  # snowflake-sized ids
        messages = int(rng.paretovariate(1.2))  # >= 1: half the members have 1, a few have thousands
        voice = round(rng.paretovariate(1.1) * 60.0, 3) if rng.random() < 0.3 else 0.0
        rows.append((GUILD, SEASON, user, messages, voice))
    rng.shuffle(rows)  # arrival order is not key order
    with db.atomic():
        marks = ", ".join(db.param for _ in range(5))
        db.cursor().executemany(f'INSERT INTO "member_stats" VALUES ({marks})', rows)


def board_order(db: Database, board: Board) -> list[tuple[int, float]]:
    column = "messages" if board == "messages" else "voice_seconds"
    sql = (
        f'SELECT "user_id", "{column}" FROM "member_stats" WHERE "guild_id" = {db.param} AND "season" = {db.param} '
        f'AND "{column}" > 0 ORDER BY "{column}" DESC, "user_id" ASC'
    )
    return [(int(u), float(v)) for u, v in db.execute_sql(sql, (GUILD, SEASON)).fetchall()]


def sample_positions(count: int, samples: int, rng: random.Random) -> list[int]:
    picks = {0, count - 1, count // 2, count // 4, 3 * count // 4}
    while len(picks) < min(samples, count):
        picks.add(rng.randrange(count))
    return sorted(picks)


def timed(func: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = func()
    return result, (time.perf_counter() - start) * 1000


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered):7.2f} ms  p95 {p95:7.2f} ms  max {ordered[-1]:7.2f} ms"


def measure_ranks(
    label: str, order: list[tuple[int, float]], positions: list[int], rank: Callable[[int], int | None]
) -> list[float]:
    times = []
    for position in positions:
        user, _ = order[position]
        got, ms = timed(lambda user=user: rank(user))  # type: ignore[misc]
        if got != position + 1:
            raise SystemExit(f"{label}: wrong rank for position {position + 1}: {got}")
        times.append(ms)
    return times


@contextmanager
def scratch_database(spec: str | None) -> Iterator[Database]:
    """A new scratch database: a temporary SQLite file, or a fresh database on a PostgreSQL server."""
    if not spec:
        with tempfile.TemporaryDirectory() as tmp:
            yield SqliteDatabase(str(Path(tmp) / "rank.db"), pragmas=SQLITE_PRAGMAS)
        return
    with pg.server(spec) as admin:
        url = pg.create_database(admin, prefix="lb_bench")
        try:
            yield PostgresqlDatabase(url, prefer_psycopg3=True)
        finally:
            pg.drop_database(admin, url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--database-url", help="PostgreSQL: a server URL that may create databases, or pg")
    args = parser.parse_args()
    logger.remove()  # the migration's log lines would split the table
    rng = random.Random(7)
    with scratch_database(args.database_url) as db:
        database_proxy.initialize(db)
        db.connect()
        migrate(db, target=3)
        (_, ms) = timed(lambda: fill(db, args.members, rng))
        backend = "PostgreSQL" if isinstance(db, PostgresqlDatabase) else "SQLite"
        print(f"{args.members} members written at v3 on {backend} in {ms / 1000:.1f} s")
        if isinstance(db, PostgresqlDatabase):
            db.execute_sql('VACUUM (ANALYZE) "member_stats"')  # what autovacuum does after a large write
        orders = {board: board_order(db, board) for board in ("messages", "voice")}
        positions = {board: sample_positions(len(orders[board]), args.samples, rng) for board in orders}
        results: dict[str, list[float]] = {}
        for board in ("messages", "voice"):
            order, picks = orders[board], positions[board]
            print(f"\n{board} board: {len(order)} ranked, {len(picks)} members sampled (rank 1 and the last included)")
            results[f"v3 {board}"] = measure_ranks("v3", order, picks, lambda u, b=board: v3_rank_of(b, u))
            top_times = [timed(lambda b=board: repository.top(GUILD, SEASON, b, 10))[1] for _ in range(50)]
            print(f"  v3 rank_of (baseline):        {summary(results[f'v3 {board}'])}")
            print(f"  v3 top 10:                    {summary(top_times)}")

        _, ms = timed(lambda: migrate(db))
        print(f"\nmigration v3 -> v4 on {args.members} members: {ms / 1000:.1f} s")
        if isinstance(db, SqliteDatabase):
            _, ms = timed(lambda: optimize(db))
            print(f"PRAGMA optimize after it: {ms:.1f} ms")
        else:
            _, ms = timed(lambda: db.execute_sql('VACUUM (ANALYZE) "member_stats"'))
            print(f"VACUUM (ANALYZE) after it: {ms:.1f} ms")

        for board in ("messages", "voice"):
            order, picks = orders[board], positions[board]
            ranked = repository.ranked_count(GUILD, SEASON, board)  # type: ignore[arg-type]
            assert ranked == len(order), (ranked, len(order))
            print(f"\n{board} board at v4:")
            repository._medians.clear()
            _, median_ms = timed(lambda b=board, u=order[0][0]: repository.rank_of(GUILD, SEASON, b, u))
            print(f"  first rank_of (finds the median once):  {median_ms:7.2f} ms")
            new = measure_ranks("v4", order, picks, lambda u, b=board: repository.rank_of(GUILD, SEASON, b, u))
            top_only = measure_ranks(
                "top side only",
                order,
                picks,
                lambda u, b=board, o=dict(order): repository.rank_from_top(GUILD, SEASON, b, o[u], u),
            )
            first_last = [new[0], new[-1]]
            top_times = [timed(lambda b=board: repository.top(GUILD, SEASON, b, 10))[1] for _ in range(50)]
            old = results[f"v3 {board}"]
            print(f"  v4 rank_of, nearer end:       {summary(new)}")
            print(f"  v4 rank #1 / the very last:   {first_last[0]:.2f} / {first_last[1]:.2f} ms")
            print(f"  v4 top side only (option):    {summary(top_only)}")
            print(f"  v4 top 10:                    {summary(top_times)}")
            print(
                f"  ratio v3/v4 rank_of: p50 {statistics.median(old) / statistics.median(new):6.1f}x"
                f"  max {max(old) / max(new):6.1f}x"
            )
        db.close()


if __name__ == "__main__":
    main()
