"""Live ranked tops and members' standings, with a TTL/LRU cache of stored tops.

Every figure is a database snapshot plus what that snapshot lacks (the buffers and the write
under way), merged exactly once (see :class:`Rankings`). The cache lives on the event loop only
(cachetools is not thread-safe); each stored top carries the write number it was read at and a
flush that touches a board drops that board's entries.

Commands read through :meth:`Rankings.top_for_reply` and :meth:`Rankings.standing_for_reply`:
when the database does not answer within ``READ_PATIENCE`` (locked by a backup, a write hanging
on its busy timeout) they answer from the last figures read, marked stale, instead of waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable, Hashable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from cachetools import LRUCache, TLRUCache

from ..db import Storage, repository
from ..db.storage import StorageError
from ..domain import BOARDS, ActivityBatch, Board, Counts, Placing, RankedEntry, Unwritten, days_between, window_of
from .activity import ActivityService
from .seasons import SeasonService

T = TypeVar("T")

READ_PATIENCE = 1.0  # a command waits this long for the database before using the last figures
WRITE_LAG_STALE = 2.0  # a write waiting longer than this means stored figures lag what was counted
LAST_KNOWN_TOPS = 64
LAST_KNOWN_STANDINGS = 4096
STANDING_READS = 3  # lock-free attempts before a standing waits for the flush lock
MERGE_AT_MOST = 5_000  # a flush moving more members than this drops the cached tops it touches
KNOWN_AT_MOST = 20_000  # stored counts kept for members with unwritten counts (cleared past it)
WINDOW_RANKED_LATELY = repository.MEDIAN_MAX_AGE  # seconds a ranked window keeps being counted per flush


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

    def items(self) -> list[tuple[Any, Any]]:
        """The live entries (a copy: callers may pop while iterating); not counted as lookups."""
        return list(self._cache.items())

    def pop(self, key: Hashable) -> None:
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
    """A board's top for a command, and the caller's own place (rank, value) when outside it."""

    entries: list[RankedEntry]
    stale: bool = False
    caller: RankedEntry | None = None
    caller_rank: int | None = None


@dataclass
class StoredTop:
    """A cache entry: a board's stored top as of write number ``sequence`` (advanced in place by
    flushes that can be merged into it, so its TTL is not renewed)."""

    sequence: int
    entries: list[RankedEntry]
    day: str | None = None  # a window's: the day it was read for (its days move at midnight)


@dataclass(frozen=True)
class LiveRead:
    """What one read transaction saw (write number ``sequence``) and what it lacked (``deltas``)."""

    sequence: int
    deltas: dict[int, Counts]
    stored: dict[int, Counts]  # stored counts of the members in ``deltas`` (and the one asked about)
    stored_top: list[RankedEntry] | None = None
    ranks: dict[Board, int | None] = field(default_factory=dict)


def _on(board: Board, counts: Counts) -> float:
    return counts[0] if board == "messages" else counts[1]


def _beats(value: float, user_id: int, other_value: float, other_user: int) -> bool:
    """Board order: higher first, ties by the lower user id."""
    return value > other_value or (value == other_value and user_id < other_user)


def merge_top(
    board: Board, stored_top: list[RankedEntry], deltas: dict[int, Counts], stored: dict[int, Counts], limit: int
) -> list[RankedEntry]:
    """The live top from a snapshot's top and what the snapshot lacks. Exact because counts only
    grow: a member outside the stored top without a delta stays behind all of it. ``stored`` must
    hold every member of ``deltas`` outside ``stored_top`` that has a row."""
    live = {entry.user_id: entry.value for entry in stored_top}
    for user, counts in deltas.items():
        delta = _on(board, counts)
        if delta > 0:
            base = live[user] if user in live else _on(board, stored.get(user, (0, 0.0)))
            live[user] = base + delta
    best = heapq.nsmallest(limit, ((-value, user) for user, value in live.items() if value > 0))
    return [RankedEntry(user, float(-negative)) for negative, user in best]


def live_rank(
    board: Board, user_id: int, value: float, beating_stored: int, deltas: dict[int, Counts], stored: dict[int, Counts]
) -> int:
    """The member's live rank from how many stored rows beat ``value``, corrected for every member
    whose unwritten counts move them past it."""
    return beating_stored + _moved_past(board, user_id, value, deltas, stored) + 1


def _moved_past(
    board: Board,
    user_id: int,
    value: float,
    deltas: dict[int, Counts],
    stored: dict[int, Counts],
    among: AbstractSet[int] | None = None,
) -> int:
    """How many more members (of ``among``, default all) beat ``value`` held by ``user_id`` with
    their unwritten counts than with their stored ones (in ``stored``)."""
    moved = 0
    for other, counts in deltas.items():
        delta = _on(board, counts)
        if other == user_id or delta <= 0 or (among is not None and other not in among):
            continue
        before = _on(board, stored.get(other, (0, 0.0)))
        moved += int(_beats(before + delta, other, value, user_id)) - int(_beats(before, other, value, user_id))
    return moved


def read_live(
    guild_id: int,
    season: int,
    unwritten: Unwritten,
    *,
    board: Board | None = None,
    limit: int = 0,
    user_id: int | None = None,
    rank_boards: tuple[Board, ...] = (),
    known: dict[int, Counts] | None = None,
    known_at: int | None = None,
    unlisted: AbstractSet[int] = frozenset(),
) -> LiveRead | None:
    """One read transaction (on the reader thread): the stored top and/or the member's stored counts
    and ranks, plus the stored counts of everyone with unwritten counts. None when a write committed
    after ``unwritten`` was captured (read again). Ranks pass over the ``unlisted`` members (hidden
    by their own choice), as the boards do."""
    with repository.snapshot():
        sequence = repository.write_sequence(guild_id)
        deltas = unwritten.beyond(sequence)
        if deltas is None:
            return None
        # A window whose stored days have all passed holds nothing stored: only what is unwritten.
        gone = _window_gone(guild_id, season, unwritten.day)
        stored_top: list[RankedEntry] | None = None
        if board is not None:
            stored_top = [] if gone else repository.top(guild_id, season, board, limit)
        in_top = {entry.user_id for entry in stored_top or ()}
        stored: dict[int, Counts] = dict(known) if known is not None and known_at == sequence and not gone else {}
        wanted = [u for u in deltas if u not in in_top and u not in stored and u != user_id]
        if user_id is not None:
            wanted.append(user_id)  # the member asked about: always from this snapshot
        if not gone:
            stored.update(repository.totals_of(guild_id, season, wanted))
        for user in wanted:
            stored.setdefault(user, (0, 0.0))  # no row: nothing stored
        ranks: dict[Board, int | None] = {}
        if user_id is not None:
            own = stored[user_id]
            mine = deltas.get(user_id, (0, 0.0))
            for ranked_board in rank_boards:
                value = _on(ranked_board, own) + _on(ranked_board, mine)
                if value <= 0:
                    ranks[ranked_board] = None
                    continue
                beating = 0 if gone else repository.count_beating(
                    guild_id, season, ranked_board, value, user_id, _on(ranked_board, own), sequence
                )
                rank = live_rank(ranked_board, user_id, value, beating, deltas, stored)
                if unlisted:  # those ahead who are never listed: not counted in the rank
                    if not gone:
                        rank -= repository.count_unlisted_beating(guild_id, season, ranked_board, value, user_id)
                    rank -= _moved_past(ranked_board, user_id, value, deltas, stored, among=unlisted)
                ranks[ranked_board] = rank
        return LiveRead(sequence, deltas, stored, stored_top, ranks)


def _window_gone(guild_id: int, scope: int, day: str | None) -> bool:
    """Whether a rolling window as stored holds none of its days as of ``day``: midnight passed
    and no write has moved it since (they fail: a locked database), so the stored "today" is
    yesterday's. (A week or month one day late still holds its days but one: read as stored.)"""
    window = window_of(scope)
    if window is None or window.days is None or day is None:
        return False
    stored_day = repository.windows_day(guild_id)
    return stored_day is not None and days_between(stored_day, day) >= window.days


class Rankings:
    """Live standings: what the database holds plus what it does not hold yet, exactly once.

    Every figure (a board's top, a member's counts and ranks) is computed from one database
    snapshot and the counts that snapshot lacks (see Unwritten), so ``/top``, ``/stats`` and the
    pinned boards agree at every moment and include activity up to now. No lock is held across a
    read: a command never waits for a flush, nor a flush for a command."""

    def __init__(self, storage: Storage, activity: ActivityService, seasons: SeasonService, cache: TopCache) -> None:
        self.storage = storage
        self.activity = activity
        self.seasons = seasons
        self.cache = cache  # stored tops, each with the write number it was read at
        # Stored counts of members with unwritten counts, valid for one write number.
        self._known: dict[int, Counts] = {}
        self._known_at: tuple[int, int] | None = None  # (season, write number)
        # The last figures shown, kept past the TTL: what a command shows while the database is away.
        self._last_tops: LRUCache[Hashable, tuple[RankedEntry, ...]] = LRUCache(LAST_KNOWN_TOPS)
        self._last_standings: LRUCache[tuple[int, int], Standing] = LRUCache(LAST_KNOWN_STANDINGS)
        self.stale_answers = 0
        self._counting: asyncio.Future[None] | None = None
        # Windows whose ranks were read lately (scope -> monotonic time): counted after each flush
        # with the season, so a window's first rank after a write need not count its board inline.
        self._windows_ranked: dict[int, float] = {}
        # Members never listed by their own choice (the privacy service's, set by the container):
        # a member's rank passes over them, as the boards do.
        self.unlisted: Callable[[], AbstractSet[int]] = frozenset
        activity.add_flush_listener(self.on_flush)
        seasons.add_roll_listener(lambda finished, current: self.cache.invalidate())

    def on_flush(self, batch: ActivityBatch) -> None:
        """Move what is known forward to the write just committed instead of dropping it: the
        stored counts known for its members gain the batch, and each cached stored top takes
        the batch in when every member it moves has a known stored count (exact, as in
        merge_top); a top that cannot is dropped."""
        sequence = batch.sequence
        if sequence is None:
            self.cache.invalidate()
            return
        self._count_boards_soon(batch.season, *self._windows_ranked_lately())
        added = batch.per_member()
        known = self._known if self._known_at is not None and self._known_at[0] == batch.season else None
        moved_on: dict[str, list[int]] = {}
        for key, stored_top in self.cache.items():
            board, season, limit = key
            if window_of(season) is not None:
                # A window's top moves with the days as well as the counts: read again.
                self.cache.pop(key)
                continue
            if season != batch.season:
                continue
            if board not in moved_on:
                moved_on[board] = [u for u, counts in added.items() if _on(board, counts) > 0]
            moved = moved_on[board]
            in_top = {entry.user_id for entry in stored_top.entries}
            if len(moved) > MERGE_AT_MOST or (
                moved and not all(u in in_top or (known is not None and u in known) for u in moved)
            ):
                self.cache.pop(key)  # re-read instead: one 10-row index read
                continue
            if moved:
                stored_top.entries = merge_top(board, stored_top.entries, added, known or {}, limit)
            stored_top.sequence = sequence
        if known is not None and len(known) > KNOWN_AT_MOST:
            self._known, self._known_at = {}, None  # bounded: rebuilt by the next reads
        elif known is not None:
            for user, (messages, voice) in added.items():
                if user in known:
                    had = known[user]
                    known[user] = (had[0] + messages, had[1] + voice)
            self._known_at = (batch.season, sequence)

    def sizes(self) -> dict[str, int]:
        """Entries per member-keyed structure (for /health): each is bounded."""
        return {"cached_tops": len(self.cache.items()), "stored_counts": len(self._known)}

    def warm(self) -> None:
        """Prepare the current season's board counts off the hot path (at start, after a takeover):
        the first rank of a big board then costs what every other one does."""
        self._count_boards_soon(self.seasons.current_number())

    def _windows_ranked_lately(self) -> list[int]:
        """The windows ranked within WINDOW_RANKED_LATELY seconds (forgetting older ones): a window
        nobody asks about costs no counting."""
        now = time.monotonic()
        for scope, at in list(self._windows_ranked.items()):
            if now - at > WINDOW_RANKED_LATELY:
                del self._windows_ranked[scope]
        return sorted(self._windows_ranked)

    def _count_boards_soon(self, *scopes: int) -> None:
        """Count each board's ranked members at the new write number off the hot path (the reader
        thread), so a rank counted from the bottom of a big board need not count them itself."""
        if self._counting is not None and not self._counting.done():
            return
        try:
            self._counting = asyncio.ensure_future(
                self.storage.read(repository.count_ranked_boards, self.activity.guild_id, *scopes)
            )
        except RuntimeError:  # no running loop (a synchronous test): nothing to prepare
            return
        self._counting.add_done_callback(_consume)

    # ------------------------------------------------------------------ reading

    async def top(self, board: Board, limit: int, season: int | None = None) -> list[RankedEntry]:
        """The live top ``limit`` of a season (the current one by default)."""
        return (await self.view(board, limit, season)).entries

    async def view(self, board: Board, limit: int, season: int | None = None, caller: int | None = None) -> TopReply:
        """The live top, and the caller's own place when outside it, from one snapshot."""
        season = self.seasons.current_number() if season is None else season
        for _ in range(STANDING_READS):
            reply = await self._view_once(board, limit, season, caller)
            if reply is not None:
                self._last_tops[(board, season, limit)] = tuple(reply.entries)
                return reply
        async with self.activity.quiescent():  # writes kept committing meanwhile: hold them off once
            reply = await self._view_once(board, limit, season, caller)
            if reply is None:  # only another writer could move the write number now
                raise StorageError("the database kept changing under the read; try again")
            return reply

    def _unwritten(self, season: int) -> Unwritten:
        if window_of(season) is None and season != self.seasons.current_number():
            # a finished season: everything is written
            return Unwritten(committed=self.activity.committed_sequence, final=True)
        return self.activity.unwritten(season)

    async def _view_once(self, board: Board, limit: int, season: int, caller: int | None) -> TopReply | None:
        unwritten = self._unwritten(season)
        top = await self._top_at(board, limit, season, unwritten)
        if top is None:
            return None
        sequence, entries = top
        if caller is None or any(entry.user_id == caller for entry in entries):
            return TopReply(entries)
        read = await self._read(season, unwritten, user_id=caller, rank_boards=(board,))
        if read is None or read.sequence != sequence:
            return None
        rank = read.ranks[board]
        if rank is None:
            return TopReply(entries)
        counts = read.deltas.get(caller, (0, 0.0))
        value = _on(board, read.stored[caller]) + _on(board, counts)
        return TopReply(entries, caller=RankedEntry(caller, float(value)), caller_rank=rank)

    async def _top_at(
        self, board: Board, limit: int, season: int, unwritten: Unwritten
    ) -> tuple[int, list[RankedEntry]] | None:
        key = (board, season, limit)
        cached: StoredTop | None = self.cache.get(key)
        if cached is not None and cached.day == unwritten.day:
            deltas = unwritten.beyond(cached.sequence)
            known = self._known if self._known_at == (season, cached.sequence) else {}
            in_top = {entry.user_id for entry in cached.entries}
            if deltas is not None and all(u in in_top or u in known for u in deltas):
                return cached.sequence, merge_top(board, cached.entries, deltas, known, limit)
        read = await self._read(season, unwritten, board=board, limit=limit)
        if read is None or read.stored_top is None:
            return None
        if read.sequence == self.activity.committed_sequence or unwritten.final:
            # Still the latest write (flushes advance it from here): worth keeping for the next reader.
            self.cache.put(key, StoredTop(read.sequence, list(read.stored_top), unwritten.day))
        return read.sequence, merge_top(board, read.stored_top, read.deltas, read.stored, limit)

    async def _read(
        self,
        season: int,
        unwritten: Unwritten,
        *,
        board: Board | None = None,
        limit: int = 0,
        user_id: int | None = None,
        rank_boards: tuple[Board, ...] = (),
        unlisted: AbstractSet[int] = frozenset(),
    ) -> LiveRead | None:
        if rank_boards and window_of(season) is not None:
            self._windows_ranked[season] = time.monotonic()
        known_at = self._known_at[1] if self._known_at is not None and self._known_at[0] == season else None
        # Only what this read can use: the stored counts of members with unwritten counts.
        known = None if known_at is None else {u: self._known[u] for u in unwritten.members() if u in self._known}
        read = await self.storage.read(
            read_live,
            self.activity.guild_id,
            season,
            unwritten,
            board=board,
            limit=limit,
            user_id=user_id,
            rank_boards=rank_boards,
            known=known,
            known_at=known_at,
            unlisted=unlisted,
        )
        if (
            read is not None
            and not unwritten.final
            and window_of(season) is None
            and read.sequence == self.activity.committed_sequence
        ):
            # Kept only when it is the latest write: flushes then carry it forward (on_flush).
            # Only a season's: a window's stored counts also move with the days.
            if self._known_at != (season, read.sequence):
                self._known, self._known_at = {}, (season, read.sequence)
            self._known.update(read.stored)
        return read

    async def rank(self, board: Board, user_id: int, season: int | None = None) -> int | None:
        standing = await self.standing(user_id, season)
        return standing.message_rank if board == "messages" else standing.voice_rank

    async def standing(self, user_id: int, season: int | None = None) -> Standing:
        """The member's season (the current one by default): counts and ranks from one snapshot
        plus what it lacks, exactly once."""
        season = self.seasons.current_number() if season is None else season
        unlisted = self.unlisted()
        for _ in range(STANDING_READS):
            read = await self._read(
                season, self._unwritten(season), user_id=user_id, rank_boards=BOARDS, unlisted=unlisted
            )
            if read is not None:
                return self._standing(user_id, season, read)
        async with self.activity.quiescent():
            read = await self._read(
                season, self._unwritten(season), user_id=user_id, rank_boards=BOARDS, unlisted=unlisted
            )
            if read is None:  # only another writer could move the write number now
                raise StorageError("the database kept changing under the read; try again")
            return self._standing(user_id, season, read)

    def _standing(self, user_id: int, season: int, read: LiveRead) -> Standing:
        stored = read.stored[user_id]
        delta = read.deltas.get(user_id, (0, 0.0))
        presence = self.activity.voice.presence(user_id)
        counting = self.activity.voice.is_counting(user_id)
        standing = Standing(
            user_id=user_id,
            season=season,
            messages=stored[0] + delta[0],
            voice_seconds=stored[1] + delta[1],
            message_rank=read.ranks.get("messages"),
            voice_rank=read.ranks.get("voice"),
            live_voice_channel_id=presence.channel_id if presence else None,
            live_session_seconds=self.activity.live_session_seconds(user_id) if counting else None,
        )
        self._last_standings[(user_id, season)] = standing
        return standing

    async def best_finished(self, user_id: int) -> Placing | None:
        """The member's best placing in any finished season (lowest rank on either board): one
        row, kept up to date as each season ends (repository.record_placings)."""
        found = await self.storage.read(repository.best_placing, self.activity.guild_id, user_id)
        return None if found is None else Placing(*found)

    # ------------------------------------------------------------------ answering commands

    def writes_lagging(self) -> bool:
        """Whether stored figures lag what was counted (writes failing, or one waiting on a lock)."""
        return self.activity.failing_since is not None or self.activity.write_waiting() > WRITE_LAG_STALE

    async def top_for_reply(
        self,
        board: Board,
        limit: int,
        season: int | None = None,
        *,
        caller: int | None = None,
        patience: float = READ_PATIENCE,
    ) -> TopReply:
        """:meth:`view` for a command: the last figures shown (marked stale) when the database does
        not answer within ``patience``; with none to show, it waits for the database after all."""
        season = self.seasons.current_number() if season is None else season
        fallback = self._last_tops.get((board, season, limit))
        reply = await self._patiently(self.view(board, limit, season, caller), patience, fallback is not None)
        if reply is None:
            self.stale_answers += 1
            return TopReply(list(fallback or ()), stale=True)
        return replace(reply, stale=self.writes_lagging())

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


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned read's failure is not "never retrieved"
