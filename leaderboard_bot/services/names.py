"""Members' display names: live member first, then the last name stored, then a lookup on Discord.

Members who left still get a name (the one we kept, or their account name), never an ID. Names
seen live are remembered here and handed to the next flush only when they changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from loguru import logger

from ..db import Storage, repository
from ..domain import UNKNOWN_MEMBER, NameInfo

NOT_FOUND_TTL = 3_600.0


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
        self._known: dict[int, NameInfo] = {}
        self._unwritten: dict[int, NameInfo] = {}
        self.clock = clock
        # Only a definite "no such user" is remembered, and only for a while: an account
        # can come back, and a 5xx or a timeout says nothing about the user at all.
        self._not_found_until: dict[int, float] = {}

    # ------------------------------------------------------------------ what was seen

    def remember(self, user_id: int, display_name: str, username: str | None) -> None:
        """Keep the latest name; it is written with the next flush only when it changed."""
        entry = (display_name, username)
        if self._known.get(user_id) != entry:
            self._known[user_id] = entry
            self._unwritten[user_id] = entry

    def known_name(self, user_id: int) -> str | None:
        entry = self._known.get(user_id)
        return entry[0] if entry else None

    def take_unwritten(self) -> dict[int, NameInfo]:
        """Hand the changed names to a flush (give them back with :meth:`restore_unwritten` if it fails)."""
        names, self._unwritten = self._unwritten, {}
        return names

    def restore_unwritten(self, names: dict[int, NameInfo]) -> None:
        self._unwritten = {**names, **self._unwritten}  # a newer name seen meanwhile wins

    def unwritten(self) -> dict[int, NameInfo]:
        return dict(self._unwritten)

    # ------------------------------------------------------------------ lookups

    def _known_missing(self, user_id: int) -> bool:
        until = self._not_found_until.get(user_id)
        if until is None:
            return False
        if self.clock() >= until:
            del self._not_found_until[user_id]
            return False
        return True

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
                self._known.setdefault(user_id, (name, None))
            found.update(stored)
        fetches = 0
        for user_id in ids:
            if user_id in found or source is None or self._known_missing(user_id):
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
                self._not_found_until[user_id] = self.clock() + NOT_FOUND_TTL
                continue
            self.remember(user_id, *info)
            found[user_id] = info[0]
        return {u: found.get(u, UNKNOWN_MEMBER) for u in ids}
