"""Batched writes vs one write per message, measured in the same run (ratios, not absolute times).

    python bench/flush_throughput.py [--messages 20000] [--members 500]

Prints messages/s for the bot's batched flush (record in memory, one transaction per flush)
and for a naive baseline (one upsert transaction per message), and their ratio; plus the
peak memory of the anti-spam guard for many members.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import ActivityBatch
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.days import UTC_CALENDAR
from leaderboard_bot.services.names import NameService
from leaderboard_bot.services.ratelimit import NullGuard, SpamGuard
from leaderboard_bot.services.voice import VoiceTracker

GUILD = 1


async def batched(storage: Storage, users: list[int], flush_every: int) -> float:
    service = ActivityService(
        storage,
        guild_id=GUILD,
        voice=VoiceTracker(),
        guard=NullGuard(),
        names=NameService(storage, guild_id=GUILD),
    )

    def season() -> int:
        return 1

    start = time.perf_counter()
    for i, user in enumerate(users, start=1):
        service.record_message(user)
        if i % flush_every == 0:
            await service.flush(season)
    await service.flush(season)
    return time.perf_counter() - start


async def naive(storage: Storage, users: list[int]) -> float:
    start = time.perf_counter()
    day = UTC_CALENDAR.day_of(time.time())
    for user in users:
        batch = ActivityBatch(guild_id=GUILD, season=2, heartbeat_at=time.time(), messages={(day, user): 1})
        await storage.run(repository.apply_batch, batch)
    return time.perf_counter() - start


def guard_memory(members: int) -> tuple[float, int]:
    tracemalloc.start()
    guard = SpamGuard(5, 1.0, max_members=100_000)
    now = 0.0
    for member in range(members):
        guard.allow(member, now)
        now += 0.0001
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1e6, len(guard)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--flush-every", type=int, default=2_000, help="messages between flushes")
    args = parser.parse_args()
    rng = random.Random(7)
    users = [rng.randrange(args.members) + 1 for _ in range(args.messages)]
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(f"sqlite:///{Path(tmp) / 'bench.db'}")
        await storage.open()
        try:
            baseline_n = max(1, args.messages // 10)  # the baseline is slow: time a tenth, scale per message
            t_naive = await naive(storage, users[:baseline_n])
            t_batched = await batched(storage, users, args.flush_every)
        finally:
            await storage.close()
    naive_rate = baseline_n / t_naive
    batched_rate = args.messages / t_batched
    print(f"baseline, one transaction per message: {naive_rate:10.0f} messages/s")
    print(f"batched flush every {args.flush_every:>5} messages:  {batched_rate:10.0f} messages/s")
    print(f"ratio batched/baseline:                {batched_rate / naive_rate:10.1f}x")
    peak_mb, kept = guard_memory(200_000)
    print(f"anti-spam guard, 200000 members seen: peak {peak_mb:.1f} MB, {kept} buckets kept")


if __name__ == "__main__":
    asyncio.run(main())
