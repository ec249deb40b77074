"""Who is still in the server, for HIDE_DEPARTED: remembered answers, a bounded cache, and lookups
that never hold a board up for long.

The bot has no members intent, so it is never told that someone left or came back. It asks instead,
through the :class:`MemberLookup` port the bot implements (its member cache, then one REST lookup):
``False`` means Discord said "Unknown Member", ``None`` means the answer is unknown (an error, a
timeout, the guild unavailable). Only ``False`` hides anyone: every doubt shows the member.

Answers are kept for a while: "present" for an hour, "departed" for ten minutes (a member who
rejoins comes back within that), "unknown" for a minute (a failing Discord is not asked again at
every refresh). A message or a voice join proves presence for free (:meth:`note_present`) and
overrides a remembered "departed" at once. While the setting is off the service holds nothing and
asks nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from cachetools import TLRUCache
from loguru import logger

PRESENT_TTL = 3600.0  # a member seen here is asked again after this long
DEPARTED_TTL = 600.0  # a departed member is asked again after this long (how fast a rejoin shows)
UNKNOWN_TTL = 60.0  # a lookup that failed is not retried before this
MAX_ANSWERS = 20_000  # answers kept (least recently used dropped first)
CONCURRENT_LOOKUPS = 4  # lookups in flight at once
LOOKUP_TIMEOUT = 5.0  # one lookup gives up (unknown) after this long
RENDER_BUDGET = 2.0  # the longest a board waits for lookups in total; the rest count as unknown


class MemberLookup(Protocol):
    """The bot's side: whether ``user_id`` is in the server now (None: could not tell)."""

    async def is_member(self, user_id: int) -> bool | None: ...


class MembershipService:
    def __init__(
        self,
        lookup: MemberLookup | None,
        *,
        enabled: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        present_ttl: float = PRESENT_TTL,
        departed_ttl: float = DEPARTED_TTL,
        unknown_ttl: float = UNKNOWN_TTL,
        maxsize: int = MAX_ANSWERS,
        concurrency: int = CONCURRENT_LOOKUPS,
        lookup_timeout: float = LOOKUP_TIMEOUT,
        budget: float = RENDER_BUDGET,
    ) -> None:
        self.lookup = lookup
        self.enabled = enabled
        self.budget = budget
        self.lookup_timeout = lookup_timeout
        ttls = {True: present_ttl, False: departed_ttl, None: unknown_ttl}
        self._answers: TLRUCache[int, bool | None] = TLRUCache(
            maxsize=maxsize, ttu=lambda _user, answer, now: now + ttls[answer], timer=clock
        )
        self._concurrency = concurrency
        self._semaphore: asyncio.Semaphore | None = None  # made on the loop, at the first lookup
        self._in_flight: dict[int, asyncio.Future[None]] = {}
        self._seen_meanwhile: set[int] = set()  # proved present while their lookup was in flight
        self.lookups = 0
        self.lookup_failures = 0

    # ------------------------------------------------------------------ what the bot tells us

    def note_present(self, user_id: int) -> None:
        """The member just sent a message or joined voice: here now, whatever was remembered."""
        if not self.enabled():
            return
        if self._answers.get(user_id) is not True:
            self._answers[user_id] = True
        if user_id in self._in_flight:
            self._seen_meanwhile.add(user_id)

    # ------------------------------------------------------------------ what the boards ask

    def known_departed(self, user_id: int) -> bool:
        """Whether the member is known to have left, and members who left are hidden (HIDE_DEPARTED)."""
        return self.enabled() and self._answers.get(user_id) is False

    async def departed(self, user_ids: Iterable[int], *, budget: float | None = None) -> set[int]:
        """Which of ``user_ids`` left the server, as far as can be told within ``budget`` seconds
        (default :data:`RENDER_BUDGET`). Lookups still running then go on in the background and
        their answers serve the next call; until then those members count as present."""
        if self.lookup is None or not self.enabled():
            return set()
        candidates = list(dict.fromkeys(user_ids))
        missing = [user for user in candidates if user not in self._answers]
        if missing:
            waits = [self._in_flight.get(user) or self._start_lookup(user) for user in missing]
            wait_for = self.budget if budget is None else budget
            if wait_for > 0:
                await asyncio.wait(waits, timeout=wait_for)
        return {user for user in candidates if self._answers.get(user) is False}

    def _start_lookup(self, user_id: int) -> asyncio.Future[None]:
        task = asyncio.ensure_future(self._look_up(user_id))
        self._in_flight[user_id] = task

        def done(_: asyncio.Future[None]) -> None:
            self._in_flight.pop(user_id, None)
            self._seen_meanwhile.discard(user_id)

        task.add_done_callback(done)
        return task

    async def _look_up(self, user_id: int) -> None:
        assert self.lookup is not None
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._concurrency)
        async with self._semaphore:
            if not self.enabled() or user_id in self._answers:
                return  # turned off, or answered (note_present) while this one waited its turn
            self.lookups += 1
            try:
                answer = await asyncio.wait_for(self.lookup.is_member(user_id), self.lookup_timeout)
            except Exception as error:  # a timeout or anything else: unknown, so shown
                self.lookup_failures += 1
                logger.debug("could not tell whether member {} is still here ({!r}); shown", user_id, error)
                answer = None
        if not self.enabled():
            return
        if user_id in self._seen_meanwhile:
            answer = True  # a message during the lookup beats whatever the lookup saw before it
        self._answers[user_id] = answer

    # ------------------------------------------------------------------ upkeep

    def clear(self) -> None:
        """Forget every answer and stop the lookups under way (the setting was turned off)."""
        self.close()
        self._answers.clear()

    def close(self) -> None:
        for task in list(self._in_flight.values()):
            task.cancel()
        self._in_flight.clear()
        self._seen_meanwhile.clear()

    def sizes(self) -> dict[str, int]:
        """Entries held, for /health's memory figures."""
        return {"membership_answers": len(self._answers), "membership_lookups": len(self._in_flight)}
