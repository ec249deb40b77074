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
from collections.abc import Callable

from ..db import Storage, repository
from ..db.storage import StorageError
from ..domain import LeaseClaim

LEASE_GRACE = 5.0  # past one flush interval, before a silent holder is presumed gone


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
        self._watching_since: float | None = None  # a standby: since when the database has answered it

    @property
    def ttl(self) -> float:
        """A holder renews at every flush; a few seconds of slack cover a slow write."""
        return self.flush_interval() + LEASE_GRACE

    @property
    def role(self) -> str:
        return "active" if self.active else "standby"

    async def try_acquire(self, *, holder_gone: bool = False) -> bool:
        """Take the lease if it is free, expired or ours; ``holder_gone``: the holder is known to
        have stopped (its instance lock was released), so its expiry need not be waited for."""
        now = self.clock()
        holder, expires_at = await self.storage.run(
            repository.acquire_lease, self.guild_id, self.holder, now, now + self.ttl, force=holder_gone
        )
        self.current_holder, self.current_expires_at = holder, expires_at
        self.active = holder == self.holder
        return self.active

    async def try_take_over(self, *, holder_gone: bool = False) -> bool:
        """A standby's poll: take the lease when its holder is known gone, when it was released,
        or when it expired while this instance has watched the database for a whole TTL. An
        expiry seen right after the database was unreachable (for both instances, as when a
        PostgreSQL server restarts) proves nothing: the holder counted in memory meanwhile and
        renews with its next write, within one TTL."""
        try:
            if holder_gone:
                return await self.try_acquire(holder_gone=True)
            await self.look()
        except StorageError:
            self._watching_since = None
            raise
        now = self.clock()
        if self._watching_since is None:
            self._watching_since = now
        released = self.current_holder is None or self.current_expires_at <= 0.0
        if not released and (self.current_expires_at > now or now - self._watching_since < self.ttl):
            return False
        return await self.try_acquire()

    async def look(self) -> None:
        """Learn who holds the lease, without trying to take it."""
        current = await self.storage.read(repository.lease_of, self.guild_id)
        self.current_holder, self.current_expires_at = current if current is not None else (None, 0.0)

    def claim(self, *, release: bool = False) -> LeaseClaim | None:
        """What the next write asserts: this instance holds the lease until one more TTL
        (``release``: until now, so a standby takes over at once after a clean stop)."""
        if not self.active:
            return None
        return LeaseClaim(self.holder, 0.0 if release else self.clock() + self.ttl)

    def lose(self) -> None:
        self.active = False
        self.lost = True
