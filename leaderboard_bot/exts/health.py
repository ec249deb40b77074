"""Health: ``/health`` for the server's managers and, with HEALTH_PORT, ``GET /healthz`` and
``GET /metrics`` over HTTP (aiohttp, which disnake already brings; the Prometheus exposition is
prometheus-client's). Every answer is built from in-memory facts: no probe waits on the database."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import disnake
from aiohttp import web
from disnake.ext import commands, tasks
from disnake.interactions import ApplicationCommandInteraction
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..config import is_postgres, sqlite_path
from ..db import repository
from ..domain import BOARDS
from ..services.health import database_bytes
from ..ui.embeds import health_embed, notice_embed

if TYPE_CHECKING:
    from ..bot import LeaderboardBot

SAMPLE_EVERY = 10.0
# View Channel, Send Messages, Manage Messages (pins on older servers), Embed Links, Read Message
# History, Pin Messages: what the README's invite link asks for.
INVITE_PERMISSIONS = 2251799813778432
BOARD_PERMISSIONS = {
    "view_channel": "View Channel",
    "send_messages": "Send Messages",
    "embed_links": "Embed Links",
    "read_message_history": "Read Message History",
}


class Health(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot
        self.monitor = bot.services.health
        self._runner: web.AppRunner | None = None
        self._db_path = None if is_postgres(bot.config.database_url) else sqlite_path(bot.config.database_url)
        self._checked_setup = False

    async def cog_load(self) -> None:
        sources = self.monitor.sources
        sources.gateway_latency = self._latency
        sources.boards_backing_off = self._boards_backing_off
        sources.memory_entries = self._memory_entries
        self.sample_loop.start()
        if self.bot.config.health_port is not None:
            await self._start_server(self.bot.config.health_host, self.bot.config.health_port)

    def cog_unload(self) -> None:
        self.sample_loop.cancel()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            task = asyncio.ensure_future(runner.cleanup())
            task.add_done_callback(lambda t: t.exception())

    def _latency(self) -> float | None:
        latency = self.bot.latency
        return latency if latency == latency and latency != float("inf") else None  # NaN/inf: not measured

    def _memory_entries(self) -> dict[str, int]:
        """What grows with members, each bounded: visible so a leak would show."""
        services = self.bot.services
        entries = {"spam_buckets": len(services.activity.guard), **services.names.sizes()}
        entries.update(services.membership.sizes())  # HIDE_DEPARTED answers and lookups under way
        entries.update(services.rankings.sizes())  # tops, and stored counts kept to merge flushes
        return entries

    def _boards_backing_off(self) -> list[str]:
        scheduler = self.bot.get_cog("Scheduler")
        return scheduler.backing_off() if scheduler is not None else []  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ background sampling

    @tasks.loop(seconds=SAMPLE_EVERY)
    async def sample_loop(self) -> None:
        try:
            self.monitor.sample_process()
            if self._db_path is None:  # PostgreSQL: the server's own figure, on a reader
                self.monitor.database_bytes = await self.bot.services.storage.read(repository.database_size)
            else:
                # A file size is I/O: off the loop, and not on the database thread (a flush may hold it).
                self.monitor.database_bytes = await asyncio.to_thread(database_bytes, self._db_path)
        except Exception as error:
            logger.debug("health sampling failed: {}", error)

    # ------------------------------------------------------------------ events

    @commands.Cog.listener()
    async def on_connect(self) -> None:
        self.monitor.connected()

    @commands.Cog.listener()
    async def on_resumed(self) -> None:
        self.monitor.connected()

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        self.monitor.connected()
        if not self._checked_setup:
            self._checked_setup = True
            for problem in self.setup_problems():
                logger.error("{}", problem)

    def setup_problems(self) -> list[str]:
        """What is wrong with the server set-up, in plain words, one line each (at first start)."""
        bot, guild_id = self.bot, self.bot.config.guild_id
        guild = bot.get_guild(guild_id)
        if guild is None:
            app_id = bot.application_id or (bot.user.id if bot.user else "YOUR_APP_ID")
            return [
                f"the bot is not in the server GUILD_ID={guild_id}: invite it with https://discord.com/oauth2/"
                f"authorize?client_id={app_id}&scope=bot+applications.commands&permissions={INVITE_PERMISSIONS} "
                "or set GUILD_ID to your server's id"
            ]
        problems = []
        for board in BOARDS:
            variable = "CHAT_LB_CHANNEL_ID" if board == "messages" else "VC_LB_CHANNEL_ID"
            channel_id = bot.services.settings.board_channel(board)
            channel = guild.get_channel(channel_id)
            if channel is None:
                if bot.get_channel(channel_id) is None:  # (another server's channel is reported by the board)
                    problems.append(
                        f"{variable}={channel_id} is not a channel the bot can see in {guild.name}: "
                        "check the id, or give the bot View Channel there"
                    )
                continue
            permissions = channel.permissions_for(guild.me)
            missing = [label for flag, label in BOARD_PERMISSIONS.items() if not getattr(permissions, flag)]
            if not (permissions.pin_messages or permissions.manage_messages):
                missing.append("Pin Messages")
            if missing:
                problems.append(
                    f"the bot is missing {', '.join(missing)} in #{channel.name} ({variable}): the {board} "
                    "leaderboard cannot be posted and pinned until it has them"
                )
        return problems

    @commands.Cog.listener()
    async def on_disconnect(self) -> None:
        self.monitor.disconnected()

    # Messages and voice events are counted for the event rate by the tracking extension's own
    # listeners: one more listener here would cost one more task per message.

    @commands.Cog.listener()
    async def on_slash_command_completion(self, inter: ApplicationCommandInteraction) -> None:
        self._timed(inter)

    @commands.Cog.listener()
    async def on_slash_command_error(self, inter: ApplicationCommandInteraction, error: Exception) -> None:
        self._timed(inter)

    def _timed(self, inter: ApplicationCommandInteraction) -> None:
        seconds = max(0.0, time.time() - inter.created_at.timestamp())
        name = inter.application_command.qualified_name
        self.monitor.command(name, seconds)
        logger.bind(command=name, user_id=inter.author.id, channel_id=inter.channel_id, guild_id=inter.guild_id).info(
            "/{} by {} answered in {:.0f} ms", name, inter.author.id, seconds * 1000
        )

    # ------------------------------------------------------------------ /health

    @commands.slash_command(
        name="health",
        description="How the leaderboard bot is doing (for server managers)",
        default_member_permissions=disnake.Permissions(manage_guild=True),
    )
    async def health(self, inter: ApplicationCommandInteraction) -> None:
        if inter.guild_id != self.bot.config.guild_id or not inter.permissions.manage_guild:
            text = "`/health` is for this server's managers (Manage Server), in the server."
            await inter.response.send_message(embed=notice_embed(text), ephemeral=True)
            return
        embed = health_embed(self.monitor.facts(), now=time.time())
        await inter.response.send_message(embed=embed, ephemeral=True)

    # ------------------------------------------------------------------ HTTP

    async def _start_server(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            await runner.cleanup()
            logger.error("cannot serve /healthz and /metrics on {}:{} ({}); the bot runs without them", host, port,
                         error.strerror or error)  # fmt: skip
            return
        self._runner = runner
        logger.info("health and metrics on http://{}:{}/healthz and /metrics", host, port)

    async def _healthz(self, request: web.Request) -> web.Response:
        facts = self.monitor.facts()
        return web.json_response(facts.to_json(), status=503 if facts.status == "failing" else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.monitor.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Health(bot))
