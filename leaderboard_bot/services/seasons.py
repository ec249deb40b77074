"""The one owner of the current season: which it is, when it ends, and ending it.

The leaderboards restart every RESET_PERIOD. The clock is stored in the database, so restarts
never move the reset, and a bot that was down at reset time resets when it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from loguru import logger

from ..db import Storage, repository
from ..domain import SeasonRoll
from .activity import ActivityService
from .settings import RuntimeSettings

Clock = Callable[[], float]
RollListener = Callable[["SeasonInfo", "SeasonInfo"], Awaitable[None] | None]
FINISHED_AT_MOST = 1_000  # finished seasons kept in the list (83 years of 30-day seasons)


@dataclass(frozen=True)
class SeasonInfo:
    number: int
    started_at: float
    ends_at: float
    ended_at: float | None = None


def next_boundary(ends_at: float, period: float, now: float) -> float:
    """The latest scheduled season boundary not after ``now`` (``ends_at`` itself when on time)."""
    if now <= ends_at:
        return ends_at
    return ends_at + ((now - ends_at) // period) * period


def _info(row: object) -> SeasonInfo:
    return SeasonInfo(
        number=int(row.number),  # type: ignore[attr-defined]
        started_at=float(row.started_at),  # type: ignore[attr-defined]
        ends_at=float(row.ends_at),  # type: ignore[attr-defined]
        ended_at=None if row.ended_at is None else float(row.ended_at),  # type: ignore[attr-defined]
    )


class SeasonService:
    def __init__(
        self, storage: Storage, activity: ActivityService, settings: RuntimeSettings, *, clock: Clock = time.time
    ) -> None:
        self.storage = storage
        self.activity = activity
        self.settings = settings
        self.clock = clock
        self.current = SeasonInfo(number=1, started_at=clock(), ends_at=clock() + self.period)
        self._lock = asyncio.Lock()
        self._listeners: list[RollListener] = []
        self._finished: list[SeasonInfo] | None = None  # newest first; the archive only grows at a roll
        # Time in voice past the season's end is the next season's (credited once the reset ran).
        self._ending_at: float | None = None  # a reset under way: where its season ends
        activity.season_end = lambda: self.current.ends_at if self._ending_at is None else self._ending_at

    @property
    def period(self) -> float:
        return self.settings.current.reset_period

    def current_number(self) -> int:
        """The season buffered activity belongs to (what a flush writes into)."""
        return self.current.number

    async def flush(self, now: float | None = None) -> bool:
        """Write buffered activity into the current season."""
        return await self.activity.flush(self.current_number, now)

    def add_roll_listener(self, listener: RollListener) -> Callable[[], None]:
        """Call ``listener(finished, current)`` after each roll; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def load(self) -> SeasonInfo:
        """Open (or create) the current season."""
        guild_id = self.activity.guild_id
        row = await self.storage.run(repository.ensure_season, guild_id, self.clock(), self.period)
        info = _info(row)
        if abs(info.ends_at - (info.started_at + self.period)) > 1e-6:
            # RESET_PERIOD was changed: the running season follows the new length.
            ends_at = info.started_at + self.period
            await self.storage.run(repository.set_season_end, guild_id, info.number, ends_at)
            when = datetime.fromtimestamp(ends_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            logger.info("season {} now ends at {} (RESET_PERIOD changed)", info.number, when)
            info = SeasonInfo(info.number, info.started_at, ends_at)
        self.current = info
        return info

    def is_due(self, now: float | None = None) -> bool:
        return (self.clock() if now is None else now) >= self.current.ends_at

    async def roll(
        self,
        *,
        reason: str,
        now: float | None = None,
        only_if_due: bool = False,
        expected: int | None = None,
        by: int | None = None,
    ) -> SeasonInfo | None:
        """End the current season now: write everything up to now into it (voice in progress is
        split here), archive it and open the next, all in one transaction. Returns the finished
        season, or None when nothing changed: the write failed (the caller retries later), or the
        season was no longer due / no longer ``expected`` because another reset won the race.
        ``by`` is the member who asked for a manual reset (None: the season's time was up)."""
        started = time.perf_counter()
        async with self._lock, self.activity.quiescent():
            now = self.clock() if now is None else now
            finished = self.current
            if (only_if_due and not self.is_due(now)) or (expected is not None and expected != finished.number):
                return None
            period = self.period
            # A scheduled reset keeps the cadence: the next season starts at the boundary it was
            # due on (the latest one passed, after a long downtime), not when this check ran.
            # A manual reset starts the next season now.
            start = next_boundary(finished.ends_at, period, now) if only_if_due else now
            # A scheduled reset ended the season at its boundary, however late it ran (the bot down,
            # the database locked): the seasons' dates never overlap, and time in voice since the
            # boundary counts in the next season (ActivityService credits none past it here).
            # Messages and finished visits since then are in this write: kept per day, not second.
            ended_at = finished.ends_at if only_if_due else now
            roll = SeasonRoll(number=finished.number, ended_at=ended_at, period=period, next_starts_at=start)
            self._ending_at = ended_at  # (a manual reset of an overdue season ends it now)
            try:
                written = await self.activity.write_locked(finished.number, now, roll=roll)
            except asyncio.CancelledError:
                # Cancelled (a stop) after the roll's own write committed: the season did end
                # (not after a spilled part written before it: the season is still open then).
                if self.activity.committed_roll is roll:
                    self.current = SeasonInfo(number=finished.number + 1, started_at=start, ends_at=start + period)
                    self._finished = None
                raise
            finally:
                self._ending_at = None
            if not written:
                return None
            # Still under the write lock: no flush can write into the finished season after this.
            self.current = SeasonInfo(number=finished.number + 1, started_at=start, ends_at=start + period)
            self._finished = None
            finished = SeasonInfo(finished.number, finished.started_at, finished.ends_at, ended_at=ended_at)
            seconds = time.perf_counter() - started
            # The one line per reset, with its duration (waiting for writes in flight included).
            logger.bind(
                guild_id=self.activity.guild_id,
                finished_season=finished.number,
                season=self.current.number,
                trigger="automatic" if by is None else "manual",
                user_id=by,
                duration_ms=round(seconds * 1000, 1),
            ).info(
                "season reset: season {} ended ({}); season {} started; took {:.0f} ms",
                finished.number,
                reason,
                self.current.number,
                seconds * 1000,
            )
        for listener in self._listeners:
            try:
                result = listener(finished, self.current)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("season roll listener failed")
        return finished

    async def finished(self) -> list[SeasonInfo]:
        """Every finished season, newest first (read once, then again after each roll)."""
        if self._finished is None:
            rows = await self.storage.read(repository.finished_seasons, self.activity.guild_id, FINISHED_AT_MOST)
            self._finished = [SeasonInfo(n, started, ended, ended) for n, started, ended in rows]
        return self._finished

    async def finished_season(self, number: int) -> SeasonInfo | None:
        return next((s for s in await self.finished() if s.number == number), None)

    async def unannounced(self) -> list[SeasonInfo]:
        """Finished seasons whose final standings were not posted yet (e.g. a crash mid-reset)."""
        rows = await self.storage.run(repository.unannounced_seasons, self.activity.guild_id)
        return [_info(r) for r in rows]

    async def mark_announced(self, number: int) -> None:
        await self.storage.run(repository.mark_season_announced, self.activity.guild_id, number)
