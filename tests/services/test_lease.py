"""The lease: one instance counts for a guild; a write by one that lost it fails whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from loguru import logger

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.db.storage import StorageError
from leaderboard_bot.domain import ActivityBatch, LeaseClaim
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.lease import LEASE_GRACE, LeaseService
from leaderboard_bot.services.recovery import RecoveryFile
from tests.factories import FakeClock, fail_batches
from tests.services.test_activity import T0, G, make_service, season_one, stats


def lease(storage: Storage, clock: Callable[[], float], holder: str, flush_interval: float = 5.0) -> LeaseService:
    return LeaseService(
        storage, guild_id=G, flush_interval=lambda: flush_interval, clock=clock, monotonic=clock, holder=holder
    )


async def test_one_holder_at_a_time_until_it_expires(activity_storage: Storage, activity_clock: FakeClock) -> None:
    first, second = lease(activity_storage, activity_clock, "a"), lease(activity_storage, activity_clock, "b")
    assert await first.try_acquire() is True and first.role == "active"
    assert await second.try_acquire() is False and second.role == "standby"
    assert second.current_holder == "a"
    activity_clock.advance(5.0 + LEASE_GRACE - 0.1)
    assert await second.try_acquire() is False  # not expired yet
    assert await first.try_acquire() is True  # the holder renews
    activity_clock.advance(5.0 + LEASE_GRACE + 0.1)
    assert await second.try_acquire() is True  # expired: taken over
    assert await first.try_acquire() is False and first.current_holder == "b"


async def test_a_holder_known_to_be_gone_is_replaced_at_once(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    first, second = lease(activity_storage, activity_clock, "a"), lease(activity_storage, activity_clock, "b")
    assert await first.try_acquire()
    assert await second.try_acquire(holder_gone=True) is True


async def test_a_standby_does_not_take_a_lease_that_expired_while_neither_could_reach_the_database(
    activity_storage: Storage, activity_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL server restarts: the active instance counts in memory, cannot renew, and its
    lease expires. Taken at once when the database answered again, the active one would find its
    lease gone and drop everything it counted meanwhile. The standby first watches for one TTL."""
    active, standby = lease(activity_storage, activity_clock, "a"), lease(activity_storage, activity_clock, "b")
    assert await active.try_acquire()
    assert await standby.try_take_over() is False  # watching from now
    real_look = standby.look

    async def unreachable() -> None:
        raise StorageError("connection refused", kind="unreachable")

    monkeypatch.setattr(standby, "look", unreachable)
    with pytest.raises(StorageError):
        await standby.try_take_over()
    activity_clock.advance(active.ttl + 10.0)  # the outage outlasts the lease
    monkeypatch.setattr(standby, "look", real_look)
    assert await standby.try_take_over() is False  # expired, but only just seen again
    activity_clock.advance(active.ttl - 1.0)
    assert await active.try_acquire()  # the active one's first write after the outage renews it
    activity_clock.advance(2.0)
    assert await standby.try_take_over() is False and standby.current_holder == "a"
    # The active one really stops: taken over once it has gone unrenewed for a lease period.
    activity_clock.advance(active.ttl - 1.0)
    assert await standby.try_take_over() is False
    activity_clock.advance(1.1)
    assert await standby.try_take_over() is True


async def poll_while_the_holder_writes(
    active: LeaseService, standby: LeaseService, clock: FakeClock, seconds: float, every: float = 5.0
) -> bool:
    """The active instance renews with a write every ``every`` s; the standby polls every second.
    Whether the standby took the lease meanwhile."""
    for tick in range(int(seconds)):
        clock.advance(1.0)
        if tick % int(every) == 0:
            assert await active.try_acquire()  # what its flush's renew_lease does
        if await standby.try_take_over():
            return True
    return False


async def seconds_to_take_over(standby: LeaseService, clock: FakeClock, at_most: int = 30) -> float:
    """The holder has stopped: poll once a second until the standby takes the lease (at most
    ``at_most`` polls); the seconds that took."""
    started = clock.now
    for _ in range(at_most):
        clock.advance(1.0)
        if await standby.try_take_over():
            break
    return clock.now - started


async def test_a_standby_whose_clock_runs_ahead_never_takes_the_lease_of_a_holder_that_renews(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    """Two machines, the standby's wall clock 15 s ahead: the holder's expiry, written with its own
    clock, looked past on the standby's every few seconds (found by a tester: it took the lease of
    a healthy holder, which then stopped with the counts it held)."""
    active = lease(activity_storage, activity_clock, "a")
    ahead = lease(activity_storage, lambda: activity_clock.now + 15.0, "b")
    ahead.monotonic = activity_clock  # its own monotonic clock runs at the same rate
    assert await active.try_acquire()
    assert await poll_while_the_holder_writes(active, ahead, activity_clock, 120) is False
    # The holder dies: taken over one TTL after its last renewal was seen, not earlier.
    waited = await seconds_to_take_over(ahead, activity_clock)
    assert ahead.active and waited <= ahead.ttl + 2.0


async def test_a_standby_whose_clock_runs_behind_still_takes_over_a_dead_holder_in_time(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    active = lease(activity_storage, activity_clock, "a")
    behind = lease(activity_storage, lambda: activity_clock.now - 600.0, "b")
    behind.monotonic = activity_clock
    assert await active.try_acquire()
    assert await poll_while_the_holder_writes(active, behind, activity_clock, 30) is False
    waited = await seconds_to_take_over(behind, activity_clock)
    assert behind.active and waited <= behind.ttl + 2.0


async def test_a_standby_waits_as_long_as_the_holder_renews_when_its_interval_is_longer(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    """FLUSH_INTERVAL raised on the active instance at run time: the standby, started with the old
    one, learns the holder's pace from the renewals it sees instead of taking over between two."""
    active = lease(activity_storage, activity_clock, "a", flush_interval=20.0)
    standby = lease(activity_storage, activity_clock, "b", flush_interval=5.0)
    assert await active.try_acquire()
    assert await poll_while_the_holder_writes(active, standby, activity_clock, 200, every=20.0) is False


async def test_a_standby_that_looks_first_just_before_a_renewal_still_learns_the_holders_pace(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    """Holder on 60 s, standby on 5 s. The first look may come just before a renewal, and one extra
    write (the one after midnight, a burst) comes sooner than the usual pace: neither may shorten
    the standby's wait below the holder's real pace (found by review: taken at t=70 and t=215)."""
    start = activity_clock.now
    active = lease(activity_storage, activity_clock, "a", flush_interval=60.0)
    standby = lease(activity_storage, activity_clock, "b", flush_interval=5.0)
    assert await active.try_acquire()
    activity_clock.advance(59.0)
    assert await standby.try_take_over() is False  # its first look, a second before a renewal
    renewals = {60, 120, 150, 180, 240, 300, 360}  # 150: an extra write
    for second in range(60, 400):
        activity_clock.set(start + second)
        if second in renewals:
            assert await active.try_acquire()
        assert await standby.try_take_over() is False, second
    # It stops after 360: taken over once unrenewed for its pace (60 s) and 5 s more.
    await seconds_to_take_over(standby, activity_clock, at_most=100)
    assert standby.active and activity_clock.now - start == 360 + 60 + LEASE_GRACE


async def test_a_standby_waits_as_long_as_the_holder_claims_after_its_pace_changes_or_it_is_replaced(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    """The pace learnt from a holder renewing every 5 s is no measure of one that now renews every
    60 s (its FLUSH_INTERVAL raised), nor of a new holder: each renewal says how long it claims
    the lease (found by review: a healthy holder's lease taken 10 s after a renewal)."""
    start = activity_clock.now
    interval = 5.0
    holder = LeaseService(
        activity_storage, guild_id=G, flush_interval=lambda: interval, clock=activity_clock, holder="a"
    )
    standby = lease(activity_storage, activity_clock, "b")
    assert await holder.try_acquire()

    async def renew() -> None:  # what a flush's write does
        await activity_storage.run(repository.apply_batch, ActivityBatch(G, 1, T0, lease=holder.claim()))

    for second in range(1, 60):
        activity_clock.set(start + second)
        if second % 5 == 0:
            await renew()
        assert await standby.try_take_over() is False
    interval = 60.0  # raised on the holder: it renews once a minute from here, claiming 65 s
    for second in range(60, 400):
        activity_clock.set(start + second)
        if second % 60 == 0:
            await renew()
        assert await standby.try_take_over() is False, second
    replacement = LeaseService(
        activity_storage, guild_id=G, flush_interval=lambda: 60.0, clock=activity_clock, holder="c"
    )
    assert await replacement.try_acquire(holder_gone=True)  # a new holder, renewing once a minute
    fresh = lease(activity_storage, activity_clock, "d")
    for second in range(400, 700):
        activity_clock.set(start + second)
        if second % 60 == 0:
            await activity_storage.run(repository.apply_batch, ActivityBatch(G, 1, T0, lease=replacement.claim()))
        assert await standby.try_take_over() is False, second
        assert await fresh.try_take_over() is False, second


async def test_a_standby_takes_a_released_lease_at_once(activity_storage: Storage, activity_clock: FakeClock) -> None:
    active, standby = lease(activity_storage, activity_clock, "a"), lease(activity_storage, activity_clock, "b")
    assert await active.try_acquire()
    await activity_storage.run(repository.apply_batch, ActivityBatch(G, 1, T0, lease=active.claim(release=True)))
    assert await standby.try_take_over() is True  # a clean stop: no need to watch first


async def test_a_write_renews_the_lease_and_a_released_lease_is_free_at_once(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    first, second = lease(activity_storage, activity_clock, "a"), lease(activity_storage, activity_clock, "b")
    assert await first.try_acquire()
    activity_clock.advance(8.0)
    batch = ActivityBatch(guild_id=G, season=1, heartbeat_at=T0, lease=first.claim())
    await activity_storage.run(repository.apply_batch, batch)  # renewed to now + ttl
    activity_clock.advance(8.0)  # past the first expiry, not the renewed one
    assert await second.try_acquire() is False
    await activity_storage.run(repository.apply_batch, ActivityBatch(G, 1, T0, lease=first.claim(release=True)))
    assert await second.try_acquire() is True
    assert first.claim() is not None  # (first does not know yet; its next write will tell it)


async def test_a_write_by_an_instance_that_lost_the_lease_changes_nothing(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    first, second = lease(activity_storage, activity_clock, "a"), lease(activity_storage, activity_clock, "b")
    assert await first.try_acquire()
    assert await second.try_acquire(holder_gone=True)
    stale = ActivityBatch(G, 1, T0, messages={("2024-03-10", 7): 3}, lease=LeaseClaim("a", T0 + 60), sequence=9)
    with pytest.raises(StorageError) as caught:
        await activity_storage.run(repository.apply_batch, stale)
    assert caught.value.kind == "lease lost" and "held by b" in str(caught.value)
    assert await stats(activity_storage) == {}  # the whole transaction rolled back
    assert await activity_storage.run(repository.get_setting, G, repository.WRITE_SEQUENCE_KEY, 0) == 0


async def test_losing_the_lease_drops_what_is_buffered_and_never_writes_again(
    activity_storage: Storage, activity_clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, other = lease(activity_storage, activity_clock, "a"), lease(activity_storage, activity_clock, "b")
    assert await mine.try_acquire()
    service: ActivityService = make_service(activity_storage, activity_clock, recovery=tmp_path / "a.db.unsaved.json")
    service.claim_lease = lambda release: mine.claim(release=release)
    lost: list[str] = []
    service.on_lease_lost = lost.append
    await service.start()
    service.record_message(1)
    assert await service.flush(season_one) is True
    with monkeypatch.context() as patch:  # a failed write leaves a recovery file behind
        fail_batches(patch, times=1)
        service.record_message(1)
        assert await service.flush(season_one) is False
    assert list(tmp_path.glob("a.db.unsaved*.json"))
    assert await other.try_acquire(holder_gone=True)  # another instance took over meanwhile
    service.record_message(1)
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    try:
        assert await service.flush(season_one) is False
    finally:
        logger.remove(sink)
    assert service.fenced and lost and "held by b" in lost[0]
    # The write refused holds all that was unwritten: its 2 messages are the ones said dropped.
    (dropped,) = [e for e in errors if "lost the lease" in e]
    assert "2 unwritten message(s) held here are dropped" in dropped
    assert service.buffered() == (0, 0)
    assert not list(tmp_path.glob("a.db.unsaved*.json"))  # never applied at a later start either
    service.record_message(1)
    assert await service.flush(season_one) is False  # never again
    assert await service.shutdown(season_one) is True  # nothing to save: the other one counts
    assert await stats(activity_storage) == {1: (1, 0.0)}  # only what was written while holding it
    assert not list(tmp_path.glob("a.db.unsaved*.json"))


def test_the_recovery_file_never_carries_a_lease(tmp_path: Path) -> None:
    file = RecoveryFile(tmp_path / "db.unsaved.json")
    file.write([ActivityBatch(G, 1, T0, messages={("2024-03-10", 1): 1}, lease=LeaseClaim("a", T0), sequence=3)])
    from leaderboard_bot.services.recovery import read_file

    (part,) = read_file(file.own_path).parts
    assert part.lease is None and part.sequence == 3


async def test_standby_facing_an_old_version_holder_takes_over_within_a_few_intervals(
    activity_storage: Storage, activity_clock: FakeClock
) -> None:
    """A rolling upgrade: an older version never moves the renewal time, so its \"claim\" grows
    with every renewal; trusted, the standby waited up to an hour (found by review)."""
    c = activity_clock
    start_at = c.now
    assert (await activity_storage.run(repository.acquire_lease, G, "old", c.now, c.now + 65.0))[0] == "old"
    # An older version renews every 60 s, moving expires_at only (acquired_at stays).
    for k in range(1, 50):
        c.set(start_at + 60.0 * k)
        await activity_storage.run(repository.renew_lease, G, "old", c.now + 65.0)
    standby = lease(activity_storage, c, "new", flush_interval=60.0)
    last_renewal = c.now
    for k in range(1, 8):  # 7 more renewals seen by the standby (pace learnt: 60 s)
        c.set(last_renewal + 60.0 * k - 30.0)
        assert not await standby.try_take_over()
        c.set(last_renewal + 60.0 * k)
        await activity_storage.run(repository.renew_lease, G, "old", c.now + 65.0)
    died = c.now  # the old holder dies now
    while not await standby.try_take_over():
        c.advance(5.0)
        assert c.now - died < 3_700
    waited = c.now - died
    assert waited <= 200.0  # before this commit: pace 60 + 5 s grace
