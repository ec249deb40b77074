"""The bot object: wires settings, storage and services together and shuts down without losing data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import disnake
from disnake.ext import commands
from loguru import logger

from .config import Settings, sqlite_path
from .db import Board, Storage, repository
from .services.activity import ActivityService
from .services.names import NameDirectory, NameInfo
from .services.ranking import Rankings, TopCache
from .services.ratelimit import NullGuard, SpamGuard
from .services.seasons import SeasonService
from .services.voice import VoiceTracker
from .ui.embeds import BoardLine

EXTENSIONS = (
    "leaderboard_bot.exts.tracking",
    "leaderboard_bot.exts.leaderboards",
    "leaderboard_bot.exts.scheduler",
    "leaderboard_bot.exts.seasons",
)


def bot_intents() -> disnake.Intents:
    """Only what the bot uses; no privileged intents (message content is never read)."""
    intents = disnake.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.voice_states = True
    return intents


def recovery_path(database_url: str) -> Path | None:
    """Where a shutdown that cannot reach the database saves what it could not write."""
    path = sqlite_path(database_url)
    return None if path == ":memory:" else Path(path + ".unsaved.json")


def build_guard(settings: Settings) -> SpamGuard | NullGuard:
    if settings.spam_limit is None:
        return NullGuard()
    return SpamGuard(settings.spam_limit.burst, settings.spam_limit.refill_rate)


class LeaderboardBot(commands.InteractionBot):
    def __init__(self, settings: Settings, storage: Storage) -> None:
        super().__init__(
            intents=bot_intents(),
            test_guilds=[settings.guild_id],
            allowed_mentions=disnake.AllowedMentions.none(),
        )
        self.settings = settings
        self.storage = storage
        self.tracker = ActivityService(
            storage,
            guild_id=settings.guild_id,
            voice=VoiceTracker(count_deafened=settings.voice_count_deafened, count_alone=settings.voice_count_alone),
            guard=build_guard(settings),
            recovery_path=recovery_path(settings.database_url),
        )
        self.cache = TopCache(settings.cache_ttl)
        self.rankings = Rankings(storage, self.tracker, self.cache)
        self.seasons = SeasonService(storage, self.tracker, period=settings.reset_period)
        self.seasons.add_roll_listener(lambda finished, current: self.cache.invalidate())
        self.names = NameDirectory(storage, self.tracker, live=self._live_name, fetch=self._fetch_name)
        self._shutdown: asyncio.Future[None] | None = None
        self._prepared = False
        self.shutdown_clean = True

    async def prepare(self) -> None:
        """Open the database and restore state before connecting to Discord."""
        await self.storage.open()
        await self.seasons.load()
        await self.tracker.start()
        self._prepared = True
        for extension in EXTENSIONS:
            self.load_extension(extension)

    @property
    def guild(self) -> disnake.Guild | None:
        return self.get_guild(self.settings.guild_id)

    def _live_name(self, user_id: int) -> NameInfo | None:
        guild = self.guild
        member = guild.get_member(user_id) if guild else None
        return (member.display_name, member.name) if member else None

    async def _fetch_name(self, user_id: int) -> NameInfo | None:
        guild = self.guild
        if guild is not None:
            try:
                member = await guild.fetch_member(user_id)
                return member.display_name, member.name
            except disnake.NotFound:
                pass  # left the server: the account name is still better than an ID
        try:
            user = await self.fetch_user(user_id)
        except disnake.NotFound:
            return None
        return user.global_name or user.name, user.name

    async def board_lines(self, board: Board, *, season: int | None = None) -> list[BoardLine]:
        """The top of a board with display names, for the current season or an archived one."""
        size = self.settings.leaderboard_size
        if season is None or season == self.tracker.season:
            entries = await self.rankings.top(board, size)
        else:
            entries = await self.storage.run(repository.top, self.settings.guild_id, season, board, size)
        names = await self.names.resolve(e.user_id for e in entries)
        return [
            BoardLine(rank=i, name=names[e.user_id], user_id=e.user_id, value=e.value)
            for i, e in enumerate(entries, start=1)
        ]

    @property
    def closing(self) -> bool:
        return self._shutdown is not None

    async def on_error(self, event_method: str, *args: object, **kwargs: object) -> None:
        # disnake's default prints to stderr, bypassing the JSON logs and their token redaction.
        logger.exception("unhandled error in {}", event_method)

    async def on_slash_command_error(
        self, inter: disnake.ApplicationCommandInteraction, error: commands.CommandError
    ) -> None:
        from .exts.leaderboards import report_command_error  # that extension imports this module

        await report_command_error(inter, error)

    async def close(self) -> None:
        # Idempotent: a signal, disnake itself and the runner may all ask to close.
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._close_once())
        await asyncio.shield(self._shutdown)

    async def _close_once(self) -> None:
        logger.info("shutting down: stopping tasks, closing the gateway and writing buffered activity")
        for extension in list(self.extensions):
            try:
                self.unload_extension(extension)
            except Exception:
                logger.exception("could not unload {}", extension)
        try:
            await super().close()
        except Exception:
            logger.exception("error while closing the Discord connection")
        if self._prepared:
            self.shutdown_clean = await self.tracker.shutdown()
        await self.storage.close()
        logger.info("shutdown complete")
