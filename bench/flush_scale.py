"""One flush of many distinct members: the bot's apply_batch against the v3 peewee path, same run.

    python bench/flush_scale.py [--members 100000] [--voice-share 0.1] [--rounds 3]

Each round writes one batch of ``--members`` distinct members (each a few messages, ``--voice-share``
of them voice time too) into a fresh temp SQLite file twice: first as inserts (new members), then as
updates (the same members again). The baseline is the v3 way of writing the same counters (peewee
``insert_many(...).on_conflict(...)`` in 100-row chunks), timed on its own fresh file at the same
schema (v4: board indexes and size triggers included). Prints the best round of each, and the ratio
baseline / apply_batch.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from loguru import logger
from peewee import EXCLUDED, chunked

from leaderboard_bot.db import open_database, repository
from leaderboard_bot.db.models import DailyActivity, MemberStats, database_proxy
from leaderboard_bot.domain import ActivityBatch

GUILD = 1
SEASON = 1
DAY = "2026-12-02"


def v3_add_counts(model: Any, key: tuple[Any, ...], rows: list[dict[str, Any]]) -> None:
    """The counters' write before this change (repository._add_counts at schema v3), the baseline."""
    for chunk in chunked(rows, 100):
        model.insert_many(chunk).on_conflict(
            conflict_target=list(key),
            update={
                model.messages: model.messages + EXCLUDED.messages,
                model.voice_seconds: model.voice_seconds + EXCLUDED.voice_seconds,
            },
        ).execute()


def v3_flush(batch: ActivityBatch) -> None:
    totals: dict[int, list[float]] = {}
    daily: dict[tuple[str, int], list[float]] = {}
    for (day, user), count in batch.messages.items():
        totals.setdefault(user, [0, 0.0])[0] += count
        daily.setdefault((day, user), [0, 0.0])[0] += count
    for (day, user), seconds in batch.voice.items():
        totals.setdefault(user, [0, 0.0])[1] += seconds
        daily.setdefault((day, user), [0, 0.0])[1] += seconds
    with database_proxy.atomic():
        v3_add_counts(
            MemberStats,
            (MemberStats.guild_id, MemberStats.season, MemberStats.user_id),
            [
                {"guild_id": GUILD, "season": SEASON, "user_id": u, "messages": int(m), "voice_seconds": float(v)}
                for u, (m, v) in totals.items()
            ],
        )
        v3_add_counts(
            DailyActivity,
            (DailyActivity.guild_id, DailyActivity.day, DailyActivity.user_id),
            [
                {"guild_id": GUILD, "day": d, "user_id": u, "messages": int(m), "voice_seconds": float(v)}
                for (d, u), (m, v) in daily.items()
            ],
        )


def make_batch(members: int, voice_share: float, rng: random.Random) -> ActivityBatch:
    users = [rng.randrange(10**17, 10**18) for _ in range(members)]  # snowflakes arrive in no order
    messages = {(DAY, u): rng.randint(1, 5) for u in users}
    voice = {(DAY, u): rng.uniform(1.0, 60.0) for u in users if rng.random() < voice_share}
    return ActivityBatch(guild_id=GUILD, season=SEASON, heartbeat_at=time.time(), messages=messages, voice=voice)


def time_flushes(path: Path, flush: Any, batch: ActivityBatch) -> tuple[float, float]:
    db = open_database(f"sqlite:///{path}")
    try:
        times = []
        for _ in ("insert", "update"):
            start = time.perf_counter()
            flush(batch)
            times.append(time.perf_counter() - start)
        total = MemberStats.select().count()
        assert total == len({u for _, u in batch.messages}), total
        return times[0], times[1]
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--voice-share", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logger.remove()
    rng = random.Random(7)
    batch = make_batch(args.members, args.voice_share, rng)
    best: dict[str, list[float]] = {"v3": [1e9, 1e9], "v4": [1e9, 1e9]}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for label, flush in (("v3", v3_flush), ("v4", repository.apply_batch)):
                ins, upd = time_flushes(Path(tmp) / f"{label}-{round_}.db", flush, batch)
                best[label] = [min(best[label][0], ins), min(best[label][1], upd)]
    voiced = len(batch.voice)
    print(f"one flush of {args.members} distinct members ({voiced} with voice), best of {args.rounds}:")
    for i, kind in enumerate(("insert", "update")):
        old, new = best["v3"][i], best["v4"][i]
        print(
            f"  {kind}: apply_batch {new:6.3f} s   v3 peewee insert_many (baseline) {old:6.3f} s   "
            f"ratio {old / new:4.1f}x"
        )


if __name__ == "__main__":
    main()
