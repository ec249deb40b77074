"""A small world and a bot launcher for the end-to-end tests (imported only when fakecord exists)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from driver import VOICE, BotProcess, Fakecord  # type: ignore[import-not-found]
except ImportError:  # fakecord is absent: conftest.py marks every e2e test as skipped
    VOICE = 2
    BotProcess = Fakecord = object  # type: ignore[assignment,misc]

GUILDS_INTENT, GUILD_MESSAGES_INTENT, GUILD_VOICE_STATES_INTENT = 1 << 0, 1 << 9, 1 << 7


@dataclass
class World:
    fc: Fakecord
    tmp: Path
    guild: int
    other_guild: int
    general: int
    chat_lb: int
    vc_lb: int
    lounge: int
    lounge2: int
    afk: int
    other_general: int
    alice: int
    bob: int
    carol: int
    robot: int
    bots: list[BotProcess] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.tmp / "leaderboard.db"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "GUILD_ID": str(self.guild),
            "CHAT_LB_CHANNEL_ID": str(self.chat_lb),
            "VC_LB_CHANNEL_ID": str(self.vc_lb),
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "FLUSH_INTERVAL": "0.5s",
            "UPDATE_INTERVAL": "2s",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "COMMAND_LIMIT": "off",  # the scenarios fire commands faster than a member would
        }
        env.update(overrides)
        return env

    async def launch_bot(self, *, cwd: Path | None = None, log_name: str | None = None, **env: str) -> BotProcess:
        """Start a bot without waiting for it to count (a standby, one waiting for the database):
        ``cwd`` is where it starts (another directory: as on another machine, its own lock file)."""
        bot = await self.fc.start_bot(
            ["-m", "leaderboard_bot"],
            env=self.env(**env),
            cwd=str(cwd or self.tmp),
            token_env="BOT_TOKEN",
            token="e2e-secret-token",
            log_path=self.tmp / f"{log_name or f'bot-{len(self.bots)}'}.log",
        )
        self.bots.append(bot)
        return bot

    async def start_bot(self, **env: str) -> BotProcess:
        mark = len(self.fc.gateway_log)
        bot = await self.launch_bot(**env)

        def identified_or_dead() -> bool:
            if bot.returncode is not None:
                raise AssertionError(f"the bot exited with {bot.returncode}:\n{bot.output()[-3000:]}")
            return any(e["kind"] == "op" and e.get("op") == 2 for e in self.fc.gateway_log[mark:])

        await self.fc.wait_for(identified_or_dead, 30, "the bot to IDENTIFY")
        await self.fc.wait_ready(timeout=30)
        await self.wait_log(
            "voice reconciled", count=sum(b.output().count("voice reconciled") for b in self.bots[:-1]) + 1
        )
        return bot

    async def wait_log(self, text: str, *, count: int = 1, timeout: float = 20.0) -> None:
        await self.fc.wait_for(lambda: self.log_text().count(text) >= count, timeout, f"{text!r} in the bot log")

    def log_text(self) -> str:
        return "".join(b.output() for b in self.bots)

    def log_records(self, bot: BotProcess) -> list[dict[str, Any]]:
        out = []
        for line in bot.output().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.db_path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def messages_of(self, user: int) -> int:
        # season > 0: the seasons' rows, not the windows' (negative scopes)
        rows = self.query(
            "SELECT SUM(messages) FROM member_stats WHERE guild_id = ? AND season > 0 AND user_id = ?", self.guild, user
        )
        return int(rows[0][0] or 0) if rows else 0

    def voice_of(self, user: int) -> float:
        rows = self.query(
            "SELECT SUM(voice_seconds) FROM member_stats WHERE guild_id = ? AND season > 0 AND user_id = ?",
            self.guild,
            user,
        )
        return float(rows[0][0] or 0.0) if rows else 0.0

    async def wait_db(self, predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)

    async def stop_all(self) -> None:
        for bot in self.bots:
            if bot.returncode is None:
                bot.proc.send_signal(signal.SIGTERM)
                await bot.stop(timeout=15)


async def make_world(tmp: Path, **fakecord_options: Any) -> World:
    fc = Fakecord(app_name="Leaderboard", bot_username="LeaderboardBot", **fakecord_options)
    await fc.start()
    guild = fc.add_guild("Test Guild")
    general = fc.add_channel(guild, "general")
    chat_lb = fc.add_channel(guild, "chat-lb")
    vc_lb = fc.add_channel(guild, "vc-lb")
    lounge = fc.add_channel(guild, "Lounge", type=VOICE)
    lounge2 = fc.add_channel(guild, "Lounge 2", type=VOICE)
    afk = fc.add_channel(guild, "AFK", type=VOICE)
    fc.set_afk_channel(guild, afk)
    other_guild = fc.add_guild("Other Guild")
    other_general = fc.add_channel(other_guild, "general")
    alice = fc.add_user("alice", global_name="Alice")
    bob = fc.add_user("bob", global_name="Bobby")
    carol = fc.add_user("carol")
    robot = fc.add_user("robot", bot=True)
    fc.add_member(guild, alice, nick="Ali")
    fc.add_member(guild, bob)
    fc.add_member(guild, carol)
    fc.add_member(guild, robot)
    fc.add_member(other_guild, alice)
    return World(
        fc,
        tmp,
        guild,
        other_guild,
        general,
        chat_lb,
        vc_lb,
        lounge,
        lounge2,
        afk,
        other_general,
        alice,
        bob,
        carol,
        robot,
    )
