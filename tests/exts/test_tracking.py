"""The tracking extension's reconcile logic against stand-in Discord objects: when it may resume
voice counting, and how it treats members disnake has not cached."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock

import disnake
import pytest

from leaderboard_bot.domain import best_name
from leaderboard_bot.exts.health import Health
from leaderboard_bot.exts.tracking import DISCORD_EPOCH_MS, Tracking
from leaderboard_bot.services import names as names_module
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.health import HealthMonitor
from leaderboard_bot.services.membership import MembershipService
from leaderboard_bot.services.names import NameService
from leaderboard_bot.services.privacy import STOPPED, PrivacyService
from leaderboard_bot.services.voice import VoicePresence
from tests.factories import AllowAllGuard, FakeClock, runtime_settings, voice_tracker
from tests.helpers import mock_guild, mock_member, mock_voice_channel, mock_voice_state

GUILD, LOUNGE = 1, 10
ALICE, BOB, ROBOT = 101, 102, 103


class NoStorage:
    async def run(self, func: Any, *args: Any, **kwargs: Any) -> None:
        return None


def member(user_id: int, *, bot: bool = False) -> Any:
    return mock_member(user_id, bot=bot)


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.lounge = mock_voice_channel(LOUNGE)
        self.members: dict[int, Any] = {}
        self.guild = mock_guild(GUILD, voice_channels=[self.lounge], stage_channels=[])
        self.guild.get_member.side_effect = self.members.get
        self.guild.query_members = AsyncMock(return_value=[])
        self.names = NameService(NoStorage(), guild_id=GUILD)  # type: ignore[arg-type]
        self.tracker = ActivityService(
            NoStorage(),  # type: ignore[arg-type]
            guild_id=GUILD,
            voice=voice_tracker(count_deafened=False, count_alone=False),
            guard=AllowAllGuard(),
            names=self.names,
            clock=self.clock,
        )
        self.health = HealthMonitor(clock=self.clock)
        self.membership = MembershipService(None, enabled=lambda: True, clock=self.clock)
        self.privacy = PrivacyService(NoStorage(), guild_id=GUILD, activity=self.tracker, names=self.names)  # type: ignore[arg-type]
        self.listeners: dict[str, list[Any]] = {}  # added at run time (the cog's own are not here)
        self.bot = SimpleNamespace(
            services=SimpleNamespace(
                activity=self.tracker,
                names=self.names,
                settings=runtime_settings(),
                health=self.health,
                membership=self.membership,
                privacy=self.privacy,
            ),
            config=SimpleNamespace(guild_id=GUILD),
            ws=SimpleNamespace(open=True),
            get_guild=lambda guild_id: self.guild if guild_id == GUILD else None,
            is_ready=lambda: self.ready,
            add_listener=lambda func, name: self.listeners.setdefault(name, []).append(func),
            remove_listener=lambda func, name: self.listeners.get(name, []).remove(func)
            if func in self.listeners.get(name, [])
            else None,
        )
        self.ready = False  # True: the extension is loaded by a takeover on a live connection

    def hourly_flushes(self) -> AsyncMock:
        """The season service's flush, recorded, with the interval loop's runs an hour apart."""
        flush = AsyncMock(return_value=True)
        self.bot.services.seasons = SimpleNamespace(flush=flush)
        self.bot.services.settings.update(flush_interval=3600.0)
        return flush

    def in_voice(self, user_id: int) -> None:
        self.lounge.voice_states[user_id] = mock_voice_state(self.lounge)


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
    # The reconcile was abandoned: nothing is credited past the first drop until contact is back.
    assert w.tracker.voice.held_since is not None


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


async def test_cog_load_starts_the_flush_loop_at_the_live_interval_and_follows_changes(
    world: tuple[World, Tracking],
) -> None:
    w, cog = world
    settings = w.bot.services.settings
    settings.update(flush_interval=3600.0)
    await cog.cog_load()
    try:
        assert cog.flush_loop.is_running()
        assert cog.flush_loop.seconds == 3600.0
        settings.update(flush_interval=1800.0)
        assert cog.flush_loop.seconds == 1800.0
    finally:
        cog.cog_unload()
    settings.update(flush_interval=900.0)  # unsubscribed: the unloaded cog is not touched
    assert cog.flush_loop.seconds == 1800.0


async def test_names_seen_in_messages_and_voice_go_to_the_name_service(world: tuple[World, Tracking]) -> None:
    w, cog = world
    alice = mock_member(ALICE, display_name="Ali", name="alice")
    alice.guild = w.guild
    w.in_voice(ALICE)
    await cog.on_voice_state_update(alice, mock_voice_state(None), w.lounge.voice_states[ALICE])
    assert w.names.known_name(ALICE) == "Ali"
    assert w.tracker.voice.presence(ALICE) == VoicePresence(LOUNGE)


def test_exclusions_cover_the_channel_its_parent_and_category_and_roles() -> None:
    from types import SimpleNamespace

    from leaderboard_bot.exts.tracking import excluded
    from tests.factories import tunables

    rules = tunables(excluded_channels=frozenset({10, 20}), excluded_roles=frozenset({5}))
    assert excluded(SimpleNamespace(id=10), [], rules)
    assert excluded(SimpleNamespace(id=99, parent_id=20), [], rules)  # a thread of an excluded channel
    assert excluded(SimpleNamespace(id=99, category_id=20), [], rules)  # a channel in an excluded category
    assert excluded(SimpleNamespace(id=99), [1, 5], rules)  # a muted role
    assert not excluded(SimpleNamespace(id=99), [1], rules)
    assert not excluded(SimpleNamespace(id=10), [5], tunables())


async def test_a_new_gateway_session_stops_counting_at_the_drop_before_its_events_arrive(
    world: tuple[World, Tracking],
) -> None:
    """READY (not a RESUME) means the gap is never replayed: sessions end at the drop at once, so
    an event handled before the reconcile cannot credit the gap to the one member it touches."""
    w, cog = world
    w.in_voice(ALICE)
    w.in_voice(BOB)
    await cog.reconcile("test")
    start = w.clock.now
    w.clock.advance(10.0)
    await cog.on_disconnect()
    w.clock.advance(80.0)
    await cog.on_socket_event_type("READY")
    assert w.tracker.voice.counting_users() == set()
    w.clock.advance(5.0)
    w.tracker.record_voice(ALICE, None)  # alice's leave, handled before the reconcile
    drained = w.tracker.voice.checkpoint(w.clock.now)
    credited = {u: s for (_, u), s in drained.seconds.items()}
    assert credited == {ALICE: 10.0, BOB: 10.0}  # both up to the drop, nobody the gap
    assert all(c.ended_at == start + 10.0 for c in drained.closed.values())


async def test_a_resume_keeps_counting_through_the_gap(world: tuple[World, Tracking]) -> None:
    w, cog = world
    w.in_voice(ALICE)
    w.in_voice(BOB)
    await cog.reconcile("test")
    w.clock.advance(10.0)
    await cog.on_disconnect()
    w.clock.advance(20.0)
    await cog.on_socket_event_type("RESUMED")  # not READY: nothing changes yet
    w.tracker.resume_voice()
    assert sum(w.tracker.voice.checkpoint(w.clock.now).seconds.values()) == 60.0  # 30 s each, gap included


async def test_an_extension_loaded_by_a_takeover_on_a_live_connection_reads_who_is_in_voice(
    world: tuple[World, Tracking],
) -> None:
    w, cog = world
    w.in_voice(1)
    w.in_voice(2)
    w.ready = True  # on_ready came and went before this instance started counting
    await cog.cog_load()
    for _ in range(50):
        if w.tracker.voice.counting_users():
            break
        await asyncio.sleep(0.01)
    assert w.tracker.voice.counting_users() == {1, 2}


def message(author_id: int, at: float, *, nick: str | None = None, name: str = "alice", bot: bool = False) -> Any:
    """A guild message as disnake hands it over: its id carries the time it was sent."""
    snowflake = (int(at * 1000) - DISCORD_EPOCH_MS) << 22
    author = SimpleNamespace(id=author_id, bot=bot, nick=nick, global_name=None, name=name, roles=[])
    return SimpleNamespace(
        id=snowflake,
        guild=SimpleNamespace(id=GUILD),
        author=author,
        webhook_id=None,
        type=disnake.MessageType.default,
        channel=SimpleNamespace(id=5, parent_id=None, category_id=None),
    )


async def test_a_name_is_worked_out_and_written_once_per_change(
    world: tuple[World, Tracking], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per message only a fingerprint of the raw names is compared; the shown name is worked out
    (and handed to a flush) only when a member's names changed."""
    w, cog = world
    worked_out: list[tuple[str | None, ...]] = []

    def counting_best_name(*candidates: str | None) -> str | None:
        worked_out.append(candidates)
        return best_name(*candidates)

    monkeypatch.setattr(names_module, "best_name", counting_best_name)
    for _ in range(100):
        await cog.on_message(message(ALICE, w.clock.now))
    assert len(worked_out) == 1 and w.names.take_unwritten() == {ALICE: ("alice", "alice")}
    for _ in range(100):
        await cog.on_message(message(ALICE, w.clock.now, nick="Ali"))
    assert len(worked_out) == 2 and w.names.take_unwritten() == {ALICE: ("Ali", "alice")}
    await cog.on_message(message(ALICE, w.clock.now))  # back to the old name: a change again
    assert len(worked_out) == 3 and w.names.take_unwritten() == {ALICE: ("alice", "alice")}
    assert w.tracker.messages_counted == 201


async def test_messages_are_counted_at_their_snowflake_time_and_the_event_rate_sees_them(
    world: tuple[World, Tracking],
) -> None:
    w, cog = world
    w.clock.now = 86_400.0 + 20.0  # just after a UTC midnight
    for _ in range(3):
        await cog.on_message(message(ALICE, w.clock.now - 30.0))  # sent before it, handled after
    await cog.on_message(message(ROBOT, w.clock.now, bot=True))  # not counted, still an event
    assert dict(w.tracker._messages) == {("1970-01-01", ALICE): 3}
    assert w.health.events_per_second() * 60 == 4


def test_one_listener_per_message_and_none_per_gateway_event_while_connected() -> None:
    """disnake runs every listener as a task of its own: more listeners per message cost more than
    counting the message does."""
    static = [name for cog in (Tracking, Health) for name, _ in cog.__cog_listeners__]
    assert static.count("on_message") == 1
    assert "on_socket_event_type" not in static


async def test_gateway_event_types_are_watched_only_between_a_drop_and_the_next_session(
    world: tuple[World, Tracking],
) -> None:
    w, cog = world
    assert not w.listeners.get("on_socket_event_type")
    await cog.on_disconnect()
    await cog.on_disconnect()  # a failed reconnect attempt drops again: still one listener
    assert w.listeners["on_socket_event_type"] == [cog.on_socket_event_type]
    await cog.on_socket_event_type("READY")
    assert w.listeners["on_socket_event_type"] == []
    await cog.on_disconnect()
    await cog.on_resumed()
    assert w.listeners["on_socket_event_type"] == []


async def test_a_counted_message_or_a_voice_join_proves_the_member_is_here(world: tuple[World, Tracking]) -> None:
    """HIDE_DEPARTED: what the bot sees members do overrides a remembered "left the server"."""
    w, cog = world
    w.membership._answers[ALICE] = False
    w.membership._answers[ROBOT] = False
    await cog.on_message(message(ALICE, w.clock.now))
    await cog.on_message(message(ROBOT, w.clock.now, bot=True))  # not counted: proves nothing
    assert not w.membership.known_departed(ALICE) and w.membership.known_departed(ROBOT)
    bob = mock_member(2, name="bob")
    bob.guild = w.guild
    w.membership._answers[2] = False
    w.in_voice(2)
    await cog.on_voice_state_update(bob, mock_voice_state(None), w.lounge.voice_states[2])
    assert not w.membership.known_departed(2)


# ---------------------------------------------------------------------- /privacy stop (issue 12)


async def test_a_stopped_member_is_not_counted_and_no_name_is_kept(world: tuple[World, Tracking]) -> None:
    w, cog = world
    await w.privacy.set_flag(ALICE, STOPPED, True)
    await cog.on_message(message(ALICE, w.clock.now))
    await cog.on_message(message(BOB, w.clock.now))
    assert w.tracker.pending_messages(ALICE) == 0 and w.tracker.pending_messages(BOB) == 1
    assert w.names.known_name(ALICE) is None and ALICE not in w.names.unwritten()
    await w.privacy.set_flag(ALICE, STOPPED, False)
    await cog.on_message(message(ALICE, w.clock.now))
    assert w.tracker.pending_messages(ALICE) == 1 and w.names.known_name(ALICE) == "alice"


async def test_a_stopped_member_in_voice_stops_counting_at_once_and_counts_again_after_start(
    world: tuple[World, Tracking],
) -> None:
    w, cog = world
    cog._unsubscribe_privacy = w.privacy.subscribe(cog._on_privacy)  # what cog_load does
    w.members.update({ALICE: member(ALICE), BOB: member(BOB), 104: member(104)})
    for user in (ALICE, BOB, 104):
        w.in_voice(user)
    await cog.reconcile("test")
    assert w.tracker.voice.counting_users() == {ALICE, BOB, 104}
    w.clock.advance(60)
    await w.privacy.set_flag(ALICE, STOPPED, True)  # like an excluded member: out of voice now
    assert w.tracker.voice.counting_users() == {BOB, 104}
    credited = w.tracker.unflushed_voice_seconds(ALICE)
    w.clock.advance(60)
    assert w.tracker.unflushed_voice_seconds(ALICE) == credited == 60.0  # up to the stop, nothing after
    alice = mock_member(ALICE)
    alice.guild = w.guild
    await cog.on_voice_state_update(alice, w.lounge.voice_states[ALICE], w.lounge.voice_states[ALICE])  # a mute
    await cog.reconcile("test")
    assert ALICE not in w.tracker.voice.counting_users()
    await w.privacy.set_flag(ALICE, STOPPED, False)
    await asyncio.gather(*list(cog._tasks))  # the reconcile the start asked for
    assert w.tracker.voice.counting_users() == {ALICE, BOB, 104}


async def test_a_burst_of_new_members_is_flushed_without_waiting_for_the_interval(
    world: tuple[World, Tracking],
) -> None:
    w, cog = world
    flush = w.hourly_flushes()
    w.tracker.early_flush_rows = 10
    await cog.cog_load()
    try:
        await asyncio.sleep(0.05)  # the loop's first run
        scheduled = flush.await_count
        for user in range(1, 10):
            await cog.on_message(message(user, w.clock.now))
        await asyncio.sleep(0.05)
        assert flush.await_count == scheduled  # nine rows: below the threshold
        await cog.on_message(message(10, w.clock.now))
        await asyncio.sleep(0.05)
        assert flush.await_count == scheduled + 1
    finally:
        cog.cog_unload()
    assert w.tracker.on_many_pending is None  # an unloaded extension is not called


async def test_the_first_write_of_a_day_happens_just_after_midnight_not_an_interval_later(
    world: tuple[World, Tracking],
) -> None:
    w, cog = world
    flush = w.hourly_flushes()
    midnight = 20 * 86_400.0
    w.clock.set(midnight - 5_000.0)  # 83 minutes before a UTC midnight
    slept: list[float] = []
    woken = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        w.clock.advance(seconds)
        if len(slept) == 3:
            woken.set()
            await asyncio.Event().wait()  # until the extension unloads

    cog._sleep = sleep
    await cog.cog_load()
    try:
        await asyncio.wait_for(woken.wait(), 1)
        await asyncio.sleep(0.05)
        # An hour (the same day: no write), the rest of the way to midnight plus a second (a
        # write), then an hour towards the next midnight.
        assert slept == [3_601.0, 1_400.0, 3_601.0]
        assert flush.await_count == 2  # the interval loop's first run, and the one after midnight
    finally:
        cog.cog_unload()
