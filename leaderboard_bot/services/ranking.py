"""Ranked tops and members' standings, with a TTL/LRU cache in front of the database.

The cache lives on the event loop only (cachetools is not thread-safe), and every flush that
touches a board drops that board's entries, so a reader never sees counts older than the last
flush plus the TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache

from ..db import Storage, repository
from ..domain import BOARDS, ActivityBatch, Board, RankedEntry
from .activity import ActivityService
from .seasons import SeasonService


class TopCache:
    def __init__(
        self, ttl: Callable[[], float], *, maxsize: int = 128, timer: Callable[[], float] = time.monotonic
    ) -> None:
        # The TTL is read at every insert, so a changed CACHE_TTL applies from the next entry.
        self._cache: TLRUCache[Hashable, Any] = TLRUCache(
            maxsize=maxsize, ttu=lambda _key, _value, now: now + ttl(), timer=timer
        )
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        value = self._cache.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._cache[key] = value

    def invalidate(self, board: Board | None = None) -> None:
        """Drop one board's entries (keys are tuples starting with the board), or everything."""
        if board is None:
            self._cache.clear()
            return
        for key in [k for k in self._cache if isinstance(k, tuple) and k and k[0] == board]:
            self._cache.pop(key, None)

    def __len__(self) -> int:
        return len(self._cache)


@dataclass(frozen=True)
class Standing:
    """One member's season so far, including what is still buffered and voice time in progress."""

    user_id: int
    season: int
    messages: int
    voice_seconds: float
    message_rank: int | None
    voice_rank: int | None
    live_voice_channel_id: int | None
    live_session_seconds: float | None


class Rankings:
    def __init__(self, storage: Storage, activity: ActivityService, seasons: SeasonService, cache: TopCache) -> None:
        self.storage = storage
        self.activity = activity
        self.seasons = seasons
        self.cache = cache
        activity.add_flush_listener(self.on_flush)
        seasons.add_roll_listener(lambda finished, current: self.cache.invalidate())

    def on_flush(self, batch: ActivityBatch) -> None:
        if batch.messages:
            self.cache.invalidate("messages")
        if batch.voice:
            self.cache.invalidate("voice")

    async def top(self, board: Board, limit: int, season: int | None = None) -> list[RankedEntry]:
        """The top ``limit`` of a season (the current one by default)."""
        season = self.seasons.current_number() if season is None else season
        key = (board, season, limit)
        cached = self.cache.get(key)
        if cached is not None:
            return list(cached)
        entries = await self.storage.run(repository.top, self.activity.guild_id, season, board, limit)
        self.cache.put(key, tuple(entries))
        return entries

    async def rank(self, board: Board, user_id: int, season: int | None = None) -> int | None:
        season = self.seasons.current_number() if season is None else season
        return await self.storage.run(repository.rank_of, self.activity.guild_id, season, board, user_id)

    async def standing(self, user_id: int, season: int | None = None) -> Standing:
        """The member's season (the current one by default). Stored totals and buffers are read
        with no flush in between, so nothing is counted twice or nowhere."""
        async with self.activity.quiescent():
            current = self.seasons.current_number()
            season = current if season is None else season
            guild = self.activity.guild_id
            messages, voice = await self.storage.run(repository.member_totals, guild, season, user_id)
            ranks = [await self.rank(board, user_id, season) for board in BOARDS]
            if season == current:  # buffered and live activity belongs to the current season only
                messages += self.activity.pending_messages(user_id)
                voice += self.activity.unflushed_voice_seconds(user_id)
            presence = self.activity.voice.presence(user_id)
            counting = self.activity.voice.is_counting(user_id)
            return Standing(
                user_id=user_id,
                season=season,
                messages=messages,
                voice_seconds=voice,
                message_rank=ranks[BOARDS.index("messages")],
                voice_rank=ranks[BOARDS.index("voice")],
                live_voice_channel_id=presence.channel_id if presence else None,
                live_session_seconds=self.activity.live_session_seconds(user_id) if counting else None,
            )
