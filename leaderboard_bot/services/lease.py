"""Which instance counts for the guild: a lease row in the shared database.

The active instance holds the lease and renews it with every flush, in the flush's own
transaction, and releases it at a clean stop. A write by an instance that lost the lease fails
whole (``repository.renew_lease`` raises), so two instances can never both add the same
messages, even if one of them stalls past its expiry and wakes up again. A second instance
started with ``STANDBY=on`` waits, connected to Discord but not counting, and takes the lease
once it expires, or at once when it also holds the instance lock, which proves the holder on
this machine has gone (SQLite).
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable

from ..db import Storage, repository
from ..db.storage import StorageError
from ..domain import LeaseClaim

LEASE_GRACE = 5.0  # past one flush interval, before a silent holder is presumed gone
RENEWALS_REMEMBERED = 8  # a standby learns the holder's pace from this many renewals seen
MAX_CLAIM = 3_600.0 + LEASE_GRACE  # the longest FLUSH_INTERVAL, and the grace


def instance_name(clock: Callable[[], float] = time.time) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{int(clock())}"


class LeaseService:
    def __init__(
        self,
        storage: Storage,
        *,
        guild_id: int,
        flush_interval: Callable[[], float],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        holder: str | None = None,
    ) -> None:
        self.storage = storage
        self.guild_id = guild_id
        self.flush_interval = flush_interval
        self.clock = clock
        self.holder = holder or instance_name(clock)
        self.active = False
        self.lost = False
        self.current_holder: str | None = None  # as last seen in the database
        self.current_expires_at = 0.0
        self.monotonic = monotonic
        # A standby's watch: the lease as last seen, since when (monotonic), and how long the
        # holder took between its last two renewals seen.
        self._seen: tuple[str | None, float] | None = None
        self._seen_at = 0.0
        self._seen_changed = False  # whether _seen was first seen as a change (not at a first look)
        self._renewal_gaps: deque[float] = deque(maxlen=RENEWALS_REMEMBERED)
        self._claim: float | None = None  # how long the holder claims the lease at each renewal
        self._renewed_at = 0.0  # the holder's last renewal time, on its clock, as last looked up
        self._seen_renewed_at = 0.0
        self._claim_confirmed = False  # a renewal was seen to move it: the holder tells its claim

    @property
    def ttl(self) -> float:
        """A holder renews at every flush; a few seconds of slack cover a slow write."""
        return self.flush_interval() + LEASE_GRACE

    @property
    def role(self) -> str:
        return "active" if self.active else "standby"

    async def try_acquire(self, *, holder_gone: bool = False, stale: tuple[str, float] | None = None) -> bool:
        """Take the lease if it is free, expired or ours; ``holder_gone``: the holder is known to
        have stopped (its instance lock was released), so its expiry need not be waited for;
        ``stale``: the lease as it stood while its holder stopped renewing it (taken if unchanged)."""
        now = self.clock()
        holder, expires_at = await self.storage.run(
            repository.acquire_lease, self.guild_id, self.holder, now, now + self.ttl, force=holder_gone, stale=stale
        )
        self.current_holder, self.current_expires_at = holder, expires_at
        self.active = holder == self.holder
        return self.active

    async def try_take_over(self, *, holder_gone: bool = False) -> bool:
        """A standby's poll: take the lease when its holder is known gone, when it was released,
        or when this instance has watched it go unrenewed for as long as the holder claims it at
        each renewal (its expiry less its renewal time, both on its own clock), and for longer
        than the holder was seen to take between renewals (an older version tells no claim).

        Watched on this machine's monotonic clock, never by comparing the holder's expiry with
        this machine's wall clock: across machines those differ (a standby whose clock ran 15 s
        ahead took the lease of a healthy holder). Its FLUSH_INTERVAL may differ from this
        instance's, or change. A database that was unreachable (for both instances, as when a
        PostgreSQL server restarts) starts the watch again: the holder counted in memory
        meanwhile and renews with its next write."""
        try:
            if holder_gone:
                return await self.try_acquire(holder_gone=True)
            await self.look()
        except StorageError:
            self._seen, self._seen_changed = None, False
            raise
        now = self.monotonic()
        seen = (self.current_holder, self.current_expires_at)
        if seen != self._seen:
            if self._seen is not None and self._seen[0] != seen[0]:
                self._renewal_gaps.clear()  # another holder: its pace and claim are learnt anew
                self._claim_confirmed = False
            elif self._seen is not None:
                if self._seen_changed:
                    # Between two renewals both seen change (the first look may come at any time
                    # after a renewal: no measure). The longest of the last few: an extra write
                    # (midnight, a burst) comes sooner than the holder's usual pace.
                    self._renewal_gaps.append(now - self._seen_at)
                # An older version never moves the renewal time: its "claim" only grows. Trusted
                # once a renewal was seen to move it.
                self._claim_confirmed |= self._renewed_at != self._seen_renewed_at
            self._seen_changed = self._seen is not None
            self._seen, self._seen_at, self._seen_renewed_at = seen, now, self._renewed_at
        if self.current_holder is None or self.current_expires_at <= 0.0:  # released at a clean stop
            return await self.try_acquire()
        # How long the holder claims it at each renewal (expiry less renewal, both on its clock: no
        # skew), and the pace its renewals were seen at: past both, it stopped renewing.
        pace = max(self._renewal_gaps, default=None)
        claim = self._claim if self._claim_confirmed else None
        if now - self._seen_at < max(self.ttl, claim or 0.0, (pace or 0.0) + LEASE_GRACE):
            return False
        if pace is None and claim is None and self.current_expires_at > self.clock():
            return False  # neither known (a holder of an older version, just seen): its expiry too
        return await self.try_acquire(stale=(self.current_holder, self.current_expires_at))

    async def look(self) -> None:
        """Learn who holds the lease, without trying to take it."""
        current = await self.storage.read(repository.lease_of, self.guild_id)
        if current is None:
            self.current_holder, self.current_expires_at, self._claim = None, 0.0, None
            return
        self.current_holder, self.current_expires_at, self._renewed_at = current
        claim = self.current_expires_at - self._renewed_at
        self._claim = claim if 0.0 < claim <= MAX_CLAIM else None

    def claim(self, *, release: bool = False) -> LeaseClaim | None:
        """What the next write asserts: this instance holds the lease until one more TTL
        (``release``: until now, so a standby takes over at once after a clean stop)."""
        if not self.active:
            return None
        now = self.clock()
        return LeaseClaim(self.holder, 0.0 if release else now + self.ttl, now)

    def lose(self) -> None:
        self.active = False
        self.lost = True
