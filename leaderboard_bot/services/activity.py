"""The activity buffer: counts messages and voice time in memory and writes them in batches.

Everything here runs on the event loop (no locks needed for the in-memory state); the only
blocking work, the batch write, goes through ``Storage.run`` to the database thread. Which
season a flush writes is not known here: the caller (the season owner) says so.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable

from loguru import logger

from ..db import Storage, repository
from ..domain import ActivityBatch, NameInfo, SeasonRoll
from .names import NameService
from .ratelimit import MessageGuard
from .recovery import RecoveryFile
from .voice import VoiceDrain, VoicePresence, VoiceTracker, split_by_day, utc_day

Clock = Callable[[], float]
SeasonNumber = Callable[[], int]  # the season owner's answer to "which season is it now?"
FlushListener = Callable[[ActivityBatch], None]  # runs inside the write lock: must not block


class ActivityService:
    def __init__(
        self,
        storage: Storage,
        *,
        guild_id: int,
        voice: VoiceTracker,
        guard: MessageGuard,
        names: NameService,
        clock: Clock = time.time,
        recovery: RecoveryFile | None = None,
    ) -> None:
        self.storage = storage
        self.recovery = recovery
        self.guild_id = guild_id
        self.voice = voice
        self.guard = guard
        self.names = names
        self.clock = clock
        self._messages: Counter[tuple[str, int]] = Counter()
        self._flush_lock = asyncio.Lock()
        self._listeners: list[FlushListener] = []
        self.flush_failures = 0
        self.messages_counted = 0
        self.last_flush_at: float | None = None

    # ------------------------------------------------------------------ recording

    def record_message(self, user_id: int, now: float | None = None) -> bool:
        """Count one message if the member's anti-spam bucket allows it."""
        if not self.guard.allow(user_id):
            return False
        now = self.clock() if now is None else now
        self._messages[(utc_day(now), user_id)] += 1
        self.messages_counted += 1
        return True

    def record_voice(self, user_id: int, presence: VoicePresence | None, now: float | None = None) -> None:
        self.voice.update(user_id, presence, self.clock() if now is None else now)

    def reconcile_voice(self, actual: dict[int, VoicePresence], gone_at: float | None = None) -> None:
        self.voice.reconcile(actual, self.clock(), gone_at)

    def suspend_voice(self) -> None:
        """Contact with Discord is lost: the gap is never credited (see VoiceTracker.suspend)."""
        self.voice.suspend(self.clock())

    def pending_messages(self, user_id: int) -> int:
        return sum(n for (_, user), n in self._messages.items() if user == user_id)

    def unflushed_voice_seconds(self, user_id: int) -> float:
        return self.voice.unflushed_seconds(user_id, self.clock())

    def live_session_seconds(self, user_id: int) -> float | None:
        return self.voice.session_seconds(user_id, self.clock())

    def add_flush_listener(self, listener: FlushListener) -> None:
        self._listeners.append(listener)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Write what a failed shutdown saved to disk, then close sessions a crash left open (at
        their heartbeat, so downtime is never credited)."""
        if self.recovery is not None:
            await self.recovery.apply_all(self.storage, self.guild_id)
        closed = await self.storage.run(repository.close_orphan_sessions, self.guild_id)
        if closed:
            logger.info("closed {} voice session(s) left open by an unclean stop, at their last heartbeat", closed)
        return closed

    def quiescent(self) -> asyncio.Lock:
        """Hold this to read stored totals and the buffers together, or to write with
        :meth:`write_locked`: no flush moves data between them meanwhile."""
        return self._flush_lock

    async def flush(self, season: SeasonNumber, now: float | None = None) -> bool:
        """Write everything buffered into the season ``season()`` names at the moment of writing
        (asked under the lock, so a season ending meanwhile is never written into)."""
        async with self._flush_lock:
            return await self.write_locked(season(), now)

    async def write_locked(self, season: int, now: float | None = None, *, roll: SeasonRoll | None = None) -> bool:
        """Write everything buffered into ``season`` in one transaction; the caller holds
        :meth:`quiescent`. On failure the data goes back into the buffers and the next flush
        retries it: nothing counted is dropped. With ``roll``, the same transaction ends the
        season, and the caller moves on to the next one before releasing the lock."""
        now = self.clock() if now is None else now
        messages, self._messages = self._messages, Counter()
        names = self.names.take_unwritten()
        drained = self.voice.checkpoint(now)
        batch = self._batch(season, now, messages, drained, names)
        batch.roll = roll
        error, cancelled = await self._write(batch)
        if error is not None:
            self._messages.update(messages)
            self.names.restore_unwritten(names)
            self.voice.restore(drained)
            self.flush_failures += 1
            logger.warning(
                "could not write activity ({}: {}); keeping {} buffered message(s) and retrying next flush",
                type(error).__name__,
                error,
                sum(messages.values()),
            )
            if cancelled:
                raise asyncio.CancelledError
            return False
        self.last_flush_at = now
        for listener in self._listeners:
            try:
                listener(batch)
            except Exception:
                logger.exception("flush listener failed")
        if cancelled:
            raise asyncio.CancelledError
        return True

    async def _write(self, batch: ActivityBatch) -> tuple[BaseException | None, bool]:
        """Run the batch write to its end even if the caller is cancelled meanwhile (a task loop
        being stopped): the data is already out of the buffers, so the outcome must be known."""
        write = asyncio.ensure_future(self.storage.run(repository.apply_batch, batch))
        cancelled = False
        while not write.done():
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                cancelled = True
            except Exception:
                break
        if write.cancelled():
            return asyncio.CancelledError("the database write was cancelled"), cancelled
        return write.exception(), cancelled

    async def shutdown(self, season: SeasonNumber, *, attempts: int = 2, retry_delay: float = 0.5) -> bool:
        """Close voice sessions at shutdown time and flush, retrying a transient failure a few
        times. If the database stays unavailable, the data is saved to the recovery file and
        written at the next start; returns False so the process can say it did not stop cleanly."""
        now = self.clock()
        self.voice.stop_all(now)
        for attempt in range(1, attempts + 1):
            if await self.flush(season, now):
                return True
            if attempt < attempts:
                await asyncio.sleep(retry_delay)
        logger.error("could not write buffered activity at shutdown after {} attempts", attempts)
        self._save_unsaved(season(), now)
        return False

    def _save_unsaved(self, season: int, now: float) -> None:
        if self.recovery is None:
            logger.error("no recovery file for an in-memory database: the unwritten activity is lost")
            return
        drained = self.voice.checkpoint(now)
        self.voice.restore(drained)  # the buffers stay as they are; only a copy goes to disk
        batch = self._batch(season, now, self._messages, drained, self.names.unwritten())
        batch.recovery_id = uuid.uuid4().hex
        path = self.recovery.save(batch)
        if path is not None:
            logger.error(
                "saved {} unwritten message(s) and {:.0f}s of voice time to {}; they are written at the next start",
                sum(batch.messages.values()),
                sum(batch.voice.values()),
                path,
            )

    def _batch(
        self,
        season: int,
        now: float,
        messages: Counter[tuple[str, int]],
        drained: VoiceDrain,
        names: dict[int, NameInfo],
    ) -> ActivityBatch:
        voice: dict[tuple[str, int], float] = {}
        for interval in drained.intervals:
            for day, seconds in split_by_day(interval.start, interval.end):
                voice[(day, interval.user_id)] = voice.get((day, interval.user_id), 0.0) + seconds
        return ActivityBatch(
            guild_id=self.guild_id,
            season=season,
            heartbeat_at=now,
            messages=dict(messages),
            voice=voice,
            opened=list(drained.opened),
            closed=list(drained.closed),
            names=dict(names),
        )
