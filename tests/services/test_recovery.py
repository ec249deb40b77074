"""The recovery file: its format, atomic saving, and applying saved batches exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.db.models import MemberStats
from leaderboard_bot.domain import ActivityBatch, SessionClose, SessionOpen
from leaderboard_bot.services.recovery import FORMAT_VERSION, RecoveryFile, batch_from_json, batch_to_json
from tests.factories import FakeClock, fail_batches, here
from tests.services.test_activity import CH, T0, G, make_service, season_one, sessions, stats


def sample_batch(recovery_id: str = "abc") -> ActivityBatch:
    return ActivityBatch(
        guild_id=G,
        season=3,
        heartbeat_at=T0 + 0.25,
        messages={("2024-03-10", 2**63 - 1): 4},
        voice={("2024-03-10", 5): 12.5},
        opened=[SessionOpen("k1", 5, CH, T0)],
        closed=[SessionClose("k0", T0 - 1.5)],
        names={5: ("Fünf 🎧", None), 6: ("Six", "six")},
        recovery_id=recovery_id,
    )


def test_a_batch_survives_the_json_round_trip() -> None:
    batch = sample_batch()
    assert batch_from_json(json.loads(json.dumps(batch_to_json(batch)))) == batch


def test_an_unknown_format_version_is_refused() -> None:
    data = batch_to_json(sample_batch())
    data["version"] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="version"):
        batch_from_json(data)


def test_save_is_atomic_and_never_overwrites(tmp_path: Path) -> None:
    file = RecoveryFile(tmp_path / "db.unsaved.json")
    first = file.save(sample_batch("one"))
    second = file.save(sample_batch("two"))
    assert first == tmp_path / "db.unsaved.json"
    assert second == tmp_path / "db.unsaved-two.json"
    assert not list(tmp_path.glob("*.tmp"))
    assert file.files() == sorted([first, second])
    assert batch_from_json(json.loads(first.read_text())).recovery_id == "one"


def test_a_disk_that_refuses_the_file_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    file = RecoveryFile(blocker / "db.unsaved.json")
    assert file.save(sample_batch()) is None
    assert file.files() == []


async def test_another_guilds_file_is_left_in_place(activity_storage: Storage, tmp_path: Path) -> None:
    file = RecoveryFile(tmp_path / "db.unsaved.json")
    other = sample_batch()
    other.guild_id = G + 1
    path = file.save(other)
    await file.apply_all(activity_storage, G)
    assert path is not None and path.exists()
    assert await stats(activity_storage) == {}


async def test_files_are_applied_in_name_order_each_once(activity_storage: Storage, tmp_path: Path) -> None:
    file = RecoveryFile(tmp_path / "db.unsaved.json")
    file.save(sample_batch("one"))
    file.save(sample_batch("two"))
    await file.apply_all(activity_storage, G)
    assert file.files() == []
    rows = await activity_storage.run(lambda: sorted((r.season, r.user_id, r.messages) for r in MemberStats.select()))
    assert rows == [(3, 5, 0), (3, 2**63 - 1, 8)]


async def test_a_shutdown_that_cannot_write_saves_to_disk_and_the_next_start_writes_it(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = tmp_path / "activity.db.unsaved.json"
    first = make_service(activity_storage, activity_clock, recovery=recovery)
    first.names.remember(1, "Ali", "alice")
    first.record_voice(1, here(CH))
    for _ in range(4):
        first.record_message(1)
    activity_clock.advance(30.0)
    with monkeypatch.context() as patch:
        fail_batches(patch, times=10)
        assert await first.shutdown(season_one, attempts=2, retry_delay=0) is False
    assert recovery.exists() and await stats(activity_storage) == {}

    second = make_service(activity_storage, activity_clock, recovery=recovery)
    await second.start()
    assert not recovery.exists()
    assert await stats(activity_storage) == {1: (4, 30.0)}
    assert await sessions(activity_storage) == [(1, CH, T0, T0 + 30.0, T0 + 30.0)]
    assert await activity_storage.run(repository.names, G, [1]) == {1: "Ali"}
    await second.start()  # nothing left to recover: nothing counted twice
    assert await stats(activity_storage) == {1: (4, 30.0)}


async def test_an_unreadable_recovery_file_is_left_alone(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path
) -> None:
    recovery = tmp_path / "broken.unsaved.json"
    recovery.write_text("{not json")
    service = make_service(activity_storage, activity_clock, recovery=recovery)
    await service.start()  # starts anyway
    assert recovery.read_text() == "{not json"
    assert await stats(activity_storage) == {}


async def test_a_recovery_file_is_never_applied_twice(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = tmp_path / "activity.db.unsaved.json"
    first = make_service(activity_storage, activity_clock, recovery=recovery)
    first.record_message(1)
    with monkeypatch.context() as patch:
        fail_batches(patch, times=10)
        assert await first.shutdown(season_one, attempts=1, retry_delay=0) is False
    saved = recovery.read_text()

    second = make_service(activity_storage, activity_clock, recovery=recovery)
    await second.start()
    recovery.write_text(saved)  # as if the process died after writing but before removing the file
    third = make_service(activity_storage, activity_clock, recovery=recovery)
    await third.start()
    assert await stats(activity_storage) == {1: (1, 0.0)}
    assert not recovery.exists()


async def test_a_waiting_recovery_file_is_never_overwritten(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = tmp_path / "activity.db.unsaved.json"
    recovery.write_text("{damaged")
    service = make_service(activity_storage, activity_clock, recovery=recovery)
    service.record_message(7)
    with monkeypatch.context() as patch:
        fail_batches(patch, times=10)
        assert await service.shutdown(season_one, attempts=1, retry_delay=0) is False
    assert recovery.read_text() == "{damaged"
    (extra,) = [p for p in tmp_path.glob("activity.db.unsaved-*.json")]

    restarted = make_service(activity_storage, activity_clock, recovery=recovery)
    await restarted.start()
    assert await stats(activity_storage) == {7: (1, 0.0)}
    assert not extra.exists() and recovery.exists()  # the damaged one waits for a human
