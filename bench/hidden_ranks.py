"""A member's rank passes over the members hidden by their own choice: its cost as they grow.

    PYTHONPATH=. python bench/hidden_ranks.py [--members 1000000] [--hidden 0 1000 10000 50000] [--samples 200]

Fills one season with ``--members`` members as ``rank_scale.py`` does (at the latest schema), then
for each count of hidden members (privacy rows, spread over the board) times, for members sampled
across the board, what a ``/stats`` adds on top of its two ranks to pass over the hidden ones ahead:

- baseline (the code before this change): read every hidden member's stored totals (``totals_of``,
  500 per query) and compare them in Python, on each board;
- now: ``repository.count_unlisted_beating`` on each board (driven from the privacy rows, one key
  lookup each, in the database).

Both answers are checked against each other for every sample. Warm cache, SQLite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from loguru import logger
from peewee import SqliteDatabase

from bench.rank_scale import GUILD, SEASON, board_order, fill
from leaderboard_bot.db import repository
from leaderboard_bot.db.migrations import migrate
from leaderboard_bot.db.models import Setting, database_proxy
from leaderboard_bot.db.storage import SQLITE_PRAGMAS, optimize
from leaderboard_bot.domain import BOARDS, Board


def baseline_ahead(board: Board, user_id: int, value: float, hidden: list[int]) -> int:
    stored = repository.totals_of(GUILD, SEASON, [u for u in hidden if u != user_id])
    index = 0 if board == "messages" else 1
    return sum(
        1
        for other, counts in stored.items()
        if counts[index] > value or (counts[index] == value and other < user_id)
    )


def percentiles(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered):8.2f} ms  p95 {p95:8.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--hidden", type=int, nargs="+", default=[0, 1_000, 10_000, 50_000])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    logger.remove()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(str(Path(tmp) / "hidden.db"), pragmas=SQLITE_PRAGMAS)
        database_proxy.initialize(db)
        migrate(db)
        started = time.perf_counter()
        fill(db, args.members, rng)
        optimize(db)
        print(f"filled {args.members:,} members in {time.perf_counter() - started:.1f}s")
        orders = {board: board_order(db, board) for board in BOARDS}
        everyone = [user for user, _ in orders["messages"]]
        hidden: list[int] = []
        for wanted in sorted(args.hidden):
            extra = rng.sample([u for u in everyone if u not in set(hidden)], wanted - len(hidden))
            with db.atomic():
                for user in extra:
                    repository.set_setting(GUILD, repository.privacy_key(user), '["hidden"]')
            hidden += extra
            assert Setting.select().count() >= len(hidden)
            before: list[float] = []
            after: list[float] = []
            for _ in range(args.samples):
                board: Board = rng.choice(BOARDS)
                user, value = rng.choice(orders[board])
                started = time.perf_counter()
                old = [baseline_ahead(b, user, value, hidden) for b in BOARDS]
                before.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                new = [repository.count_unlisted_beating(GUILD, SEASON, b, value, user) for b in BOARDS]
                after.append((time.perf_counter() - started) * 1000)
                if old != new:
                    raise SystemExit(f"disagree for {user} at {value}: {old} vs {new}")
            ratio = statistics.median(before) / max(statistics.median(after), 1e-6)
            print(
                f"{len(hidden):>7,} hidden  both boards: before {percentiles(before)}  "
                f"now {percentiles(after)}  ({ratio:.1f}x at p50)"
            )
        db.close()


if __name__ == "__main__":
    main()
