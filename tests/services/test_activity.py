"""ActivityService against a real Storage on a temporary SQLite file, with a fake clock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.db.models import DailyActivity, MemberStats, Setting, VoiceSession
from leaderboard_bot.domain import ALL_TIME, WEEK, ActivityBatch
from leaderboard_bot.domain import TODAY as TODAY_WINDOW
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.days import Calendar
from leaderboard_bot.services.names import NameService
from leaderboard_bot.services.ratelimit import SpamGuard
from leaderboard_bot.services.recovery import RecoveryFile
from leaderboard_bot.services.voice import VoiceRules, VoiceTracker
from tests.factories import (
    MIDNIGHT,
    AllowAllGuard,
    DenyListGuard,
    FakeClock,
    day,
    fail_batches,
    here,
    open_storage,
    voice_tracker,
)

G = 4242
CH = 77
T0 = MIDNIGHT + 3_600.0  # 01:00 UTC, well away from a day boundary
TODAY = day(T0)


# --------------------------------------------------------------------------- fixtures & helpers


def make_service(
    storage: Storage,
    clock: FakeClock,
    *,
    guard: Any = None,
    count_alone: bool = True,
    count_deafened: bool = False,
    recovery: Path | None = None,
    monotonic: FakeClock | None = None,
) -> ActivityService:
    return ActivityService(
        storage,
        guild_id=G,
        voice=voice_tracker(count_deafened=count_deafened, count_alone=count_alone),
        guard=guard if guard is not None else AllowAllGuard(),
        names=NameService(storage, guild_id=G),
        clock=clock,
        monotonic=monotonic,
        recovery=RecoveryFile(recovery) if recovery is not None else None,
    )


def season_one() -> int:
    """What the season owner answers in these tests (SeasonService owns it in the bot)."""
    return 1


@pytest.fixture
def activity_service(activity_storage: Storage, activity_clock: FakeClock) -> ActivityService:
    return make_service(activity_storage, activity_clock)


def _stats() -> dict[int, tuple[int, float]]:
    query = MemberStats.select().where((MemberStats.guild_id == G) & (MemberStats.season > 0))
    return {r.user_id: (r.messages, r.voice_seconds) for r in query}


def _stats_by_season() -> dict[tuple[int, int], tuple[int, float]]:
    query = MemberStats.select().where((MemberStats.guild_id == G) & (MemberStats.season > 0))
    return {(r.season, r.user_id): (r.messages, r.voice_seconds) for r in query}


def _daily() -> dict[tuple[str, int], tuple[int, float]]:
    query = DailyActivity.select().where(DailyActivity.guild_id == G)
    return {(r.day, r.user_id): (r.messages, r.voice_seconds) for r in query}


def _sessions() -> list[tuple[int, int, float, float, float | None]]:
    query = (
        VoiceSession.select().where(VoiceSession.guild_id == G).order_by(VoiceSession.started_at, VoiceSession.user_id)
    )
    return [(s.user_id, s.channel_id, s.started_at, s.last_seen_at, s.ended_at) for s in query]


async def stats(storage: Storage) -> dict[int, tuple[int, float]]:
    return await storage.run(_stats)


async def daily(storage: Storage) -> dict[tuple[str, int], tuple[int, float]]:
    return await storage.run(_daily)


async def sessions(storage: Storage) -> list[tuple[int, int, float, float, float | None]]:
    return await storage.run(_sessions)


# --------------------------------------------------------------------------- messages


async def test_messages_are_written_exactly_on_flush(
    activity_service: ActivityService, activity_storage: Storage, activity_clock: FakeClock
) -> None:
    for _ in range(3):
        assert activity_service.record_message(1) is True
    activity_service.record_message(2)
    activity_service.record_message(2, sent_at=MIDNIGHT - 10.0)  # sent yesterday, handled today
    assert activity_service.messages_counted == 5

    assert await activity_service.flush(season_one) is True
    assert activity_service.last_flush_at == activity_clock.now
    assert await stats(activity_storage) == {1: (3, 0.0), 2: (2, 0.0)}
    assert await daily(activity_storage) == {
        (TODAY, 1): (3, 0.0),
        (TODAY, 2): (1, 0.0),
        (day(MIDNIGHT - 10.0), 2): (1, 0.0),
    }
    assert activity_service.pending_messages(1) == 0

    # A second flush adds only what is new.
    activity_service.record_message(1)
    assert await activity_service.flush(season_one) is True
    assert await activity_service.flush(season_one) is True
    assert await stats(activity_storage) == {1: (4, 0.0), 2: (2, 0.0)}
    assert (await daily(activity_storage))[(TODAY, 1)] == (4, 0.0)


async def test_nothing_is_written_until_flush(
    activity_service: ActivityService, activity_storage: Storage, activity_clock: FakeClock
) -> None:
    activity_service.record_message(1)
    activity_service.record_message(1)
    activity_service.record_voice(2, here(CH))
    activity_clock.advance(45.0)

    assert activity_service.pending_messages(1) == 2
    assert activity_service.pending_messages(2) == 0
    assert activity_service.unflushed_voice_seconds(2) == 45.0
    assert await stats(activity_storage) == {}
    assert await daily(activity_storage) == {}
    assert await sessions(activity_storage) == []

    await activity_service.flush(season_one)
    assert await stats(activity_storage) == {1: (2, 0.0), 2: (0, 45.0)}
    assert activity_service.unflushed_voice_seconds(2) == 0.0


async def test_flush_writes_to_the_current_season(activity_service: ActivityService, activity_storage: Storage) -> None:
    activity_service.record_message(1)
    await activity_service.flush(season_one)
    activity_service.record_message(1)
    activity_service.record_message(1)
    await activity_service.flush(lambda: 2)
    assert await activity_storage.run(_stats_by_season) == {(1, 1): (1, 0.0), (2, 1): (2, 0.0)}


async def test_message_denied_by_the_guard_is_not_counted(activity_storage: Storage, activity_clock: FakeClock) -> None:
    service = make_service(activity_storage, activity_clock, guard=DenyListGuard({2}))
    assert service.record_message(1) is True
    assert service.record_message(2) is False
    assert service.messages_counted == 1
    assert service.pending_messages(2) == 0
    await service.flush(season_one)
    assert await stats(activity_storage) == {1: (1, 0.0)}


async def test_spam_guard_limits_what_is_counted(activity_storage: Storage, activity_clock: FakeClock) -> None:
    guard = SpamGuard(capacity=3, refill_rate=0.1, clock=activity_clock)
    service = make_service(activity_storage, activity_clock, guard=guard)
    results = [service.record_message(1) for _ in range(5)]
    assert results == [True, True, True, False, False]
    activity_clock.advance(10.0)  # one token back
    assert service.record_message(1) is True
    assert service.record_message(1) is False
    await service.flush(season_one)
    assert await stats(activity_storage) == {1: (4, 0.0)}


# --------------------------------------------------------------------------- failed writes


async def test_failed_write_keeps_everything_and_the_next_flush_writes_it_once(
    activity_service: ActivityService,
    activity_storage: Storage,
    activity_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = fail_batches(monkeypatch)
    activity_service.record_voice(1, here(CH))
    activity_service.record_voice(2, here(CH))
    for _ in range(4):
        activity_service.record_message(1)
    activity_service.names.remember(1, "One", "one")
    activity_clock.advance(30.0)
    activity_service.record_voice(2, None)  # closed session inside the failed batch
    activity_clock.advance(30.0)

    assert await activity_service.flush(season_one) is False
    assert activity_service.flush_failures == 1
    assert activity_service.last_flush_at is None
    assert len(attempts) == 1 and attempts[0].messages == {(TODAY, 1): 4}
    assert await stats(activity_storage) == {}
    assert await sessions(activity_storage) == []
    # Still buffered, nothing lost.
    assert activity_service.pending_messages(1) == 4
    assert activity_service.unflushed_voice_seconds(1) == 60.0
    assert activity_service.unflushed_voice_seconds(2) == 30.0

    activity_clock.advance(40.0)  # T0 + 100
    assert await activity_service.flush(season_one) is True
    assert await stats(activity_storage) == {1: (4, 100.0), 2: (0, 30.0)}
    assert await daily(activity_storage) == {(TODAY, 1): (4, 100.0), (TODAY, 2): (0, 30.0)}
    assert await sessions(activity_storage) == [
        (1, CH, T0, T0 + 100.0, None),
        (2, CH, T0, T0 + 30.0, T0 + 30.0),
    ]
    assert await activity_storage.run(repository.names, G, [1]) == {1: "One"}

    # Nothing is written twice afterwards.
    assert await activity_service.flush(season_one) is True
    assert await stats(activity_storage) == {1: (4, 100.0), 2: (0, 30.0)}
    assert activity_service.pending_messages(1) == 0


async def test_a_burst_of_new_members_asks_for_an_early_flush_once_per_batch_while_writes_succeed(
    activity_service: ActivityService, activity_storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    activity_service.early_flush_rows = 50
    activity_service.on_many_pending = lambda: asked.append(len(activity_service._messages))
    for member in range(49):
        activity_service.record_message(member)
        activity_service.record_message(member)  # a known row is not a new one
    assert asked == []
    for member in range(49, 120):
        activity_service.record_message(member)
    assert asked == [50]  # once, at the threshold, however far past it the burst goes
    assert await activity_service.flush(season_one) is True
    for member in range(1_000, 1_050):
        activity_service.record_message(member)
    assert asked == [50, 50]  # the next batch asks again

    fail_batches(monkeypatch)
    assert await activity_service.flush(season_one) is False
    for member in range(2_000, 2_100):
        activity_service.record_message(member)
    assert asked == [50, 50]  # failing writes: the rows wait for the next attempt, no extra ones
    assert await activity_service.flush(season_one) is True
    for member in range(3_000, 3_050):
        activity_service.record_message(member)
    assert asked == [50, 50, 50]
    assert sum(m for m, _ in (await stats(activity_storage)).values()) == 49 * 2 + 71 + 50 + 100  # (the last 50 wait)


async def test_storage_run_failure_also_keeps_the_buffer(
    activity_service: ActivityService,
    activity_storage: Storage,
    activity_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_run = activity_storage.run
    failures = {"left": 2}

    async def flaky_run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if func is repository.apply_batch and failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return await real_run(func, *args, **kwargs)

    monkeypatch.setattr(activity_storage, "run", flaky_run)
    activity_service.record_voice(1, here(CH))
    activity_service.record_message(1)
    activity_clock.advance(10.0)
    assert await activity_service.flush(season_one) is False
    activity_service.record_message(1)
    activity_clock.advance(10.0)
    assert await activity_service.flush(season_one) is False
    activity_clock.advance(10.0)
    assert await activity_service.flush(season_one) is True
    assert activity_service.flush_failures == 2
    assert await stats(activity_storage) == {1: (2, 30.0)}
    assert await activity_storage.run(lambda: VoiceSession.select().count()) == 1


async def test_messages_and_voice_arriving_during_a_failed_flush_are_kept(
    activity_service: ActivityService,
    activity_storage: Storage,
    activity_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = repository.apply_batch
    calls: list[ActivityBatch] = []

    def blocking_then_failing(batch: ActivityBatch) -> None:
        calls.append(batch)
        if len(calls) == 1:
            entered.set()
            assert release.wait(10), "test never released the write"
            raise sqlite3.OperationalError("database is locked")
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", blocking_then_failing)
    activity_service.record_voice(1, here(CH))
    activity_service.record_message(1)
    activity_clock.advance(20.0)

    flushing = asyncio.create_task(activity_service.flush(season_one))
    assert await asyncio.to_thread(entered.wait, 10)
    # The write is in progress on the DB thread: the event loop keeps recording.
    activity_service.record_message(1)
    activity_service.record_message(2)
    activity_service.names.remember(2, "Two", None)
    activity_clock.advance(5.0)
    activity_service.record_voice(1, None)  # leaves at T0 + 25
    activity_service.record_voice(3, here(CH))  # joins at T0 + 25
    release.set()
    assert await flushing is False

    activity_clock.advance(15.0)  # T0 + 40
    assert await activity_service.flush(season_one) is True
    assert await stats(activity_storage) == {1: (2, 25.0), 2: (1, 0.0), 3: (0, 15.0)}
    assert await sessions(activity_storage) == [
        (1, CH, T0, T0 + 25.0, T0 + 25.0),
        (3, CH, T0 + 25.0, T0 + 40.0, None),
    ]
    assert await activity_storage.run(repository.names, G, [2]) == {2: "Two"}


async def test_messages_arriving_during_a_successful_flush_go_to_the_next_one(
    activity_service: ActivityService,
    activity_storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = repository.apply_batch
    calls: list[ActivityBatch] = []

    def blocking(batch: ActivityBatch) -> None:
        calls.append(batch)
        if len(calls) == 1:
            entered.set()
            assert release.wait(10)
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", blocking)
    activity_service.record_message(1)
    flushing = asyncio.create_task(activity_service.flush(season_one))
    assert await asyncio.to_thread(entered.wait, 10)
    activity_service.record_message(1)
    activity_service.record_message(1)
    release.set()
    assert await flushing is True
    assert await stats(activity_storage) == {1: (1, 0.0)}
    assert activity_service.pending_messages(1) == 2
    await activity_service.flush(season_one)
    assert await stats(activity_storage) == {1: (3, 0.0)}


# --------------------------------------------------------------------------- listeners


async def test_flush_listeners_get_the_batch(
    activity_service: ActivityService, activity_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_sync: list[ActivityBatch] = []
    seen_again: list[ActivityBatch] = []
    after_failure: list[str] = []

    def broken_listener(batch: ActivityBatch) -> None:
        after_failure.append("broken called")
        raise ValueError("listener bug")

    activity_service.add_flush_listener(broken_listener)
    activity_service.add_flush_listener(seen_sync.append)
    activity_service.add_flush_listener(seen_again.append)

    activity_service.record_message(7)
    activity_service.record_voice(8, here(CH))
    activity_clock.advance(12.0)
    assert await activity_service.flush(season_one) is True  # a failing listener does not fail the flush

    assert len(seen_sync) == 1 and seen_again == seen_sync
    batch = seen_sync[0]
    assert (batch.guild_id, batch.season, batch.heartbeat_at) == (G, 1, T0 + 12.0)
    assert batch.messages == {(TODAY, 7): 1}
    assert batch.voice == {(TODAY, 8): 12.0}
    assert [(o.user_id, o.channel_id, o.started_at) for o in batch.opened] == [(8, CH, T0)]
    assert after_failure == ["broken called"]

    # Listeners are not told about a failed write.
    fail_batches(monkeypatch)
    activity_service.record_message(7)
    assert await activity_service.flush(season_one) is False
    assert len(seen_sync) == 1


# --------------------------------------------------------------------------- shutdown / start


async def test_shutdown_closes_voice_sessions_at_clock_time_and_writes_them(
    activity_service: ActivityService, activity_storage: Storage, activity_clock: FakeClock
) -> None:
    activity_service.record_voice(1, here(CH))
    activity_service.record_voice(2, here(CH, deafened=True))  # present, not counting
    activity_clock.advance(20.0)
    await activity_service.flush(season_one)
    activity_clock.advance(55.0)
    activity_service.record_message(2)

    assert await activity_service.shutdown(season_one) is True
    assert activity_service.voice.counting_users() == set()
    assert activity_service.voice.present_users() == set()
    assert await sessions(activity_storage) == [(1, CH, T0, T0 + 75.0, T0 + 75.0)]
    assert await stats(activity_storage) == {1: (0, 75.0), 2: (1, 0.0)}
    assert await activity_storage.run(repository.open_sessions, G) == []


async def test_a_shutdown_whose_write_fails_keeps_the_buffer(
    activity_service: ActivityService,
    activity_storage: Storage,
    activity_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fail_batches(monkeypatch, times=10)
    activity_service.record_voice(1, here(CH))
    activity_service.record_message(1)
    activity_clock.advance(30.0)
    assert await activity_service.shutdown(season_one) is False
    assert activity_service.flush_failures == 1
    assert activity_service.pending_messages(1) == 1
    assert activity_service.unflushed_voice_seconds(1) == 30.0
    assert await stats(activity_storage) == {}


async def test_start_closes_sessions_left_open_by_a_crash_at_their_last_heartbeat(
    activity_db_url: str, activity_clock: FakeClock
) -> None:
    activity_clock.set(50.0)
    storage = Storage(activity_db_url)
    await storage.open()
    try:
        crashed = make_service(storage, activity_clock)
        crashed.record_voice(1, here(CH))
        activity_clock.set(100.0)
        assert await crashed.flush(season_one) is True
        assert await sessions(storage) == [(1, CH, 50.0, 100.0, None)]
        activity_clock.set(400.0)  # more voice time happens, then the process dies unflushed
    finally:
        await storage.close()

    activity_clock.set(1_000.0)
    storage = Storage(activity_db_url)
    await storage.open()
    try:
        service = make_service(storage, activity_clock)
        assert await service.start() == 1
        assert await sessions(storage) == [(1, CH, 50.0, 100.0, 100.0)]
        assert await stats(storage) == {1: (0, 50.0)}  # credited only up to the heartbeat
        assert await service.flush(season_one) is True
        assert await stats(storage) == {1: (0, 50.0)}
        assert await service.start() == 0  # nothing left to close
    finally:
        await storage.close()


async def test_start_without_orphans_closes_nothing(activity_service: ActivityService) -> None:
    assert await activity_service.start() == 0


# --------------------------------------------------------------------------- names


async def test_names_are_written_with_flush_only_when_changed(
    activity_service: ActivityService, activity_storage: Storage
) -> None:
    batches: list[ActivityBatch] = []
    activity_service.add_flush_listener(batches.append)

    activity_service.names.remember(1, "Alice", "alice")
    activity_service.names.remember(2, "Bob", None)
    assert activity_service.names.known_name(1) == "Alice"
    assert activity_service.names.known_name(3) is None
    assert await activity_storage.run(repository.names, G, [1, 2]) == {}  # not before the flush
    await activity_service.flush(season_one)
    assert batches[-1].names == {1: ("Alice", "alice"), 2: ("Bob", None)}
    assert await activity_storage.run(repository.names, G, [1, 2]) == {1: "Alice", 2: "Bob"}

    activity_service.names.remember(1, "Alice", "alice")  # unchanged
    await activity_service.flush(season_one)
    assert batches[-1].names == {}

    activity_service.names.remember(1, "Alicia", "alice")  # changed
    activity_service.names.remember(2, "Bob", None)
    await activity_service.flush(season_one)
    assert batches[-1].names == {1: ("Alicia", "alice")}
    assert await activity_storage.run(repository.names, G, [1, 2]) == {1: "Alicia", 2: "Bob"}


async def test_a_name_from_a_failed_flush_is_retried_and_newer_names_win(
    activity_service: ActivityService, activity_storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_batches(monkeypatch)
    activity_service.names.remember(1, "Old", None)
    activity_service.names.remember(2, "Kept", None)
    assert await activity_service.flush(season_one) is False
    activity_service.names.remember(1, "New", None)
    assert await activity_service.flush(season_one) is True
    assert await activity_storage.run(repository.names, G, [1, 2]) == {1: "New", 2: "Kept"}


# --------------------------------------------------------------------------- days


async def test_voice_time_crossing_midnight_goes_to_two_daily_rows(
    activity_service: ActivityService, activity_storage: Storage, activity_clock: FakeClock
) -> None:
    activity_clock.set(MIDNIGHT - 600.0)
    activity_service.record_voice(1, here(CH))
    activity_service.record_message(1)
    activity_clock.set(MIDNIGHT + 900.0)
    activity_service.record_message(1)
    assert await activity_service.flush(season_one) is True
    assert await daily(activity_storage) == {
        (day(MIDNIGHT - 1), 1): (1, 600.0),
        (day(MIDNIGHT), 1): (1, 900.0),
    }
    assert await stats(activity_storage) == {1: (2, 1_500.0)}


async def test_voice_split_across_flushes_and_midnight_sums_exactly(
    activity_service: ActivityService, activity_storage: Storage, activity_clock: FakeClock
) -> None:
    activity_clock.set(MIDNIGHT - 100.0)
    activity_service.record_voice(1, here(CH))
    activity_clock.set(MIDNIGHT - 40.0)
    await activity_service.flush(season_one)
    activity_clock.set(MIDNIGHT + 60.0)
    await activity_service.flush(season_one)
    activity_clock.set(MIDNIGHT + 100.0)
    activity_service.record_voice(1, None)
    await activity_service.flush(season_one)
    assert await daily(activity_storage) == {
        (day(MIDNIGHT - 1), 1): (0, 100.0),
        (day(MIDNIGHT), 1): (0, 100.0),
    }


# --------------------------------------------------------------------------- cancellation


async def test_cancelling_a_flush_whose_write_is_still_queued_loses_nothing(
    activity_service: ActivityService, activity_storage: Storage, activity_clock: FakeClock
) -> None:
    busy, gate = threading.Event(), threading.Event()

    def occupy_db_thread() -> None:  # e.g. a leaderboard query that is running right now
        busy.set()
        assert gate.wait(10)

    blocker = asyncio.ensure_future(activity_storage.run(occupy_db_thread))
    assert await asyncio.to_thread(busy.wait, 10)

    activity_service.record_message(1)
    activity_service.record_voice(2, here(CH))
    activity_clock.advance(30.0)
    flushing = asyncio.create_task(activity_service.flush(season_one))
    for _ in range(100):  # yield until flush has taken the buffers and queued its write
        if activity_service.pending_messages(1) == 0:
            break
        await asyncio.sleep(0)
    assert activity_service.pending_messages(1) == 0
    flushing.cancel()  # what disnake's Loop.cancel() does to a running flush_loop iteration
    await asyncio.sleep(0.05)
    assert not flushing.done()  # the cancelled flush still waits for its queued write
    gate.set()
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await flushing

    activity_clock.advance(10.0)
    assert await activity_service.shutdown(season_one) is True
    assert await stats(activity_storage) == {1: (1, 0.0), 2: (0, 40.0)}
    assert await sessions(activity_storage) == [(2, CH, T0, T0 + 40.0, T0 + 40.0)]


async def test_a_flush_cancelled_while_it_saves_the_recovery_file_keeps_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop cancels the flush loop while a hanging write's counts are being saved to disk: the
    flush must still wait for the write, and its failure must give the batch back (found by review:
    the cancel used to leave the wait from inside the save, the batch in neither place)."""
    async with open_storage(f"sqlite:///{tmp_path}/activity.db") as storage:
        clock = FakeClock(T0)
        recovery = tmp_path / "activity.db.unsaved.json"
        service = make_service(storage, clock, recovery=recovery)
        await service.start()
        service.snapshot_every = lambda: 0.0  # a save at every wait of the hanging write
        real_apply, real_save = repository.apply_batch, RecoveryFile.write
        write_started, fail_write = threading.Event(), threading.Event()
        saving, finish_save = threading.Event(), threading.Event()

        def hanging_then_locked(batch: ActivityBatch) -> None:
            write_started.set()
            assert fail_write.wait(10)
            raise sqlite3.OperationalError("database is locked")

        def slow_save(self: RecoveryFile, *args: Any, **kwargs: Any) -> Any:
            saving.set()
            assert finish_save.wait(10)
            return real_save(self, *args, **kwargs)

        monkeypatch.setattr(repository, "apply_batch", hanging_then_locked)
        monkeypatch.setattr(RecoveryFile, "write", slow_save)
        service.record_message(1)
        flushing = asyncio.ensure_future(service.flush(season_one))
        assert await asyncio.to_thread(write_started.wait, 10)
        assert await asyncio.to_thread(saving.wait, 10)
        flushing.cancel()  # cog_unload's flush_loop.cancel() during a stop
        finish_save.set()
        await asyncio.sleep(0.1)
        assert not flushing.done()  # still waiting for the write's outcome
        fail_write.set()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        assert service.pending_messages(1) == 1  # the failed write gave its batch back
        monkeypatch.setattr(repository, "apply_batch", real_apply)
        monkeypatch.setattr(RecoveryFile, "write", real_save)
        assert await service.shutdown(season_one) is True
        assert await stats(storage) == {1: (1, 0.0)}


async def test_old_voice_sessions_are_pruned_in_batches_and_the_time_stays(
    activity_storage: Storage, activity_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leaderboard_bot.services import activity as activity_module

    monkeypatch.setattr(activity_module, "PRUNE_BATCH", 3)
    service = make_service(activity_storage, activity_clock)
    for user in range(7):  # seven short visits, long ago
        service.record_voice(user, here(CH))
        activity_clock.advance(10.0)
        service.record_voice(user, None)
    service.record_voice(99, here(CH))  # still in voice
    assert await service.flush(season_one) is True
    before = await stats(activity_storage)
    activity_clock.advance(100 * 86_400.0)
    service.record_voice(50, here(CH))
    activity_clock.advance(10.0)
    service.record_voice(50, None)  # a recent visit
    assert await service.flush(season_one) is True
    batches: list[int] = []
    real = repository.prune_closed_sessions

    def spy(guild_id: int, ended_before: float, limit: int = 500) -> int:
        batches.append(limit)
        return real(guild_id, ended_before, limit)

    monkeypatch.setattr(repository, "prune_closed_sessions", spy)
    assert await service.prune_history(90 * 86_400.0, pause=0) == 7
    assert batches == [3, 3, 3]  # small transactions: 3 + 3 + 1
    kept = {user for user, *_ in await sessions(activity_storage)}
    assert kept == {50, 99}
    after = await stats(activity_storage)
    assert {u: v for u, v in after.items() if u in before} == before  # the counted time stays


async def test_old_recovery_markers_and_the_retired_heartbeat_are_pruned_at_start(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    await activity_storage.run(repository.set_setting, G, "recovered:old", activity_clock.now - 40 * 86_400.0)
    await activity_storage.run(repository.set_setting, G, "recovered:new", activity_clock.now - 86_400.0)
    await activity_storage.run(repository.set_setting, G, "heartbeat", activity_clock.now)
    await make_service(activity_storage, activity_clock).start()
    keys = await activity_storage.run(lambda: sorted(s.key for s in Setting.select().where(Setting.guild_id == G)))
    assert "recovered:old" not in keys and "heartbeat" not in keys and "recovered:new" in keys


async def test_a_30_minute_outage_with_5000_in_voice_keeps_each_attempt_the_same_size(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work of a retried flush and the memory held do not grow with the outage: pending
    voice is one entry per member and day, however many attempts failed (timings: bench/outage.py)."""
    import gc
    import tracemalloc

    members = 5_000
    service = make_service(activity_storage, activity_clock, recovery=tmp_path / "activity.db.unsaved.json")
    await service.start()
    for user in range(members):
        service.record_voice(user, here(CH))
        service.record_message(user)
    sizes: list[tuple[int, int, int]] = []

    def locked(batch: ActivityBatch) -> None:  # keeps only sizes: holding the batches would grow memory
        sizes.append((len(batch.voice), len(batch.messages), len(batch.opened)))
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(repository, "apply_batch", locked)
    file_sizes: list[int] = []
    memory: list[int] = []
    gc.collect()
    gc.disable()  # what is held, not what waits for a collection: a cycle per failed batch counts
    tracemalloc.start()
    try:
        for _ in range(30):  # one flush a minute, every one failing
            activity_clock.advance(60.0)
            assert await service.flush(season_one) is False
            file_sizes.append(sum(p.stat().st_size for p in tmp_path.glob("activity.db.unsaved*.json")))
            memory.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
        gc.enable()
    assert set(sizes) == {(members, members, members)} and len(sizes) == 30
    assert max(file_sizes) - min(file_sizes) < 0.05 * max(file_sizes)  # the file is rewritten, not appended to
    assert memory[-1] - memory[4] < 1_000_000  # flat: under 1 MB drift from minute 5 to 30
    assert service.unflushed_voice_seconds(0) == 1_800.0


async def test_every_write_logs_one_line_with_its_duration_and_context(
    activity_storage: Storage, activity_clock: FakeClock, log_lines: list[dict[str, Any]]
) -> None:
    service = make_service(activity_storage, activity_clock)
    service.record_message(1)
    service.record_message(2)
    service.record_message(2)
    assert await service.flush(season_one) is True
    assert await service.flush(season_one) is True  # nothing happened meanwhile
    flushes = [r for r in log_lines if r["message"].startswith("flush ")]
    assert [r["level"] for r in flushes] == ["INFO", "DEBUG"]
    line = flushes[0]
    assert "wrote 3 message(s)" in line["message"] and "for 2 member(s) into season 1" in line["message"]
    assert line["extra"]["guild_id"] == G and line["extra"]["members"] == 2 and line["extra"]["season"] == 1
    assert line["extra"]["duration_ms"] >= 0 and line["message"].endswith(" ms")


def test_what_the_anti_spam_limit_held_back_today_is_counted_per_member(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    service = make_service(activity_storage, activity_clock, guard=DenyListGuard([7]))
    for _ in range(3):
        service.record_message(7)
    service.record_message(8)
    assert (service.held_back_today(7), service.held_back_today(8)) == (3, 0)
    activity_clock.advance(86_400.0)  # a new UTC day starts from zero
    assert service.held_back_today(7) == 0
    service.record_message(7)
    assert service.held_back_today(7) == 1


# --------------------------------------------------------------------------- days in TIMEZONE


def zoned_service(storage: Storage, clock: FakeClock, zone: str, guard: Any = None) -> ActivityService:
    return ActivityService(
        storage,
        guild_id=G,
        voice=VoiceTracker(lambda: VoiceRules(), Calendar(zone)),
        guard=AllowAllGuard() if guard is None else guard,
        names=NameService(storage, guild_id=G),
        clock=clock,
    )


async def test_messages_and_voice_land_in_the_zones_day(activity_storage: Storage) -> None:
    # 2026-01-05 11:00 UTC is already the 6th in Kiritimati (UTC+14), which starts it at 10:00 UTC.
    clock = FakeClock(datetime(2026, 1, 5, 9, 30, tzinfo=UTC).timestamp())
    service = zoned_service(activity_storage, clock, "Pacific/Kiritimati")
    service.record_voice(1, here(CH))
    service.record_voice(2, here(CH))
    service.record_message(1)  # 09:30 UTC: the 5th there
    clock.advance(3_600.0)
    service.record_message(1)  # 10:30 UTC: the 6th there
    assert await service.flush(season_one) is True
    daily = await activity_storage.run(
        lambda: sorted((r.day, r.user_id, r.messages, r.voice_seconds) for r in DailyActivity.select())
    )
    assert daily == [
        ("2026-01-05", 1, 1, 1_800.0),
        ("2026-01-05", 2, 0, 1_800.0),
        ("2026-01-06", 1, 1, 1_800.0),
        ("2026-01-06", 2, 0, 1_800.0),
    ]


async def test_a_window_lacks_only_what_falls_on_its_days(activity_storage: Storage) -> None:
    clock = FakeClock(datetime(2026, 3, 29, 21, 30, tzinfo=UTC).timestamp())  # 23:30 in Berlin, summer time
    service = zoned_service(activity_storage, clock, "Europe/Berlin")
    service.record_message(1)  # the 29th in Berlin
    clock.advance(3_600.0)
    service.record_message(2)  # 00:30 on the 30th in Berlin, still the 29th in UTC
    assert service.unwritten(TODAY_WINDOW.scope).buffered == {2: (1, 0.0)}
    assert service.unwritten(WEEK.scope).buffered == {1: (1, 0.0), 2: (1, 0.0)}
    assert service.unwritten(ALL_TIME.scope).buffered == {1: (1, 0.0), 2: (1, 0.0)}


def test_held_back_today_starts_over_at_the_zones_midnight(activity_storage: Storage) -> None:
    clock = FakeClock(datetime(2026, 1, 5, 22, 50, tzinfo=UTC).timestamp())  # 23:50 in Berlin
    service = zoned_service(activity_storage, clock, "Europe/Berlin", guard=DenyListGuard([7]))
    service.record_message(7)
    assert service.held_back_today(7) == 1
    clock.advance(600.0)  # 00:00 in Berlin: a new day there, still the 5th in UTC
    assert service.held_back_today(7) == 0


# --------------------------------------------------------------------------- wall-clock jumps


class SteppedClocks:
    """A wall clock and a monotonic clock driven separately: ``tick`` is real time passing (both
    move), ``step`` is the wall clock being set (NTP, an operator, a resume from suspend)."""

    def __init__(self, start: float) -> None:
        self.wall = FakeClock(start)
        self.monotonic = FakeClock(50_000.0)

    def tick(self, seconds: float) -> None:
        self.wall.advance(seconds)
        self.monotonic.advance(seconds)

    def step(self, seconds: float) -> None:
        self.wall.advance(seconds)


def stepped_service(storage: Storage, clocks: SteppedClocks) -> ActivityService:
    return make_service(storage, clocks.wall, monotonic=clocks.monotonic)


def _jump_warnings(log_lines: list[dict[str, Any]]) -> list[str]:
    return [r["message"] for r in log_lines if r["level"] == "WARNING" and "clock jumped" in r["message"]]


async def test_a_forward_clock_step_and_back_credits_only_the_real_time_in_voice(
    activity_storage: Storage, log_lines: list[dict[str, Any]]
) -> None:
    # The tester's case: +3 h for 3 s while Bob is in voice, then back; flushes every second.
    clocks = SteppedClocks(T0)
    service = stepped_service(activity_storage, clocks)
    service.record_voice(1, here(CH))
    for _ in range(2):
        clocks.tick(1.0)
        assert await service.flush(season_one)
    clocks.step(3 * 3600.0)
    for _ in range(3):
        clocks.tick(1.0)
        assert await service.flush(season_one)
        assert service.unflushed_voice_seconds(1) == 0.0
    clocks.step(-3 * 3600.0)
    for _ in range(3):
        clocks.tick(1.0)
        assert await service.flush(season_one)
    service.record_voice(1, None)
    assert await service.flush(season_one)

    assert await stats(activity_storage) == {1: (0, 8.0)}
    assert await daily(activity_storage) == {(TODAY, 1): (0, 8.0)}
    # The row ends when Bob left, by the clock at that moment: never hours in the future.
    assert [(s[2], s[4]) for s in await sessions(activity_storage)] == [(T0, T0 + 8.0)]
    assert service.clock_jumps == 2
    warnings = _jump_warnings(log_lines)
    assert len(warnings) == 2
    assert "forward by 10800s" in warnings[0] and "back by 10800s" in warnings[1]


async def test_a_forward_clock_step_between_two_readings_is_not_credited(
    activity_storage: Storage, log_lines: list[dict[str, Any]]
) -> None:
    # No flush in between: the step is found when the member leaves, and the clock stays set.
    clocks = SteppedClocks(T0)
    service = stepped_service(activity_storage, clocks)
    service.record_voice(1, here(CH))
    clocks.tick(5.0)
    clocks.step(3 * 3600.0)
    clocks.tick(7.0)
    assert service.live_session_seconds(1) == 12.0  # /stats shows the real length too
    service.record_voice(1, None)
    assert await service.flush(season_one)

    assert await stats(activity_storage) == {1: (0, 12.0)}
    assert [(s[2], s[4]) for s in await sessions(activity_storage)] == [(T0, T0 + 3 * 3600.0 + 12.0)]
    assert len(_jump_warnings(log_lines)) == 1


async def test_a_backward_clock_step_still_credits_the_real_time_in_voice(
    activity_storage: Storage, log_lines: list[dict[str, Any]]
) -> None:
    # The clock was an hour ahead and is set right while the member stays in voice.
    clocks = SteppedClocks(T0)
    service = stepped_service(activity_storage, clocks)
    service.record_voice(1, here(CH))
    clocks.tick(600.0)
    assert await service.flush(season_one)
    clocks.step(-3600.0)
    clocks.tick(900.0)  # the wall clock is still before the last flush: the time counts all the same
    assert service.unflushed_voice_seconds(1) == 900.0
    assert await service.flush(season_one)
    clocks.tick(100.0)
    service.record_voice(1, None)
    assert await service.flush(season_one)

    assert await stats(activity_storage) == {1: (0, 1600.0)}
    # The row never ends before it starts, even though the clock now reads earlier than its start.
    [(_, _, started, _, ended)] = await sessions(activity_storage)
    assert (started, ended) == (T0, T0)
    warnings = _jump_warnings(log_lines)
    assert len(warnings) == 1 and "back by 3600s" in warnings[0]


async def test_a_backward_clock_step_noticed_while_a_write_waits_is_not_credited(
    activity_storage: Storage,
) -> None:
    """A flush reads the clock, then waits (spilled parts go first during an outage); a voice event
    meanwhile notices the clock was set back an hour. Checkpointing at the moment read before
    would credit that hour."""
    clocks = SteppedClocks(T0)
    service = stepped_service(activity_storage, clocks)
    service.record_voice(1, here(CH))
    clocks.tick(200.0)
    read_before_the_wait = service.clock()
    clocks.step(-3600.0)
    clocks.tick(6.0)
    service.record_voice(2, here(CH))  # the event that notices the step
    batch = service._take(1, read_before_the_wait)
    assert sum(seconds for (_, user), seconds in batch.voice.items() if user == 1) == pytest.approx(206.0)


async def test_a_forward_clock_step_across_midnight_splits_the_real_time_by_the_clock_of_the_moment(
    activity_storage: Storage,
) -> None:
    clocks = SteppedClocks(MIDNIGHT - 100.0)  # 23:58:20
    service = stepped_service(activity_storage, clocks)
    service.record_voice(1, here(CH))
    clocks.tick(60.0)  # 23:59:20
    clocks.step(3600.0)  # 00:59:20, the next day
    # A step is found at the next reading of the clock (every flush, voice event or /stats at the
    # latest): the time since the previous reading counts on the days the clock showed before it.
    assert await service.flush(season_one)
    clocks.tick(40.0)
    service.record_voice(1, None)
    assert await service.flush(season_one)

    assert await daily(activity_storage) == {(day(MIDNIGHT - 1), 1): (0, 60.0), (day(MIDNIGHT), 1): (0, 40.0)}


async def test_a_backward_clock_step_across_midnight_credits_the_day_the_clock_shows(
    activity_storage: Storage,
) -> None:
    clocks = SteppedClocks(MIDNIGHT + 30.0)  # 00:00:30
    service = stepped_service(activity_storage, clocks)
    service.record_voice(1, here(CH))
    clocks.tick(60.0)  # 00:01:30
    assert await service.flush(season_one)
    clocks.step(-3600.0)  # 23:01:30, the day before
    assert await service.flush(season_one)
    clocks.tick(45.0)
    service.record_voice(1, None)
    assert await service.flush(season_one)

    assert await daily(activity_storage) == {(day(MIDNIGHT), 1): (0, 60.0), (day(MIDNIGHT - 1), 1): (0, 45.0)}
    assert await stats(activity_storage) == {1: (0, 105.0)}


async def test_without_a_monotonic_clock_the_wall_clock_is_trusted(activity_storage: Storage) -> None:
    # A fake wall clock alone (most tests): moving it is time passing, never a jump.
    clock = FakeClock(T0)
    service = make_service(activity_storage, clock)
    service.record_voice(1, here(CH))
    clock.advance(3600.0)
    service.record_voice(1, None)
    assert await service.flush(season_one)
    assert await stats(activity_storage) == {1: (0, 3600.0)}
    assert service.clock_jumps == 0
