"""Where the flush's time goes, and how low it could go: the bot's own apply_batch on SQLite with
parts of its work taken away, same batch, same run.

    python bench/flush_floor.py [--members 100000] [--voice-share 0.1] [--rounds 2]

Each variant writes one batch of ``--members`` distinct members (a fresh temp file, the bot's
schema) as inserts and then as updates, and prints the best round of each and its share of the
bot as built:

- as built: five scopes (the season, all time, today, week, month), two board indexes;
- the voice board index partial (``WHERE voice_seconds > 0``): most members have no voice time;
- no rolling windows: only the season and all time (what a flush wrote before the windows);
- no board indexes: the five scopes' rows and nothing else (no board could be ranked);
- neither: two scopes, no board indexes.

The last is a floor for a flush that keeps the season and all time: what SQLite must do anyway
to add 100,000 members' counts to two rows each and the daily buckets, and commit.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger
from peewee import Database

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flush_scale import make_batch

from leaderboard_bot.db import open_database, repository
from leaderboard_bot.db.models import MemberStats
from leaderboard_bot.domain import ActivityBatch

PARTIAL_VOICE_INDEX = (
    'CREATE INDEX "member_stats_board_voice" ON "member_stats" ("guild_id", "season", "voice_seconds" DESC, '
    '"user_id") WHERE "voice_seconds" > 0'
)


def as_built(db: Database) -> None:
    return None


def partial_voice(db: Database) -> None:
    db.execute_sql('DROP INDEX "member_stats_board_voice"')
    db.execute_sql(PARTIAL_VOICE_INDEX)


def no_board_indexes(db: Database) -> None:
    for name in ("member_stats_board_messages", "member_stats_board_voice"):
        db.execute_sql(f'DROP INDEX "{name}"')


VARIANTS: list[tuple[str, Callable[[Database], None], bool]] = [
    ("as built (5 scopes, 2 board indexes)", as_built, True),
    ("partial voice board index", partial_voice, True),
    ("no rolling windows (2 scopes)", as_built, False),
    ("no board indexes (5 scopes)", no_board_indexes, True),
    ("2 scopes, no board indexes", no_board_indexes, False),
]


def time_variant(url: str, change: Callable[[Database], None], windows: bool, batch: ActivityBatch) -> list[float]:
    db = open_database(url)
    saved = repository.ROLLING_WINDOWS
    try:
        change(db)
        if not windows:
            repository.ROLLING_WINDOWS = ()
        times = []
        for _ in ("insert", "update"):
            start = time.perf_counter()
            repository.apply_batch(batch)
            times.append(time.perf_counter() - start)
        assert MemberStats.select().where(MemberStats.season == batch.season).count() == len(batch.messages)
        return times
    finally:
        repository.ROLLING_WINDOWS = saved
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--voice-share", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logger.remove()
    batch = make_batch(args.members, args.voice_share, random.Random(7))
    best = {label: [1e9, 1e9] for label, _, _ in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, (label, change, windows) in enumerate(VARIANTS):
                ins, upd = time_variant(f"sqlite:///{tmp}/{round_}-{i}.db", change, windows, batch)
                best[label] = [min(best[label][0], ins), min(best[label][1], upd)]
    base = best[VARIANTS[0][0]]
    print(f"one flush of {args.members} distinct members ({len(batch.voice)} with voice), best of {args.rounds}:")
    for label, (ins, upd) in best.items():
        print(f"  {label:38} insert {ins:6.3f} s ({ins / base[0]:4.0%})   update {upd:6.3f} s ({upd / base[1]:4.0%})")


if __name__ == "__main__":
    main()
