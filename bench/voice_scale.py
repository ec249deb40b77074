"""Voice at scale: reconcile and event cost with 10,000 members in voice, and exact credit in bursts.

    python bench/voice_scale.py [--members 10000] [--channels 1000] [--seed 1]

(a) Reconcile of ``--members`` members in voice (start-up: all unknown; resume: all known and
    unchanged; after an outage: a quarter gone, a quarter moved), and one voice event among them,
    with VOICE_COUNT_ALONE true and false. Baseline, measured in the same run: the scanning
    algorithm the tracker had before the channel index (``ScanningTracker`` below), plus the
    cost of merely building the same ``actual`` dict as a floor.
(b) ``--members`` members joining, moving, deafening and leaving in bursts through the
    ActivityService on an injected clock (a SQLite database in a temporary directory, a flush every
    two minutes, a dropped connection resumed mid-way with a flush in the gap, one failed write,
    a UTC midnight crossed), then every member's season total read back from the database and
    compared with the true time, computed independently: between bursts the state is fixed, and
    who counts is decided by a plain scan of everyone. Target: within 1 s per member.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import ActivityBatch
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.names import NameService
from leaderboard_bot.services.ratelimit import NullGuard
from leaderboard_bot.services.recovery import RecoveryFile
from leaderboard_bot.services.voice import VoicePresence, VoiceRules, VoiceTracker

START = 1_710_028_800.0 - 1_200.0  # 20 minutes before 2024-03-10 00:00 UTC: the run crosses midnight


class ScanningTracker(VoiceTracker):
    """The algorithm before the channel index (the baseline): an event re-decides the channels it
    touches, found by scanning every presence, company is another scan per member, and reconcile
    replays one event per changed member."""

    def update(self, user_id: int, presence: VoicePresence | None, now: float) -> None:
        old = self._presence.get(user_id)
        if presence is None:
            self._presence.pop(user_id, None)
        else:
            self._presence[user_id] = presence
        self._scan({p.channel_id for p in (old, presence) if p is not None}, now, {user_id})

    def reconcile(self, actual: dict[int, VoicePresence], now: float, gone_at: float | None = None) -> None:
        gone_at = now if gone_at is None else min(gone_at, now)
        for user_id in [u for u in self._presence if u not in actual]:
            self.update(user_id, None, gone_at)
        for user_id, presence in actual.items():
            if self._presence.get(user_id) != presence:
                self.update(user_id, presence, now)
        self._suspended = False
        self._scan({p.channel_id for p in self._presence.values()}, now, set())

    def _scan(self, channels: set[int], now: float, also: set[int]) -> None:
        users = {u for u, p in self._presence.items() if p.channel_id in channels} | also
        rules = self.rules()
        for user_id in sorted(users):
            presence = self._presence.get(user_id)
            should = presence is not None and not self._suspended and self._counts(user_id, presence, rules)
            session = self._open.get(user_id)
            if session is not None and (not should or presence is None or session.channel_id != presence.channel_id):
                self._close(user_id, now)
                session = None
            if should and session is None and presence is not None:
                self._start(user_id, presence.channel_id, now)

    def _counts(self, user_id: int, presence: VoicePresence, rules: VoiceRules) -> bool:
        if presence.is_bot or (presence.deafened and not rules.count_deafened):
            return False
        return rules.count_alone or any(
            other != user_id and p.channel_id == presence.channel_id and not p.is_bot
            for other, p in self._presence.items()
        )


def voice_states(members: int, channels: int, seed: int) -> dict[int, tuple[int, bool, bool]]:
    """Who is where: user -> (channel, deafened, bot); channel sizes uneven (a few big ones)."""
    rng = random.Random(seed)
    weights = [1 / (c + 1) for c in range(channels)]
    picks = rng.choices(range(channels), weights, k=members)
    return {u: (1_000 + picks[u], rng.random() < 0.1, rng.random() < 0.03) for u in range(members)}


def presences(states: dict[int, tuple[int, bool, bool]]) -> dict[int, VoicePresence]:
    return {u: VoicePresence(c, deafened=d, is_bot=b) for u, (c, d, b) in states.items()}


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def part_a(members: int, channels: int, seed: int) -> None:
    states = voice_states(members, channels, seed)
    rng = random.Random(seed + 1)
    outage = {
        u: VoicePresence(c if u % 4 != 1 else 1_000 + rng.randrange(channels), deafened=d, is_bot=b)
        for u, (c, d, b) in states.items()
        if u % 4 != 0
    }
    floor = timed(lambda: presences(states))
    print(f"(a) reconcile with {members:,} members in voice over {channels} channels")
    print(f"building the same `actual` dict alone: {floor * 1000:.1f} ms")
    print("| VOICE_COUNT_ALONE | reconcile | indexed (ms) | scanning baseline (ms) | baseline / indexed |")
    print("|---|---|---|---|---|")
    event_rows = []
    movers = rng.sample(sorted(outage), 100)
    for count_alone in (True, False):
        rules = VoiceRules(count_alone=count_alone)
        figures: dict[str, list[float]] = {}
        trackers: list[VoiceTracker] = [
            VoiceTracker(partial(lambda r: r, rules)),
            ScanningTracker(partial(lambda r: r, rules)),
        ]
        for tracker in trackers:
            cls = type(tracker)
            cold = timed(partial(tracker.reconcile, presences(states), 100.0))
            warm = timed(partial(tracker.reconcile, presences(states), 200.0))
            after = timed(partial(tracker.reconcile, dict(outage), 300.0, gone_at=250.0))
            # One voice event among them: 100 members each move to the next channel, twice.
            started = time.perf_counter()
            for i, user in enumerate(movers * 2):
                p = tracker.presence(user) or VoicePresence(1_000)
                tracker.update(user, VoicePresence(1_000 + (p.channel_id - 999) % channels), 400.0 + i)
            figures[cls.__name__] = [cold, warm, after, (time.perf_counter() - started) / (2 * len(movers))]
        new, old = figures["VoiceTracker"], figures["ScanningTracker"]
        for index, what in enumerate(("start-up (all unknown)", "resume (all unchanged)", "after an outage")):
            print(
                f"| {str(count_alone).lower()} | {what} | {new[index] * 1000:.1f} | {old[index] * 1000:.1f} "
                f"| {old[index] / new[index]:.0f}x |"
            )
        event_rows.append((count_alone, new[3], old[3]))
    print("| VOICE_COUNT_ALONE | one move among them | indexed (µs) | scanning baseline (µs) | baseline / indexed |")
    print("|---|---|---|---|---|")
    for count_alone, new_event, old_event in event_rows:
        print(
            f"| {str(count_alone).lower()} | mean of 200 | {new_event * 1e6:.1f} | {old_event * 1e6:.1f} "
            f"| {old_event / new_event:.0f}x |"
        )


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def bursts(members: int, channels: int, seed: int) -> list[tuple[float, list[tuple[int, tuple[int, bool] | None]]]]:
    """(gap before the burst, changes): joins until everyone is in, mixed moves / deafens /
    leaves / rejoins, then leaves until nobody is left. Gaps of 1 s to 4 min, some fractional."""
    rng = random.Random(seed)
    weights = [1 / (c + 1) for c in range(channels)]
    where: dict[int, tuple[int, bool]] = {}
    out: list[tuple[float, list[tuple[int, tuple[int, bool] | None]]]] = []

    def gap() -> float:
        return rng.choice([1.0, 7.5, 30.0, 61.25, 240.0]) + rng.random()

    def channel() -> int:
        return 1_000 + rng.choices(range(channels), weights)[0]

    outside = list(range(members))
    rng.shuffle(outside)
    while outside:  # joins, 1,000 at a time
        batch, outside = outside[:1_000], outside[1_000:]
        changes: list[tuple[int, tuple[int, bool] | None]] = [(u, (channel(), rng.random() < 0.1)) for u in batch]
        where.update((u, s) for u, s in changes if s is not None)
        out.append((gap(), changes))
    for _ in range(30):  # mixed
        changes = []
        for user in rng.sample(range(members), 1_500):
            state = where.get(user)
            roll = rng.random()
            new: tuple[int, bool] | None
            if state is None:
                new = (channel(), False)
            elif roll < 0.5:
                new = (channel(), state[1])
            elif roll < 0.75:
                new = (state[0], not state[1])
            elif roll < 0.8:
                new = state  # a mute or a stream: same presence
            else:
                new = None
            changes.append((user, new))
            if new is None:
                where.pop(user, None)
            else:
                where[user] = new
        out.append((gap(), changes))
    inside = sorted(where)
    rng.shuffle(inside)
    while inside:  # leaves, 2,000 at a time
        batch, inside = inside[:2_000], inside[2_000:]
        out.append((gap(), [(u, None) for u in batch]))
    return out


def counting_now(state: dict[int, tuple[int, bool]], bots: set[int], rules: VoiceRules) -> list[int]:
    """Who counts, by the rule itself, from a scan of everyone (independent of the tracker)."""
    humans = Counter(channel for user, (channel, _) in state.items() if user not in bots)
    return [
        user
        for user, (channel, deafened) in state.items()
        if user not in bots and (rules.count_deafened or not deafened) and (rules.count_alone or humans[channel] >= 2)
    ]


def failing(batch: ActivityBatch) -> None:
    raise sqlite3.OperationalError("database is locked")


async def part_b_run(
    members: int, channels: int, seed: int, rules: VoiceRules
) -> tuple[dict[int, float], dict[int, float], str]:
    plan = bursts(members, channels, seed)
    bots = set(random.Random(seed + 2).sample(range(members), members // 30))
    truth: dict[int, float] = dict.fromkeys(range(members), 0.0)
    state: dict[int, tuple[int, bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(f"sqlite:///{tmp}/bench.db")
        await storage.open()
        clock = Clock()
        service = ActivityService(
            storage,
            guild_id=1,
            voice=VoiceTracker(lambda: rules),
            guard=NullGuard(),
            names=NameService(storage, guild_id=1),
            clock=clock,
            recovery=RecoveryFile(Path(tmp) / "bench.db.unsaved.json", clock=clock),
        )
        await service.start()
        next_flush = START + 120.0
        event_seconds = 0.0
        events = 0
        failed = False
        for index, (gap, changes) in enumerate(plan):
            counting = counting_now(state, bots, rules)
            if index == len(plan) // 2:
                gap = max(gap, 150.0)  # long enough for a flush in the gap
            start, end = clock.now, clock.now + gap
            if index == len(plan) // 2:
                service.hold_voice()  # the connection drops; flushes meanwhile credit up to the drop
            while next_flush < end:  # the flush loop runs between bursts
                clock.now = next_flush
                if index >= len(plan) // 3 and not failed:  # one write fails; its counts are kept
                    real, repository.apply_batch = repository.apply_batch, failing
                    assert not await service.flush(lambda: 1)
                    repository.apply_batch = real
                    failed = True
                else:
                    assert await service.flush(lambda: 1)
                next_flush += 120.0
            clock.now = end
            for user in counting:
                truth[user] += end - start
            if index == len(plan) // 2:
                service.resume_voice()  # RESUMED: the gap was replayed, so it counts
            started = time.perf_counter()
            for user, new in changes:
                presence = None if new is None else VoicePresence(new[0], deafened=new[1], is_bot=user in bots)
                service.record_voice(user, presence)
            event_seconds += time.perf_counter() - started
            events += len(changes)
            for user, new in changes:
                if new is None:
                    state.pop(user, None)
                else:
                    state[user] = new
            if index == len(plan) // 2:
                # on_resumed reconciles with the real voice states: nothing may change.
                service.reconcile_voice({u: VoicePresence(c, d, u in bots) for u, (c, d) in state.items()})
        assert not state
        clock.now += 1.0
        assert await service.flush(lambda: 1)
        reported = {e.user_id: e.value for e in await storage.run(repository.top, 1, 1, "voice", members + 1)}
        await storage.close()
    note = (
        f"{len(plan)} bursts, {events:,} voice events, {clock.now - START:,.0f} s of injected time; "
        f"mean {event_seconds / events * 1e6:.1f} µs per event through ActivityService.record_voice"
    )
    return truth, {u: reported.get(u, 0.0) for u in range(members)}, note


async def part_b(members: int, channels: int, seed: int) -> None:
    print(f"\n(b) {members:,} members joining, moving and leaving in bursts; database totals vs true time")
    print(
        "| VOICE_COUNT_ALONE | true total (h) | reported total (h) | max error per member (s) | members off by > 1 s |"
    )
    print("|---|---|---|---|---|")
    notes = []
    for count_alone in (True, False):
        truth, reported, note = await part_b_run(members, channels, seed, VoiceRules(count_alone=count_alone))
        errors = [abs(reported[u] - truth[u]) for u in truth]
        print(
            f"| {str(count_alone).lower()} | {sum(truth.values()) / 3600:,.3f} | {sum(reported.values()) / 3600:,.3f} "
            f"| {max(errors):.2e} | {sum(e > 1.0 for e in errors)} |"
        )
        notes.append(f"VOICE_COUNT_ALONE={str(count_alone).lower()}: {note}")
    print("\n".join(notes))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # the failed write's warning is not what is measured
    logging.disable(logging.WARNING)
    part_a(args.members, args.channels, args.seed)
    asyncio.run(part_b(args.members, args.channels, args.seed))
