"""Benchmarks 3 and 4: /top and /stats end to end with a million members in the season.

    python bench/commands.py [--members 1000000] [--samples 100] [--load 5000]

Builds a SQLite file with the bot's own migrations and ``--members`` members in the current season
(raw SQL, heavy-tailed counts as on a real server: most members tie on small values; voice for 30%),
1,000 of whom are members of the fake guild and call the commands, so callers sit all over the board.
Then, against ../shared/fakecord (or $FAKECORD_DIR):

- benchmark 3: the first /top and /stats after start (cold), then ``--samples`` of each (warm), timed
  from the interaction's creation to the answer seen by the fake; the baseline is a bare disnake bot's
  command round trip through the same fake, same run;
- benchmark 4: the same commands while ``--load`` messages per second arrive (paced by the driver,
  every one counted: SPAM_LIMIT=off), p95 against the 250 ms target.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from peewee import SqliteDatabase

from bench.ingest import World, make_world, start_bare, start_ours, stop_ours
from leaderboard_bot.db.migrations import migrate

SEASON = 1
CALLERS = 1_000


def build_database(path: Path, world: World, members: int, seed: int = 1) -> float:
    """The season with ``members`` members, the fake guild's users among them; seconds taken."""
    started = time.perf_counter()
    rng = random.Random(seed)
    db = SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "synchronous": "off"})
    db.connect()
    migrate(db)
    now = time.time()
    ids = list(world.users) + [10**17 + i * 7_919 for i in range(members - len(world.users))]
    rows = []
    for user in ids:
        messages = int(rng.paretovariate(1.2))
        voice = round(rng.paretovariate(1.1) * 60.0, 3) if rng.random() < 0.3 else 0.0
        rows.append((world.guild, SEASON, user, messages, voice))
    rng.shuffle(rows)
    with db.atomic():
        db.execute_sql(
            'INSERT INTO "season" ("guild_id", "number", "started_at", "ends_at") VALUES (?, ?, ?, ?)',
            (world.guild, SEASON, now - 86_400.0, now + 29 * 86_400.0),
        )
        db.cursor().executemany(
            'INSERT INTO "member_stats" ("guild_id", "season", "user_id", "messages", "voice_seconds") '
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    db.execute_sql("PRAGMA optimize")
    db.close()
    return time.perf_counter() - started


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await call()
    return (time.perf_counter() - t0) * 1000.0


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def line(what: str, samples: list[float], base: float) -> str:
    p50, p95 = p(samples, 0.5), p(samples, 0.95)
    return (f"{what}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(samples):.1f} ms "
            f"({len(samples)} samples; p50 / bare {p50 / base:.1f}x)")  # fmt: skip


async def commands_of(world: World, rng: random.Random) -> dict[str, Callable[[], Awaitable[object]]]:
    fc, g, ch = world.fc, world.guild, world.general

    def top() -> Awaitable[object]:
        board = rng.choice(("top messages", "top voice"))
        return fc.slash(g, ch, rng.choice(world.users), board, timeout=60)

    def stats() -> Awaitable[object]:
        return fc.slash(g, ch, rng.choice(world.users), "stats", timeout=60)

    return {"/top": top, "/stats": stats}


async def sample(cmds: dict[str, Callable[[], Awaitable[object]]], n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(n):
        for name, call in cmds.items():
            out[name].append(await timed(call))
    return out


async def paced_load(world: World, rate: int, stop: asyncio.Event, sent: list[int]) -> None:
    """``rate`` messages a second from the guild's members, in 10 ms slices."""
    fc, g, ch, users = world.fc, world.guild, world.general, world.users
    per_slice, i = rate // 100, 0
    next_at = time.perf_counter()
    while not stop.is_set():
        for _ in range(per_slice):
            await fc.send_message(g, ch, users[i % len(users)], "hello", store=False)
            i += 1
        sent[0] = i
        next_at += 0.01
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--load", type=int, default=5_000)
    args = ap.parse_args()
    rng = random.Random(2)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        # The fake's round trip for a bare bot's command (the floor any bot pays).
        world = await make_world(CALLERS)
        bare = await start_bare(world, tmp)
        try:
            base = [await timed(lambda: world.fc.slash(world.guild, world.general, world.users[0], "count"))
                    for _ in range(args.samples)]  # fmt: skip
        finally:
            await bare.stop()
            await world.fc.stop()
        base_p50 = p(base, 0.5)
        print(f"bare disnake /count round trip: p50 {base_p50:.1f} ms, p95 {p(base, 0.95):.1f} ms", flush=True)

        world = await make_world(CALLERS)
        db = tmp / "million.db"
        built = build_database(db, world, args.members)
        print(f"database: {args.members:,} members built in {built:.1f} s ({db.stat().st_size / 1e6:.0f} MB)")
        bot = await start_ours(world, tmp, db)
        try:
            cmds = await commands_of(world, rng)
            for name, call in cmds.items():
                print(f"{name} cold (first after start): {await timed(call):.1f} ms", flush=True)
            warm = await sample(cmds, args.samples)
            for name, samples in warm.items():
                print(line(f"{name} warm, {args.members:,} members", samples, base_p50), flush=True)

            stop, sent = asyncio.Event(), [0]
            load = asyncio.create_task(paced_load(world, args.load, stop, sent))
            await asyncio.sleep(3.0)  # the load settles (a flush or two of live deltas)
            t0, first = time.perf_counter(), sent[0]
            loaded = await sample(cmds, args.samples)
            rate = (sent[0] - first) / (time.perf_counter() - t0)
            stop.set()
            await load
            for name, samples in loaded.items():
                verdict = "met" if p(samples, 0.95) < 250 else "NOT met"
                print(line(f"{name} under {rate:,.0f} messages/s", samples, base_p50)
                      + f" (target p95 < 250 ms: {verdict})", flush=True)  # fmt: skip
            print(f"warm p95 target < 50 ms: /stats {p(warm['/stats'], 0.95):.1f} ms, /top {p(warm['/top'], 0.95):.1f} "
                  f"ms; median of all bare round trips {statistics.median(base):.1f} ms")  # fmt: skip
        finally:
            await stop_ours(bot)
            await world.fc.stop()


if __name__ == "__main__":
    asyncio.run(main())
