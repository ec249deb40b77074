"""The pinned-board scheduler's pieces that need no Discord: state persistence, and spotting a
long rate-limit sleep inside disnake so the refresh can back off instead of hanging."""

from __future__ import annotations

import asyncio
import logging

import pytest

from leaderboard_bot.exts.scheduler import LONG_RATE_LIMIT_SECONDS, BoardPost, _RateLimitWatch
from leaderboard_bot.exts.seasons import check_interval

RATE_LIMIT_FMT = 'We are being rate limited. Retrying in %.2f seconds. Handled under the bucket "%s"'


def _announce_rate_limit(retry_after: float) -> None:
    logging.getLogger("disnake.http").warning(RATE_LIMIT_FMT, retry_after, "bucket")


@pytest.fixture
def watch() -> _RateLimitWatch:
    w = _RateLimitWatch()
    logger = logging.getLogger("disnake.http")
    logger.addFilter(w)
    yield w
    logger.removeFilter(w)


async def test_a_long_rate_limit_inside_a_watched_task_cancels_it(watch: _RateLimitWatch) -> None:
    async def refresh() -> None:
        _announce_rate_limit(LONG_RATE_LIMIT_SECONDS + 3000)
        await asyncio.sleep(3600)  # what disnake would do next

    task = asyncio.ensure_future(refresh())
    watch.watch(task)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert watch.pop(task) == pytest.approx(LONG_RATE_LIMIT_SECONDS + 3000)


async def test_a_short_rate_limit_is_left_to_disnake(watch: _RateLimitWatch) -> None:
    async def refresh() -> str:
        _announce_rate_limit(0.3)
        await asyncio.sleep(0.01)
        return "edited"

    task = asyncio.ensure_future(refresh())
    watch.watch(task)
    assert await task == "edited"
    assert watch.pop(task) is None


async def test_unwatched_tasks_are_never_cancelled(watch: _RateLimitWatch) -> None:
    async def someone_else() -> str:
        _announce_rate_limit(3600)
        await asyncio.sleep(0.01)
        return "done"

    assert await asyncio.ensure_future(someone_else()) == "done"


def test_other_log_lines_pass_untouched(watch: _RateLimitWatch) -> None:
    record = logging.LogRecord("disnake.http", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    assert watch.filter(record) is True


def test_board_state_round_trips_without_the_board_name() -> None:
    post = BoardPost("voice", 42, message_id=7, standings_hash="a", changed_at=1.5, embed_hash="b", pinned=True)
    assert post.setting_key == "board:voice"
    assert post.to_setting() == {
        "channel_id": 42,
        "message_id": 7,
        "standings_hash": "a",
        "changed_at": 1.5,
        "embed_hash": "b",
        "pinned": True,
    }


@pytest.mark.parametrize(("period", "expected"), [(6.0, 1.0), (60.0, 3.0), (30 * 86400.0, 30.0)])
def test_season_checks_are_frequent_for_short_seasons_and_cheap_for_long_ones(period: float, expected: float) -> None:
    assert check_interval(period) == expected


async def test_a_global_rate_limit_is_never_cut_short(watch: _RateLimitWatch) -> None:
    # disnake lifts its global lock only after the sleep: cancelling would block every request for good.
    async def refresh() -> str:
        _announce_rate_limit(LONG_RATE_LIMIT_SECONDS + 10)
        await asyncio.sleep(0.05)  # stands in for disnake's sleep
        return "edited"

    task = asyncio.ensure_future(refresh())
    watch.watch(task, lambda: False)  # a global limit is in force
    assert await task == "edited"
    assert watch.pop(task) is None
