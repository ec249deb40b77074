"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    """Every log line written during the test, as {"level", "message", "extra"}."""
    records: list[dict[str, Any]] = []
    sink = logger.add(
        lambda m: records.append(
            {"level": m.record["level"].name, "message": m.record["message"], "extra": dict(m.record["extra"])}
        ),
        level="DEBUG",
        format="{message}",
    )
    yield records
    logger.remove(sink)
