"""Ranked boards with a TTL/LRU cache in front of the database.

The cache lives on the event loop only (cachetools is not thread-safe), and every flush that
touches a board drops that board's entries, so a reader never sees counts older than the last
flush plus the TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, get_args

from cachetools import TTLCache

from ..db import ActivityBatch, Board, RankedEntry, Storage, repository
from .activity import ActivityService

BOARDS: tuple[Board, ...] = get_args(Board)


class TopCache:
    def __init__(self, ttl: float, *, maxsize: int = 128, timer: Callable[[], float] = time.monotonic) -> None:
        self._cache: TTLCache[Hashable, Any] = TTLCache(maxsize=maxsize, ttl=ttl, timer=timer)
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
    def __init__(self, storage: Storage, tracker: ActivityService, cache: TopCache) -> None:
        self.storage = storage
        self.tracker = tracker
        self.cache = cache
        tracker.add_flush_listener(self.on_flush)

    def on_flush(self, batch: ActivityBatch) -> None:
        if batch.messages:
            self.cache.invalidate("messages")
        if batch.voice:
            self.cache.invalidate("voice")

    async def top(self, board: Board, limit: int) -> list[RankedEntry]:
        key = (board, self.tracker.season, limit)
        cached = self.cache.get(key)
        if cached is not None:
            return list(cached)
        entries = await self.storage.run(repository.top, self.tracker.guild_id, self.tracker.season, board, limit)
        self.cache.put(key, tuple(entries))
        return entries

    async def rank(self, board: Board, user_id: int, season: int | None = None) -> int | None:
        season = self.tracker.season if season is None else season
        return await self.storage.run(repository.rank_of, self.tracker.guild_id, season, board, user_id)

    async def standing(self, user_id: int, season: int | None = None) -> Standing:
        """The member's season (the current one by default). Stored totals and buffers are read
        with no flush in between, so nothing is counted twice or nowhere."""
        async with self.tracker.quiescent():
            current = self.tracker.season
            season = current if season is None else season
            guild = self.tracker.guild_id
            messages, voice = await self.storage.run(repository.member_totals, guild, season, user_id)
            ranks = [await self.rank(board, user_id, season) for board in BOARDS]
            if season == current:  # buffered and live activity belongs to the current season only
                messages += self.tracker.pending_messages(user_id)
                voice += self.tracker.unflushed_voice_seconds(user_id)
            presence = self.tracker.voice.presence(user_id)
            counting = self.tracker.voice.is_counting(user_id)
            return Standing(
                user_id=user_id,
                season=season,
                messages=messages,
                voice_seconds=voice,
                message_rank=ranks[BOARDS.index("messages")],
                voice_rank=ranks[BOARDS.index("voice")],
                live_voice_channel_id=presence.channel_id if presence else None,
                live_session_seconds=self.tracker.live_session_seconds(user_id) if counting else None,
            )
