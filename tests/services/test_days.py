"""Calendar: instants to day names in UTC and in an IANA zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from leaderboard_bot.domain import days_between, shift_day
from leaderboard_bot.services.days import Calendar
from tests.factories import DAY, MIDNIGHT

UTC_DAYS = Calendar()
BERLIN = Calendar("Europe/Berlin")
HOUR = 3600.0


def at(text: str) -> float:
    """A UTC instant from ``YYYY-MM-DD HH:MM``."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


def test_utc_day_names() -> None:
    assert UTC_DAYS.day_of(0.0) == "1970-01-01"
    assert UTC_DAYS.day_of(DAY - 0.001) == "1970-01-01"
    assert UTC_DAYS.day_of(DAY) == "1970-01-02"
    assert UTC_DAYS.day_of(MIDNIGHT) == "2024-03-10"
    assert UTC_DAYS.day_of(MIDNIGHT - 1) == "2024-03-09"


def test_the_remembered_day_never_answers_for_another() -> None:
    calendar = Calendar()
    assert calendar.day_of(MIDNIGHT + 5) == "2024-03-10"
    assert calendar.day_of(MIDNIGHT - 5) == "2024-03-09"  # earlier than the remembered day
    assert calendar.day_of(MIDNIGHT + DAY) == "2024-03-11"
    assert calendar.span(MIDNIGHT + 1) == (MIDNIGHT, MIDNIGHT + DAY, "2024-03-10")


def test_split_within_one_day() -> None:
    assert UTC_DAYS.split(MIDNIGHT + 10, MIDNIGHT + 70) == [("2024-03-10", 60.0)]


def test_split_across_utc_midnight() -> None:
    assert UTC_DAYS.split(MIDNIGHT - 600, MIDNIGHT + 900) == [("2024-03-09", 600.0), ("2024-03-10", 900.0)]


def test_split_across_several_days() -> None:
    start, end = MIDNIGHT - 100.5, MIDNIGHT + 2 * DAY + 50.25
    parts = UTC_DAYS.split(start, end)
    assert parts == [("2024-03-09", 100.5), ("2024-03-10", DAY), ("2024-03-11", DAY), ("2024-03-12", 50.25)]
    assert sum(s for _, s in parts) == pytest.approx(end - start)


def test_split_starting_exactly_at_midnight() -> None:
    assert UTC_DAYS.split(MIDNIGHT, MIDNIGHT + DAY) == [("2024-03-10", DAY)]


@pytest.mark.parametrize(("start", "end"), [(MIDNIGHT, MIDNIGHT), (MIDNIGHT + 5, MIDNIGHT)])
def test_split_of_an_empty_or_reversed_range_is_empty(start: float, end: float) -> None:
    assert UTC_DAYS.split(start, end) == []


def test_a_zone_day_starts_at_local_midnight() -> None:
    # Berlin is UTC+1 in winter: its 5 January starts at 23:00 UTC on the 4th.
    assert BERLIN.day_of(at("2026-01-04 22:59")) == "2026-01-04"
    assert BERLIN.day_of(at("2026-01-04 23:00")) == "2026-01-05"
    assert BERLIN.day_start("2026-01-05") == at("2026-01-04 23:00")
    assert UTC_DAYS.day_of(at("2026-01-04 23:00")) == "2026-01-04"


def test_the_spring_forward_day_lasts_23_hours() -> None:
    # 29 March 2026: Berlin moves from UTC+1 to UTC+2 at 01:00 UTC.
    start, end, name = BERLIN.span(at("2026-03-29 12:00"))
    assert name == "2026-03-29"
    assert (start, end) == (at("2026-03-28 23:00"), at("2026-03-29 22:00"))
    assert end - start == 23 * HOUR


def test_the_fall_back_day_lasts_25_hours() -> None:
    # 25 October 2026: back from UTC+2 to UTC+1 at 01:00 UTC.
    start, end, name = BERLIN.span(at("2026-10-25 12:00"))
    assert name == "2026-10-25"
    assert (start, end) == (at("2026-10-24 22:00"), at("2026-10-25 23:00"))
    assert end - start == 25 * HOUR


def test_split_across_a_dst_change_gives_each_local_day_its_time() -> None:
    # From 22:00 Berlin time on the 28th (21:00 UTC) to 02:00 Berlin time on the 30th (00:00 UTC).
    parts = BERLIN.split(at("2026-03-28 21:00"), at("2026-03-30 00:00"))
    assert parts == [("2026-03-28", 2 * HOUR), ("2026-03-29", 23 * HOUR), ("2026-03-30", 2 * HOUR)]


def test_a_skipped_midnight_starts_the_day_at_the_first_local_time_that_exists() -> None:
    # America/Havana springs forward at midnight: 8 March 2026 has no 00:00-00:59.
    havana = Calendar("America/Havana")
    start = havana.day_start("2026-03-08")
    assert havana.day_of(start) == "2026-03-08"
    assert havana.day_of(start - 1) == "2026-03-07"


def test_day_arithmetic_crosses_months_and_leap_days() -> None:
    assert shift_day("2024-03-01", -1) == "2024-02-29"
    assert shift_day("2026-12-31", 1) == "2027-01-01"
    assert shift_day("2026-12-03", -29) == "2026-11-04"
    assert days_between("2024-02-28", "2024-03-01") == 2
