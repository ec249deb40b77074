"""Per-member spam limiting for message counting.

A message that exceeds the author's token bucket is still delivered by Discord, it is
just not counted towards the leaderboard. Everything here is pure Python and takes
time as a plain float so it can be tested with an injected clock.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

# Float sums such as 0.1 * 10 land just below 1.0; without this slack a member
# could be refused a token they have in fact earned.
_EPSILON = 1e-9
# A dict never gives back the table it grew to; below this many members the table is small anyway.
_SHRINK_FROM = 1_024


def _check_limits(capacity: int, refill_rate: float) -> None:
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity!r}")
    if not math.isfinite(refill_rate) or refill_rate <= 0:
        raise ValueError(f"refill_rate must be a positive finite number, got {refill_rate!r}")


class TokenBucket:
    """Classic token bucket that starts full and refills continuously."""

    __slots__ = ("_capacity", "_last", "_refill_rate", "_tokens")

    def __init__(self, capacity: int, refill_rate: float, now: float) -> None:
        _check_limits(capacity, refill_rate)
        self._capacity: int = capacity
        self._refill_rate: float = refill_rate
        self._tokens: float = float(capacity)
        self._last: float = now

    @property
    def tokens(self) -> float:
        """Tokens as of the last refill (not advanced to the current time)."""
        return self._tokens

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def refill_rate(self) -> float:
        return self._refill_rate

    def _pending(self, now: float) -> float:
        # Negative elapsed time (clock went backwards) must never mint tokens.
        elapsed = now - self._last
        if not elapsed > 0:  # also catches NaN
            return self._tokens
        return min(float(self._capacity), self._tokens + elapsed * self._refill_rate)

    def refill(self, now: float) -> None:
        """Advance the bucket to ``now``."""
        self._tokens = self._pending(now)
        # Never move the reference point backwards, otherwise the same interval would
        # be credited twice once the clock catches up again.
        if now > self._last:
            self._last = now

    def try_take(self, now: float) -> bool:
        """Refill up to ``now`` and take one token if available."""
        # refill() inlined: this runs for every message counted.
        elapsed = now - self._last
        if elapsed > 0:  # never for a clock that went backwards (or NaN)
            tokens = self._tokens + elapsed * self._refill_rate
            self._tokens = tokens if tokens < self._capacity else float(self._capacity)
            self._last = now
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def is_full(self, now: float) -> bool:
        """Whether the bucket would be full at ``now`` (does not modify it)."""
        return self._pending(now) >= self._capacity - _EPSILON

    def reconfigure(self, capacity: int, refill_rate: float) -> None:
        """Switch to new limits, keeping current tokens but never more than the new capacity."""
        _check_limits(capacity, refill_rate)
        self._capacity = capacity
        self._refill_rate = refill_rate
        self._tokens = min(self._tokens, float(capacity))


class MessageGuard(Protocol):
    """What the message listener needs; satisfied by SpamGuard and NullGuard."""

    @property
    def allowed(self) -> int: ...

    @property
    def blocked(self) -> int: ...

    def allow(self, member_id: int, now: float | None = None) -> bool: ...

    def forget_full(self, now: float | None = None) -> int: ...

    def __len__(self) -> int: ...


class SpamGuard:
    """Per-member token buckets. A message beyond the member's bucket is not counted."""

    def __init__(
        self,
        capacity: int,
        refill_rate: float,
        *,
        max_members: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_limits(capacity, refill_rate)
        if max_members < 1:
            raise ValueError(f"max_members must be >= 1, got {max_members!r}")
        self._capacity: int = capacity
        self._refill_rate: float = refill_rate
        self._max_members: int = max_members
        self._clock: Callable[[], float] = clock
        # Least recently used first, so idle (hence refilled) members sit at the front.
        self._buckets: OrderedDict[int, TokenBucket] = OrderedDict()
        self._peak: int = 0  # most buckets held since the table was last sized
        self._allowed: int = 0
        self._blocked: int = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def refill_rate(self) -> float:
        return self._refill_rate

    @property
    def max_members(self) -> int:
        return self._max_members

    @property
    def allowed(self) -> int:
        return self._allowed

    @property
    def blocked(self) -> int:
        return self._blocked

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, member_id: object) -> bool:
        return member_id in self._buckets

    def allow(self, member_id: int, now: float | None = None) -> bool:
        """Record one message from ``member_id``; True if it should be counted."""
        if now is None:
            now = self._clock()
        bucket = self._buckets.get(member_id)
        if bucket is None:
            bucket = TokenBucket(self._capacity, self._refill_rate, now)
            self._buckets[member_id] = bucket
            if len(self._buckets) > self._peak:
                self._peak = len(self._buckets)
        else:
            self._buckets.move_to_end(member_id)
        ok = bucket.try_take(now)
        if ok:
            self._allowed += 1
        else:
            self._blocked += 1
        self._prune(now)
        return ok

    def retry_after(self, member_id: int, now: float | None = None) -> float:
        """Seconds until ``member_id`` has a token again (0 when they have one)."""
        bucket = self._buckets.get(member_id)
        if bucket is None:
            return 0.0
        now = self._clock() if now is None else now
        missing = 1.0 - bucket._pending(now)
        return max(0.0, missing / self._refill_rate)

    def forget_full(self, now: float | None = None) -> int:
        """Drop every bucket that is full again (such a member needs no entry); how many went.
        Messages only prune from the least recently used end, so after a burst the last members
        would keep their buckets until the next message: the flush loop calls this."""
        if now is None:
            now = self._clock()
        full = [member for member, bucket in self._buckets.items() if bucket.is_full(now)]
        for member in full:
            del self._buckets[member]
        self._shrink_if_emptied()
        return len(full)

    def _prune(self, now: float) -> None:
        buckets = self._buckets
        # A full bucket is indistinguishable from a fresh one, so dropping it loses
        # nothing. Stopping at the first non-full bucket keeps this amortised O(1):
        # every bucket is removed at most once per insertion.
        size = len(buckets)
        while buckets:
            oldest = next(iter(buckets.values()))
            if not oldest.is_full(now):
                break
            buckets.popitem(last=False)
        # Hard cap: evicting a partly drained bucket just hands that member a full
        # bucket again, which errs on the lenient side rather than growing memory.
        while len(buckets) > self._max_members:
            buckets.popitem(last=False)
        if len(buckets) < size:
            self._shrink_if_emptied()

    def _shrink_if_emptied(self) -> None:
        """After a burst of 100,000 members the table kept 3.7 MB for the few left: once fewer
        than half of the most held remain, copy them into a table their own size (same order).
        The copy costs less than the removals that led to it, so it stays amortised O(1)."""
        remaining = len(self._buckets)
        if self._peak >= _SHRINK_FROM and remaining * 2 < self._peak:
            self._buckets = OrderedDict(self._buckets)
            self._peak = remaining

    def reconfigure(self, capacity: int, refill_rate: float) -> None:
        """Apply new limits to later messages; existing tokens are capped at the new capacity."""
        _check_limits(capacity, refill_rate)
        self._capacity = capacity
        self._refill_rate = refill_rate
        for bucket in self._buckets.values():
            bucket.reconfigure(capacity, refill_rate)


class NullGuard:
    """Guard used when SPAM_LIMIT=off: counts every message."""

    def __init__(self) -> None:
        self._allowed: int = 0

    @property
    def allowed(self) -> int:
        return self._allowed

    @property
    def blocked(self) -> int:
        return 0

    def allow(self, member_id: int, now: float | None = None) -> bool:
        self._allowed += 1
        return True

    def forget_full(self, now: float | None = None) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def __contains__(self, member_id: object) -> bool:
        return False
