"""Members' own choices (services.privacy) against a real Storage: they persist, they keep members
off every board (renumbered like departed members), and an erase leaves no row naming the member."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.db.models import ALL_MODELS, Setting, database_proxy
from leaderboard_bot.db.storage import StorageError
from leaderboard_bot.domain import ALL_TIME, WEEK, ActivityBatch, SessionClose, SessionOpen
from leaderboard_bot.services.container import Services
from leaderboard_bot.services.privacy import HIDDEN, STOPPED, PrivacyService, encode, parse
from leaderboard_bot.services.voice import VoicePresence
from tests.factories import MIDNIGHT, FakeClock, FakeNameSource
from tests.services.test_boards import G, open_services

# Snowflake-sized ids: a settings row can only mention one by holding it whole.
ALICE, BOB, CAROL, DAVE = 410000000000000001, 410000000000000002, 410000000000000003, 410000000000000004
DAY = "2024-03-10"  # MIDNIGHT's day


async def write(storage: Storage, season: int, messages: dict[int, int], *, day: str = DAY, **extra: Any) -> None:
    counts = {(day, user): n for user, n in messages.items()}
    batch = ActivityBatch(guild_id=G, season=season, heartbeat_at=MIDNIGHT, messages=counts, today=day, **extra)
    await storage.run(repository.apply_batch, batch)


def rows_naming(user_id: int) -> list[tuple[str, Any]]:
    """Every row of every table that names the member: a user_id column holding the id, or a
    settings row whose key or value mentions it. Runs on the database thread."""
    found: list[tuple[str, Any]] = []
    for model in ALL_MODELS:
        table = model._meta.table_name
        if "user_id" in model._meta.fields:
            for row in model.select().where(model.user_id == user_id).dicts():
                found.append((table, row))
    for key, value in Setting.select(Setting.key, Setting.value).tuples():
        if str(user_id) in key or str(user_id) in value:
            found.append(("setting", (key, value)))
    return found


def table_has_user_id_column(table: str) -> bool:
    columns = database_proxy.obj.get_columns(table)
    return any(c.name == "user_id" for c in columns)


def every_table() -> list[str]:
    return list(database_proxy.obj.get_tables())


async def test_choices_are_stored_as_settings_and_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT)
    services = await open_services(tmp_path, clock)
    try:
        privacy = services.privacy
        assert await privacy.set_flag(ALICE, HIDDEN, True)
        assert not await privacy.set_flag(ALICE, HIDDEN, True)  # already: nothing changes
        assert await privacy.set_flag(BOB, STOPPED, True)
        assert await privacy.set_flag(BOB, HIDDEN, True)
        assert await privacy.set_flag(CAROL, STOPPED, True)
        assert await privacy.set_flag(CAROL, STOPPED, False)  # back to nothing: the row goes
        stored = await services.storage.run(repository.settings_with_prefix, G, "privacy:")
        assert stored == {f"privacy:{ALICE}": "hidden", f"privacy:{BOB}": "hidden,stopped"}
    finally:
        await services.storage.close()
    restarted = await open_services(tmp_path, clock)
    try:
        privacy = restarted.privacy
        assert privacy.hidden == {ALICE, BOB} and privacy.stopped == {BOB}
        assert privacy.unlisted == {ALICE, BOB} and not privacy.is_unlisted(CAROL)
        assert BOB in restarted.names.withheld  # the name service's live view of who stopped
    finally:
        await restarted.storage.close()


def test_stored_values_parse_back_and_unknown_words_are_ignored() -> None:
    assert parse("hidden,stopped") == {HIDDEN, STOPPED}
    assert parse("stopped,bogus") == {STOPPED}
    assert parse(3) == frozenset()
    assert encode(frozenset({STOPPED, HIDDEN})) == "hidden,stopped"


async def test_hidden_and_stopped_members_are_off_every_board_and_the_rest_move_up(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT)
    names = {ALICE: ("Ali", "alice"), BOB: ("Bobby", "bob"), CAROL: ("Carol", "carol"), DAVE: ("Dave", "d")}
    source = FakeNameSource(live=names)
    services = await open_services(tmp_path, clock, source)
    try:
        await write(services.storage, 1, {ALICE: 9, BOB: 7, CAROL: 5, DAVE: 3})
        await services.privacy.set_flag(ALICE, HIDDEN, True)
        await services.privacy.set_flag(CAROL, STOPPED, True)
        boards = services.boards
        lines = await boards.lines("messages")
        assert [(x.rank, x.name) for x in lines] == [(1, "Bobby"), (2, "Dave")]
        # Windows and archived seasons alike.
        assert [x.user_id for x in await boards.lines("messages", season=ALL_TIME.scope)] == [BOB, DAVE]
        assert [x.user_id for x in await boards.lines("messages", season=WEEK.scope)] == [BOB, DAVE]
        clock.advance(60.0)
        assert await services.seasons.roll(reason="test") is not None
        assert [x.user_id for x in await boards.lines("messages", season=1)] == [BOB, DAVE]
        finished = await boards.finished_seasons(10)
        winner = finished[0].winners["messages"]
        assert winner is not None and winner.user_id == BOB  # Ali had the most, but is hidden

        # /top for a caller below the shown lines: their rank leaves the hidden out.
        services.settings.update(leaderboard_size=1)
        shown, caller, rank, _ = await boards.lines_for_reply("messages", season=1, caller=DAVE)
        assert [x.user_id for x in shown] == [BOB] and caller is not None and rank == 2
        # A hidden caller gets no "your rank" line in the public /top (their /stats has it).
        shown, caller, rank, _ = await boards.lines_for_reply("messages", season=1, caller=ALICE)
        assert [x.user_id for x in shown] == [BOB] and caller is None and rank is None
        # Raw ranks stay raw where they are not a board (/stats).
        assert await services.storage.run(repository.rank_of, G, 1, "messages", DAVE) == 4

        await services.privacy.set_flag(ALICE, HIDDEN, False)
        services.settings.update(leaderboard_size=10)
        assert [x.user_id for x in await boards.lines("messages", season=1)] == [ALICE, BOB, DAVE]
    finally:
        await services.storage.close()


async def fill_everything(services: Services, user: int) -> None:
    """Rows about ``user`` (and BOB) in every table that can hold them: two seasons, the windows,
    daily buckets, a voice session, a name, a best placing, settings."""
    storage = services.storage
    opened = SessionOpen("s1", user, 50, MIDNIGHT)
    await write(
        storage, 1, {user: 4, BOB: 2}, opened=[opened], voice={(DAY, user): 30.0}, names={user: ("Ali", "alice")}
    )
    await storage.run(
        repository.apply_batch,
        ActivityBatch(guild_id=G, season=1, heartbeat_at=MIDNIGHT + 30, closed=[SessionClose("s1", MIDNIGHT + 30)]),
    )
    await services.seasons.roll(reason="test")  # season 1 ends: best placings recorded
    await write(storage, 2, {user: 1, BOB: 5}, day="2024-03-11")
    await services.privacy.set_flag(user, HIDDEN, True)


async def test_an_erase_leaves_no_row_naming_the_member_in_any_table(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT)
    services = await open_services(tmp_path, clock)
    storage = services.storage
    try:
        await fill_everything(services, ALICE)
        before = await storage.run(rows_naming, ALICE)
        tables = {t for t, _ in before}
        assert {"member_stats", "daily_activity", "voice_session", "member_name", "best_placing", "setting"} <= tables
        # Every table with a user_id column is swept, whatever migrations add later.
        with_user_id = {t for t in await storage.run(every_table) if await storage.run(table_has_user_id_column, t)}
        assert with_user_id == {m._meta.table_name for m in repository.member_tables()}
        bob_before = await storage.run(rows_naming, BOB)

        erased = await services.privacy.erase(ALICE)

        assert sum(erased.rows.values()) == len(before)
        left = await storage.run(rows_naming, ALICE)
        assert left == [("setting", (f"privacy:{ALICE}", json.dumps("stopped")))]  # the stop marker only
        assert await storage.run(rows_naming, BOB) == bob_before  # nobody else touched
        assert services.privacy.stopped == {ALICE} and services.privacy.hidden == set()
        assert [x.user_id for x in await services.boards.lines("messages", season=1)] == [BOB]
        # /privacy start removes the marker: then nothing at all names them.
        await services.privacy.set_flag(ALICE, STOPPED, False)
        assert await storage.run(rows_naming, ALICE) == []
    finally:
        await storage.close()


async def test_an_erase_drops_what_is_waiting_in_memory_and_nothing_comes_back(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT + 3_600)
    services = await open_services(tmp_path, clock)
    activity = services.activity
    try:
        activity.record_message(ALICE)
        activity.record_message(BOB)
        services.names.remember(ALICE, "Ali", "alice")
        activity.record_voice(ALICE, VoicePresence(50))
        activity.record_voice(BOB, VoicePresence(50))
        clock.advance(120)
        assert activity.pending_messages(ALICE) == 1 and activity.unflushed_voice_seconds(ALICE) == 120.0

        # The tracking extension closes voice for a stopped member (this test has no extension).
        services.privacy.subscribe(lambda user, before, after: activity.record_voice(user, None))
        erased = await services.privacy.erase(ALICE)
        assert erased.unwritten >= 3  # the message row, the voice credit, the session opened
        assert activity.pending_messages(ALICE) == 0 and activity.unflushed_voice_seconds(ALICE) == 0.0
        assert services.names.known_name(ALICE) is None
        assert await services.seasons.flush()
        assert await services.storage.run(rows_naming, ALICE) == [
            ("setting", (f"privacy:{ALICE}", json.dumps("stopped")))
        ]
        assert await services.storage.run(repository.member_totals, G, 1, BOB) == (1, 120.0)
        # Still stopped: the name service keeps nothing, nothing is counted by the extension.
        services.names.remember(ALICE, "Ali", "alice")
        assert services.names.known_name(ALICE) is None
    finally:
        await services.storage.close()


async def test_a_members_data_holds_every_season_window_day_session_and_choice(tmp_path: Path) -> None:
    clock = FakeClock(MIDNIGHT)
    services = await open_services(tmp_path, clock)
    try:
        await fill_everything(services, ALICE)
        services.activity.record_message(ALICE)
        data = await services.privacy.data(ALICE)
        assert [(s["season"], s["messages"], s["voice_seconds"]) for s in data["seasons"]] == [
            (1, 4, 30.0),
            (2, 1, 0.0),
        ]
        assert data["seasons"][0]["ended_at"] is not None and data["seasons"][1]["ended_at"] is None
        windows = {w["period"]: w["messages"] for w in data["windows"]}
        assert windows == {"today": 1, "week": 5, "month": 5, "all-time": 5}  # today: 2024-03-11's one
        assert {w["scope"] for w in data["windows"]} == {-1, -7, -30, ALL_TIME.scope}
        assert data["days"] == [
            {"day": DAY, "messages": 4, "voice_seconds": 30.0},
            {"day": "2024-03-11", "messages": 1, "voice_seconds": 0.0},
        ]
        assert data["voice_sessions"] == [
            {"channel_id": 50, "started_at": MIDNIGHT, "last_seen_at": MIDNIGHT + 30, "ended_at": MIDNIGHT + 30}
        ]
        assert data["name"]["display_name"] == "Ali"
        assert data["best_placing"] == {"season": 1, "board": "messages", "rank": 1, "value": 4.0}
        assert data["privacy"] == ["hidden"]
        assert data["unwritten"]["messages"] == 1
        assert await services.privacy.data(DAVE) == {
            "seasons": [],
            "windows": [],
            "days": [],
            "voice_sessions": [],
            "name": None,
            "best_placing": None,
            "privacy": [],
            "unwritten": {"messages": 0, "voice_seconds": 0.0},
        }
    finally:
        await services.storage.close()


async def test_a_service_without_activity_erases_the_rows_only(tmp_path: Path) -> None:
    services = await open_services(tmp_path, FakeClock(MIDNIGHT))
    try:
        await write(services.storage, 1, {ALICE: 2})
        bare = PrivacyService(services.storage, guild_id=G)
        erased = await bare.erase(ALICE)
        assert erased.unwritten == 0 and erased.rows["member_stats"] >= 2  # the season and the windows
        assert bare.is_stopped(ALICE)
    finally:
        await services.storage.close()


async def test_counts_moved_to_disk_in_an_outage_are_written_before_the_erase(tmp_path: Path, monkeypatch: Any) -> None:
    services = await open_services(tmp_path, FakeClock(MIDNIGHT + 3_600))
    activity = services.activity
    written: list[int] = []

    async def write_locked(season: int, now: float | None = None, **_: Any) -> bool:
        written.append(season)
        if len(written) == 1:
            activity._spilled.clear()  # written: nothing left on disk
        return True

    try:
        monkeypatch.setattr(activity, "write_locked", write_locked)
        monkeypatch.setattr(activity, "_spilled", {7: 3})
        await services.privacy.erase(ALICE)
        assert written == [1]  # under the flush lock, before the rows went
        await services.privacy.erase(BOB)
        assert written == [1]  # nothing on disk: no extra write

        monkeypatch.setattr(activity, "_spilled", {8: 1})  # and the write fails: nothing is erased
        await write(services.storage, 1, {CAROL: 2})
        try:
            await services.privacy.erase(CAROL)
        except StorageError:
            pass
        else:
            raise AssertionError("expected a StorageError")
        assert await services.storage.run(repository.member_totals, G, 1, CAROL) == (2, 0.0)
        assert services.privacy.is_stopped(CAROL)  # not counted meanwhile
    finally:
        await services.storage.close()
