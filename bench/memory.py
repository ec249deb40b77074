"""Benchmark 5: resident memory after 100,000 distinct members each sent a message, this bot
against a bare disnake bot given the same load, same run.

    python bench/memory.py [--members 100000] [--rounds 1]

Against ../shared/fakecord (or $FAKECORD_DIR). Each bot starts on a fake guild of ``--members``
members; each member sends one message; once the bot has handled them all (a command queued behind
the last one answers) and ``--settle`` seconds have passed (this bot flushes every 5 s and forgets
full spam buckets then), the bot process's RSS is read with psutil. This bot runs with its defaults
(SPAM_LIMIT on) on a fresh SQLite file; every member's message is checked as counted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from bench.ingest import (
    bare_count,
    blast,
    db_totals,
    make_world,
    ours_marker,
    rss,
    start_bare,
    start_ours,
    stop_ours,
)


async def round_bare(members: int, settle: float, tmp: Path) -> tuple[int, int]:
    world = await make_world(members)
    bot = await start_bare(world, tmp)
    try:
        before = rss(bot)
        await blast(world, members)
        assert await bare_count(world) == members
        await asyncio.sleep(settle)
        return before, rss(bot)
    finally:
        await bot.stop()
        await world.fc.stop()


async def round_ours(members: int, settle: float, tmp: Path) -> tuple[int, int]:
    world = await make_world(members)
    db = tmp / f"memory-{time.monotonic_ns()}.db"
    bot = await start_ours(world, tmp, db, SPAM_LIMIT="5/5s")
    try:
        before = rss(bot)
        await blast(world, members)
        await ours_marker(world)
        await asyncio.sleep(settle)
        after = rss(bot)
        shared = psutil.Process(bot.proc.pid).memory_info().shared  # file-backed: the database through mmap
        print(f"  ours: of which file-backed {shared / 1e6:.0f} MB", flush=True)
        await stop_ours(bot)
        totals = db_totals(db)
        assert len(totals) == members and set(totals.values()) == {1}, "a member's message was not counted"
        return before, after
    finally:
        await stop_ours(bot)
        await world.fc.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--settle", type=float, default=12.0)
    args = ap.parse_args()
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            b0, b1 = await round_bare(args.members, args.settle, Path(tmp))
            o0, o1 = await round_ours(args.members, args.settle, Path(tmp))
            bare.append(b1)
            ours.append(o1)
            print(f"round {r + 1}: bare {b0 / 1e6:.0f} -> {b1 / 1e6:.0f} MB, ours {o0 / 1e6:.0f} -> {o1 / 1e6:.0f} MB "
                  f"(ratio {o1 / b1:.2f})", flush=True)  # fmt: skip
    b, o = statistics.median(bare), statistics.median(ours)
    verdict = "met" if o < 130e6 else "NOT met"
    print(f"RSS after {args.members:,} distinct members each sent a message, median of {args.rounds}: "
          f"ours {o / 1e6:.0f} MB, bare disnake {b / 1e6:.0f} MB, ratio {o / b:.2f} "
          f"(target < 130 MB: {verdict})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
