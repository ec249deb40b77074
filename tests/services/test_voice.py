"""VoiceTracker: the pure voice-time state machine, driven with injected times only."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from leaderboard_bot.domain import SessionClose, SessionOpen
from leaderboard_bot.services.voice import (
    ClockJump,
    VoiceClock,
    VoiceDrain,
    VoicePresence,
    VoiceRules,
    VoiceTracker,
)
from tests.factories import MIDNIGHT, FakeClock, day, here, seconds_by_user, voice_tracker

A, B, AFK = 10, 20, None  # channel ids; AFK is "not in a tracked channel"

BOTH_FLAGS = pytest.mark.parametrize(
    ("count_alone", "count_deafened"), [(True, True), (True, False), (False, True), (False, False)]
)


def tracker(*, count_alone: bool = True, count_deafened: bool = False) -> VoiceTracker:
    return voice_tracker(count_deafened=count_deafened, count_alone=count_alone)


def join_with_friend(t: VoiceTracker, user: int, channel: int, now: float, friend: int = 999) -> None:
    """Put ``user`` in ``channel`` with a (human) friend so count_alone never matters."""
    t.update(friend, here(channel), now)
    t.update(user, here(channel), now)


# --------------------------------------------------------------------------- join / leave


def test_join_then_leave_credits_exactly_the_time_in_between() -> None:
    t = tracker(count_alone=True)
    t.update(1, here(A), 100.0)
    assert t.is_counting(1)
    t.update(1, None, 160.0)
    assert not t.is_counting(1)
    assert t.presence(1) is None

    drain = t.checkpoint(500.0)
    assert seconds_by_user(drain) == {1: 60.0}
    assert len(list(drain.opened.values())) == 1
    key = next(iter(drain.opened.values())).key
    assert list(drain.opened.values()) == [SessionOpen(key, 1, A, 100.0)]
    assert list(drain.closed.values()) == [SessionClose(key, 160.0)]
    # Nothing left behind: the member is gone, so later checkpoints are empty.
    assert t.checkpoint(900.0) == VoiceDrain()


@BOTH_FLAGS
def test_join_leave_with_company_credits_exact_seconds(count_alone: bool, count_deafened: bool) -> None:
    t = tracker(count_alone=count_alone, count_deafened=count_deafened)
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    t.update(1, None, 90.0)
    t.update(2, None, 120.0)
    credited = seconds_by_user(t.checkpoint(1_000.0))
    if count_alone:
        assert credited == {1: 90.0, 2: 120.0}
    else:
        # 2 was alone for the last 30 seconds.
        assert credited == {1: 90.0, 2: 90.0}


def test_live_session_is_credited_by_checkpoint_up_to_now() -> None:
    t = tracker()
    t.update(1, here(A), 100.0)
    drain = t.checkpoint(130.0)
    assert seconds_by_user(drain) == {1: 30.0}
    assert [o.user_id for o in list(drain.opened.values())] == [1]
    assert list(drain.closed.values()) == []
    assert t.is_counting(1)


def test_checkpoint_twice_never_credits_the_same_time_twice() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    first = t.checkpoint(40.0)
    second = t.checkpoint(40.0)
    third = t.checkpoint(100.0)
    assert seconds_by_user(first) == {1: 40.0}
    assert seconds_by_user(second) == {}
    assert list(second.opened.values()) == [] and list(second.closed.values()) == []
    assert seconds_by_user(third) == {1: 60.0}
    t.update(1, None, 100.0)
    last = t.checkpoint(200.0)
    assert seconds_by_user(last) == {}  # already credited up to 100
    assert len(list(last.closed.values())) == 1 and next(iter(last.closed.values())).ended_at == 100.0


def test_checkpoint_with_a_clock_behind_the_credited_time_credits_nothing() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.checkpoint(100.0)
    assert seconds_by_user(t.checkpoint(50.0)) == {}
    assert t.unflushed_seconds(1, 50.0) == 0.0


def test_leave_reported_before_the_last_checkpoint_closes_at_the_credited_time() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.checkpoint(100.0)
    t.update(1, None, 90.0)  # late, out-of-order event
    drain = t.checkpoint(200.0)
    assert seconds_by_user(drain) == {}
    assert next(iter(drain.closed.values())).ended_at == 100.0


# --------------------------------------------------------------------------- moves


@pytest.mark.parametrize("count_deafened", [True, False])
def test_move_between_channels_closes_one_session_and_opens_another(count_deafened: bool) -> None:
    t = tracker(count_alone=True, count_deafened=count_deafened)
    t.update(1, here(A), 0.0)
    t.update(1, here(B), 40.0)
    t.update(1, None, 100.0)
    drain = t.checkpoint(100.0)

    assert [(o.user_id, o.channel_id, o.started_at) for o in list(drain.opened.values())] == [(1, A, 0.0), (1, B, 40.0)]
    key_a, key_b = (o.key for o in list(drain.opened.values()))
    assert key_a != key_b
    assert list(drain.closed.values()) == [SessionClose(key_a, 40.0), SessionClose(key_b, 100.0)]
    assert seconds_by_user(drain) == {1: 100.0}
    assert sum(drain.seconds.values()) == 100.0  # == wall time, nothing doubled


def test_move_with_a_checkpoint_in_between_sums_to_wall_time() -> None:
    t = tracker(count_alone=True)
    t.update(1, here(A), 0.0)
    d1 = t.checkpoint(25.0)
    t.update(1, here(B), 40.0)
    d2 = t.checkpoint(70.0)
    t.update(1, None, 130.0)
    d3 = t.checkpoint(500.0)
    total = sum(sum(d.seconds.values()) for d in (d1, d2, d3))
    assert total == 130.0
    assert len(list(d1.opened.values())) + len(list(d2.opened.values())) + len(list(d3.opened.values())) == 2
    assert len(list(d1.closed.values())) + len(list(d2.closed.values())) + len(list(d3.closed.values())) == 2


def test_move_with_count_alone_off_stops_both_and_restarts_when_reunited() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    assert t.counting_users() == {1, 2}
    t.update(1, here(B), 30.0)  # both are now alone
    assert t.counting_users() == set()
    t.update(2, here(B), 50.0)  # together again in B
    assert t.counting_users() == {1, 2}
    t.update(1, None, 80.0)
    t.update(2, None, 80.0)
    assert seconds_by_user(t.checkpoint(80.0)) == {1: 60.0, 2: 60.0}


# --------------------------------------------------------------------------- AFK


@BOTH_FLAGS
def test_moving_into_afk_stops_and_back_out_resumes(count_alone: bool, count_deafened: bool) -> None:
    t = tracker(count_alone=count_alone, count_deafened=count_deafened)
    t.update(999, here(A), 0.0)  # a friend keeps the channel from being "alone"
    t.update(1, here(A), 0.0)
    t.update(1, AFK, 50.0)
    assert not t.is_counting(1)
    assert t.presence(1) is None
    t.update(1, here(A), 80.0)
    assert t.is_counting(1)
    t.update(1, None, 100.0)
    drain = t.checkpoint(100.0)
    assert seconds_by_user(drain)[1] == 70.0
    assert len([o for o in list(drain.opened.values()) if o.user_id == 1]) == 2


def test_afk_leaves_the_other_member_alone_when_alone_time_does_not_count() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    t.update(1, AFK, 30.0)
    assert t.counting_users() == set()
    t.update(1, here(A), 45.0)
    assert t.counting_users() == {1, 2}
    assert seconds_by_user(t.checkpoint(60.0)) == {1: 45.0, 2: 45.0}


# --------------------------------------------------------------------------- deafen / mute


@pytest.mark.parametrize("count_alone", [True, False])
def test_self_deafen_stops_when_deafened_time_does_not_count(count_alone: bool) -> None:
    t = tracker(count_alone=count_alone, count_deafened=False)
    join_with_friend(t, 1, A, 0.0)
    t.update(1, here(A, deafened=True), 30.0)
    assert not t.is_counting(1)
    assert t.presence(1) == here(A, deafened=True)
    t.update(1, here(A), 50.0)  # undeafen resumes
    assert t.is_counting(1)
    t.update(1, None, 100.0)
    drain = t.checkpoint(100.0)
    assert seconds_by_user(drain)[1] == 80.0
    mine = [o for o in list(drain.opened.values()) if o.user_id == 1]
    assert [o.started_at for o in mine] == [0.0, 50.0]


@pytest.mark.parametrize("count_alone", [True, False])
def test_self_deafen_keeps_counting_when_deafened_time_counts(count_alone: bool) -> None:
    t = tracker(count_alone=count_alone, count_deafened=True)
    join_with_friend(t, 1, A, 0.0)
    first = t.checkpoint(0.0)
    t.update(1, here(A, deafened=True), 30.0)
    assert t.is_counting(1)
    t.update(1, here(A), 50.0)
    t.update(1, None, 100.0)
    drain = t.checkpoint(100.0)
    assert seconds_by_user(drain)[1] == 100.0
    # One session from start to end: no restart on deafen or undeafen.
    key = next(o.key for o in list(first.opened.values()) if o.user_id == 1)
    assert [o for o in list(drain.opened.values()) if o.user_id == 1] == []
    assert [c for c in list(drain.closed.values()) if c.key == key] == [SessionClose(key, 100.0)]
    # The friend's session ends too only if being alone does not count.
    assert len(list(drain.closed.values())) == (1 if count_alone else 2)


@BOTH_FLAGS
def test_mute_changes_do_not_restart_the_session(count_alone: bool, count_deafened: bool) -> None:
    t = tracker(count_alone=count_alone, count_deafened=count_deafened)
    join_with_friend(t, 1, A, 0.0)
    first = t.checkpoint(0.0)
    key = next(o.key for o in list(first.opened.values()) if o.user_id == 1)
    # Mute / unmute / stream etc. arrive as updates with the same tracked presence.
    for ts in (10.0, 20.0, 30.0):
        t.update(1, here(A), ts)
        assert t.is_counting(1)
    drain = t.checkpoint(60.0)
    assert list(drain.opened.values()) == []
    assert list(drain.closed.values()) == []
    assert seconds_by_user(drain)[1] == 60.0
    t.update(1, None, 70.0)
    assert [c for c in list(t.checkpoint(70.0).closed.values()) if c.key == key] == [SessionClose(key, 70.0)]


def test_mute_while_alone_and_not_counting_starts_nothing() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.update(1, here(A), 10.0)
    assert t.checkpoint(50.0) == VoiceDrain()


# --------------------------------------------------------------------------- alone


def test_lone_member_counts_when_alone_time_counts() -> None:
    t = tracker(count_alone=True)
    t.update(1, here(A), 0.0)
    assert t.is_counting(1)
    assert seconds_by_user(t.checkpoint(30.0)) == {1: 30.0}


def test_alone_member_does_not_count_until_company_arrives_and_stops_when_it_leaves() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    assert not t.is_counting(1)
    assert t.checkpoint(10.0) == VoiceDrain()

    t.update(2, here(A), 10.0)  # second member starts both
    assert t.counting_users() == {1, 2}
    t.update(2, None, 40.0)  # one leaving stops the other
    assert t.counting_users() == set()
    assert t.presence(1) == here(A)
    t.update(1, None, 100.0)

    drain = t.checkpoint(100.0)
    assert seconds_by_user(drain) == {1: 30.0, 2: 30.0}
    assert sorted(c.ended_at for c in list(drain.closed.values())) == [40.0, 40.0]


def test_company_in_another_channel_does_not_count() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.update(2, here(B), 0.0)
    assert t.counting_users() == set()


def test_third_member_leaving_keeps_the_remaining_pair_counting() -> None:
    t = tracker(count_alone=False)
    for user in (1, 2, 3):
        t.update(user, here(A), 0.0)
    first = t.checkpoint(0.0)
    t.update(3, None, 20.0)
    assert t.counting_users() == {1, 2}
    drain = t.checkpoint(50.0)
    assert list(drain.opened.values()) == []  # 1 and 2 kept their sessions
    assert [c.ended_at for c in list(drain.closed.values())] == [20.0]
    assert len(list(first.opened.values())) == 3
    assert seconds_by_user(drain) == {1: 50.0, 2: 50.0, 3: 20.0}


# --------------------------------------------------------------------------- bots


@BOTH_FLAGS
def test_bots_never_count(count_alone: bool, count_deafened: bool) -> None:
    t = tracker(count_alone=count_alone, count_deafened=count_deafened)
    t.update(50, here(A, is_bot=True), 0.0)
    t.update(51, here(A, is_bot=True), 0.0)
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    assert 50 not in t.counting_users() and 51 not in t.counting_users()
    assert t.present_users() == {1, 2, 50, 51}
    drain = t.checkpoint(100.0)
    assert set(seconds_by_user(drain)) == {1, 2}
    assert {o.user_id for o in list(drain.opened.values())} == {1, 2}


def test_bots_are_not_company() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.update(50, here(A, is_bot=True), 5.0)
    t.update(51, here(A, is_bot=True), 6.0)
    assert t.counting_users() == set()
    t.update(2, here(A), 10.0)
    assert t.counting_users() == {1, 2}
    t.update(2, None, 30.0)  # only bots left with 1
    assert t.counting_users() == set()
    assert seconds_by_user(t.checkpoint(100.0)) == {1: 20.0, 2: 20.0}


# --------------------------------------------------------------------------- unflushed / restore


def test_unflushed_seconds_includes_the_live_session() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    assert t.unflushed_seconds(1, 25.0) == 25.0
    assert t.unflushed_seconds(2, 25.0) == 0.0
    t.checkpoint(25.0)
    assert t.unflushed_seconds(1, 30.0) == 5.0


def test_unflushed_seconds_includes_closed_but_unflushed_intervals() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.update(1, None, 40.0)
    assert t.unflushed_seconds(1, 100.0) == 40.0
    t.checkpoint(100.0)
    assert t.unflushed_seconds(1, 100.0) == 0.0


def test_unflushed_seconds_includes_drained_but_restored_intervals() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    drained = t.checkpoint(30.0)
    assert t.unflushed_seconds(1, 30.0) == 0.0
    t.restore(drained)  # the write failed
    assert t.unflushed_seconds(1, 30.0) == 30.0
    assert t.unflushed_seconds(1, 45.0) == 45.0
    assert t.unflushed_seconds(2, 45.0) == 45.0


def test_restore_after_a_failed_write_puts_things_back_in_order() -> None:
    t = tracker(count_alone=True)
    t.update(1, here(A), 0.0)
    failed = t.checkpoint(30.0)  # write of this drain fails...
    # ...and meanwhile more happens.
    t.update(1, None, 50.0)
    t.update(2, here(B), 60.0)
    t.restore(failed)

    retry = t.checkpoint(70.0)
    key1 = next(iter(failed.opened.values())).key
    assert [o.user_id for o in list(retry.opened.values())] == [1, 2]
    assert next(iter(retry.opened.values())) == next(iter(failed.opened.values()))
    assert list(retry.closed.values()) == [SessionClose(key1, 50.0)]
    assert seconds_by_user(retry) == {1: 50.0, 2: 10.0}  # restored and new, merged
    # An opened session is always before its close in the list (the repository applies in order).
    assert t.checkpoint(70.0) == VoiceDrain()


def test_restore_of_several_failed_drains_keeps_each_interval_once() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    for now in (10.0, 20.0, 30.0):
        t.restore(t.checkpoint(now))  # three writes fail in a row
        assert t.unflushed_seconds(1, now) == now
    final = t.checkpoint(40.0)
    assert seconds_by_user(final) == {1: 40.0}
    assert len(list(final.opened.values())) == 1
    assert t.unflushed_seconds(1, 40.0) == 0.0


# --------------------------------------------------------------------------- reconcile


def test_reconcile_closes_gone_members_at_gone_at_and_starts_unknown_ones_at_now() -> None:
    t = tracker(count_alone=True)
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    t.update(3, here(B), 0.0)
    before = t.checkpoint(100.0)
    key1 = next(o.key for o in list(before.opened.values()) if o.user_id == 1)

    t.reconcile({1: here(A), 4: here(B)}, now=500.0, gone_at=300.0)

    assert t.present_users() == {1, 4}
    assert t.counting_users() == {1, 4}
    drain = t.checkpoint(500.0)
    assert {(c.ended_at) for c in list(drain.closed.values())} == {300.0}
    assert len(list(drain.closed.values())) == 2 and key1 not in {c.key for c in list(drain.closed.values())}
    assert [(o.user_id, o.channel_id, o.started_at) for o in list(drain.opened.values())] == [(4, B, 500.0)]
    assert seconds_by_user(drain) == {1: 400.0, 2: 200.0, 3: 200.0}


def test_reconcile_keeps_unchanged_members_sessions() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    t.checkpoint(0.0)
    t.reconcile({1: here(A), 2: here(A)}, now=100.0, gone_at=50.0)
    drain = t.checkpoint(100.0)
    assert list(drain.opened.values()) == [] and list(drain.closed.values()) == []
    assert seconds_by_user(drain) == {1: 100.0, 2: 100.0}


def test_reconcile_without_gone_at_closes_at_now() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.reconcile({}, now=80.0)
    drain = t.checkpoint(200.0)
    assert next(iter(drain.closed.values())).ended_at == 80.0
    assert seconds_by_user(drain) == {1: 80.0}


def test_reconcile_never_closes_after_now() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.reconcile({}, now=80.0, gone_at=500.0)
    drain = t.checkpoint(80.0)
    assert next(iter(drain.closed.values())).ended_at == 80.0
    assert seconds_by_user(drain) == {1: 80.0}


def test_reconcile_stops_a_member_left_alone_at_gone_at() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    t.reconcile({1: here(A)}, now=100.0, gone_at=60.0)
    assert t.counting_users() == set()
    assert t.presence(1) == here(A)
    assert seconds_by_user(t.checkpoint(100.0)) == {1: 60.0, 2: 60.0}


def test_reconcile_applies_changed_state_at_now() -> None:
    t = tracker(count_alone=True, count_deafened=False)
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    t.reconcile({1: here(A, deafened=True), 2: here(B)}, now=100.0, gone_at=40.0)
    assert t.counting_users() == {2}
    drain = t.checkpoint(150.0)
    assert seconds_by_user(drain) == {1: 100.0, 2: 150.0}
    assert [(o.user_id, o.channel_id, o.started_at) for o in list(drain.opened.values())] == [
        (1, A, 0.0),
        (2, A, 0.0),
        (2, B, 100.0),
    ]


def test_reconcile_with_company_arriving_starts_both_at_now() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.reconcile({1: here(A), 2: here(A)}, now=100.0, gone_at=50.0)
    assert t.counting_users() == {1, 2}
    drain = t.checkpoint(130.0)
    assert sorted(o.started_at for o in list(drain.opened.values())) == [100.0, 100.0]
    assert seconds_by_user(drain) == {1: 30.0, 2: 30.0}


# --------------------------------------------------------------------------- stop_all


def test_stop_all_closes_every_session_at_the_given_time() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    t.update(3, here(B), 0.0)  # alone, not counting
    t.checkpoint(20.0)
    t.stop_all(75.0)
    assert t.counting_users() == set()
    assert t.present_users() == set()
    drain = t.checkpoint(1_000.0)
    assert sorted(c.ended_at for c in list(drain.closed.values())) == [75.0, 75.0]
    assert seconds_by_user(drain) == {1: 55.0, 2: 55.0}
    assert t.checkpoint(2_000.0) == VoiceDrain()


# --------------------------------------------------------------------------- lost contact


def test_suspend_stops_every_session_at_the_moment_contact_is_lost() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 10.0)
    t.suspend(30.0)
    assert t.suspended and t.counting_users() == set()
    assert seconds_by_user(t.checkpoint(500.0)) == {1: 30.0, 2: 20.0}  # nothing after 30 s


def test_nothing_counts_while_suspended_even_new_joins() -> None:
    t = tracker()
    t.suspend(0.0)
    t.update(1, here(A), 5.0)  # e.g. replayed before the RESUMED event
    assert t.counting_users() == set()
    assert seconds_by_user(t.checkpoint(100.0)) == {}


def test_reconcile_resumes_counting_from_then_for_those_still_there() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    t.suspend(10.0)
    t.checkpoint(200.0)  # flushes keep running while disconnected
    t.reconcile({2: here(A)}, now=300.0)  # 1 left during the gap
    assert not t.suspended and t.counting_users() == {2}
    drained = t.checkpoint(360.0)
    assert seconds_by_user(drained) == {2: 60.0}  # the gap is never credited to anyone


def test_suspend_twice_keeps_the_first_moment() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.suspend(10.0)
    t.suspend(50.0)
    assert seconds_by_user(t.checkpoint(100.0)) == {1: 10.0}


def test_rules_are_read_live_and_a_change_applies_from_rules_changed() -> None:
    rules = VoiceRules(count_deafened=False, count_alone=True)
    t = VoiceTracker(lambda: rules)
    t.update(1, here(A, deafened=True), MIDNIGHT)
    assert not t.is_counting(1)
    rules = VoiceRules(count_deafened=True, count_alone=True)
    t.rules_changed(MIDNIGHT + 10)
    assert t.is_counting(1)
    t.update(1, None, MIDNIGHT + 25)
    assert seconds_by_user(t.checkpoint(MIDNIGHT + 30)) == {1: 15.0}


def test_a_rules_change_to_stricter_rules_stops_counting_at_that_moment() -> None:
    rules = VoiceRules(count_deafened=False, count_alone=True)
    t = VoiceTracker(lambda: rules)
    t.update(1, here(A), MIDNIGHT)
    rules = VoiceRules(count_deafened=False, count_alone=False)  # alone no longer counts
    t.rules_changed(MIDNIGHT + 40)
    assert not t.is_counting(1)
    assert seconds_by_user(t.checkpoint(MIDNIGHT + 100)) == {1: 40.0}


# --------------------------------------------------------------------------- wall-clock jumps


def test_a_forward_clock_jump_is_not_credited_and_the_session_ends_by_the_new_clock() -> None:
    t = tracker()
    t.update(1, here(A), 100.0)
    t.clock_jumped(105.0, 105.0 + 3 * 3600)  # 5 s in, the clock steps 3 h forward
    assert t.unflushed_seconds(1, 3 * 3600 + 108.0) == 8.0
    assert t.session_seconds(1, 3 * 3600 + 108.0) == 8.0
    t.update(1, None, 3 * 3600 + 110.0)
    drain = t.checkpoint(3 * 3600 + 110.0)
    assert seconds_by_user(drain) == {1: 10.0}
    [closed] = drain.closed.values()
    assert closed.ended_at == 3 * 3600 + 110.0


def test_a_forward_clock_jump_and_back_leaves_the_session_ending_now() -> None:
    # The tester's case: +3 h, then back; the row must not end in the future.
    t = tracker()
    t.update(1, here(A), 100.0)
    t.clock_jumped(102.0, 102.0 + 3 * 3600)
    assert seconds_by_user(t.checkpoint(105.0 + 3 * 3600)) == {1: 5.0}  # 2 s before the step, 3 after
    t.clock_jumped(105.0 + 3 * 3600, 105.0)
    t.update(1, None, 108.0)
    drain = t.checkpoint(108.0)
    assert seconds_by_user(drain) == {1: 3.0}  # 8 s in all, as spent
    [closed] = drain.closed.values()
    assert closed.ended_at == 108.0


def test_a_backward_clock_jump_still_credits_the_real_time() -> None:
    t = tracker()
    t.update(1, here(A), 5_000.0)
    assert seconds_by_user(t.checkpoint(5_010.0)) == {1: 10.0}
    t.clock_jumped(5_020.0, 1_020.0)  # the clock was 4,000 s ahead and is set right
    assert t.unflushed_seconds(1, 1_050.0) == 40.0
    t.update(1, None, 1_050.0)
    drain = t.checkpoint(1_050.0)
    assert seconds_by_user(drain) == {1: 40.0}  # 10 before the step, 30 after it
    [closed] = drain.closed.values()
    assert closed.ended_at == 5_000.0  # never before the row's start


def test_a_clock_jump_across_midnight_puts_each_second_on_the_day_the_clock_showed() -> None:
    t = tracker()
    t.update(1, here(A), MIDNIGHT - 30.0)
    t.clock_jumped(MIDNIGHT - 10.0, MIDNIGHT + 3_590.0)  # forward over midnight
    t.clock_jumped(MIDNIGHT + 3_600.0, MIDNIGHT - 7_200.0)  # and back over it
    t.update(1, None, MIDNIGHT - 7_195.0)
    assert t.checkpoint(MIDNIGHT - 7_195.0).seconds == {(day(MIDNIGHT - 1), 1): 25.0, (day(MIDNIGHT), 1): 10.0}


def test_a_clock_jump_while_disconnected_keeps_the_gap_a_resume_credits() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.hold(10.0)
    t.clock_jumped(20.0, 3_620.0)
    assert t.held_since == 3_610.0
    t.release()
    t.update(1, None, 3_630.0)
    assert seconds_by_user(t.checkpoint(3_630.0)) == {1: 30.0}  # 0 -> 30 of real time


def test_the_voice_clock_reports_each_step_of_the_wall_clock_once() -> None:
    wall, mono = FakeClock(1_000.0), FakeClock(7.0)
    clock = VoiceClock(wall, mono)
    assert clock.read() == (1_000.0, None)
    wall.advance(30.0)
    mono.advance(30.0)
    assert clock.read() == (1_030.0, None)  # time passing is no step
    wall.advance(0.5)  # within the tolerance (a reading's jitter)
    assert clock.read() == (1_030.5, None)
    wall.advance(3_602.0)
    mono.advance(2.0)
    assert clock.read() == (4_632.5, ClockJump(before=1_032.5, after=4_632.5))  # 2 s real, 3,600 s stepped
    assert clock.read() == (4_632.5, None)  # reported once
    wall.advance(-3_600.0)
    jump = clock.read()[1]
    assert jump is not None and jump.size == -3_600.0


def test_the_voice_clock_without_a_monotonic_one_trusts_the_wall_clock() -> None:
    wall = FakeClock(1_000.0)
    clock = VoiceClock(wall)
    wall.advance(86_400.0)
    assert clock.read() == (87_400.0, None)


# --------------------------------------------------------------------------- reconnects


def test_a_resumed_connection_credits_the_gap() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.hold(10.0)  # the connection drops
    assert seconds_by_user(t.checkpoint(20.0)) == {1: 10.0}  # a flush meanwhile credits up to the drop
    t.release()  # RESUME: Discord replays the gap
    t.update(1, None, 30.0)  # the replayed leave
    assert seconds_by_user(t.checkpoint(40.0)) == {1: 20.0}  # 10 -> 30: the whole stay, once


def test_a_new_session_after_a_drop_credits_nothing_past_the_drop() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.update(2, here(A), 0.0)
    t.hold(10.0)
    t.hold(15.0)  # a second drop while down keeps the first moment
    assert seconds_by_user(t.checkpoint(20.0)) == {1: 10.0, 2: 10.0}
    t.reconcile({1: here(A)}, 50.0)  # a new session: 1 is still there, 2 left at some point
    drain = t.checkpoint(60.0)
    assert seconds_by_user(drain) == {1: 10.0}  # 50 -> 60 only; the gap is lost, 2 gets nothing more
    assert sorted(c.ended_at for c in drain.closed.values()) == [10.0, 10.0]
    assert t.held_since is None


def test_a_stop_while_disconnected_closes_at_the_drop() -> None:
    t = tracker()
    t.update(1, here(A), 0.0)
    t.hold(10.0)
    t.stop_all(100.0)
    assert seconds_by_user(t.checkpoint(100.0)) == {1: 10.0}


def test_pending_work_stays_one_entry_per_member_and_day_over_many_failed_flushes() -> None:
    """A long outage: every flush fails and gives its drain back. What waits is merged, so
    the next attempt's work does not grow with the number of attempts."""
    t = tracker()
    members = 500
    for user in range(members):
        t.update(user, here(A), 0.0)
    sizes = []
    for attempt in range(1, 31):  # 30 one-minute flushes, each failing
        drain = t.checkpoint(attempt * 60.0)
        sizes.append((len(drain.seconds), len(drain.opened), len(drain.closed)))
        t.restore(drain)
    assert set(sizes) == {(members, members, 0)}
    assert seconds_by_user(t.checkpoint(1_800.0)) == dict.fromkeys(range(members), 1_800.0)


def test_session_history_waiting_for_the_database_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from leaderboard_bot.services import voice

    monkeypatch.setattr(voice, "MAX_PENDING_SESSIONS", 10)
    t = tracker()
    for n in range(50):  # churn: 50 short visits, every flush failing
        t.update(1, here(A), n * 10.0)
        t.update(1, None, n * 10.0 + 5.0)
        t.restore(t.checkpoint(n * 10.0 + 6.0))
    drain = t.checkpoint(600.0)
    assert len(drain.opened) <= 10 and len(drain.closed) <= 10
    assert seconds_by_user(drain) == {1: 250.0}  # the time is all there


# --------------------------------------------------------------------------- scale: the channel index


class BruteForceTracker(VoiceTracker):
    """The tracker before the channel index, kept as the reference: every event re-decides every
    member of the channels it touches, found by scanning all presences, and company is found by
    scanning them again per member; reconcile replays one update per changed member."""

    def update(self, user_id: int, presence: VoicePresence | None, now: float) -> None:
        old = self._presence.get(user_id)
        if presence is None:
            self._presence.pop(user_id, None)
        else:
            self._presence[user_id] = presence
        channels = {p.channel_id for p in (old, presence) if p is not None}
        self._scan(channels, now, also={user_id})

    def reconcile(self, actual: dict[int, VoicePresence], now: float, gone_at: float | None = None) -> None:
        if self._held_since is not None:
            self.suspend(now)
        gone_at = now if gone_at is None else min(gone_at, now)
        for user_id in [u for u in self._presence if u not in actual]:
            self.update(user_id, None, gone_at)
        for user_id, presence in actual.items():
            if self._presence.get(user_id) != presence:
                self.update(user_id, presence, now)
        self._suspended = False
        self._scan({p.channel_id for p in self._presence.values()}, now)

    def rules_changed(self, now: float) -> None:
        self._scan({p.channel_id for p in self._presence.values()}, now)

    def scan_counts(self, user_id: int, presence: VoicePresence, rules: VoiceRules) -> bool:
        if presence.is_bot or (presence.deafened and not rules.count_deafened):
            return False
        return rules.count_alone or any(
            other != user_id and p.channel_id == presence.channel_id and not p.is_bot
            for other, p in self._presence.items()
        )

    def _scan(self, channels: set[int], now: float, also: set[int] | None = None) -> None:
        users = {u for u, p in self._presence.items() if p.channel_id in channels} | (also or set())
        rules = self.rules()
        for user_id in sorted(users):
            presence = self._presence.get(user_id)
            should = presence is not None and not self._suspended and self.scan_counts(user_id, presence, rules)
            session = self._open.get(user_id)
            if session is not None and (not should or presence is None or session.channel_id != presence.channel_id):
                self._close(user_id, now)
                session = None
            if should and session is None and presence is not None:
                self._start(user_id, presence.channel_id, now)


class CountingPresence(dict[int, VoicePresence]):
    """The tracker's presence map, counting how many entries each operation touches."""

    touched = 0

    def get(self, key: int, default: Any = None) -> Any:
        self.touched += 1
        return super().get(key, default)

    def __getitem__(self, key: int) -> VoicePresence:
        self.touched += 1
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[int]:
        self.touched += len(self)
        return super().__iter__()

    def items(self) -> Any:
        self.touched += len(self)
        return super().items()

    def values(self) -> Any:
        self.touched += len(self)
        return super().values()


def counting(t: VoiceTracker) -> CountingPresence:
    presence = CountingPresence(t._presence)
    t._presence = presence
    return presence


def assert_index_matches_a_full_scan(t: VoiceTracker) -> None:
    members: dict[int, set[int]] = {}
    humans: dict[int, int] = {}
    for user_id, presence in dict.items(t._presence):
        members.setdefault(presence.channel_id, set()).add(user_id)
        humans[presence.channel_id] = humans.get(presence.channel_id, 0) + (not presence.is_bot)
    assert t._members == members
    assert t._humans == humans
    assert set(t._decided_with) <= set(members)


def brute_force_counting(t: VoiceTracker, rules: VoiceRules) -> set[int]:
    """Who counts by the rule itself, from a scan of every presence."""
    if t.suspended:
        return set()
    out = set()
    for user_id, p in dict.items(t._presence):
        if p.is_bot or (p.deafened and not rules.count_deafened):
            continue
        company = any(
            o != user_id and q.channel_id == p.channel_id and not q.is_bot for o, q in dict.items(t._presence)
        )
        if rules.count_alone or company:
            out.add(user_id)
    return out


def crowd(t: VoiceTracker, members: int, channels: int, now: float) -> None:
    """``members`` humans spread over ``channels`` channels (ids 1000..), every tenth a bot."""
    t.reconcile({u: here(1000 + u % channels, is_bot=u % 10 == 0) for u in range(members)}, now)


@pytest.mark.parametrize("count_alone", [True, False])
def test_an_event_in_a_small_channel_does_not_touch_the_members_of_others(count_alone: bool) -> None:
    t = tracker(count_alone=count_alone)
    crowd(t, 10_000, 100, 0.0)
    presence = counting(t)
    t.update(1, here(A), 10.0)  # a member of a big channel moves to an empty one
    t.update(2, here(A), 11.0)  # company arrives
    t.update(2, here(A, deafened=True), 12.0)
    t.update(1, None, 13.0)
    t.update(2, None, 14.0)
    # Each event reads its own member, plus the one other member when company comes or goes;
    # the scanning tracker read all 10,000 presences per event (and again per member).
    assert presence.touched <= 20
    assert_index_matches_a_full_scan(t)


def test_an_event_that_changes_company_touches_only_that_channel() -> None:
    t = tracker(count_alone=False)
    crowd(t, 10_000, 100, 0.0)
    t.update(20_000, here(A), 5.0)
    presence = counting(t)
    t.update(20_001, here(A), 10.0)  # both now count
    assert t.counting_users() >= {20_000, 20_001}
    t.update(20_001, None, 20.0)  # 20_000 is alone again
    assert not t.is_counting(20_000)
    assert presence.touched <= 10


def test_reconcile_is_one_pass_over_the_members_in_voice() -> None:
    for count_alone in (True, False):
        t = tracker(count_alone=count_alone)
        presence = counting(t)
        crowd(t, 10_000, 20, 0.0)  # start-up: everyone unknown
        assert presence.touched <= 3 * 10_000  # the scanning tracker: about 10,000² / 2
        presence.touched = 0
        # After an outage: a quarter left, a quarter moved, the rest unchanged.
        actual = {u: here(1000 + (u + (u % 4 == 1)) % 20, is_bot=u % 10 == 0) for u in range(10_000) if u % 4}
        t.reconcile(actual, 100.0, gone_at=50.0)
        assert presence.touched <= 5 * 10_000
        assert t.present_users() == set(actual)
        assert_index_matches_a_full_scan(t)


def test_index_drops_channels_once_empty() -> None:
    t = tracker(count_alone=False)
    t.update(1, here(A), 0.0)
    t.update(2, here(A, is_bot=True), 0.0)
    t.update(1, here(B), 5.0)
    t.update(2, None, 6.0)
    assert t._members == {B: {1}} and t._humans == {B: 1}
    t.stop_all(10.0)
    assert t._members == {} and t._humans == {} and t._decided_with == {}


def merged_intervals(drains: list[VoiceDrain]) -> dict[int, list[tuple[int, float, float]]]:
    """Every member's counted stays (channel, start, end) from session records: zero-length ones
    dropped, a session closed and reopened in the same channel at the same moment joined up."""
    opened: dict[str, SessionOpen] = {}
    closed: dict[str, float] = {}
    for drain in drains:
        opened.update(drain.opened)
        closed.update({key: c.ended_at for key, c in drain.closed.items()})
    stays: dict[int, list[tuple[int, float, float]]] = {}
    for key, o in opened.items():
        if closed[key] > o.started_at:
            stays.setdefault(o.user_id, []).append((o.channel_id, o.started_at, closed[key]))
    out: dict[int, list[tuple[int, float, float]]] = {}
    for user, parts in stays.items():
        merged: list[tuple[int, float, float]] = []
        for channel, start, end in sorted(parts, key=lambda p: p[1]):
            if merged and merged[-1][0] == channel and merged[-1][2] == start:
                merged[-1] = (channel, merged[-1][1], end)
            else:
                merged.append((channel, start, end))
        out[user] = merged
    return out


def run_random_sequence(seed: int, *, reconciles: bool) -> tuple[list[VoiceDrain], list[VoiceDrain]]:
    """Drive the indexed tracker and the brute-force reference with one random sequence of joins,
    moves, leaves, deafens, bots, rule changes (announced or only read live), reconciles, lost
    contact and failed flushes; check the index and the counting set after every step."""
    rng = random.Random(seed)
    rules = VoiceRules(count_deafened=rng.random() < 0.5, count_alone=rng.random() < 0.5)
    stale = False  # rules changed since everyone was last decided
    t, ref = VoiceTracker(lambda: rules), BruteForceTracker(lambda: rules)
    users, channels = range(1, 13), [A, B, 30, 40]
    bots = {u for u in users if rng.random() < 0.2}
    now = MIDNIGHT - 120  # crosses a UTC midnight
    drains: tuple[list[VoiceDrain], list[VoiceDrain]] = ([], [])
    for _ in range(300):
        now += rng.choice([0, 0, 1, 2, 5])
        op = rng.random()
        user = rng.choice(users)
        current = t.presence(user)
        if op < 0.45:
            presence = None if rng.random() < 0.2 else here(rng.choice(channels), deafened=rng.random() < 0.3)
            if presence is not None and user in bots:
                presence = here(presence.channel_id, deafened=presence.deafened, is_bot=True)
            for x in (t, ref):
                x.update(user, presence, now)
        elif op < 0.55 and current is not None:  # deafen toggle or a mute (same presence)
            flag = not current.deafened if rng.random() < 0.7 else current.deafened
            for x in (t, ref):
                x.update(user, here(current.channel_id, deafened=flag, is_bot=current.is_bot), now)
        elif op < 0.62:
            rules = VoiceRules(count_deafened=rng.random() < 0.5, count_alone=rng.random() < 0.5)
            stale = rng.random() < 0.4  # if so, read live at the next decisions only
            if not stale:
                for x in (t, ref):
                    x.rules_changed(now)
        elif op < 0.72 and reconciles:
            actual = {}
            for u in users:
                p = t.presence(u)
                if rng.random() < 0.3:
                    p = None if rng.random() < 0.4 else here(rng.choice(channels), deafened=rng.random() < 0.3)
                if p is not None:
                    is_bot = (u in bots) != (rng.random() < 0.05)  # sometimes learnt differently
                    actual[u] = here(p.channel_id, deafened=p.deafened, is_bot=is_bot)
            gone_at = now - rng.choice([0, 1, 3])
            for x in (t, ref):
                x.reconcile(dict(actual), now, gone_at)
            stale = False
        elif op < 0.76 and reconciles:
            drop = rng.random() < 0.5
            for x in (t, ref):
                x.hold(now) if drop else x.suspend(now)
        elif op < 0.78 and reconciles:
            for x in (t, ref):
                x.release()
        elif op < 0.9:
            failed = rng.random() < 0.3
            for x, out in zip((t, ref), drains, strict=True):
                drain = x.checkpoint(now)
                if failed:
                    x.restore(drain)
                else:
                    out.append(drain)
        assert_index_matches_a_full_scan(t)
        assert {u: t.presence(u) for u in users} == {u: ref.presence(u) for u in users}
        assert t.counting_users() == ref.counting_users()
        assert t.suspended == ref.suspended
        if not stale:
            assert t.counting_users() == brute_force_counting(t, rules)
    for x, out in zip((t, ref), drains, strict=True):
        x.stop_all(now)
        out.append(x.checkpoint(now))
    return drains


@pytest.mark.parametrize("seed", range(60))
def test_random_sequences_credit_exactly_what_the_scanning_tracker_credited(seed: int) -> None:
    mine, reference = run_random_sequence(seed, reconciles=True)
    totals = [VoiceDrain() for _ in range(2)]
    for total, drains in zip(totals, (mine, reference), strict=True):
        for drain in drains:
            total.absorb(drain)
    assert totals[0].seconds == totals[1].seconds  # integer times: the sums are exact
    # The same stays; the reference could also cut a stay in two, or open and close a session, at
    # one reconcile's moment when members changed one by one.
    assert merged_intervals(mine) == merged_intervals(reference)


@pytest.mark.parametrize("seed", range(30))
def test_random_events_open_and_close_the_same_sessions_in_the_same_order(seed: int) -> None:
    mine, reference = run_random_sequence(seed, reconciles=False)
    for a, b in zip(mine, reference, strict=True):
        assert list(a.seconds.items()) == list(b.seconds.items())
        assert [(o.user_id, o.channel_id, o.started_at) for o in a.opened.values()] == [
            (o.user_id, o.channel_id, o.started_at) for o in b.opened.values()
        ]
        assert [c.ended_at for c in a.closed.values()] == [c.ended_at for c in b.closed.values()]


def test_the_voice_status_line_names_the_first_reason_that_applies() -> None:
    from leaderboard_bot.services.voice import voice_status

    rules = VoiceRules(count_deafened=False, count_alone=False)
    facts = dict(
        counting=False,
        connection_lost=False,
        in_afk=False,
        excluded_channel=False,
        excluded_role=False,
        deafened=False,
        alone=False,
        rules=rules,
    )
    assert voice_status(**{**facts, "counting": True}) == "counting now"  # type: ignore[arg-type]
    cases = [
        ("connection_lost", "lost its connection"),
        ("in_afk", "AFK channel"),
        ("excluded_channel", "channel is excluded"),
        ("excluded_role", "role excluded"),
        ("deafened", "while deafened"),
        ("alone", "while alone"),
    ]
    for reason, words in cases:
        assert words in voice_status(**{**facts, reason: True})  # type: ignore[arg-type]
    # The first that applies wins (the connection before anything the member did).
    assert "lost its connection" in voice_status(**{**facts, "connection_lost": True, "deafened": True})  # type: ignore[arg-type]
    lenient = VoiceRules(count_deafened=True, count_alone=True)
    assert voice_status(**{**facts, "deafened": True, "alone": True, "rules": lenient}) == "not counting right now"  # type: ignore[arg-type]
