"""A long database outage: time each failed flush spends on the event loop, and memory held.

    python bench/outage.py [--members 5000] [--minutes 30]

Every write fails at once (as with a locked database, without the 5 s busy wait), one flush a
minute on an injected clock, with the recovery file rewritten each time. For each attempt it
measures the CPU time of the event-loop thread (``time.thread_time``: the database and file
threads are not counted) and the memory traced by tracemalloc. The first attempt is the
baseline: a flat outage keeps the last/first ratio near 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import tempfile
import time
import tracemalloc
from pathlib import Path

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import ActivityBatch
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.names import NameService
from leaderboard_bot.services.ratelimit import NullGuard
from leaderboard_bot.services.recovery import RecoveryFile
from leaderboard_bot.services.voice import VoicePresence, VoiceTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def locked(batch: ActivityBatch) -> None:
    raise sqlite3.OperationalError("database is locked")


async def run(members: int, minutes: int, *, trace: bool) -> tuple[list[float], list[int]]:
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(f"sqlite:///{tmp}/bench.db")
        await storage.open()
        clock = Clock()
        service = ActivityService(
            storage,
            guild_id=1,
            voice=VoiceTracker(),
            guard=NullGuard(),
            names=NameService(storage, guild_id=1),
            clock=clock,
            recovery=RecoveryFile(Path(tmp) / "bench.db.unsaved.json", clock=clock),
        )
        await service.start()
        for user in range(members):
            service.record_voice(user, VoicePresence(channel_id=7))
            service.record_message(user)
            service.names.remember(user, f"Member {user}", f"member{user}")
        real, repository.apply_batch = repository.apply_batch, locked  # type: ignore[assignment]
        loop_ms: list[float] = []
        memory: list[int] = []
        if trace:
            tracemalloc.start()
        for _ in range(minutes):
            clock.now += 60.0
            for user in range(0, members, 10):  # some chat meanwhile
                service.record_message(user)
            started = time.thread_time()
            ok = await service.flush(lambda: 1)
            loop_ms.append((time.thread_time() - started) * 1000)
            assert not ok
            memory.append(tracemalloc.get_traced_memory()[0] if trace else 0)
        if trace:
            tracemalloc.stop()
        repository.apply_batch = real  # type: ignore[assignment]
        await storage.close()
    return loop_ms, memory


async def main(members: int, minutes: int) -> None:
    # Timings without tracemalloc (it slows every allocation), memory in a second, traced run.
    loop_ms, _ = await run(members, minutes, trace=False)
    _, memory = await run(members, minutes, trace=True)
    print(f"{members} members in voice, {minutes} one-minute flushes, every write failing")
    print("| attempt | loop CPU ms | traced MB (second run) |")
    print("|---|---|---|")
    for index in sorted({0, 4, minutes // 2, minutes - 1}):
        print(f"| {index + 1} | {loop_ms[index]:.1f} | {memory[index] / 1e6:.1f} |")
    print(f"max loop CPU per attempt: {max(loop_ms):.1f} ms; last/first ratio {loop_ms[-1] / loop_ms[0]:.2f}")
    print(f"memory drift from attempt 5 to {minutes}: {(memory[-1] - memory[4]) / 1e6:+.2f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=5_000)
    parser.add_argument("--minutes", type=int, default=30)
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # the outage's warnings are not what is measured
    logging.disable(logging.WARNING)
    asyncio.run(main(args.members, args.minutes))
