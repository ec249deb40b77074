"""What a board shows: its ranked lines with names, for any season, and when that last changed.

The pinned messages themselves (ids, pins, edits) belong to ``exts/scheduler``; this module owns
the standings they display, so ``/top``, the scheduler and the season announcements agree.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..db import Storage, repository
from ..domain import BOARDS, Board, BoardLine, FinishedSeason, RankedEntry
from .membership import MembershipService
from .names import NameService
from .privacy import PrivacyService
from .ranking import Rankings, TopReply
from .seasons import SeasonService
from .settings import RuntimeSettings


@dataclass
class _LastChange:
    shown_hash: str | None = None
    changed_at: float | None = None

    def to_setting(self) -> dict[str, object]:
        return {"standings_hash": self.shown_hash, "changed_at": self.changed_at}


def digest(value: object) -> str:
    """A stable fingerprint of a JSON-able value: how the boards tell "unchanged" cheaply."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# HIDE_DEPARTED: a board reads this many entries beyond its size, so that members who left can be
# dropped and the lines still filled; more (doubling, up to MOST_CANDIDATES) when many of them left.
EXTRA_CANDIDATES = 15
MOST_CANDIDATES = 200


def _setting_key(board: Board) -> str:
    return f"standings:{board}"


def _legacy_key(board: Board) -> str:
    return f"board:{board}"  # before 0.2 the scheduler kept the last change with the message id


class BoardService:
    def __init__(
        self,
        storage: Storage,
        *,
        guild_id: int,
        rankings: Rankings,
        names: NameService,
        seasons: SeasonService,
        settings: RuntimeSettings,
        clock: Callable[[], float] = time.time,
        membership: MembershipService | None = None,
        privacy: PrivacyService | None = None,
    ) -> None:
        self.storage = storage
        self.guild_id = guild_id
        self.rankings = rankings
        self.names = names
        self.seasons = seasons
        self.settings = settings
        self.clock = clock
        self.membership = membership  # HIDE_DEPARTED: who left the server
        self.privacy = privacy  # /privacy hide, stop, delete: never listed
        self._changes: dict[Board, _LastChange] = {board: _LastChange() for board in BOARDS}
        self._saved: dict[Board, dict[str, object]] = {}

    async def load(self) -> None:
        """Read when each board last changed, as stored by an earlier run."""
        for board in BOARDS:
            stored = await self.storage.run(repository.get_setting, self.guild_id, _setting_key(board))
            if stored is None:
                stored = await self.storage.run(repository.get_setting, self.guild_id, _legacy_key(board))
            if isinstance(stored, dict):
                change = self._changes[board]
                change.shown_hash = stored.get("standings_hash")
                change.changed_at = stored.get("changed_at")
                self._saved[board] = change.to_setting()

    async def lines(self, board: Board, *, season: int | None = None) -> list[BoardLine]:
        """The top of a board with display names, for the current season or an archived one
        (``season`` is passed to the rankings as it is). Members who chose to be hidden (or not
        counted) are left out, and with HIDE_DEPARTED members who left the server: the lines below
        move up."""
        season = self.seasons.current_number() if season is None else season
        size = self.settings.current.leaderboard_size
        membership = self._hiding()
        if membership is None and not self._unlisted():
            return await self._named(await self.rankings.top(board, size, season))

        async def top(limit: int) -> TopReply:
            return TopReply(await self.rankings.top(board, limit, season))

        reply, gone = await self._without_departed(membership, top, size)
        return await self._named([e for e in reply.entries if e.user_id not in gone][:size])

    async def lines_for_reply(
        self, board: Board, *, season: int, caller: int
    ) -> tuple[list[BoardLine], RankedEntry | None, int | None, bool]:
        """:meth:`lines` for a command, with the caller's own (value, rank) when outside the top,
        both from one snapshot: (lines, caller, caller's rank, stale). From the last figures shown
        when the database does not answer in time (see Rankings.top_for_reply).

        With HIDE_DEPARTED the caller's rank leaves out the members who left among those read
        ahead of them (the board's size plus :data:`EXTRA_CANDIDATES`, or more): exact when the
        caller is among those, otherwise it may still count departed members further down."""
        size = self.settings.current.leaderboard_size
        membership = self._hiding()
        if membership is None and not self._unlisted():
            reply = await self.rankings.top_for_reply(board, size, season, caller=caller)
            return await self._named(reply.entries), reply.caller, reply.caller_rank, reply.stale
        if membership is not None:
            membership.note_present(caller)  # they are using a command in the server: here

        async def top(limit: int) -> TopReply:
            return await self.rankings.top_for_reply(board, limit, season, caller=caller)

        reply, gone = await self._without_departed(membership, top, size, keep=caller)
        kept = [e for e in reply.entries if e.user_id not in gone]
        shown = kept[:size]
        caller_entry, caller_rank = None, None
        if caller in gone:
            pass  # hidden by their own choice: /top is public, so no "your rank" line (/stats has it)
        elif not any(e.user_id == caller for e in shown):
            position = next((i for i, e in enumerate(kept, start=1) if e.user_id == caller), None)
            if position is not None:  # read, but below the shown lines: its place among those read
                caller_entry, caller_rank = kept[position - 1], position
            elif reply.caller is not None and reply.caller_rank is not None:
                # Every entry read is ahead of the caller: those who left no longer count.
                gone_ahead = sum(1 for e in reply.entries if e.user_id in gone)
                caller_entry, caller_rank = reply.caller, max(1, reply.caller_rank - gone_ahead)
        return await self._named(shown), caller_entry, caller_rank, reply.stale

    def _unlisted(self) -> frozenset[int]:
        """Members never listed by their own choice (/privacy hide, stop, delete)."""
        return frozenset() if self.privacy is None else self.privacy.unlisted

    def _hiding(self) -> MembershipService | None:
        """The membership service when HIDE_DEPARTED is on (None: show everyone, ask nothing)."""
        if self.membership is None or not self.settings.current.hide_departed:
            return None
        return self.membership

    async def _without_departed(
        self,
        membership: MembershipService | None,
        top: Callable[[int], Awaitable[TopReply]],
        size: int,
        *,
        keep: int | None = None,
    ) -> tuple[TopReply, set[int]]:
        """Read ``size`` + :data:`EXTRA_CANDIDATES` entries, more while too many of them are left
        out and the board has more, and find who is left out among them: members hidden by their
        own choice (the caller ``keep`` too: they are not listed either), and with ``membership``
        (HIDE_DEPARTED) who left. Lookups share one time budget: those without an answer by then
        are shown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (0.0 if membership is None else membership.budget)
        limit = size + EXTRA_CANDIDATES
        while True:
            reply = await top(limit)
            unlisted = self._unlisted()
            gone = {e.user_id for e in reply.entries if e.user_id in unlisted}
            if membership is not None:
                candidates = [e.user_id for e in reply.entries if e.user_id != keep and e.user_id not in gone]
                gone |= await membership.departed(candidates, budget=max(0.0, deadline - loop.time()))
            kept = len(reply.entries) - len(gone)
            # A stale reply is the last figures read: a longer read would wait for the database.
            if kept >= size or len(reply.entries) < limit or limit >= MOST_CANDIDATES or reply.stale:
                return reply, gone
            limit = min(MOST_CANDIDATES, limit * 2)

    async def _named(self, entries: list[RankedEntry]) -> list[BoardLine]:
        names = await self.names.resolve(e.user_id for e in entries)
        return [
            BoardLine(rank=i, name=names[e.user_id], user_id=e.user_id, value=e.value)
            for i, e in enumerate(entries, start=1)
        ]

    async def finished_seasons(self, limit: int) -> list[FinishedSeason]:
        """The most recent finished seasons, newest first, each with the winner of each board."""
        seasons = await self.storage.read(repository.finished_seasons, self.guild_id, limit)
        out = []
        for number, started_at, ended_at in seasons:
            winners = {}
            for board in BOARDS:
                top = await self._first_listed(board, number)
                winners[board] = (await self._named(top))[0] if top else None
            out.append(FinishedSeason(number, started_at, ended_at, winners))
        return out

    async def _first_listed(self, board: Board, season: int) -> list[RankedEntry]:
        """The season's leader, passing over members hidden by their own choice (as one entry,
        or none). Members who left stay: a past season's winner is history."""
        limit = 1
        while True:
            unlisted = self._unlisted()
            top = await self.rankings.top(board, limit, season)
            listed = [e for e in top if e.user_id not in unlisted]
            if listed or len(top) < limit or limit >= MOST_CANDIDATES:
                return listed[:1]
            limit = min(MOST_CANDIDATES, limit + len(unlisted) + EXTRA_CANDIDATES)

    def changed_at(self, board: Board) -> float | None:
        """When what the board shows last changed (None before it was ever shown)."""
        return self._changes[board].changed_at

    async def note_shown(self, board: Board, shown: object) -> float | None:
        """Record what the board shows now (any JSON-able value, as displayed); returns when it last
        changed. The moment is kept in the database, so a restart does not make it "just now"."""
        change = self._changes[board]
        shown_hash = digest(shown)
        if shown_hash != change.shown_hash:
            change.shown_hash, change.changed_at = shown_hash, self.clock()
        state = change.to_setting()
        if self._saved.get(board) != state:
            await self.storage.run(repository.set_setting, self.guild_id, _setting_key(board), state)
            self._saved[board] = state
        return change.changed_at
