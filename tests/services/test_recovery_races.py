"""Races between writes, the recovery file, season rolls and the stop (found by a review pass).
Each was a lost count, a count in the wrong season, or a stop past Docker's grace."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.db.models import MemberStats
from leaderboard_bot.domain import ActivityBatch, SeasonRoll
from leaderboard_bot.services.recovery import RecoveryFile, read_file
from leaderboard_bot.services.seasons import SeasonService
from tests.factories import FakeClock, open_storage, runtime_settings
from tests.services.test_activity import T0, G, make_service, season_one

IN_SEASONS = MemberStats.season > 0  # season rows, not the windows' (negative scopes)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_storage(f"sqlite:///{tmp_path}/activity.db") as s:
        yield s


def files_of(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("*.unsaved*.json"))


async def by_season(storage: Storage) -> dict[tuple[int, int], int]:
    return await storage.run(
        lambda: {
            (r.season, r.user_id): r.messages
            for r in MemberStats.select().where(IN_SEASONS & (MemberStats.guild_id == G))
        }
    )


def hang_then(monkeypatch: pytest.MonkeyPatch, *, commit: bool) -> tuple[threading.Event, threading.Event]:
    """apply_batch blocks (a busy wait) until ``gate`` is set, then commits or fails."""
    gate, busy = threading.Event(), threading.Event()
    real = repository.apply_batch

    def hanging(batch: ActivityBatch) -> None:
        busy.set()
        assert gate.wait(10)
        if not commit:
            raise sqlite3.OperationalError("database is locked")
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", hanging)
    return gate, busy, real


# F1 -------------------------------------------------------------------------------------------


async def test_a_hanging_flush_that_commits_after_the_stop_saved_keeps_the_rest(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(T0)
    recovery = tmp_path / "activity.db.unsaved.json"
    service = make_service(storage, clock, recovery=recovery)
    await service.start()
    gate, busy, real = hang_then(monkeypatch, commit=True)
    service.record_message(1)  # batch N (in flight)
    flushing = asyncio.ensure_future(service.flush(season_one))
    assert await asyncio.to_thread(busy.wait, 10)
    service.record_message(2)  # arrives during the hang: only in the "rest" part N+1
    service.record_message(2)
    assert await service.shutdown(season_one, budget=1.0) is False  # lock busy: saved [N, N+1]
    assert [sum(p.messages.values()) for p in read_file(files_of(tmp_path)[0]).parts] == [1, 2]
    gate.set()  # the write commits during storage.close(wait=0.2) / the rest of the stop
    assert await flushing is True
    await asyncio.sleep(0.2)
    monkeypatch.setattr(repository, "apply_batch", real)
    # process exits; next start
    again = make_service(storage, clock, recovery=recovery)
    await again.start()
    assert await by_season(storage) == {(1, 1): 1, (1, 2): 2}  # was: user 2's messages are gone


# F2 -------------------------------------------------------------------------------------------
async def test_a_stop_during_a_hanging_roll_files_the_rest_under_the_new_season(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(T0)
    recovery = tmp_path / "activity.db.unsaved.json"
    service = make_service(storage, clock, recovery=recovery)
    await storage.run(repository.ensure_season, G, T0 - 100, 100.0)
    await service.start()
    gate, busy, real = hang_then(monkeypatch, commit=False)
    service.record_message(1)

    async def roll() -> bool:
        async with service.quiescent():
            return await service.write_locked(1, T0, roll=SeasonRoll(1, T0, 100.0))

    rolling = asyncio.ensure_future(roll())
    assert await asyncio.to_thread(busy.wait, 10)
    service.record_message(2)  # after the boundary: belongs to season 2
    assert await service.shutdown(season_one, budget=1.0) is False  # season() is still 1 mid-roll
    (path,) = files_of(tmp_path)
    snapshot = path.read_text()
    gate.set()  # the process dies; the hanging write never commits
    await rolling
    path.write_text(snapshot)
    monkeypatch.setattr(repository, "apply_batch", real)
    again = make_service(storage, clock, recovery=recovery)
    await again.start()
    # was: user 2's message is counted in archived season 1 ({(1, 1): 1, (1, 2): 1})
    assert await by_season(storage) == {(1, 1): 1, (2, 2): 1}


# F3 -------------------------------------------------------------------------------------------
async def test_a_recovered_roll_is_seen_by_the_season_service(storage: Storage, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    recovery = tmp_path / "activity.db.unsaved.json"
    await storage.run(repository.ensure_season, G, T0 - 100, 1000.0)
    RecoveryFile(recovery).write(
        [ActivityBatch(G, 1, T0, messages={("2024-03-10", 1): 1}, roll=SeasonRoll(1, T0, 1000.0), sequence=1)]
    )
    service = make_service(storage, clock, recovery=recovery)
    seasons = SeasonService(storage, service, runtime_settings(reset_period=1000.0), clock=clock)
    await service.start()  # Services.open's order: the recovery file first (it rolls season 1) ...
    await seasons.load()  # ... then the season owner reads the season in force
    db_current = (await storage.run(repository.current_season, G)).number
    service.record_message(7)
    await seasons.flush()
    assert db_current == 2
    # was: seasons.current stays 1, so new counts go into the archived season 1
    assert seasons.current.number == db_current
    assert (2, 7) in await by_season(storage)


# F4 -------------------------------------------------------------------------------------------
async def test_a_cancelled_roll_that_commits_moves_the_season_service_on(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(T0)
    service = make_service(storage, clock, recovery=tmp_path / "activity.db.unsaved.json")
    seasons = SeasonService(storage, service, runtime_settings(reset_period=1000.0), clock=clock)
    await seasons.load()
    await service.start()
    gate, busy, real = hang_then(monkeypatch, commit=True)
    service.record_message(1)
    rolling = asyncio.ensure_future(seasons.roll(reason="due"))
    assert await asyncio.to_thread(busy.wait, 10)
    rolling.cancel()  # the stop unloads the Seasons cog: season_loop.cancel()
    gate.set()  # ... and the roll commits
    with pytest.raises(asyncio.CancelledError):
        await rolling
    monkeypatch.setattr(repository, "apply_batch", real)
    service.record_message(2)
    assert await service.shutdown(seasons.current_number) is True
    assert (await storage.run(repository.current_season, G)).number == 2
    # was: the shutdown batch went into season 1 (already archived): {(1, 1): 1, (1, 2): 1}
    assert await by_season(storage) == {(1, 1): 1, (2, 2): 1}


# F5 -------------------------------------------------------------------------------------------


async def test_a_slow_gateway_close_does_not_hold_up_the_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import disnake

    from leaderboard_bot.bot import LeaderboardBot
    from leaderboard_bot.config import load_settings

    url = f"sqlite:///{tmp_path}/bot.db"
    config = load_settings({"BOT_TOKEN": "x", "GUILD_ID": "4545", "DATABASE_URL": url})
    bot = LeaderboardBot(config, Storage(url))
    await bot.services.open()
    bot._prepared = True

    async def half_open_close(self: object) -> None:  # aiohttp waits up to ws_close=30 s for the peer's close frame
        await asyncio.sleep(6.0)

    monkeypatch.setattr(disnake.Client, "close", half_open_close)
    started = time.monotonic()
    await bot.close()
    # was: ~6 s; the activity flush only starts after the gateway close returns (docker stop: SIGKILL at 10 s)
    assert time.monotonic() - started < 5.0
