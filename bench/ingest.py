"""Benchmark 1: messages per second counted, this bot against a bare disnake bot, same run.

    python bench/ingest.py [--members 1000] [--messages 100000] [--rounds 3] [--py-spy FILE]

Both bots run against ../shared/fakecord (or $FAKECORD_DIR), one after the other, alternating for
``--rounds`` rounds so that drift on a shared machine hits both alike. Each round: start the bot,
send a warm-up of 2 messages per member, then ``--messages`` from ``--members`` members as fast as
the fake can send them (``store=False``), and time until the bot answers a slash command queued
behind the last one (the gateway delivers in order, so every message was handled before it).

The bare bot is plain disnake with an ``on_message`` that only adds one to a counter, read back with
its ``/count`` command. This bot runs with SPAM_LIMIT=off (every message must count) and is stopped
with SIGTERM (its final flush), then every member's total in the SQLite file is checked against what
was sent. ``--py-spy FILE`` records this bot's last round with py-spy (raw collapsed stacks) for the
profile summary in bench/README.md.

The helpers here (the world, both bots, the blast) are shared by bench/commands.py and bench/memory.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FAKECORD_DIR = Path(os.environ.get("FAKECORD_DIR", ROOT.parent / "shared" / "fakecord")).resolve()
sys.path.insert(0, str(FAKECORD_DIR))

from driver import BotProcess, Fakecord  # type: ignore[import-not-found]  # noqa: E402

# A bare disnake bot: the same intents as ours, an on_message that only counts people, /count to read it.
BARE_BOT = r"""
import os, disnake
from disnake.ext import commands
intents = disnake.Intents.none()
intents.guilds = intents.guild_messages = intents.voice_states = True
bot = commands.InteractionBot(intents=intents)
seen = [0]

@bot.event
async def on_message(message):
    if not message.author.bot:  # its own /count answers arrive as messages too
        seen[0] += 1

@bot.slash_command(description="How many messages were seen", guild_ids=[int(os.environ["BARE_GUILD_ID"])])
async def count(inter):
    await inter.response.send_message(f"messages={seen[0]}")

bot.run(os.environ["DISCORD_TOKEN"])
"""


@dataclass
class World:
    fc: Any
    guild: int
    general: int
    chat_lb: int
    vc_lb: int
    users: list[int] = field(default_factory=list)


async def make_world(members: int, **options: Any) -> World:
    # interaction_deadline=None: a command queued behind a burst is answered late, not refused.
    fc = Fakecord(app_name="Leaderboard", bot_username="LeaderboardBot", interaction_deadline=None, **options)
    await fc.start()
    guild = fc.add_guild("Bench Guild")
    world = World(fc, guild, fc.add_channel(guild, "general"), fc.add_channel(guild, "chat-lb"),
                  fc.add_channel(guild, "vc-lb"))  # fmt: skip
    for i in range(members):
        user = fc.add_user(f"member{i}", global_name=f"Member {i}")
        fc.add_member(guild, user)
        world.users.append(user)
    return world


def our_env(world: World, db: Path, **overrides: str) -> dict[str, str]:
    env = {
        "GUILD_ID": str(world.guild),
        "CHAT_LB_CHANNEL_ID": str(world.chat_lb),
        "VC_LB_CHANNEL_ID": str(world.vc_lb),
        "DATABASE_URL": f"sqlite:///{db}",
        "FLUSH_INTERVAL": "5s",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "COMMAND_LIMIT": "off",
        "SPAM_LIMIT": "off",
    }
    env.update(overrides)
    return env


async def start_ours(world: World, tmp: Path, db: Path, **env: str) -> BotProcess:
    log = tmp / f"ours-{time.monotonic_ns()}.log"
    bot = await world.fc.start_bot(["-m", "leaderboard_bot"], env=our_env(world, db, **env), cwd=str(tmp),
                                   token_env="BOT_TOKEN", log_path=log)  # fmt: skip
    await world.fc.wait_ready(timeout=60)
    await world.fc.wait_for(lambda: "voice reconciled" in bot.output() or bot.returncode is not None, 60, "start")
    if bot.returncode is not None:
        raise RuntimeError(f"the bot exited with {bot.returncode}:\n{bot.output()[-3000:]}")
    await world.fc.wait_for_commands("top", guild=world.guild, timeout=60)
    return bot


async def start_bare(world: World, tmp: Path) -> BotProcess:
    bot = await world.fc.start_bot([sys.executable, "-c", BARE_BOT], env={"BARE_GUILD_ID": str(world.guild)},
                                   log_path=tmp / f"bare-{time.monotonic_ns()}.log")  # fmt: skip
    await world.fc.wait_ready(timeout=60)
    await world.fc.wait_for_commands("count", guild=world.guild, timeout=60)
    return bot


async def stop_ours(bot: BotProcess) -> None:
    if bot.returncode is None:
        bot.proc.send_signal(signal.SIGTERM)  # the final flush writes everything
        await bot.stop(timeout=30)


async def blast(world: World, n: int, *, start: int = 0) -> None:
    """``n`` messages round-robin over the members, as fast as the fake sends."""
    fc, g, ch, users = world.fc, world.guild, world.general, world.users
    for i in range(start, start + n):
        await fc.send_message(g, ch, users[i % len(users)], "hello", store=False)


async def bare_count(world: World) -> int:
    res = await world.fc.slash(world.guild, world.general, world.users[0], "count", timeout=600)
    return int(re.search(r"messages=(\d+)", res.content)[1])  # type: ignore[index]


async def ours_marker(world: World) -> None:
    """A command answered after every message before it was handled (gateway order)."""
    await world.fc.slash(world.guild, world.general, world.users[0], "top messages", timeout=600)


def db_totals(db: Path) -> dict[int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        query = "SELECT user_id, SUM(messages) FROM member_stats WHERE season > 0 GROUP BY user_id"  # not the windows'
        rows = conn.execute(query).fetchall()
    finally:
        conn.close()
    return {int(u): int(m) for u, m in rows}


def rss(bot: BotProcess) -> int:
    import psutil

    return int(psutil.Process(bot.proc.pid).memory_info().rss)


# --------------------------------------------------------------------------- benchmark 1


async def round_bare(args: argparse.Namespace, tmp: Path) -> float:
    world = await make_world(args.members)
    bot = await start_bare(world, tmp)
    try:
        warm = 2 * args.members
        await blast(world, warm)
        assert await bare_count(world) == warm
        t0 = time.perf_counter()
        await blast(world, args.messages, start=warm)
        got = await bare_count(world) - warm
        seconds = time.perf_counter() - t0
        assert got == args.messages, f"the bare bot saw {got} of {args.messages}"
        return args.messages / seconds
    finally:
        await bot.stop()
        await world.fc.stop()


async def round_ours(args: argparse.Namespace, tmp: Path, profile: Path | None) -> float:
    world = await make_world(args.members)
    db = tmp / f"ingest-{time.monotonic_ns()}.db"
    bot = await start_ours(world, tmp, db)
    spy: asyncio.subprocess.Process | None = None
    try:
        warm = 2 * args.members
        await blast(world, warm)
        await ours_marker(world)
        if profile is not None:
            spy_bin = Path(sys.executable).parent / "py-spy"
            spy = await asyncio.create_subprocess_exec(
                str(spy_bin), "record", "--pid", str(bot.proc.pid), "--format", "raw", "--rate", "250",
                "--output", str(profile), stdout=asyncio.subprocess.DEVNULL)  # fmt: skip
            await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        await blast(world, args.messages, start=warm)
        await ours_marker(world)
        seconds = time.perf_counter() - t0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await asyncio.wait_for(spy.wait(), 30)
        await stop_ours(bot)
        if bot.returncode != 0:
            raise RuntimeError(f"the bot exited with {bot.returncode}:\n{bot.output()[-3000:]}")
        totals = db_totals(db)
        sent = warm + args.messages
        expected = {u: sent // args.members + (1 if i < sent % args.members else 0) for i, u in enumerate(world.users)}
        wrong = {u: (totals.get(u, 0), n) for u, n in expected.items() if totals.get(u, 0) != n}
        assert not wrong and sum(totals.values()) == sent, f"miscounted members (got, sent): {list(wrong.items())[:5]}"
        return args.messages / seconds
    finally:
        await stop_ours(bot)
        await world.fc.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--py-spy", type=Path, default=None, help="record this bot's last round here")
    args = ap.parse_args()
    bare: list[float] = []
    ours: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            bare.append(await round_bare(args, Path(tmp)))
            profile = args.py_spy if r == args.rounds - 1 else None
            ours.append(await round_ours(args, Path(tmp), profile))
            print(f"round {r + 1}: bare {bare[-1]:,.0f}/s, ours {ours[-1]:,.0f}/s "
                  f"(ratio {ours[-1] / bare[-1]:.2f}); every message counted", flush=True)  # fmt: skip
    b, o = statistics.median(bare), statistics.median(ours)
    ratios = [x / y for x, y in zip(ours, bare, strict=True)]
    print(f"ingest, {args.messages:,} messages from {args.members:,} members, median of {args.rounds}: "
          f"ours {o:,.0f}/s, bare disnake {b:,.0f}/s, ratio {o / b:.2f} "
          f"(per-round ratios {', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.90)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
