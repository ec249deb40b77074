"""What only PostgreSQL has: two processes writing at once, the pool of reader threads, the read
snapshot (REPEATABLE READ), and its failures in words. Skipped, with the reason, without a server."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import AsyncIterator

import pytest

from leaderboard_bot.db import repository
from leaderboard_bot.db.models import DailyActivity, MemberStats, database_proxy
from leaderboard_bot.db.storage import POSTGRES_READERS, Storage, StorageError, open_database
from leaderboard_bot.domain import ActivityBatch
from tests.conftest import close_database

G = 111
DAY = "2026-12-03"
MEMBERS = 60
BATCHES = 150


def batch(sequence: int | None = None, **kw: object) -> ActivityBatch:
    return ActivityBatch(guild_id=G, season=1, heartbeat_at=1_000.0, sequence=sequence, **kw)  # type: ignore[arg-type]


def _add_increments(url: str, start: threading.Barrier, worker: int) -> None:
    """One process: BATCHES flushes, each adding to every member (in its own order, with names)."""
    db = open_database(url)
    members = list(range(1, MEMBERS + 1))
    if worker % 2:
        members.reverse()  # the other process builds its batches in the opposite order
    start.wait(30)
    for n in range(BATCHES):
        repository.apply_batch(
            batch(
                messages={(DAY, u): 1 for u in members},
                voice={(DAY, u): 0.5 for u in members if (u + n) % 3 == 0},
                names={u: (f"member {u} of {worker}", None) for u in members},
            )
        )
    close_database(db)


def test_two_processes_adding_to_the_same_members_at_once_lose_nothing(postgres_url: str) -> None:
    close_database(open_database(postgres_url))  # migrated once, before both start
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_add_increments, args=(postgres_url, start, w)) for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [p.exitcode for p in workers] == [0, 0]
    db = open_database(postgres_url)
    try:
        voice_per_member = {
            u: 2 * 0.5 * sum(1 for n in range(BATCHES) if (u + n) % 3 == 0) for u in range(1, MEMBERS + 1)
        }
        stored = {r.user_id: (r.messages, r.voice_seconds) for r in MemberStats.select().where(MemberStats.season > 0)}
        assert stored == {u: (2 * BATCHES, voice_per_member[u]) for u in range(1, MEMBERS + 1)}
        daily = {r.user_id: (r.messages, r.voice_seconds) for r in DailyActivity.select()}
        assert daily == stored
    finally:
        close_database(db)


@pytest.fixture
async def storage(postgres_url: str) -> AsyncIterator[Storage]:
    storage = Storage(postgres_url)
    await storage.open()
    try:
        yield storage
    finally:
        assert await storage.close()


async def test_reads_run_on_a_small_pool_of_threads_each_on_its_own_connection(storage: Storage) -> None:
    together = threading.Barrier(POSTGRES_READERS)

    def meet() -> tuple[str, int]:
        together.wait(10)  # only passes if POSTGRES_READERS reads run at the same time
        backend = database_proxy.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        return threading.current_thread().name, int(backend)

    met = await asyncio.gather(*(storage.read(meet) for _ in range(POSTGRES_READERS)))
    assert len({name for name, _ in met}) == len({pid for _, pid in met}) == POSTGRES_READERS
    writer = await storage.run(threading.current_thread)
    assert writer.name == "leaderboard-db" and writer.name not in {name for name, _ in met}


async def test_a_read_transaction_sees_one_commit_and_a_later_read_sees_the_write(storage: Storage) -> None:
    await storage.run(repository.apply_batch, batch(sequence=1, messages={(DAY, 1): 1}))
    began, written = threading.Event(), threading.Event()

    def read() -> tuple[tuple[int, float], tuple[int, float], int, str]:
        with database_proxy.atomic():  # a plain transaction: on a reader thread it is a snapshot too
            first = repository.member_totals(G, 1, 1)
            began.set()
            written.wait(10)
            level = database_proxy.execute_sql("SHOW transaction_isolation").fetchone()[0]
            return first, repository.member_totals(G, 1, 1), repository.write_sequence(G), str(level)

    reading = asyncio.ensure_future(storage.read(read))
    assert await asyncio.to_thread(began.wait, 10)
    await storage.run(repository.apply_batch, batch(sequence=2, messages={(DAY, 1): 5}))
    written.set()
    first, again, sequence, level = await reading
    assert (first, again, sequence, level) == ((1, 0.0), (1, 0.0), 1, "repeatable read")
    # Asked after the write returned: sees it, on whichever reader.
    assert await storage.read(repository.member_totals, G, 1, 1) == (6, 0.0)
    assert await storage.read(repository.write_sequence, G) == 2


async def test_a_snapshot_on_the_writer_thread_is_one_commit_too(storage: Storage) -> None:
    def level() -> str:
        with repository.snapshot():
            return str(database_proxy.execute_sql("SHOW transaction_isolation").fetchone()[0])

    def write_level() -> str:
        with database_proxy.atomic():  # writes stay READ COMMITTED: an upsert adds to the latest row
            return str(database_proxy.execute_sql("SHOW transaction_isolation").fetchone()[0])

    assert await storage.run(level) == "repeatable read"
    assert await storage.run(write_level) == "read committed"


async def test_a_read_cannot_write(storage: Storage) -> None:
    def sneak() -> None:
        with database_proxy.atomic():
            repository._set_setting(G, "sneaky", 1)

    with pytest.raises(StorageError) as caught:
        await storage.read(sneak)
    assert caught.value.kind == "read-only"


async def test_a_server_that_cannot_be_reached_is_said_so() -> None:
    storage = Storage("postgresql://leaderboard@127.0.0.1:1/nowhere")
    with pytest.raises(StorageError) as caught:
        await storage.open()
    assert caught.value.kind == "unreachable", caught.value
    assert "cannot be reached" in caught.value.advice
    await storage.close()
