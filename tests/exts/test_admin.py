"""``/leaderboard settings set`` and ``reset`` against stand-in Discord objects: a write to the
database is always deferred first (privately), so a locked database is answered within Discord's
3 s; a write the database refuses changes nothing and is answered kindly, with one log line."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock

import disnake
import pytest
from loguru import logger

from leaderboard_bot.db.storage import StorageError
from leaderboard_bot.exts.admin import Admin
from leaderboard_bot.services.settings import RuntimeSettings, SettingsStore
from tests.factories import tunables
from tests.helpers import mock_interaction, mock_member

G = 4242


class LockedStorage:
    """A database that takes its time and then refuses every write, as one locked by a backup
    does (SQLite's busy timeout); it records whether the interaction was acknowledged first."""

    def __init__(self, acknowledged: Callable[[], bool]) -> None:
        self.acknowledged = acknowledged
        self.locked = True
        self.stored: dict[str, Any] = {}
        self.acknowledged_before_write: list[bool] = []

    async def run(self, func: Any, guild_id: int, *args: Any) -> Any:
        self.acknowledged_before_write.append(self.acknowledged())
        await asyncio.sleep(0)
        if self.locked:
            raise StorageError.describe(sqlite3.OperationalError("database is locked"))
        if func.__name__ == "set_setting":
            self.stored[args[0]] = args[1]
        else:  # delete_settings
            for key in args[0]:
                self.stored.pop(key, None)


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every log line with its level and whether it carries a traceback."""
    lines: list[dict[str, Any]] = []
    sink = logger.add(
        lambda m: lines.append(
            {"level": m.record["level"].name, "message": m.record["message"], "traceback": m.record["exception"]}
        ),
        level="DEBUG",
        format="{message}",
    )
    yield lines
    logger.remove(sink)


def manager() -> Any:
    inter = mock_interaction(
        guild_id=G, guild=None, author=mock_member(5, name="mod"), permissions=disnake.Permissions(manage_guild=True)
    )
    inter.response.send_message = AsyncMock()
    inter.response.defer = AsyncMock()
    inter.response.is_done.return_value = False
    inter.edit_original_response = AsyncMock()
    return inter


def admin_with(inter: Any) -> tuple[Admin, RuntimeSettings, LockedStorage]:
    settings = RuntimeSettings(tunables(leaderboard_size=10))
    storage = LockedStorage(lambda: inter.response.defer.await_count > 0)
    store = SettingsStore(settings, storage, G)  # type: ignore[arg-type]
    bot = SimpleNamespace(
        config=SimpleNamespace(guild_id=G), services=SimpleNamespace(settings=settings, settings_store=store)
    )
    return Admin(bot), settings, storage  # type: ignore[arg-type]


def answer(inter: Any) -> str:
    (call,) = inter.edit_original_response.await_args_list
    return str(call.kwargs["embed"].description)


async def test_set_defers_privately_before_writing_and_a_locked_database_changes_nothing(
    records: list[dict[str, Any]],
) -> None:
    inter = manager()
    admin, settings, storage = admin_with(inter)
    await Admin.set_.callback(admin, inter, name="LEADERBOARD_SIZE", value="99")  # a bad value: no I/O needed
    (call,) = inter.response.send_message.await_args_list
    assert call.kwargs["ephemeral"] is True and call.kwargs["embed"].description.startswith("Nothing changed")
    inter.response.defer.assert_not_awaited()
    assert storage.acknowledged_before_write == []  # refused at once, without the database

    inter = manager()
    storage.acknowledged = lambda: inter.response.defer.await_count > 0
    await Admin.set_.callback(admin, inter, name="LEADERBOARD_SIZE", value="5")
    inter.response.defer.assert_awaited_once_with(ephemeral=True)
    assert storage.acknowledged_before_write == [True]  # Discord had its answer before the database was asked
    text = answer(inter)
    assert text.startswith("Nothing changed") and "busy" in text
    inter.response.send_message.assert_not_awaited()
    assert settings.current.leaderboard_size == 10 and settings.overrides == {}  # nothing half-applied
    busy = [r for r in records if "nothing changed" in r["message"]]
    assert len(busy) == 1 and busy[0]["level"] == "WARNING" and busy[0]["traceback"] is None
    assert "LEADERBOARD_SIZE" in busy[0]["message"] and "locked" in busy[0]["message"]
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL") or r["traceback"] is not None]

    storage.locked = False  # the backup finished: the same command now works
    inter = manager()
    storage.acknowledged = lambda: inter.response.defer.await_count > 0
    await Admin.set_.callback(admin, inter, name="LEADERBOARD_SIZE", value="5")
    inter.response.defer.assert_awaited_once_with(ephemeral=True)
    assert "**LEADERBOARD_SIZE** is now `5` (was `10`)" in answer(inter)
    assert settings.current.leaderboard_size == 5 and storage.stored == {"override:LEADERBOARD_SIZE": "5"}


async def test_reset_defers_and_a_locked_database_is_answered_with_nothing_reset(
    records: list[dict[str, Any]],
) -> None:
    inter = manager()
    admin, settings, storage = admin_with(inter)
    await Admin.reset_setting.callback(admin, inter, name="LEADERBOARD_SIZE")  # nothing stored: no I/O needed
    (call,) = inter.response.send_message.await_args_list
    assert call.kwargs["ephemeral"] is True and "Nothing to reset" in call.kwargs["embed"].description
    inter.response.defer.assert_not_awaited()
    assert storage.acknowledged_before_write == []  # answered even with the database locked

    inter = manager()
    storage.acknowledged = lambda: inter.response.defer.await_count > 0
    storage.locked = False
    store = admin.bot.services.settings_store
    await store.change("LEADERBOARD_SIZE", "5", by="mod")
    await store.change("SPAM_LIMIT", "2/1h", by="mod")
    storage.locked = True
    storage.acknowledged_before_write.clear()
    await Admin.reset_setting.callback(admin, inter, name="all")
    inter.response.defer.assert_awaited_once_with(ephemeral=True)
    assert storage.acknowledged_before_write == [True]
    text = answer(inter)
    assert text.startswith("Nothing changed") and "busy" in text
    assert settings.current.leaderboard_size == 5 and set(settings.overrides) == {"LEADERBOARD_SIZE", "SPAM_LIMIT"}
    busy = [r for r in records if "nothing changed" in r["message"]]
    assert len(busy) == 1 and busy[0]["level"] == "WARNING" and busy[0]["traceback"] is None

    storage.locked = False
    inter = manager()
    await Admin.reset_setting.callback(admin, inter, name="all")
    assert answer(inter) == "Back to the environment's values: LEADERBOARD_SIZE, SPAM_LIMIT."
    assert settings.current == tunables(leaderboard_size=10) and settings.overrides == {} and storage.stored == {}
