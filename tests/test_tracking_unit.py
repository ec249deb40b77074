"""The tracking extension's reconcile logic against stand-in Discord objects: when it may resume
voice counting, and how it treats members disnake has not cached."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import disnake
import pytest

from leaderboard_bot.exts.tracking import Tracking
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.voice import VoicePresence, VoiceTracker
from tests.factories import AllowAllGuard, FakeClock

GUILD, LOUNGE = 1, 10
ALICE, BOB, ROBOT = 101, 102, 103


class NoStorage:
    async def run(self, func: Any, *args: Any, **kwargs: Any) -> None:
        return None


def voice_channel(channel_id: int) -> MagicMock:
    channel = MagicMock(spec=disnake.VoiceChannel)
    channel.id = channel_id
    channel.voice_states = {}
    return channel


def member(user_id: int, *, bot: bool = False) -> SimpleNamespace:
    return SimpleNamespace(id=user_id, bot=bot, display_name=f"user{user_id}", name=f"user{user_id}")


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.lounge = voice_channel(LOUNGE)
        self.members: dict[int, SimpleNamespace] = {}
        self.guild = MagicMock(spec=disnake.Guild)
        self.guild.id = GUILD
        self.guild.unavailable = False
        self.guild.afk_channel = None
        self.guild.voice_channels = [self.lounge]
        self.guild.stage_channels = []
        self.guild.get_member.side_effect = self.members.get
        self.guild.query_members = AsyncMock(return_value=[])
        self.tracker = ActivityService(
            NoStorage(),  # type: ignore[arg-type]
            guild_id=GUILD,
            voice=VoiceTracker(count_deafened=False, count_alone=False),
            guard=AllowAllGuard(),
            clock=self.clock,
        )
        self.bot = SimpleNamespace(
            tracker=self.tracker,
            settings=SimpleNamespace(guild_id=GUILD, flush_interval=3600.0),
            ws=SimpleNamespace(open=True),
            get_guild=lambda guild_id: self.guild if guild_id == GUILD else None,
        )

    def in_voice(self, user_id: int) -> None:
        self.lounge.voice_states[user_id] = SimpleNamespace(channel=self.lounge, deaf=False, self_deaf=False)


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, Tracking]]:
    w = World()
    cog = Tracking(w.bot)  # type: ignore[arg-type]
    try:
        yield w, cog
    finally:
        cog.cog_unload()


async def test_reconcile_starts_counting_the_people_in_voice(world: tuple[World, Tracking]) -> None:
    w, cog = world
    w.members.update({ALICE: member(ALICE), BOB: member(BOB)})
    w.in_voice(ALICE)
    w.in_voice(BOB)
    await cog.reconcile("test")
    assert w.tracker.voice.counting_users() == {ALICE, BOB}
    w.guild.query_members.assert_not_called()  # all known: no lookup


async def test_members_not_cached_are_looked_up_so_a_bot_is_never_company(world: tuple[World, Tracking]) -> None:
    w, cog = world
    w.in_voice(ALICE)
    w.in_voice(ROBOT)

    async def gateway_answers(**kwargs: Any) -> list[Any]:
        assert sorted(kwargs["user_ids"]) == [ALICE, ROBOT] and kwargs["cache"] is True
        w.members.update({ALICE: member(ALICE), ROBOT: member(ROBOT, bot=True)})
        return []

    w.guild.query_members.side_effect = gateway_answers
    await cog.reconcile("test")
    assert w.tracker.voice.presence(ROBOT) == VoicePresence(LOUNGE, is_bot=True)
    assert w.tracker.voice.counting_users() == set()  # alice's only company is a bot


async def test_a_failed_lookup_still_counts_people(world: tuple[World, Tracking]) -> None:
    w, cog = world
    w.in_voice(ALICE)
    w.in_voice(BOB)
    w.guild.query_members.side_effect = TimeoutError()
    await cog.reconcile("test")
    assert w.tracker.voice.counting_users() == {ALICE, BOB}


async def test_contact_lost_during_the_lookup_keeps_counting_suspended(world: tuple[World, Tracking]) -> None:
    w, cog = world
    w.members[BOB] = member(BOB)
    w.in_voice(ALICE)
    w.in_voice(BOB)
    await cog.on_disconnect()

    async def connection_drops(**kwargs: Any) -> list[Any]:
        await cog.on_disconnect()  # the gateway dies while we wait for the answer
        return []

    w.guild.query_members.side_effect = connection_drops
    await cog.reconcile("resumed")
    assert w.tracker.voice.suspended and w.tracker.voice.counting_users() == set()


async def test_no_reconcile_while_disconnected_or_while_the_guild_is_unavailable(
    world: tuple[World, Tracking],
) -> None:
    w, cog = world
    w.members[ALICE] = member(ALICE)
    w.members[BOB] = member(BOB)
    w.in_voice(ALICE)
    w.in_voice(BOB)
    await cog.on_guild_unavailable(w.guild)
    w.guild.unavailable = True
    await cog.reconcile("resumed")  # the cached voice states are from before the outage
    assert w.tracker.voice.suspended
    w.guild.unavailable = False
    w.bot.ws.open = False
    await cog.reconcile("ready")  # e.g. disnake's delayed on_ready after the socket closed
    assert w.tracker.voice.suspended
    w.bot.ws.open = True
    await cog.on_guild_available(w.guild)
    assert not w.tracker.voice.suspended and w.tracker.voice.counting_users() == {ALICE, BOB}
