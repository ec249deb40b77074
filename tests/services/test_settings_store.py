"""Stored overrides of the runtime settings: validated, applied at once, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from leaderboard_bot.config import ConfigError, SpamLimit
from leaderboard_bot.db import repository
from leaderboard_bot.services.settings import OVERRIDE_PREFIX, RuntimeSettings, SettingsStore
from tests.factories import open_storage, tunables

G = 77


async def test_a_change_is_validated_applied_stored_and_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    async with open_storage(url) as storage:
        settings = RuntimeSettings(tunables())
        heard: list[float] = []
        settings.subscribe(lambda old, new: heard.append(new.update_interval))
        store = SettingsStore(settings, storage, G)
        assert await store.change("update_interval", "2m", by="mod") == ("60s", "120s")
        assert settings.current.update_interval == 120.0 and heard == [120.0]
        await store.change("SPAM_LIMIT", "10/1m", by="mod")
        with pytest.raises(ConfigError, match="UPDATE_INTERVAL"):
            await store.change("UPDATE_INTERVAL", "soon", by="mod")
        with pytest.raises(ConfigError, match="cannot be changed at runtime"):
            await store.change("DATABASE_URL", "sqlite:///x.db", by="mod")
        assert settings.current.update_interval == 120.0  # a bad value changed nothing
    async with open_storage(url) as storage:  # a restart
        settings = RuntimeSettings(tunables())
        await SettingsStore(settings, storage, G).load()
        assert settings.current.update_interval == 120.0
        assert settings.current.spam_limit == SpamLimit(burst=10, per_seconds=60.0)
        assert set(settings.overrides) == {"UPDATE_INTERVAL", "SPAM_LIMIT"}


async def test_reset_returns_to_the_environment(tmp_path: Path) -> None:
    async with open_storage(f"sqlite:///{tmp_path}/s.db") as storage:
        settings = RuntimeSettings(tunables(leaderboard_size=10))
        store = SettingsStore(settings, storage, G)
        await store.change("LEADERBOARD_SIZE", "5", by="mod")
        await store.change("EXCLUDED_CHANNELS", "1, 2", by="mod")
        assert settings.current.excluded_channels == frozenset({1, 2})
        assert await store.reset("leaderboard_size", by="mod") == ["LEADERBOARD_SIZE"]
        assert settings.current.leaderboard_size == 10
        assert await store.reset(None, by="mod") == ["EXCLUDED_CHANNELS"]
        assert settings.current == tunables(leaderboard_size=10)
        assert await storage.run(repository.settings_with_prefix, G, OVERRIDE_PREFIX) == {}
        assert await store.reset(None, by="mod") == []


async def test_a_stored_value_that_no_longer_parses_is_ignored_with_one_line(
    tmp_path: Path, log_lines: list[dict]
) -> None:
    async with open_storage(f"sqlite:///{tmp_path}/s.db") as storage:
        await storage.run(repository.set_setting, G, OVERRIDE_PREFIX + "LEADERBOARD_SIZE", "99")
        settings = RuntimeSettings(tunables())
        await SettingsStore(settings, storage, G).load()
        assert settings.current.leaderboard_size == 10
        errors = [line for line in log_lines if line["level"] == "ERROR"]
        assert len(errors) == 1 and "LEADERBOARD_SIZE" in errors[0]["message"]
