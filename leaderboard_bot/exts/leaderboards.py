"""Slash commands for members: ``/top messages``, ``/top voice`` and ``/stats [user]``.

Every answer goes through ``exts.errors.respond_in_time``: in time, and an apology on errors.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import disnake
from disnake.ext import commands
from disnake.interactions import ApplicationCommandInteraction

from ..adapters.disnake_names import shown_name
from ..domain import Board, BoardLine
from ..services.voice import VoiceRules, voice_status
from ..ui.embeds import guild_icon_url, leaderboard_embed, notice_embed, seasons_embed, stats_embed
from ..ui.format import display_name
from .errors import Reply, ready, respond_in_time
from .tracking import excluded, role_ids

if TYPE_CHECKING:
    from ..bot import LeaderboardBot

SERVER_ONLY = "This command only works in the server."
SEASONS_SHOWN = 10  # the most recent finished seasons listed by /seasons


class Leaderboards(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot

    # ------------------------------------------------------------------ commands

    @commands.slash_command(name="top")
    async def top(self, inter: ApplicationCommandInteraction) -> None:
        """The season's most active members."""

    @top.sub_command(name="messages")
    async def top_messages(self, inter: ApplicationCommandInteraction) -> None:
        """Top members by messages this season."""
        await self._answer(inter, "top messages", lambda: self._top_reply(inter, "messages"))

    @top.sub_command(name="voice")
    async def top_voice(self, inter: ApplicationCommandInteraction) -> None:
        """Top members by voice time this season."""
        await self._answer(inter, "top voice", lambda: self._top_reply(inter, "voice"))

    @commands.slash_command(name="stats")
    async def stats(
        self,
        inter: ApplicationCommandInteraction,
        # A User option (not Member) so people who left the server can still be looked up.
        user: disnake.User | disnake.Member | None = None,
    ) -> None:
        """Messages, voice time and ranks this season.

        Parameters
        ----------
        user: Whose stats to show (default: yours)
        """
        await self._answer(inter, "stats", lambda: self._stats_reply(inter, user or inter.author))

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

    async def _top_reply(self, inter: ApplicationCommandInteraction, board: Board) -> Reply:
        bot = self.bot
        season = bot.services.seasons.current  # read once: a season ending meanwhile must not mislabel the lines
        author = inter.author
        lines, caller, rank, stale = await bot.services.boards.lines_for_reply(
            board, season=season.number, caller=author.id
        )
        caller_line = None
        if caller is not None and rank is not None:
            caller_line = BoardLine(rank=rank, name=shown_name(author), user_id=author.id, value=caller.value)
        return Reply(
            leaderboard_embed(
                board=board,
                lines=lines,
                arrow=bot.services.settings.current.arrow_emoji,
                guild_icon_url=guild_icon_url(inter.guild),
                season_number=season.number,
                season_ends_at=season.ends_at,
                changed_at=bot.services.boards.changed_at(board),
                caller_line=caller_line,
                stale=stale,
            )
        )

    async def _stats_reply(self, inter: ApplicationCommandInteraction, target: disnake.User | disnake.Member) -> Reply:
        if target.bot:
            name = _safe(shown_name(target), target.id)
            return Reply(notice_embed(f"Bots aren't tracked, so {name} has no stats."), ephemeral=True)
        bot = self.bot
        if isinstance(target, disnake.Member):
            name = shown_name(target)  # nick > global name > username, skipping invisible ones
        else:
            # Not a member (any more): the name we kept from their time here beats the account name.
            name = (await bot.services.names.resolve([target.id]))[target.id]
        season = bot.services.seasons.current  # read once: a season ending meanwhile must not mislabel the numbers
        standing = await bot.services.rankings.standing_for_reply(target.id, season.number)
        in_channel = self._voice_channel(target)
        if standing.messages <= 0 and standing.voice_seconds <= 0 and in_channel is None:
            return Reply(notice_embed(f"{_safe(name, target.id)} hasn't been active this season yet."))
        return Reply(
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
            )
        )

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


def _safe(name: str, user_id: int) -> str:
    """A name for notice text: markdown and mentions neutralised, in bold."""
    return f"**{display_name(nick=name, global_name=None, username=None, user_id=user_id)}**"


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Leaderboards(bot))
