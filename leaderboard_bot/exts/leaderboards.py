"""Slash commands for members: ``/top messages``, ``/top voice`` and ``/stats [user]``.

Every answer goes through :func:`respond_in_time`, so a slow database turns into a "thinking…"
state instead of Discord's "The application did not respond", and an unexpected error turns into
a short apology instead of silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import disnake
from disnake.ext import commands
from loguru import logger

from ..bot import LeaderboardBot
from ..db import Board
from ..ui.embeds import BoardLine, leaderboard_embed, notice_embed, stats_embed
from ..ui.format import display_name

# Discord drops an interaction that is not acknowledged within 3 s; deferring at 1.5 s leaves
# room for a slow network on the way to Discord.
DEFER_AFTER = 1.5

APOLOGY = "Sorry, something went wrong while building that. Please try again in a moment."
SERVER_ONLY = "This command only works in the server."


@dataclass(frozen=True)
class Reply:
    """What a command wants to say; :func:`respond_in_time` decides how to deliver it."""

    embed: disnake.Embed
    ephemeral: bool = False


async def respond_in_time(
    inter: disnake.Interaction,
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
        if inter.response.is_done():
            # Deferred publicly: the reply can no longer become ephemeral. Every ephemeral reply
            # (bots, DMs) is decided without I/O, so it is always sent on the fast path.
            await inter.edit_original_response(embed=reply.embed)
        else:
            await inter.response.send_message(embed=reply.embed, ephemeral=reply.ephemeral)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # this command itself is being cancelled (shutdown): do not answer
        # Only the work was cancelled, by something else: the member still deserves an answer.
        logger.bind(command=command, user_id=inter.author.id).warning(
            "/{} was cancelled for user {}", command, inter.author.id
        )
        await apologise(inter)
    except Exception:
        logger.bind(command=command, user_id=inter.author.id).exception(
            "/{} failed for user {}", command, inter.author.id
        )
        await apologise(inter)
    finally:
        # Only reached with a pending task when this coroutine itself was cancelled.
        if not task.done():
            task.cancel()


async def report_command_error(inter: disnake.ApplicationCommandInteraction, error: BaseException) -> None:
    """Log a failed command with its context and apologise to the member, privately."""
    command = inter.application_command.qualified_name if inter.application_command else "?"
    logger.bind(command=command, user_id=inter.author.id).opt(exception=error).error(
        "/{} failed for user {}", command, inter.author.id
    )
    await apologise(inter)


async def apologise(inter: disnake.Interaction) -> None:
    """Tell the member something broke, privately. After a public defer the "thinking…" message is
    removed and the apology follows as an ephemeral message (ephemerality is fixed by the defer)."""
    embed = notice_embed(APOLOGY)
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


class Leaderboards(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot

    # ------------------------------------------------------------------ commands

    @commands.slash_command(name="top")
    async def top(self, inter: disnake.ApplicationCommandInteraction) -> None:
        """The season's most active members."""

    @top.sub_command(name="messages")
    async def top_messages(self, inter: disnake.ApplicationCommandInteraction) -> None:
        """Top members by messages this season."""
        await self._answer(inter, "top messages", lambda: self._top_reply(inter, "messages"))

    @top.sub_command(name="voice")
    async def top_voice(self, inter: disnake.ApplicationCommandInteraction) -> None:
        """Top members by voice time this season."""
        await self._answer(inter, "top voice", lambda: self._top_reply(inter, "voice"))

    @commands.slash_command(name="stats")
    async def stats(
        self,
        inter: disnake.ApplicationCommandInteraction,
        # A User option (not Member) so people who left the server can still be looked up.
        user: disnake.User | disnake.Member | None = None,
    ) -> None:
        """Messages, voice time and ranks this season.

        Parameters
        ----------
        user: Whose stats to show (default: yours)
        """
        await self._answer(inter, "stats", lambda: self._stats_reply(inter, user or inter.author))

    async def cog_slash_command_error(
        self, inter: disnake.ApplicationCommandInteraction, error: commands.CommandError
    ) -> bool:
        # Safety net for anything outside respond_in_time (option conversion, checks, bugs).
        await report_command_error(inter, error)
        return True  # handled: skip the bot-wide handler, which would report it again

    # ------------------------------------------------------------------ building replies

    async def _answer(
        self,
        inter: disnake.ApplicationCommandInteraction,
        command: str,
        build: Callable[[], Coroutine[Any, Any, Reply]],
    ) -> None:
        if inter.guild_id != self.bot.settings.guild_id:
            # The commands are registered for the one guild, but a DM or stale registration can still
            # reach us; the data belongs to that guild only.
            server_only = Reply(notice_embed(SERVER_ONLY), ephemeral=True)
            await respond_in_time(inter, _ready(server_only), command=command)
            return
        await respond_in_time(inter, build(), command=command)

    async def _top_reply(self, inter: disnake.ApplicationCommandInteraction, board: Board) -> Reply:
        bot = self.bot
        season = bot.seasons.current  # read once: a season ending meanwhile must not mislabel the lines
        lines = await bot.board_lines(board, season=season.number)
        guild = inter.guild
        return Reply(
            leaderboard_embed(
                board=board,
                lines=lines,
                arrow=bot.settings.arrow_emoji,
                guild_icon_url=guild.icon.url if guild and guild.icon else None,
                season_number=season.number,
                season_ends_at=season.ends_at,
                changed_at=self._changed_at(board),
                caller_line=await self._caller_line(inter.author, board, lines, season.number),
            )
        )

    async def _caller_line(
        self, caller: disnake.User | disnake.Member, board: Board, lines: list[BoardLine], season: int
    ) -> BoardLine | None:
        """The caller's own place when the shown top does not include them (None without activity)."""
        if any(line.user_id == caller.id for line in lines):
            return None
        # One read gives rank and value together, for the same season as the lines shown.
        standing = await self.bot.rankings.standing(caller.id, season)
        rank = standing.message_rank if board == "messages" else standing.voice_rank
        if rank is None:
            return None
        value = standing.messages if board == "messages" else standing.voice_seconds
        return BoardLine(rank=rank, name=caller.display_name, user_id=caller.id, value=value)

    def _changed_at(self, board: Board) -> float | None:
        # The pinned-board scheduler knows when this top last changed; without it, say nothing.
        posts = getattr(self.bot.get_cog("Scheduler"), "posts", None)
        post = posts.get(board) if isinstance(posts, dict) else None
        return getattr(post, "changed_at", None)

    async def _stats_reply(
        self, inter: disnake.ApplicationCommandInteraction, target: disnake.User | disnake.Member
    ) -> Reply:
        if target.bot:
            name = _safe(target.display_name, target.id)
            return Reply(notice_embed(f"Bots aren't tracked, so {name} has no stats."), ephemeral=True)
        bot = self.bot
        if isinstance(target, disnake.Member):
            name = target.display_name  # nick > global name > username
        else:
            # Not a member (any more): the name we kept from their time here beats the account name.
            name = (await bot.names.resolve([target.id]))[target.id]
        season = bot.seasons.current  # read once: a season ending meanwhile must not mislabel the numbers
        standing = await bot.rankings.standing(target.id, season.number)
        if standing.messages <= 0 and standing.voice_seconds <= 0 and standing.live_voice_channel_id is None:
            return Reply(notice_embed(f"{_safe(name, target.id)} hasn't been active this season yet."))
        return Reply(
            stats_embed(
                name=name,
                avatar_url=target.display_avatar.url,
                messages=standing.messages,
                message_rank=standing.message_rank,
                voice_seconds=standing.voice_seconds,
                voice_rank=standing.voice_rank,
                in_voice_channel_id=standing.live_voice_channel_id,
                live_session_seconds=standing.live_session_seconds,
                season_number=season.number,
                season_ends_at=season.ends_at,
            )
        )


async def _ready(reply: Reply) -> Reply:
    return reply


def _safe(name: str, user_id: int) -> str:
    """A name for notice text: markdown and mentions neutralised, in bold."""
    return f"**{display_name(nick=name, global_name=None, username=None, user_id=user_id)}**"


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Leaderboards(bot))
