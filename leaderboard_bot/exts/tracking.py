"""Counting: message and voice listeners, reconciliation after reconnects, and the flush loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import disnake
from disnake.ext import commands, tasks
from loguru import logger

from ..background import Background
from ..config import Tunables
from ..services.privacy import STOPPED
from ..services.voice import VoicePresence

if TYPE_CHECKING:
    from ..bot import LeaderboardBot

MEMBER_QUERY_BATCH = 100  # Discord's cap on user_ids per request
MEMBER_QUERY_TIMEOUT = 10.0
COUNTED_MESSAGE_TYPES = frozenset((disnake.MessageType.default, disnake.MessageType.reply))
# A snowflake's time in Unix milliseconds is (id >> 22) + DISCORD_EPOCH: no datetime per message.
DISCORD_EPOCH_MS = disnake.utils.DISCORD_EPOCH
TRACKED_CHANNEL_TYPES = (disnake.VoiceChannel, disnake.StageChannel)
# The first write of a day moves the today/week/month windows: done just after midnight, not up
# to FLUSH_INTERVAL later (until then the stored "today" still holds yesterday).
DAY_TURN_DELAY = 1.0
DAY_TURN_RECHECK = 3600.0  # longest sleep: a wall-clock step or a new TIMEZONE is seen within it


def excluded(channel: object, roles: Iterable[int], tunables: Tunables) -> bool:
    """Whether EXCLUDED_CHANNELS (the channel, its parent or its category) or EXCLUDED_ROLES apply."""
    channels = tunables.excluded_channels
    if channels and (
        getattr(channel, "id", None) in channels
        or getattr(channel, "parent_id", None) in channels
        or getattr(channel, "category_id", None) in channels
    ):
        return True
    return bool(tunables.excluded_roles and tunables.excluded_roles.intersection(roles))


def role_ids(member: object) -> list[int]:
    roles = getattr(member, "roles", None) or []
    return [role.id for role in roles]


def voice_presence(
    guild: disnake.Guild,
    state: disnake.VoiceState,
    *,
    is_bot: bool,
    roles: Iterable[int] = (),
    tunables: Tunables | None = None,
) -> VoicePresence | None:
    """Where a voice state counts, or None when it is out of a tracked channel (or excluded).
    Stage audience time counts like speaking time: listening to a stage is taking part."""
    channel = state.channel
    if channel is None or not isinstance(channel, TRACKED_CHANNEL_TYPES):
        return None
    if tunables is not None and excluded(channel, roles, tunables):
        return None
    # VoiceState.afk comes from `suppress`, not from the AFK channel: compare channels instead.
    if guild.afk_channel is not None and channel.id == guild.afk_channel.id:
        return None
    return VoicePresence(channel.id, deafened=bool(state.deaf or state.self_deaf), is_bot=is_bot)


class Tracking(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot
        self.tracker = bot.services.activity
        self.names = bot.services.names
        self.membership = bot.services.membership
        self.health = bot.services.health
        self.settings = bot.services.settings
        self.privacy = bot.services.privacy
        self._stopped = bot.services.privacy.stopped_live  # /privacy stop: never counted (a live set)
        self.guild_id = bot.config.guild_id
        self._watching_sessions = False  # on_socket_event_type is a listener only while disconnected
        self._contact_epoch = 0
        self._unsubscribe: Callable[[], None] | None = None
        self._unsubscribe_privacy: Callable[[], None] | None = None
        self._tasks = Background("tracking")  # cancelled when the extension unloads
        self._writes = Background("tracking")  # never cancelled: a stop waits for a write under way
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def cog_load(self) -> None:
        self._unsubscribe = self.bot.services.settings.subscribe(self._on_settings)
        self._unsubscribe_privacy = self.privacy.subscribe(self._on_privacy)
        self.flush_loop.change_interval(seconds=self.bot.services.settings.current.flush_interval)
        self.flush_loop.start()
        self.tracker.on_many_pending = self._flush_early
        self.prune_loop.start()
        self._tasks.start(self._day_turns(), "the write after each midnight")
        if self.bot.is_ready():
            # Loaded by a takeover on a live connection: on_ready has come and gone, so read who is
            # in voice now (the gap since the old instance stopped is not credited).
            self._tasks.start(self.reconcile("takeover"), "a voice reconcile")

    def cog_unload(self) -> None:
        self.tracker.on_many_pending = None
        self._tasks.cancel_all()
        self.flush_loop.cancel()
        self.prune_loop.cancel()
        self._watch_sessions(False)
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._unsubscribe_privacy is not None:
            self._unsubscribe_privacy()

    def _on_settings(self, old: Tunables, new: Tunables) -> None:
        if new.flush_interval != old.flush_interval:
            self.flush_loop.change_interval(seconds=new.flush_interval)
        if (new.excluded_channels, new.excluded_roles) != (old.excluded_channels, old.excluded_roles):
            # Who counts in voice may change right now (a member in a newly excluded channel stops).
            self._tasks.start(self.reconcile("exclusions changed"), "a voice reconcile")

    def _on_privacy(self, user_id: int, before: frozenset[str], after: frozenset[str]) -> None:
        if STOPPED in after and STOPPED not in before:
            # Like a member in an excluded channel: out of voice for the tracker, counted up to now.
            self.tracker.record_voice(user_id, None)
        elif STOPPED in before and STOPPED not in after:
            # Counting again: if they are in voice right now, their time counts from now.
            self._tasks.start(self.reconcile("a member counts again"), "a voice reconcile")

    @tasks.loop(seconds=5)
    async def flush_loop(self) -> None:
        # flush() keeps data on failure; this guard keeps the schedule alive on anything else.
        try:
            await self.bot.services.seasons.flush()
        except Exception:
            logger.exception("flush failed unexpectedly; will retry on the next interval")
        # Buckets of members who went quiet are full again: forget them even if nobody writes.
        self.tracker.guard.forget_full()

    async def _day_turns(self) -> None:
        """Write once just after each midnight of the tracker's calendar (see DAY_TURN_DELAY)."""
        calendar = self.tracker.calendar
        while True:
            now = self.tracker.clock()
            await self._sleep(min(calendar.span(now)[1] - now, DAY_TURN_RECHECK) + DAY_TURN_DELAY)
            if calendar.day_of(self.tracker.clock()) != calendar.day_of(now):  # not the recheck's wake-up
                self._flush_early()  # not awaited here: unloading cancels this loop, never a write

    def _flush_early(self) -> None:
        """A burst filled the buffers (services.activity EARLY_FLUSH_ROWS): write them now, in turn
        with the scheduled flushes (the flush lock), rather than at the next interval."""
        self._writes.start(self._flush_burst(), "an early write")

    async def _flush_burst(self) -> None:
        try:
            await self.bot.services.seasons.flush()
        except Exception:
            logger.exception("an early flush failed unexpectedly; the next interval retries")

    @tasks.loop(hours=1)
    async def prune_loop(self) -> None:
        try:
            retention = self.bot.services.settings.current.voice_session_retention
            if pruned := await self.tracker.prune_history(retention):
                logger.info("removed {} voice session record(s) older than the retention period", pruned)
        except Exception as error:
            logger.warning("could not prune old voice sessions ({}); will retry in an hour", error)

    # ------------------------------------------------------------------ messages

    @commands.Cog.listener()
    async def on_message(self, message: disnake.Message) -> None:
        # The only per-message listener: disnake runs each listener as its own task, which costs
        # more than counting, so /health's event rate is counted here rather than in its own one.
        self.health.event()
        guild = message.guild
        if guild is None or guild.id != self.guild_id:
            return
        author = message.author
        if author.bot or message.webhook_id is not None or message.type not in COUNTED_MESSAGE_TYPES:
            return
        tunables = self.settings.current
        if (tunables.excluded_channels or tunables.excluded_roles) and excluded(
            message.channel, role_ids(author) if tunables.excluded_roles else (), tunables
        ):
            return
        if author.id in self._stopped:
            return  # /privacy stop
        # The snowflake's time, not ours: a burst handled late is judged as it was sent.
        sent_at = ((message.id >> 22) + DISCORD_EPOCH_MS) / 1000.0
        if self.tracker.record_message(author.id, sent_at):
            self.names.seen(author.id, getattr(author, "nick", None), author.global_name, author.name)
            self.membership.note_present(author.id)  # HIDE_DEPARTED: proof they are here

    # ------------------------------------------------------------------ voice

    @commands.Cog.listener()
    async def on_voice_state_update(
        self, member: disnake.Member, before: disnake.VoiceState, after: disnake.VoiceState
    ) -> None:
        self.health.event()
        if member.guild.id != self.guild_id:
            return
        if not member.bot:
            self.names.seen(member.id, member.nick, member.global_name, member.name)
            if after.channel is not None:
                self.membership.note_present(member.id)  # HIDE_DEPARTED: in voice, so here
        presence = voice_presence(
            member.guild,
            after,
            is_bot=member.bot,
            roles=role_ids(member),
            tunables=self.bot.services.settings.current,
        )
        if member.id in self._stopped:
            presence = None  # /privacy stop: treated like an excluded member
        self.tracker.record_voice(member.id, presence)

    async def on_socket_event_type(self, event: str) -> None:
        # READY means a new gateway session: nothing of the gap will be replayed. Stop counting
        # at the drop now, before this session's own events are handled (not at the later reconcile).
        if event == "READY" and self.tracker.voice.held_since is not None:
            self.tracker.suspend_voice()
        if event in ("READY", "RESUMED"):
            self._watch_sessions(False)

    def _watch_sessions(self, on: bool) -> None:
        """Listen to every gateway event's type only between a drop and the next READY or RESUMED:
        while connected it would cost a task per message for nothing."""
        if on == self._watching_sessions:
            return
        self._watching_sessions = on
        if on:
            self.bot.add_listener(self.on_socket_event_type, "on_socket_event_type")
        else:
            self.bot.remove_listener(self.on_socket_event_type, "on_socket_event_type")

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        # After a drop this is a new gateway session: the gap is not replayed, so it is not
        # credited (VoiceTracker.reconcile closes held sessions when the connection dropped).
        await self.reconcile("ready")

    @commands.Cog.listener()
    async def on_resumed(self) -> None:
        # Discord replayed the missed events (replayed leaves closed their sessions): the gap counts.
        self._watch_sessions(False)
        self.tracker.resume_voice()
        await self.reconcile("resumed")

    @commands.Cog.listener()
    async def on_guild_available(self, guild: disnake.Guild) -> None:
        if guild.id == self.guild_id:
            await self.reconcile("guild available")

    @commands.Cog.listener()
    async def on_guild_update(self, before: disnake.Guild, after: disnake.Guild) -> None:
        if after.id == self.guild_id and before.afk_channel != after.afk_channel:
            await self.reconcile("AFK channel changed")

    @commands.Cog.listener()
    async def on_disconnect(self) -> None:
        # Nobody knows yet whether the session resumes (gap replayed) or not (events lost).
        self._contact_epoch += 1  # any reconcile already under way is now out of date
        self.tracker.hold_voice()
        self._watch_sessions(True)

    @commands.Cog.listener()
    async def on_guild_unavailable(self, guild: disnake.Guild) -> None:
        if guild.id == self.guild_id:
            # Discord's outage: no events for this guild until it is back, none replayed.
            self._contact_epoch += 1
            self.tracker.suspend_voice()

    async def reconcile(self, reason: str) -> None:
        """Align voice tracking with the guild's real voice states: events may have been missed."""
        epoch = self._contact_epoch
        if not self._in_contact(reason):
            return
        guild = self.bot.get_guild(self.guild_id)
        if guild is None:
            logger.warning("guild {} is not visible to the bot; is it invited there?", self.guild_id)
            return
        if guild.unavailable:
            # Discord's outage: the cached voice states are stale; on_guild_available reconciles.
            logger.info("voice reconcile ({}) skipped: the guild is unavailable", reason)
            return
        await self._learn_unknown_members(guild)
        if epoch != self._contact_epoch or not self._in_contact(reason):
            return  # contact was lost while looking members up: the next connection reconciles
        actual: dict[int, VoicePresence] = {}
        for channel in (*guild.voice_channels, *guild.stage_channels):
            # channel.voice_states works without the member cache.
            for user_id, state in channel.voice_states.items():
                member = guild.get_member(user_id)
                known = self.tracker.voice.presence(user_id)
                is_bot = member.bot if member is not None else bool(known and known.is_bot)
                presence = voice_presence(
                    guild, state, is_bot=is_bot, roles=role_ids(member), tunables=self.bot.services.settings.current
                )
                if presence is None or user_id in self._stopped:
                    continue
                actual[user_id] = presence
                if member is not None and not member.bot:
                    self.names.seen(member.id, member.nick, member.global_name, member.name)
        before = self.tracker.voice.counting_users()
        self.tracker.reconcile_voice(actual)
        logger.info(
            "voice reconciled ({}): {} in tracked channels, {} counting (was {})",
            reason,
            len(actual),
            len(self.tracker.voice.counting_users()),
            len(before),
        )

    def _in_contact(self, reason: str) -> bool:
        ws = self.bot.ws
        if ws is None or not ws.open:
            # e.g. disnake's delayed on_ready landing after the connection already dropped again:
            # voice states are not trustworthy until the next connection reconciles.
            logger.info("voice reconcile ({}) skipped: not connected to Discord", reason)
            return False
        return True

    async def _learn_unknown_members(self, guild: disnake.Guild) -> None:
        """Without the members intent disnake does not cache who was already in voice, so a bot
        there would pass for a human. Ask the gateway about them (allowed without the intent)."""
        unknown = [
            user_id
            for channel in (*guild.voice_channels, *guild.stage_channels)
            for user_id in channel.voice_states
            if guild.get_member(user_id) is None and self.tracker.voice.presence(user_id) is None
        ]
        for start in range(0, len(unknown), MEMBER_QUERY_BATCH):
            batch = unknown[start : start + MEMBER_QUERY_BATCH]
            try:
                await asyncio.wait_for(
                    guild.query_members(user_ids=batch, limit=len(batch), cache=True), MEMBER_QUERY_TIMEOUT
                )
            except (TimeoutError, disnake.HTTPException, disnake.ClientException) as error:
                logger.warning(
                    "could not look up {} member(s) in voice ({}); counting them as people", len(batch), error
                )


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Tracking(bot))
