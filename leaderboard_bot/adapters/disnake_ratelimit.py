"""Cut a refresh short when disnake announces a long rate-limit sleep, so the board backs off.

disnake sleeps through every 429, even one asking to wait an hour (Discord's edit limit 30046),
and offers no hook for it. This adapter reads two private details of ``disnake.http``: the log
line ``HTTPClient.request`` writes before sleeping, and the ``_global_over`` event it clears
during a global limit. Both are checked against the installed disnake by a canary test. When
unsure (the text changed, the flag is missing), it never cancels anything: the caller's own
timeout still bounds the refresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

DISNAKE_HTTP_LOGGER = "disnake.http"
RATE_LIMIT_LOG_PREFIX = "We are being rate limited"
GLOBAL_FLAG_ATTRIBUTE = "_global_over"

GlobalLimitCheck = Callable[[], bool]  # True only when sure that no global limit is in force


def _global_flag(http: Any) -> bool | None:
    """disnake's ``_global_over`` event: set (True) when no global limit is in force, None if absent."""
    is_set = getattr(getattr(http, GLOBAL_FLAG_ATTRIBUTE, None), "is_set", None)
    return bool(is_set()) if callable(is_set) else None


def no_global_limit(http: Any) -> bool:
    """True only when sure that no global limit is in force (False when unsure: never cancel)."""
    return _global_flag(http) is True


def global_limit_in_force(http: Any) -> bool:
    """True only when sure that disnake is waiting out a global limit."""
    return _global_flag(http) is False


class RateLimitWatch(logging.Filter):
    """Spots disnake announcing a sleep longer than ``long_wait`` inside a watched task, and
    cancels that task. A global limit is never cut short: disnake only lifts its global lock
    after that sleep, and a cancelled sleeper would leave every later request waiting."""

    def __init__(self, *, long_wait: float, no_global_limit: GlobalLimitCheck) -> None:
        super().__init__()
        self.long_wait = long_wait
        self._no_global_limit = no_global_limit
        self._watched: set[asyncio.Future[Any]] = set()
        self._long_waits: dict[asyncio.Future[Any], float] = {}
        self._installed = False

    # ------------------------------------------------------------------ lifecycle

    def install(self) -> None:
        """Start listening to disnake's HTTP log (idempotent: a reload never stacks filters)."""
        if not self._installed:
            logging.getLogger(DISNAKE_HTTP_LOGGER).addFilter(self)
            self._installed = True

    def uninstall(self) -> None:
        logging.getLogger(DISNAKE_HTTP_LOGGER).removeFilter(self)
        self._installed = False
        self._watched.clear()
        self._long_waits.clear()

    @property
    def installed(self) -> bool:
        return self._installed

    # ------------------------------------------------------------------ tasks

    def watch(self, task: asyncio.Future[Any]) -> None:
        self._watched.add(task)

    def pop(self, task: asyncio.Future[Any]) -> float | None:
        """Stop watching ``task``; returns the wait that made it cancel, or None if it did not."""
        self._watched.discard(task)
        return self._long_waits.pop(task, None)

    # ------------------------------------------------------------------ logging.Filter

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(RATE_LIMIT_LOG_PREFIX) or not record.args:
            return True
        try:
            task = asyncio.current_task()
            retry_after = float(record.args[0])  # type: ignore[index,arg-type]
        except (RuntimeError, TypeError, ValueError, KeyError, IndexError):
            return True
        if task in self._watched and retry_after > self.long_wait:
            # Decide once disnake has set up its sleep (and, for a global limit, its lock).
            task.get_loop().call_soon(self._cancel_unless_global, task, retry_after)
        return True  # never hides the record: the warning still reaches the log

    def _cancel_unless_global(self, task: asyncio.Future[Any], retry_after: float) -> None:
        if task not in self._watched or task.done() or not self._no_global_limit():
            return
        self._long_waits[task] = retry_after
        task.cancel()
