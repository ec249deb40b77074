"""Activity tracking: buffers message counts and voice time in memory and writes them in batches.

Everything here runs on the event loop (no locks needed for the in-memory state); the only
blocking work, the batch write, goes through ``Storage.run`` to the database thread.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from loguru import logger

from ..db import ActivityBatch, SeasonRoll, SessionClose, SessionOpen, Storage, repository
from .voice import VoiceDrain, VoicePresence, VoiceTracker, split_by_day, utc_day

Clock = Callable[[], float]
FlushListener = Callable[[ActivityBatch], Awaitable[None] | None]


class MessageGuard(Protocol):
    def allow(self, member_id: int) -> bool: ...


class ActivityService:
    def __init__(
        self,
        storage: Storage,
        *,
        guild_id: int,
        voice: VoiceTracker,
        guard: MessageGuard,
        clock: Clock = time.time,
        recovery_path: Path | None = None,
    ) -> None:
        self.storage = storage
        self.recovery_path = recovery_path
        self.guild_id = guild_id
        self.voice = voice
        self.guard = guard
        self.clock = clock
        self.season = 1
        self._messages: Counter[tuple[str, int]] = Counter()
        self._names: dict[int, tuple[str, str | None]] = {}
        self._known_names: dict[int, tuple[str, str | None]] = {}
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

    def remember_name(self, user_id: int, display_name: str, username: str | None) -> None:
        """Keep the latest name, written with the next flush only when it changed."""
        entry = (display_name, username)
        if self._known_names.get(user_id) != entry:
            self._known_names[user_id] = entry
            self._names[user_id] = entry

    def known_name(self, user_id: int) -> str | None:
        entry = self._known_names.get(user_id)
        return entry[0] if entry else None

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
        await self._recover_unsaved()
        closed = await self.storage.run(repository.close_orphan_sessions, self.guild_id)
        if closed:
            logger.info("closed {} voice session(s) left open by an unclean stop, at their last heartbeat", closed)
        return closed

    def quiescent(self) -> asyncio.Lock:
        """Hold this to read stored totals and the buffers together: no flush moves data between them."""
        return self._flush_lock

    async def flush(self, now: float | None = None, *, roll: SeasonRoll | None = None) -> bool:
        """Write everything buffered in one transaction. On failure the data goes back into the
        buffers and the next flush retries it: nothing counted is dropped. With ``roll``, the same
        transaction ends the season, and later activity belongs to the next one."""
        async with self._flush_lock:
            now = self.clock() if now is None else now
            messages, self._messages = self._messages, Counter()
            names, self._names = self._names, {}
            drained = self.voice.checkpoint(now)
            batch = self._batch(now, messages, drained, names)
            batch.roll = roll
            error, cancelled = await self._write(batch)
            if error is not None:
                self._messages.update(messages)
                self._names = {**names, **self._names}
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
            if roll is not None:
                self.season = roll.number + 1  # no await since the write: nothing can slip between
            if cancelled:
                raise asyncio.CancelledError
        for listener in self._listeners:
            try:
                result = listener(batch)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("flush listener failed")
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

    async def shutdown(self, *, attempts: int = 2, retry_delay: float = 0.5) -> bool:
        """Close voice sessions at shutdown time and flush, retrying a transient failure a few
        times. If the database stays unavailable, the data is saved to the recovery file and
        written at the next start; returns False so the process can say it did not stop cleanly."""
        now = self.clock()
        self.voice.stop_all(now)
        for attempt in range(1, attempts + 1):
            if await self.flush(now):
                return True
            if attempt < attempts:
                await asyncio.sleep(retry_delay)
        logger.error("could not write buffered activity at shutdown after {} attempts", attempts)
        self._save_unsaved(now)
        return False

    def _save_unsaved(self, now: float) -> None:
        if self.recovery_path is None:
            logger.error("no recovery file for an in-memory database: the unwritten activity is lost")
            return
        drained = self.voice.checkpoint(now)
        self.voice.restore(drained)  # the buffers stay as they are; only a copy goes to disk
        batch = self._batch(now, self._messages, drained, self._names)
        batch.recovery_id = uuid.uuid4().hex
        path = self.recovery_path
        if path.exists():  # an older file still waits (e.g. unreadable): never overwrite it
            path = path.with_name(f"{path.name.removesuffix('.json')}-{batch.recovery_id}.json")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(_batch_to_json(batch)))
            tmp.replace(path)  # atomic: never a half-written file
        except OSError as error:
            logger.error("could not save the unwritten activity to {}: {}", path, error)
            return
        logger.error(
            "saved {} unwritten message(s) and {:.0f}s of voice time to {}; they are written at the next start",
            sum(batch.messages.values()),
            sum(batch.voice.values()),
            path,
        )

    def _recovery_files(self) -> list[Path]:
        base = self.recovery_path
        if base is None or not base.parent.is_dir():
            return []
        return sorted(base.parent.glob(f"{base.name.removesuffix('.json')}*.json"))

    async def _recover_unsaved(self) -> None:
        for path in self._recovery_files():
            try:
                batch = _batch_from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as error:
                logger.error("could not read the recovery file {} ({}); it is left in place", path, error)
                continue
            if batch.guild_id != self.guild_id:
                logger.error("the recovery file {} belongs to guild {}; it is left in place", path, batch.guild_id)
                continue
            marker = f"recovered:{batch.recovery_id}"
            if not await self.storage.run(repository.get_setting, self.guild_id, marker):
                # The marker is written in the same transaction, so a crash before the unlink
                # below never applies the file twice.
                await self.storage.run(repository.apply_batch, batch)
                logger.info(
                    "wrote {} message(s) and {:.0f}s of voice time saved by an earlier shutdown",
                    sum(batch.messages.values()),
                    sum(batch.voice.values()),
                )
            path.unlink()

    def _batch(
        self,
        now: float,
        messages: Counter[tuple[str, int]],
        drained: VoiceDrain,
        names: dict[int, tuple[str, str | None]],
    ) -> ActivityBatch:
        voice: dict[tuple[str, int], float] = {}
        for interval in drained.intervals:
            for day, seconds in split_by_day(interval.start, interval.end):
                voice[(day, interval.user_id)] = voice.get((day, interval.user_id), 0.0) + seconds
        return ActivityBatch(
            guild_id=self.guild_id,
            season=self.season,
            heartbeat_at=now,
            messages=dict(messages),
            voice=voice,
            opened=list(drained.opened),
            closed=list(drained.closed),
            names=dict(names),
        )


# Recovery file format: plain JSON lists, versioned, so a later release can still read it.
_RECOVERY_VERSION = 1


def _batch_to_json(batch: ActivityBatch) -> dict[str, Any]:
    return {
        "version": _RECOVERY_VERSION,
        "guild_id": batch.guild_id,
        "season": batch.season,
        "heartbeat_at": batch.heartbeat_at,
        "messages": [[day, user, count] for (day, user), count in batch.messages.items()],
        "voice": [[day, user, seconds] for (day, user), seconds in batch.voice.items()],
        "opened": [[o.key, o.user_id, o.channel_id, o.started_at] for o in batch.opened],
        "closed": [[c.key, c.ended_at] for c in batch.closed],
        "names": [[user, display, username] for user, (display, username) in batch.names.items()],
        "recovery_id": batch.recovery_id,
    }


def _batch_from_json(data: dict[str, Any]) -> ActivityBatch:
    if data.get("version") != _RECOVERY_VERSION:
        raise ValueError(f"unknown recovery file version {data.get('version')!r}")
    return ActivityBatch(
        guild_id=int(data["guild_id"]),
        season=int(data["season"]),
        heartbeat_at=float(data["heartbeat_at"]),
        messages={(str(d), int(u)): int(n) for d, u, n in data["messages"]},
        voice={(str(d), int(u)): float(sec) for d, u, sec in data["voice"]},
        opened=[SessionOpen(str(k), int(u), int(c), float(t)) for k, u, c, t in data["opened"]],
        closed=[SessionClose(str(k), float(t)) for k, t in data["closed"]],
        names={int(u): (str(d), n) for u, d, n in data["names"]},
        recovery_id=str(data["recovery_id"]),
    )
