"""Log throttle: a failure that repeats is logged once, summarised now and then, and its recovery
told once, so an outage of minutes or hours is a few lines in the log rather than a storm.

Pure bookkeeping with an injected clock; ``report_failure``/``report_recovery`` write the lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

DEFAULT_WINDOW = 5 * 60.0
# Operations are a handful (boards, announcements, disnake's buckets); the cap only guards
# against a key that is accidentally unbounded (e.g. one per message id).
MAX_TRACKED = 1024


@dataclass(frozen=True)
class Verdict:
    """What to do with one occurrence of a failure."""

    log: bool  # write a line now (the first of its kind, or a summary)
    repeats: int = 0  # occurrences since the last line, this one included (0 for a first line)
    seconds: float = 0.0  # the span those repeats cover

    @property
    def first(self) -> bool:
        return self.log and self.repeats == 0


@dataclass
class _Kind:
    logged_at: float  # when the last line about this failure was written
    silent: int = 0  # occurrences since then


@dataclass
class _Streak:
    failures: int = 0
    kinds: dict[Hashable, _Kind] = field(default_factory=dict)


class LogThrottle:
    """Failure streaks per operation (e.g. ``("refresh", "messages")``), and within one, per
    distinct failure (e.g. HTTP status and Discord error code, or an exception type)."""

    def __init__(self, *, window: float = DEFAULT_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._streaks: dict[Hashable, _Streak] = {}

    def failed(self, operation: Hashable, failure: Hashable) -> Verdict:
        """Count one failure. The first of its kind in the streak is logged; repeats within the
        window are counted silently; the first repeat after it is logged as a summary (or as a
        first line again, when it is the only one since the last line)."""
        now = self.clock()
        streak = self._streaks.get(operation)
        if streak is None:
            if len(self._streaks) >= MAX_TRACKED:
                self._streaks.pop(next(iter(self._streaks)))  # the oldest streak
            streak = self._streaks[operation] = _Streak()
        streak.failures += 1
        kind = streak.kinds.get(failure)
        if kind is None:
            streak.kinds[failure] = _Kind(logged_at=now)
            return Verdict(log=True)
        kind.silent += 1
        if now - kind.logged_at < self.window:
            return Verdict(log=False)
        if kind.silent == 1:
            # Nothing repeated during the window (a long back-off): told again as a first line,
            # which says more than "1 more time".
            kind.logged_at, kind.silent = now, 0
            return Verdict(log=True)
        verdict = Verdict(log=True, repeats=kind.silent, seconds=now - kind.logged_at)
        kind.logged_at, kind.silent = now, 0
        return verdict

    def succeeded(self, operation: Hashable) -> int:
        """End the operation's failure streak; returns how many failures it had (0: none)."""
        streak = self._streaks.pop(operation, None)
        return streak.failures if streak is not None else 0

    def failures(self, operation: Hashable) -> int:
        streak = self._streaks.get(operation)
        return streak.failures if streak is not None else 0


def span(seconds: float) -> str:
    """A short human duration: "45 s", "5 min", "2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def report_failure(
    throttle: LogThrottle,
    operation: Hashable,
    failure: Hashable,
    message: str,
    *,
    summary: str | None = None,
    level: str = "WARNING",
    exception: BaseException | None = None,
    **fields: Any,
) -> Verdict:
    """Log ``message`` for the first failure of its kind (with ``exception``'s traceback when
    given: pass one only for the unexpected), then "``summary``: still failing (N more times in
    the last 5 min)" at most once a window. ``fields`` become structured fields of the line."""
    verdict = throttle.failed(operation, failure)
    if not verdict.log:
        return verdict
    bound = logger.bind(**fields, failure=str(failure), repeats=verdict.repeats)
    if verdict.first:
        bound.opt(depth=1, exception=exception).log(level, "{}", message)
    else:
        times = "time" if verdict.repeats == 1 else "times"
        bound.opt(depth=1).log(
            level,
            "{}: still failing ({} more {} in the last {})",
            summary or message,
            verdict.repeats,
            times,
            span(verdict.seconds),
        )
    return verdict


def report_recovery(throttle: LogThrottle, operation: Hashable, message: str, **fields: Any) -> int:
    """End the streak; if there was one, log "``message`` (recovered after N failures)" once."""
    failures = throttle.succeeded(operation)
    if failures:
        noun = "failure" if failures == 1 else "failures"
        logger.bind(**fields, failures=failures).opt(depth=1).info(
            "{} (recovered after {} {})", message, failures, noun
        )
    return failures
