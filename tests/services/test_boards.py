"""BoardService against a real Storage: lines with names for any season, and the last change."""

from __future__ import annotations

from pathlib import Path

from leaderboard_bot.config import Settings, load_settings
from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import ActivityBatch, BoardLine
from leaderboard_bot.services.container import Services, build_services
from tests.factories import MIDNIGHT, FakeClock, FakeNameSource
from tests.services.test_membership import FakeLookup

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


# --------------------------------------------------------------------------- HIDE_DEPARTED


async def hiding_services(tmp_path: Path, lookup: FakeLookup, *, on: bool = True, size: int = 3) -> Services:
    env = {"HIDE_DEPARTED": "true" if on else "false", "LEADERBOARD_SIZE": str(size)}
    storage = Storage(f"sqlite:///{tmp_path}/b.db")
    services = build_services(config(tmp_path, **env), storage, None, clock=FakeClock(MIDNIGHT), members=lookup)
    await services.open()
    return services


def ranks(lines: list[BoardLine]) -> list[tuple[int, int]]:
    return [(line.rank, line.user_id) for line in lines]


async def test_with_the_setting_off_nobody_is_looked_up_and_nothing_changes(tmp_path: Path) -> None:
    lookup = FakeLookup({9: False, 8: False})
    services = await hiding_services(tmp_path, lookup, on=False)
    try:
        await write(services.storage, 1, {u: u for u in range(1, 10)})
        assert ranks(await services.boards.lines("messages")) == [(1, 9), (2, 8), (3, 7)]
        reply = await services.boards.lines_for_reply("messages", season=1, caller=1)
        assert ranks(reply[0]) == [(1, 9), (2, 8), (3, 7)] and reply[2] == 9
        services.membership.note_present(5)
        assert lookup.calls == [] and services.membership.sizes()["membership_answers"] == 0
    finally:
        await services.storage.close()


async def test_departed_members_are_left_out_and_the_lines_below_move_up(tmp_path: Path) -> None:
    lookup = FakeLookup({9: False, 7: False, 4: None, 3: RuntimeError("Discord is down")})
    services = await hiding_services(tmp_path, lookup)
    try:
        await write(services.storage, 1, {u: u for u in range(1, 10)})
        lines = await services.boards.lines("messages")
        assert ranks(lines) == [(1, 8), (2, 6), (3, 5)]
        assert lines[0] == BoardLine(rank=1, name=lines[0].name, user_id=8, value=8.0)
        assert sorted(lookup.calls) == list(range(1, 10))  # the size plus the spare ones, each once
        # Their data is kept: an archived view, /stats, and turning the setting off show them.
        assert (await services.rankings.standing(9)).messages == 9
        services.settings.update(hide_departed=False)
        assert ranks(await services.boards.lines("messages")) == [(1, 9), (2, 8), (3, 7)]
        assert services.membership.sizes()["membership_answers"] == 0  # off: forgotten
    finally:
        await services.storage.close()


async def test_a_member_who_rejoins_and_writes_is_shown_again_at_once(tmp_path: Path) -> None:
    lookup = FakeLookup({9: False})
    services = await hiding_services(tmp_path, lookup)
    try:
        await write(services.storage, 1, {u: u for u in range(1, 10)})
        assert ranks(await services.boards.lines("messages")) == [(1, 8), (2, 7), (3, 6)]
        services.membership.note_present(9)  # what tracking does for a counted message
        assert ranks(await services.boards.lines("messages")) == [(1, 9), (2, 8), (3, 7)]
    finally:
        await services.storage.close()


async def test_when_many_left_more_entries_are_read_to_fill_the_board(tmp_path: Path) -> None:
    users = range(1, 61)  # 60 members; the top 40 left
    lookup = FakeLookup({u: u <= 20 for u in users})
    services = await hiding_services(tmp_path, lookup, size=5)
    try:
        await write(services.storage, 1, {u: 100 - u for u in users})  # user 1 first
        lines = await services.boards.lines("messages", season=1)
        assert ranks(lines) == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
        lookup.answers = {u: u > 40 for u in users}  # a different server, for the test
        services.membership.clear()
        lines = await services.boards.lines("messages")
        assert ranks(lines) == [(1, 41), (2, 42), (3, 43), (4, 44), (5, 45)]
        assert len(set(lookup.calls)) == 60  # read 20, then 40, then 80 (the whole board)
    finally:
        await services.storage.close()


async def test_the_callers_rank_leaves_out_the_departed_ahead_of_them(tmp_path: Path) -> None:
    lookup = FakeLookup({30: False, 29: False, 28: False, 12: False})
    services = await hiding_services(tmp_path, lookup)  # size 3: 18 entries read
    try:
        await write(services.storage, 1, {u: u for u in range(1, 31)})
        # In the shown top: no own line.
        lines, caller, rank, stale = await services.boards.lines_for_reply("messages", season=1, caller=26)
        assert ranks(lines) == [(1, 27), (2, 26), (3, 25)] and caller is None and rank is None and not stale
        # Read (30..13) but below the shown lines: its place among those read, exact.
        _, caller, rank, _ = await services.boards.lines_for_reply("messages", season=1, caller=14)
        assert caller is not None and (caller.user_id, caller.value, rank) == (14, 14.0, 17 - 3)
        # Below everything read: the departed read ahead (30, 29, 28) are left out of the rank; 12
        # was not read, so it still counts (exact only for the departed members known).
        _, caller, rank, _ = await services.boards.lines_for_reply("messages", season=1, caller=11)
        assert caller is not None and (caller.user_id, caller.value, rank) == (11, 11.0, 20 - 3)
        assert 12 not in lookup.calls
    finally:
        await services.storage.close()


async def test_the_caller_is_never_hidden_from_their_own_reply(tmp_path: Path) -> None:
    lookup = FakeLookup({9: False})  # stale "departed" answer for someone using a command right now
    services = await hiding_services(tmp_path, lookup)
    try:
        await write(services.storage, 1, {u: u for u in range(1, 10)})
        assert ranks(await services.boards.lines("messages")) == [(1, 8), (2, 7), (3, 6)]
        lines, caller, rank, _ = await services.boards.lines_for_reply("messages", season=1, caller=9)
        assert ranks(lines) == [(1, 9), (2, 8), (3, 7)] and caller is None and rank is None
    finally:
        await services.storage.close()


async def test_a_slow_lookup_never_holds_the_board_up_and_shows_the_member(tmp_path: Path) -> None:
    lookup = FakeLookup({9: False}, delay=1.0)
    services = await hiding_services(tmp_path, lookup)
    services.membership.budget = 0.05
    try:
        await write(services.storage, 1, {u: u for u in range(1, 10)})
        assert ranks(await services.boards.lines("messages")) == [(1, 9), (2, 8), (3, 7)]  # unknown yet: shown
    finally:
        services.membership.close()
        await services.storage.close()
