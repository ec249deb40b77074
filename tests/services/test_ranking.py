"""TopCache (fake timer, exact hit/miss counts) and Rankings against a real Storage on a temporary
SQLite file and a real ActivityService driven by a fake clock."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import ALL_TIME, MONTH, WEEK, ActivityBatch, Placing, RankedEntry, Window, shift_day
from leaderboard_bot.domain import TODAY as TODAY_WINDOW
from leaderboard_bot.services.activity import ActivityService
from leaderboard_bot.services.names import NameService
from leaderboard_bot.services.ranking import Rankings, Standing, TopCache
from leaderboard_bot.services.seasons import SeasonService
from tests.factories import MIDNIGHT, AllowAllGuard, FakeClock, day, here, open_storage, runtime_settings, voice_tracker

G = 5151
CH = 88
T0 = MIDNIGHT + 7_200.0  # 02:00 UTC, far from a day boundary
TODAY = day(T0)
TTL = 30.0


# --------------------------------------------------------------------------- TopCache


def test_get_and_put_count_hits_and_misses_exactly() -> None:
    cache = TopCache(lambda: TTL, timer=FakeClock(0.0))
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0)

    assert cache.get(("messages", 1, 10)) is None
    assert (cache.hits, cache.misses) == (0, 1)

    cache.put(("messages", 1, 10), ("a", "b"))
    assert (cache.hits, cache.misses) == (0, 1)  # put counts as neither
    assert len(cache) == 1
    assert cache.get(("messages", 1, 10)) == ("a", "b")
    assert cache.get(("messages", 1, 10)) == ("a", "b")
    assert (cache.hits, cache.misses) == (2, 1)

    assert cache.get(("messages", 1, 5)) is None  # a different key is a different entry
    assert cache.get(("voice", 1, 10)) is None
    assert (cache.hits, cache.misses) == (2, 3)

    cache.put(("messages", 1, 10), ("c",))  # overwrite
    assert cache.get(("messages", 1, 10)) == ("c",)
    assert (cache.hits, cache.misses, len(cache)) == (3, 3, 1)


def test_an_empty_cached_value_is_a_hit() -> None:
    """An empty board is cached as an empty tuple: it must not be mistaken for a miss."""
    cache = TopCache(lambda: TTL, timer=FakeClock(0.0))
    cache.put(("voice", 1, 10), ())
    assert cache.get(("voice", 1, 10)) == ()
    assert (cache.hits, cache.misses) == (1, 0)


def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock(0.0)
    cache = TopCache(lambda: 10.0, timer=clock)
    cache.put("k", 1)
    clock.set(9.999)
    assert cache.get("k") == 1
    clock.set(10.001)
    assert cache.get("k") is None
    assert (cache.hits, cache.misses) == (1, 1)
    assert len(cache) == 0


def test_reading_does_not_extend_the_ttl_but_writing_again_does() -> None:
    clock = FakeClock(0.0)
    cache = TopCache(lambda: 10.0, timer=clock)
    cache.put("read", 1)
    cache.put("rewritten", 2)
    clock.set(8.0)
    assert cache.get("read") == 1  # a hit does not restart the clock
    cache.put("rewritten", 3)  # expires at 18 now
    clock.set(12.0)
    assert cache.get("read") is None
    assert cache.get("rewritten") == 3
    clock.set(18.5)
    assert cache.get("rewritten") is None
    assert (cache.hits, cache.misses) == (2, 2)


def test_maxsize_evicts_the_least_recently_used_entry() -> None:
    cache = TopCache(lambda: TTL, maxsize=2, timer=FakeClock(0.0))
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)  # evicts "b"
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") == 1
    assert cache.get("c") == 3
    cache.put("d", 4)  # "a" was used before "c": "a" goes
    assert cache.get("a") is None
    assert cache.get("c") == 3
    assert cache.get("d") == 4
    assert (cache.hits, cache.misses) == (5, 2)


def test_invalidate_one_board_drops_only_that_boards_keys() -> None:
    cache = TopCache(lambda: TTL, timer=FakeClock(0.0))
    cache.put(("messages", 1, 10), "m1")
    cache.put(("messages", 2, 5), "m2")
    cache.put(("voice", 1, 10), "v1")
    cache.put("messages", "plain key")  # not a tuple: not a board entry
    cache.put(("voice-extra", 1, 10), "other")  # first element differs from "voice"
    cache.get(("messages", 1, 10))
    before = (cache.hits, cache.misses)

    cache.invalidate("messages")
    assert (cache.hits, cache.misses) == before  # invalidation counts nothing
    assert len(cache) == 3
    assert cache.get(("voice", 1, 10)) == "v1"
    assert cache.get("messages") == "plain key"
    assert cache.get(("voice-extra", 1, 10)) == "other"
    assert cache.get(("messages", 1, 10)) is None
    assert cache.get(("messages", 2, 5)) is None

    cache.invalidate("voice")
    assert cache.get(("voice", 1, 10)) is None
    assert cache.get(("voice-extra", 1, 10)) == "other"
    assert len(cache) == 2

    cache.invalidate("messages")  # nothing left for it: harmless
    assert len(cache) == 2


def test_invalidate_without_a_board_drops_everything() -> None:
    cache = TopCache(lambda: TTL, timer=FakeClock(0.0))
    cache.put(("messages", 1, 10), "m")
    cache.put(("voice", 1, 10), "v")
    cache.put("other", "o")
    cache.invalidate()
    assert len(cache) == 0
    assert cache.get(("messages", 1, 10)) is None
    assert cache.get(("voice", 1, 10)) is None
    assert cache.get("other") is None


def test_invalidate_skips_expired_entries_without_error() -> None:
    clock = FakeClock(0.0)
    cache = TopCache(lambda: 10.0, timer=clock)
    cache.put(("messages", 1, 10), "old")
    clock.set(5.0)
    cache.put(("messages", 1, 5), "fresh")
    cache.put(("voice", 1, 10), "fresh voice")
    clock.set(12.0)  # the first entry has expired
    cache.invalidate("messages")
    assert cache.get(("messages", 1, 5)) is None
    assert cache.get(("voice", 1, 10)) == "fresh voice"


# --------------------------------------------------------------------------- Rankings fixtures


@pytest.fixture
def rank_clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def cache_clock() -> FakeClock:
    return FakeClock(0.0)


@pytest.fixture
async def rank_storage(tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_storage(f"sqlite:///{tmp_path}/ranking.db") as storage:
        yield storage


@pytest.fixture
def tracker(rank_storage: Storage, rank_clock: FakeClock) -> ActivityService:
    return ActivityService(
        rank_storage,
        guild_id=G,
        voice=voice_tracker(),
        guard=AllowAllGuard(),
        names=NameService(rank_storage, guild_id=G),
        clock=rank_clock,
    )


@pytest.fixture
def seasons(rank_storage: Storage, tracker: ActivityService, rank_clock: FakeClock) -> SeasonService:
    return SeasonService(rank_storage, tracker, runtime_settings(reset_period=3600.0), clock=rank_clock)


@pytest.fixture
def rankings(
    rank_storage: Storage, tracker: ActivityService, seasons: SeasonService, cache_clock: FakeClock
) -> Rankings:
    return Rankings(rank_storage, tracker, seasons, TopCache(lambda: TTL, timer=cache_clock))


async def write_behind_cache(
    storage: Storage,
    *,
    season: int = 1,
    messages: dict[int, int] | None = None,
    voice: dict[int, float] | None = None,
) -> None:
    """Change the database directly, without a flush: no listener, so no invalidation."""
    batch = ActivityBatch(
        guild_id=G,
        season=season,
        heartbeat_at=T0,
        messages={(TODAY, u): n for u, n in (messages or {}).items()},
        voice={(TODAY, u): s for u, s in (voice or {}).items()},
    )
    await storage.run(repository.apply_batch, batch)


def send(tracker: ActivityService, user_id: int, count: int) -> None:
    for _ in range(count):
        assert tracker.record_message(user_id) is True


def entries(*pairs: tuple[int, float]) -> list[RankedEntry]:
    return [RankedEntry(u, v) for u, v in pairs]


# --------------------------------------------------------------------------- Rankings.top


async def test_top_is_served_from_the_cache_on_the_second_call(
    rankings: Rankings, tracker: ActivityService, rank_storage: Storage
) -> None:
    send(tracker, 1, 3)
    send(tracker, 2, 5)
    assert await rankings.seasons.flush() is True

    first = await rankings.top("messages", 10)
    assert first == entries((2, 5.0), (1, 3.0))
    assert (rankings.cache.hits, rankings.cache.misses) == (0, 1)

    second = await rankings.top("messages", 10)
    assert second == first
    assert (rankings.cache.hits, rankings.cache.misses) == (1, 1)

    # A change behind the cache's back is not visible until the board is invalidated.
    await write_behind_cache(rank_storage, messages={3: 9})
    assert await rankings.top("messages", 10) == first
    assert rankings.cache.hits == 2
    rankings.cache.invalidate("messages")
    assert await rankings.top("messages", 10) == entries((3, 9.0), (2, 5.0), (1, 3.0))
    assert (rankings.cache.hits, rankings.cache.misses) == (2, 2)


async def test_top_expires_with_the_cache_ttl(
    rankings: Rankings, rank_storage: Storage, cache_clock: FakeClock
) -> None:
    await write_behind_cache(rank_storage, messages={1: 1})
    assert await rankings.top("messages", 10) == entries((1, 1.0))
    await write_behind_cache(rank_storage, messages={1: 1})
    cache_clock.advance(TTL - 1.0)
    assert await rankings.top("messages", 10) == entries((1, 1.0))
    cache_clock.advance(2.0)
    assert await rankings.top("messages", 10) == entries((1, 2.0))
    assert (rankings.cache.hits, rankings.cache.misses) == (1, 2)


async def test_top_returns_a_copy_the_caller_may_change(rankings: Rankings, rank_storage: Storage) -> None:
    await write_behind_cache(rank_storage, messages={1: 4, 2: 2})
    got = await rankings.top("messages", 10)
    got.clear()
    again = await rankings.top("messages", 10)
    assert again == entries((1, 4.0), (2, 2.0))
    again.append(RankedEntry(99, 1.0))
    assert await rankings.top("messages", 10) == entries((1, 4.0), (2, 2.0))
    assert rankings.cache.hits == 2


async def test_an_empty_board_is_cached_too(rankings: Rankings, rank_storage: Storage) -> None:
    assert await rankings.top("voice", 10) == []
    await write_behind_cache(rank_storage, voice={1: 60.0})
    assert await rankings.top("voice", 10) == []
    assert (rankings.cache.hits, rankings.cache.misses) == (1, 1)


async def test_the_limit_is_part_of_the_key(rankings: Rankings, rank_storage: Storage) -> None:
    await write_behind_cache(rank_storage, messages={1: 3, 2: 2, 3: 1})
    assert await rankings.top("messages", 2) == entries((1, 3.0), (2, 2.0))
    assert await rankings.top("messages", 10) == entries((1, 3.0), (2, 2.0), (3, 1.0))
    assert await rankings.top("messages", 2) == entries((1, 3.0), (2, 2.0))
    assert (rankings.cache.hits, rankings.cache.misses) == (1, 2)


async def test_the_boards_are_cached_separately(rankings: Rankings, rank_storage: Storage) -> None:
    await write_behind_cache(rank_storage, messages={1: 3}, voice={2: 40.0})
    assert await rankings.top("messages", 10) == entries((1, 3.0))
    assert await rankings.top("voice", 10) == entries((2, 40.0))
    assert (rankings.cache.hits, rankings.cache.misses) == (0, 2)


async def test_a_flush_merges_into_the_cached_top_it_moves_and_leaves_the_other_board_cached(
    rankings: Rankings, tracker: ActivityService, rank_storage: Storage, rank_clock: FakeClock
) -> None:
    send(tracker, 1, 2)
    tracker.record_voice(2, here(CH))
    rank_clock.advance(50.0)
    assert await rankings.seasons.flush() is True
    tracker.record_voice(2, None)  # left: the next flushes carry no voice time
    assert await rankings.seasons.flush() is True
    assert await rankings.top("messages", 10) == entries((1, 2.0))
    assert await rankings.top("voice", 10) == entries((2, 50.0))

    await write_behind_cache(rank_storage, voice={3: 500.0})  # hidden by the voice cache
    send(tracker, 1, 1)
    batches: list[ActivityBatch] = []
    tracker.add_flush_listener(batches.append)
    assert await rankings.seasons.flush() is True
    assert batches[-1].messages and not batches[-1].voice

    hits = rankings.cache.hits
    assert await rankings.top("messages", 10) == entries((1, 3.0))  # new value right after the flush...
    assert await rankings.top("voice", 10) == entries((2, 50.0))  # still the cached voice board
    assert rankings.cache.hits == hits + 2  # ...merged into the cached top (member 1 was in it)


async def test_a_flush_with_voice_invalidates_only_the_voice_board(
    rankings: Rankings, tracker: ActivityService, rank_storage: Storage, rank_clock: FakeClock
) -> None:
    send(tracker, 1, 2)
    assert await rankings.seasons.flush() is True
    assert await rankings.top("messages", 10) == entries((1, 2.0))
    assert await rankings.top("voice", 10) == []

    await write_behind_cache(rank_storage, messages={3: 70})  # hidden by the messages cache
    tracker.record_voice(2, here(CH))
    rank_clock.advance(25.0)
    batches: list[ActivityBatch] = []
    tracker.add_flush_listener(batches.append)
    assert await rankings.seasons.flush() is True
    assert batches[-1].voice and not batches[-1].messages

    hits = rankings.cache.hits
    assert await rankings.top("voice", 10) == entries((2, 25.0))
    assert await rankings.top("messages", 10) == entries((1, 2.0))
    assert rankings.cache.hits == hits + 1


async def test_a_flush_with_both_invalidates_both_boards(
    rankings: Rankings, tracker: ActivityService, rank_clock: FakeClock
) -> None:
    assert await rankings.top("messages", 10) == []
    assert await rankings.top("voice", 10) == []
    send(tracker, 1, 1)
    tracker.record_voice(1, here(CH))
    rank_clock.advance(10.0)
    assert await rankings.seasons.flush() is True
    assert await rankings.top("messages", 10) == entries((1, 1.0))
    assert await rankings.top("voice", 10) == entries((1, 10.0))
    assert rankings.cache.hits == 0


async def test_a_flush_without_counts_invalidates_nothing(
    rankings: Rankings, tracker: ActivityService, rank_storage: Storage
) -> None:
    await write_behind_cache(rank_storage, messages={1: 1})
    assert await rankings.top("messages", 10) == entries((1, 1.0))
    await write_behind_cache(rank_storage, messages={1: 1})
    tracker.names.remember(1, "One", None)  # a name alone changes no board
    assert await rankings.seasons.flush() is True
    assert await rankings.top("messages", 10) == entries((1, 1.0))
    assert rankings.cache.hits == 1


async def test_a_failed_flush_invalidates_nothing(
    rankings: Rankings, tracker: ActivityService, rank_storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_behind_cache(rank_storage, messages={1: 1})
    assert await rankings.top("messages", 10) == entries((1, 1.0))
    await write_behind_cache(rank_storage, messages={2: 5})

    def broken(batch: ActivityBatch) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(repository, "apply_batch", broken)
    send(tracker, 1, 1)
    assert await rankings.seasons.flush() is False
    assert await rankings.top("messages", 10) == entries((1, 2.0))  # the cached top plus what is unwritten
    assert rankings.cache.hits == 1


async def test_a_season_switch_never_serves_the_old_seasons_top(
    rankings: Rankings, tracker: ActivityService, rank_storage: Storage
) -> None:
    send(tracker, 1, 4)
    assert await rankings.seasons.flush() is True
    assert await rankings.top("messages", 10) == entries((1, 4.0))
    assert await rankings.top("messages", 10) == entries((1, 4.0))
    assert rankings.cache.hits == 1

    # The season moves on with an empty flush: no board is invalidated, the key must differ.
    batches: list[ActivityBatch] = []
    tracker.add_flush_listener(batches.append)
    assert await rankings.seasons.roll(reason="test") is not None
    assert batches[-1].is_empty()
    assert rankings.seasons.current_number() == 2
    assert await rankings.top("messages", 10) == []
    assert (rankings.cache.hits, rankings.cache.misses) == (1, 2)

    # Each season has its own entry: season 1's is never served for season 2, nor the reverse.
    await write_behind_cache(rank_storage, season=1, messages={5: 99})
    assert await rankings.top("messages", 10, season=1) == entries((5, 99.0), (1, 4.0))
    assert await rankings.top("messages", 10, season=1) == entries((5, 99.0), (1, 4.0))
    assert await rankings.top("messages", 10) == []
    assert (rankings.cache.hits, rankings.cache.misses) == (3, 3)

    send(tracker, 2, 1)
    assert await rankings.seasons.flush() is True
    assert await rankings.top("messages", 10) == entries((2, 1.0))


async def test_rank_follows_top_order_with_ties_broken_by_user_id(rankings: Rankings, rank_storage: Storage) -> None:
    await write_behind_cache(rank_storage, messages={10: 5, 3: 7, 7: 5, 4: 1}, voice={4: 30.0, 7: 30.0})
    top = await rankings.top("messages", 10)
    assert top == entries((3, 7.0), (7, 5.0), (10, 5.0), (4, 1.0))
    for position, entry in enumerate(top, start=1):
        assert await rankings.rank("messages", entry.user_id) == position
    voice_top = await rankings.top("voice", 10)
    assert voice_top == entries((4, 30.0), (7, 30.0))
    assert [await rankings.rank("voice", e.user_id) for e in voice_top] == [1, 2]
    assert await rankings.rank("voice", 3) is None  # messages only: not on the voice board
    assert await rankings.rank("messages", 12345) is None


async def test_rank_is_not_cached(rankings: Rankings, rank_storage: Storage) -> None:
    await write_behind_cache(rank_storage, messages={1: 5, 2: 3})
    assert await rankings.rank("messages", 2) == 2
    await write_behind_cache(rank_storage, messages={2: 10})
    assert await rankings.rank("messages", 2) == 1


# --------------------------------------------------------------------------- Rankings.standing


async def test_standing_includes_buffered_messages_and_live_voice(
    rankings: Rankings, tracker: ActivityService, rank_clock: FakeClock
) -> None:
    send(tracker, 1, 3)
    tracker.record_voice(1, here(CH))
    rank_clock.advance(30.0)
    assert await rankings.seasons.flush() is True  # 3 messages and 30 s in the database
    send(tracker, 1, 2)  # buffered only
    rank_clock.advance(20.0)

    standing = await rankings.standing(1)
    assert standing == Standing(
        user_id=1,
        season=1,
        messages=5,
        voice_seconds=50.0,
        message_rank=1,
        voice_rank=1,
        live_voice_channel_id=CH,
        live_session_seconds=50.0,
    )

    rank_clock.advance(10.0)
    tracker.record_voice(1, None)  # leaves at +60, not flushed yet
    rank_clock.advance(100.0)
    standing = await rankings.standing(1)
    assert standing.messages == 5
    assert standing.voice_seconds == 60.0  # the closed, unwritten interval still counts
    assert standing.live_voice_channel_id is None
    assert standing.live_session_seconds is None

    assert await rankings.seasons.flush() is True
    assert await rankings.standing(1) == Standing(1, 1, 5, 60.0, 1, 1, None, None)


async def test_standing_of_someone_present_but_not_counting(
    rankings: Rankings, tracker: ActivityService, rank_clock: FakeClock
) -> None:
    tracker.record_voice(1, here(CH, deafened=True))  # deafened time does not count here
    rank_clock.advance(40.0)
    standing = await rankings.standing(1)
    assert standing.live_voice_channel_id == CH
    assert standing.live_session_seconds is None
    assert standing.voice_seconds == 0.0
    assert standing.voice_rank is None


async def test_standing_of_someone_without_activity(rankings: Rankings) -> None:
    assert await rankings.standing(42) == Standing(42, 1, 0, 0.0, None, None, None, None)


async def test_standing_ranks_match_the_top_order(
    rankings: Rankings, tracker: ActivityService, rank_clock: FakeClock
) -> None:
    send(tracker, 1, 2)
    send(tracker, 2, 6)
    send(tracker, 3, 6)
    tracker.record_voice(3, here(CH))
    rank_clock.advance(15.0)
    tracker.record_voice(1, here(CH))
    rank_clock.advance(15.0)
    assert await rankings.seasons.flush() is True

    messages_top = await rankings.top("messages", 10)
    voice_top = await rankings.top("voice", 10)
    assert [e.user_id for e in messages_top] == [2, 3, 1]
    assert [e.user_id for e in voice_top] == [3, 1]
    for position, entry in enumerate(messages_top, start=1):
        standing = await rankings.standing(entry.user_id)
        assert standing.message_rank == position
        assert standing.messages == entry.value
    for position, entry in enumerate(voice_top, start=1):
        standing = await rankings.standing(entry.user_id)
        assert standing.voice_rank == position
        assert standing.voice_seconds == entry.value
    assert (await rankings.standing(2)).voice_rank is None


async def test_standing_ranks_pass_over_members_who_chose_not_to_be_listed(
    rankings: Rankings, tracker: ActivityService
) -> None:
    """Boards and /top leave hidden members out and renumber; a member's rank in /stats must agree
    (and not tell, by a gap, that someone above is hidden). Stored and unwritten counts both."""
    send(tracker, 1, 9)  # hidden, first when stored
    send(tracker, 2, 7)
    send(tracker, 3, 3)
    assert await rankings.seasons.flush() is True
    send(tracker, 4, 5)  # hidden, unwritten: ahead of 3 only
    send(tracker, 3, 1)  # 3 has 4 now: behind 4's 5
    hidden = {1, 4}
    for user in hidden:  # stored first, then in memory, as PrivacyService.set_flag does
        await rankings.storage.run(repository.set_setting, G, repository.privacy_key(user), '["hidden"]')
    rankings.unlisted = lambda: hidden
    ranks = {u: (await rankings.standing(u)).message_rank for u in (1, 2, 3, 4)}
    assert ranks[2] == 1 and ranks[3] == 2  # the listed members: as the board numbers them
    assert ranks[4] == 2  # a hidden member's own rank passes over the others hidden
    for user in hidden:  # /privacy show: counted again at once
        await rankings.storage.run(repository.delete_setting, G, repository.privacy_key(user))
    hidden.clear()
    assert [(await rankings.standing(u)).message_rank for u in (1, 2, 4, 3)] == [1, 2, 3, 4]


async def test_standing_reads_the_current_season(rankings: Rankings, tracker: ActivityService) -> None:
    send(tracker, 1, 4)
    assert await rankings.seasons.roll(reason="test") is not None
    send(tracker, 1, 1)
    standing = await rankings.standing(1)
    assert (standing.messages, standing.message_rank) == (1, 1)  # still buffered, and ranked already
    assert await rankings.seasons.flush() is True
    standing = await rankings.standing(1)
    assert (standing.messages, standing.message_rank) == (1, 1)


async def test_standing_during_a_concurrent_flush_counts_everything_once(
    rankings: Rankings, tracker: ActivityService, rank_storage: Storage
) -> None:
    send(tracker, 1, 3)
    assert await rankings.seasons.flush() is True
    send(tracker, 1, 2)  # 3 written, 2 buffered: 5 in all

    busy, gate = threading.Event(), threading.Event()

    def occupy_db_thread() -> None:  # any query in progress, e.g. a leaderboard refresh
        busy.set()
        assert gate.wait(10)

    blocker = asyncio.ensure_future(rank_storage.run(occupy_db_thread))
    assert await asyncio.to_thread(busy.wait, 10)
    reading = asyncio.create_task(rankings.standing(1))
    await asyncio.sleep(0)  # standing() has queued its totals query
    flushing = asyncio.create_task(rankings.seasons.flush())  # the periodic flush, while standing() reads
    await asyncio.sleep(0)
    gate.set()
    await blocker
    assert await flushing is True
    standing = await reading
    assert standing.messages == 5


async def test_standing_of_an_earlier_season_leaves_out_current_activity(
    rankings: Rankings, tracker: ActivityService
) -> None:
    send(tracker, 1, 3)
    assert await rankings.seasons.roll(reason="test") is not None
    send(tracker, 1, 2)  # buffered for season 2
    assert (await rankings.standing(1, 1)).messages == 3
    assert (await rankings.standing(1)).messages == 2


def test_a_changed_ttl_applies_from_the_next_entry() -> None:
    clock = FakeClock(0.0)
    ttl = 10.0
    cache = TopCache(lambda: ttl, timer=clock)
    cache.put("old", 1)
    ttl = 100.0  # CACHE_TTL changed at run time
    cache.put("new", 2)
    clock.set(50.0)
    assert (cache.get("old"), cache.get("new")) == (None, 2)


async def test_a_roll_drops_every_cached_top(rankings: Rankings, tracker: ActivityService) -> None:
    send(tracker, 1, 2)
    assert await rankings.seasons.flush() is True
    await rankings.top("voice", 10)
    await rankings.top("messages", 10)
    assert len(rankings.cache) == 2
    assert await rankings.seasons.roll(reason="test") is not None
    assert len(rankings.cache) == 0


# --------------------------------------------------------------------------- answers while the database is away


async def occupy_database(storage: Storage) -> tuple[threading.Event, asyncio.Future[bool]]:
    """Reads are stuck (a stalled disk, a file locked against readers too)."""
    gate, busy = threading.Event(), threading.Event()

    def stuck() -> bool:
        busy.set()
        return gate.wait(10)

    job = asyncio.ensure_future(storage.read(stuck))
    assert await asyncio.to_thread(busy.wait, 5)
    return gate, job


async def test_a_command_answers_from_the_last_top_read_when_the_database_is_stuck(
    rankings: Rankings, tracker: ActivityService
) -> None:
    send(tracker, 1, 3)
    assert await rankings.seasons.flush() is True
    fresh = await rankings.top_for_reply("messages", 10)
    assert fresh.entries == entries((1, 3.0)) and fresh.stale is False
    rankings.cache.invalidate()
    gate, job = await occupy_database(rankings.storage)
    try:
        reply = await asyncio.wait_for(rankings.top_for_reply("messages", 10, patience=0.05), 1.0)
        assert reply.entries == entries((1, 3.0)) and reply.stale is True
        assert rankings.stale_answers == 1
    finally:
        gate.set()
    assert await job is True
    again = await rankings.top_for_reply("messages", 10)
    assert again.stale is False  # the database is back: fresh figures, no note


async def test_with_nothing_read_before_a_command_waits_for_the_database(rankings: Rankings) -> None:
    gate, job = await occupy_database(rankings.storage)
    reply = asyncio.ensure_future(rankings.top_for_reply("voice", 10, patience=0.05))
    await asyncio.sleep(0.2)
    assert not reply.done()  # no figures to fall back on: it waits rather than show nothing
    gate.set()
    assert (await reply).stale is False
    await job


async def test_a_failing_read_falls_back_to_the_last_top_read(
    rankings: Rankings, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(tracker, 2, 1)
    assert await rankings.seasons.flush() is True
    await rankings.top_for_reply("messages", 10)
    rankings.cache.invalidate()

    def broken(*_: object) -> list[RankedEntry]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(repository, "top", broken)
    reply = await rankings.top_for_reply("messages", 10)
    assert reply.entries == entries((2, 1.0)) and reply.stale is True


async def test_stats_answer_from_the_last_standing_when_reads_are_stuck(
    rankings: Rankings, tracker: ActivityService
) -> None:
    send(tracker, 7, 4)
    assert await rankings.seasons.flush() is True
    first = await rankings.standing_for_reply(7)
    assert (first.messages, first.message_rank, first.stale) == (4, 1, False)
    gate, job = await occupy_database(rankings.storage)
    try:
        reply = await asyncio.wait_for(rankings.standing_for_reply(7, patience=0.05), 1.0)
    finally:
        gate.set()
    assert (reply.messages, reply.message_rank, reply.stale) == (4, 1, True)
    await job


async def test_a_command_never_waits_for_a_flush_nor_a_write_stuck_on_the_database_thread(
    rankings: Rankings, tracker: ActivityService
) -> None:
    send(tracker, 7, 4)
    assert await rankings.seasons.flush() is True
    send(tracker, 7, 1)
    gate, busy = threading.Event(), threading.Event()

    def stuck_write() -> bool:  # a write in its busy wait on a lock a backup holds
        busy.set()
        return gate.wait(10)

    async with tracker.quiescent():  # ...holding the flush lock meanwhile
        job = asyncio.ensure_future(rankings.storage.run(stuck_write))
        assert await asyncio.to_thread(busy.wait, 5)
        try:
            standing = await asyncio.wait_for(rankings.standing_for_reply(7), 1.0)
            top = await asyncio.wait_for(rankings.top_for_reply("messages", 10), 1.0)
        finally:
            gate.set()
        await job
    assert (standing.messages, standing.message_rank, standing.stale) == (5, 1, False)
    assert top.entries == entries((7, 5.0))


async def test_figures_read_while_writes_fail_are_marked_stale(
    rankings: Rankings, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(tracker, 3, 1)
    with monkeypatch.context() as patch:

        def locked(batch: ActivityBatch) -> None:
            raise sqlite3.OperationalError("database is locked")

        patch.setattr(repository, "apply_batch", locked)
        assert await rankings.seasons.flush() is False
        # The database reads fine, but what was counted is not in it yet.
        assert (await rankings.top_for_reply("messages", 10)).stale is True
        standing = await rankings.standing_for_reply(3)
        assert standing.messages == 1 and standing.stale is True
    assert await rankings.seasons.flush() is True
    rankings.cache.invalidate()
    assert (await rankings.top_for_reply("messages", 10)).stale is False


async def test_a_standing_read_while_a_write_is_under_way_counts_the_write_once(
    rankings: Rankings, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(tracker, 9, 2)
    assert await rankings.seasons.flush() is True
    gate, busy = threading.Event(), threading.Event()
    real = repository.apply_batch

    def slow(batch: ActivityBatch) -> None:
        busy.set()
        assert gate.wait(10)
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", slow)
    send(tracker, 9, 3)
    flushing = asyncio.ensure_future(rankings.seasons.flush())
    assert await asyncio.to_thread(busy.wait, 5)
    send(tracker, 9, 1)  # arrives while the write of 3 is under way
    during = await rankings.standing(9)
    assert during.messages == 6  # 2 stored + 3 in the write + 1 buffered
    gate.set()
    assert await flushing is True
    assert (await rankings.standing(9)).messages == 6


async def test_a_write_committing_between_the_capture_and_the_read_means_reading_again(
    rankings: Rankings, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(tracker, 4, 2)
    assert await rankings.seasons.flush() is True
    send(tracker, 4, 3)
    real = repository.write_sequence
    seen: list[int] = []
    loop = asyncio.get_running_loop()

    def racing(guild: int) -> int:
        if not seen:  # the flush of the 3 buffered commits after the capture, before this snapshot
            asyncio.run_coroutine_threadsafe(rankings.seasons.flush(), loop).result(5)
        seen.append(real(guild))
        return seen[-1]

    monkeypatch.setattr(repository, "write_sequence", racing)
    standing = await rankings.standing(4)
    assert (standing.messages, standing.message_rank) == (5, 1)  # not 8 (the 3 counted twice)
    # The first snapshot did not match the capture: read again (the flush also counts the boards).
    assert len(seen) >= 2 and len(set(seen)) == 1


# --------------------------------------------------------------------------- live figures


async def test_the_top_and_a_callers_rank_agree_and_include_unwritten_counts(
    rankings: Rankings, tracker: ActivityService, rank_storage: Storage
) -> None:
    """The issue's example: "#10 Bob — 100" must never sit above "Your rank: #11 — 104"."""
    await write_behind_cache(rank_storage, messages={100 + i: 200 - i for i in range(9)} | {7: 100, 8: 99})
    send(tracker, 8, 5)  # member 8: 99 stored + 5 buffered = 104, ahead of member 7 (100)
    view = await rankings.view("messages", 10, caller=8)
    assert len(view.entries) == 10 and view.entries[-1] == RankedEntry(8, 104.0)  # #10, and Bob is out
    assert view.caller is None  # in the top: no separate line
    standing = await rankings.standing(8)
    assert (standing.messages, standing.message_rank) == (104, 10)
    outside = await rankings.view("messages", 10, caller=7)
    assert (outside.caller, outside.caller_rank) == (RankedEntry(7, 100.0), 11)
    assert (await rankings.standing(7)).message_rank == 11


async def test_live_figures_match_a_brute_force_truth_through_flushes_failures_and_cache_hits(
    rankings: Rankings, tracker: ActivityService, rank_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    rng = random.Random(7)
    real = repository.apply_batch
    failing = [False]

    def maybe_failing(batch: ActivityBatch) -> None:
        if failing[0]:
            raise sqlite3.OperationalError("database is locked")
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", maybe_failing)
    members = list(range(1, 41))
    messages: dict[int, int] = {}
    joined: dict[int, float] = {}
    voice: dict[int, float] = {}

    def truth(board: str) -> dict[int, float]:
        if board == "messages":
            return {u: float(n) for u, n in messages.items() if n > 0}
        now = rank_clock.now
        live = dict(voice)
        for user, since in joined.items():
            live[user] = live.get(user, 0.0) + (now - since)
        return {u: s for u, s in live.items() if s > 0}

    for _step in range(120):
        action = rng.random()
        if action < 0.55:
            user = rng.choice(members)
            count = rng.randint(1, 4)
            send(tracker, user, count)
            messages[user] = messages.get(user, 0) + count
        elif action < 0.65:
            user = rng.choice(members[:12])
            if user in joined:
                tracker.record_voice(user, None)
                voice[user] = voice.get(user, 0.0) + rank_clock.now - joined.pop(user)
            else:
                tracker.record_voice(user, here(CH))
                joined[user] = rank_clock.now
        elif action < 0.8:
            failing[0] = rng.random() < 0.3
            await rankings.seasons.flush()
        rank_clock.advance(rng.choice([0.0, 1.0, 2.5]))
        for board in ("messages", "voice"):
            expected = sorted(truth(board).items(), key=lambda item: (-item[1], item[0]))
            limit = rng.choice([1, 3, 10])
            got = await rankings.top(board, limit)  # type: ignore[arg-type]
            assert [(e.user_id, round(e.value, 6)) for e in got] == [
                (u, round(v, 6)) for u, v in expected[:limit]
            ], (board, limit)
        user = rng.choice(members)
        standing = await rankings.standing(user)
        for board, rank, value in (
            ("messages", standing.message_rank, float(standing.messages)),
            ("voice", standing.voice_rank, standing.voice_seconds),
        ):
            order = [u for u, _ in sorted(truth(board).items(), key=lambda item: (-item[1], item[0]))]
            assert rank == (order.index(user) + 1 if user in order else None), (board, user)
            assert round(value, 6) == round(truth(board).get(user, 0.0), 6)
    assert rankings.cache.hits > 0  # the cache served along the way, merged, and stayed exact


async def test_what_is_kept_to_merge_flushes_stays_bounded(
    rankings: Rankings, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leaderboard_bot.services import ranking

    monkeypatch.setattr(ranking, "KNOWN_AT_MOST", 20)
    monkeypatch.setattr(ranking, "MERGE_AT_MOST", 5)
    for round_ in range(10):
        for user in range(round_ * 10, round_ * 10 + 10):  # ten new members each round
            send(tracker, user, 1)
        await rankings.top("messages", 3)  # a read learns the stored counts of all ten
        assert await rankings.seasons.flush() is True
        assert len(rankings._known) <= 20 + 10  # cleared once past the bound, never growing with members
    assert len(rankings.cache) <= 1
    top = await rankings.top("messages", 3)
    assert top == entries((0, 1.0), (1, 1.0), (2, 1.0))  # still exact after the drops


async def test_messages_sent_while_the_roll_is_written_are_not_shown_in_the_finished_season(
    rankings: Rankings, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the roll batch of season 1 is in flight, the buffers hold season 2's activity,
    yet unwritten(1) adds them to season 1's figures (in_flight.season == 1 passes the check)."""
    send(tracker, 1, 3)
    assert await rankings.seasons.flush() is True
    gate, busy = threading.Event(), threading.Event()
    real = repository.apply_batch

    def slow(batch: ActivityBatch) -> None:
        if batch.roll is not None:
            busy.set()
            assert gate.wait(10)
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", slow)
    send(tracker, 1, 2)  # season 1: in the roll batch
    rolling = asyncio.ensure_future(rankings.seasons.roll(reason="test"))
    assert await asyncio.to_thread(busy.wait, 5)
    send(tracker, 2, 7)  # after the roll was taken: season 2
    assert rankings.seasons.current_number() == 1
    top = await rankings.top("messages", 10, season=1)
    standing = await rankings.standing(2, season=1)
    gate.set()
    assert await rolling is not None
    final = await rankings.top("messages", 10, season=1)
    assert final == [RankedEntry(1, 5.0)]
    assert (standing.messages, standing.message_rank) == (0, None), standing
    assert top == [RankedEntry(1, 5.0)], top  # member 2's 7 messages belong to season 2


@pytest.mark.parametrize("seed", range(6))
async def test_ranks_and_tops_on_a_big_board_with_ties_match_brute_force(
    seed: int, rankings: Rankings, tracker: ActivityService, rank_storage: Storage, rank_clock: FakeClock
) -> None:
    rng = random.Random(seed)
    members = list(range(1, 301))
    messages = {u: rng.choice([0, 1, 2, 3, 5, 8]) for u in members}
    voice = {u: rng.choice([0.0, 0.25, 0.5, 1.0, 2.0]) for u in members}
    await write_behind_cache(
        rank_storage,
        messages={u: n for u, n in messages.items() if n},
        voice={u: s for u, s in voice.items() if s},
    )
    joined: dict[int, float] = {}

    def truth(board: str) -> list[tuple[int, float]]:
        if board == "messages":
            live = {u: float(n) for u, n in messages.items()}
        else:
            live = dict(voice)
            for u, since in joined.items():
                live[u] = live.get(u, 0.0) + rank_clock.now - since
        return sorted(((u, v) for u, v in live.items() if v > 0), key=lambda x: (-x[1], x[0]))

    for step in range(60):
        r = rng.random()
        if r < 0.5:
            u = rng.choice(members)
            n = rng.choice([1, 2, 3])
            send(tracker, u, n)
            messages[u] += n
        elif r < 0.7:
            u = rng.choice(members)
            if u in joined:
                tracker.record_voice(u, None)
                voice[u] += rank_clock.now - joined.pop(u)
            else:
                tracker.record_voice(u, here(CH))
                joined[u] = rank_clock.now
        elif r < 0.8:
            assert await rankings.seasons.flush() is True
        rank_clock.advance(rng.choice([0.0, 0.25, 0.5]))
        for board in ("messages", "voice"):
            order = truth(board)
            limit = rng.choice([1, 5, 10])
            got = await rankings.top(board, limit)  # type: ignore[arg-type]
            assert [(e.user_id, e.value) for e in got] == order[:limit], (step, board)
            for _ in range(3):
                u = rng.choice(members)
                standing = await rankings.standing(u)
                rank = standing.message_rank if board == "messages" else standing.voice_rank
                ids = [x for x, _ in order]
                assert rank == (ids.index(u) + 1 if u in ids else None), (step, board, u)
                view = await rankings.view(board, limit, caller=u)  # type: ignore[arg-type]
                if u in ids and ids.index(u) >= limit:
                    assert view.caller_rank == ids.index(u) + 1, (step, board, u)


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize("seed", range(3))
async def test_window_figures_match_the_days_they_cover_through_midnights_and_failures(
    seed: int, rankings: Rankings, tracker: ActivityService, rank_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today, the last 7 and 30 days and all time, live (stored + unwritten) against a per-day
    ledger, over 40 days. A window moves with the first write after midnight, so each new day
    starts with a write (the documented lag) before the figures are compared."""
    rng = random.Random(seed)
    real = repository.apply_batch
    failing = [False]

    def maybe_failing(batch: ActivityBatch) -> None:
        if failing[0]:
            raise sqlite3.OperationalError("database is locked")
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", maybe_failing)
    calendar = tracker.calendar
    members = list(range(1, 25))
    ledger: dict[tuple[str, int], list[float]] = {}  # (day, user) -> [messages, voice seconds]
    joined: dict[int, float] = {}

    def credit(user: int, start: float, end: float) -> None:
        for day_name, seconds in calendar.split(start, end):
            ledger.setdefault((day_name, user), [0.0, 0.0])[1] += seconds

    def truth(window: Window, board: str) -> dict[int, float]:
        today = calendar.day_of(rank_clock.now)
        first = "" if window.days is None else shift_day(today, 1 - window.days)
        out: dict[int, float] = {}
        for (day_name, user), (n, s) in ledger.items():
            if day_name >= first:
                out[user] = out.get(user, 0.0) + (n if board == "messages" else s)
        for user, since in joined.items():
            if board == "voice":
                for day_name, seconds in calendar.split(since, rank_clock.now):
                    if day_name >= first:
                        out[user] = out.get(user, 0.0) + seconds
        return {u: v for u, v in out.items() if v > 1e-9}

    day_before = calendar.day_of(rank_clock.now)
    for _step in range(160):
        action = rng.random()
        if action < 0.5:
            user = rng.choice(members)
            count = rng.randint(1, 3)
            send(tracker, user, count)
            ledger.setdefault((calendar.day_of(rank_clock.now), user), [0.0, 0.0])[0] += count
        elif action < 0.62:
            user = rng.choice(members[:8])
            if user in joined:
                tracker.record_voice(user, None)
                credit(user, joined.pop(user), rank_clock.now)
            else:
                tracker.record_voice(user, here(CH))
                joined[user] = rank_clock.now
        elif action < 0.8:
            failing[0] = rng.random() < 0.25
            await rankings.seasons.flush()
        rank_clock.advance(rng.choice([60.0, 3_600.0, 5 * 3_600.0, 2 * 86_400.0 if rng.random() < 0.1 else 600.0]))
        if calendar.day_of(rank_clock.now) != day_before:
            failing[0] = False
            assert await rankings.seasons.flush() is True  # the first write of the day moves the windows
            day_before = calendar.day_of(rank_clock.now)
        window = rng.choice([TODAY_WINDOW, WEEK, MONTH, ALL_TIME])
        for board in ("messages", "voice"):
            expected = sorted(truth(window, board).items(), key=lambda item: (-item[1], item[0]))
            got = await rankings.top(board, 5, season=window.scope)  # type: ignore[arg-type]
            assert [(e.user_id, round(e.value, 6)) for e in got] == [
                (u, round(v, 6)) for u, v in expected[:5]
            ], (window, board)
        user = rng.choice(members)
        standing = await rankings.standing(user, season=window.scope)
        for board, rank, value in (
            ("messages", standing.message_rank, float(standing.messages)),
            ("voice", standing.voice_rank, standing.voice_seconds),
        ):
            order = [u for u, _ in sorted(truth(window, board).items(), key=lambda item: (-item[1], item[0]))]
            assert rank == (order.index(user) + 1 if user in order else None), (window, board, user)
            assert round(value, 6) == round(truth(window, board).get(user, 0.0), 6)


async def test_a_flush_drops_cached_window_tops_and_keeps_the_seasons(
    rankings: Rankings, tracker: ActivityService
) -> None:
    send(tracker, 1, 2)
    assert await rankings.seasons.flush() is True
    await rankings.top("messages", 10, season=WEEK.scope)
    await rankings.top("messages", 10)
    assert len(rankings.cache) == 2
    send(tracker, 1, 1)
    assert await rankings.seasons.flush() is True
    assert [key[1] for key, _ in rankings.cache.items()] == [1]
    assert await rankings.top("messages", 10, season=WEEK.scope) == entries((1, 3.0))


async def test_the_best_finished_season_follows_each_roll(rankings: Rankings, tracker: ActivityService) -> None:
    await rankings.seasons.load()
    assert await rankings.best_finished(1) is None  # no finished season yet
    send(tracker, 1, 2)
    send(tracker, 2, 5)
    assert await rankings.seasons.roll(reason="test") is not None
    assert await rankings.best_finished(1) == Placing(1, "messages", 2, 2.0)
    send(tracker, 1, 9)
    assert await rankings.seasons.roll(reason="test") is not None
    assert await rankings.best_finished(1) == Placing(2, "messages", 1, 9.0)
    send(tracker, 2, 1)
    assert await rankings.seasons.roll(reason="test") is not None  # member 1 inactive: the best stays
    assert await rankings.best_finished(1) == Placing(2, "messages", 1, 9.0)
    assert await rankings.best_finished(2) == Placing(3, "messages", 1, 1.0)  # a later tie wins


async def test_a_flush_counts_the_boards_of_windows_ranked_lately_in_the_background(
    rankings: Rankings, tracker: ActivityService, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[tuple[int, ...]] = []
    count_ranked_boards = repository.count_ranked_boards

    def spy(guild_id: int, *scopes: int) -> None:
        counted.append(scopes)
        count_ranked_boards(guild_id, *scopes)

    monkeypatch.setattr(repository, "count_ranked_boards", spy)

    async def flush_and_count() -> tuple[int, ...]:
        counted.clear()
        assert await rankings.seasons.flush() is True
        assert rankings._counting is not None
        await rankings._counting
        return counted[-1]

    send(tracker, 1, 2)
    assert await flush_and_count() == (1,)  # only the season: no window was ranked
    await rankings.top("messages", 10, season=MONTH.scope)  # a top needs no count
    send(tracker, 1, 1)
    assert await flush_and_count() == (1,)
    await rankings.standing(1, season=WEEK.scope)
    send(tracker, 2, 1)
    assert await flush_and_count() == (1, WEEK.scope)
    guild = rankings.activity.guild_id

    def week_count_and_write() -> tuple[tuple[int, int, int] | None, int]:
        counts = repository._ranked.get(repository.database_proxy.obj, {})
        return counts.get((guild, WEEK.scope, "messages")), repository.write_sequence(guild)

    week_count, write = await rankings.storage.read(week_count_and_write)
    assert week_count == (write, 0, 2)  # the week's board, counted at the new write number (no erasure)
    monkeypatch.setattr("leaderboard_bot.services.ranking.WINDOW_RANKED_LATELY", -1.0)
    send(tracker, 2, 1)
    assert await flush_and_count() == (1,)  # not ranked lately: forgotten


async def test_today_after_midnight_holds_only_today_while_the_first_write_of_the_day_fails(
    rankings: Rankings, tracker: ActivityService, rank_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored today moves in the first write of a day; while that write fails (a database
    locked by a backup at midnight), the stored today is yesterday's: /top and /stats for today
    must not show it (found by a tester), nor a top cached before midnight."""
    send(tracker, 1, 5)
    send(tracker, 3, 2)
    assert await rankings.seasons.flush() is True
    assert await rankings.top("messages", 10, season=TODAY_WINDOW.scope) == entries((1, 5.0), (3, 2.0))
    monkeypatch.setattr(repository, "apply_batch", failing_write)
    rank_clock.set(MIDNIGHT + 86_400.0 + 600.0)  # ten minutes into the next day
    assert await rankings.seasons.flush() is False
    send(tracker, 2, 1)
    send(tracker, 3, 1)
    assert await rankings.top("messages", 10, season=TODAY_WINDOW.scope) == entries((2, 1.0), (3, 1.0))
    standing = await rankings.standing(1, season=TODAY_WINDOW.scope)
    assert (standing.messages, standing.message_rank) == (0, None)
    standing = await rankings.standing(3, season=TODAY_WINDOW.scope)
    assert (standing.messages, standing.message_rank) == (1, 2)
    # The season and the week still hold what was stored.
    assert await rankings.top("messages", 10) == entries((1, 5.0), (3, 3.0), (2, 1.0))
    assert await rankings.top("messages", 10, season=WEEK.scope) == entries((1, 5.0), (3, 3.0), (2, 1.0))
    monkeypatch.undo()
    assert await rankings.seasons.flush() is True  # the windows move: read as stored again
    assert await rankings.top("messages", 10, season=TODAY_WINDOW.scope) == entries((2, 1.0), (3, 1.0))


def failing_write(batch: ActivityBatch) -> None:
    raise sqlite3.OperationalError("database is locked")
