"""The bot object: services in, extensions loaded, names looked up, shut down without losing data."""

from __future__ import annotations

import asyncio

import disnake
from disnake.ext import commands
from disnake.interactions import ApplicationCommandInteraction
from loguru import logger

from .adapters.disnake_members import GuildMemberLookup
from .adapters.disnake_names import name_info
from .config import Settings
from .db import Storage
from .domain import NameInfo
from .services.container import build_services
from .services.lease import LeaseService

GATEWAY_CLOSE_TIMEOUT = 1.0

WEB_EXTENSION = "leaderboard_bot.exts.web"  # WEB_PORT: the web leaderboard, loaded only when set
EXTENSIONS = (
    "leaderboard_bot.exts.errors",
    "leaderboard_bot.exts.tracking",
    "leaderboard_bot.exts.leaderboards",
    "leaderboard_bot.exts.scheduler",
    "leaderboard_bot.exts.seasons",
    "leaderboard_bot.exts.health",
    "leaderboard_bot.exts.admin",
    "leaderboard_bot.exts.privacy",
    WEB_EXTENSION,
)
STANDBY_EXTENSIONS = ("leaderboard_bot.exts.health",)  # /healthz says "standby"; nothing else runs


def extensions(config: Settings) -> tuple[str, ...]:
    """What an active instance loads: the web leaderboard only with WEB_PORT (its modules, jinja2
    and its templates are about 2 MB that a bot without the site has no use for)."""
    if config.web_port is None:
        return tuple(e for e in EXTENSIONS if e != WEB_EXTENSION)
    return EXTENSIONS


def bot_intents() -> disnake.Intents:
    """Only what the bot uses; no privileged intents (message content is never read)."""
    intents = disnake.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.voice_states = True
    return intents


class LeaderboardBot(commands.InteractionBot):
    def __init__(
        self, config: Settings, storage: Storage, *, lease: LeaseService | None = None, standby: bool = False
    ) -> None:
        super().__init__(
            intents=bot_intents(),
            test_guilds=[config.guild_id],
            allowed_mentions=disnake.AllowedMentions.none(),
            # No message cache: the bot listens to raw delete and edit events only, and 1,000 cached
            # messages (with their authors) are memory and work per message for nothing.
            max_messages=None,
            # A standby registers nothing: its commands are not loaded yet, and a sync would delete
            # the active instance's. After a takeover the commands the active one synced are used.
            command_sync_flags=commands.CommandSyncFlags.none() if standby else commands.CommandSyncFlags.default(),
        )
        self.config = config
        self.services = build_services(
            config, storage, source=self, lease=lease, members=GuildMemberLookup(lambda: self.guild)
        )
        self.services.activity.on_lease_lost = self._lease_lost
        self._shutdown: asyncio.Future[None] | None = None
        self._prepared = False
        self.shutdown_clean = True
        self.lease_lost = False

    @property
    def active(self) -> bool:
        """Whether this instance counts (holds the lease); a standby ignores every event."""
        return self.services.lease.active

    async def prepare(self) -> None:
        """Open the database and restore state before connecting to Discord."""
        await self.services.open_storage()
        if self.active:
            await self.activate()
        else:
            for extension in STANDBY_EXTENSIONS:
                self.load_extension(extension)

    async def activate(self) -> None:
        """Restore what counting needs and start every feature (at start, or at a takeover)."""
        await self.services.activate()
        self._prepared = True
        for extension in extensions(self.config):
            if extension not in self.extensions:
                self.load_extension(extension)

    async def on_application_command(self, interaction: ApplicationCommandInteraction) -> None:
        if self.active:  # both instances receive every interaction: only the active one answers
            await self.process_application_commands(interaction)

    async def on_application_command_autocomplete(self, interaction: ApplicationCommandInteraction) -> None:
        if self.active:
            await self.process_app_command_autocompletion(interaction)

    def _lease_lost(self, reason: str) -> None:
        self.lease_lost = True
        task = asyncio.ensure_future(self.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

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
        self.services.membership.close()  # member lookups under way (HIDE_DEPARTED)
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
