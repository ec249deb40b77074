"""RuntimeSettings: live values, change notifications, the board→channel map; SettingsStore: all or
nothing against a refusing database, and loading again (a standby's takeover)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from leaderboard_bot.config import SpamLimit, Tunables
from leaderboard_bot.db import repository
from leaderboard_bot.db.storage import StorageError
from leaderboard_bot.services.settings import OVERRIDE_PREFIX, RuntimeSettings, SettingsStore
from tests.factories import open_storage, runtime_settings, tunables

G = 78


def test_current_starts_at_the_defaults_and_follows_updates() -> None:
    settings = runtime_settings(flush_interval=5.0)
    assert settings.current == tunables(flush_interval=5.0)
    new = settings.update(flush_interval=2.0, leaderboard_size=7)
    assert settings.current is new
    assert (new.flush_interval, new.leaderboard_size) == (2.0, 7)


def test_subscribers_get_old_and_new_and_can_unsubscribe() -> None:
    settings = runtime_settings()
    seen: list[tuple[float, float]] = []
    unsubscribe = settings.subscribe(lambda old, new: seen.append((old.cache_ttl, new.cache_ttl)))
    settings.update(cache_ttl=10.0)
    settings.update(cache_ttl=10.0)  # no change: nobody is told
    unsubscribe()
    unsubscribe()  # twice is harmless
    settings.update(cache_ttl=20.0)
    assert seen == [(30.0, 10.0)]


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    settings = runtime_settings()
    seen: list[Tunables] = []

    def broken(old: Tunables, new: Tunables) -> None:
        raise RuntimeError("listener bug")

    settings.subscribe(broken)
    settings.subscribe(lambda old, new: seen.append(new))
    new = settings.update(update_interval=90.0)
    assert seen == [new]


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(TypeError):
        runtime_settings().update(no_such_setting=1)


def test_each_board_has_its_channel_read_live() -> None:
    settings = runtime_settings(chat_lb_channel_id=11, vc_lb_channel_id=22)
    assert (settings.board_channel("messages"), settings.board_channel("voice")) == (11, 22)
    settings.update(vc_lb_channel_id=33)
    assert settings.board_channel("voice") == 33


# --------------------------------------------------------------------------- SettingsStore


async def test_a_reset_of_several_settings_the_database_refuses_resets_none_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored first, applied after, all or nothing: a locked database leaves the live values and
    the stored ones as they were (a change as well as a reset of all)."""
    async with open_storage(f"sqlite:///{tmp_path}/s.db") as storage:
        settings = RuntimeSettings(tunables(leaderboard_size=10))
        store = SettingsStore(settings, storage, G)
        await store.change("LEADERBOARD_SIZE", "5", by="mod")
        await store.change("SPAM_LIMIT", "2/1h", by="mod")
        before = settings.current
        real_set = repository.set_setting

        def locked(*args: object) -> None:
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(repository, "set_setting", locked)
        with pytest.raises(StorageError):
            await store.change("LEADERBOARD_SIZE", "3", by="mod")
        monkeypatch.setattr(repository, "set_setting", real_set)
        holder = sqlite3.connect(tmp_path / "s.db", timeout=0, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
        try:
            await storage.run(lambda: repository.database_proxy.obj.execute_sql("PRAGMA busy_timeout = 50"))
            with pytest.raises(StorageError):
                await store.reset(None, by="mod")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert settings.current == before and set(settings.overrides) == {"LEADERBOARD_SIZE", "SPAM_LIMIT"}
        stored = await storage.run(repository.settings_with_prefix, G, OVERRIDE_PREFIX)
        assert stored == {OVERRIDE_PREFIX + "LEADERBOARD_SIZE": "5", OVERRIDE_PREFIX + "SPAM_LIMIT": "2/1h"}
        assert await store.reset(None, by="mod") == ["LEADERBOARD_SIZE", "SPAM_LIMIT"]
        assert settings.current == tunables(leaderboard_size=10)
        assert await storage.run(repository.settings_with_prefix, G, OVERRIDE_PREFIX) == {}


async def test_loading_again_follows_what_another_instance_stored_or_reset_since(
    tmp_path: Path, log_lines: list[dict]
) -> None:
    """A standby loads at start and again at its takeover: by then the active instance may have
    changed settings (applied), reset others (back to the environment) or stored nothing new
    (nothing happens, nothing logged)."""
    async with open_storage(f"sqlite:///{tmp_path}/s.db") as storage:
        active = SettingsStore(RuntimeSettings(tunables(leaderboard_size=10)), storage, G)
        await active.change("LEADERBOARD_SIZE", "5", by="mod")
        await storage.run(repository.set_setting, G, OVERRIDE_PREFIX + "ARROW_EMOJI", "x" * 65)  # too long now
        standby_settings = RuntimeSettings(tunables(leaderboard_size=10))
        heard: list[Tunables] = []
        standby_settings.subscribe(lambda old, new: heard.append(new))
        standby = SettingsStore(standby_settings, storage, G)
        await standby.load()
        assert standby_settings.current.leaderboard_size == 5 and len(heard) == 1
        await active.change("EXCLUDED_CHANNELS", "11, 12", by="mod")
        await active.change("SPAM_LIMIT", "2/1h", by="mod")
        await active.reset("LEADERBOARD_SIZE", by="mod")
        await standby.load()  # the takeover
        current = standby_settings.current
        assert current.leaderboard_size == 10  # reset on the active instance: the environment's again
        assert current.excluded_channels == frozenset({11, 12})
        assert current.spam_limit == SpamLimit(burst=2, per_seconds=3600.0)
        assert standby_settings.overrides == {"EXCLUDED_CHANNELS": "11, 12", "SPAM_LIMIT": "2/1h"}
        assert len(heard) == 2  # one change for the subscribers, not one per setting
        lines = len(log_lines)
        await standby.load()  # nothing new: nothing changes, nothing is logged
        assert len(heard) == 2 and len(log_lines) == lines
        errors = [line for line in log_lines if line["level"] == "ERROR"]
        assert len(errors) == 1 and "ARROW_EMOJI" in errors[0]["message"]  # the bad value: said once
