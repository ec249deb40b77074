"""The live values of the runtime-changeable settings, and who to tell when they change."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from loguru import logger

from ..config import Tunables
from ..domain import Board

SettingsListener = Callable[[Tunables, Tunables], None]  # (old, new)


class RuntimeSettings:
    """One object every component reads its tunables from, at the moment it needs them.

    Nothing copies a tunable into its own state; components that must rebuild something when a
    value changes (a cache's TTL, a loop's interval) subscribe. The environment gives the
    defaults; the operations issue adds stored overrides on top through :meth:`update`.
    """

    def __init__(self, defaults: Tunables) -> None:
        self._current = defaults
        self._listeners: list[SettingsListener] = []

    @property
    def current(self) -> Tunables:
        return self._current

    def board_channel(self, board: Board) -> int:
        """The channel that holds ``board``'s pinned leaderboard and final standings."""
        tunables = self._current
        return tunables.chat_lb_channel_id if board == "messages" else tunables.vc_lb_channel_id

    def subscribe(self, listener: SettingsListener) -> Callable[[], None]:
        """Call ``listener(old, new)`` after every change; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def update(self, **changes: Any) -> Tunables:
        """Apply already-validated values and tell every subscriber; returns the new tunables."""
        old = self._current
        new = dataclasses.replace(old, **changes)
        if new == old:
            return old
        self._current = new
        for listener in list(self._listeners):
            try:
                listener(old, new)
            except Exception:
                logger.exception("a settings listener failed")
        return new
