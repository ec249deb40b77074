"""bot.py's wiring: the intents, the services it builds, the NameSource port, and closing once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import AsyncMock

import disnake
import pytest

from leaderboard_bot.bot import EXTENSIONS, LeaderboardBot, bot_intents
from leaderboard_bot.config import load_settings
from leaderboard_bot.db import Storage
from tests.helpers import mock_guild, mock_member, mock_user

GUILD = 4545


def not_found() -> disnake.NotFound:
    return disnake.NotFound(SimpleNamespace(status=404, reason="Not Found"), "Unknown Member")  # type: ignore[arg-type]


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[LeaderboardBot]:
    url = f"sqlite:///{tmp_path}/bot.db"
    config = load_settings({"BOT_TOKEN": "x", "GUILD_ID": str(GUILD), "DATABASE_URL": url})
    built = LeaderboardBot(config, Storage(url))
    yield built
    await built.close()


def test_only_the_intents_the_bot_uses_no_privileged_ones() -> None:
    intents = bot_intents()
    enabled = {name for name, value in intents if value}
    assert enabled == {"guilds", "guild_messages", "voice_states"}


def test_the_errors_extension_loads_first() -> None:
    assert EXTENSIONS[0] == "leaderboard_bot.exts.errors"


async def test_the_bot_builds_one_set_of_services_from_its_config(bot: LeaderboardBot) -> None:
    services = bot.services
    assert services.rankings.seasons is services.seasons and services.boards.rankings is services.rankings
    assert services.settings.current == bot.config.tunables
    assert services.names.source is bot  # the bot is the NameSource port
    assert bot._test_guilds == (GUILD,)  # commands are registered for the one server: they appear at once


async def test_live_name_comes_from_the_member_cache(bot: LeaderboardBot, monkeypatch: pytest.MonkeyPatch) -> None:
    guild = mock_guild(GUILD)
    guild.get_member.side_effect = {1: mock_member(1, display_name="Ali", name="alice")}.get
    monkeypatch.setattr(LeaderboardBot, "guild", property(lambda self: guild))
    assert bot.live_name(1) == ("Ali", "alice")
    assert bot.live_name(2) is None


async def test_live_name_without_the_guild_is_none(bot: LeaderboardBot) -> None:
    assert bot.live_name(1) is None  # not connected: no guild cached


async def test_fetch_name_asks_the_member_then_the_user(bot: LeaderboardBot, monkeypatch: pytest.MonkeyPatch) -> None:
    guild = mock_guild(GUILD)
    monkeypatch.setattr(LeaderboardBot, "guild", property(lambda self: guild))
    guild.fetch_member.return_value = mock_member(1, display_name="Ali", name="alice")
    assert await bot.fetch_name(1) == ("Ali", "alice")

    guild.fetch_member.side_effect = not_found()  # left the server
    monkeypatch.setattr(bot, "fetch_user", AsyncMock(return_value=mock_user(2, global_name="Bobby", name="bob")))
    assert await bot.fetch_name(2) == ("Bobby", "bob")

    monkeypatch.setattr(bot, "fetch_user", AsyncMock(side_effect=not_found()))  # no such account
    assert await bot.fetch_name(3) is None


async def test_close_is_idempotent_and_writes_once(bot: LeaderboardBot, monkeypatch: pytest.MonkeyPatch) -> None:
    await bot.services.open()
    monkeypatch.setattr(bot, "_prepared", True)  # as after prepare(), without loading the extensions
    calls: list[int] = []
    real = bot.services.activity.shutdown

    async def counted(*args: object, **kwargs: object) -> bool:
        calls.append(1)
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bot.services.activity, "shutdown", counted)
    bot.services.activity.record_message(1)
    await bot.close()
    await bot.close()
    assert calls == [1] and bot.closing and bot.shutdown_clean


def test_the_web_extension_is_loaded_only_with_web_port() -> None:
    from leaderboard_bot.bot import WEB_EXTENSION, extensions

    off = load_settings({"BOT_TOKEN": "x", "GUILD_ID": str(GUILD)})
    on = load_settings({"BOT_TOKEN": "x", "GUILD_ID": str(GUILD), "WEB_PORT": "8081", "WEB_PUBLIC": "true"})
    assert WEB_EXTENSION in EXTENSIONS
    assert extensions(on) == EXTENSIONS
    assert extensions(off) == tuple(e for e in EXTENSIONS if e != WEB_EXTENSION)
    assert extensions(off)[0] == "leaderboard_bot.exts.errors"
