"""Benchmark 5: resident memory after 100,000 distinct members each sent a message, this bot
against a bare disnake bot given the same load, same run.

    python bench/memory.py [--members 100000] [--rounds 1]

Against ../shared/fakecord (or $FAKECORD_DIR). Each bot starts on a fake guild of ``--members``
members; each member sends one message; once the bot has handled them all (a command queued behind
the last one answers) and ``--settle`` seconds have passed (this bot flushes every 5 s and forgets
full spam buckets then), the bot process's RSS is read (and its anonymous and file-backed parts,
from /proc). This bot runs with its defaults (SPAM_LIMIT on) on a fresh SQLite file; every member's
message is checked as counted.

The charts are drawn in a child process of the bot (started at start-up to warm up, ended after
10 idle minutes): the target is the bot's own process; the child's RSS, while it is alive, is
printed on its own line. (Before the charts moved there, ``--no-chart-warm-up`` made their warm-up
a no-op to tell the counting's memory from matplotlib's; it is gone with the need for it.)
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench.ingest import (
    bare_count,
    blast,
    make_world,
    ours_marker,
    rss,
    start_bare,
    start_ours,
    stop_ours,
)


def rss_parts(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of a process, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0]) * 1024
    return fields.get("RssAnon", 0), fields.get("RssFile", 0) + fields.get("RssShmem", 0)


def season_totals(db: Path) -> dict[int, int]:
    """Each member's messages in the seasons (the windows' rows, under negative scopes, hold the same again)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT user_id, SUM(messages) FROM member_stats WHERE season > 0 GROUP BY user_id")
        return {int(u): int(m) for u, m in rows.fetchall()}
    finally:
        conn.close()


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


def children_rss(pid: int) -> int:
    """Resident bytes of a process's children (the charts' process), 0 when there is none."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += int(Path(f"/proc/{child}/statm").read_text().split()[1]) * 4096
            except (OSError, IndexError, ValueError):
                continue
    return total


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
        anon, file = rss_parts(bot.proc.pid)  # file-backed: the database read through mmap
        print(f"  ours: of which anonymous {anon / 1e6:.0f} MB, file-backed {file / 1e6:.0f} MB; "
              f"the charts' child process {children_rss(bot.proc.pid) / 1e6:.0f} MB", flush=True)  # fmt: skip
        await stop_ours(bot)
        totals = season_totals(db)
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
