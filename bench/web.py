"""The web leaderboard at a million members: page and data endpoint latency, and what 100 live
(Server-Sent Events) viewers cost the bot.

    PYTHONPATH=. .venv/bin/python bench/web.py [--members 1000000] [--samples 200] [--viewers 100]

Builds the million-member season the way bench/commands.py does (its ``build_database``; the same
rows copied to the all-time scope, so two of the ten boards the site reads are a million long),
starts the real bot against ../shared/fakecord (or $FAKECORD_DIR) with ``WEB_PORT`` and
``WEB_PUBLIC=true``, then:

- latency of ``GET /``, ``GET /api/boards?period=...`` and a member page, timed by an HTTP client on
  the same machine (cold: the first after start; warm: ``--samples`` each; p50/p95 against 50 ms);
- the bot process's CPU time (psutil) over the same 30 s of steady message load (the standings change
  at every flush, FLUSH_INTERVAL=1s): first with the site off (a bot started without WEB_PORT, the
  baseline), then with the site and no viewer, then with ``--viewers`` connected to /events, and how
  many events each viewer got.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import socket
import sqlite3
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from bench.commands import CALLERS, build_database, p
from bench.ingest import World, make_world, start_ours, stop_ours

LOAD_SECONDS = 30.0
LOAD_RATE = 200  # messages a second: every flush changes the standings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def copy_to_all_time(db: Path) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            'INSERT INTO "member_stats" ("guild_id", "season", "user_id", "messages", "voice_seconds") '
            'SELECT "guild_id", -1000, "user_id", "messages", "voice_seconds" FROM "member_stats" WHERE "season" = 1'
        )
    conn.execute("PRAGMA optimize")
    conn.close()


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    async with session.get(url) as reply:
        body = await reply.read()
        assert reply.status == 200, (url, reply.status)
    return (time.perf_counter() - t0) * 1000.0, body


def report(what: str, samples: list[float]) -> None:
    p95 = p(samples, 0.95)
    verdict = "met" if p95 < 50 else "NOT met"
    print(f"{what}: p50 {p(samples, 0.5):.1f} ms, p95 {p95:.1f} ms, max {max(samples):.1f} ms "
          f"({len(samples)} samples; target < 50 ms: {verdict})", flush=True)  # fmt: skip


async def load(world: World, seconds: float, rate: int) -> int:
    """``rate`` messages a second for ``seconds``, paced in 10 ms slices: one of each slice from the
    first member (who climbs every board, so every flush changes the standings), the rest from all."""
    fc, g, ch, users = world.fc, world.guild, world.general, world.users
    per_slice, sent = max(1, rate // 100), 0
    started = next_at = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for i in range(per_slice):
            await fc.send_message(g, ch, users[0 if i == 0 else sent % len(users)], "hello", store=False)
            sent += 1
        next_at += 0.01
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    return sent


async def viewer(session: aiohttp.ClientSession, url: str, counts: list[int], index: int, stop: asyncio.Event) -> None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as reply:
        while not stop.is_set():
            try:
                line = await asyncio.wait_for(reply.content.readline(), 1.0)
            except TimeoutError:
                continue
            if not line:
                return
            if line.startswith(b"event: standings"):
                counts[index] += 1


async def cpu_under_load(world: World, proc: psutil.Process) -> tuple[float, int]:
    before = proc.cpu_times()
    sent = await load(world, LOAD_SECONDS, LOAD_RATE)
    after = proc.cpu_times()
    return (after.user - before.user) + (after.system - before.system), sent


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--viewers", type=int, default=100)
    args = ap.parse_args()
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        world = await make_world(CALLERS)
        db = tmp / "million.db"
        built = build_database(db, world, args.members)
        copy_to_all_time(db)
        print(f"database: {args.members:,} members (season and all time) built in {built:.1f} s "
              f"({db.stat().st_size / 1e6:.0f} MB)", flush=True)  # fmt: skip
        # Baseline, same database and load: the bot without the site (what the change checks add).
        bot = await start_ours(world, tmp, db, FLUSH_INTERVAL="1s")
        try:
            await asyncio.sleep(5.0)
            base, sent = await cpu_under_load(world, psutil.Process(bot.proc.pid))
            print(f"baseline, WEB_PORT off: bot CPU under {sent / LOAD_SECONDS:,.0f} messages/s: {base:.2f} s in "
                  f"{LOAD_SECONDS:.0f} s ({base / LOAD_SECONDS * 100:.1f} % of a core)", flush=True)  # fmt: skip
        finally:
            await stop_ours(bot)
        port = free_port()
        site = f"http://127.0.0.1:{port}"
        bot = await start_ours(world, tmp, db, WEB_PORT=str(port), WEB_PUBLIC="true", FLUSH_INTERVAL="1s")
        proc = psutil.Process(bot.proc.pid)
        try:
            await world.fc.wait_for(lambda: "web leaderboard on" in bot.output(), 60, "the web server")
            connector = aiohttp.TCPConnector(limit=args.viewers + 10)
            async with aiohttp.ClientSession(connector=connector) as session:
                cold, body = await timed_get(session, site + "/")
                print(f"GET / cold (first after start, reads the ten boards): {cold:.1f} ms", flush=True)
                members = sorted(set(re.findall(rb'href="(/member/[0-9a-f]+)"', body)))
                all_time = await (await session.get(site + "/api/boards?period=all-time")).json()
                print(f"all-time board read: {len(all_time['boards']['messages'])} lines", flush=True)
                pages = {
                    "GET /": lambda: site + "/",
                    "GET /?period=week": lambda: site + "/?period=week",
                    "GET /api/boards?period=season": lambda: site + "/api/boards?period=season",
                    "GET /api/boards?period=all-time": lambda: site + "/api/boards?period=all-time",
                    "GET /member/<token>": lambda: site + rng.choice(members).decode(),
                }
                for what, url in pages.items():
                    samples = [(await timed_get(session, url()))[0] for _ in range(args.samples)]
                    report(f"{what}, {args.members:,} members, warm", samples)

                idle_before = proc.cpu_times()
                await asyncio.sleep(10.0)
                idle_after = proc.cpu_times()
                idle = (idle_after.user - idle_before.user) + (idle_after.system - idle_before.system)
                print(f"bot CPU, no load, no viewer: {idle / 10.0 * 100:.1f} % of a core", flush=True)

                alone, sent = await cpu_under_load(world, proc)
                print(f"bot CPU under {sent / LOAD_SECONDS:,.0f} messages/s, no viewer: {alone:.2f} s in "
                      f"{LOAD_SECONDS:.0f} s ({alone / LOAD_SECONDS * 100:.1f} % of a core)", flush=True)  # fmt: skip

                stop = asyncio.Event()
                counts = [0] * args.viewers
                tasks = [asyncio.create_task(viewer(session, site + "/events", counts, i, stop))
                         for i in range(args.viewers)]  # fmt: skip
                await asyncio.sleep(3.0)
                rss_before = proc.memory_info().rss
                start_counts = sum(counts)
                watched, sent = await cpu_under_load(world, proc)
                rss_after = proc.memory_info().rss
                events = sum(counts) - start_counts
                print(f"bot CPU under {sent / LOAD_SECONDS:,.0f} messages/s, {args.viewers} viewers: "
                      f"{watched:.2f} s in {LOAD_SECONDS:.0f} s ({watched / LOAD_SECONDS * 100:.1f} % of a core); "
                      f"+{(watched - alone) / LOAD_SECONDS * 100:.1f} points for the viewers", flush=True)  # fmt: skip
                print(f"events delivered: {events} ({events / max(1, args.viewers):.1f} per viewer in "
                      f"{LOAD_SECONDS:.0f} s; min {min(counts)}, max {max(counts)}); RSS "
                      f"{rss_before / 1e6:.0f} -> {rss_after / 1e6:.0f} MB", flush=True)  # fmt: skip
                stop.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await stop_ours(bot)
            await world.fc.stop()


if __name__ == "__main__":
    asyncio.run(main())
