"""Slash commands for members: ``/top messages``, ``/top voice``, ``/stats [user]`` (each for the
running season, a window of days or a finished season) and ``/seasons``.

Every answer goes through ``exts.errors.respond_in_time``: in time, and an apology on errors.
``/stats`` attaches a chart of the member's days and ``/top chart:true`` one of the board, drawn
in the charts' child process within ``CHART_BUDGET``; a chart that fails or is late is left out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

import disnake
from disnake.ext import commands
from disnake.interactions import ApplicationCommandInteraction
from loguru import logger

from ..adapters.disnake_names import shown_name
from ..db.storage import StorageError
from ..domain import WINDOWS, Board, BoardLine
from ..services.daily import chart_days, member_days
from ..services.logthrottle import LogThrottle, report_failure, report_recovery
from ..services.voice import VoiceRules, voice_status
from ..ui import charts
from ..ui.embeds import (
    BoardPeriod,
    finished_season_period,
    guild_icon_url,
    leaderboard_embed,
    notice_embed,
    seasons_embed,
    stats_embed,
    window_period,
)
from ..ui.format import day_range_text, display_name
from ..worker import ProcessWorker
from .errors import Reply, ready, respond_in_time
from .tracking import excluded, role_ids

if TYPE_CHECKING:
    from ..bot import LeaderboardBot

SERVER_ONLY = "This command only works in the server."
SEASONS_SHOWN = 10  # the most recent finished seasons listed by /seasons
AUTOCOMPLETE_CHOICES = 25  # Discord's cap on autocomplete suggestions
# A chart (its data and its drawing) gets this long; past it the answer goes without the picture.
# Drawing takes about 0.1 s (bench/charts.py), plus about 0.5 s for the first chart after the charts'
# process was idle (a new process imports matplotlib); the rest is room for a busy machine or database.
CHART_BUDGET = 2.0
CHARTS_IDLE = 600.0  # seconds without a chart before the charts' process ends (the next one starts it again)

PERIOD_CHOICES = [
    disnake.OptionChoice("This season", "season"),
    disnake.OptionChoice("Today", "today"),
    disnake.OptionChoice("Last 7 days", "week"),
    disnake.OptionChoice("Last 30 days", "month"),
    disnake.OptionChoice("All time", "all-time"),
]
PERIOD = commands.Param("season", choices=PERIOD_CHOICES, description="Which stretch of time (default: this season)")
WHOSE = commands.Param(None, description="Whose stats to show (default: yours)")
PAST_SEASON = commands.Param(
    None, ge=1, le=2**31 - 1, description="A finished season's number instead (see /seasons)", name="season"
)
CHART = commands.Param(False, description="Attach a bar chart of the board (default: no)")


class Scope:
    """What a command was asked to show: the number its figures are stored under (a season's, or
    a window's negative scope) and how to describe it (None: the running season)."""

    def __init__(self, number: int, period: BoardPeriod | None, chart_days: list[str] | None = None) -> None:
        self.number = number
        self.period = period
        self.chart_days = chart_days or []  # the days /stats charts (services.daily.chart_days)


class Leaderboards(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot
        # One child process draws every chart, in turn: matplotlib's memory (about 50 MB) and its
        # pure-Python drawing stay out of the bot's process; the child ends after 10 idle minutes.
        self._charts: ProcessWorker | None = None
        self._chart_log = LogThrottle()

    @property
    def chart_worker(self) -> ProcessWorker:
        if self._charts is None:
            self._charts = ProcessWorker("leaderboard-charts", idle=CHARTS_IDLE)
        return self._charts

    def warm_up_charts(self) -> None:
        """Start the charts' process and draw one chart there now: it builds matplotlib's font cache
        on a first start (several seconds), and the log says when charts are ready or that answers
        will go without them. The process ends after CHARTS_IDLE seconds without a chart."""
        started = time.monotonic()

        def done(future: concurrent.futures.Future[None]) -> None:  # on the pool's thread
            if future.cancelled():
                return
            error = future.exception()
            if error is None:
                logger.info("charts ready: matplotlib loaded and a first chart drawn in {:.1f}s",
                            time.monotonic() - started)
            else:
                logger.warning("charts cannot be drawn ({}): /stats and /top answer without them", error)

        self.chart_worker.submit(charts.warm_up).add_done_callback(done)

    def cog_unload(self) -> None:
        if self._charts is not None:
            self._charts.stop()  # a chart being drawn never holds up a stop

    # ------------------------------------------------------------------ commands

    @commands.slash_command(name="top")
    async def top(self, inter: ApplicationCommandInteraction) -> None:
        """The season's most active members."""

    @top.sub_command(name="messages")
    async def top_messages(
        self,
        inter: ApplicationCommandInteraction,
        period: str = PERIOD,
        past_season: int | None = PAST_SEASON,
        chart: bool = CHART,
    ) -> None:
        """Top members by messages this season, or over another stretch of time."""
        await self._answer(
            inter, "top messages", lambda: self._top_reply(inter, "messages", period, past_season, chart=chart)
        )

    @top.sub_command(name="voice")
    async def top_voice(
        self,
        inter: ApplicationCommandInteraction,
        period: str = PERIOD,
        past_season: int | None = PAST_SEASON,
        chart: bool = CHART,
    ) -> None:
        """Top members by voice time this season, or over another stretch of time."""
        await self._answer(
            inter, "top voice", lambda: self._top_reply(inter, "voice", period, past_season, chart=chart)
        )

    @commands.slash_command(name="stats")
    async def stats(
        self,
        inter: ApplicationCommandInteraction,
        # A User option (not Member) so people who left the server can still be looked up.
        user: disnake.User | disnake.Member | None = WHOSE,
        period: str = PERIOD,
        past_season: int | None = PAST_SEASON,
    ) -> None:
        """Messages, voice time and ranks this season, or over another stretch of time."""
        await self._answer(inter, "stats", lambda: self._stats_reply(inter, user or inter.author, period, past_season))

    @top_messages.autocomplete("season")
    @top_voice.autocomplete("season")
    @stats.autocomplete("season")
    async def finished_season_choices(self, inter: ApplicationCommandInteraction, typed: str) -> dict[str, int]:
        """The finished seasons whose number starts with what was typed, newest first, with dates."""
        if inter.guild_id != self.bot.config.guild_id:
            return {}
        typed = typed.strip().lstrip("#")
        choices: dict[str, int] = {}
        try:
            finished = await self.bot.services.seasons.finished()
        except StorageError:
            return {}  # the database is away: no suggestions; a typed number still works
        for season in finished:
            if not str(season.number).startswith(typed):
                continue
            calendar = self.bot.services.activity.calendar
            first = calendar.day_of(season.started_at)
            last = calendar.day_of(max(season.started_at, (season.ended_at or season.ends_at) - 1))
            choices[f"Season {season.number} · {day_range_text(first, last)}"] = season.number
            if len(choices) == AUTOCOMPLETE_CHOICES:
                break
        return choices

    @commands.slash_command(name="seasons")
    async def seasons(self, inter: ApplicationCommandInteraction) -> None:
        """Past seasons: when they ran and who won each board."""
        await self._answer(inter, "seasons", lambda: self._seasons_reply(inter))

    # ------------------------------------------------------------------ building replies

    async def _answer(
        self,
        inter: ApplicationCommandInteraction,
        command: str,
        build: Callable[[], Coroutine[Any, Any, Reply]],
    ) -> None:
        if inter.guild_id != self.bot.config.guild_id:
            # The commands are registered for the one guild, but a DM or stale registration can still
            # reach us; the data belongs to that guild only.
            server_only = Reply(notice_embed(SERVER_ONLY), ephemeral=True)
            await respond_in_time(inter, ready(server_only), command=command)
            return
        await respond_in_time(inter, build(), command=command)

    async def _scope(self, period: str, past_season: int | None) -> Scope | Reply:
        """The figures asked for, or a friendly (private) answer saying why they can't be shown."""
        seasons = self.bot.services.seasons
        current = seasons.current  # read once: a season ending meanwhile must not mislabel the figures
        if past_season is not None:
            if period != "season":
                return _private("Pick either a period or a past season, not both.")
            if past_season == current.number:
                return Scope(current.number, None, chart_days(self._today()))
            info = await seasons.finished_season(past_season)
            if info is None:
                return _private(_no_such_season(past_season, current.number, await seasons.finished()))
            ended_at = info.ended_at or info.ends_at
            calendar = self.bot.services.activity.calendar
            season_days = (calendar.day_of(info.started_at), calendar.day_of(max(info.started_at, ended_at - 1)))
            return Scope(
                info.number,
                finished_season_period(info.number, info.started_at, ended_at),
                chart_days(self._today(), season=season_days),
            )
        if period == "season":
            return Scope(current.number, None, chart_days(self._today()))
        window = WINDOWS.get(period)  # type: ignore[call-overload]
        if window is None:  # (only a stale command registration could send another value)
            return _private("That period isn't available. Pick one from the list.")
        calendar = self.bot.services.activity.calendar
        finished = await seasons.finished()
        first_start = finished[-1].started_at if finished else current.started_at
        board_period = window_period(
            window,
            today=calendar.day_of(self.bot.services.activity.clock()),
            zone=calendar.zone_name,
            first_day=calendar.day_of(first_start),
        )
        return Scope(window.scope, board_period, chart_days(self._today(), window_days=window.days))

    def _today(self) -> str:
        activity = self.bot.services.activity
        return activity.calendar.day_of(activity.clock())

    async def _top_reply(
        self,
        inter: ApplicationCommandInteraction,
        board: Board,
        period: str = "season",
        past_season: int | None = None,
        *,
        chart: bool = False,
    ) -> Reply:
        bot = self.bot
        scope = await self._scope(period, past_season)
        if isinstance(scope, Reply):
            return scope
        season = bot.services.seasons.current
        author = inter.author
        lines, caller, rank, stale = await bot.services.boards.lines_for_reply(
            board, season=scope.number, caller=author.id
        )
        caller_line = None
        if caller is not None and rank is not None:
            caller_line = BoardLine(rank=rank, name=shown_name(author), user_id=author.id, value=caller.value)
        embed = leaderboard_embed(
            board=board,
            lines=lines,
            arrow=bot.services.settings.current.arrow_emoji,
            guild_icon_url=guild_icon_url(inter.guild),
            season_number=season.number,
            season_ends_at=season.ends_at,
            changed_at=bot.services.boards.changed_at(board),
            caller_line=caller_line,
            stale=stale,
            period=scope.period,
        )
        if not chart or not lines or not self.bot.config.charts:
            return Reply(embed)  # an empty board has nothing to draw: its text says so (CHARTS=off: none)
        draw = partial(charts.top_chart, board, list(lines), highlight=author.id)
        return with_picture(embed, await self._picture(self.chart_worker.run(draw), charts.TOP_FILENAME))

    async def _stats_reply(
        self,
        inter: ApplicationCommandInteraction,
        target: disnake.User | disnake.Member,
        period: str = "season",
        past_season: int | None = None,
    ) -> Reply:
        if target.bot:
            name = _safe(shown_name(target), target.id)
            return Reply(notice_embed(f"Bots aren't tracked, so {name} has no stats."), ephemeral=True)
        bot = self.bot
        if target.id != inter.author.id and bot.services.privacy.is_unlisted(target.id):
            # /privacy hide or stop: their figures are shown to them only.
            name = _safe(shown_name(target), target.id)
            return Reply(notice_embed(f"{name} chose not to be listed, so their stats are private."), ephemeral=True)
        if isinstance(target, disnake.Member):
            name = shown_name(target)  # nick > global name > username, skipping invisible ones
        else:
            # Not a member (any more): the name we kept from their time here beats the account name.
            name = (await bot.services.names.resolve([target.id]))[target.id]
        scope = await self._scope(period, past_season)
        if isinstance(scope, Reply):
            return scope
        # The chart's days are read and drawn while the figures are: no extra wait. A task that is
        # not awaited (a notice, an error) ends by itself within CHART_BUDGET.
        picture = asyncio.ensure_future(self._picture(self._activity_chart(target.id, scope), charts.ACTIVITY_FILENAME))
        season = bot.services.seasons.current
        standing = await bot.services.rankings.standing_for_reply(target.id, scope.number)
        best = await bot.services.rankings.best_finished(target.id)
        live = scope.period is None or scope.period.live
        in_channel = self._voice_channel(target) if live else None
        if standing.messages <= 0 and standing.voice_seconds <= 0 and in_channel is None and best is None:
            picture.cancel()
            during = "this season yet" if scope.period is None else scope.period.during
            return Reply(notice_embed(f"{_safe(name, target.id)} hasn't been active {during}."))
        return with_picture(
            stats_embed(
                name=name,
                avatar_url=target.display_avatar.url,
                messages=standing.messages,
                message_rank=standing.message_rank,
                voice_seconds=standing.voice_seconds,
                voice_rank=standing.voice_rank,
                in_voice_channel_id=standing.live_voice_channel_id or (in_channel.id if in_channel else None),
                live_session_seconds=standing.live_session_seconds,
                season_number=season.number,
                season_ends_at=season.ends_at,
                stale=standing.stale,
                voice_status=self._voice_status(target, in_channel),
                held_back_today=bot.services.activity.held_back_today(target.id),
                period=scope.period,
                best_season=best,
            ),
            await picture,
        )

    async def _activity_chart(self, user_id: int, scope: Scope) -> bytes | None:
        """The member's days (services.daily) drawn in the charts' process; None: no data to draw."""
        services = self.bot.services
        if not scope.chart_days or not self.bot.config.charts:
            return None
        series = await member_days(services.storage, services.activity, user_id, scope.chart_days)
        if series is None:
            return None
        first, last = series.days[0], series.days[-1]
        caption = f"{day_range_text(first, last)} · {services.activity.calendar.zone_name} days"
        draw = partial(charts.activity_chart, series.days, series.messages, series.voice_seconds, caption=caption)
        return await self.chart_worker.run(draw)

    async def _picture(self, work: Awaitable[bytes | None], filename: str) -> disnake.File | None:
        """The chart ``work`` draws, as an attachment named ``filename``; None (the answer goes
        without it) when it fails or takes longer than CHART_BUDGET."""
        operation = ("chart", filename)  # a chart failing at every command is logged once, then summed up
        try:
            png = await asyncio.wait_for(work, CHART_BUDGET)
        except TimeoutError:
            text = f"the chart {filename} took over {CHART_BUDGET:.1f}s: answered without it"
            report_failure(self._chart_log, operation, "timeout", text)
            return None
        except Exception as error:
            text = f"could not draw the chart {filename}: answered without it"
            report_failure(self._chart_log, operation, type(error).__name__, text, exception=error)
            return None
        report_recovery(self._chart_log, operation, f"the chart {filename} is drawn again")
        return None if not png else disnake.File(io.BytesIO(png), filename=filename)

    def _voice_channel(self, target: disnake.User | disnake.Member) -> Any:
        state = target.voice if isinstance(target, disnake.Member) else None
        return state.channel if state is not None else None

    def _voice_status(self, target: disnake.User | disnake.Member, channel: Any) -> str | None:
        """Whether the member's voice time counts right now, and if not, the reason, in words."""
        if channel is None or not isinstance(target, disnake.Member) or target.voice is None:
            return None
        tracker = self.bot.services.activity.voice
        tunables = self.bot.services.settings.current
        afk = target.guild.afk_channel
        return voice_status(
            counting=tracker.is_counting(target.id),
            connection_lost=tracker.held_since is not None or tracker.suspended,
            in_afk=afk is not None and channel.id == afk.id,
            excluded_channel=excluded(channel, (), tunables),
            excluded_role=excluded(None, role_ids(target), tunables),
            deafened=bool(target.voice.deaf or target.voice.self_deaf),
            alone=tracker.humans_in(channel.id) < 2,
            rules=VoiceRules(count_deafened=tunables.voice_count_deafened, count_alone=tunables.voice_count_alone),
        )


    async def _seasons_reply(self, inter: ApplicationCommandInteraction) -> Reply:
        seasons = await self.bot.services.boards.finished_seasons(SEASONS_SHOWN)
        return Reply(seasons_embed(seasons, guild_icon_url=guild_icon_url(inter.guild)))


def _private(text: str) -> Reply:
    return Reply(notice_embed(text), ephemeral=True)


def with_picture(embed: disnake.Embed, picture: disnake.File | None) -> Reply:
    """The reply, showing ``picture`` as the embed's image when there is one."""
    if picture is None:
        return Reply(embed)
    embed.set_image(url=f"attachment://{picture.filename}")
    return Reply(embed, file=picture)


def _no_such_season(number: int, current: int, finished: list[Any]) -> str:
    if number > current:
        return f"Season {number} hasn't started yet: this is season {current}."
    if not finished:
        return "No season has finished yet, so there are no past boards to show."
    numbers = sorted(s.number for s in finished)
    return (
        f"There's no finished season {number} to show. Finished seasons: "
        f"{numbers[0]}–{numbers[-1]}" + (" (some are missing)" if len(numbers) != numbers[-1] - numbers[0] + 1 else "")
        + "."
    )


def _safe(name: str, user_id: int) -> str:
    """A name for notice text: markdown and mentions neutralised, in bold."""
    return f"**{display_name(nick=name, global_name=None, username=None, user_id=user_id)}**"


def setup(bot: LeaderboardBot) -> None:
    cog = Leaderboards(bot)
    bot.add_cog(cog)
    if bot.config.charts:
        cog.warm_up_charts()
