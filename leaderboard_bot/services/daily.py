"""A member's activity per day over a run of days (the ``/stats`` chart): the stored daily buckets
plus what is counted today and not written yet, so the chart agrees with the figures beside it.

Which days a chart covers (:func:`chart_days`): a window's own days (today; the last 7 or 30 days,
today included), a finished season's days (its last ``MAX_DAYS`` at most), and otherwise (the
running season, all time) the last ``DEFAULT_DAYS`` days.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..db import Storage, repository
from ..domain import TODAY, days_between, shift_day
from .activity import ActivityService

DEFAULT_DAYS = 30
MAX_DAYS = 120  # a longer finished season shows its last 120 days
READS = 3  # a write committing during the read makes it read again; after this many, no chart


@dataclass(frozen=True)
class DailySeries:
    """One value per day, oldest first."""

    days: tuple[str, ...]
    messages: tuple[int, ...]
    voice_seconds: tuple[float, ...]

    @property
    def total_messages(self) -> int:
        return sum(self.messages)

    @property
    def total_voice_seconds(self) -> float:
        return sum(self.voice_seconds)


def day_run(last: str, count: int) -> list[str]:
    """``count`` days ending with ``last``, oldest first."""
    return [shift_day(last, offset) for offset in range(1 - count, 1)]


def chart_days(today: str, *, window_days: int | None = None, season: tuple[str, str] | None = None) -> list[str]:
    """The days a chart covers: a rolling window's (``window_days`` ending today), a finished
    ``season``'s (first day, last day; its last MAX_DAYS), or else the last DEFAULT_DAYS."""
    if season is not None:
        first, last = season
        return day_run(last, max(1, min(days_between(first, last) + 1, MAX_DAYS)))
    return day_run(today, min(window_days or DEFAULT_DAYS, MAX_DAYS))


async def member_days(storage: Storage, activity: ActivityService, user_id: int, days: list[str]) -> DailySeries | None:
    """The member's messages and voice seconds on each of ``days``: the stored buckets, and on
    today (if among them) the counts the database does not hold yet, exactly once (one snapshot
    and what it lacks, like the live standings). None when writes kept committing under the read."""
    today = activity.calendar.day_of(activity.clock())
    for _ in range(READS):
        unwritten = activity.unwritten(TODAY.scope) if today in days else None
        sequence, stored = await storage.read(repository.member_days_at, activity.guild_id, user_id, days)
        extra = (0, 0.0)
        if unwritten is not None:
            deltas = unwritten.beyond(sequence)
            if deltas is None:
                continue  # a write committed after the capture: read again
            extra = deltas.get(user_id, (0, 0.0))
        messages: list[int] = []
        voice: list[float] = []
        for day in days:
            count, seconds = stored.get(day, (0, 0.0))
            if day == today:
                count, seconds = count + extra[0], seconds + extra[1]
            messages.append(count)
            voice.append(seconds)
        return DailySeries(tuple(days), tuple(messages), tuple(voice))
    return None
