"""One bot per database: an OS lock on ``<database>.lock``, released by the kernel when the holder
exits in any way (even ``kill -9``), so a crashed instance never blocks a restart."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO


class AlreadyRunning(Exception):
    """Another process holds the lock; the message names it."""


class InstanceLock:
    def __init__(self, database_path: str) -> None:
        self.path = Path(f"{database_path}.lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open for as long as the lock is held
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise AlreadyRunning(
                f"another leaderboard-bot ({holder}) is already using {self.path.with_suffix('')}: both would count "
                "every message. Stop it first, or give this one its own DATABASE_URL"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the lock
            self._file = None


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        since = datetime.fromtimestamp(float(info["since"]), UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"pid {info['pid']} on {info['host']}, running since {since}"
    except (ValueError, KeyError, TypeError):
        return "a process whose details are unknown"
