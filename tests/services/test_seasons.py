"""SeasonService against a real Storage on a temporary SQLite file, with a real ActivityService and
a fake clock. A "restart" closes the storage and opens new services on the same database file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.db.models import MemberStats, Season
from leaderboard_bot.domain import ActivityBatch
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.names import NameService
from leaderboard_bot.services.recovery import RecoveryFile
from leaderboard_bot.services.seasons import SeasonInfo, SeasonService
from tests.factories import MIDNIGHT, AllowAllGuard, FakeClock, fail_batches, here, runtime_settings, voice_tracker

G = 6161
CH = 99
T0 = MIDNIGHT + 3_600.0  # 01:00 UTC
PERIOD = 1_000.0


@dataclass
class Instance:
    """One run of the bot: its storage, tracker and season service."""

    storage: Storage
    tracker: ActivityService
    seasons: SeasonService


Start = Callable[..., Awaitable[Instance]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def start(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Start]:
    """Start the services on the test database (closing the previous run first, like a restart)."""
    url = f"sqlite:///{tmp_path}/seasons.db"
    running: list[Storage] = []

    async def _start(period: float = PERIOD, *, load: bool = True) -> Instance:
        while running:
            await running.pop().close()
        storage = Storage(url)
        await storage.open()
        running.append(storage)
        tracker = ActivityService(
            storage,
            guild_id=G,
            voice=voice_tracker(),
            guard=AllowAllGuard(),
            names=NameService(storage, guild_id=G),
            clock=clock,
        )
        seasons = SeasonService(storage, tracker, runtime_settings(reset_period=period), clock=clock)
        if load:
            await seasons.load()
        return Instance(storage, tracker, seasons)

    try:
        yield _start
    finally:
        while running:
            await running.pop().close()


def _season_rows() -> list[tuple[int, float, float, float | None, float | None]]:
    query = Season.select().where(Season.guild_id == G).order_by(Season.number)
    return [(s.number, s.started_at, s.ends_at, s.ended_at, s.announced_at) for s in query]


def _stats_by_season() -> dict[tuple[int, int], tuple[int, float]]:
    query = MemberStats.select().where((MemberStats.guild_id == G) & (MemberStats.season > 0))
    return {(r.season, r.user_id): (r.messages, r.voice_seconds) for r in query}


async def season_rows(storage: Storage) -> list[tuple[int, float, float, float | None, float | None]]:
    return await storage.run(_season_rows)


async def stats_by_season(storage: Storage) -> dict[tuple[int, int], tuple[int, float]]:
    return await storage.run(_stats_by_season)


def send(tracker: ActivityService, user_id: int, count: int) -> None:
    for _ in range(count):
        assert tracker.record_message(user_id) is True


# --------------------------------------------------------------------------- load


async def test_load_creates_season_one_ending_one_period_from_now(start: Start, clock: FakeClock) -> None:
    run = await start(load=False)
    clock.advance(50.0)  # load() uses the time it runs at, not when the service was built
    info = await run.seasons.load()
    assert info == SeasonInfo(number=1, started_at=T0 + 50.0, ends_at=T0 + 50.0 + PERIOD, ended_at=None)
    assert run.seasons.current == info
    assert run.seasons.current_number() == 1
    assert await season_rows(run.storage) == [(1, T0 + 50.0, T0 + 50.0 + PERIOD, None, None)]


async def test_load_is_idempotent_within_a_run(start: Start, clock: FakeClock) -> None:
    run = await start()
    clock.advance(200.0)
    assert await run.seasons.load() == SeasonInfo(1, T0, T0 + PERIOD)
    assert len(await season_rows(run.storage)) == 1


async def test_a_restart_reopens_the_same_season_without_moving_the_reset(start: Start, clock: FakeClock) -> None:
    first = await start()
    assert first.seasons.current == SeasonInfo(1, T0, T0 + PERIOD)

    clock.advance(400.0)
    second = await start()
    assert second.seasons.current == SeasonInfo(1, T0, T0 + PERIOD)
    assert second.seasons.current_number() == 1
    assert await season_rows(second.storage) == [(1, T0, T0 + PERIOD, None, None)]
    assert not second.seasons.is_due()


async def test_a_changed_period_moves_the_end_to_start_plus_the_new_period(start: Start, clock: FakeClock) -> None:
    await start()
    clock.advance(100.0)
    longer = await start(period=5_000.0)
    assert longer.seasons.current == SeasonInfo(1, T0, T0 + 5_000.0)
    assert await season_rows(longer.storage) == [(1, T0, T0 + 5_000.0, None, None)]

    clock.advance(100.0)
    again = await start(period=5_000.0)  # same period again: nothing moves
    assert again.seasons.current == SeasonInfo(1, T0, T0 + 5_000.0)

    shorter = await start(period=150.0)  # the new end is already in the past
    assert shorter.seasons.current == SeasonInfo(1, T0, T0 + 150.0)
    assert await season_rows(shorter.storage) == [(1, T0, T0 + 150.0, None, None)]
    assert shorter.seasons.is_due()


async def test_is_due_before_at_and_after_the_end(start: Start, clock: FakeClock) -> None:
    run = await start()
    seasons = run.seasons
    assert not seasons.is_due()
    clock.set(T0 + PERIOD - 0.001)
    assert not seasons.is_due()
    clock.set(T0 + PERIOD)
    assert seasons.is_due()
    clock.set(T0 + PERIOD + 1.0)
    assert seasons.is_due()
    # An explicit time wins over the clock.
    assert not seasons.is_due(T0 + PERIOD - 1.0)
    assert seasons.is_due(T0 + PERIOD)


async def test_a_season_that_ended_while_offline_is_due_at_load(start: Start, clock: FakeClock) -> None:
    await start()
    clock.set(T0 + PERIOD + 5_000.0)  # the bot was down over the reset time
    run = await start()
    assert run.seasons.current == SeasonInfo(1, T0, T0 + PERIOD)  # not silently extended
    assert run.seasons.is_due()

    finished = await run.seasons.roll(reason="late")
    assert finished == SeasonInfo(1, T0, T0 + PERIOD, ended_at=T0 + PERIOD + 5_000.0)
    assert run.seasons.current == SeasonInfo(2, T0 + PERIOD + 5_000.0, T0 + 2 * PERIOD + 5_000.0)
    assert not run.seasons.is_due()


async def test_a_restart_after_a_roll_opens_the_new_season(start: Start, clock: FakeClock) -> None:
    run = await start()
    clock.advance(300.0)
    await run.seasons.roll(reason="test")
    clock.advance(100.0)
    again = await start()
    assert again.seasons.current == SeasonInfo(2, T0 + 300.0, T0 + 300.0 + PERIOD)
    assert again.seasons.current_number() == 2


# --------------------------------------------------------------------------- roll


async def test_roll_archives_the_season_and_opens_the_next(start: Start, clock: FakeClock) -> None:
    run = await start()
    clock.set(T0 + 250.0)
    finished = await run.seasons.roll(reason="manual")
    assert finished == SeasonInfo(1, T0, T0 + PERIOD, ended_at=T0 + 250.0)
    assert run.seasons.current == SeasonInfo(2, T0 + 250.0, T0 + 250.0 + PERIOD, None)
    assert run.seasons.current_number() == 2
    assert await season_rows(run.storage) == [
        (1, T0, T0 + PERIOD, T0 + 250.0, None),
        (2, T0 + 250.0, T0 + 250.0 + PERIOD, None, None),
    ]
    assert not run.seasons.is_due()

    finished = await run.seasons.roll(reason="again", now=T0 + 400.0)  # explicit time
    assert finished == SeasonInfo(2, T0 + 250.0, T0 + 250.0 + PERIOD, ended_at=T0 + 400.0)
    assert run.seasons.current == SeasonInfo(3, T0 + 400.0, T0 + 400.0 + PERIOD)
    assert run.seasons.current_number() == 3


async def test_messages_before_the_roll_finish_the_season_and_later_ones_start_the_next(
    start: Start, clock: FakeClock
) -> None:
    run = await start()
    send(run.tracker, 1, 2)
    assert await run.seasons.flush() is True
    send(run.tracker, 1, 3)  # still buffered when the season ends
    send(run.tracker, 2, 1)
    clock.advance(100.0)
    assert await run.seasons.roll(reason="test") is not None
    assert run.tracker.pending_messages(1) == 0

    send(run.tracker, 1, 1)
    send(run.tracker, 3, 4)
    clock.advance(10.0)
    assert await run.seasons.flush() is True
    assert await stats_by_season(run.storage) == {
        (1, 1): (5, 0.0),
        (1, 2): (1, 0.0),
        (2, 1): (1, 0.0),
        (2, 3): (4, 0.0),
    }


async def test_voice_in_progress_is_split_exactly_at_the_roll(start: Start, clock: FakeClock) -> None:
    run = await start()
    clock.set(T0 + 100.0)
    run.tracker.record_voice(1, here(CH))
    clock.set(T0 + 130.0)
    run.tracker.record_voice(2, here(CH))
    clock.set(T0 + 160.0)
    assert await run.seasons.roll(reason="test") is not None
    assert run.tracker.voice.is_counting(1)  # nobody is kicked out of voice by a reset
    assert run.tracker.unflushed_voice_seconds(1) == 0.0
    clock.set(T0 + 180.0)
    run.tracker.record_voice(2, None)
    clock.set(T0 + 200.0)
    assert await run.seasons.flush() is True
    assert await stats_by_season(run.storage) == {
        (1, 1): (0, 60.0),
        (1, 2): (0, 30.0),
        (2, 1): (0, 40.0),
        (2, 2): (0, 20.0),
    }


async def test_roll_at_an_explicit_time_splits_voice_there(start: Start, clock: FakeClock) -> None:
    run = await start()
    clock.set(T0 + 100.0)
    run.tracker.record_voice(1, here(CH))
    clock.set(T0 + 200.0)
    assert await run.seasons.roll(reason="test", now=T0 + 150.0) is not None
    assert await run.seasons.flush() is True
    assert await stats_by_season(run.storage) == {(1, 1): (0, 50.0), (2, 1): (0, 50.0)}


async def test_a_late_scheduled_reset_splits_voice_in_progress_at_the_boundary(start: Start, clock: FakeClock) -> None:
    """The reset ran 30 s after the season's end (a tester found those 30 s of voice credited to
    the season that had ended): time in voice since the boundary counts in the next season."""
    run = await start()
    boundary = run.seasons.current.ends_at
    clock.set(boundary - 3_600.0)
    run.tracker.record_voice(1, here(CH))
    clock.set(boundary + 10.0)
    assert await run.seasons.flush() is True  # a scheduled flush before the reset: not past the end
    clock.set(boundary + 30.0)
    finished = await run.seasons.roll(reason="due", only_if_due=True)
    assert finished is not None and finished.ended_at == boundary
    assert await run.seasons.flush() is True
    assert await stats_by_season(run.storage) == {(1, 1): (0, 3_600.0), (2, 1): (0, 30.0)}


async def test_a_failed_write_after_the_end_credits_no_voice_past_it_to_the_ended_season(
    start: Start, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A failed write saves a snapshot, which credited open sessions up to now: the late reset then
    wrote that time into the season that had ended (found by review)."""
    run = await start()
    run.tracker.recovery = RecoveryFile(tmp_path / "seasons.db.unsaved.json")
    boundary = run.seasons.current.ends_at
    clock.set(boundary - 3_600.0)
    run.tracker.record_voice(1, here(CH))
    clock.set(boundary + 600.0)
    with monkeypatch.context() as patch:
        fail_batches(patch, times=1)
        assert await run.seasons.flush() is False
    assert await run.seasons.roll(reason="due", only_if_due=True) is not None
    clock.set(boundary + 900.0)
    assert await run.seasons.flush() is True
    assert await stats_by_season(run.storage) == {(1, 1): (0, 3_600.0), (2, 1): (0, 900.0)}


async def test_a_late_scheduled_reset_dates_its_write_now_not_at_the_boundary(
    start: Start, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only time in voice is split at the boundary: a late reset that fails after three days down
    must not say writes were refused for three days, nor one that succeeds say the last write was
    then (found by review)."""
    run = await start()
    clock.set(run.seasons.current.ends_at + 3 * 86_400.0)
    with monkeypatch.context() as patch:
        fail_batches(patch, times=1)
        assert await run.seasons.roll(reason="due", only_if_due=True) is None
    assert run.tracker.failing_since == clock.now
    assert await run.seasons.roll(reason="due", only_if_due=True) is not None
    assert run.tracker.last_flush_at == clock.now


async def test_a_failed_write_rolls_nothing_and_a_later_roll_succeeds(
    start: Start, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await start()
    calls: list[tuple[SeasonInfo, SeasonInfo]] = []
    run.seasons.add_roll_listener(lambda finished, current: calls.append((finished, current)))
    send(run.tracker, 1, 2)
    clock.set(T0 + 100.0)
    run.tracker.record_voice(1, here(CH))
    clock.set(T0 + 160.0)
    attempts = fail_batches(monkeypatch)

    assert await run.seasons.roll(reason="test") is None
    assert len(attempts) == 1
    assert run.seasons.current == SeasonInfo(1, T0, T0 + PERIOD)
    assert run.seasons.current_number() == 1
    assert await season_rows(run.storage) == [(1, T0, T0 + PERIOD, None, None)]
    assert await stats_by_season(run.storage) == {}
    assert run.tracker.pending_messages(1) == 2  # kept for the retry
    assert run.tracker.unflushed_voice_seconds(1) == 60.0
    assert calls == []
    assert await run.seasons.unannounced() == []

    clock.set(T0 + 170.0)
    finished = await run.seasons.roll(reason="retry")
    assert finished == SeasonInfo(1, T0, T0 + PERIOD, ended_at=T0 + 170.0)
    assert run.seasons.current == SeasonInfo(2, T0 + 170.0, T0 + 170.0 + PERIOD)
    assert run.seasons.current_number() == 2
    assert calls == [(finished, run.seasons.current)]
    clock.set(T0 + 200.0)
    assert await run.seasons.flush() is True
    assert await stats_by_season(run.storage) == {(1, 1): (2, 70.0), (2, 1): (0, 30.0)}


async def test_a_failed_season_write_leaves_tracker_and_current_in_agreement(
    start: Start, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await start()
    real = repository.roll_season
    failures = {"left": 1}

    def flaky(*args: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real(*args)

    monkeypatch.setattr(repository, "roll_season", flaky)
    send(run.tracker, 1, 1)
    clock.advance(100.0)
    try:
        result: object = await run.seasons.roll(reason="test")
    except sqlite3.OperationalError as error:
        result = error
    state = (result, run.seasons.current.number)
    assert result is None, state
    assert run.seasons.current.number == 1, state
    assert run.tracker.pending_messages(1) == 1  # kept for the retry


async def test_roll_listeners_get_the_finished_and_the_new_season(start: Start, clock: FakeClock) -> None:
    run = await start()
    seen: list[tuple[str, SeasonInfo, SeasonInfo]] = []

    def broken(finished: SeasonInfo, current: SeasonInfo) -> None:
        seen.append(("broken", finished, current))
        raise RuntimeError("listener bug")

    def sync_listener(finished: SeasonInfo, current: SeasonInfo) -> None:
        seen.append(("sync", finished, current))

    async def async_listener(finished: SeasonInfo, current: SeasonInfo) -> None:
        await asyncio.sleep(0)
        seen.append(("async", finished, current))

    async def broken_async(finished: SeasonInfo, current: SeasonInfo) -> None:
        raise RuntimeError("async listener bug")

    for listener in (broken, sync_listener, broken_async, async_listener):
        run.seasons.add_roll_listener(listener)

    clock.set(T0 + 500.0)
    finished = await run.seasons.roll(reason="test")
    expected_finished = SeasonInfo(1, T0, T0 + PERIOD, ended_at=T0 + 500.0)
    expected_current = SeasonInfo(2, T0 + 500.0, T0 + 500.0 + PERIOD)
    assert finished == expected_finished
    assert run.seasons.current == expected_current
    assert seen == [
        ("broken", expected_finished, expected_current),
        ("sync", expected_finished, expected_current),
        ("async", expected_finished, expected_current),
    ]


async def test_roll_listeners_see_the_new_season_already_in_place(start: Start, clock: FakeClock) -> None:
    run = await start()
    observed: list[tuple[int, int]] = []
    run.seasons.add_roll_listener(
        lambda finished, current: observed.append((run.seasons.current_number(), current.number))
    )
    clock.advance(10.0)
    await run.seasons.roll(reason="test")
    assert observed == [(2, 2)]


# --------------------------------------------------------------------------- announcements


async def test_unannounced_lists_finished_seasons_until_marked(start: Start, clock: FakeClock) -> None:
    run = await start()
    assert await run.seasons.unannounced() == []
    clock.set(T0 + 100.0)
    await run.seasons.roll(reason="first")
    assert await run.seasons.unannounced() == [SeasonInfo(1, T0, T0 + PERIOD, ended_at=T0 + 100.0)]
    clock.set(T0 + 300.0)
    await run.seasons.roll(reason="second")
    assert [s.number for s in await run.seasons.unannounced()] == [1, 2]

    await run.seasons.mark_announced(1)
    assert await run.seasons.unannounced() == [SeasonInfo(2, T0 + 100.0, T0 + 100.0 + PERIOD, ended_at=T0 + 300.0)]
    rows = await season_rows(run.storage)
    assert rows[0][4] is not None and rows[1][4] is None

    # A crash before the announcement: the next run still knows it is owed.
    again = await start()
    assert [s.number for s in await again.seasons.unannounced()] == [2]
    await again.seasons.mark_announced(2)
    assert await again.seasons.unannounced() == []
    assert again.seasons.current.number == 3


async def test_a_flush_waiting_while_a_season_ends_writes_into_the_new_season(start: Start, clock: FakeClock) -> None:
    run = await start()
    send(run.tracker, 1, 2)  # belongs to season 1
    busy, gate = threading.Event(), threading.Event()

    def occupy_db_thread() -> None:  # any query in progress: the roll's write has to wait for it
        busy.set()
        assert gate.wait(10)

    blocker = asyncio.ensure_future(run.storage.run(occupy_db_thread))
    assert await asyncio.to_thread(busy.wait, 10)
    rolling = asyncio.create_task(run.seasons.roll(reason="test"))
    periodic = asyncio.create_task(run.tracker.flush(run.seasons.current_number))  # waits for the lock
    await asyncio.sleep(0)  # the roll has taken season 1's counts and waits for the database
    send(run.tracker, 1, 3)  # after the roll took its batch: season 2's
    gate.set()
    await blocker
    finished = await rolling
    assert finished is not None and finished.number == 1
    assert await periodic is True
    assert await stats_by_season(run.storage) == {(1, 1): (2, 0.0), (2, 1): (3, 0.0)}


async def test_the_season_length_follows_the_live_setting(start: Start, clock: FakeClock) -> None:
    run = await start(period=PERIOD)
    assert run.seasons.period == PERIOD
    run.seasons.settings.update(reset_period=5 * PERIOD)
    assert run.seasons.period == 5 * PERIOD
    clock.advance(10.0)
    await run.seasons.roll(reason="test")
    assert run.seasons.current.ends_at == run.seasons.current.started_at + 5 * PERIOD


async def test_seasons_keep_a_fixed_cadence_across_downtime_and_late_checks(start: Start, clock: FakeClock) -> None:
    """Down on days 29 to 33 of a 30-day season: the reset happens when the bot is back, and
    season 2 still ends on day 60, not 63."""
    day_s = 86_400.0
    run = await start(30 * day_s)
    assert run.seasons.current.ends_at == T0 + 30 * day_s
    clock.set(T0 + 33 * day_s)  # back after the downtime
    run = await start(30 * day_s)
    finished = await run.seasons.roll(reason="due", only_if_due=True)
    # Ended at its boundary, where season 2 starts (not at day 33: the two would overlap).
    assert finished is not None and finished.ended_at == T0 + 30 * day_s
    assert run.seasons.current.started_at == T0 + 30 * day_s
    assert run.seasons.current.ends_at == T0 + 60 * day_s
    clock.set(T0 + 60 * day_s + 29)  # the 30 s check cadence runs a little late
    await run.seasons.roll(reason="due", only_if_due=True)
    assert run.seasons.current.ends_at == T0 + 90 * day_s
    # A restart reads the same schedule back.
    run = await start(30 * day_s)
    assert (run.seasons.current.number, run.seasons.current.ends_at) == (3, T0 + 90 * day_s)


async def test_after_downtime_longer_than_a_season_the_next_one_is_the_current_slot(
    start: Start, clock: FakeClock
) -> None:
    run = await start()
    clock.set(T0 + 3.5 * PERIOD)  # three boundaries passed while down
    await run.seasons.roll(reason="due", only_if_due=True)
    assert run.seasons.current.started_at == T0 + 3 * PERIOD
    assert run.seasons.current.ends_at == T0 + 4 * PERIOD
    assert not run.seasons.is_due()  # no burst of empty seasons


async def test_a_manual_reset_starts_the_next_season_now(start: Start, clock: FakeClock) -> None:
    run = await start()
    clock.advance(100.0)
    await run.seasons.roll(reason="manual")
    assert run.seasons.current.started_at == T0 + 100.0
    assert run.seasons.current.ends_at == T0 + 100.0 + PERIOD


async def test_every_reset_logs_one_line_with_the_seasons_guild_duration_and_who(
    start: Start, clock: FakeClock, log_lines: list[dict[str, Any]]
) -> None:
    run = await start()
    clock.set(T0 + 250.0)
    await run.seasons.roll(reason="reset by ann (42)", by=42)
    clock.set(T0 + 250.0 + PERIOD)
    await run.seasons.roll(reason="the season's time is up", only_if_due=True)
    resets = [r for r in log_lines if r["message"].startswith("season reset:")]
    assert [r["level"] for r in resets] == ["INFO", "INFO"]
    manual, automatic = (r["extra"] for r in resets)
    assert resets[0]["message"].startswith("season reset: season 1 ended (reset by ann (42)); season 2 started; took ")
    assert manual["finished_season"] == 1 and manual["season"] == 2 and manual["guild_id"] == G
    assert manual["trigger"] == "manual" and manual["user_id"] == 42 and manual["duration_ms"] >= 0
    assert automatic["finished_season"] == 2 and automatic["season"] == 3
    assert automatic["trigger"] == "automatic" and automatic["user_id"] is None


async def test_manual_reset_of_an_overdue_season_credits_voice_up_to_its_end(start: Start, clock: FakeClock) -> None:
    """Found by review: the voice cap at the scheduled end filed the overdue time in season 2."""
    run = await start()
    boundary = run.seasons.current.ends_at
    clock.set(boundary - 3_600.0)
    run.tracker.record_voice(1, here(CH))
    clock.set(boundary + 600.0)  # the automatic reset failed/was late; an admin resets by hand
    finished = await run.seasons.roll(reason="manual")
    assert finished is not None and finished.ended_at == boundary + 600.0  # season 1 ENDED at now
    assert run.seasons.current.started_at == boundary + 600.0  # season 2 starts now
    clock.set(boundary + 900.0)
    assert await run.seasons.flush()
    # season 1 ran until boundary+600 with the member in voice: 4200 s; season 2 ran 300 s.
    assert await stats_by_season(run.storage) == {(1, 1): (0, 4_200.0), (2, 1): (0, 300.0)}


async def test_snapshot_during_a_hanging_roll_keeps_post_boundary_voice(
    start: Start, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill -9 while the reset's write hangs: the file must hold the time since the boundary
    (found by review: the cap kept it out of the recovery file)."""
    run = await start()
    recovery = RecoveryFile(tmp_path / "seasons.db.unsaved.json", clock=clock)
    run.tracker.recovery = recovery
    run.tracker.snapshot_every = lambda: 0.05
    boundary = run.seasons.current.ends_at
    clock.set(boundary - 3_600.0)
    run.tracker.record_voice(1, here(CH))
    clock.set(boundary + 600.0)
    gate = threading.Event()
    real = repository.apply_batch

    def hanging(batch: ActivityBatch) -> None:
        if batch.roll is not None:
            gate.wait(10)
            raise sqlite3.OperationalError("database is locked")
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", hanging)
    task = asyncio.ensure_future(run.seasons.roll(reason="due", only_if_due=True))
    for _ in range(200):
        await asyncio.sleep(0.02)
        if recovery.own_path.exists():
            break
    crash_copy = recovery.own_path.read_text()  # kill -9 now: this is what the next start finds
    gate.set()
    await task
    monkeypatch.undo()
    # Restart on the same database with the file as it was at the crash.
    run2 = await start(load=False)
    recovery.own_path.write_text(crash_copy)
    for other in tmp_path.glob("seasons.db.unsaved*.json"):
        if other != recovery.own_path:
            other.unlink()
    run2.tracker.recovery = RecoveryFile(tmp_path / "seasons.db.unsaved.json", clock=clock)
    await run2.tracker.start()
    await run2.seasons.load()
    stats = await stats_by_season(run2.storage)
    total = sum(v for _, v in stats.values())
    # 3600 s before the boundary + 600 s after it were in voice; the in-flight roll part and the
    # snapshot's rest (filed under season 2) should carry all 4200 s.
    assert total == 4_200.0


async def test_forgetting_another_member_while_overdue_credits_no_voice_past_the_end(
    start: Start, clock: FakeClock
) -> None:
    run = await start()
    boundary = run.seasons.current.ends_at
    clock.set(boundary - 3_600.0)
    run.tracker.record_voice(1, here(CH))
    clock.set(boundary + 600.0)  # the reset is due (the database was locked until now)
    async with run.tracker.quiescent():
        run.tracker.forget(2)  # /privacy delete by some other member
    assert await run.seasons.roll(reason="due", only_if_due=True) is not None
    clock.set(boundary + 900.0)
    assert await run.seasons.flush()
    assert await stats_by_season(run.storage) == {(1, 1): (0, 3_600.0), (2, 1): (0, 900.0)}
