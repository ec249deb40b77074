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
    top. Every change is validated by the environment's own parser before anything is stored."""

    def __init__(self, settings: RuntimeSettings, storage: Storage, guild_id: int) -> None:
        self.settings = settings
        self.storage = storage
        self.guild_id = guild_id

    async def load(self) -> None:
        """Apply the stored overrides; a stored value that no longer parses is ignored, once, loudly."""
        stored: dict[str, str] = await self.storage.run(repository.settings_with_prefix, self.guild_id, OVERRIDE_PREFIX)
        changes: dict[str, Any] = {}
        for key, text in stored.items():
            variable = key.removeprefix(OVERRIDE_PREFIX)
            try:
                field_name, value = parse_runtime(variable, str(text))
            except ConfigError as error:
                logger.error("ignoring the stored setting {} ({}); the environment's value applies", variable, error)
                continue
            changes[field_name] = value
            self.settings.overrides[variable] = str(text)
        if changes:
            self.settings.update(**changes)
            logger.info("applied {} stored setting(s): {}", len(changes), ", ".join(sorted(self.settings.overrides)))

    async def change(self, variable: str, text: str, *, by: str) -> tuple[str, str]:
        """Validate, store and apply; returns (old, new) as shown. Raises ConfigError, changing nothing."""
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
        """Back to the environment's value for ``variable`` (all overrides when None); returns what reset."""
        names = sorted(self.settings.overrides) if variable is None else [variable.strip().upper()]
        names = [n for n in names if n in self.settings.overrides]
        for name in names:
            await self.storage.run(repository.delete_setting, self.guild_id, OVERRIDE_PREFIX + name)
            del self.settings.overrides[name]
            field_name = field_of(name)
            self.settings.update(**{field_name: getattr(self.settings.defaults, field_name)})
        if names:
            logger.info("setting(s) {} reset to the environment's values by {}", ", ".join(names), by)
        return names
