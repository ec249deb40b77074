"""The disnake rate-limit adapter: spotting a long sleep inside a watched task, never cutting a global
limit short, installing once, and (the canary) disnake still being what the adapter expects."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterator

import disnake
import pytest

from leaderboard_bot.adapters.disnake_ratelimit import (
    DISNAKE_HTTP_LOGGER,
    GLOBAL_FLAG_ATTRIBUTE,
    RATE_LIMIT_LOG_PREFIX,
    RateLimitWatch,
    global_limit_in_force,
    no_global_limit,
)

LONG = 30.0
RATE_LIMIT_FMT = 'We are being rate limited. Retrying in %.2f seconds. Handled under the bucket "%s"'


def _announce_rate_limit(retry_after: float, fmt: str = RATE_LIMIT_FMT) -> None:
    logging.getLogger(DISNAKE_HTTP_LOGGER).warning(fmt, retry_after, "bucket")


class GlobalFlag:
    def __init__(self) -> None:
        self.no_global_limit = True

    def __call__(self) -> bool:
        return self.no_global_limit


@pytest.fixture
def flag() -> GlobalFlag:
    return GlobalFlag()


@pytest.fixture
def watch(flag: GlobalFlag) -> Iterator[RateLimitWatch]:
    w = RateLimitWatch(long_wait=LONG, no_global_limit=flag)
    w.install()
    yield w
    w.uninstall()


# --------------------------------------------------------------------------- the canary


def test_disnake_still_logs_the_rate_limit_text_the_adapter_reads() -> None:
    source = inspect.getsource(disnake.http.HTTPClient.request)
    assert f"'{RATE_LIMIT_LOG_PREFIX}" in source or f'"{RATE_LIMIT_LOG_PREFIX}' in source
    assert "_log.warning(fmt, retry_after" in source  # the wait is the first argument


def test_disnake_still_has_the_global_rate_limit_flag() -> None:
    source = inspect.getsource(disnake.http.HTTPClient)
    assert f"self.{GLOBAL_FLAG_ATTRIBUTE}.clear()" in source and f"self.{GLOBAL_FLAG_ATTRIBUTE}.set()" in source

    async def build() -> disnake.http.HTTPClient:
        return disnake.http.HTTPClient(loop=asyncio.get_running_loop())

    http = asyncio.run(build())
    assert no_global_limit(http) is True and global_limit_in_force(http) is False
    getattr(http, GLOBAL_FLAG_ATTRIBUTE).clear()
    assert no_global_limit(http) is False and global_limit_in_force(http) is True


def test_when_the_flag_is_missing_nothing_is_cancelled_and_nothing_waits() -> None:
    assert no_global_limit(object()) is False  # unsure: never cancel
    assert global_limit_in_force(object()) is False  # unsure: the refresh timeout still applies


# --------------------------------------------------------------------------- installing


def test_install_is_idempotent_and_uninstall_removes_it() -> None:
    logger = logging.getLogger(DISNAKE_HTTP_LOGGER)
    w = RateLimitWatch(long_wait=LONG, no_global_limit=lambda: True)
    before = list(logger.filters)
    w.install()
    w.install()  # e.g. the extension reloaded
    assert logger.filters.count(w) == 1 and w.installed
    w.uninstall()
    assert logger.filters == before and not w.installed


# --------------------------------------------------------------------------- watching


async def test_a_long_rate_limit_inside_a_watched_task_cancels_it(watch: RateLimitWatch) -> None:
    async def refresh() -> None:
        _announce_rate_limit(LONG + 3000)
        await asyncio.sleep(3600)  # what disnake would do next

    task = asyncio.ensure_future(refresh())
    watch.watch(task)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert watch.pop(task) == pytest.approx(LONG + 3000)


async def test_a_short_rate_limit_is_left_to_disnake(watch: RateLimitWatch) -> None:
    async def refresh() -> str:
        _announce_rate_limit(0.3)
        await asyncio.sleep(0.01)
        return "edited"

    task = asyncio.ensure_future(refresh())
    watch.watch(task)
    assert await task == "edited"
    assert watch.pop(task) is None


async def test_unwatched_tasks_are_never_cancelled(watch: RateLimitWatch) -> None:
    async def someone_else() -> str:
        _announce_rate_limit(3600)
        await asyncio.sleep(0.01)
        return "done"

    assert await asyncio.ensure_future(someone_else()) == "done"


async def test_a_changed_log_text_never_cancels(watch: RateLimitWatch) -> None:
    async def refresh() -> str:
        _announce_rate_limit(3600, fmt='Rate limited: retrying in %.2f seconds (bucket "%s")')
        await asyncio.sleep(0.01)
        return "edited"

    task = asyncio.ensure_future(refresh())
    watch.watch(task)
    assert await task == "edited"


async def test_an_uninstalled_watch_never_cancels(watch: RateLimitWatch) -> None:
    watch.uninstall()

    async def refresh() -> str:
        _announce_rate_limit(3600)
        await asyncio.sleep(0.01)
        return "edited"

    task = asyncio.ensure_future(refresh())
    watch.watch(task)
    assert await task == "edited"


def test_other_log_lines_pass_untouched(watch: RateLimitWatch) -> None:
    record = logging.LogRecord(DISNAKE_HTTP_LOGGER, logging.INFO, __file__, 1, "hello %s", ("x",), None)
    assert watch.filter(record) is True


async def test_a_global_rate_limit_is_never_cut_short(watch: RateLimitWatch, flag: GlobalFlag) -> None:
    # disnake lifts its global lock only after the sleep: cancelling would block every request for good.
    async def refresh() -> str:
        _announce_rate_limit(LONG + 10)
        await asyncio.sleep(0.05)  # stands in for disnake's sleep
        return "edited"

    flag.no_global_limit = False  # a global limit is in force
    task = asyncio.ensure_future(refresh())
    watch.watch(task)
    assert await task == "edited"
    assert watch.pop(task) is None
