"""Ranked tops and members' standings, with a TTL/LRU cache in front of the database.

The cache lives on the event loop only (cachetools is not thread-safe), and every flush that
touches a board drops that board's entries, so a reader never sees counts older than the last
flush plus the TTL.

Commands read through :meth:`Rankings.top_for_reply` and :meth:`Rankings.standing_for_reply`:
when the database does not answer within ``READ_PATIENCE`` (locked by a backup, a write hanging
on its busy timeout) they answer from the last figures read, marked stale, instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from cachetools import LRUCache, TLRUCache

from ..db import Storage, repository
from ..db.storage import StorageError
from ..domain import ActivityBatch, Board, RankedEntry
from .activity import ActivityService
from .seasons import SeasonService

T = TypeVar("T")

READ_PATIENCE = 1.0  # a command waits this long for the database before using the last figures
WRITE_LAG_STALE = 2.0  # a write waiting longer than this means stored figures lag what was counted
LAST_KNOWN_TOPS = 64
LAST_KNOWN_STANDINGS = 4096
STANDING_READS = 3  # lock-free attempts before a standing waits for the flush lock


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
    stale: bool = False  # the database could not be read (or written) just now: figures may lag


@dataclass(frozen=True)
class TopReply:
    entries: list[RankedEntry]
    stale: bool = False


class Rankings:
    def __init__(self, storage: Storage, activity: ActivityService, seasons: SeasonService, cache: TopCache) -> None:
        self.storage = storage
        self.activity = activity
        self.seasons = seasons
        self.cache = cache
        # The last figures read, kept past the TTL: what a command shows while the database is away.
        self._last_tops: LRUCache[Hashable, tuple[RankedEntry, ...]] = LRUCache(LAST_KNOWN_TOPS)
        self._last_standings: LRUCache[tuple[int, int], Standing] = LRUCache(LAST_KNOWN_STANDINGS)
        self.stale_answers = 0
        # Bumped by every invalidation: a read that started before one must not refill the cache
        # with what it saw (reads run on their own thread, beside the writes).
        self._generation = 0
        activity.add_flush_listener(self.on_flush)
        seasons.add_roll_listener(lambda finished, current: self._invalidate_all())

    def on_flush(self, batch: ActivityBatch) -> None:
        if batch.messages:
            self.cache.invalidate("messages")
        if batch.voice:
            self.cache.invalidate("voice")
        if batch.messages or batch.voice:
            self._generation += 1

    async def top(self, board: Board, limit: int, season: int | None = None) -> list[RankedEntry]:
        """The top ``limit`` of a season (the current one by default)."""
        season = self.seasons.current_number() if season is None else season
        key = (board, season, limit)
        cached = self.cache.get(key)
        if cached is not None:
            return list(cached)
        generation = self._generation
        entries = await self.storage.read(repository.top, self.activity.guild_id, season, board, limit)
        if generation == self._generation:
            self.cache.put(key, tuple(entries))
            self._last_tops[key] = tuple(entries)
        return entries

    def _invalidate_all(self) -> None:
        self.cache.invalidate()
        self._generation += 1

    def writes_lagging(self) -> bool:
        """Whether stored figures lag what was counted (writes failing, or one waiting on a lock)."""
        return self.activity.failing_since is not None or self.activity.write_waiting() > WRITE_LAG_STALE

    async def top_for_reply(
        self, board: Board, limit: int, season: int | None = None, *, patience: float = READ_PATIENCE
    ) -> TopReply:
        """:meth:`top` for a command: the last figures read (marked stale) when the database does
        not answer within ``patience``; with none to show, it waits for the database after all."""
        season = self.seasons.current_number() if season is None else season
        fallback = self._last_tops.get((board, season, limit))
        entries = await self._patiently(self.top(board, limit, season), patience, fallback is not None)
        if entries is None:
            self.stale_answers += 1
            return TopReply(list(fallback or ()), stale=True)
        return TopReply(entries, stale=self.writes_lagging())

    async def standing_for_reply(
        self, user_id: int, season: int | None = None, *, patience: float = READ_PATIENCE
    ) -> Standing:
        """:meth:`standing` for a command, with the same fallback as :meth:`top_for_reply`."""
        season = self.seasons.current_number() if season is None else season
        fallback = self._last_standings.get((user_id, season))
        standing = await self._patiently(self.standing(user_id, season), patience, fallback is not None)
        if standing is None:
            assert fallback is not None
            self.stale_answers += 1
            return replace(fallback, stale=True)
        return replace(standing, stale=self.writes_lagging())

    async def _patiently(self, read: Awaitable[T], patience: float, can_fall_back: bool) -> T | None:
        """The read's result, or None when it failed or is slow and a fallback exists. An abandoned
        read goes on in the background (its result still refreshes the last-known figures)."""
        task = asyncio.ensure_future(read)
        if not can_fall_back:
            return await task
        try:
            return await asyncio.wait_for(asyncio.shield(task), patience)
        except (TimeoutError, StorageError):
            task.add_done_callback(_consume)
            return None

    async def rank(self, board: Board, user_id: int, season: int | None = None) -> int | None:
        season = self.seasons.current_number() if season is None else season
        return await self.storage.read(repository.rank_of, self.activity.guild_id, season, board, user_id)

    async def standing(self, user_id: int, season: int | None = None) -> Standing:
        """The member's season (the current one by default), stored and not yet written added up
        exactly once. The stored part is read with the number of the last write it includes, so
        no lock is held across the read: a command never waits for a flush, nor a flush for it."""
        current = self.seasons.current_number()
        season = current if season is None else season
        guild = self.activity.guild_id
        for _ in range(STANDING_READS):
            sequence, messages, voice, message_rank, voice_rank = await self.storage.read(
                repository.member_standing, guild, season, user_id
            )
            if season != current:  # buffered and live activity belongs to the current season only
                return self._standing(user_id, season, messages, voice, message_rank, voice_rank)
            unwritten = self.activity.unwritten_beyond(sequence, season, user_id)
            if unwritten is not None:
                return self._standing(
                    user_id, season, messages + unwritten[0], voice + unwritten[1], message_rank, voice_rank
                )
        # Flushes kept committing between the read and the check: read once with them held off.
        async with self.activity.quiescent():
            sequence, messages, voice, message_rank, voice_rank = await self.storage.read(
                repository.member_standing, guild, season, user_id
            )
            unwritten = self.activity.unwritten_beyond(sequence, season, user_id) or (0, 0.0)
            return self._standing(
                user_id, season, messages + unwritten[0], voice + unwritten[1], message_rank, voice_rank
            )

    def _standing(
        self,
        user_id: int,
        season: int,
        messages: int,
        voice: float,
        message_rank: int | None,
        voice_rank: int | None,
    ) -> Standing:
        presence = self.activity.voice.presence(user_id)
        counting = self.activity.voice.is_counting(user_id)
        standing = Standing(
            user_id=user_id,
            season=season,
            messages=messages,
            voice_seconds=voice,
            message_rank=message_rank,
            voice_rank=voice_rank,
            live_voice_channel_id=presence.channel_id if presence else None,
            live_session_seconds=self.activity.live_session_seconds(user_id) if counting else None,
        )
        self._last_standings[(user_id, season)] = standing
        return standing


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned read's failure is not "never retrieved"
