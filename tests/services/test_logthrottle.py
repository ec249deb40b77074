"""The log throttle: once per distinct failure, a summary per window, one recovery line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from leaderboard_bot.services import logthrottle
from leaderboard_bot.services.logthrottle import LogThrottle, Verdict, report_failure, report_recovery, span
from tests.factories import FakeClock

OP = ("refresh", "messages")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def throttle(clock: FakeClock) -> LogThrottle:
    return LogThrottle(window=300.0, clock=clock)


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Log records with the traceback, if any (the shared log_lines fixture leaves it out)."""
    seen: list[dict[str, Any]] = []
    sink = logger.add(
        lambda m: seen.append(
            {
                "level": m.record["level"].name,
                "message": m.record["message"],
                "extra": dict(m.record["extra"]),
                "exception": m.record["exception"],
                "function": m.record["function"],
            }
        ),
        level="DEBUG",
        format="{message}",
    )
    yield seen
    logger.remove(sink)


def test_the_first_failure_is_logged_repeats_counted_then_summarised_once_a_window(
    throttle: LogThrottle, clock: FakeClock
) -> None:
    assert throttle.failed(OP, 503) == Verdict(log=True)
    for _ in range(9):
        clock.advance(20)
        assert throttle.failed(OP, 503).log is False  # 180 s: inside the window
    clock.advance(130)  # 310 s after the first line
    assert throttle.failed(OP, 503) == Verdict(log=True, repeats=10, seconds=310.0)
    # The window starts again from the summary.
    clock.advance(100)
    assert throttle.failed(OP, 503).log is False
    clock.advance(100)
    assert throttle.failed(OP, 503).log is False
    clock.advance(101)
    assert throttle.failed(OP, 503) == Verdict(log=True, repeats=3, seconds=301.0)
    assert throttle.failures(OP) == 14


def test_each_distinct_failure_gets_its_own_first_line(throttle: LogThrottle, clock: FakeClock) -> None:
    assert throttle.failed(OP, (503, 0)).first
    assert throttle.failed(OP, (429, 0)).first
    assert not throttle.failed(OP, (503, 0)).log
    assert throttle.failed(("refresh", "voice"), (503, 0)).first  # another operation: its own streak
    assert throttle.failed(OP, (403, 50013)).first
    assert throttle.failures(OP) == 4


def test_success_ends_the_streak_and_says_how_long_it_was(throttle: LogThrottle) -> None:
    assert throttle.succeeded(OP) == 0  # nothing was failing: nothing to say
    for _ in range(5):
        throttle.failed(OP, 500)
    assert throttle.succeeded(OP) == 5
    assert throttle.succeeded(OP) == 0
    assert throttle.failed(OP, 500).first  # a new outage is told again


def test_a_lone_repeat_after_a_quiet_window_is_told_as_a_first_line(throttle: LogThrottle, clock: FakeClock) -> None:
    throttle.failed(OP, 403)
    clock.advance(900)  # a 15-minute back-off: nothing in between
    assert throttle.failed(OP, 403) == Verdict(log=True)
    clock.advance(10)
    assert throttle.failed(OP, 403).log is False


def test_the_number_of_tracked_streaks_is_capped(throttle: LogThrottle) -> None:
    for n in range(logthrottle.MAX_TRACKED + 10):
        throttle.failed(("announce", n), "x")
    assert throttle.failures(("announce", 0)) == 0  # the oldest were forgotten
    assert throttle.failures(("announce", logthrottle.MAX_TRACKED + 9)) == 1
    assert len(throttle._streaks) == logthrottle.MAX_TRACKED


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (45, "45 s"), (300, "5 min"), (3 * 3600, "3 h")])
def test_span_reads_like_a_person_would_say_it(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_report_failure_writes_one_line_then_one_summary_and_report_recovery_one_line(
    throttle: LogThrottle, clock: FakeClock, records: list[dict[str, Any]]
) -> None:
    for _ in range(20):
        report_failure(
            throttle, OP, 503, "could not update the board: 503", summary="could not update the board", board="messages"
        )
        clock.advance(16)
    assert [r["message"] for r in records] == [
        "could not update the board: 503",
        "could not update the board: still failing (19 more times in the last 5 min)",
    ]
    assert all(r["level"] == "WARNING" and r["extra"]["board"] == "messages" for r in records)
    assert records[1]["extra"]["repeats"] == 19 and records[1]["extra"]["failure"] == "503"
    assert records[0]["function"] == "test_report_failure_writes_one_line_then_one_summary_and_report_recovery_one_line"
    assert report_recovery(throttle, OP, "the board is updated again", board="messages") == 20
    assert records[-1]["message"] == "the board is updated again (recovered after 20 failures)"
    assert records[-1]["level"] == "INFO" and records[-1]["extra"]["failures"] == 20
    assert report_recovery(throttle, OP, "the board is updated again") == 0
    assert len(records) == 3  # no second recovery line


def test_a_traceback_goes_with_the_first_line_only(
    throttle: LogThrottle, clock: FakeClock, records: list[dict[str, Any]]
) -> None:
    try:
        raise KeyError("bug")
    except KeyError as error:
        caught = error
    report_failure(throttle, OP, "KeyError", "refresh failed", level="ERROR", exception=caught)
    clock.advance(10)
    report_failure(throttle, OP, "KeyError", "refresh failed", level="ERROR", exception=caught)
    clock.advance(400)
    report_failure(throttle, OP, "KeyError", "refresh failed", level="ERROR", exception=caught)
    assert [r["level"] for r in records] == ["ERROR", "ERROR"]
    assert records[0]["exception"] is not None and records[0]["exception"].type is KeyError
    assert records[1]["exception"] is None and "still failing (2 more times" in records[1]["message"]


def test_a_message_with_braces_is_written_as_it_is(throttle: LogThrottle, records: list[dict[str, Any]]) -> None:
    report_failure(throttle, OP, 400, "Discord answered 400 {'code': 50035}")
    assert records[0]["message"] == "Discord answered 400 {'code': 50035}"
