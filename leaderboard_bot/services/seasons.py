"""Seasons: the leaderboards restart every RESET_PERIOD. The clock is stored in the database, so
restarts never move the reset, and a bot that was down at reset time resets when it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger

from ..db import SeasonRoll, Storage, repository
from .activity import ActivityService

Clock = Callable[[], float]
RollListener = Callable[["SeasonInfo", "SeasonInfo"], Awaitable[None] | None]


@dataclass(frozen=True)
class SeasonInfo:
    number: int
    started_at: float
    ends_at: float
    ended_at: float | None = None


def _info(row: object) -> SeasonInfo:
    return SeasonInfo(
        number=int(row.number),  # type: ignore[attr-defined]
        started_at=float(row.started_at),  # type: ignore[attr-defined]
        ends_at=float(row.ends_at),  # type: ignore[attr-defined]
        ended_at=None if row.ended_at is None else float(row.ended_at),  # type: ignore[attr-defined]
    )


class SeasonService:
    def __init__(self, storage: Storage, tracker: ActivityService, *, period: float, clock: Clock = time.time) -> None:
        self.storage = storage
        self.tracker = tracker
        self.period = period
        self.clock = clock
        self.current = SeasonInfo(number=1, started_at=clock(), ends_at=clock() + period)
        self._lock = asyncio.Lock()
        self._listeners: list[RollListener] = []

    def add_roll_listener(self, listener: RollListener) -> None:
        self._listeners.append(listener)

    async def load(self) -> SeasonInfo:
        """Open (or create) the current season and point the tracker at it."""
        row = await self.storage.run(repository.ensure_season, self.tracker.guild_id, self.clock(), self.period)
        info = _info(row)
        if abs(info.ends_at - (info.started_at + self.period)) > 1e-6:
            # RESET_PERIOD was changed: the running season follows the new length.
            ends_at = info.started_at + self.period
            await self.storage.run(repository.set_season_end, self.tracker.guild_id, info.number, ends_at)
            logger.info("season {} now ends at {} (RESET_PERIOD changed)", info.number, ends_at)
            info = SeasonInfo(info.number, info.started_at, ends_at)
        self.current = info
        self.tracker.season = info.number
        return info

    def is_due(self, now: float | None = None) -> bool:
        return (self.clock() if now is None else now) >= self.current.ends_at

    async def roll(
        self, *, reason: str, now: float | None = None, only_if_due: bool = False, expected: int | None = None
    ) -> SeasonInfo | None:
        """End the current season now: write everything up to now into it (voice in progress is
        split here), archive it and open the next, all in one transaction. Returns the finished
        season, or None when nothing changed: the write failed (the caller retries later), or the
        season was no longer due / no longer ``expected`` because another reset won the race."""
        async with self._lock:
            now = self.clock() if now is None else now
            finished = self.current
            if (only_if_due and not self.is_due(now)) or (expected is not None and expected != finished.number):
                return None
            roll = SeasonRoll(number=finished.number, ended_at=now, period=self.period)
            if not await self.tracker.flush(now, roll=roll):
                return None
            self.current = SeasonInfo(number=finished.number + 1, started_at=now, ends_at=now + self.period)
            finished = SeasonInfo(finished.number, finished.started_at, finished.ends_at, ended_at=now)
            logger.info("season {} ended ({}); season {} started", finished.number, reason, self.current.number)
        for listener in self._listeners:
            try:
                result = listener(finished, self.current)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("season roll listener failed")
        return finished

    async def unannounced(self) -> list[SeasonInfo]:
        """Finished seasons whose final standings were not posted yet (e.g. a crash mid-reset)."""
        rows = await self.storage.run(repository.unannounced_seasons, self.tracker.guild_id)
        return [_info(r) for r in rows]

    async def mark_announced(self, number: int) -> None:
        await self.storage.run(repository.mark_season_announced, self.tracker.guild_id, number)
