"""The recovery file: what a shutdown could not write, saved beside the database and applied once.

Format: versioned JSON lists. Writing is atomic (a temporary file, then a rename), an existing
file is never overwritten, and files are applied in name order, each in the same transaction
as a marker that makes a second application a no-op.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loguru import logger

from ..db import Storage, repository
from ..domain import ActivityBatch, SessionClose, SessionOpen

FORMAT_VERSION = 1


def batch_to_json(batch: ActivityBatch) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
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


def batch_from_json(data: dict[str, Any]) -> ActivityBatch:
    if data.get("version") != FORMAT_VERSION:
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


class RecoveryFile:
    """``<database>.unsaved.json`` and, when that one still waits, ``<database>.unsaved-<id>.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, batch: ActivityBatch) -> Path | None:
        """Write ``batch`` (which must carry a ``recovery_id``) atomically; None when the disk refused."""
        path = self.path
        if path.exists():  # an older file still waits (e.g. unreadable): never overwrite it
            path = path.with_name(f"{path.name.removesuffix('.json')}-{batch.recovery_id}.json")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(batch_to_json(batch)))
            tmp.replace(path)  # atomic: never a half-written file
        except OSError as error:
            logger.error("could not save the unwritten activity to {}: {}", path, error)
            return None
        return path

    def files(self) -> list[Path]:
        base = self.path
        if not base.parent.is_dir():
            return []
        return sorted(base.parent.glob(f"{base.name.removesuffix('.json')}*.json"))

    async def apply_all(self, storage: Storage, guild_id: int) -> None:
        """Write every saved batch of ``guild_id`` into the database once, then remove its file.
        Unreadable files and other guilds' files are left in place, with one error line each."""
        for path in self.files():
            try:
                batch = batch_from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as error:
                logger.error("could not read the recovery file {} ({}); it is left in place", path, error)
                continue
            if batch.guild_id != guild_id:
                logger.error("the recovery file {} belongs to guild {}; it is left in place", path, batch.guild_id)
                continue
            marker = f"recovered:{batch.recovery_id}"
            if not await storage.run(repository.get_setting, guild_id, marker):
                # The marker is written in the same transaction, so a crash before the unlink
                # below never applies the file twice.
                await storage.run(repository.apply_batch, batch)
                logger.info(
                    "wrote {} message(s) and {:.0f}s of voice time saved by an earlier shutdown",
                    sum(batch.messages.values()),
                    sum(batch.voice.values()),
                )
            path.unlink()
