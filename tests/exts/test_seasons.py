"""The seasons extension's announcements against stand-in Discord objects: posted once per board,
in order, retried when they could not be posted, and never repeated when recording them fails."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import disnake
import pytest

from leaderboard_bot.db.storage import StorageError
from leaderboard_bot.exts.seasons import Seasons, check_interval
from leaderboard_bot.services.logthrottle import LogThrottle
from leaderboard_bot.services.seasons import SeasonInfo
from tests.factories import FakeClock, runtime_settings
from tests.helpers import mock_interaction

GUILD, CHAT, VOICE = 1, 20, 30


class SettingsStore:
    """Just the setting reads and writes the announcements make, with injectable write failures."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.failing_writes = 0

    async def run(self, func: Any, guild_id: int, key: str, *rest: Any) -> Any:
        await asyncio.sleep(0)  # a real query yields to the event loop
        if func.__name__ == "get_setting":
            return self.values.get(key)
        if func.__name__ == "set_setting":
            if self.failing_writes:
                self.failing_writes -= 1
                raise sqlite3.OperationalError("database is locked")
            self.values[key] = rest[0]
            return None
        raise AssertionError(f"unexpected query {func.__name__}")


def text_channel(channel_id: int) -> MagicMock:
    channel = MagicMock(spec=disnake.TextChannel)
    channel.id = channel_id
    channel.guild = SimpleNamespace(id=GUILD)
    sent: list[int] = []

    async def send(**kwargs: Any) -> SimpleNamespace:
        sent.append(len(sent) + 1)
        return SimpleNamespace(id=channel_id * 100 + len(sent))

    channel.send = AsyncMock(side_effect=send)
    return channel


async def never_ready() -> None:
    await asyncio.Event().wait()


@pytest.fixture
async def cog() -> AsyncIterator[tuple[Seasons, Any]]:
    season = SeasonInfo(number=1, started_at=0.0, ends_at=10.0, ended_at=10.0)
    announced: list[int] = []
    channels = {CHAT: text_channel(CHAT), VOICE: text_channel(VOICE)}
    settings = runtime_settings(chat_lb_channel_id=CHAT, vc_lb_channel_id=VOICE, reset_period=3600.0, arrow_emoji=">")
    storage = SettingsStore()
    bot = SimpleNamespace(
        config=SimpleNamespace(guild_id=GUILD),
        services=SimpleNamespace(
            settings=settings,
            storage=storage,
            boards=SimpleNamespace(lines=AsyncMock(return_value=[])),
            seasons=SimpleNamespace(
                unannounced=AsyncMock(side_effect=lambda: [] if 1 in announced else [season]),
                mark_announced=AsyncMock(side_effect=announced.append),
            ),
        ),
        storage=storage,
        guild=None,
        get_channel=channels.get,
        wait_until_ready=never_ready,  # the extension's own loop stays idle in these tests
        channels=channels,
        announced=announced,
    )
    seasons = Seasons(bot)  # type: ignore[arg-type]
    await seasons.cog_load()
    try:
        yield seasons, bot
    finally:
        seasons.cog_unload()


async def test_both_boards_are_announced_once(cog: tuple[Seasons, Any]) -> None:
    seasons, bot = cog
    await asyncio.gather(seasons.announce_pending(), seasons.announce_pending())  # loop and a reset at once
    await seasons.announce_pending()
    assert bot.channels[CHAT].send.await_count == 1 and bot.channels[VOICE].send.await_count == 1
    assert bot.announced == [1]


async def test_a_failed_record_never_posts_again(cog: tuple[Seasons, Any]) -> None:
    seasons, bot = cog
    bot.storage.failing_writes = 1  # the chat board's record cannot be written at first
    await seasons.announce_pending()
    assert bot.announced == []  # not done until the database knows
    await seasons.announce_pending()
    assert bot.channels[CHAT].send.await_count == 1 and bot.channels[VOICE].send.await_count == 1
    assert bot.storage.values == {"season:1:final:messages": 2001, "season:1:final:voice": 3001}
    assert bot.announced == [1]


async def test_a_forbidden_channel_is_retried_later_without_blocking_the_other(cog: tuple[Seasons, Any]) -> None:
    seasons, bot = cog
    forbidden = disnake.Forbidden(SimpleNamespace(status=403, reason="Forbidden"), "Missing Permissions")  # type: ignore[arg-type]
    bot.channels[CHAT].send.side_effect = forbidden
    await seasons.announce_pending()
    assert bot.channels[VOICE].send.await_count == 1 and bot.announced == []
    await seasons.announce_pending()  # still backing off: no second 403 right away
    assert bot.channels[CHAT].send.await_count == 1
    bot.channels[CHAT].send.side_effect = None
    bot.channels[CHAT].send.return_value = SimpleNamespace(id=77)
    seasons._retries["season:1:final:messages"].until = 0.0  # the back-off has passed
    await seasons.announce_pending()
    assert bot.announced == [1] and bot.channels[VOICE].send.await_count == 1


@pytest.mark.parametrize(("period", "expected"), [(6.0, 1.0), (60.0, 3.0), (30 * 86400.0, 30.0)])
def test_season_checks_are_frequent_for_short_seasons_and_cheap_for_long_ones(period: float, expected: float) -> None:
    assert check_interval(period) == expected


async def test_the_check_interval_follows_a_changed_reset_period(cog: tuple[Seasons, Any]) -> None:
    seasons, bot = cog
    assert seasons.season_loop.seconds == check_interval(3600.0)
    bot.services.settings.update(reset_period=60.0)
    assert seasons.season_loop.seconds == check_interval(60.0)


async def test_announcements_go_to_the_channels_set_now(cog: tuple[Seasons, Any]) -> None:
    seasons, bot = cog
    moved = text_channel(40)
    bot.channels[40] = moved
    bot.services.settings.update(chat_lb_channel_id=40)
    await seasons.announce_pending()
    assert moved.send.await_count == 1 and bot.channels[CHAT].send.await_count == 0


async def test_reset_outside_the_server_is_refused_kindly(cog: tuple[Seasons, Any]) -> None:
    seasons, bot = cog
    inter = mock_interaction(guild_id=None)
    inter.response.send_message = AsyncMock()
    await seasons.ask_reset(inter)
    (call,) = inter.response.send_message.await_args_list
    assert call.kwargs["ephemeral"] is True
    assert "only works in the server" in call.kwargs["embed"].description
    assert bot.announced == []


async def test_a_click_on_a_confirmation_this_process_never_showed_has_expired(cog: tuple[Seasons, Any]) -> None:
    seasons, _ = cog
    inter = MagicMock(spec_set=disnake.MessageInteraction)
    inter.component = SimpleNamespace(custom_id="leaderboard-reset:confirm:123")
    inter.response = MagicMock(spec_set=disnake.InteractionResponse)
    inter.response.send_message = AsyncMock()
    await seasons.on_button_click(inter)
    assert "expired" in inter.response.send_message.await_args.kwargs["embed"].description
    seasons.live_confirmations.add("leaderboard-reset:confirm:456")  # a live view answers that one
    inter.component = SimpleNamespace(custom_id="leaderboard-reset:confirm:456")
    inter.response.send_message.reset_mock()
    await seasons.on_button_click(inter)
    inter.component = SimpleNamespace(custom_id="someone-else:button")
    await seasons.on_button_click(inter)
    inter.response.send_message.assert_not_awaited()


async def test_an_announcement_failing_for_minutes_is_logged_once_then_summarised_then_recovered(
    cog: tuple[Seasons, Any], log_lines: list[dict[str, Any]]
) -> None:
    seasons, bot = cog
    clock = FakeClock()
    seasons.log_throttle = LogThrottle(clock=clock)
    down = disnake.DiscordServerError(SimpleNamespace(status=503, reason="x"), "injected")  # type: ignore[arg-type]
    bot.channels[CHAT].send.side_effect = down
    for _ in range(25):  # every 15 s for over 6 minutes
        if "season:1:final:messages" in seasons._retries:
            seasons._retries["season:1:final:messages"].until = 0.0  # its back-off has passed
        await seasons.announce_pending()
        clock.advance(15)
    assert bot.channels[CHAT].send.await_count == 25
    lines = [r for r in log_lines if "season 1 final standings" in r["message"]]
    assert [r["level"] for r in lines] == ["WARNING", "WARNING"]
    assert lines[0]["message"].startswith(f"cannot post season 1 final standings in <#{CHAT}>: Discord answered 503")
    assert "still failing (20 more times in the last 5 min)" in lines[1]["message"]
    bot.channels[CHAT].send.side_effect = None
    bot.channels[CHAT].send.return_value = SimpleNamespace(id=77)
    seasons._retries["season:1:final:messages"].until = 0.0
    await seasons.announce_pending()
    assert bot.announced == [1]
    assert log_lines[-1]["message"] == f"season 1 final standings posted in <#{CHAT}> (recovered after 25 failures)"


async def test_a_database_outage_in_the_season_check_is_one_line_then_one_recovery_line(
    cog: tuple[Seasons, Any], log_lines: list[dict[str, Any]]
) -> None:
    seasons, bot = cog
    bot.services.seasons.is_due = lambda: False
    bot.services.seasons.unannounced = AsyncMock(side_effect=StorageError("the database is locked", kind="locked"))
    for _ in range(5):
        await seasons.season_loop()
    assert [r["level"] for r in log_lines] == ["WARNING"]
    assert "StorageError: the database is locked" in log_lines[0]["message"]
    bot.services.seasons.unannounced = AsyncMock(return_value=[])
    await seasons.season_loop()
    assert log_lines[-1]["message"] == "the season check works again (recovered after 5 failures)"


async def test_the_reset_is_checked_just_after_the_scheduled_boundary_not_a_loop_interval_later() -> None:
    clock = FakeClock(1_000.0)
    state = SimpleNamespace(current=SeasonInfo(number=1, started_at=0.0, ends_at=5_000.0))
    seasons_service = SimpleNamespace(
        clock=clock,
        period=7_200.0,
        current=state.current,
        is_due=lambda: clock.now >= seasons_service.current.ends_at,
    )

    async def ready() -> None:
        return None

    bot = SimpleNamespace(
        services=SimpleNamespace(seasons=seasons_service, settings=runtime_settings(reset_period=7_200.0)),
        wait_until_ready=ready,
    )
    cog = Seasons(bot)  # type: ignore[arg-type]
    checks: list[float] = []
    slept: list[float] = []

    async def check() -> None:
        checks.append(clock.now)  # the reset fails (a locked database): still due

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)
        if len(slept) == 3:  # meanwhile the loop's own retry ended the season
            seasons_service.current = SeasonInfo(number=2, started_at=5_000.0, ends_at=12_200.0)
        if len(slept) == 5:
            raise asyncio.CancelledError

    cog._check = check  # type: ignore[method-assign]
    cog._sleep = sleep
    with pytest.raises(asyncio.CancelledError):
        await cog._at_boundaries()
    # An hour; the rest of the way to the boundary (a check); the loop's pace while the season is
    # overdue (no tight retry); then towards the next boundary.
    assert slept == pytest.approx([3_600.2, 400.0, 30.0, 3_600.2, 3_569.8])
    assert checks == pytest.approx([5_000.2])
