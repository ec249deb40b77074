"""Days as the server lives them: UTC by default, or the IANA zone of ``TIMEZONE``.

Activity is bucketed per day of this calendar (``YYYY-MM-DD``), and the day/week/month windows
are runs of those days. A local day starts at the first instant whose local date is that day, so
a day of a DST change lasts 23 or 25 hours (and where midnight itself is skipped, the day starts
at the first local time that exists). Days already written keep the zone they were written in.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ..domain import days_between, shift_day

__all__ = ["DAY_SECONDS", "UTC_CALENDAR", "Calendar", "days_between", "shift_day"]

DAY_SECONDS = 86_400  # POSIX time has no leap seconds: every UTC day is exactly this long


class Calendar:
    """Maps instants to day names and back. Remembers the last day it computed (the current
    one, nearly always), so the per-message lookup is two comparisons."""

    def __init__(self, zone: str | None = None) -> None:
        self.zone_name = zone or "UTC"
        self._zone = None if self.zone_name == "UTC" else ZoneInfo(self.zone_name)
        self._start = float("inf")
        self._end = float("-inf")
        self._name = ""

    @property
    def is_utc(self) -> bool:
        return self._zone is None

    def span(self, ts: float) -> tuple[float, float, str]:
        """The day holding ``ts``: (first instant, first instant of the next day, its name)."""
        if self._start <= ts < self._end:
            return self._start, self._end, self._name
        if self._zone is None:
            index = int(ts // DAY_SECONDS)
            start, end = float(index * DAY_SECONDS), float((index + 1) * DAY_SECONDS)
            name = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")
        else:
            local = datetime.fromtimestamp(ts, self._zone).date()
            start, end = self._midnight(local), self._midnight(local + timedelta(days=1))
            name = local.isoformat()
        self._start, self._end, self._name = start, end, name
        return start, end, name

    def day_of(self, ts: float) -> str:
        return self.span(ts)[2]

    def day_start(self, day: str) -> float:
        """The first instant of ``day``."""
        return self._midnight(date.fromisoformat(day))

    def _midnight(self, day: date) -> float:
        if self._zone is None:
            return datetime.combine(day, time(), UTC).timestamp()
        # fold=0: an ambiguous midnight is its first occurrence; a skipped one resolves to the
        # instant just after the gap, which is the first moment of that local date.
        return datetime.combine(day, time(), self._zone).timestamp()

    def split(self, start: float, end: float) -> list[tuple[str, float]]:
        """Seconds of [start, end) falling on each day."""
        out: list[tuple[str, float]] = []
        cursor = start
        while cursor < end:
            _, day_end, name = self.span(cursor)
            stop = min(end, day_end)
            out.append((name, stop - cursor))
            cursor = stop
        return out


UTC_CALENDAR = Calendar()
