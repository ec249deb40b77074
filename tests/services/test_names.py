"""NameService against a real Storage on a temporary SQLite file, with fake live lookups and
fetchers that record who they were asked about."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import UNKNOWN_MEMBER, ActivityBatch, NameInfo
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.names import NOT_FOUND_TTL, FingerprintTable, NameService
from tests.factories import MIDNIGHT, AllowAllGuard, FakeClock, open_storage, voice_tracker

G = 7171
T0 = MIDNIGHT + 3_600.0


class Live:
    """A live member lookup (the guild's member cache)."""

    def __init__(self, names: dict[int, NameInfo] | None = None) -> None:
        self.names = dict(names or {})
        self.calls: list[int] = []

    def __call__(self, user_id: int) -> NameInfo | None:
        self.calls.append(user_id)
        return self.names.get(user_id)


class Fetcher:
    """An API fetch: a name, None (no such user), or an exception."""

    def __init__(self, results: dict[int, NameInfo | Exception | None] | None = None) -> None:
        self.results = dict(results or {})
        self.calls: list[int] = []

    async def __call__(self, user_id: int) -> NameInfo | None:
        self.calls.append(user_id)
        result = self.results.get(user_id)
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture
async def name_storage(tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_storage(f"sqlite:///{tmp_path}/names.db") as storage:
        yield storage


@pytest.fixture
def tracker(name_storage: Storage) -> ActivityService:
    return ActivityService(
        name_storage,
        guild_id=G,
        voice=voice_tracker(),
        guard=AllowAllGuard(),
        names=NameService(name_storage, guild_id=G),
        clock=FakeClock(T0),
    )


class Source:
    """The bot's NameSource port, made of a live lookup and a fetcher (either may be missing)."""

    def __init__(self, live: Callable[[int], NameInfo | None] | None, fetch: Any) -> None:
        self.live, self.fetch = live, fetch

    def live_name(self, user_id: int) -> NameInfo | None:
        return self.live(user_id) if self.live else None

    async def fetch_name(self, user_id: int) -> NameInfo | None:
        return await self.fetch(user_id) if self.fetch else None


async def store_names(storage: Storage, names: dict[int, NameInfo]) -> None:
    """Names a previous run kept in the database (not known to this run's tracker)."""
    await storage.run(repository.apply_batch, ActivityBatch(guild_id=G, season=1, heartbeat_at=T0, names=names))


def spy_db_lookups(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    real = repository.names
    asked: list[list[int]] = []

    def spy(guild_id: int, user_ids: Iterable[int]) -> dict[int, str]:
        ids = list(user_ids)
        asked.append(ids)
        return real(guild_id, ids)

    monkeypatch.setattr(repository, "names", spy)
    return asked


def directory(
    storage: Storage,
    tracker: ActivityService,
    *,
    live: Callable[[int], NameInfo | None] | None = None,
    fetch: Any = None,
    max_fetches_per_call: int = 10,
) -> NameService:
    """The tracker's name service, now asking ``live`` and ``fetch`` (what the bot would answer)."""
    names = tracker.names
    names.source = Source(live, fetch)
    names.max_fetches_per_call = max_fetches_per_call
    return names


# --------------------------------------------------------------------------- resolution order


async def test_live_beats_known_beats_stored_beats_fetched(
    name_storage: Storage, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_names(name_storage, {1: ("Stored1", None), 2: ("Stored2", None), 3: ("Stored3", "s3")})
    tracker.names.remember(1, "Known1", None)
    tracker.names.remember(2, "Known2", None)
    live = Live({1: ("Live1", "l1")})
    fetch = Fetcher({n: (f"Fetched{n}", None) for n in range(1, 6)} | {5: None})
    asked = spy_db_lookups(monkeypatch)
    names = directory(name_storage, tracker, live=live, fetch=fetch)

    result = await names.resolve([1, 2, 3, 4, 5])
    assert result == {1: "Live1", 2: "Known2", 3: "Stored3", 4: "Fetched4", 5: UNKNOWN_MEMBER}
    assert list(result) == [1, 2, 3, 4, 5]
    assert live.calls == [1, 2, 3, 4, 5]
    assert asked == [[3, 4, 5]]  # only what neither live data nor memory had
    assert fetch.calls == [4, 5]  # only what the database did not have either


async def test_without_live_lookup_or_fetcher_stored_names_and_unknown(
    name_storage: Storage, tracker: ActivityService
) -> None:
    await store_names(name_storage, {1: ("Stored1", None)})
    names = directory(name_storage, tracker)
    assert await names.resolve([1, 2]) == {1: "Stored1", 2: UNKNOWN_MEMBER}


async def test_the_database_is_not_asked_when_everything_is_known(
    name_storage: Storage, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker.names.remember(2, "Two", None)
    asked = spy_db_lookups(monkeypatch)
    names = directory(name_storage, tracker, live=Live({1: ("One", None)}), fetch=Fetcher())
    assert await names.resolve([1, 2]) == {1: "One", 2: "Two"}
    assert asked == []


async def test_live_names_are_remembered_and_written_with_the_next_flush(
    name_storage: Storage, tracker: ActivityService
) -> None:
    await store_names(name_storage, {1: ("Old name", "one")})
    names = directory(name_storage, tracker, live=Live({1: ("New name", "one")}))
    assert await names.resolve([1]) == {1: "New name"}
    assert tracker.names.known_name(1) == "New name"

    batches: list[ActivityBatch] = []
    tracker.add_flush_listener(batches.append)
    assert await tracker.flush(lambda: 1) is True
    assert batches[-1].names == {1: ("New name", "one")}
    assert await name_storage.run(repository.names, G, [1]) == {1: "New name"}

    # Once the member is gone from the live cache, the remembered name is used.
    gone = directory(name_storage, tracker, live=Live())
    assert await gone.resolve([1]) == {1: "New name"}


async def test_fetched_names_are_remembered_and_not_fetched_again(
    name_storage: Storage, tracker: ActivityService
) -> None:
    fetch = Fetcher({4: ("Fetched", "fetched")})
    names = directory(name_storage, tracker, live=Live(), fetch=fetch)
    assert await names.resolve([4]) == {4: "Fetched"}
    assert tracker.names.known_name(4) == "Fetched"
    assert await names.resolve([4]) == {4: "Fetched"}
    assert fetch.calls == [4]

    batches: list[ActivityBatch] = []
    tracker.add_flush_listener(batches.append)
    assert await tracker.flush(lambda: 1) is True
    assert batches[-1].names == {4: ("Fetched", "fetched")}
    assert await name_storage.run(repository.names, G, [4]) == {4: "Fetched"}


# --------------------------------------------------------------------------- failed fetches


async def test_a_member_discord_does_not_know_is_not_asked_about_again_for_an_hour(
    name_storage: Storage, tracker: ActivityService
) -> None:
    fetch = Fetcher({9: None, 8: ("Eight", None)})
    names = directory(name_storage, tracker, live=Live(), fetch=fetch)
    clock = FakeClock(0.0)
    names.clock = clock
    assert await names.resolve([9, 8]) == {9: UNKNOWN_MEMBER, 8: "Eight"}  # one failure spoils nothing
    assert await names.resolve([9]) == {9: UNKNOWN_MEMBER}
    assert fetch.calls == [9, 8]
    clock.advance(NOT_FOUND_TTL)
    fetch.results[9] = ("Nine", None)  # the account came back
    assert await names.resolve([9]) == {9: "Nine"}
    assert fetch.calls == [9, 8, 9]


async def test_members_remembered_as_gone_are_bounded(
    name_storage: Storage, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each "no such user" was kept until the same member was asked about again (found by review)."""
    from leaderboard_bot.services import names as names_module

    monkeypatch.setattr(names_module, "NOT_FOUND_AT_MOST", 5)
    tracker.names = NameService(name_storage, guild_id=G)  # built with the smaller bound
    fetch = Fetcher({user: None for user in range(100)})
    names = directory(name_storage, tracker, live=Live(), fetch=fetch)
    for user in range(100):
        await names.resolve([user])
    assert names.sizes()["names_not_found"] == 5


@pytest.mark.parametrize("error", [RuntimeError("HTTP 500"), TimeoutError()], ids=["5xx", "timeout"])
async def test_a_lookup_that_failed_is_tried_again_next_time(
    name_storage: Storage, tracker: ActivityService, error: Exception
) -> None:
    """A 5xx or a timeout says nothing about the member: no "Unknown member" until restart."""
    fetch = Fetcher({9: error})
    names = directory(name_storage, tracker, live=Live(), fetch=fetch)
    assert await names.resolve([9]) == {9: UNKNOWN_MEMBER}
    fetch.results[9] = ("Nine", None)  # Discord answers again
    assert await names.resolve([9]) == {9: "Nine"}
    assert fetch.calls == [9, 9]


async def test_an_unfetchable_member_still_resolves_from_other_sources_later(
    name_storage: Storage, tracker: ActivityService
) -> None:
    live = Live()
    fetch = Fetcher({9: None})
    names = directory(name_storage, tracker, live=live, fetch=fetch)
    assert await names.resolve([9]) == {9: UNKNOWN_MEMBER}
    live.names[9] = ("Back again", None)  # rejoined the server
    assert await names.resolve([9]) == {9: "Back again"}
    assert fetch.calls == [9]


async def test_unfetchable_ids_are_remembered_per_service(name_storage: Storage, tracker: ActivityService) -> None:
    fetch = Fetcher({9: None})
    first = directory(name_storage, tracker, fetch=fetch)
    await first.resolve([9])
    await first.resolve([9])
    second = NameService(name_storage, guild_id=G, source=Source(None, fetch))  # e.g. after a restart
    await second.resolve([9])
    assert fetch.calls == [9, 9]


# --------------------------------------------------------------------------- fetch cap


async def test_at_most_max_fetches_per_call_in_input_order(name_storage: Storage, tracker: ActivityService) -> None:
    fetch = Fetcher({n: (f"User{n}", None) for n in range(1, 6)})
    names = directory(name_storage, tracker, live=Live(), fetch=fetch, max_fetches_per_call=2)

    result = await names.resolve([5, 4, 3, 2, 1])
    assert result == {5: "User5", 4: "User4", 3: UNKNOWN_MEMBER, 2: UNKNOWN_MEMBER, 1: UNKNOWN_MEMBER}
    assert fetch.calls == [5, 4]
    assert tracker.names.known_name(3) is None  # not fetched is not unfetchable

    # The next call fetches the next ones: the first ones are remembered now.
    result = await names.resolve([5, 4, 3, 2, 1])
    assert result == {5: "User5", 4: "User4", 3: "User3", 2: "User2", 1: UNKNOWN_MEMBER}
    assert fetch.calls == [5, 4, 3, 2]

    assert await names.resolve([5, 4, 3, 2, 1]) == {n: f"User{n}" for n in (5, 4, 3, 2, 1)}
    assert fetch.calls == [5, 4, 3, 2, 1]


async def test_failed_fetches_count_against_the_cap_and_known_failures_do_not(
    name_storage: Storage, tracker: ActivityService
) -> None:
    fetch = Fetcher({1: None, 2: RuntimeError("boom"), 3: ("Three", None), 4: ("Four", None)})
    names = directory(name_storage, tracker, fetch=fetch, max_fetches_per_call=2)
    assert await names.resolve([1, 2, 3, 4]) == {
        1: UNKNOWN_MEMBER,
        2: UNKNOWN_MEMBER,
        3: UNKNOWN_MEMBER,
        4: UNKNOWN_MEMBER,
    }
    assert fetch.calls == [1, 2]
    # 1 is known not to exist: skipped without using the budget; 2 only failed, so it is asked again.
    assert await names.resolve([1, 2, 3, 4]) == {1: UNKNOWN_MEMBER, 2: UNKNOWN_MEMBER, 3: "Three", 4: UNKNOWN_MEMBER}
    assert fetch.calls == [1, 2, 2, 3]


async def test_a_zero_cap_never_fetches(name_storage: Storage, tracker: ActivityService) -> None:
    fetch = Fetcher({1: ("One", None)})
    names = directory(name_storage, tracker, fetch=fetch, max_fetches_per_call=0)
    assert await names.resolve([1]) == {1: UNKNOWN_MEMBER}
    assert await names.resolve([1]) == {1: UNKNOWN_MEMBER}
    assert fetch.calls == []


async def test_resolved_names_do_not_use_the_fetch_budget(name_storage: Storage, tracker: ActivityService) -> None:
    await store_names(name_storage, {2: ("Stored", None)})
    tracker.names.remember(3, "Known", None)
    fetch = Fetcher({4: ("Four", None), 5: ("Five", None)})
    names = directory(name_storage, tracker, live=Live({1: ("Live", None)}), fetch=fetch, max_fetches_per_call=1)
    assert await names.resolve([1, 2, 3, 4, 5]) == {
        1: "Live",
        2: "Stored",
        3: "Known",
        4: "Four",
        5: UNKNOWN_MEMBER,
    }
    assert fetch.calls == [4]


# --------------------------------------------------------------------------- input shapes


async def test_duplicates_are_resolved_once(
    name_storage: Storage, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_names(name_storage, {2: ("Stored", None)})
    live = Live({1: ("One", None)})
    fetch = Fetcher({3: ("Three", None), 4: None})
    asked = spy_db_lookups(monkeypatch)
    names = directory(name_storage, tracker, live=live, fetch=fetch, max_fetches_per_call=2)

    result = await names.resolve([3, 1, 3, 2, 1, 4, 3, 4])
    assert result == {3: "Three", 1: "One", 2: "Stored", 4: UNKNOWN_MEMBER}
    assert list(result) == [3, 1, 2, 4]  # first appearance order
    assert live.calls == [3, 1, 2, 4]
    assert asked == [[3, 2, 4]]
    assert fetch.calls == [3, 4]  # duplicates neither fetched twice nor eating the budget


async def test_empty_input(name_storage: Storage, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = spy_db_lookups(monkeypatch)
    live, fetch = Live(), Fetcher()
    names = directory(name_storage, tracker, live=live, fetch=fetch)
    assert await names.resolve([]) == {}
    assert await names.resolve(iter(())) == {}
    assert asked == []
    assert live.calls == [] and fetch.calls == []


async def test_any_iterable_works_including_a_generator(name_storage: Storage, tracker: ActivityService) -> None:
    await store_names(name_storage, {1: ("One", None), 2: ("Two", None)})
    names = directory(name_storage, tracker)
    assert await names.resolve(u for u in (2, 1, 2)) == {2: "Two", 1: "One"}


def test_unwritten_names_go_to_a_flush_and_come_back_if_it_fails() -> None:
    names = NameService(None, guild_id=G)  # type: ignore[arg-type]  (no lookups here)
    names.remember(1, "One", "one")
    names.remember(1, "One", "one")  # unchanged: nothing new to write
    taken = names.take_unwritten()
    assert taken == {1: ("One", "one")} and names.unwritten() == {}
    names.remember(1, "Uno", "one")  # seen while the write was under way
    names.restore_unwritten(taken)
    assert names.unwritten() == {1: ("Uno", "one")}  # the newer name wins


def test_names_in_memory_are_bounded_and_each_member_is_kept_once() -> None:
    names = NameService(None, guild_id=1)  # type: ignore[arg-type]
    names.known_names, names.max_fingerprints = 100, 500
    for member in range(1_000):
        names.seen(member, None, None, f"member{member}")
    sizes = names.sizes()
    assert sizes["names"] == 100 and sizes["name_fingerprints"] <= 500
    assert names.known_name(999) == "member999" and names.known_name(0) is None  # the latest are kept
    assert len(names.take_unwritten()) == 1_000  # every first sighting is written once
    display, username = names._known[999]
    assert display is username  # the same name is not kept twice
    for member in range(999, 989, -1):
        names.seen(member, None, None, f"member{member}")  # unchanged: nothing to write
    assert names.take_unwritten() == {}


def test_the_fingerprint_table_keeps_grows_forgets_and_stays_bounded() -> None:
    table = FingerprintTable(max_entries=5_000, capacity=8)
    # Snowflakes a millisecond apart differ in their high bits only: they must not pile on one slot.
    members = [(1_404_855_785_183_252_572 + n) << 3 for n in range(3_000)] + list(range(1_000))
    for n, member in enumerate(members):
        table.put(member, n + 1)
    assert len(table) == 4_000
    assert all(table.get(member) == n + 1 for n, member in enumerate(members))
    assert table.get(10**6) == 0 and table.get(-1) == 0 and table.get(1 << 64) == 0  # unknown or not an id
    table.put(members[0], 77)  # a changed fingerprint replaces the old one
    assert table.get(members[0]) == 77 and len(table) == 4_000
    table.put(members[1], 0)  # forgotten
    table.put(123_456_789_012, 0)  # forgetting an unknown member keeps nothing
    assert table.get(members[1]) == 0 and table.get(123_456_789_012) == 0 and len(table) == 4_000
    table.put(-5, 9)  # not a Discord id: never kept
    assert len(table) == 4_000
    for member in range(10_000, 11_001):
        table.put(member, 1)  # past max_entries: everything is forgotten and counting starts over
    assert len(table) <= 5_000 and table.get(members[-1]) == 0 and table.get(11_000) == 1
    # 12 bytes a slot (a 64-bit id, a 32-bit fingerprint): at most 24 a member at the lowest load.
    assert table._ids.itemsize + table._values.itemsize == 12
    assert table._ids.buffer_info()[1] == table._values.buffer_info()[1] <= 4 * 5_000


def test_a_member_forgotten_by_privacy_is_written_again_when_seen() -> None:
    names = NameService(None, guild_id=G)  # type: ignore[arg-type]
    names.seen(5, None, None, "five")
    names.take_unwritten()
    names.seen(5, None, None, "five")
    assert names.take_unwritten() == {}  # unchanged
    names.forget(5)
    names.seen(5, None, None, "five")
    assert names.take_unwritten() == {5: ("five", "five")}
