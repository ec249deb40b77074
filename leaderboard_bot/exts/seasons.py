"""Seasons: the automatic reset every RESET_PERIOD, the final-standings announcement, and
``/leaderboard reset`` for server managers."""

from __future__ import annotations

import disnake
from disnake.ext import commands, tasks
from loguru import logger

from ..bot import LeaderboardBot
from ..db import Board, repository
from ..services.seasons import SeasonInfo
from ..ui.embeds import final_standings_embed, notice_embed

CONFIRM_ID = "leaderboard-reset:confirm"
CANCEL_ID = "leaderboard-reset:cancel"
CONFIRM_TIMEOUT = 60.0


def check_interval(reset_period: float) -> float:
    """Check often enough that a short test season ends on time, rarely enough to cost nothing."""
    return min(30.0, max(1.0, reset_period / 20))


class Seasons(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot
        self.season_loop.change_interval(seconds=check_interval(bot.settings.reset_period))
        self.season_loop.start()

    def cog_unload(self) -> None:
        self.season_loop.cancel()

    # ------------------------------------------------------------------ automatic reset

    @tasks.loop(seconds=30)
    async def season_loop(self) -> None:
        try:
            if self.bot.seasons.is_due():
                await self.end_season(reason="the season's time is up", only_if_due=True)
            else:
                await self.announce_pending()
        except Exception:
            logger.exception("season check failed; will retry")

    @season_loop.before_loop
    async def _before_season_loop(self) -> None:
        await self.bot.wait_until_ready()

    async def end_season(
        self, *, reason: str, only_if_due: bool = False, expected: int | None = None
    ) -> SeasonInfo | None:
        number = self.bot.seasons.current.number
        finished = await self.bot.seasons.roll(reason=reason, only_if_due=only_if_due, expected=expected)
        if finished is None:
            if self.bot.seasons.current.number == number:
                logger.warning("could not end season {}: writing activity failed; retrying soon", number)
            return None
        await self.announce_pending()
        scheduler = self.bot.get_cog("Scheduler")
        if scheduler is not None:
            await scheduler.refresh_all(force=True)  # type: ignore[attr-defined]
        return finished

    async def announce_pending(self) -> None:
        """Post final standings for every finished season not announced yet (also after a crash)."""
        for season in await self.bot.seasons.unannounced():
            if await self._announce(season):
                await self.bot.seasons.mark_announced(season.number)

    async def _announce(self, season: SeasonInfo) -> bool:
        bot, settings = self.bot, self.bot.settings
        guild = bot.guild
        complete = True
        targets: tuple[tuple[Board, int], ...] = (
            ("messages", settings.chat_lb_channel_id),
            ("voice", settings.vc_lb_channel_id),
        )
        for board, channel_id in targets:
            key = f"season:{season.number}:final:{board}"
            if await bot.storage.run(repository.get_setting, settings.guild_id, key):
                continue  # already posted: announce once, even when the other board failed
            channel = bot.get_channel(channel_id)
            if not isinstance(channel, disnake.abc.Messageable):
                logger.warning("cannot post season {} final standings: channel {} not found", season.number, channel_id)
                continue  # a missing channel will not come back by retrying; do not block the other board
            embed = final_standings_embed(
                board=board,
                lines=await bot.board_lines(board, season=season.number),
                arrow=settings.arrow_emoji,
                guild_icon_url=guild.icon.url if guild and guild.icon else None,
                season_number=season.number,
                started_at=season.started_at,
                ended_at=season.ended_at or season.ends_at,
            )
            try:
                message = await channel.send(embed=embed)
            except disnake.Forbidden:
                logger.warning(
                    "cannot post season {} final standings in <#{}>: missing permissions",
                    season.number,
                    channel_id,
                )
                continue
            except disnake.HTTPException as error:
                logger.warning("posting season {} final standings failed ({}); will retry", season.number, error)
                complete = False
                continue
            await bot.storage.run(repository.set_setting, settings.guild_id, key, message.id)
        return complete

    # ------------------------------------------------------------------ manual reset

    @commands.slash_command(
        name="leaderboard",
        description="Manage the leaderboards",
        default_member_permissions=disnake.Permissions(manage_guild=True),
    )
    async def leaderboard(self, inter: disnake.ApplicationCommandInteraction) -> None:
        pass

    @leaderboard.sub_command(name="reset", description="End the season now: archive it and start both boards from zero")
    async def reset(self, inter: disnake.ApplicationCommandInteraction) -> None:
        # Server admins can change who sees the command, so check the permission here too.
        if not inter.permissions.manage_guild:
            await inter.response.send_message(
                embed=notice_embed("You need the **Manage Server** permission to reset the leaderboards."),
                ephemeral=True,
            )
            return
        season = self.bot.seasons.current
        view = ConfirmReset(self, inter.author.id, season.number)
        await inter.response.send_message(
            embed=notice_embed(
                f"This ends **season {season.number}** now: the final standings are posted in both "
                "leaderboard channels, the season is archived, and both boards start from zero.",
                title="Reset the leaderboards?",
            ),
            view=view,
            ephemeral=True,
        )


class ConfirmReset(disnake.ui.View):
    def __init__(self, cog: Seasons, invoker_id: int, season_number: int) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT)
        self.cog = cog
        self.invoker_id = invoker_id
        self.season_number = season_number

    async def interaction_check(self, inter: disnake.MessageInteraction) -> bool:
        if inter.author.id != self.invoker_id or not inter.permissions.manage_guild:
            await inter.response.send_message("Only the person who asked for the reset can confirm it.", ephemeral=True)
            return False
        return True

    @disnake.ui.button(label="Reset now", style=disnake.ButtonStyle.danger, custom_id=CONFIRM_ID)
    async def confirm(self, button: disnake.ui.Button, inter: disnake.MessageInteraction) -> None:
        self.stop()
        await inter.response.defer()
        finished = await self.cog.end_season(
            reason=f"reset by {inter.author} ({inter.author.id})", expected=self.season_number
        )
        current = self.cog.bot.seasons.current.number
        if finished is not None:
            text = (
                f"Season {finished.number} is archived and its final standings are posted. Season {current} has begun."
            )
        elif current != self.season_number:
            text = (
                f"Season {self.season_number} had already ended; season {current} is running. Nothing else was reset."
            )
        else:
            text = (
                "The reset could not be completed because the database is unavailable. "
                "Nothing was lost; please try again."
            )
        await inter.edit_original_response(embed=notice_embed(text, title="Leaderboards reset"), view=None)

    @disnake.ui.button(label="Cancel", style=disnake.ButtonStyle.secondary, custom_id=CANCEL_ID)
    async def cancel(self, button: disnake.ui.Button, inter: disnake.MessageInteraction) -> None:
        self.stop()
        await inter.response.edit_message(embed=notice_embed("Nothing was reset."), view=None)


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Seasons(bot))
