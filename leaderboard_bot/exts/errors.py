"""Answering slash commands in time, and the apology when something breaks (the error handler).

Every answer goes through :func:`respond_in_time`, so a slow database turns into a "thinking…"
state instead of Discord's "The application did not respond", and an unexpected error turns into
a short apology instead of silence. The cog is the bot-wide handler for errors raised outside it
(option conversion, checks, bugs).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import disnake
from disnake.ext import commands
from disnake.interactions import ApplicationCommandInteraction, Interaction, MessageInteraction
from loguru import logger

from ..config import SpamLimit
from ..db.storage import StorageError
from ..services.ratelimit import SpamGuard
from ..services.settings import RuntimeSettings
from ..ui.embeds import notice_embed

if TYPE_CHECKING:
    from ..bot import LeaderboardBot

# Discord drops an interaction that is not acknowledged within 3 s; deferring at 1.5 s leaves
# room for a slow network on the way to Discord.
DEFER_AFTER = 1.5

APOLOGY = "Sorry, something went wrong while building that. Please try again in a moment."
# The database is down or refusing (PostgreSQL unreachable, a file gone): expected, and not a bug.
DATABASE_UNAVAILABLE = (
    "The leaderboard's database is not answering right now, so these figures cannot be read. Counting "
    "goes on; please try again in a moment."
)


@dataclass(frozen=True)
class Reply:
    """What a command wants to say; :func:`respond_in_time` decides how to deliver it."""

    embed: disnake.Embed
    ephemeral: bool = False
    # A picture the embed shows (``attachment://<its filename>``), uploaded with the answer.
    file: disnake.File | None = None


async def respond_in_time(
    inter: Interaction,
    work: Coroutine[Any, Any, Reply],
    *,
    command: str,
    defer_after: float = DEFER_AFTER,
) -> None:
    """Run ``work`` and deliver its reply within Discord's 3-second window.

    Fast work is sent as the response itself (so ephemeral replies stay ephemeral). Work still
    running after ``defer_after`` seconds gets a public defer, then the original response is
    edited with the result. Any exception is logged with context and answered with an apology;
    nothing escapes, so the caller never leaves the interaction unanswered.
    """
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=defer_after)
        if not done:
            await inter.response.defer()
        reply = await task
        # Only an answer with a picture names the file (a File is read once, when sent).
        upload: dict[str, Any] = {} if reply.file is None else {"file": reply.file}
        if inter.response.is_done():
            # Deferred publicly: the reply can no longer become ephemeral. Every ephemeral reply
            # (bots, DMs) is decided without I/O, so it is always sent on the fast path.
            await inter.edit_original_response(embed=reply.embed, **upload)
        else:
            await inter.response.send_message(embed=reply.embed, ephemeral=reply.ephemeral, **upload)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # this command itself is being cancelled (shutdown): do not answer
        # Only the work was cancelled, by something else: the member still deserves an answer.
        logger.bind(command=command, user_id=inter.author.id).warning(
            "/{} was cancelled for user {}", command, inter.author.id
        )
        await apologise(inter)
    except StorageError as error:
        await _database_unavailable(inter, command, error)
    except Exception:
        logger.bind(command=command, user_id=inter.author.id).exception(
            "/{} failed for user {}", command, inter.author.id
        )
        await apologise(inter)
    finally:
        # Only reached with a pending task when this coroutine itself was cancelled.
        if not task.done():
            task.cancel()


async def report_command_error(inter: ApplicationCommandInteraction, error: BaseException) -> None:
    """Log a failed command with its context and apologise to the member, privately."""
    command = inter.application_command.qualified_name if inter.application_command else "?"
    cause = getattr(error, "original", error)  # disnake wraps what the command raised
    if isinstance(cause, StorageError):
        await _database_unavailable(inter, command, cause)
        return
    logger.bind(command=command, user_id=inter.author.id).opt(exception=error).error(
        "/{} failed for user {}", command, inter.author.id
    )
    await apologise(inter)


async def _database_unavailable(inter: Interaction, command: str, error: StorageError) -> None:
    """Expected, and already explained by the storage's own lines: one WARNING, no traceback."""
    logger.bind(command=command, user_id=inter.author.id).warning(
        "/{} could not read the database for user {}: {}", command, inter.author.id, error
    )
    await apologise(inter, DATABASE_UNAVAILABLE)


async def apologise(inter: Interaction, text: str = APOLOGY) -> None:
    """Tell the member something broke, privately. After a public defer the "thinking…" message is
    removed and the apology follows as an ephemeral message (ephemerality is fixed by the defer)."""
    embed = notice_embed(text)
    try:
        if not inter.response.is_done():
            await inter.response.send_message(embed=embed, ephemeral=True)
            return
        try:
            await inter.delete_original_response()
        except disnake.HTTPException:
            await inter.edit_original_response(embed=embed)  # cannot remove it: turn it into the apology
            return
        await inter.followup.send(embed=embed, ephemeral=True)
    except Exception:
        # Discord itself is failing (or the interaction expired): the log is all that is left.
        logger.opt(exception=True).warning("could not send the apology for interaction {}", inter.id)


class ReportingView(disnake.ui.View):
    """A view whose failing button is logged (loguru: redacted, one place) and apologised for,
    privately, instead of disnake's default traceback on stderr and a member left waiting."""

    async def on_error(self, error: Exception, item: disnake.ui.Item[Any], inter: MessageInteraction) -> None:
        label = getattr(item, "label", None) or getattr(item, "custom_id", None) or type(item).__name__
        if isinstance(error, StorageError):
            await _database_unavailable(inter, f"{type(self).__name__} button {label!r}", error)
            return
        logger.bind(user_id=inter.author.id).opt(exception=error).error(
            "the {} button {!r} failed for user {}", type(self).__name__, label, inter.author.id
        )
        await apologise(inter)


async def ready(reply: Reply) -> Reply:
    """An already-built reply, for :func:`respond_in_time`."""
    return reply


class CommandRateLimited(commands.CheckFailure):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:.1f}s")
        self.retry_after = retry_after


class Errors(commands.Cog):
    """The one handler for command errors that escape a command (logged, and apologised for),
    and the per-member command rate limit. Managers (Manage Server) are exempt from the limit,
    not from anything else: their commands are answered and checked exactly like everyone's."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self._guard: SpamGuard | None = None
        self._limit: SpamLimit | None = None

    def _command_guard(self) -> SpamGuard | None:
        limit = self.settings.current.command_limit  # COMMAND_LIMIT, read live
        if limit != self._limit:
            self._limit = limit
            self._guard = None if limit is None else SpamGuard(limit.burst, limit.refill_rate, clock=time.monotonic)
        return self._guard

    def bot_slash_command_check_once(self, inter: ApplicationCommandInteraction) -> bool:
        guard = self._command_guard()
        if guard is None or inter.permissions.manage_guild:
            return True
        if not guard.allow(inter.author.id):
            raise CommandRateLimited(guard.retry_after(inter.author.id))
        return True

    @commands.Cog.listener()
    async def on_slash_command_error(self, inter: ApplicationCommandInteraction, error: commands.CommandError) -> None:
        if isinstance(error, CommandRateLimited):
            wait = max(1, math.ceil(error.retry_after))
            text = f"Slow down a little: try again in {wait} s."
            with contextlib.suppress(disnake.HTTPException):
                await inter.response.send_message(embed=notice_embed(text), ephemeral=True)
            return
        await report_command_error(inter, error)


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Errors(bot.services.settings))
