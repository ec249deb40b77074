"""The pinned-board scheduler's decisions, against real services and spec'd disnake channels:
post, pin and store a new board; edit only on change; re-post when deleted; back off on 403 and on
Discord's edit limit; retry a failed pin later; follow a channel change; install and remove itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import disnake
import pytest
from loguru import logger

from leaderboard_bot.config import load_settings
from leaderboard_bot.db import Storage, repository
from leaderboard_bot.db.storage import StorageError
from leaderboard_bot.exts.scheduler import BoardPost, Scheduler
from leaderboard_bot.services.container import Services, build_services
from leaderboard_bot.services.logthrottle import LogThrottle
from tests.factories import FakeClock
from tests.helpers import mock_message, mock_text_channel

GUILD, CHAT, VC, MOVED, BOT_ID = 1, 20, 30, 40, 999


def http_error(cls: type[disnake.HTTPException], status: int, code: int) -> disnake.HTTPException:
    response = SimpleNamespace(status=status, reason="error")
    return cls(response, {"code": code, "message": "injected"})  # type: ignore[arg-type]


async def no_pins() -> AsyncIterator[Any]:
    for message in ():
        yield message


async def never_ready() -> None:
    await asyncio.Event().wait()


@dataclass
class Board:
    """A spec'd text channel recording what the scheduler did to it."""

    channel: Any
    partial: Any
    posted: list[int]

    @classmethod
    def make(cls, channel_id: int) -> Board:
        channel = mock_text_channel(channel_id, guild_id=GUILD)
        partial = MagicMock(spec_set=disnake.PartialMessage)
        channel.get_partial_message.return_value = partial
        posted: list[int] = []

        async def send(**kwargs: Any) -> Any:
            posted.append(channel_id * 100 + len(posted) + 1)
            return mock_message(posted[-1], pinned=False)

        channel.send = AsyncMock(side_effect=send)
        # Pins are per message: what fetch_message reports is what pin() really did.
        pinned: set[int] = set()
        partial.pin = AsyncMock(side_effect=lambda **kwargs: pinned.add(posted[-1]))
        channel.fetch_message = AsyncMock(
            side_effect=lambda message_id: mock_message(message_id, pinned=message_id in pinned)
        )
        channel.pins = lambda **kwargs: no_pins()
        return cls(channel, partial, posted)


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    url = f"sqlite:///{tmp_path}/s.db"
    env = {"BOT_TOKEN": "x", "GUILD_ID": str(GUILD), "CHAT_LB_CHANNEL_ID": str(CHAT), "VC_LB_CHANNEL_ID": str(VC)}
    built = build_services(load_settings({**env, "DATABASE_URL": url}), Storage(url), None)
    await built.open()
    try:
        yield built
    finally:
        await built.storage.close()


@pytest.fixture
def boards() -> dict[int, Board]:
    return {channel_id: Board.make(channel_id) for channel_id in (CHAT, VC, MOVED)}


@pytest.fixture
def scheduler(services: Services, boards: dict[int, Board]) -> Iterator[Scheduler]:
    bot = SimpleNamespace(
        config=SimpleNamespace(guild_id=GUILD),
        services=services,
        get_channel=lambda channel_id: boards[channel_id].channel if channel_id in boards else None,
        guild=None,
        user=SimpleNamespace(id=BOT_ID),
        http=SimpleNamespace(),  # no global-limit flag: the adapter never cancels
        wait_until_ready=never_ready,  # the loop itself stays idle in these tests
    )
    cog = Scheduler(bot)  # type: ignore[arg-type]
    yield cog
    cog.cog_unload()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING")
    yield seen
    logger.remove(sink)


async def stored_post(services: Services) -> Any:
    return await services.storage.run(repository.get_setting, GUILD, "board:messages")


async def test_a_first_refresh_posts_pins_and_stores_the_board(
    scheduler: Scheduler, boards: dict[int, Board], services: Services
) -> None:
    await scheduler.refresh("messages")
    chat = boards[CHAT]
    assert chat.channel.send.await_count == 1
    chat.partial.pin.assert_awaited_once()
    stored = await stored_post(services)
    assert stored["message_id"] == chat.posted[0] and stored["pinned"] is True and stored["channel_id"] == CHAT
    assert boards[VC].channel.send.await_count == 0  # boards are refreshed one by one


async def test_an_unchanged_board_is_never_edited_and_a_changed_one_is_edited_in_place(
    scheduler: Scheduler, boards: dict[int, Board], services: Services
) -> None:
    await scheduler.refresh("messages")
    await scheduler.refresh("messages")
    chat = boards[CHAT]
    chat.partial.edit.assert_not_awaited()
    services.activity.record_message(7)
    assert await services.seasons.flush() is True
    await scheduler.refresh("messages")
    chat.partial.edit.assert_awaited_once()
    assert chat.channel.send.await_count == 1  # edited, never re-posted
    assert services.boards.changed_at("messages") is not None


async def test_a_deleted_board_is_posted_again(
    scheduler: Scheduler, boards: dict[int, Board], services: Services
) -> None:
    await scheduler.refresh("messages")
    chat = boards[CHAT]
    chat.partial.edit.side_effect = http_error(disnake.NotFound, 404, 10008)
    services.activity.record_message(7)
    await services.seasons.flush()
    await scheduler.refresh("messages")
    assert chat.channel.send.await_count == 2
    assert (await stored_post(services))["message_id"] == chat.posted[1]


async def test_a_board_deleted_again_and_again_right_after_posting_is_posted_after_growing_waits(
    scheduler: Scheduler, boards: dict[int, Board], warnings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An auto-moderator deleting everything in the board channel: re-posting at once each time
    made a post (and a pin notice) every second. Once is a moderator's purge (posted again at
    once); deleted again soon after, the next post waits, doubling."""
    from leaderboard_bot.exts import scheduler as module

    monkeypatch.setattr(module, "REPOST_WAIT_SECONDS", 0.1)
    chat = boards[CHAT]

    async def delete_the_board() -> None:
        await scheduler.on_raw_message_delete(SimpleNamespace(message_id=chat.posted[-1]))  # type: ignore[arg-type]

    await scheduler.refresh("messages")
    await delete_the_board()
    assert chat.channel.send.await_count == 2  # once: at once
    for wait in (0.1, 0.2):  # again, soon after: waits that double
        await delete_the_board()
        await scheduler.refresh("messages")  # the loop's cycle meanwhile: still waiting
        posts = chat.channel.send.await_count
        await asyncio.sleep(wait * 0.5)
        assert chat.channel.send.await_count == posts
        await asyncio.sleep(wait * 0.5 + 0.1)
        assert chat.channel.send.await_count == posts + 1
    assert sum("deletes messages in" in w for w in warnings) == 1
    # Long after it was posted (a moderator, some other day): posted again at once.
    scheduler._posted_at["messages"] -= 120
    await delete_the_board()
    assert chat.channel.send.await_count == 5 and scheduler._quick_deletes["messages"] == 0


async def test_a_forbidden_channel_backs_off_and_is_warned_about_once(
    scheduler: Scheduler, boards: dict[int, Board], warnings: list[str]
) -> None:
    chat = boards[CHAT]
    chat.channel.send.side_effect = http_error(disnake.Forbidden, 403, 50013)
    await scheduler.refresh("messages")
    await scheduler.refresh("messages")  # still backing off: no second 403
    assert chat.channel.send.await_count == 1
    assert sum("could not update the messages leaderboard" in w for w in warnings) == 1
    assert scheduler._backoff["messages"].waiting()


async def test_discords_edit_limit_backs_off_for_at_least_ten_minutes(
    scheduler: Scheduler, boards: dict[int, Board], services: Services
) -> None:
    await scheduler.refresh("messages")
    boards[CHAT].partial.edit.side_effect = http_error(disnake.HTTPException, 429, 30046)
    services.activity.record_message(7)
    await services.seasons.flush()
    await scheduler.refresh("messages")
    assert scheduler._backoff["messages"].until - time.monotonic() > 590


async def test_a_failed_pin_is_retried_later_not_at_once(
    scheduler: Scheduler, boards: dict[int, Board], services: Services, warnings: list[str]
) -> None:
    chat = boards[CHAT]
    chat.partial.pin.side_effect = http_error(disnake.Forbidden, 403, 50013)
    await scheduler.refresh("messages")
    await scheduler.refresh("messages")
    assert chat.partial.pin.await_count == 1  # backing off
    assert sum("could not pin the messages leaderboard" in w for w in warnings) == 1
    assert chat.channel.send.await_count == 1  # the board itself is fine
    chat.partial.pin.side_effect = None
    scheduler._pin_backoff["messages"].until = 0.0  # the back-off has passed
    await scheduler.refresh("messages")
    assert chat.partial.pin.await_count == 2
    assert (await stored_post(services))["pinned"] is True


async def test_a_pin_freed_in_the_channel_pins_the_board_at_once_not_after_the_back_off(
    scheduler: Scheduler, boards: dict[int, Board], services: Services
) -> None:
    """The channel had Discord's 250 pins: the board was posted unpinned. A moderator unpinning
    something else (a pins-update event) is the moment to try again, not 15 minutes later."""
    chat = boards[CHAT]
    chat.partial.pin.side_effect = http_error(disnake.HTTPException, 400, 30003)  # maximum pins reached
    await scheduler.refresh("messages")
    assert scheduler._pin_backoff["messages"].waiting()
    chat.partial.pin.side_effect = None
    await scheduler.on_guild_channel_pins_update(chat.channel, None)
    assert chat.partial.pin.await_count == 2
    assert (await stored_post(services))["pinned"] is True


async def test_a_changed_channel_setting_moves_the_board(
    scheduler: Scheduler, boards: dict[int, Board], services: Services
) -> None:
    await scheduler.refresh("messages")
    services.settings.update(chat_lb_channel_id=MOVED)
    await scheduler.refresh("messages")
    assert boards[MOVED].channel.send.await_count == 1
    assert (await stored_post(services))["channel_id"] == MOVED


def test_board_state_round_trips_without_the_board_name() -> None:
    post = BoardPost("voice", 42, message_id=7, embed_hash="b", pinned=True)
    assert post.setting_key == "board:voice"
    assert post.to_setting() == {"channel_id": 42, "message_id": 7, "embed_hash": "b", "pinned": True}


async def test_load_and_unload_install_and_remove_everything_without_stacking(
    scheduler: Scheduler, services: Services
) -> None:
    http_log = logging.getLogger("disnake.http")
    before = list(http_log.filters)
    for _ in range(2):  # loaded, unloaded, loaded again (a reload): never two filters
        await scheduler.cog_load()
        assert len(http_log.filters) == len(before) + 1
        scheduler.cog_unload()
        assert http_log.filters == before
        with contextlib.suppress(asyncio.CancelledError):
            await scheduler.refresh_loop.get_task()  # type: ignore[misc]
    await scheduler.cog_load()
    assert scheduler.refresh_loop.seconds == services.settings.current.update_interval
    services.settings.update(update_interval=300.0)
    assert scheduler.refresh_loop.seconds == 300.0
    scheduler.cog_unload()
    assert http_log.filters == before
    services.settings.update(update_interval=600.0)  # unsubscribed
    assert scheduler.refresh_loop.seconds == 300.0


async def test_a_new_board_whose_id_cannot_be_stored_yet_is_still_pinned_then_stored(
    scheduler: Scheduler, boards: dict[int, Board], services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pinned, a restart adopts it instead of posting a second board; the save is retried."""
    real = repository.set_setting
    calls: list[str] = []

    def fail_first_board_save(guild_id: int, key: str, value: Any) -> None:
        calls.append(key)
        if key == "board:messages" and calls.count("board:messages") == 1:
            raise sqlite3.OperationalError("database is locked")
        real(guild_id, key, value)

    monkeypatch.setattr(repository, "set_setting", fail_first_board_save)
    await scheduler.refresh("messages")
    chat = boards[CHAT]
    assert chat.channel.send.await_count == 1
    chat.partial.pin.assert_awaited_once()
    stored = await stored_post(services)
    assert stored["message_id"] == chat.posted[0] and stored["pinned"] is True


# ---------------------------------------------------------------------- logging: one line, never a storm


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every log record with its fields and traceback (if any)."""
    seen: list[dict[str, Any]] = []
    sink = logger.add(
        lambda m: seen.append(
            {
                "level": m.record["level"].name,
                "message": m.record["message"],
                "extra": dict(m.record["extra"]),
                "exception": m.record["exception"],
            }
        ),
        level="DEBUG",
        format="{message}",
    )
    yield seen
    logger.remove(sink)


def refresh_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["message"].startswith("board refresh:")]


async def test_every_refresh_logs_one_line_with_its_result_duration_and_context(
    scheduler: Scheduler, boards: dict[int, Board], services: Services, records: list[dict[str, Any]]
) -> None:
    await scheduler.refresh("messages")  # posted and pinned
    await scheduler.refresh("messages")  # nothing changed
    services.activity.record_message(7)
    await services.seasons.flush()
    await scheduler.refresh("messages")  # edited
    boards[CHAT].partial.edit.side_effect = http_error(disnake.DiscordServerError, 503, 0)
    services.activity.record_message(7)
    await services.seasons.flush()
    await scheduler.refresh("messages")  # failed
    await scheduler.refresh("messages")  # backing off
    lines = refresh_lines(records)
    assert [(r["extra"]["result"], r["level"]) for r in lines] == [
        ("posted", "INFO"),
        ("unchanged", "DEBUG"),
        ("edited", "INFO"),
        ("failed", "DEBUG"),
        ("backing off", "DEBUG"),
    ]
    for line in lines:
        assert line["extra"]["board"] == "messages" and line["extra"]["guild_id"] == GUILD
        assert line["extra"]["channel_id"] == CHAT and line["extra"]["duration_ms"] >= 0
        assert line["message"].endswith(" ms") and f"<#{CHAT}>" in line["message"]


async def test_a_5xx_storm_is_one_warning_then_a_summary_then_one_recovery_line(
    scheduler: Scheduler, boards: dict[int, Board], services: Services, records: list[dict[str, Any]]
) -> None:
    clock = FakeClock()
    scheduler.log_throttle = LogThrottle(clock=clock)
    await scheduler.refresh("messages")
    chat = boards[CHAT]
    chat.partial.edit.side_effect = http_error(disnake.DiscordServerError, 503, 0)
    services.activity.record_message(7)
    await services.seasons.flush()
    for _ in range(30):  # a refresh every 15 s for 7.5 minutes, each one failing
        await scheduler.refresh("messages", force=True)
        clock.advance(15)
    assert chat.partial.edit.await_count == 30
    warnings = [r for r in records if r["level"] == "WARNING"]
    assert len(warnings) == 2
    assert all(w["message"].startswith("could not update the messages leaderboard in <#20>") for w in warnings)
    assert "Discord answered 503" in warnings[0]["message"]
    assert "still failing (20 more times in the last 5 min)" in warnings[1]["message"]
    assert warnings[0]["extra"]["status"] == 503 and warnings[0]["extra"]["channel_id"] == CHAT
    assert all(r["exception"] is None for r in records)  # a known HTTP error: never a traceback
    # Another kind of failure in the same outage is told once too.
    chat.partial.edit.side_effect = http_error(disnake.HTTPException, 429, 0)
    for _ in range(5):
        await scheduler.refresh("messages", force=True)
    assert sum(r["level"] == "WARNING" for r in records) == 3
    chat.partial.edit.side_effect = None
    await scheduler.refresh("messages", force=True)
    recovered = [r for r in records if "recovered" in r["message"]]
    assert [r["message"] for r in recovered] == [
        "the messages leaderboard is being updated again (recovered after 35 failures)"
    ]
    assert chat.channel.send.await_count == 1  # edited in place throughout
    assert not scheduler.backing_off()


async def test_a_pin_failing_for_minutes_is_logged_once_then_summarised(
    scheduler: Scheduler, boards: dict[int, Board], records: list[dict[str, Any]]
) -> None:
    clock = FakeClock()
    scheduler.log_throttle = LogThrottle(clock=clock)
    chat = boards[CHAT]
    chat.partial.pin.side_effect = http_error(disnake.DiscordServerError, 502, 0)
    for _ in range(12):
        scheduler._pin_backoff["messages"].until = 0.0  # its back-off has passed
        await scheduler.refresh("messages")
        clock.advance(30)
    pins = [r["message"] for r in records if "could not pin" in r["message"]]
    assert len(pins) == 2 and "still failing (10 more times in the last 5 min)" in pins[1]
    assert "give the bot Pin Messages" not in pins[0]  # a 502 is not a permission problem
    chat.partial.pin.side_effect = None
    scheduler._pin_backoff["messages"].until = 0.0
    await scheduler.refresh("messages")
    assert any(r["message"] == "the messages leaderboard is pinned now (recovered after 12 failures)" for r in records)
    assert refresh_lines(records)[-1]["extra"]["result"] == "pinned"


async def test_an_unexpected_error_has_one_traceback_and_a_database_outage_none(
    scheduler: Scheduler, boards: dict[int, Board], records: list[dict[str, Any]]
) -> None:
    chat = boards[CHAT]
    chat.channel.send.side_effect = RuntimeError("a bug")
    for _ in range(3):
        await scheduler.refresh_all()  # the loop's body: never raises
    errors = [r for r in records if r["level"] == "ERROR"]
    assert len(errors) == 1 and "RuntimeError: a bug" in errors[0]["message"]
    assert errors[0]["exception"] is not None and errors[0]["exception"].type is RuntimeError
    chat.channel.send.side_effect = StorageError("the database is locked", kind="locked")
    for _ in range(3):
        await scheduler.refresh_all()
    storage = [r for r in records if "StorageError" in r["message"]]
    assert len(storage) == 1 and storage[0]["level"] == "WARNING" and storage[0]["exception"] is None
    assert [r["extra"]["result"] for r in refresh_lines(records) if r["extra"]["board"] == "messages"] == ["failed"] * 6


# ---------------------------------------------------------------------- no Read Message History


async def test_a_board_that_cannot_be_read_back_is_still_edited_in_place_and_told_once(
    scheduler: Scheduler, boards: dict[int, Board], services: Services, records: list[dict[str, Any]]
) -> None:
    """Read Message History taken away (GET message and pins answer 403) while Send Messages
    stays: the stored board is edited, never re-posted, with one warning and a /health note."""
    await scheduler.refresh("messages")  # posted and pinned, its id stored
    chat = boards[CHAT]
    chat.channel.fetch_message.side_effect = http_error(disnake.Forbidden, 403, 50001)
    restarted = Scheduler(scheduler.bot)  # a restart: the id comes from the database
    try:
        await restarted.refresh("messages")  # the edit itself shows the board is still there
        assert chat.partial.edit.await_count == 1
        for _ in range(3):
            services.activity.record_message(7)
            assert await services.seasons.flush() is True
            await restarted.refresh("messages")
        restarted._verified_at["messages"] -= 3600  # the periodic check comes round again
        await restarted.refresh("messages")
        assert chat.partial.edit.await_count == 5  # every change edited in place, and each check
        assert chat.channel.fetch_message.await_count == 2  # at the restart and the periodic check: not every cycle
        assert chat.channel.send.await_count == 1  # never a second board
        assert not restarted.backing_off()
        warnings = [r for r in records if r["level"] == "WARNING"]
        assert len(warnings) == 1, warnings
        assert "Read Message History" in warnings[0]["message"]
        assert "cannot check that it is still there and pinned" in warnings[0]["message"]
        assert warnings[0]["extra"]["status"] == 403 and warnings[0]["extra"]["code"] == 50001
        refresh = services.health.last_refresh["messages"]
        assert not refresh.ok and "Read Message History" in refresh.detail
        assert [r["extra"]["result"] for r in refresh_lines(records)][1:] == ["edited"] * 5
        # The permission is given back: the next check reads the board and says so once.
        chat.channel.fetch_message.side_effect = lambda message_id: mock_message(message_id, pinned=True)
        restarted._verified.clear()
        await restarted.refresh("messages")
        assert [r["message"] for r in records if "recovered" in r["message"]] == [
            "the bot can read the messages leaderboard message again (recovered after 2 failures)"
        ]
        assert services.health.last_refresh["messages"].ok
        assert chat.partial.edit.await_count == 5  # readable and unchanged: no edit
    finally:
        restarted.cog_unload()


async def test_an_unreadable_board_that_was_deleted_is_posted_again_once(
    scheduler: Scheduler, boards: dict[int, Board], services: Services
) -> None:
    await scheduler.refresh("messages")
    chat = boards[CHAT]
    chat.channel.fetch_message.side_effect = http_error(disnake.Forbidden, 403, 50001)
    chat.partial.edit.side_effect = http_error(disnake.NotFound, 404, 10008)  # deleted while the bot was down
    scheduler._verified.clear()  # (on_ready)
    await scheduler.refresh("messages")
    assert chat.channel.send.await_count == 2
    assert (await stored_post(services))["message_id"] == chat.posted[1]
    chat.partial.edit.side_effect = None
    services.activity.record_message(7)
    await services.seasons.flush()
    await scheduler.refresh("messages")
    assert chat.channel.send.await_count == 2  # the new board is edited, not posted again
    assert not scheduler.backing_off()


async def test_an_unreadable_board_that_cannot_be_edited_either_backs_off_as_a_forbidden_channel(
    scheduler: Scheduler, boards: dict[int, Board], records: list[dict[str, Any]]
) -> None:
    await scheduler.refresh("messages")
    chat = boards[CHAT]
    chat.channel.fetch_message.side_effect = http_error(disnake.Forbidden, 403, 50001)
    chat.partial.edit.side_effect = http_error(disnake.Forbidden, 403, 50001)
    scheduler._verified.clear()
    await scheduler.refresh("messages")
    assert scheduler.backing_off() == ["messages"]
    assert chat.channel.send.await_count == 1
    warnings = [r["message"] for r in records if r["level"] == "WARNING"]
    assert len(warnings) == 1 and "the bot cannot see or post in the channel" in warnings[0]
