"""What a board shows: its ranked lines with names, for any season, and when that last changed.

The pinned messages themselves (ids, pins, edits) belong to ``exts/scheduler``; this module owns
the standings they display, so ``/top``, the scheduler and the season announcements agree.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..db import Storage, repository
from ..domain import BOARDS, Board, BoardLine, FinishedSeason, RankedEntry
from .names import NameService
from .ranking import Rankings
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
    ) -> None:
        self.storage = storage
        self.guild_id = guild_id
        self.rankings = rankings
        self.names = names
        self.seasons = seasons
        self.settings = settings
        self.clock = clock
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
        """The top of a board with display names, for the current season or an archived one."""
        season = self.seasons.current_number() if season is None else season
        entries = await self.rankings.top(board, self.settings.current.leaderboard_size, season)
        return await self._named(entries)

    async def lines_for_reply(
        self, board: Board, *, season: int, caller: int
    ) -> tuple[list[BoardLine], RankedEntry | None, int | None, bool]:
        """:meth:`lines` for a command, with the caller's own (value, rank) when outside the top,
        both from one snapshot: (lines, caller, caller's rank, stale). From the last figures shown
        when the database does not answer in time (see Rankings.top_for_reply)."""
        size = self.settings.current.leaderboard_size
        reply = await self.rankings.top_for_reply(board, size, season, caller=caller)
        return await self._named(reply.entries), reply.caller, reply.caller_rank, reply.stale

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
                top = await self.rankings.top(board, 1, number)
                winners[board] = (await self._named(top))[0] if top else None
            out.append(FinishedSeason(number, started_at, ended_at, winners))
        return out

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
