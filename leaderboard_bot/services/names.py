"""Members' display names: live member first, then the last name stored, then a lookup on Discord.

Members who left still get a name (the one we kept, or their account name), never an ID. Names
seen live are handed to the next flush only when they changed. Per member seen, only a fingerprint
of the raw names is kept (to tell a change cheaply on every message); the names themselves are kept
for the most recently seen ``KNOWN_NAMES`` members only (boards show few; the rest are in the database).
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Protocol

from cachetools import TTLCache
from loguru import logger

from ..db import Storage, repository
from ..domain import UNKNOWN_MEMBER, NameInfo, best_name

NOT_FOUND_TTL = 3_600.0
NOT_FOUND_AT_MOST = 10_000  # members remembered as gone (each for NOT_FOUND_TTL)
KNOWN_NAMES = 10_000  # names kept in memory, most recently seen first out last
MAX_FINGERPRINTS = 200_000  # past it the fingerprints are forgotten: each name is written once more
_MIX = 0x9E3779B97F4A7C15  # Fibonacci hashing: snowflakes' low bits (a per-millisecond counter) vary little
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_LOAD = 0.7


class FingerprintTable:
    """Member id -> a non-zero 32-bit fingerprint, in two flat arrays (open addressing, linear
    probing; 0 is an empty slot or a forgotten value): 12 to 24 bytes a member and no Python
    object per member. A dict of ints holds two small objects and a slot per member (about 100
    bytes; some 8 MB more for 100,000 members in bench/memory.py), and those long-lived objects,
    made in a burst among its short-lived ones, keep the allocator's arenas from being returned."""

    __slots__ = ("_ids", "_limit", "_mask", "_shift", "_used", "_values", "max_entries")

    def __init__(self, max_entries: int, capacity: int = 1024) -> None:
        self.max_entries = max_entries
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        self._ids = array("Q", bytes(8 * capacity))  # member id + 1
        self._values = array("I", bytes(4 * capacity))
        self._mask = capacity - 1
        self._shift = 64 - (capacity.bit_length() - 1)
        self._used = 0
        self._limit = int(capacity * _LOAD)

    def __len__(self) -> int:
        return self._used

    def _slot(self, key: int) -> int:
        ids, mask = self._ids, self._mask
        slot = ((key * _MIX) & _U64) >> self._shift
        while (found := ids[slot]) != key and found != 0:
            slot = (slot + 1) & mask
        return slot

    def get(self, user_id: int) -> int:
        """The member's fingerprint, 0 when unknown."""
        if not 0 <= user_id < _U64:
            return 0
        slot = self._slot(user_id + 1)
        return self._values[slot] if self._ids[slot] else 0

    def put(self, user_id: int, value: int) -> None:
        """Keep ``value`` (32 bits, non-zero; 0 forgets) for the member."""
        if not 0 <= user_id < _U64:
            return  # not a Discord id: never kept, so always treated as changed
        key = user_id + 1
        slot = self._slot(key)
        if self._ids[slot] != key:
            if value == 0:
                return  # forgetting a member never kept
            if self._used >= self.max_entries:
                self._allocate(len(self._ids))  # bounded: each member forgotten costs one more name write
            elif self._used >= self._limit:
                self._grow()
            slot = self._slot(key)
            self._ids[slot] = key
            self._used += 1
        self._values[slot] = value

    def _grow(self) -> None:
        ids, values = self._ids, self._values
        self._allocate(2 * len(ids))
        for key, value in zip(ids, values, strict=True):
            if key:
                slot = self._slot(key)
                self._ids[slot] = key
                self._values[slot] = value
                self._used += 1


class NameSource(Protocol):
    """The port the bot implements: what Discord knows about a member's name."""

    def live_name(self, user_id: int) -> NameInfo | None:
        """From the member cache, without I/O; None when the member is not cached."""

    async def fetch_name(self, user_id: int) -> NameInfo | None:
        """Asked of Discord (member, then user); None when there is no such user."""


class NameService:
    def __init__(
        self,
        storage: Storage,
        *,
        guild_id: int,
        source: NameSource | None = None,
        max_fetches_per_call: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.guild_id = guild_id
        self.source = source
        self.max_fetches_per_call = max_fetches_per_call
        self._known: OrderedDict[int, NameInfo] = OrderedDict()  # least recently seen first
        self._fingerprints = FingerprintTable(MAX_FINGERPRINTS)  # hash of the raw names last seen per member
        self._unwritten: dict[int, NameInfo] = {}
        self.known_names = KNOWN_NAMES
        self.clock = clock
        # Only a definite "no such user" is remembered, and only for a while: an account
        # can come back, and a 5xx or a timeout says nothing about the user at all.
        self._not_found: TTLCache[int, bool] = TTLCache(NOT_FOUND_AT_MOST, NOT_FOUND_TTL, timer=lambda: self.clock())
        # /privacy stop: members whose names are never stored (services.privacy sets this).
        # A live set (one membership test per message, no call).
        self.withheld: AbstractSet[int] = frozenset()

    # ------------------------------------------------------------------ what was seen

    def seen(self, user_id: int, nick: str | None, global_name: str | None, username: str) -> None:
        """A member's names as Discord sent them (every message and voice event): the shown name is
        worked out, and written with the next flush, only when they changed since last seen."""
        if user_id in self.withheld:
            return  # /privacy stop: no name stored
        # 32 bits: a changed name is taken for the same one once in about four billion changes
        # (then written at its next change); 64 bits cost 0.8 MB more per 100,000 members.
        fingerprint = (hash((nick, global_name, username)) & _U32) | 1
        if self._fingerprints.get(user_id) == fingerprint:
            return  # the usual case: one hash and one lookup per message
        self._fingerprints.put(user_id, fingerprint)
        self.remember(user_id, best_name(nick, global_name, username) or username, username)

    def remember(self, user_id: int, display_name: str, username: str | None) -> None:
        """Keep the latest name; it is written with the next flush only when it changed."""
        if user_id in self.withheld:
            return  # /privacy stop: neither kept nor written
        if username == display_name:
            display_name = username  # one string kept, not two equal ones
        entry = (display_name, username)
        known = self._known
        if known.get(user_id) != entry:
            self._unwritten[user_id] = entry
        known[user_id] = entry
        known.move_to_end(user_id)
        if len(known) > self.known_names:
            known.popitem(last=False)

    @property
    def max_fingerprints(self) -> int:
        return self._fingerprints.max_entries

    @max_fingerprints.setter
    def max_fingerprints(self, value: int) -> None:
        self._fingerprints.max_entries = value

    def forget(self, user_id: int) -> None:
        """/privacy stop or delete: drop the member's name from memory, written or not."""
        self._known.pop(user_id, None)
        self._fingerprints.put(user_id, 0)
        self._unwritten.pop(user_id, None)

    def known_name(self, user_id: int) -> str | None:
        entry = self._known.get(user_id)
        return entry[0] if entry else None

    def sizes(self) -> dict[str, int]:
        """Entries per member-keyed structure (for /health): each is bounded."""
        return {
            "names": len(self._known),
            "name_fingerprints": len(self._fingerprints),
            "unwritten_names": len(self._unwritten),
            "names_not_found": len(self._not_found),
        }

    def take_unwritten(self) -> dict[int, NameInfo]:
        """Hand the changed names to a flush (give them back with :meth:`restore_unwritten` if it fails)."""
        names, self._unwritten = self._unwritten, {}
        return names

    def restore_unwritten(self, names: dict[int, NameInfo]) -> None:
        self._unwritten = {**names, **self._unwritten}  # a newer name seen meanwhile wins

    def unwritten(self) -> dict[int, NameInfo]:
        return dict(self._unwritten)

    # ------------------------------------------------------------------ lookups

    async def resolve(self, user_ids: Iterable[int]) -> dict[int, str]:
        ids = list(dict.fromkeys(user_ids))
        found: dict[int, str] = {}
        source = self.source
        for user_id in ids:
            info = source.live_name(user_id) if source else None
            if info is not None:
                self.remember(user_id, *info)
                found[user_id] = info[0]
            elif (known := self.known_name(user_id)) is not None:
                found[user_id] = known
        missing = [u for u in ids if u not in found]
        if missing:
            stored = await self.storage.read(repository.names, self.guild_id, missing)
            for user_id, name in stored.items():
                # Kept (not marked unwritten): a board shown again while the database is away needs no read.
                if user_id not in self._known:
                    self._known[user_id] = (name, None)
                    if len(self._known) > self.known_names:
                        self._known.popitem(last=False)
            found.update(stored)
        fetches = 0
        for user_id in ids:
            if user_id in found or source is None or user_id in self._not_found:
                continue
            if fetches >= self.max_fetches_per_call:
                break
            fetches += 1
            try:
                info = await source.fetch_name(user_id)
            except Exception as error:
                logger.warning("could not fetch the name of {} ({}); will ask again next time", user_id, error)
                continue
            if info is None:
                self._not_found[user_id] = True
                continue
            self.remember(user_id, *info)
            found[user_id] = info[0]
        return {u: found.get(u, UNKNOWN_MEMBER) for u in ids}
