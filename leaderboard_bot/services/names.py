"""Display names for boards: live data first, then the last name we stored, then Discord.

Members who left still get a name (the one we kept, or their account name), never an ID.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from loguru import logger

from ..db import Storage, repository
from .activity import ActivityService

NameInfo = tuple[str, str | None]  # (display name, username)
LiveLookup = Callable[[int], NameInfo | None]
Fetcher = Callable[[int], Awaitable[NameInfo | None]]

UNKNOWN_MEMBER = "Unknown member"


class NameDirectory:
    def __init__(
        self,
        storage: Storage,
        tracker: ActivityService,
        *,
        live: LiveLookup | None = None,
        fetch: Fetcher | None = None,
        max_fetches_per_call: int = 10,
    ) -> None:
        self.storage = storage
        self.tracker = tracker
        self.live = live
        self.fetch = fetch
        self.max_fetches_per_call = max_fetches_per_call
        self._unfetchable: set[int] = set()

    async def resolve(self, user_ids: Iterable[int]) -> dict[int, str]:
        ids = list(dict.fromkeys(user_ids))
        found: dict[int, str] = {}
        for user_id in ids:
            info = self.live(user_id) if self.live else None
            if info is not None:
                self.tracker.remember_name(user_id, *info)
                found[user_id] = info[0]
            elif (known := self.tracker.known_name(user_id)) is not None:
                found[user_id] = known
        missing = [u for u in ids if u not in found]
        if missing:
            found.update(await self.storage.run(repository.names, self.tracker.guild_id, missing))
        fetches = 0
        for user_id in ids:
            if user_id in found or self.fetch is None or user_id in self._unfetchable:
                continue
            if fetches >= self.max_fetches_per_call:
                break
            fetches += 1
            try:
                info = await self.fetch(user_id)
            except Exception as error:
                logger.warning("could not fetch the name of {}: {}", user_id, error)
                info = None
            if info is None:
                self._unfetchable.add(user_id)
                continue
            self.tracker.remember_name(user_id, *info)
            found[user_id] = info[0]
        return {u: found.get(u, UNKNOWN_MEMBER) for u in ids}
