"""End-to-end harness: the real bot process against fakecord, a protocol-level fake Discord.

fakecord lives beside the project (``../shared/fakecord``) or wherever ``FAKECORD_DIR`` points.
When it is absent every test here is skipped with that reason; CI has it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FAKECORD_DIR = Path(os.environ.get("FAKECORD_DIR", PROJECT_ROOT.parent / "shared" / "fakecord")).resolve()
FAKECORD_PRESENT = (FAKECORD_DIR / "driver.py").is_file()

if FAKECORD_PRESENT and str(FAKECORD_DIR) not in sys.path:
    sys.path.insert(0, str(FAKECORD_DIR))


from .harness import World, make_world  # noqa: E402  (needs fakecord on sys.path first)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FAKECORD_PRESENT:
        return
    skip = pytest.mark.skip(
        reason=f"fakecord not found at {FAKECORD_DIR}: set FAKECORD_DIR to run the end-to-end tests"
    )
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(Path(__file__).parent):
            item.add_marker(skip)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """A fresh fake Discord with the standard test server; bots started in it are stopped after."""
    w = await make_world(tmp_path)
    try:
        yield w
    finally:
        await w.stop_all()
        for i, bot in enumerate(w.bots):
            print(f"---- bot {i} output (tail) ----\n{bot.output()[-4000:]}")
        await w.fc.stop()
