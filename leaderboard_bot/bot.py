"""The bot object: wires settings, storage and services together and shuts down without losing data."""

from __future__ import annotations

import asyncio

import disnake
from disnake.ext import commands
from loguru import logger

from .config import Settings
from .db import Storage, repository
from .services.activity import ActivityService
from .services.ratelimit import NullGuard, SpamGuard
from .services.voice import VoiceTracker

EXTENSIONS = ("leaderboard_bot.exts.tracking",)


def bot_intents() -> disnake.Intents:
    """Only what the bot uses; no privileged intents (message content is never read)."""
    intents = disnake.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.voice_states = True
    return intents


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
            voice=VoiceTracker(
                count_deafened=settings.voice_count_deafened, count_alone=settings.voice_count_alone
            ),
            guard=build_guard(settings),
        )
        self._shutdown: asyncio.Future[None] | None = None
        self._prepared = False

    async def prepare(self) -> None:
        """Open the database and restore state before connecting to Discord."""
        await self.storage.open()
        season = await self.storage.run(
            repository.ensure_season, self.settings.guild_id, self.tracker.clock(), self.settings.reset_period
        )
        self.tracker.season = season.number
        await self.tracker.start()
        self._prepared = True
        for extension in EXTENSIONS:
            self.load_extension(extension)

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
            await self.tracker.shutdown()
        await self.storage.close()
        logger.info("shutdown complete")
