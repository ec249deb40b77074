"""The live values of the runtime-changeable settings, and who to tell when they change."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from loguru import logger

from ..config import ConfigError, Tunables, field_of, parse_runtime, show_value
from ..db import Storage, repository
from ..domain import Board

SettingsListener = Callable[[Tunables, Tunables], None]  # (old, new)


class RuntimeSettings:
    """One object every component reads its tunables from, at the moment it needs them.

    Nothing copies a tunable into its own state; components that must rebuild something when a
    value changes (a cache's TTL, a loop's interval) subscribe. The environment gives the
    defaults; the operations issue adds stored overrides on top through :meth:`update`.
    """

    def __init__(self, defaults: Tunables) -> None:
        self.defaults = defaults  # from the environment
        self._current = defaults
        self._listeners: list[SettingsListener] = []
        self.overrides: dict[str, str] = {}  # variable -> the stored text that won over the environment

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


OVERRIDE_PREFIX = "override:"


class SettingsStore:
    """Red-DiscordBot's pattern: registered defaults (the environment), persisted overrides on
    top. Every change is validated by the environment's own parser before anything is stored.

    The database and the live values never disagree after a call: a change or a reset is stored
    first and applied in memory only once the write succeeded, so a :class:`StorageError` (a
    locked database) leaves both as they were."""

    def __init__(self, settings: RuntimeSettings, storage: Storage, guild_id: int) -> None:
        self.settings = settings
        self.storage = storage
        self.guild_id = guild_id
        self._reported: set[tuple[str, str]] = set()  # stored values already logged as unusable

    async def load(self) -> None:
        """Make the stored overrides the ones in force: those stored are applied, those no longer
        stored (reset by another instance) return to the environment's values. Safe to call again
        (at start, and at a standby's takeover); logs only what it changed. A stored value that no
        longer parses is ignored, once, loudly. Raises StorageError, changing nothing."""
        stored: dict[str, str] = await self.storage.run(repository.settings_with_prefix, self.guild_id, OVERRIDE_PREFIX)
        wanted: dict[str, str] = {}
        changes: dict[str, Any] = {}
        for key, raw in stored.items():
            variable, text = key.removeprefix(OVERRIDE_PREFIX), str(raw)
            try:
                field_name, value = parse_runtime(variable, text)
            except ConfigError as error:
                if (variable, text) not in self._reported:
                    self._reported.add((variable, text))
                    logger.error(
                        "ignoring the stored setting {} ({}); the environment's value applies", variable, error
                    )
                continue
            wanted[variable] = text
            changes[field_name] = value
        dropped = sorted(set(self.settings.overrides) - set(wanted))
        for variable in dropped:
            field_name = field_of(variable)
            changes.setdefault(field_name, getattr(self.settings.defaults, field_name))
        if wanted == self.settings.overrides:
            return
        applied = sorted(v for v, text in wanted.items() if self.settings.overrides.get(v) != text)
        self.settings.overrides.clear()
        self.settings.overrides.update(wanted)
        self.settings.update(**changes)
        if applied:
            logger.info("applied {} stored setting(s): {}", len(applied), ", ".join(applied))
        if dropped:
            logger.info("setting(s) {} no longer stored: back to the environment's values", ", ".join(dropped))

    def overridden(self, variable: str | None) -> list[str]:
        """What :meth:`reset` would return to the environment (no I/O): ``variable`` if it is
        overridden here, every override when None."""
        names = sorted(self.settings.overrides) if variable is None else [variable.strip().upper()]
        return [n for n in names if n in self.settings.overrides]

    async def change(self, variable: str, text: str, *, by: str) -> tuple[str, str]:
        """Validate, store and apply; returns (old, new) as shown. Raises ConfigError (before any
        I/O) or StorageError, changing nothing in either case."""
        variable = variable.strip().upper()
        field_name, value = parse_runtime(variable, text)
        old = show_value(getattr(self.settings.current, field_name))
        await self.storage.run(repository.set_setting, self.guild_id, OVERRIDE_PREFIX + variable, text.strip())
        self.settings.overrides[variable] = text.strip()
        self.settings.update(**{field_name: value})
        new = show_value(value)
        logger.info("setting {} changed from {} to {} by {}", variable, old, new, by)
        return old, new

    async def reset(self, variable: str | None, *, by: str) -> list[str]:
        """Back to the environment's value for ``variable`` (all overrides when None); returns what
        reset. Every name is deleted in one transaction: a StorageError resets none of them."""
        names = self.overridden(variable)
        if not names:
            return []
        await self.storage.run(repository.delete_settings, self.guild_id, [OVERRIDE_PREFIX + name for name in names])
        changes: dict[str, Any] = {}
        for name in names:
            if name not in self.settings.overrides:
                continue  # reset meanwhile by a call that finished first
            del self.settings.overrides[name]
            field_name = field_of(name)
            changes[field_name] = getattr(self.settings.defaults, field_name)
        self.settings.update(**changes)
        logger.info("setting(s) {} reset to the environment's values by {}", ", ".join(names), by)
        return names
