"""A member's days for the /stats chart (services/daily.py): stored buckets plus today's unwritten
counts, exactly once, and which days a chart covers."""

from __future__ import annotations

from typing import Any

import pytest

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import ActivityBatch, Unwritten
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.daily import MAX_DAYS, chart_days, day_run, member_days
from leaderboard_bot.services.names import NameService
from tests.factories import AllowAllGuard, FakeClock, day, here, voice_tracker
from tests.services.conftest import T0

G = 4242
TODAY = day(T0)
YESTERDAY = "2024-03-09"


@pytest.fixture
def activity(activity_storage: Storage, activity_clock: FakeClock) -> ActivityService:
    return ActivityService(
        activity_storage,
        guild_id=G,
        voice=voice_tracker(),
        guard=AllowAllGuard(),
        names=NameService(activity_storage, guild_id=G),
        clock=activity_clock,
    )


async def store(storage: Storage, day_name: str, user: int, messages: int, voice: float = 0.0) -> None:
    batch = ActivityBatch(
        guild_id=G, season=1, heartbeat_at=T0, messages={(day_name, user): messages}, voice={(day_name, user): voice}
    )
    await storage.run(repository.apply_batch, batch)


def test_which_days_a_chart_covers() -> None:
    assert day_run("2024-03-10", 3) == ["2024-03-08", "2024-03-09", "2024-03-10"]
    assert chart_days("2024-03-10", window_days=1) == ["2024-03-10"]
    assert chart_days("2024-03-10", window_days=7)[0] == "2024-03-04"
    month = chart_days("2024-03-10")  # the running season, all time: the last 30 days
    assert len(month) == 30 and month[-1] == "2024-03-10"
    assert chart_days("2024-03-10", window_days=None) == month
    season = chart_days("2024-03-10", season=("2024-01-01", "2024-01-31"))  # a finished season: its own days
    assert (season[0], season[-1], len(season)) == ("2024-01-01", "2024-01-31", 31)
    long = chart_days("2024-03-10", season=("2023-01-01", "2024-01-31"))
    assert len(long) == MAX_DAYS and long[-1] == "2024-01-31"
    assert chart_days("2024-03-10", season=("2024-01-05", "2024-01-05")) == ["2024-01-05"]


async def test_stored_days_and_todays_unwritten_counts_exactly_once(
    activity: ActivityService, activity_storage: Storage, activity_clock: FakeClock
) -> None:
    await store(activity_storage, YESTERDAY, 1, 4, 600.0)
    await store(activity_storage, YESTERDAY, 2, 9, 0.0)  # another member: not on this chart
    for _ in range(3):
        activity.record_message(1)
    activity.record_voice(1, here(77))
    activity_clock.advance(60.0)
    assert await activity.flush(lambda: 1) is True  # 3 messages and 60 s of today written
    for _ in range(2):
        activity.record_message(1)  # buffered only
    activity_clock.advance(30.0)  # 30 s more in voice, not written

    series = await member_days(activity_storage, activity, 1, chart_days(TODAY, window_days=7))
    assert series is not None
    assert series.days[-2:] == (YESTERDAY, TODAY) and len(series.days) == 7
    assert series.messages == (0, 0, 0, 0, 0, 4, 5)
    assert series.voice_seconds[-2:] == (600.0, 90.0)
    assert (series.total_messages, series.total_voice_seconds) == (9, 690.0)


async def test_a_past_run_of_days_leaves_out_todays_counts(
    activity: ActivityService, activity_storage: Storage
) -> None:
    await store(activity_storage, YESTERDAY, 1, 4)
    activity.record_message(1)  # today, buffered
    series = await member_days(activity_storage, activity, 1, ["2024-03-08", YESTERDAY])
    assert series is not None and series.messages == (0, 4)


async def test_nobody_active_is_all_zeros(activity: ActivityService, activity_storage: Storage) -> None:
    series = await member_days(activity_storage, activity, 5, chart_days(TODAY, window_days=1))
    assert series is not None and series.days == (TODAY,) and series.messages == (0,) and series.voice_seconds == (0.0,)


async def test_a_write_committing_during_the_read_makes_it_read_again(
    activity: ActivityService, activity_storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    activity.record_message(1)
    real = activity.unwritten
    captures: list[Any] = []

    def stale_first(scope: int) -> Unwritten:
        captures.append(scope)
        if len(captures) == 1:
            return Unwritten(committed=99)  # as if a write committed after this capture
        return real(scope)

    monkeypatch.setattr(activity, "unwritten", stale_first)
    series = await member_days(activity_storage, activity, 1, [TODAY])
    assert series is not None and series.messages == (1,)
    assert len(captures) == 2


async def test_writes_committing_under_every_read_give_no_series(
    activity: ActivityService, activity_storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activity, "unwritten", lambda scope: Unwritten(committed=99))
    assert await member_days(activity_storage, activity, 1, [TODAY]) is None


async def test_the_lookup_reads_only_the_members_rows_on_those_days(activity_storage: Storage) -> None:
    await store(activity_storage, "2024-03-01", 1, 1)
    await store(activity_storage, "2024-03-02", 1, 2)
    await store(activity_storage, "2024-03-02", 2, 7)
    await store(activity_storage, "2024-03-05", 1, 5)
    found = await activity_storage.read(repository.member_days, G, 1, ["2024-03-02", "2024-03-05", "2024-03-06"])
    assert found == {"2024-03-02": (2, 0.0), "2024-03-05": (5, 0.0)}
    sequence, same = await activity_storage.read(repository.member_days_at, G, 1, ["2024-03-01"])
    assert same == {"2024-03-01": (1, 0.0)} and sequence == await activity_storage.read(repository.write_sequence, G)
