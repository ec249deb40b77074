"""Exponential back-off for work that fails against Discord: retried later, never hammered
(403s and 429s count toward Discord's invalid-request limit), and warned about once."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_EXPONENT = 30  # 2**30 x any sane base is past every maximum; 2.0**1024 overflows a float


@dataclass
class Backoff:
    base: float | Callable[[], float]  # the first wait (a callable is read live, at each failure)
    maximum: float  # waits double up to this
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    until: float = 0.0
    failures: int = 0
    warned: bool = False

    def waiting(self) -> bool:
        return self.clock() < self.until

    def failed(self, *, at_least: float = 0.0) -> tuple[float, bool]:
        """Record a failure; returns the wait before the next try and whether this is the first
        failure of the streak (the one worth a warning)."""
        self.failures += 1
        base = self.base() if callable(self.base) else self.base
        exponent = min(self.failures - 1, MAX_EXPONENT)
        delay = max(at_least, min(self.maximum, base * 2.0**exponent))
        self.until = self.clock() + delay
        first, self.warned = not self.warned, True
        return delay, first

    def retry_now(self) -> None:
        """Let the next try happen at once (something changed that may fix it); a failure then
        still waits longer than the last one."""
        self.until = 0.0

    def succeeded(self) -> bool:
        """Reset; returns whether a failure streak (that was warned about) just ended."""
        recovered = self.warned
        self.until, self.failures, self.warned = 0.0, 0, False
        return recovered
