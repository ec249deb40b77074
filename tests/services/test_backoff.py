"""The shared exponential back-off used by the pinned boards, pins and season announcements."""

from __future__ import annotations

from leaderboard_bot.services.backoff import Backoff
from tests.factories import FakeClock


def test_waits_double_up_to_the_maximum_and_only_the_first_failure_warns() -> None:
    clock = FakeClock(0.0)
    backoff = Backoff(5.0, 30.0, clock=clock)
    assert not backoff.waiting()
    assert [backoff.failed() for _ in range(5)] == [
        (5.0, True),
        (10.0, False),
        (20.0, False),
        (30.0, False),
        (30.0, False),
    ]
    assert backoff.waiting()
    clock.advance(29.9)
    assert backoff.waiting()
    clock.advance(0.1)
    assert not backoff.waiting()


def test_a_long_wait_asked_for_by_discord_wins_over_the_schedule() -> None:
    backoff = Backoff(1.0, 60.0, clock=FakeClock(0.0))
    assert backoff.failed(at_least=600.0) == (600.0, True)


def test_success_resets_and_says_whether_a_warned_streak_ended() -> None:
    backoff = Backoff(1.0, 60.0, clock=FakeClock(0.0))
    assert backoff.succeeded() is False
    backoff.failed()
    backoff.failed()
    assert backoff.succeeded() is True
    assert not backoff.waiting() and backoff.failed() == (1.0, True)


def test_a_callable_base_is_read_at_each_failure() -> None:
    base = 10.0
    backoff = Backoff(lambda: base, 1000.0, clock=lambda: 0.0)
    assert backoff.failed() == (10.0, True)
    base = 30.0  # e.g. UPDATE_INTERVAL changed at run time
    assert backoff.failed() == (60.0, False)


def test_two_thousand_failures_keep_waiting_the_maximum_without_overflow() -> None:
    """About 10.6 days of a forbidden channel at 15 min waits: 2.0 ** 1024 used to overflow."""
    clock = FakeClock(0.0)
    backoff = Backoff(base=60.0, maximum=900.0, clock=clock)
    delays = [backoff.failed()[0] for _ in range(2_000)]
    assert delays[-1] == 900.0 and max(delays) == 900.0
    assert backoff.failures == 2_000
