"""MembershipService: who left the server, remembered for a while, never hidden on a doubt."""

from __future__ import annotations

import asyncio
import time

import pytest

from leaderboard_bot.services.membership import (
    DEPARTED_TTL,
    PRESENT_TTL,
    UNKNOWN_TTL,
    MembershipService,
)
from tests.factories import FakeClock


class FakeLookup:
    """The bot's MemberLookup: a scripted answer per user (an exception is raised), with an
    optional gate that holds every lookup until it is set."""

    def __init__(self, answers: dict[int, bool | Exception | None] | None = None, *, delay: float = 0.0) -> None:
        self.answers = dict(answers or {})
        self.delay = delay
        self.calls: list[int] = []
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    async def is_member(self, user_id: int) -> bool | None:
        self.calls.append(user_id)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            answer = self.answers.get(user_id, True)
            if isinstance(answer, Exception):
                raise answer
            return answer
        finally:
            self.in_flight -= 1


class Switch:
    def __init__(self, on: bool = True) -> None:
        self.on = on

    def __call__(self) -> bool:
        return self.on


def service(
    lookup: FakeLookup | None, clock: FakeClock | None = None, switch: Switch | None = None, **options: float
) -> MembershipService:
    return MembershipService(
        lookup,
        enabled=switch or Switch(),
        clock=clock or FakeClock(),
        **options,  # type: ignore[arg-type]
    )


async def test_only_unknown_member_hides_and_every_doubt_shows() -> None:
    lookup = FakeLookup({2: False, 3: None, 4: RuntimeError("503"), 5: PermissionError("403")})
    members = service(lookup)
    assert await members.departed([1, 2, 3, 4, 5]) == {2}
    assert sorted(lookup.calls) == [1, 2, 3, 4, 5]
    assert members.lookup_failures == 2
    assert members.known_departed(2) and not members.known_departed(1)


async def test_a_lookup_that_hangs_counts_as_unknown_after_its_timeout() -> None:
    lookup = FakeLookup({1: False}, delay=5.0)
    members = service(lookup, lookup_timeout=0.05)
    assert await members.departed([1]) == set()
    assert members.lookup_failures == 1


async def test_answers_are_remembered_each_for_its_own_time() -> None:
    clock = FakeClock()
    lookup = FakeLookup({1: True, 2: False, 3: None})
    members = service(lookup, clock)
    assert await members.departed([1, 2, 3]) == {2}
    assert await members.departed([1, 2, 3]) == {2}
    assert len(lookup.calls) == 3  # all remembered
    clock.advance(UNKNOWN_TTL + 1)
    await members.departed([1, 2, 3])
    assert lookup.calls[3:] == [3]  # the unknown one is asked again first
    clock.advance(DEPARTED_TTL - UNKNOWN_TTL)
    lookup.answers[2] = True  # rejoined
    assert await members.departed([1, 2, 3]) == set()
    assert 2 in lookup.calls[4:] and 1 not in lookup.calls[4:]
    clock.set(1_000.0 + PRESENT_TTL + 1)
    lookup.answers[1] = False  # left since
    assert await members.departed([1]) == {1}


async def test_a_message_overrides_a_remembered_departure_at_once() -> None:
    lookup = FakeLookup({1: False})
    members = service(lookup)
    assert await members.departed([1]) == {1}
    members.note_present(1)
    assert await members.departed([1]) == set()
    assert lookup.calls == [1]  # the message was proof enough: no lookup


async def test_a_member_seen_during_a_lookup_is_not_hidden_by_its_late_answer() -> None:
    lookup = FakeLookup({1: False})
    lookup.gate = asyncio.Event()
    members = service(lookup)
    asking = asyncio.ensure_future(members.departed([1], budget=5.0))
    await asyncio.sleep(0.01)
    members.note_present(1)  # rejoined and wrote while Discord was answering "unknown member"
    lookup.gate.set()
    assert await asking == set()
    assert not members.known_departed(1)


async def test_while_off_nothing_is_asked_nor_held() -> None:
    switch = Switch(on=False)
    lookup = FakeLookup({1: False})
    members = service(lookup, switch=switch)
    members.note_present(2)
    assert await members.departed([1, 2]) == set()
    assert lookup.calls == [] and members.sizes() == {"membership_answers": 0, "membership_lookups": 0}
    switch.on = True
    assert await members.departed([1]) == {1}
    members.clear()
    assert members.sizes()["membership_answers"] == 0


async def test_without_a_lookup_nobody_is_hidden() -> None:
    assert await service(None).departed([1, 2]) == set()


async def test_lookups_run_a_few_at_a_time_and_one_per_member() -> None:
    lookup = FakeLookup(delay=0.02)
    members = service(lookup, concurrency=3)
    first, second = await asyncio.gather(members.departed(range(12)), members.departed([0, 1, 2]))
    assert first == second == set()
    assert sorted(lookup.calls) == list(range(12))  # members asked for twice at once: asked once
    assert lookup.most_in_flight == 3


async def test_a_board_waits_at_most_its_budget_and_later_answers_serve_the_next_one() -> None:
    lookup = FakeLookup({u: u % 2 == 0 for u in range(8)}, delay=0.1)
    members = service(lookup, concurrency=2, budget=0.15)
    started = time.monotonic()
    early = await members.departed(range(8))
    assert time.monotonic() - started < 0.4
    assert early <= {1, 3, 5, 7} and early != {1, 3, 5, 7}  # some answered in time, not all
    await asyncio.sleep(0.6)  # the rest went on in the background
    assert await members.departed(range(8), budget=0) == {1, 3, 5, 7}
    assert len(lookup.calls) == 8


async def test_no_budget_answers_from_memory_only() -> None:
    lookup = FakeLookup({1: False}, delay=0.01)
    members = service(lookup)
    assert await members.departed([1], budget=0) == set()
    await asyncio.sleep(0.05)
    assert await members.departed([1], budget=0) == {1}


async def test_the_memory_is_bounded() -> None:
    members = service(FakeLookup(), maxsize=5)
    for user in range(20):
        members.note_present(user)
    assert members.sizes()["membership_answers"] == 5


async def test_close_stops_the_lookups_under_way() -> None:
    lookup = FakeLookup()
    lookup.gate = asyncio.Event()
    members = service(lookup)
    await members.departed([1, 2], budget=0.01)
    assert members.sizes()["membership_lookups"] == 2
    members.close()
    await asyncio.sleep(0)
    assert members.sizes()["membership_lookups"] == 0
    assert await members.departed([1, 2], budget=0.01) == set()  # asked again, still no answer
    members.close()


@pytest.mark.parametrize("answer", [True, None])
async def test_a_member_known_present_or_unknown_stays_shown_after_a_message(answer: bool | None) -> None:
    members = service(FakeLookup({1: answer}))
    await members.departed([1])
    members.note_present(1)
    assert not members.known_departed(1)
