"""Members' own choices about their data (``/privacy``): hidden from every board, counting stopped,
everything erased. The one owner of those choices: loaded at start, changed only through here,
persisted as settings rows ``privacy:<user id>`` (no table of its own).

- **hidden**: still counted, never listed (boards, /top, final standings, archived seasons, /seasons).
- **stopped**: not counted at all (no messages, no voice time, no name stored) and not listed. What
  was counted before the choice stays (it is written with the next flush), nothing after it.
- **delete**: every stored row about the member is erased, with what is waiting in memory to be
  written, and a stop marker (``privacy:<id>`` = ``stopped``) is the one row left: without it the
  next message would start counting them again. ``/privacy start`` removes it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from ..db import Storage, repository
from ..db.storage import StorageError
from ..domain import window_of

if TYPE_CHECKING:
    from .activity import ActivityService
    from .names import NameService

HIDDEN = "hidden"
STOPPED = "stopped"
FLAGS = (HIDDEN, STOPPED)

# (user id, choices before, choices after)
PrivacyListener = Callable[[int, frozenset[str], frozenset[str]], None]


def parse(value: Any) -> frozenset[str]:
    """The flags in a stored value (``"hidden"``, ``"stopped"`` or ``"hidden,stopped"``)."""
    if not isinstance(value, str):
        return frozenset()
    return frozenset(part for part in value.split(",") if part in FLAGS)


def encode(flags: frozenset[str]) -> str:
    return ",".join(flag for flag in FLAGS if flag in flags)


def _period(scope: int) -> str | None:
    window = window_of(scope)
    return None if window is None else window.period


@dataclass(frozen=True)
class Erased:
    """What ``/privacy delete`` removed: rows per table, and rows dropped from memory."""

    rows: dict[str, int]
    unwritten: int


class PrivacyService:
    def __init__(
        self,
        storage: Storage,
        *,
        guild_id: int,
        activity: ActivityService | None = None,
        names: NameService | None = None,
    ) -> None:
        self.storage = storage
        self.guild_id = guild_id
        self.activity = activity
        self.names = names
        self._hidden: set[int] = set()
        self._stopped: set[int] = set()
        self._unlisted: frozenset[int] = frozenset()
        self._listeners: list[PrivacyListener] = []

    async def load(self) -> None:
        """Read every member's stored choice (at start, and at a takeover)."""
        stored = await self.storage.run(repository.settings_with_prefix, self.guild_id, repository.PRIVACY_PREFIX)
        self._hidden.clear()
        self._stopped.clear()
        for key, value in stored.items():
            try:
                user_id = int(key.removeprefix(repository.PRIVACY_PREFIX))
            except ValueError:
                continue
            flags = parse(value)
            if HIDDEN in flags:
                self._hidden.add(user_id)
            if STOPPED in flags:
                self._stopped.add(user_id)
        self._refresh()
        if self._hidden or self._stopped:
            logger.info("privacy: {} member(s) hidden, {} not counted", len(self._hidden), len(self._stopped))

    # ------------------------------------------------------------------ reading (on the hot path)

    def is_stopped(self, user_id: int) -> bool:
        return user_id in self._stopped

    def is_unlisted(self, user_id: int) -> bool:
        """Never shown on a board: hidden, or not counted (stopped or deleted)."""
        return user_id in self._unlisted

    @property
    def unlisted(self) -> frozenset[int]:
        return self._unlisted

    @property
    def hidden(self) -> frozenset[int]:
        return frozenset(self._hidden)

    @property
    def stopped(self) -> frozenset[int]:
        return frozenset(self._stopped)

    @property
    def stopped_live(self) -> AbstractSet[int]:
        """The set of stopped members itself, changed in place (for NameService.withheld)."""
        return self._stopped

    def choices(self, user_id: int) -> frozenset[str]:
        return frozenset(
            flag for flag, members in ((HIDDEN, self._hidden), (STOPPED, self._stopped)) if user_id in members
        )

    def subscribe(self, listener: PrivacyListener) -> Callable[[], None]:
        """Be told of every change (the tracking extension stops a member's voice time at once)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # ------------------------------------------------------------------ changing

    async def set_flag(self, user_id: int, flag: str, on: bool) -> bool:
        """Turn one choice on or off, stored first (a StorageError leaves everything as it was).
        Returns whether anything changed."""
        if flag not in FLAGS:
            raise ValueError(f"unknown privacy choice {flag!r}")
        before = self.choices(user_id)
        after = before | {flag} if on else before - {flag}
        if after == before:
            return False
        key = repository.privacy_key(user_id)
        if after:
            await self.storage.run(repository.set_setting, self.guild_id, key, encode(after))
        else:
            await self.storage.run(repository.delete_setting, self.guild_id, key)
        self._apply(user_id, after)
        if flag == STOPPED and on and self.names is not None:
            self.names.forget(user_id)  # a name seen but not yet written is not written
        return True

    async def erase(self, user_id: int) -> Erased:
        """Erase everything stored about the member and stop counting them. The member stops
        counting at once (voice closed by the listeners), then, with no write under way, what is
        waiting in memory is dropped and every row deleted in one transaction, which also stores
        the stop marker. A StorageError leaves the database as it was, but the member is no
        longer counted until the bot restarts (and what was waiting in memory is gone)."""
        self._apply(user_id, self.choices(user_id) | {STOPPED})
        dropped = 0
        if self.activity is None:
            rows = await self._erase_rows(user_id)
        else:
            async with self.activity.quiescent():  # no write under way: none can bring rows back
                await self._write_spilled()
                dropped = self.activity.forget(user_id)
                if self.names is not None:
                    self.names.forget(user_id)
                rows = await self._erase_rows(user_id)
        self._apply(user_id, frozenset({STOPPED}))
        logger.info("privacy: erased the data of a member on their request ({} rows)", sum(rows.values()))
        return Erased(rows, dropped)

    async def _write_spilled(self) -> None:
        """Counts moved to the recovery file during an outage would be written after the erase,
        bringing the member back: write them first (the caller holds the flush lock)."""
        activity = self.activity
        if activity is None or not activity.spilled_rows:
            return
        await activity.write_locked(activity.current_season())
        if activity.spilled_rows:
            raise StorageError("the counts saved to disk during the outage could not be written yet")

    async def _erase_rows(self, user_id: int) -> dict[str, int]:
        marker = {repository.privacy_key(user_id): encode(frozenset({STOPPED}))}
        return await self.storage.run(repository.erase_member, self.guild_id, user_id, marker)

    async def data(self, user_id: int) -> dict[str, Any]:
        """Everything stored about the member, and what is counted but not yet written."""
        stored = await self.storage.read(repository.member_data, self.guild_id, user_id)
        unwritten = {"messages": 0, "voice_seconds": 0.0}
        if self.activity is not None:
            unwritten = {
                "messages": self.activity.pending_messages(user_id),
                "voice_seconds": self.activity.unflushed_voice_seconds(user_id),
            }
        windows = [{"period": _period(w["scope"]), **w} for w in stored["windows"]]
        return {**stored, "windows": windows, "unwritten": unwritten, "privacy": sorted(self.choices(user_id))}

    def _apply(self, user_id: int, after: frozenset[str]) -> None:
        before = self.choices(user_id)
        for flag, members in ((HIDDEN, self._hidden), (STOPPED, self._stopped)):
            if flag in after:
                members.add(user_id)
            else:
                members.discard(user_id)
        self._refresh()
        if before != after:
            for listener in list(self._listeners):
                try:
                    listener(user_id, before, after)
                except Exception:
                    logger.exception("privacy listener failed")

    def _refresh(self) -> None:
        self._unlisted = frozenset(self._hidden | self._stopped)
