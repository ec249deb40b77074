"""``/leaderboard``: the server managers' commands. ``reset`` ends the season (the confirmation flow
lives with the seasons); ``settings`` shows and changes the runtime settings without a restart; ``export`` hands over a
CSV (built in exts/privacy, which knows who chose to hide)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import disnake
from disnake.ext import commands
from disnake.interactions import ApplicationCommandInteraction
from loguru import logger

from ..config import RUNTIME_VARIABLES, ConfigError, field_of, parse_runtime, show_value
from ..db.storage import StorageError
from ..ui.embeds import notice_embed, settings_embed

if TYPE_CHECKING:
    from ..bot import LeaderboardBot
    from .privacy import Privacy
    from .seasons import Seasons

MANAGERS_ONLY = "You need the **Manage Server** permission for this, in the server."
DATABASE_BUSY = "Nothing changed: the database is busy right now. Please try again in a moment."
BOARD_CHANNEL_VARIABLES = frozenset({"CHAT_LB_CHANNEL_ID", "VC_LB_CHANNEL_ID"})
# What the bot needs in a board's channel to show it at all (pinning is extra: unpinned, it still shows).
BOARD_PERMISSIONS = (
    ("view_channel", "View Channel"),
    ("send_messages", "Send Messages"),
    ("embed_links", "Embed Links"),
)


def board_channel_problem(guild: disnake.Guild, channel_id: int) -> str | None:
    """Why a board cannot go to ``channel_id`` (None: it can). Checked before the setting changes:
    once changed, the old board turns into a note pointing at the new channel."""
    channel = guild.get_channel(channel_id)
    if channel is None:
        return f"`{channel_id}` is not a channel of this server that the bot can see."
    if not isinstance(channel, disnake.TextChannel):
        return f"{channel.mention} is not a text channel: a board is a message in a text channel."
    allowed = channel.permissions_for(guild.me)
    missing = [label for flag, label in BOARD_PERMISSIONS if not getattr(allowed, flag)]
    if missing:
        return f"The bot cannot post the board in {channel.mention}: it lacks {', '.join(missing)} there."
    return None


class Admin(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot

    def _allowed(self, inter: ApplicationCommandInteraction) -> bool:
        # Server admins can change who sees the command, so the permission is checked here too.
        return inter.guild_id == self.bot.config.guild_id and bool(inter.permissions.manage_guild)

    async def _refuse(self, inter: ApplicationCommandInteraction) -> None:
        await inter.response.send_message(embed=notice_embed(MANAGERS_ONLY), ephemeral=True)

    @commands.slash_command(
        name="leaderboard",
        description="Manage the leaderboards",
        default_member_permissions=disnake.Permissions(manage_guild=True),
    )
    async def leaderboard(self, inter: ApplicationCommandInteraction) -> None:
        pass

    @leaderboard.sub_command(name="reset", description="End the season now: archive it and start both boards from zero")
    async def reset(self, inter: ApplicationCommandInteraction) -> None:
        seasons: Seasons | None = self.bot.get_cog("Seasons")  # type: ignore[assignment]
        if seasons is None:
            await inter.response.send_message(embed=notice_embed("Seasons are not running."), ephemeral=True)
            return
        await seasons.ask_reset(inter)

    @leaderboard.sub_command(
        name="export", description="A CSV of a season, a period or a date range (members who chose to hide: a count)"
    )
    async def export(
        self,
        inter: ApplicationCommandInteraction,
        season: int | None = commands.Param(default=None, ge=1, description="A season number (default: the current)"),
        period: str | None = commands.Param(
            default=None, choices=["today", "week", "month", "all-time"], description="Instead of a season"
        ),
        first_day: str | None = commands.Param(default=None, description="A date range instead: first day, YYYY-MM-DD"),
        last_day: str | None = commands.Param(default=None, description="A date range instead: last day, YYYY-MM-DD"),
        per_day: bool = commands.Param(default=False, description="One row per member per day"),
    ) -> None:
        if not self._allowed(inter):
            await self._refuse(inter)
            return
        privacy: Privacy | None = self.bot.get_cog("Privacy")  # type: ignore[assignment]
        if privacy is None:
            await inter.response.send_message(embed=notice_embed("Exports are not running."), ephemeral=True)
            return
        await privacy.export_board(
            inter, season=season, period=period, first_day=first_day, last_day=last_day, per_day=per_day
        )

    @leaderboard.sub_command_group(name="settings")
    async def settings(self, inter: ApplicationCommandInteraction) -> None:
        pass

    @settings.sub_command(name="show", description="The settings in force, and which were changed here")
    async def show(self, inter: ApplicationCommandInteraction) -> None:
        if not self._allowed(inter):
            await self._refuse(inter)
            return
        current = self.bot.services.settings
        rows = [
            (variable, show_value(getattr(current.current, field_of(variable))), variable in current.overrides)
            for variable in RUNTIME_VARIABLES
        ]
        await inter.response.send_message(embed=settings_embed(rows), ephemeral=True)

    @settings.sub_command(name="set", description="Change a setting now; it is kept across restarts")
    async def set_(
        self,
        inter: ApplicationCommandInteraction,
        name: str = commands.Param(description="The setting", choices=list(RUNTIME_VARIABLES)),
        value: str = commands.Param(description="The new value, as in .env (e.g. 5/5s, true, 30s, off)"),
    ) -> None:
        if not self._allowed(inter):
            await self._refuse(inter)
            return
        variable = name.strip().upper()
        # Checked without I/O, so a refusal is answered at once.
        try:
            parsed = parse_runtime(variable, value)[1]
        except ConfigError as error:
            await inter.response.send_message(
                embed=notice_embed(f"Nothing changed: {error}"[:2000], title="Invalid value"), ephemeral=True
            )
            return
        if variable in BOARD_CHANNEL_VARIABLES and inter.guild is not None:
            problem = board_channel_problem(inter.guild, parsed)
            if problem is not None:
                await inter.response.send_message(
                    embed=notice_embed(f"Nothing changed: {problem}", title="Invalid value"), ephemeral=True
                )
                return
        # The write may wait for the database's lock (a backup, a flush waiting on one): answer
        # "thinking…" privately first, as /privacy does, so Discord never drops the command.
        await inter.response.defer(ephemeral=True)
        who = f"{inter.author} ({inter.author.id})"
        try:
            old, new = await self.bot.services.settings_store.change(variable, value, by=who)
        except StorageError as error:  # (the value was checked above: change() raises no ConfigError)
            _log_busy(f"set {variable}", who, error)
            await inter.edit_original_response(embed=notice_embed(DATABASE_BUSY))
            return
        await inter.edit_original_response(
            embed=notice_embed(f"**{variable}** is now `{new}` (was `{old}`). It applies at once and is kept across "
                               "restarts; `/leaderboard settings reset` returns to the value from the environment."),
        )  # fmt: skip

    @settings.sub_command(name="reset", description="Return one setting (or all) to the value from the environment")
    async def reset_setting(
        self,
        inter: ApplicationCommandInteraction,
        name: str = commands.Param(
            default="all", description="The setting, or all", choices=["all", *RUNTIME_VARIABLES]
        ),
    ) -> None:
        if not self._allowed(inter):
            await self._refuse(inter)
            return
        store = self.bot.services.settings_store
        variable = None if name == "all" else name
        if not store.overridden(variable):  # nothing stored to delete: answered at once, no I/O
            text = "Nothing to reset: those settings already come from the environment."
            await inter.response.send_message(embed=notice_embed(text), ephemeral=True)
            return
        await inter.response.defer(ephemeral=True)  # the delete may wait for the database's lock
        who = f"{inter.author} ({inter.author.id})"
        try:
            names = await store.reset(variable, by=who)
        except StorageError as error:
            _log_busy(f"reset {name}", who, error)
            await inter.edit_original_response(embed=notice_embed(DATABASE_BUSY))
            return
        text = (
            f"Back to the environment's values: {', '.join(names)}."
            if names
            else "Nothing to reset: those settings already come from the environment."
        )
        await inter.edit_original_response(embed=notice_embed(text))


def _log_busy(what: str, who: str, error: StorageError) -> None:
    """One line, no traceback: a locked or unavailable database is expected, and already explained."""
    logger.warning(
        "/leaderboard settings {} by {}: nothing changed, the database refused the write ({})", what, who, error
    )


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Admin(bot))
