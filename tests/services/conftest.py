"""Fixtures shared by the service tests: a fake clock and a real Storage on a temporary SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from leaderboard_bot.db import Storage
from tests.factories import MIDNIGHT, FakeClock, open_storage

T0 = MIDNIGHT + 3_600.0  # 01:00 UTC, well away from a day boundary


@pytest.fixture
def activity_clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def activity_db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/activity.db"


@pytest.fixture
async def activity_storage(activity_db_url: str) -> AsyncIterator[Storage]:
    async with open_storage(activity_db_url) as storage:
        yield storage
