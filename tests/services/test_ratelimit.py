from __future__ import annotations

import sys

import pytest

from leaderboard_bot.services.ratelimit import MessageGuard, NullGuard, SpamGuard, TokenBucket


class FakeClock:
    """Manually advanced clock so no test sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- TokenBucket -----------------------------------------------------------------


def test_bucket_starts_full_and_allows_exact_burst() -> None:
    bucket = TokenBucket(5, 1.0, now=0.0)
    assert bucket.tokens == 5
    assert [bucket.try_take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.tokens == 0


def test_bucket_refills_after_time() -> None:
    bucket = TokenBucket(5, 1.0, now=0.0)
    for _ in range(5):
        assert bucket.try_take(0.0)
    assert not bucket.try_take(0.5)
    assert bucket.try_take(1.0)
    assert not bucket.try_take(1.0)


def test_bucket_partial_refill() -> None:
    bucket = TokenBucket(2, 0.5, now=0.0)
    assert bucket.try_take(0.0)
    assert bucket.try_take(0.0)
    assert not bucket.try_take(1.0)  # 0.5 tokens, not enough
    assert bucket.tokens == pytest.approx(0.5)
    assert bucket.try_take(2.0)  # 0.5 + 0.5
    assert bucket.tokens == pytest.approx(0.0)


def test_bucket_fractional_sums_do_not_lose_a_token() -> None:
    # 0.1 * 10 is 0.9999999999999999 in floats; the member has still earned a token.
    bucket = TokenBucket(1, 0.1, now=0.0)
    assert bucket.try_take(0.0)
    t = 0.0
    for _ in range(9):
        t += 1.0
        assert not bucket.try_take(t)
    assert bucket.try_take(t + 1.0)


def test_bucket_caps_at_capacity() -> None:
    bucket = TokenBucket(3, 10.0, now=0.0)
    assert bucket.try_take(0.0)
    assert bucket.try_take(1_000_000.0)
    assert bucket.tokens == pytest.approx(2.0)  # refilled to 3, not millions
    assert [bucket.try_take(1_000_000.0) for _ in range(3)] == [True, True, False]


def test_bucket_clock_going_backwards_gives_no_tokens() -> None:
    bucket = TokenBucket(2, 1.0, now=100.0)
    assert bucket.try_take(100.0)
    assert bucket.try_take(100.0)
    assert not bucket.try_take(50.0)  # jumped back: no refill, no crash
    assert bucket.tokens == 0
    # Back at the original time: the interval 50..100 must not be credited.
    assert not bucket.try_take(100.0)
    assert not bucket.try_take(100.5)
    assert bucket.try_take(101.0)


def test_bucket_is_full_and_reconfigure() -> None:
    bucket = TokenBucket(4, 1.0, now=0.0)
    assert bucket.is_full(0.0)
    assert bucket.try_take(0.0)
    assert not bucket.is_full(0.5)
    assert bucket.is_full(1.0)
    assert bucket.tokens == 3  # is_full does not mutate
    bucket.reconfigure(2, 2.0)
    assert bucket.tokens == 2
    assert bucket.capacity == 2
    assert bucket.refill_rate == 2.0


@pytest.mark.parametrize(("capacity", "rate"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -1.0), (1, float("nan"))])
def test_bucket_rejects_bad_limits(capacity: int, rate: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(capacity, rate, now=0.0)


# --- SpamGuard -------------------------------------------------------------------


def test_spec_example_5_per_5s() -> None:
    # SPAM_LIMIT 5/5s -> capacity 5, refill 1 token/s.
    clock = FakeClock()
    guard = SpamGuard(5, 5 / 5, clock=clock)
    assert [guard.allow(1) for _ in range(5)] == [True] * 5
    assert guard.allow(1) is False
    clock.advance(1.0)
    assert guard.allow(1) is True
    assert guard.allow(1) is False
    assert guard.allowed == 6
    assert guard.blocked == 2


def test_explicit_now_overrides_clock() -> None:
    guard = SpamGuard(1, 1.0, clock=lambda: pytest.fail("clock must not be called"))
    assert guard.allow(1, now=0.0)
    assert not guard.allow(1, now=0.5)
    assert guard.allow(1, now=1.0)


def test_members_are_isolated() -> None:
    clock = FakeClock()
    guard = SpamGuard(3, 0.1, clock=clock)
    for _ in range(50):
        guard.allow(1)
    assert guard.blocked == 47
    assert [guard.allow(2) for _ in range(4)] == [True, True, True, False]
    assert len(guard) == 2


def test_counters() -> None:
    clock = FakeClock()
    guard = SpamGuard(2, 1.0, clock=clock)
    assert (guard.allowed, guard.blocked) == (0, 0)
    results = [guard.allow(7) for _ in range(5)]
    assert results.count(True) == guard.allowed == 2
    assert results.count(False) == guard.blocked == 3


def test_memory_bounded_by_max_members() -> None:
    clock = FakeClock()
    guard = SpamGuard(5, 1.0, max_members=1000, clock=clock)
    for member in range(10_000):
        guard.allow(member)  # all at the same instant: nobody has refilled
        assert len(guard) <= 1000
    assert len(guard) == 1000
    assert 9_999 in guard
    assert 0 not in guard


def test_refilled_buckets_are_pruned_without_hitting_the_cap() -> None:
    clock = FakeClock()
    guard = SpamGuard(5, 1.0, max_members=100_000, clock=clock)
    for member in range(500):
        guard.allow(member)
    assert len(guard) == 500
    clock.advance(1.0)  # 4 + 1 = 5 tokens: all full again
    guard.allow(10_000)
    assert len(guard) == 1
    assert 10_000 in guard


def test_drained_buckets_are_kept_until_refilled() -> None:
    clock = FakeClock()
    guard = SpamGuard(3, 1.0, clock=clock)
    for _ in range(3):
        guard.allow(1)
    clock.advance(2.0)  # member 1 has 2 of 3 tokens: still carries information
    guard.allow(2)
    assert 1 in guard
    clock.advance(1.0)
    guard.allow(2)
    assert 1 not in guard


def test_pruned_member_is_treated_as_full() -> None:
    clock = FakeClock()
    guard = SpamGuard(3, 0.001, max_members=1, clock=clock)
    assert [guard.allow(1) for _ in range(4)] == [True, True, True, False]
    guard.allow(2)  # evicts member 1 although it is drained (lenient side)
    assert 1 not in guard
    assert [guard.allow(1) for _ in range(4)] == [True, True, True, False]


def test_guard_clock_going_backwards() -> None:
    clock = FakeClock(100.0)
    guard = SpamGuard(2, 1.0, clock=clock)
    assert guard.allow(1)
    assert guard.allow(1)
    clock.now = 10.0
    assert not guard.allow(1)
    assert guard.allow(2)  # new member still gets a full bucket
    clock.now = 100.0
    assert not guard.allow(1)
    clock.now = 101.0
    assert guard.allow(1)


def test_reconfigure_caps_existing_tokens_and_applies_to_new_members() -> None:
    clock = FakeClock()
    guard = SpamGuard(10, 1.0, clock=clock)
    guard.allow(1)  # member 1 has 9 tokens
    guard.reconfigure(3, 0.5)
    assert (guard.capacity, guard.refill_rate) == (3, 0.5)
    assert [guard.allow(1) for _ in range(4)] == [True, True, True, False]
    assert [guard.allow(2) for _ in range(4)] == [True, True, True, False]
    clock.advance(1.0)
    assert not guard.allow(1)  # new rate: only 0.5 token per second
    clock.advance(1.0)
    assert guard.allow(1)


def test_reconfigure_to_larger_capacity_keeps_tokens() -> None:
    clock = FakeClock()
    guard = SpamGuard(2, 1.0, clock=clock)
    guard.allow(1)
    guard.allow(1)
    guard.reconfigure(5, 1.0)
    assert not guard.allow(1)  # raising the limit does not hand out tokens instantly
    clock.advance(3.0)
    assert [guard.allow(1) for _ in range(4)] == [True, True, True, False]


def test_guard_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        SpamGuard(0, 1.0)
    with pytest.raises(ValueError):
        SpamGuard(1, 1.0, max_members=0)
    guard = SpamGuard(1, 1.0)
    with pytest.raises(ValueError):
        guard.reconfigure(1, 0.0)
    assert guard.capacity == 1


def test_default_clock_is_used() -> None:
    guard = SpamGuard(1, 0.001)
    assert guard.allow(1)
    assert not guard.allow(1)


# --- NullGuard -------------------------------------------------------------------


def test_null_guard_allows_everything() -> None:
    guard = NullGuard()
    assert all(guard.allow(1) for _ in range(1000))
    assert guard.allow(2, now=0.0)
    assert guard.allowed == 1001
    assert guard.blocked == 0
    assert len(guard) == 0


def test_guards_satisfy_protocol() -> None:
    guards: list[MessageGuard] = [SpamGuard(1, 1.0), NullGuard()]
    for guard in guards:
        assert guard.allow(1, now=0.0)
        assert guard.allowed == 1


def test_full_buckets_are_forgotten_so_quiet_members_need_no_entry() -> None:
    clock = [0.0]
    guard = SpamGuard(5, 1.0, clock=lambda: clock[0])
    for member in range(1_000):
        assert guard.allow(member)
    guard.allow(7)  # 7 sent two: its bucket is two tokens short
    assert len(guard) == 1_000  # no message since: nothing pruned them yet
    clock[0] = 1.5
    assert guard.forget_full() == 999 and len(guard) == 1 and 7 in guard
    clock[0] = 2.0
    assert guard.forget_full() == 1 and len(guard) == 0
    assert NullGuard().forget_full() == 0


@pytest.mark.parametrize("message_between", [False, True])
def test_a_burst_s_table_is_given_back_however_its_buckets_went(message_between: bool) -> None:
    """Buckets go two ways: a message prunes the refilled ones at the front, the flush loop forgets
    the rest. A message between the burst and the flush used to prune them all, so the flush found
    nothing to forget and the 3.7 MB table stayed (bench/memory.py)."""
    clock = [0.0]
    guard = SpamGuard(5, 1.0, clock=lambda: clock[0])
    small = sys.getsizeof(guard._buckets)
    for member in range(50_000):
        guard.allow(member)
    guard.allow(7)  # two short of full: stays
    clock[0] = 1.5
    if message_between:
        guard.allow(60_000)
    guard.forget_full()
    assert set(guard._buckets) == ({7, 60_000} if message_between else {7})
    assert sys.getsizeof(guard._buckets) < 10 * small


def test_a_table_is_copied_only_after_half_of_it_went() -> None:
    """The copy is what keeps memory bounded, and its cost must stay below the removals before it:
    a steady stream of members coming and going never copies the table once per message."""
    clock = [0.0]
    guard = SpamGuard(1, 1.0, clock=lambda: clock[0])
    tables = set()
    for step in range(20_000):
        clock[0] = step * 0.0005  # each bucket refills 1 s after its message: about 2,000 held at a time
        guard.allow(step)
        tables.add(id(guard._buckets))
    assert 1_900 <= len(guard) <= 2_001
    assert len(tables) == 1  # members come and go, but never half of the most held at once
    clock[0] += 0.6  # the oldest 1,200 refill: the next message prunes them and the table is copied
    guard.allow(-1)
    assert len(guard) < 1_000 and id(guard._buckets) not in tables
