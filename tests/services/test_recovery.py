"""The recovery file: its format, atomic rewriting, and applying saved parts exactly once,
whatever moment a crash (kill -9) picks."""

from __future__ import annotations

import asyncio
import errno
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from loguru import logger

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.db.models import MemberStats
from leaderboard_bot.domain import ActivityBatch, SeasonRoll, SessionClose, SessionOpen
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.recovery import FORMAT_VERSION, RecoveryFile, batch_from_json, batch_to_json, read_file
from leaderboard_bot.services.seasons import SeasonService
from tests.factories import FakeClock, fail_batches, here, runtime_settings
from tests.services.test_activity import CH, T0, G, make_service, season_one, sessions, stats

IN_SEASONS = MemberStats.season > 0  # season rows, not the windows' (negative scopes)


def season_rows() -> list[tuple[int, int, int]]:
    return sorted((r.season, r.user_id, r.messages) for r in MemberStats.select().where(IN_SEASONS))


def sample_batch(sequence: int | None = 7) -> ActivityBatch:
    return ActivityBatch(
        guild_id=G,
        season=3,
        heartbeat_at=T0 + 0.25,
        messages={("2024-03-10", 2**63 - 1): 4},
        voice={("2024-03-10", 5): 12.5},
        opened=[SessionOpen("k1", 5, CH, T0)],
        closed=[SessionClose("k0", T0 - 1.5)],
        names={5: ("Fünf 🎧", None), 6: ("Six", "six")},
        roll=SeasonRoll(3, T0, 86_400.0),
        sequence=sequence,
    )


def files_of(tmp_path: Path) -> list[Path]:
    return sorted(p for p in tmp_path.glob("*.unsaved*.json"))


def test_a_batch_survives_the_json_round_trip() -> None:
    batch = sample_batch()
    assert batch_from_json(json.loads(json.dumps(batch_to_json(batch)))) == batch


def test_an_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.unsaved.json"
    path.write_text(json.dumps({"version": FORMAT_VERSION + 1, "parts": []}))
    with pytest.raises(ValueError, match="version"):
        read_file(path)


def test_write_replaces_the_process_file_atomically(tmp_path: Path) -> None:
    file = RecoveryFile(tmp_path / "db.unsaved.json")
    file.write([sample_batch(1)])
    file.write([sample_batch(2), sample_batch(3)])
    assert file.files() == [file.own_path]
    assert not list(tmp_path.glob("*.tmp"))
    assert [p.sequence for p in read_file(file.own_path).parts] == [2, 3]


async def test_a_disk_that_refuses_the_file_is_reported_once_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_lines: list[dict]
) -> None:
    file = RecoveryFile(tmp_path / "db.unsaved.json")

    def full(parts: list[ActivityBatch], *_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(file, "write", full)
        assert await file.save([sample_batch()]) is False
        assert await file.save([sample_batch()]) is False
    errors = [r for r in log_lines if r["level"] == "ERROR"]
    assert len(errors) == 1 and "No space left on device" in errors[0]["message"]
    assert "lost" in errors[0]["message"]
    assert await file.save([sample_batch()]) is True  # space is back
    assert any("saved to" in r["message"] and "again" in r["message"] for r in log_lines)


async def test_another_guilds_file_is_left_in_place(activity_storage: Storage, tmp_path: Path) -> None:
    file = RecoveryFile(tmp_path / "db.unsaved.json")
    other = sample_batch()
    other.guild_id = G + 1
    file.write([other])
    await file.apply_all(activity_storage, G)
    assert file.own_path.exists()
    assert await stats(activity_storage) == {}


def _legacy(path: Path, recovery_id: str, messages: int, mtime: float) -> None:
    data = batch_to_json(sample_batch(None))
    data.update(version=1, recovery_id=recovery_id, roll=None, messages=[["2024-03-10", 9, messages]])
    path.write_text(json.dumps(data))
    import os

    os.utime(path, (mtime, mtime))


async def test_parts_are_applied_in_the_order_written_each_once(activity_storage: Storage, tmp_path: Path) -> None:
    base = tmp_path / "db.unsaved.json"
    # Two processes' files, named so that name order is the reverse of the order written.
    later = RecoveryFile(base)
    later.own_path = tmp_path / "db.unsaved-a.json"
    earlier = RecoveryFile(base)
    earlier.own_path = tmp_path / "db.unsaved-b.json"
    first, second = sample_batch(1), sample_batch(2)
    first.roll = None
    second.roll = None
    second.season = 4
    earlier.clock = lambda: 100.0
    earlier.write([first])
    later.clock = lambda: 200.0
    later.write([second])
    _legacy(tmp_path / "db.unsaved.json", "old", 3, 50.0)

    applied: list[tuple[int, int | None]] = []
    real = repository.apply_batch

    def spy(batch: ActivityBatch) -> None:
        applied.append((batch.season, batch.sequence))
        real(batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repository, "apply_batch", spy)
        assert await earlier.apply_all(activity_storage, G) == 2
    assert applied == [(3, None), (3, 1), (4, 2)]  # the format-1 file (oldest) first
    assert files_of(tmp_path) == []
    rows = await activity_storage.run(season_rows)
    assert rows == [(3, 5, 0), (3, 9, 3), (3, 2**63 - 1, 4), (4, 5, 0), (4, 2**63 - 1, 4)]

    # The same files again (a crash before they were removed): nothing is counted twice.
    earlier.write([first])
    later.write([second])
    _legacy(tmp_path / "db.unsaved.json", "old", 3, 50.0)
    await earlier.apply_all(activity_storage, G)
    again = await activity_storage.run(season_rows)
    assert again == rows


async def test_an_unreadable_recovery_file_stops_the_start_and_is_left_alone(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path
) -> None:
    """Starting anyway would reuse its write numbers: once fixed, its parts would look written."""
    from leaderboard_bot.services.recovery import UnreadableRecoveryFile

    recovery = tmp_path / "broken.unsaved.json"
    recovery.write_text("{not json")
    service = make_service(activity_storage, activity_clock, recovery=recovery)
    with pytest.raises(UnreadableRecoveryFile, match=r"broken\.unsaved\.json") as caught:
        await service.start()
    assert "damaged" in str(caught.value) and "permissions" not in str(caught.value)  # cut short, not locked away
    assert recovery.read_text() == "{not json"
    assert await stats(activity_storage) == {}


# --------------------------------------------------------------------------- with the activity service


async def restart(storage: Storage, clock: FakeClock, recovery: Path) -> ActivityService:
    """A new process on the same files: the old one died without any shutdown (kill -9)."""
    service = make_service(storage, clock, recovery=recovery)
    await service.start()
    return service


async def test_a_shutdown_that_cannot_write_saves_to_disk_and_the_next_start_writes_it(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = tmp_path / "activity.db.unsaved.json"
    first = make_service(activity_storage, activity_clock, recovery=recovery)
    await first.start()
    first.names.remember(1, "Ali", "alice")
    first.record_voice(1, here(CH))
    for _ in range(4):
        first.record_message(1)
    activity_clock.advance(30.0)
    with monkeypatch.context() as patch:
        fail_batches(patch, times=10)
        assert await first.shutdown(season_one) is False
    assert files_of(tmp_path) and await stats(activity_storage) == {}

    second = await restart(activity_storage, activity_clock, recovery)
    assert files_of(tmp_path) == []
    assert await stats(activity_storage) == {1: (4, 30.0)}
    assert await sessions(activity_storage) == [(1, CH, T0, T0 + 30.0, T0 + 30.0)]
    assert await activity_storage.run(repository.names, G, [1]) == {1: "Ali"}
    await second.start()  # nothing left to recover: nothing counted twice
    assert await stats(activity_storage) == {1: (4, 30.0)}


async def test_every_failed_flush_rewrites_the_file_so_kill_9_loses_nothing_flushed(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = tmp_path / "activity.db.unsaved.json"
    first = make_service(activity_storage, activity_clock, recovery=recovery)
    await first.start()
    with monkeypatch.context() as patch:
        fail_batches(patch, times=100)
        for _second in range(12):  # 12 messages, a flush after each, the database locked throughout
            first.record_message(1)
            activity_clock.advance(1.0)
            assert await first.flush(season_one) is False
            assert len(files_of(tmp_path)) == 1
        first.record_message(1)  # the 13th arrives after the last flush: the one interval at risk
    # kill -9: no shutdown at all.
    await restart(activity_storage, activity_clock, recovery)
    assert await stats(activity_storage) == {1: (12, 0.0)}
    assert files_of(tmp_path) == []


async def test_a_write_that_commits_just_before_the_kill_is_not_applied_again(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = tmp_path / "activity.db.unsaved.json"
    first = make_service(activity_storage, activity_clock, recovery=recovery)
    await first.start()
    with monkeypatch.context() as patch:
        fail_batches(patch, times=1)
        first.record_message(1)
        assert await first.flush(season_one) is False  # the file holds message 1
    first.record_message(1)
    saved = {p: p.read_text() for p in files_of(tmp_path)}
    assert await first.flush(season_one) is True  # both are in the database...
    await asyncio.sleep(0.1)
    assert files_of(tmp_path) == []  # ...and the file is removed...
    for path, text in saved.items():
        path.write_text(text)  # ...but the process died before removing the file
    await restart(activity_storage, activity_clock, recovery)
    assert await stats(activity_storage) == {1: (2, 0.0)}


@pytest.mark.parametrize("commits", [True, False])
async def test_a_snapshot_taken_while_a_write_hangs_keeps_that_write_apart(
    commits: bool, activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write in flight keeps its own number in the file: if it commits, a restart skips it
    and still applies what arrived during the hang; if it never commits, both are applied."""
    recovery = tmp_path / "activity.db.unsaved.json"
    service = make_service(activity_storage, activity_clock, recovery=recovery)
    service.snapshot_every = lambda: 0.05
    await service.start()
    gate, busy = threading.Event(), threading.Event()
    real = repository.apply_batch

    def hanging(batch: ActivityBatch) -> None:  # a busy wait on a lock held elsewhere
        busy.set()
        assert gate.wait(10)
        if not commits:
            raise sqlite3.OperationalError("database is locked")
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", hanging)
    service.record_message(5)
    flushing = asyncio.ensure_future(service.flush(season_one))
    assert await asyncio.to_thread(busy.wait, 10)
    service.record_message(5)  # arrives while the write hangs
    for _ in range(200):
        await asyncio.sleep(0.01)
        files = files_of(tmp_path)
        if files and len(read_file(files[0]).parts) == 2:
            break
    (path,) = files_of(tmp_path)
    snapshot = path.read_text()
    assert [sum(p.messages.values()) for p in read_file(path).parts] == [1, 1]
    gate.set()
    assert await flushing is commits
    await asyncio.sleep(0.1)  # let a successful flush remove the file first
    monkeypatch.setattr(repository, "apply_batch", real)
    path.write_text(snapshot)  # kill -9 during the hang: the file as it was then
    await restart(activity_storage, activity_clock, recovery)
    assert await stats(activity_storage) == {5: (2, 0.0)}
    assert files_of(tmp_path) == []


# --------------------------------------------------------------------------- spilling a full buffer


class Outage:
    """repository.apply_batch refuses every write while ``down``; records what it was given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = True
        self.written: list[ActivityBatch] = []
        real = repository.apply_batch

        def gated(batch: ActivityBatch) -> None:
            if self.down:
                raise sqlite3.OperationalError("database is locked")
            real(batch)
            self.written.append(batch)

        monkeypatch.setattr(repository, "apply_batch", gated)


def spilled_parts(path: Path) -> list[dict]:
    return [part for part in json.loads(path.read_text())["parts"] if part.get("spilled")]


async def fill_during_outage(service: ActivityService, clock: FakeClock, users: int) -> None:
    """``users`` members send one message each while every flush fails."""
    for user in range(1, users + 1):
        service.record_message(user)
        if user % 25 == 0:
            clock.advance(1.0)
            assert await service.flush(season_one) is False
    for _ in range(200):  # let the spill the messages asked for finish
        if service.buffered()[0] < service.max_pending_rows:
            break
        await asyncio.sleep(0.01)


async def test_a_full_buffer_spills_its_oldest_rows_and_writes_them_first_when_the_database_is_back(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = tmp_path / "activity.db.unsaved.json"
    service = make_service(activity_storage, activity_clock, recovery=recovery)
    service.max_pending_rows = 100
    await service.start()
    outage = Outage(monkeypatch)
    await fill_during_outage(service, activity_clock, 350)
    rows, _ = service.buffered()
    assert rows <= 100  # the bound holds...
    assert service.rows_spilled + rows == 350 and service.spilled_rows == service.rows_spilled  # ...nothing dropped
    (path,) = files_of(tmp_path)
    spilled = spilled_parts(path)
    assert sum(len(p["messages"]) for p in spilled) == service.rows_spilled
    assert min(u for p in spilled for _, u, _ in p["messages"]) == 1  # the oldest went first
    assert max(p["sequence"] for p in spilled) < max(p.sequence or 0 for p in read_file(path).parts)

    assert service.unsaved_since() == T0  # nothing written since the start
    outage.down = False
    assert await service.flush(season_one) is True
    assert service.unsaved_since() is None
    numbers = [b.sequence or 0 for b in outage.written]
    assert numbers == sorted(numbers)  # the spilled parts first: their numbers are lower
    assert await stats(activity_storage) == {user: (1, 0.0) for user in range(1, 351)}
    assert service.spilled_rows == 0
    await asyncio.sleep(0.1)
    assert files_of(tmp_path) == []
    assert await service.flush(season_one) is True
    assert await stats(activity_storage) == {user: (1, 0.0) for user in range(1, 351)}  # nothing twice


async def test_kill_9_after_a_spill_loses_and_doubles_nothing(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = tmp_path / "activity.db.unsaved.json"
    service = make_service(activity_storage, activity_clock, recovery=recovery)
    service.max_pending_rows = 100
    await service.start()
    with monkeypatch.context() as patch:
        Outage(patch)
        await fill_during_outage(service, activity_clock, 300)  # the last flush saved all 300
        assert service.rows_spilled >= 100
    await restart(activity_storage, activity_clock, recovery)  # kill -9, then a new start
    assert await stats(activity_storage) == {user: (1, 0.0) for user in range(1, 301)}
    assert files_of(tmp_path) == []


async def test_a_spill_the_disk_refuses_keeps_the_rows_in_memory(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = tmp_path / "activity.db.unsaved.json"
    service = make_service(activity_storage, activity_clock, recovery=recovery)
    service.max_pending_rows = 50
    await service.start()
    outage = Outage(monkeypatch)
    assert service.recovery is not None
    real_write = service.recovery.write

    def full(
        parts: list[ActivityBatch],
        spilled: list[ActivityBatch] | None = None,
        committed: int = 0,
        season: int | None = None,
    ) -> None:
        if spilled:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(parts, spilled, committed, season)

    monkeypatch.setattr(service.recovery, "write", full)
    await fill_during_outage(service, activity_clock, 120)
    assert service.rows_spilled == 0 and service.buffered()[0] == 120  # kept, not dropped
    outage.down = False
    assert await service.flush(season_one) is True
    assert await stats(activity_storage) == {user: (1, 0.0) for user in range(1, 121)}


async def test_a_spill_during_a_hanging_write_keeps_every_count_once(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write in flight, the spilled rows and the rest are three parts of one file: whether
    the hanging write commits or not, a restart from that file counts everything once."""
    recovery = tmp_path / "activity.db.unsaved.json"
    service = make_service(activity_storage, activity_clock, recovery=recovery)
    service.max_pending_rows = 20
    await service.start()
    gate, busy = threading.Event(), threading.Event()
    real = repository.apply_batch

    def hanging(batch: ActivityBatch) -> None:
        busy.set()
        assert gate.wait(10)
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", hanging)
    service.record_message(1000)
    flushing = asyncio.ensure_future(service.flush(season_one))
    assert await asyncio.to_thread(busy.wait, 10)
    for user in range(1, 31):  # arrive during the hang: past the bound, so a spill happens
        service.record_message(user)
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    assert service.rows_spilled > 0
    (path,) = files_of(tmp_path)
    snapshot = path.read_text()
    parts = read_file(path).parts
    assert sorted(sum(p.messages.values()) for p in parts)[-1] <= 30 and sum(
        sum(p.messages.values()) for p in parts
    ) == 31  # the write in flight (1), the spilled rows and the rest: 31 messages, each once
    gate.set()
    assert await flushing is True
    monkeypatch.setattr(repository, "apply_batch", real)
    path.write_text(snapshot)  # kill -9 during the hang: the file as it was then
    await restart(activity_storage, activity_clock, recovery)
    assert await stats(activity_storage) == {user: (1, 0.0) for user in [*range(1, 31), 1000]}


async def spill_during_a_slow_spilled_write(
    storage: Storage, clock: FakeClock, recovery: Path, monkeypatch: pytest.MonkeyPatch
) -> ActivityService:
    """The race the review found: 50 members spill during an outage; when the database is back,
    the first (spilled) write is slow and 40 more members arrive meanwhile, past the bound, so a
    part is spilled during it. Returns once that flush has committed."""
    service = make_service(storage, clock, recovery=recovery)
    service.max_pending_rows = 20
    await service.start()
    outage = Outage(monkeypatch)
    await fill_during_outage(service, clock, 50)
    assert service.rows_spilled > 0
    gate, busy = threading.Event(), threading.Event()
    real = repository.apply_batch
    first = [True]

    def slow_first(batch: ActivityBatch) -> None:
        if first[0]:
            first[0] = False
            busy.set()
            assert gate.wait(10)
        real(batch)

    outage.down = False
    monkeypatch.setattr(repository, "apply_batch", slow_first)
    flushing = asyncio.ensure_future(service.flush(season_one))
    assert await asyncio.to_thread(busy.wait, 10)
    for user in range(1000, 1040):  # a burst during the slow write: past the bound, a spill
        service.record_message(user)
        await asyncio.sleep(0)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if service.rows_spilled > 50 - 20:
            break
    gate.set()
    assert await flushing is True
    await asyncio.sleep(0.2)  # the file rewrite after the success
    return service


SPILL_RACE_MEMBERS = [*range(1, 51), *range(1000, 1040)]


async def test_a_spill_while_a_spilled_part_is_being_written_is_never_lost(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part spilled while an earlier spilled part is being written has a number below the batch
    that follows in the same flush: it must be written before that batch (found in review)."""
    recovery = tmp_path / "activity.db.unsaved.json"
    service = await spill_during_a_slow_spilled_write(activity_storage, activity_clock, recovery, monkeypatch)
    assert await service.flush(season_one) is True
    await asyncio.sleep(0.1)
    expected = {u: (1, 0.0) for u in SPILL_RACE_MEMBERS}
    got = await stats(activity_storage)
    assert got == expected, sorted(u for u in expected if u not in got)


async def test_kill_9_after_a_spill_during_a_spilled_write_loses_nothing(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same race, then kill -9 right after the flush: the restart must not skip the spilled part
    (its number is below the stored write number only if it was written)."""
    recovery = tmp_path / "activity.db.unsaved.json"
    await spill_during_a_slow_spilled_write(activity_storage, activity_clock, recovery, monkeypatch)
    # kill -9 now; a new process starts on the same files
    await restart(activity_storage, activity_clock, recovery)
    expected = {u: (1, 0.0) for u in SPILL_RACE_MEMBERS}
    got = await stats(activity_storage)
    assert got == expected, sorted(u for u in expected if u not in got)


async def test_a_roll_cancelled_while_a_spilled_part_commits_leaves_the_season_open(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A roll writes the parts spilled during an outage first, each in its own transaction. A stop
    cancelling it while one of those commits must not be taken for the season's end (found by
    review: the next write went into a season the database had not opened)."""
    service = make_service(activity_storage, activity_clock, recovery=tmp_path / "activity.db.unsaved.json")
    service.max_pending_rows = 100
    seasons_ = SeasonService(activity_storage, service, runtime_settings(reset_period=1000.0), clock=activity_clock)
    service.current_season = seasons_.current_number
    await seasons_.load()
    await service.start()
    with monkeypatch.context() as patch:
        Outage(patch)
        await fill_during_outage(service, activity_clock, 300)
    assert service.spilled_rows > 0
    real = repository.apply_batch
    part_started, commit_part = threading.Event(), threading.Event()

    def slow_part(batch: ActivityBatch) -> None:
        part_started.set()
        assert commit_part.wait(10)
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", slow_part)
    rolling = asyncio.ensure_future(seasons_.roll(reason="test"))
    assert await asyncio.to_thread(part_started.wait, 10)
    rolling.cancel()  # a stop
    await asyncio.sleep(0.05)
    monkeypatch.setattr(repository, "apply_batch", real)
    commit_part.set()
    with pytest.raises(asyncio.CancelledError):
        await rolling
    stored = await activity_storage.run(repository.current_season, G)
    assert seasons_.current_number() == stored.number == 1
    assert await service.shutdown(season_one) is True
    assert sum(count for count, _ in (await stats(activity_storage)).values()) == 300


async def test_a_part_spilled_during_a_roll_that_fails_lands_in_the_season_it_was_counted_in(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_spill_once files a part spilled during an in-flight roll under season N+1. If the roll
    write fails, the part stays in the file under N+1 while the rest is filed under N; a kill -9
    then writes the season-N messages into season N+1 at the next start."""
    recovery = tmp_path / "activity.db.unsaved.json"
    service = make_service(activity_storage, activity_clock, recovery=recovery)
    service.max_pending_rows = 20
    await service.start()
    seasons_ = SeasonService(activity_storage, service, runtime_settings(reset_period=3600.0), clock=activity_clock)
    await seasons_.load()
    service.current_season = seasons_.current_number
    gate, busy = threading.Event(), threading.Event()

    def failing_roll(batch: ActivityBatch) -> None:
        busy.set()
        assert gate.wait(10)
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(repository, "apply_batch", failing_roll)
    service.record_message(1)
    rolling = asyncio.ensure_future(seasons_.roll(reason="test"))
    assert await asyncio.to_thread(busy.wait, 5)
    for user in range(100, 130):  # arrive during the roll's write: a spill
        service.record_message(user)
        await asyncio.sleep(0)
    await asyncio.sleep(0.2)
    assert service.rows_spilled > 0
    gate.set()
    assert await rolling is None  # the roll failed: everything is still season 1
    assert seasons_.current_number() == 1
    await asyncio.sleep(0.2)
    monkeypatch.undo()
    # kill -9; a new process starts on the same files
    await restart(activity_storage, activity_clock, recovery)

    def per_season() -> dict[int, int]:
        out: dict[int, int] = {}
        for row in MemberStats.select().where((MemberStats.guild_id == G) & (MemberStats.season > 0)):
            out[row.season] = out.get(row.season, 0) + row.messages
        return out

    assert await activity_storage.run(per_season) == {1: 31}


async def test_recovery_files_are_read_off_the_event_loop(
    activity_storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file spilled during a long outage is many MB of JSON; a standby taking over reads it
    while connected to Discord (found by review: parsed on the event loop)."""
    from leaderboard_bot.services import recovery as recovery_module

    file = RecoveryFile(tmp_path / "db.unsaved.json")
    file.write([ActivityBatch(G, 1, T0, messages={("2024-03-10", 1): 2}, sequence=1)])
    readers: list[str] = []
    real_read = recovery_module.read_file

    def spy(path: Path) -> object:
        readers.append(threading.current_thread().name)
        return real_read(path)

    monkeypatch.setattr(recovery_module, "read_file", spy)
    assert await file.apply_all(activity_storage, G) == 1
    assert readers and threading.main_thread().name not in readers
    assert not list(tmp_path.glob("db.unsaved*.json"))


async def test_parts_the_database_already_holds_writes_past_are_skipped_with_one_line(
    activity_storage: Storage, tmp_path: Path
) -> None:
    """An instance that lost its lease during an outage left a file: at its next start the parts
    are behind what the database holds (the other instance wrote past them) and are skipped,
    which was silent (found by review)."""
    await activity_storage.run(repository.set_setting, G, repository.WRITE_SEQUENCE_KEY, 9)
    file = RecoveryFile(tmp_path / "db.unsaved.json")
    file.write([ActivityBatch(G, 1, T0, messages={("2024-03-10", 1): 4}, voice={("2024-03-10", 2): 30.0}, sequence=7)])
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        assert await file.apply_all(activity_storage, G) == 9
    finally:
        logger.remove(sink)
    assert await stats(activity_storage) == {}
    (said,) = [line for line in lines if "skipped" in line]
    assert "4 message(s) and 30s of voice" in said and "took over" in said
