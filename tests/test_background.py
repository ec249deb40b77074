"""Background tasks (leaderboard_bot/background.py): kept until they end, a failure logged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from leaderboard_bot.background import Background


@pytest.fixture
def errors() -> Iterator[list[Any]]:
    records: list[Any] = []
    sink = logger.add(lambda m: records.append(m.record), level="ERROR", format="{message}")
    yield records
    logger.remove(sink)


async def test_a_task_that_dies_is_logged_once_with_its_traceback(errors: list[Any]) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    background = Background("tracking")
    task = background.start(broken(), "the write after each midnight")
    assert len(background) == 1  # referenced while it runs
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert len(background) == 0
    (record,) = errors
    assert record["message"] == "tracking: the write after each midnight stopped on an unexpected error"
    assert isinstance(record["exception"].value, RuntimeError)


async def test_cancelled_and_finished_tasks_say_nothing(errors: list[Any]) -> None:
    background = Background("seasons")
    forever = background.start(asyncio.Event().wait(), "a watch")
    done = background.start(asyncio.sleep(0), "a refresh")
    await done
    background.cancel_all()
    await asyncio.gather(forever, return_exceptions=True)
    await asyncio.sleep(0)
    assert forever.cancelled() and len(background) == 0 and errors == []
