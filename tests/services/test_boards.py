"""BoardService against a real Storage: lines with names for any season, and the last change."""

from __future__ import annotations

from pathlib import Path

from leaderboard_bot.config import Settings, load_settings
from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import ActivityBatch, BoardLine
from leaderboard_bot.services.container import Services, build_services
from tests.factories import MIDNIGHT, FakeClock, FakeNameSource

G = 7272


def config(tmp_path: Path, **env: str) -> Settings:
    return load_settings({"BOT_TOKEN": "x", "GUILD_ID": str(G), "DATABASE_URL": f"sqlite:///{tmp_path}/b.db", **env})


async def open_services(tmp_path: Path, clock: FakeClock, source: FakeNameSource | None = None) -> Services:
    services = build_services(config(tmp_path), Storage(f"sqlite:///{tmp_path}/b.db"), source, clock=clock)
    await services.open()
    return services


async def write(storage: Storage, season: int, messages: dict[int, int]) -> None:
    counts = {("2024-03-10", user): n for user, n in messages.items()}
    batch = ActivityBatch(guild_id=G, season=season, heartbeat_at=MIDNIGHT, messages=counts)
    await storage.run(repository.apply_batch, batch)


async def test_lines_rank_with_names_for_the_current_and_an_archived_season(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT)
    source = FakeNameSource(live={1: ("Ali", "alice")}, fetched={2: ("Bobby", "bob")})
    services = await open_services(tmp_path, clock, source)
    try:
        await write(services.storage, 1, {1: 3, 2: 5})
        assert await services.boards.lines("messages") == [
            BoardLine(rank=1, name="Bobby", user_id=2, value=5.0),
            BoardLine(rank=2, name="Ali", user_id=1, value=3.0),
        ]
        clock.advance(60.0)
        assert await services.seasons.roll(reason="test") is not None
        await write(services.storage, 2, {1: 1})
        assert [(x.user_id, x.value) for x in await services.boards.lines("messages")] == [(1, 1.0)]
        archived = await services.boards.lines("messages", season=1)
        assert [(x.user_id, x.value) for x in archived] == [(2, 5.0), (1, 3.0)]
        assert await services.boards.lines("voice", season=1) == []
    finally:
        await services.storage.close()


async def test_the_board_size_is_read_live(tmp_path: Path) -> None:
    services = await open_services(tmp_path, FakeClock(MIDNIGHT))
    try:
        await write(services.storage, 1, {u: u for u in range(1, 15)})
        assert len(await services.boards.lines("messages")) == 10
        services.settings.update(leaderboard_size=3)
        assert [x.user_id for x in await services.boards.lines("messages")] == [14, 13, 12]
    finally:
        await services.storage.close()


async def test_the_last_change_moves_only_when_what_is_shown_changes_and_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT)
    services = await open_services(tmp_path, clock)
    try:
        assert services.boards.changed_at("messages") is None
        assert await services.boards.note_shown("messages", [1, [[1, "Ali", "3 messages"]]]) == MIDNIGHT
        clock.advance(100.0)
        assert await services.boards.note_shown("messages", [1, [[1, "Ali", "3 messages"]]]) == MIDNIGHT
        assert services.boards.changed_at("voice") is None
        clock.advance(100.0)
        assert await services.boards.note_shown("messages", [1, [[1, "Ali", "4 messages"]]]) == MIDNIGHT + 200.0
    finally:
        await services.storage.close()
    restarted = await open_services(tmp_path, clock)
    try:
        assert restarted.boards.changed_at("messages") == MIDNIGHT + 200.0
        clock.advance(100.0)
        assert await restarted.boards.note_shown("messages", [1, [[1, "Ali", "4 messages"]]]) == MIDNIGHT + 200.0
    finally:
        await restarted.storage.close()


async def test_the_last_change_kept_by_earlier_versions_is_read(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT)
    services = await open_services(tmp_path, clock)
    await services.storage.run(
        repository.set_setting,
        G,
        "board:voice",
        {"channel_id": 5, "message_id": 6, "standings_hash": "abc", "changed_at": MIDNIGHT - 50.0},
    )
    await services.storage.close()
    upgraded = await open_services(tmp_path, clock)
    try:
        assert upgraded.boards.changed_at("voice") == MIDNIGHT - 50.0
    finally:
        await upgraded.storage.close()
