"""The recovery file: what could not be written yet, kept on disk so that a crash loses nothing.

While the database refuses writes (and at every stop that cannot reach it), the activity
service saves everything unwritten here, rewriting one file per process atomically (a
temporary file, then a rename). The file holds numbered parts; the database stores the
highest write number it committed, so at the next start each part is applied exactly once,
whatever happened in between: a part whose number is not above the stored one is already in.

When the in-memory buffer reaches its bound during a long outage, its oldest rows are *spilled*:
moved out of memory into a part of their own (``"spilled": true``) in the same file, under a write
number of their own. Every later rewrite carries the spilled parts over from the file (they are not
kept in memory), and the running process writes them, in number order, before anything newer once
the database accepts writes again. Keeping them in the one atomically replaced file is what keeps
the numbering exact: a part never exists in two files under two numbers.

Format 2 (current): ``{"version": 2, "written_at", "pid", "parts": [batch, ...]}``, each batch
with its ``sequence``. Format 1 (one batch, an applied-marker by id) is still read.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from ..db import Storage, repository
from ..domain import ActivityBatch, SeasonRoll, SessionClose, SessionOpen
from ..worker import DaemonWorker

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def batch_to_json(batch: ActivityBatch) -> dict[str, Any]:
    roll = batch.roll
    return {
        "guild_id": batch.guild_id,
        "season": batch.season,
        "heartbeat_at": batch.heartbeat_at,
        "messages": [[day, user, count] for (day, user), count in batch.messages.items()],
        "voice": [[day, user, seconds] for (day, user), seconds in batch.voice.items()],
        "opened": [[o.key, o.user_id, o.channel_id, o.started_at] for o in batch.opened],
        "closed": [[c.key, c.ended_at] for c in batch.closed],
        "names": [[user, display, username] for user, (display, username) in batch.names.items()],
        "roll": None if roll is None else [roll.number, roll.ended_at, roll.period, roll.next_starts_at],
        "sequence": batch.sequence,
        "recovery_id": batch.recovery_id,
    }


def spilled_to_json(batch: ActivityBatch) -> dict[str, Any]:
    return batch_to_json(batch) | {"spilled": True}


def batch_from_json(data: dict[str, Any]) -> ActivityBatch:
    roll = data.get("roll")
    sequence = data.get("sequence")
    return ActivityBatch(
        guild_id=int(data["guild_id"]),
        season=int(data["season"]),
        heartbeat_at=float(data["heartbeat_at"]),
        messages={(str(d), int(u)): int(n) for d, u, n in data["messages"]},
        voice={(str(d), int(u)): float(sec) for d, u, sec in data["voice"]},
        opened=[SessionOpen(str(k), int(u), int(c), float(t)) for k, u, c, t in data["opened"]],
        closed=[SessionClose(str(k), float(t)) for k, t in data["closed"]],
        names={int(u): (str(d), n) for u, d, n in data["names"]},
        roll=None if roll is None else _roll(roll),
        sequence=None if sequence is None else int(sequence),
        recovery_id=None if data.get("recovery_id") is None else str(data["recovery_id"]),
    )


def _roll(data: list[Any]) -> SeasonRoll:
    next_start = data[3] if len(data) > 3 else None
    return SeasonRoll(int(data[0]), float(data[1]), float(data[2]), None if next_start is None else float(next_start))


class UnreadableRecoveryFile(Exception):
    def __init__(self, path: Path, error: BaseException) -> None:
        if isinstance(error, OSError):
            fix = "Fix its permissions (it must be readable by the bot's user) and start again"
        else:  # cut short (a full disk, a copy interrupted) or edited by hand
            fix = "It is damaged (not the JSON the bot writes): restore it from a backup and start again"
        super().__init__(
            f"cannot read the recovery file {path} ({error}): it holds counts not yet written. {fix}, or move "
            "it away to give those counts up"
        )
        self.path = path


@dataclass
class SavedFile:
    path: Path
    written_at: float
    parts: list[ActivityBatch]


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def read_file(path: Path) -> SavedFile:
    data = json.loads(path.read_text())
    version = data.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"unknown recovery file version {version!r}")
    if version == 1:
        return SavedFile(path, path.stat().st_mtime, [batch_from_json(data)])
    return SavedFile(path, float(data["written_at"]), [batch_from_json(part) for part in data["parts"]])


class RecoveryFile:
    """``<database>.unsaved-<started>-<pid>.json``, one per process; all of them are read at start."""

    def __init__(self, path: Path, *, clock: Any = time.time, also: tuple[Path, ...] = ()) -> None:
        self.path = path  # the base name: <database>.unsaved.json
        self.also = also  # other base names read at start (where an earlier version saved them)
        self.clock = clock
        started = datetime.fromtimestamp(clock(), UTC).strftime("%Y%m%dT%H%M%S")
        self.own_path = path.with_name(f"{path.name.removesuffix('.json')}-{started}-{os.getpid()}.json")
        self._worker: DaemonWorker | None = None
        self.save_failing = False
        self.holds_spilled = False  # whether the file has spilled parts to carry over

    @property
    def worker(self) -> DaemonWorker:
        # File writes get their own thread: a slow disk must not stall the loop, and the
        # database thread may be stuck in a busy wait exactly when a save is needed.
        if self._worker is None:
            self._worker = DaemonWorker("leaderboard-recovery")
        return self._worker

    # ------------------------------------------------------------------ writing (on the worker)

    def write(
        self,
        parts: list[ActivityBatch],
        spilled: list[ActivityBatch] | None = None,
        committed: int = 0,
        season: int | None = None,
    ) -> None:
        """Replace this process's file with ``parts`` and ``spilled``, atomically (blocking; raises
        OSError). Spilled parts already in the file are carried over unless the database has them
        (number up to ``committed``) or a new part has the same number, filed under ``season``:
        they are always written before anything newer, so they belong where the rest does (a roll
        that failed after they were spilled leaves them in the season it did not end)."""
        new_spilled = [spilled_to_json(part) for part in spilled or []]
        numbers = {part.sequence for part in parts} | {part["sequence"] for part in new_spilled}
        carried = [
            part for part in self._spilled_in_file() if part["sequence"] > committed and part["sequence"] not in numbers
        ]
        if season is not None:
            for part in carried + new_spilled:
                part["season"] = season
        payload: dict[str, Any] = {"version": FORMAT_VERSION, "written_at": self.clock(), "pid": os.getpid()}
        payload["parts"] = carried + new_spilled + [batch_to_json(part) for part in parts]
        self.own_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.own_path.with_name(self.own_path.name + ".tmp")
        try:
            with open(tmp, "w") as handle:
                json.dump(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())  # the rename must never expose an empty file after a power cut
            tmp.replace(self.own_path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self.holds_spilled = bool(carried or new_spilled)

    def _spilled_in_file(self) -> list[dict[str, Any]]:
        if not self.holds_spilled or not self.own_path.exists():
            return []
        data = json.loads(self.own_path.read_text())
        return [part for part in data["parts"] if part.get("spilled")]

    def read_spilled(self, sequence: int) -> ActivityBatch | None:
        """The spilled part numbered ``sequence`` (blocking), None if the file no longer has it."""
        for part in self._spilled_in_file():
            if part["sequence"] == sequence:
                return batch_from_json(part)
        return None

    def discard(self) -> None:
        """Everything in this process's file is in the database now (blocking)."""
        self.own_path.unlink(missing_ok=True)
        self.holds_spilled = False

    async def save(
        self,
        parts: list[ActivityBatch],
        spilled: list[ActivityBatch] | None = None,
        committed: int = 0,
        season: int | None = None,
    ) -> bool:
        """Write ``parts`` (and newly ``spilled`` ones) off the loop. On failure (a full disk) says
        so once, until it works again."""
        try:
            await self.worker.run(lambda: self.write(parts, spilled, committed, season))
        except OSError as error:
            if not self.save_failing:
                logger.error(
                    "cannot save the unwritten counts to {} ({}); if the bot stops or is killed before the "
                    "database is writable again, they are lost. Free disk space or fix the folder's permissions",
                    self.own_path,
                    error.strerror or error,
                )
            self.save_failing = True
            return False
        if self.save_failing:
            logger.info("the unwritten counts are saved to {} again", self.own_path)
        self.save_failing = False
        return True

    async def load_spilled(self, sequence: int) -> ActivityBatch | None:
        return await self.worker.run(lambda: self.read_spilled(sequence))

    async def clear(self) -> None:
        try:
            await self.worker.run(self.discard)
        except OSError as error:
            # Harmless: the parts in it are numbered, so the next start skips them.
            logger.warning("could not remove {}: {}", self.own_path, error)

    # ------------------------------------------------------------------ reading (at start)

    def files(self) -> list[Path]:
        found: dict[Path, Path] = {}
        for base in (self.path, *self.also):
            if base.parent.is_dir():
                for file in base.parent.glob(f"{base.name.removesuffix('.json')}*.json"):
                    if file.is_file():
                        found.setdefault(file.resolve(), file)
        return list(found.values())

    async def apply_all(self, storage: Storage, guild_id: int) -> int:
        """Write every saved part of ``guild_id`` not yet in the database, once, in the order the
        parts were written, then remove the files. Unreadable files and other guilds' files are
        left in place, with one error line each. Returns the highest write number stored."""
        saved: list[SavedFile] = []
        # On the worker: a file spilled during a long outage is many MB of JSON, and a standby
        # taking over reads it while connected to Discord (the loop must keep its heartbeat).
        for path in await self.worker.run(self.files):
            try:
                saved.append(await self.worker.run(functools.partial(read_file, path)))
            except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
                # Starting anyway would reuse its write numbers, and its counts could never be
                # applied later: stop, and say what to do.
                raise UnreadableRecoveryFile(path, error) from None
        saved.sort(key=lambda f: f.written_at)
        stored = int(await storage.run(repository.get_setting, guild_id, repository.WRITE_SEQUENCE_KEY, 0))
        messages = seconds = skipped_messages = skipped_seconds = 0.0
        done: list[Path] = []
        for file in saved:
            if any(part.guild_id != guild_id for part in file.parts):
                logger.error("the recovery file {} belongs to another guild; it is left in place", file.path)
                continue
            for part in sorted(file.parts, key=lambda p: p.sequence or 0):
                if part.sequence is not None:
                    if part.sequence <= stored:  # written before the stop, or covered by a later write
                        skipped_messages += sum(part.messages.values())
                        skipped_seconds += sum(part.voice.values())
                        continue
                    stored = part.sequence
                elif part.recovery_id is not None and await storage.run(
                    repository.get_setting, guild_id, f"recovered:{part.recovery_id}"
                ):
                    continue
                # The write number (or format 1's marker) is stored in the same transaction,
                # so a crash before the unlink below never applies a part twice.
                await storage.run(repository.apply_batch, part)
                messages += sum(part.messages.values())
                seconds += sum(part.voice.values())
            done.append(file.path)
        await self.worker.run(lambda: _remove(done))
        if done:
            logger.info(
                "wrote {:.0f} message(s) and {:.0f}s of voice time saved before the last stop ({} file(s))",
                messages,
                seconds,
                len(done),
            )
        if skipped_messages or skipped_seconds:
            # Not told apart from here: written by the stopped instance just before it stopped, or
            # dropped because another instance took the lease meanwhile (see services/lease.py).
            logger.info(
                "skipped {:.0f} message(s) and {:.0f}s of voice time saved before the last stop: the database "
                "already holds writes past their number (written before the stop, or by an instance that "
                "took over meanwhile)",
                skipped_messages,
                skipped_seconds,
            )
        return stored
