"""build_services: one season owner for everyone, runtime setting changes that reach the services,
and a standby's takeover that applies the settings stored since it started."""

from __future__ import annotations

from pathlib import Path

from leaderboard_bot.config import SpamLimit, load_settings
from leaderboard_bot.db import Storage
from leaderboard_bot.services.container import Services, build_services, recovery_file
from leaderboard_bot.services.ratelimit import NullGuard, SpamGuard
from leaderboard_bot.services.settings import RuntimeSettings, SettingsStore
from tests.factories import MIDNIGHT, FakeClock, here

G = 7373


def services_for(tmp_path: Path, clock: FakeClock, **env: str) -> Services:
    url = f"sqlite:///{tmp_path}/c.db"
    config = load_settings({"BOT_TOKEN": "x", "GUILD_ID": str(G), "DATABASE_URL": url, **env})
    return build_services(config, Storage(url), None, clock=clock)


def test_every_service_shares_the_one_season_owner_and_settings(tmp_path: Path) -> None:
    services = services_for(tmp_path, FakeClock(MIDNIGHT))
    assert services.rankings.seasons is services.seasons
    assert services.boards.seasons is services.seasons
    assert services.seasons.activity is services.activity
    assert services.activity.names is services.names and services.boards.names is services.names
    assert services.seasons.settings is services.settings and services.boards.settings is services.settings
    assert not hasattr(services.activity, "season")  # the activity buffer does not keep a copy


def test_the_recovery_file_sits_beside_the_database(tmp_path: Path) -> None:
    file = recovery_file(f"sqlite:///{tmp_path}/c.db")
    assert file is not None and file.path == tmp_path / "c.db.unsaved.json"
    assert recovery_file("sqlite:///:memory:") is None


def test_a_symlinked_database_also_finds_recovery_files_saved_beside_the_link(tmp_path: Path) -> None:
    """They were named after the link before the lock and files followed symlinks: the first start
    after the upgrade must still write them."""
    (tmp_path / "data").mkdir()
    (tmp_path / "current").symlink_to(tmp_path / "data")
    old = tmp_path / "current" / "c.db.unsaved-20261203T000000-1.json"
    old.write_text("{}")
    file = recovery_file(f"sqlite:///{tmp_path}/current/c.db")
    assert file is not None and file.path == tmp_path / "data" / "c.db.unsaved.json"
    new = tmp_path / "data" / "c.db.unsaved-20261204T000000-2.json"
    new.write_text("{}")
    assert sorted(p.name for p in file.files()) == sorted([old.name, new.name])  # (one folder here: each once)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.db").symlink_to(tmp_path / "data" / "c.db")
    linked = recovery_file(f"sqlite:///{tmp_path}/elsewhere/c.db")
    stray = tmp_path / "elsewhere" / "c.db.unsaved-20261203T000000-3.json"
    stray.write_text("{}")
    assert linked is not None and stray in linked.files() and len(linked.files()) == 3


async def test_a_flush_writes_into_the_season_the_owner_names(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT)
    services = services_for(tmp_path, clock)
    await services.open()
    try:
        services.activity.record_message(1)
        assert await services.seasons.flush() is True
        clock.advance(10.0)
        assert await services.seasons.roll(reason="test") is not None
        services.activity.record_message(1)
        assert await services.seasons.flush() is True
        assert (await services.rankings.standing(1, 1)).messages == 1
        assert (await services.rankings.standing(1)).messages == 1
        assert (await services.rankings.standing(1)).season == 2
    finally:
        await services.storage.close()


def test_changing_the_voice_rules_at_run_time_re_decides_who_counts(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT)
    services = services_for(tmp_path, clock, VOICE_COUNT_DEAFENED="false")
    voice = services.activity.voice
    services.activity.record_voice(1, here(5, deafened=True))
    assert not voice.is_counting(1)
    clock.advance(30.0)
    services.settings.update(voice_count_deafened=True)
    assert voice.is_counting(1)
    assert voice.session_seconds(1, clock()) == 0.0  # from the change on, nothing before it
    services.settings.update(voice_count_deafened=False)
    assert not voice.is_counting(1)


def test_changing_the_spam_limit_reconfigures_or_swaps_the_guard(tmp_path: Path) -> None:
    services = services_for(tmp_path, FakeClock(MIDNIGHT), SPAM_LIMIT="5/5s")
    guard = services.activity.guard
    assert isinstance(guard, SpamGuard)
    services.settings.update(spam_limit=SpamLimit(burst=2, per_seconds=10.0))
    assert services.activity.guard is guard  # same buckets, new limits
    assert [guard.allow(9, 0.0) for _ in range(3)] == [True, True, False]
    services.settings.update(spam_limit=None)
    assert isinstance(services.activity.guard, NullGuard)
    services.settings.update(spam_limit=SpamLimit(burst=1, per_seconds=1.0))
    assert isinstance(services.activity.guard, SpamGuard)


def test_a_changed_cache_ttl_reaches_the_ranking_cache(tmp_path: Path) -> None:
    services = services_for(tmp_path, FakeClock(MIDNIGHT), CACHE_TTL="30s")
    cache = services.rankings.cache
    cache.put(("messages", 1, 10), ())
    services.settings.update(cache_ttl=0.0)  # entries from now on expire at once
    cache.put(("voice", 1, 10), ())
    assert cache.get(("messages", 1, 10)) == ()
    assert cache.get(("voice", 1, 10)) is None


async def test_a_takeover_applies_the_settings_stored_since_the_standby_opened_its_storage(tmp_path: Path) -> None:
    """A standby opens its storage at start and activates at its takeover, maybe days later: the
    overrides the active instance stored (or reset) meanwhile are in force before it counts."""
    clock = FakeClock(MIDNIGHT)
    standby = services_for(tmp_path, clock, SPAM_LIMIT="off", LEADERBOARD_SIZE="10")
    await standby.open_storage()
    try:
        active = SettingsStore(RuntimeSettings(standby.settings.defaults), standby.storage, G)  # the other instance
        await active.change("EXCLUDED_CHANNELS", "55", by="mod")
        await active.change("LEADERBOARD_SIZE", "1", by="mod")
        await active.change("SPAM_LIMIT", "2/1h", by="mod")
        assert standby.settings.current.leaderboard_size == 10 and standby.settings.overrides == {}
        await standby.activate()
        current = standby.settings.current
        assert current.excluded_channels == frozenset({55}) and current.leaderboard_size == 1
        assert set(standby.settings.overrides) == {"EXCLUDED_CHANNELS", "LEADERBOARD_SIZE", "SPAM_LIMIT"}
        guard = standby.activity.guard  # the spam limit reached the counting path too
        assert isinstance(guard, SpamGuard)
        assert [standby.activity.record_message(1, MIDNIGHT + i) for i in range(3)].count(True) == 2
    finally:
        await standby.storage.close()
