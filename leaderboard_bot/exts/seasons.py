"""Seasons: the automatic reset every RESET_PERIOD, the final-standings announcement, and
``/leaderboard reset`` for server managers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import disnake
from disnake.ext import commands, tasks
from disnake.interactions import ApplicationCommandInteraction, MessageInteraction
from loguru import logger

from ..background import Background
from ..config import Tunables
from ..db import repository
from ..domain import BOARDS, Board
from ..logs import is_expected_failure
from ..services.backoff import Backoff
from ..services.logthrottle import LogThrottle, report_failure, report_recovery
from ..services.seasons import SeasonInfo
from ..ui.embeds import final_standings_embed, guild_icon_url, notice_embed
from .errors import ReportingView

if TYPE_CHECKING:
    from ..bot import LeaderboardBot

RESET_ID_PREFIX = "leaderboard-reset:"
CONFIRM_ID = f"{RESET_ID_PREFIX}confirm"
CANCEL_ID = f"{RESET_ID_PREFIX}cancel"
CONFIRM_TIMEOUT = 60.0
ANNOUNCE_FIRST_RETRY = 5.0
ANNOUNCE_MAX_BACKOFF = 15 * 60.0


BOUNDARY_DELAY = 0.2  # past the boundary, so that the season is due when checked
BOUNDARY_RECHECK = 3600.0  # longest sleep: a RESET_PERIOD change or a clock step is seen within it


def check_interval(reset_period: float) -> float:
    """Check often enough that a short test season ends on time, rarely enough to cost nothing."""
    return min(30.0, max(1.0, reset_period / 20))


class Seasons(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot
        self._announcing = asyncio.Lock()
        # Per owed announcement, so a forbidden channel is retried but never hammered.
        self._retries: dict[str, Backoff] = {}
        self._posted: dict[str, int] = {}  # announcement key -> message id, posted by this process
        self._unsubscribe: Callable[[], None] | None = None
        # Button ids of confirmations this process showed and that have not timed out; a click
        # on any other (e.g. one shown before a restart) gets "expired" instead of a failure.
        self.live_confirmations: set[str] = set()
        # The checks repeat every few seconds: a failure that persists is logged once per kind.
        self.log_throttle = LogThrottle()
        self._tasks = Background("seasons")
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def cog_load(self) -> None:
        self._unsubscribe = self.bot.services.settings.subscribe(self._on_settings)
        self.season_loop.change_interval(seconds=check_interval(self.bot.services.settings.current.reset_period))
        self.season_loop.start()
        self._tasks.start(self._at_boundaries(), "the check at each season's end")

    def cog_unload(self) -> None:
        self.season_loop.cancel()
        self._tasks.cancel_all()
        if self._unsubscribe is not None:
            self._unsubscribe()

    def _on_settings(self, old: Tunables, new: Tunables) -> None:
        if new.reset_period != old.reset_period:
            self.season_loop.change_interval(seconds=check_interval(new.reset_period))

    # ------------------------------------------------------------------ automatic reset

    @tasks.loop(seconds=30)
    async def season_loop(self) -> None:
        await self._check()

    async def _at_boundaries(self) -> None:
        """Check again just after the season's scheduled end: the reset happens within a second of
        its boundary, not up to a loop interval later (activity in between would count in the season
        that ended)."""
        await self.bot.wait_until_ready()
        seasons = self.bot.services.seasons
        while True:
            until = seasons.current.ends_at - seasons.clock()
            if until <= 0:  # due already (a reset that failed): the loop retries it at its pace
                await self._sleep(check_interval(seasons.period))
                continue
            await self._sleep(min(until, BOUNDARY_RECHECK) + BOUNDARY_DELAY)
            if seasons.is_due():
                await self._check()

    async def _check(self) -> None:
        try:
            if self.bot.services.seasons.is_due():
                await self.end_season(reason="the season's time is up", only_if_due=True)
            else:
                await self.announce_pending()
        except Exception as error:
            self._failed(("season check",), error, "the season check failed")
        else:
            report_recovery(self.log_throttle, ("season check",), "the season check works again")

    def _failed(self, operation: tuple[object, ...], error: Exception, what: str) -> None:
        """One line per kind of failure while it repeats; a traceback only for the unexpected."""
        expected = is_expected_failure(error)
        report_failure(
            self.log_throttle,
            operation,
            type(error).__name__,
            f"{what} ({type(error).__name__}: {error}); will retry",
            summary=f"{what} ({type(error).__name__})",
            level="WARNING" if expected else "ERROR",
            exception=None if expected else error,
        )

    @season_loop.before_loop
    async def _before_season_loop(self) -> None:
        await self.bot.wait_until_ready()

    async def end_season(
        self, *, reason: str, only_if_due: bool = False, expected: int | None = None, by: int | None = None
    ) -> SeasonInfo | None:
        """End the season (``by``: the member who asked, for a manual reset) and announce it."""
        number = self.bot.services.seasons.current.number
        finished = await self.bot.services.seasons.roll(
            reason=reason, only_if_due=only_if_due, expected=expected, by=by
        )
        if finished is None:
            if self.bot.services.seasons.current.number == number:
                report_failure(
                    self.log_throttle,
                    ("end season", number),
                    "write failed",
                    f"could not end season {number}: writing activity failed"
                    + ("; it is tried again at the next check" if expected is None else "; nothing was reset"),
                    summary=f"could not end season {number} (writing activity failed)",
                    season=number,
                )
            return None
        report_recovery(self.log_throttle, ("end season", number), f"season {number} has ended", season=number)
        # The season has ended whatever happens next; the loop retries anything owed. (The pinned
        # boards follow through the season service's roll listeners.)
        try:
            await self.announce_pending()
        except Exception as error:
            self._failed(("announce", finished.number), error, f"announcing season {finished.number} failed")
        return finished

    async def announce_pending(self) -> None:
        """Post final standings for every finished season not announced yet (also after a crash).
        Serialised: the loop and a manual reset may both get here at once, and must not both post."""
        async with self._announcing:
            blocked: set[Board] = set()  # a board still owing an earlier season waits, to keep the order
            for season in await self.bot.services.seasons.unannounced():
                if await self._announce(season, blocked):
                    await self.bot.services.seasons.mark_announced(season.number)

    async def _announce(self, season: SeasonInfo, blocked: set[Board]) -> bool:
        """Post what is still owed for ``season``; True once both boards are posted. Boards that
        cannot be posted now are added to ``blocked``."""
        bot, guild_id = self.bot, self.bot.config.guild_id
        complete = True
        for board in BOARDS:
            channel_id = bot.services.settings.board_channel(board)
            key = f"season:{season.number}:final:{board}"
            if key in self._posted:
                # Posted by this process; make sure the database knows before calling it done.
                try:
                    await bot.services.storage.run(repository.set_setting, guild_id, key, self._posted[key])
                except Exception:
                    complete = False  # told once by the first attempt's line below; retried every check
                else:
                    report_recovery(
                        self.log_throttle,
                        ("record", key),
                        f"the season {season.number} announcement is recorded",
                        season=season.number,
                    )
                continue
            if await bot.services.storage.run(repository.get_setting, guild_id, key):
                continue  # already posted: each board is announced once, whatever happened to the other
            retry = self._retries.setdefault(key, Backoff(ANNOUNCE_FIRST_RETRY, ANNOUNCE_MAX_BACKOFF))
            if board in blocked or retry.waiting():
                complete = False
                blocked.add(board)
                continue
            channel = bot.get_channel(channel_id)
            try:
                owner = getattr(channel, "guild", None)
                if not isinstance(channel, disnake.abc.Messageable) or owner is None or owner.id != guild_id:
                    raise _NoChannel  # never this server's standings in another server's channel
                embed = final_standings_embed(
                    board=board,
                    lines=await bot.services.boards.lines(board, season=season.number),
                    arrow=bot.services.settings.current.arrow_emoji,
                    guild_icon_url=guild_icon_url(bot.guild),
                    season_number=season.number,
                    started_at=season.started_at,
                    ended_at=season.ended_at or season.ends_at,
                )
                message = await channel.send(embed=embed)
            except (disnake.HTTPException, _NoChannel) as error:
                complete = False
                blocked.add(board)
                delay, _ = retry.failed()
                failure = ("no channel",) if isinstance(error, _NoChannel) else (error.status, error.code)
                report_failure(
                    self.log_throttle,
                    ("announce", key),
                    failure,
                    f"cannot post season {season.number} final standings in <#{channel_id}>: "
                    f"{_announce_failure(error)}; retrying in {delay:.0f}s",
                    summary=f"cannot post season {season.number} final standings in <#{channel_id}> "
                    f"({_announce_failure(error)})",
                    season=season.number,
                    board=board,
                    channel_id=channel_id,
                )
                continue
            report_recovery(
                self.log_throttle,
                ("announce", key),
                f"season {season.number} final standings posted in <#{channel_id}>",
                season=season.number,
                board=board,
                channel_id=channel_id,
            )
            # Remembered in memory first: if the database cannot record it now, it is still
            # never posted twice by this process (only a crash right here could repeat it).
            self._posted[key] = message.id
            self._retries.pop(key, None)
            try:
                await bot.services.storage.run(repository.set_setting, guild_id, key, message.id)
            except Exception as error:
                report_failure(
                    self.log_throttle,
                    ("record", key),
                    type(error).__name__,
                    f"could not record the season {season.number} announcement ({error}); will retry",
                    summary=f"could not record the season {season.number} announcement ({type(error).__name__})",
                    season=season.number,
                )
                complete = False
        return complete

    # ------------------------------------------------------------------ manual reset

    async def ask_reset(self, inter: ApplicationCommandInteraction) -> None:
        """``/leaderboard reset`` (the command lives in exts/admin): ask for a confirmation."""
        if inter.guild_id != self.bot.config.guild_id:
            await inter.response.send_message(
                embed=notice_embed("`/leaderboard reset` only works in the server whose leaderboards it resets."),
                ephemeral=True,
            )
            return
        # Server admins can change who sees the command, so check the permission here too.
        if not inter.permissions.manage_guild:
            await inter.response.send_message(
                embed=notice_embed("You need the **Manage Server** permission to reset the leaderboards."),
                ephemeral=True,
            )
            return
        season = self.bot.services.seasons.current
        view = ConfirmReset(self, inter, season.number)
        await inter.response.send_message(
            embed=notice_embed(
                f"This ends **season {season.number}** now: the final standings are posted in both "
                "leaderboard channels, the season is archived, and both boards start from zero.",
                title="Reset the leaderboards?",
            ),
            view=view,
            ephemeral=True,
        )

    @commands.Cog.listener()
    async def on_button_click(self, inter: MessageInteraction) -> None:
        custom_id = inter.component.custom_id or ""
        if not custom_id.startswith(RESET_ID_PREFIX) or custom_id in self.live_confirmations:
            return
        await inter.response.send_message(
            embed=notice_embed("This confirmation has expired. Nothing was reset; run `/leaderboard reset` again."),
            ephemeral=True,
        )


class _NoChannel(Exception):
    """The board channel is not visible to the bot."""


def _announce_failure(error: Exception) -> str:
    if isinstance(error, _NoChannel):
        return "the channel is not visible to the bot, or belongs to another server"
    if isinstance(error, disnake.Forbidden):
        return "missing permissions (Send Messages, Embed Links)"
    return f"Discord answered {getattr(error, 'status', '?')}"


class ConfirmReset(ReportingView):
    def __init__(self, cog: Seasons, origin: ApplicationCommandInteraction, season_number: int) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT)
        self.cog = cog
        self.origin = origin
        self.invoker_id = origin.author.id
        self.season_number = season_number
        # Ids unique to this request: disnake routes clicks by custom_id, and two managers may
        # have confirmations open at once.
        self.confirm.custom_id = f"{CONFIRM_ID}:{origin.id}"
        self.cancel.custom_id = f"{CANCEL_ID}:{origin.id}"
        cog.live_confirmations.update((self.confirm.custom_id, self.cancel.custom_id))

    def _forget(self) -> None:
        """Once answered or expired, a click on these buttons (from another device, a stale client)
        gets the cog's "expired" answer instead of none at all."""
        self.cog.live_confirmations.difference_update((self.confirm.custom_id, self.cancel.custom_id))

    async def on_timeout(self) -> None:
        self._forget()
        # If the member dismissed the message there is nothing left to tidy up.
        with contextlib.suppress(disnake.HTTPException):
            await self.origin.edit_original_response(
                embed=notice_embed("The reset request expired. Nothing was reset."), view=None
            )

    async def interaction_check(self, inter: MessageInteraction) -> bool:
        if inter.author.id != self.invoker_id or not inter.permissions.manage_guild:
            await inter.response.send_message("Only the person who asked for the reset can confirm it.", ephemeral=True)
            return False
        return True

    @disnake.ui.button(label="Reset now", style=disnake.ButtonStyle.danger, custom_id=CONFIRM_ID)
    async def confirm(self, button: disnake.ui.Button, inter: MessageInteraction) -> None:
        self.stop()
        self._forget()
        await inter.response.defer()
        try:
            finished = await self.cog.end_season(
                reason=f"reset by {inter.author} ({inter.author.id})", expected=self.season_number, by=inter.author.id
            )
        except Exception:
            logger.bind(user_id=inter.author.id).exception("/leaderboard reset failed")
            finished = None
        current = self.cog.bot.services.seasons.current.number
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
    async def cancel(self, button: disnake.ui.Button, inter: MessageInteraction) -> None:
        self.stop()
        self._forget()
        await inter.response.edit_message(embed=notice_embed("Nothing was reset."), view=None)


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Seasons(bot))
