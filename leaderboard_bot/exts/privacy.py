"""``/privacy``: members' own data (hide, show, stop, start, export, delete), every answer private;
and the file behind ``/leaderboard export`` (the command itself lives in exts/admin).

Every answer is deferred as ephemeral first: a "thinking…" state that turned public would tell the
channel who asked to be hidden. Unexpected errors escape to the bot's error handler (exts/errors),
which logs them and apologises privately.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import disnake
from disnake.ext import commands
from disnake.interactions import ApplicationCommandInteraction, MessageInteraction
from loguru import logger

from ..db import repository
from ..db.storage import StorageError
from ..domain import WINDOWS, shift_day
from ..services.exports import ExportResult, ExportSpec, member_days_csv, member_json, write_export
from ..services.privacy import HIDDEN, STOPPED
from ..ui.embeds import notice_embed
from .errors import ReportingView

if TYPE_CHECKING:
    from ..bot import LeaderboardBot

DELETE_ID_PREFIX = "privacy-delete:"
CONFIRM_ID = f"{DELETE_ID_PREFIX}confirm"
CANCEL_ID = f"{DELETE_ID_PREFIX}cancel"
CONFIRM_TIMEOUT = 60.0
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024  # disnake's figure for a server without boosts
FILES_PER_MESSAGE = 10
DATABASE_BUSY = "The database did not answer. Nothing was changed; please try again in a moment."
DATABASE_DID_NOT_ANSWER = "The database did not answer. Please try again in a moment."  # (a read: nothing to change)
EXPORT_PERIODS = ("today", "week", "month", "all-time")

CHANGES = {
    (HIDDEN, True): (
        "You're **hidden**: you still count, but you're not listed on any board, `/top`, past seasons "
        "or the final standings posted from now on (those already posted stay as they are). `/stats` "
        "still shows you your own rank. `/privacy show` lists you again.",
        "You were already hidden.",
    ),
    (HIDDEN, False): (
        "You're **listed** again on the boards (the pinned ones at their next refresh).",
        "You weren't hidden: you're listed on the boards.",
    ),
    (STOPPED, True): (
        "You're **no longer counted**: no messages, no voice time, no name stored, and you're off the "
        "boards (the pinned ones at their next refresh). What was counted before stays; "
        "`/privacy delete` erases it. `/privacy start` counts you again.",
        "You were already not counted.",
    ),
    (STOPPED, False): (
        "You're **counted** again from now on.",
        "You're already counted.",
    ),
}


def _private(text: str, title: str | None = None) -> disnake.Embed:
    return notice_embed(text, title=title)


class Privacy(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot
        self.privacy = bot.services.privacy
        # Button ids of delete confirmations this process showed that have not timed out.
        self.live_confirmations: set[str] = set()

    async def _start(self, inter: ApplicationCommandInteraction) -> bool:
        """Defer privately; False (with an answer) when the command cannot apply here."""
        if inter.guild_id != self.bot.config.guild_id:
            await inter.response.send_message(
                embed=_private("`/privacy` works in the server whose leaderboards it is about."), ephemeral=True
            )
            return False
        if inter.author.bot:
            await inter.response.send_message(embed=_private("Bots aren't tracked."), ephemeral=True)
            return False
        await inter.response.defer(ephemeral=True)
        return True

    @commands.slash_command(name="privacy", description="Your own data on the leaderboards")
    async def privacy_group(self, inter: ApplicationCommandInteraction) -> None:
        pass

    @privacy_group.sub_command(name="hide", description="Keep counting me, but never list me on any board")
    async def hide(self, inter: ApplicationCommandInteraction) -> None:
        await self._change(inter, HIDDEN, True)

    @privacy_group.sub_command(name="show", description="List me on the boards again")
    async def show(self, inter: ApplicationCommandInteraction) -> None:
        await self._change(inter, HIDDEN, False)

    @privacy_group.sub_command(name="stop", description="Stop counting me at all (messages, voice time, name)")
    async def stop(self, inter: ApplicationCommandInteraction) -> None:
        await self._change(inter, STOPPED, True)

    @privacy_group.sub_command(name="start", description="Count me again")
    async def start(self, inter: ApplicationCommandInteraction) -> None:
        await self._change(inter, STOPPED, False)

    async def _change(self, inter: ApplicationCommandInteraction, flag: str, on: bool) -> None:
        if not await self._start(inter):
            return
        try:
            changed = await self.privacy.set_flag(inter.author.id, flag, on)
        except StorageError:
            await inter.edit_original_response(embed=_private(DATABASE_BUSY))
            return
        done, already = CHANGES[(flag, on)]
        if changed:
            logger.bind(user_id=inter.author.id).info("privacy: a member chose {} {}", flag, "on" if on else "off")
        await inter.edit_original_response(embed=_private(done if changed else already, title="Your data"))

    @privacy_group.sub_command(name="export", description="Everything stored about me, as files only I see")
    async def export(self, inter: ApplicationCommandInteraction) -> None:
        if not await self._start(inter):
            return
        user_id = inter.author.id
        try:
            data = await self.privacy.data(user_id)
        except StorageError:
            await inter.edit_original_response(embed=_private(DATABASE_DID_NOT_ANSWER))
            return
        document = {"guild_id": self.bot.config.guild_id, "user_id": user_id, **data}
        json_bytes, csv_bytes = await asyncio.to_thread(
            lambda: (member_json(document), member_days_csv(document["days"]))
        )
        files = [
            disnake.File(io.BytesIO(json_bytes), filename="my-leaderboard-data.json"),
            disnake.File(io.BytesIO(csv_bytes), filename="my-leaderboard-days.csv"),
        ]
        text = (
            "Below, only for you: everything the bot stores about you in this server (every season's and "
            "period's totals, your daily counts, voice sessions, the name kept for you and your privacy "
            "choices) as JSON, and your daily counts as a spreadsheet (CSV)."
        )
        await inter.edit_original_response(embed=_private(text, title="Your data"))
        await inter.followup.send(files=files, ephemeral=True)

    @privacy_group.sub_command(name="delete", description="Erase everything stored about me, and stop counting me")
    async def delete(self, inter: ApplicationCommandInteraction) -> None:
        if inter.guild_id != self.bot.config.guild_id or inter.author.bot:
            await self._start(inter)
            return
        view = ConfirmDelete(self, inter)
        await inter.response.send_message(
            embed=_private(
                "This erases everything the bot stores about you in this server, in every season: your totals, "
                "daily counts, voice sessions and name, and stops counting you. It cannot be undone. "
                "`/privacy export` first if you want a copy.",
                title="Erase your data?",
            ),
            view=view,
            ephemeral=True,
        )

    @commands.Cog.listener()
    async def on_button_click(self, inter: MessageInteraction) -> None:
        custom_id = inter.component.custom_id or ""
        if not custom_id.startswith(DELETE_ID_PREFIX) or custom_id in self.live_confirmations:
            return
        await inter.response.send_message(
            embed=_private("This confirmation has expired. Nothing was erased; run `/privacy delete` again."),
            ephemeral=True,
        )

    # ------------------------------------------------------------------ /leaderboard export

    async def export_board(
        self,
        inter: ApplicationCommandInteraction,
        *,
        season: int | None,
        period: str | None,
        first_day: str | None,
        last_day: str | None,
        per_day: bool,
    ) -> None:
        """``/leaderboard export`` (the command and its permission check live in exts/admin)."""
        await inter.response.defer(ephemeral=True)  # the season list may need the database
        try:
            chosen = await self._export_spec(season, period, first_day, last_day, per_day)
        except StorageError:
            chosen = DATABASE_BUSY.replace(" Nothing was changed;", "")
        if isinstance(chosen, str):
            await inter.edit_original_response(embed=_private(chosen))
            return
        spec, label = chosen
        services = self.bot.services
        if spec.scope is None or spec.scope < 0 or spec.scope == services.seasons.current_number() or spec.per_day:
            # What is still in memory goes in too: a flush first (a failed one keeps it; the file
            # then shows the figures as last written).
            with contextlib.suppress(Exception):
                await services.seasons.flush()
        guild = inter.guild
        limit = guild.filesize_limit if guild is not None else DEFAULT_FILE_LIMIT
        directory = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="leaderboard-export-"))
        try:
            try:
                result = await write_export(
                    services.storage,
                    self.bot.config.guild_id,
                    spec,
                    directory,
                    hidden=self.privacy.hidden,
                    stopped=self.privacy.stopped,
                    limit=limit,
                )
            except StorageError:
                await inter.edit_original_response(embed=_private(DATABASE_DID_NOT_ANSWER))
                return
            await self._send_files(inter, result, _export_summary(label, result, limit))
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    async def _send_files(self, inter: ApplicationCommandInteraction, result: ExportResult, text: str) -> None:
        """The summary in the deferred answer, the files in private follow-ups (new messages: an
        upload never replaces anything, and each part near the limit goes alone)."""
        await inter.edit_original_response(embed=_private(text, title="Leaderboard export"))
        step = 1 if result.compressed else FILES_PER_MESSAGE
        for start in range(0, len(result.files), step):
            batch = result.files[start : start + step]
            await inter.followup.send(files=[disnake.File(f.path, filename=f.filename) for f in batch], ephemeral=True)

    async def _export_spec(
        self, season: int | None, period: str | None, first_day: str | None, last_day: str | None, per_day: bool
    ) -> tuple[ExportSpec, str] | str:
        """What to export, and how to call it; or why not (a friendly sentence)."""
        services = self.bot.services
        seasons = services.seasons
        calendar = services.activity.calendar
        today = calendar.day_of(services.activity.clock())
        ranged = first_day is not None or last_day is not None
        if sum((season is not None, period is not None, ranged)) > 1:
            return "Pick one: a season, a period, or a date range (first and last day)."
        if ranged:
            days = parse_range(first_day, last_day)
            if isinstance(days, str):
                return days
            first, last = days
            return ExportSpec(None, first, last, per_day, stem=f"leaderboard-{first}-to-{last}"), (f"{first} to {last}")
        if period is not None:
            window = WINDOWS.get(period)  # type: ignore[call-overload]
            if window is None:
                return "That period isn't available: pick today, week, month or all-time."
            if window.days is None:
                span = await services.storage.read(repository.stored_days, self.bot.config.guild_id)
                first, last = span if span is not None else (today, today)
            else:
                first, last = shift_day(today, 1 - window.days), today
            return ExportSpec(window.scope, first, last, per_day, stem=f"leaderboard-{period}"), {
                "today": "today",
                "week": "the last 7 days",
                "month": "the last 30 days",
                "all-time": "all time",
            }[period]
        current = seasons.current
        number = current.number if season is None else season
        if number == current.number:
            info = current
        else:
            found = await seasons.finished_season(number)
            if found is None:
                return f"There's no season {number}: the current season is {current.number}."
            info = found
        first = calendar.day_of(info.started_at)
        last = today if info.ended_at is None else calendar.day_of(info.ended_at)
        return ExportSpec(number, first, last, per_day, stem=f"leaderboard-season-{number}"), f"season {number}"


def parse_range(first_day: str | None, last_day: str | None) -> tuple[str, str] | str:
    """A date range from the options (both needed, ``YYYY-MM-DD``, in order), or why not."""
    if first_day is None or last_day is None:
        return "A date range needs both `first_day` and `last_day` (YYYY-MM-DD)."
    try:
        first, last = date.fromisoformat(first_day.strip()), date.fromisoformat(last_day.strip())
    except ValueError:
        return "Dates are written YYYY-MM-DD, for example 2026-01-31."
    if first > last:
        return "The first day comes after the last day: swap them."
    return first.isoformat(), last.isoformat()


def _export_summary(label: str, result: ExportResult, limit: int) -> str:
    rows = f"{result.rows:,} row{'s' if result.rows != 1 else ''}"
    parts = [f"**{label.capitalize()}**: {rows}."]
    if result.hidden:
        who = "member" if result.hidden == 1 else "members"
        parts.append(f"{result.hidden:,} {who} who chose to hide {'is' if result.hidden == 1 else 'are'} left out.")
    parts.append("Members who stopped counting or erased their data are not included.")
    if result.compressed:
        mib = limit / (1024 * 1024)
        how = "gzipped" if len(result.files) == 1 else f"split into {len(result.files)} gzipped parts"
        parts.append(f"Over this server's {mib:.0f} MiB upload limit, so {how}.")
    return " ".join(parts)


class ConfirmDelete(ReportingView):
    def __init__(self, cog: Privacy, origin: ApplicationCommandInteraction) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT)
        self.cog = cog
        self.origin = origin
        self.invoker_id = origin.author.id
        # Ids unique to this request: disnake routes clicks by custom_id.
        self.confirm.custom_id = f"{CONFIRM_ID}:{origin.id}"
        self.cancel.custom_id = f"{CANCEL_ID}:{origin.id}"
        cog.live_confirmations.update((self.confirm.custom_id, self.cancel.custom_id))

    def _forget(self) -> None:
        self.cog.live_confirmations.difference_update((self.confirm.custom_id, self.cancel.custom_id))

    async def on_timeout(self) -> None:
        self._forget()
        with contextlib.suppress(disnake.HTTPException):
            await self.origin.edit_original_response(
                embed=_private("The request expired. Nothing was erased."), view=None
            )

    async def interaction_check(self, inter: MessageInteraction) -> bool:
        if inter.author.id != self.invoker_id:
            await inter.response.send_message("Only the member who asked can confirm this.", ephemeral=True)
            return False
        return True

    @disnake.ui.button(label="Erase my data", style=disnake.ButtonStyle.danger, custom_id=CONFIRM_ID)
    async def confirm(self, button: disnake.ui.Button, inter: MessageInteraction) -> None:
        self.stop()
        self._forget()
        await inter.response.defer()
        try:
            erased = await self.cog.privacy.erase(inter.author.id)
        except Exception as error:
            if not isinstance(error, StorageError):
                logger.bind(user_id=inter.author.id).exception("/privacy delete failed")
            what = "The database did not answer" if isinstance(error, StorageError) else "Something went wrong"
            text = (
                f"{what}, so nothing stored was erased yet; you are not counted meanwhile. "
                "Please run `/privacy delete` again in a moment."
            )
            await inter.edit_original_response(embed=_private(text), view=None)
            return
        logger.bind(user_id=inter.author.id).info("privacy: a member's data was erased on request")
        rows = sum(erased.rows.values())
        text = (
            f"Erased: {rows:,} stored record{'s' if rows != 1 else ''} about you, in every season. You are no "
            "longer counted, and the pinned boards drop you at their next refresh. One note is kept: that you "
            "are not to be counted. `/privacy start` removes it and counts you again."
        )
        await inter.edit_original_response(embed=_private(text, title="Your data"), view=None)

    @disnake.ui.button(label="Cancel", style=disnake.ButtonStyle.secondary, custom_id=CANCEL_ID)
    async def cancel(self, button: disnake.ui.Button, inter: MessageInteraction) -> None:
        self.stop()
        self._forget()
        await inter.response.edit_message(embed=_private("Nothing was erased."), view=None)


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Privacy(bot))
