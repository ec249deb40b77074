"""The bot object: services in, extensions loaded, names looked up, shut down without losing data."""

from __future__ import annotations

import asyncio

import disnake
from disnake.ext import commands
from loguru import logger

from .adapters.disnake_names import name_info
from .config import Settings
from .db import Storage
from .domain import NameInfo
from .services.container import build_services

GATEWAY_CLOSE_TIMEOUT = 1.0

EXTENSIONS = (
    "leaderboard_bot.exts.errors",
    "leaderboard_bot.exts.tracking",
    "leaderboard_bot.exts.leaderboards",
    "leaderboard_bot.exts.scheduler",
    "leaderboard_bot.exts.seasons",
    "leaderboard_bot.exts.health",
    "leaderboard_bot.exts.admin",
)


def bot_intents() -> disnake.Intents:
    """Only what the bot uses; no privileged intents (message content is never read)."""
    intents = disnake.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.voice_states = True
    return intents


class LeaderboardBot(commands.InteractionBot):
    def __init__(self, config: Settings, storage: Storage) -> None:
        super().__init__(
            intents=bot_intents(), test_guilds=[config.guild_id], allowed_mentions=disnake.AllowedMentions.none()
        )
        self.config = config
        self.services = build_services(config, storage, source=self)
        self._shutdown: asyncio.Future[None] | None = None
        self._prepared = False
        self.shutdown_clean = True

    async def prepare(self) -> None:
        """Open the database and restore state before connecting to Discord."""
        await self.services.open()
        self._prepared = True
        for extension in EXTENSIONS:
            self.load_extension(extension)

    @property
    def guild(self) -> disnake.Guild | None:
        return self.get_guild(self.config.guild_id)

    # ------------------------------------------------------------------ services.names.NameSource

    def live_name(self, user_id: int) -> NameInfo | None:
        guild = self.guild
        member = guild.get_member(user_id) if guild else None
        return name_info(member) if member else None

    async def fetch_name(self, user_id: int) -> NameInfo | None:
        guild = self.guild
        if guild is not None:
            try:
                member = await guild.fetch_member(user_id)
                return name_info(member)
            except disnake.NotFound:
                pass  # left the server: the account name is still better than an ID
        try:
            user = await self.fetch_user(user_id)
        except disnake.NotFound:
            return None
        return name_info(user)

    # ------------------------------------------------------------------ shutdown

    @property
    def closing(self) -> bool:
        return self._shutdown is not None

    async def on_error(self, event_method: str, *args: object, **kwargs: object) -> None:
        # disnake's default prints to stderr, bypassing the JSON logs and their token redaction.
        logger.exception("unhandled error in {}", event_method)

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
            # disnake may wait up to 30 s for a half-open gateway to close; the stop must not.
            await asyncio.wait_for(super().close(), GATEWAY_CLOSE_TIMEOUT)
        except TimeoutError:
            logger.warning("the Discord connection did not close within {:.0f}s; going on", GATEWAY_CLOSE_TIMEOUT)
        except Exception:
            logger.exception("error while closing the Discord connection")
        if self._prepared:
            self.shutdown_clean = await self.services.activity.shutdown(self.services.seasons.current_number)
        # A database stuck in a busy wait does not hold the stop: its thread is a daemon.
        await self.services.storage.close(wait=2.0 if self.shutdown_clean else 0.2)
        logger.info("shutdown complete")
