"""One flush of many distinct members: the bot's apply_batch against the v3 peewee path, same run.

    python bench/flush_scale.py [--members 100000] [--voice-share 0.1] [--rounds 3] [--database-url URL|pg]

Each round writes one batch of ``--members`` distinct members (each a few messages, ``--voice-share``
of them voice time too) into a fresh temp SQLite file twice: first as inserts (new members), then as
updates (the same members again). The baseline is the v3 way of writing the same counters (peewee
``insert_many(...).on_conflict(...)`` in 100-row chunks), timed on its own fresh file at the same
schema (v4: board indexes and size triggers included). Prints the best round of each, and the ratio
baseline / apply_batch.

``--busy`` times the flush while another thread runs Python non-stop, as the event loop does in a
burst of messages (exactly when a flush is big), with a name for every member as the bot's flush of
new members has: ``apply_batch`` handing SQLite many rows per statement against one statement per
row (``MULTI_ROW_INSERT_ROWS = 1``, as the executemany before it did: sqlite3 lets go of the GIL
around every statement), quiet and busy, same run; then a read of 5,000 members' stored counts
(one GIL hand-over per row) quiet and busy, at Python's default switch interval (5 ms) and at the
bot's (``__main__.GIL_SWITCH_INTERVAL``).

``--database-url`` times the same on PostgreSQL (benchmark 7): a server URL whose user may create
databases (each timing gets a fresh one, dropped after), or ``pg`` for a throw-away cluster started
from the installed PostgreSQL (tests/pg.py). Client and server share the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger
from peewee import EXCLUDED, chunked

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/pg.py: the PostgreSQL helpers

from leaderboard_bot.__main__ import GIL_SWITCH_INTERVAL
from leaderboard_bot.db import open_database, repository
from leaderboard_bot.db.models import DailyActivity, MemberStats, database_proxy
from leaderboard_bot.domain import ActivityBatch
from tests import pg

GUILD = 1
SEASON = 1
DAY = "2026-12-02"


def v3_add_counts(model: Any, key: tuple[Any, ...], rows: list[dict[str, Any]]) -> None:
    """The counters' write before this change (repository._add_counts at schema v3), the baseline."""
    for chunk in chunked(rows, 100):
        model.insert_many(chunk).on_conflict(
            conflict_target=list(key),
            update={
                model.messages: model.messages + EXCLUDED.messages,
                model.voice_seconds: model.voice_seconds + EXCLUDED.voice_seconds,
            },
        ).execute()


def v3_flush(batch: ActivityBatch) -> None:
    totals: dict[int, list[float]] = {}
    daily: dict[tuple[str, int], list[float]] = {}
    for (day, user), count in batch.messages.items():
        totals.setdefault(user, [0, 0.0])[0] += count
        daily.setdefault((day, user), [0, 0.0])[0] += count
    for (day, user), seconds in batch.voice.items():
        totals.setdefault(user, [0, 0.0])[1] += seconds
        daily.setdefault((day, user), [0, 0.0])[1] += seconds
    with database_proxy.atomic():
        v3_add_counts(
            MemberStats,
            (MemberStats.guild_id, MemberStats.season, MemberStats.user_id),
            [
                {"guild_id": GUILD, "season": SEASON, "user_id": u, "messages": int(m), "voice_seconds": float(v)}
                for u, (m, v) in totals.items()
            ],
        )
        v3_add_counts(
            DailyActivity,
            (DailyActivity.guild_id, DailyActivity.day, DailyActivity.user_id),
            [
                {"guild_id": GUILD, "day": d, "user_id": u, "messages": int(m), "voice_seconds": float(v)}
                for (d, u), (m, v) in daily.items()
            ],
        )


def make_batch(members: int, voice_share: float, rng: random.Random) -> ActivityBatch:
    users = [rng.randrange(10**17, 10**18) for _ in range(members)]  # snowflakes arrive in no order
    messages = {(DAY, u): rng.randint(1, 5) for u in users}
    voice = {(DAY, u): rng.uniform(1.0, 60.0) for u in users if rng.random() < voice_share}
    return ActivityBatch(guild_id=GUILD, season=SEASON, heartbeat_at=time.time(), messages=messages, voice=voice)


def time_flushes(url: str, flush: Any, batch: ActivityBatch) -> tuple[float, float]:
    db = open_database(url)
    try:
        times = []
        for _ in ("insert", "update"):
            start = time.perf_counter()
            flush(batch)
            times.append(time.perf_counter() - start)
        # The season's rows (apply_batch also writes the windows' rows under negative scopes).
        total = MemberStats.select().where(MemberStats.season == SEASON).count()
        assert total == len({u for _, u in batch.messages}), total
        return times[0], times[1]
    finally:
        getattr(db, "close_all", db.close)()  # a pool: every connection


def rounds(
    count: int,
    batch: ActivityBatch,
    best: dict[str, list[float]],
    fresh: Callable[[str], str],
    drop: Callable[[str], None],
) -> None:
    for round_ in range(count):
        for label, flush in (("v3", v3_flush), ("v4", repository.apply_batch)):
            url = fresh(f"{label}-{round_}")
            ins, upd = time_flushes(url, flush, batch)
            drop(url)
            best[label] = [min(best[label][0], ins), min(best[label][1], upd)]


class Busy:
    """Another thread running Python without pause (the event loop in a burst), while in use."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self.spins = 0

    def _spin(self) -> None:
        while not self._stop.is_set():
            for _ in range(1_000):
                self.spins += 1

    def __enter__(self) -> Busy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def busy_rounds(count: int, batch: ActivityBatch, tmp: str) -> None:
    batch.names = {u: (f"Member {u}", f"member{u}") for _, u in batch.messages}
    per_statement = repository.MULTI_ROW_INSERT_ROWS
    best: dict[tuple[str, bool], list[float]] = {}
    for round_ in range(count):
        for label, rows in (("many rows per statement", per_statement), ("one row per statement", 1)):
            for busy in (False, True):
                repository.MULTI_ROW_INSERT_ROWS = rows
                url = f"sqlite:///{tmp}/busy-{round_}-{rows}-{busy}.db"
                if busy:
                    with Busy():
                        ins, upd = time_flushes(url, repository.apply_batch, batch)
                else:
                    ins, upd = time_flushes(url, repository.apply_batch, batch)
                old = best.get((label, busy), [1e9, 1e9])
                best[(label, busy)] = [min(old[0], ins), min(old[1], upd)]
    repository.MULTI_ROW_INSERT_ROWS = per_statement
    reads = busy_reads(batch, tmp, count)
    members = len(batch.messages)
    print(f"one flush of {members} distinct members with their names on SQLite, best of {count}:")
    for (label, busy), (ins, upd) in best.items():
        print(f"  {label:24} {'busy' if busy else 'quiet'}: insert {ins:7.3f} s   update {upd:7.3f} s")
    for i, kind in enumerate(("insert", "update")):
        many, one = best[("many rows per statement", True)][i], best[("one row per statement", True)][i]
        print(f"  busy {kind}: one row per statement / many rows per statement {one / many:6.1f}x")
    read_members = min(READ_MEMBERS, members)
    print(f"reading the stored counts of {read_members} members (repository.totals_of), best of {count}:")
    for interval, (quiet, busy) in reads.items():
        label = "bot's" if interval == GIL_SWITCH_INTERVAL else "Python's default"
        timings = f"quiet {quiet * 1000:7.1f} ms   busy {busy * 1000:7.1f} ms"
        print(f"  switch interval {interval * 1000:g} ms ({label}): {timings}")


READ_MEMBERS = 5_000


def busy_reads(batch: ActivityBatch, tmp: str, count: int) -> dict[float, tuple[float, float]]:
    """A read of many rows (the stored counts of members with unwritten counts, as a /top during a
    burst makes) quiet and busy, at Python's default switch interval and at the bot's."""
    users = sorted({u for _, u in batch.messages})[:READ_MEMBERS]
    db = open_database(f"sqlite:///{tmp}/reads.db")
    default = sys.getswitchinterval()
    results: dict[float, tuple[float, float]] = {}
    try:
        repository.apply_batch(batch)
        for interval in (0.005, GIL_SWITCH_INTERVAL):
            sys.setswitchinterval(interval)
            best = [1e9, 1e9]
            for _ in range(count):
                for i, busy in enumerate((False, True)):
                    with Busy() if busy else contextlib.nullcontext():
                        start = time.perf_counter()
                        assert len(repository.totals_of(GUILD, SEASON, users)) == len(users)
                        best[i] = min(best[i], time.perf_counter() - start)
            results[interval] = (best[0], best[1])
    finally:
        sys.setswitchinterval(default)
        db.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--voice-share", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="PostgreSQL: a server URL that may create databases, or pg")
    parser.add_argument("--busy", action="store_true", help="the flush while the event loop is busy")
    args = parser.parse_args()
    logger.remove()
    rng = random.Random(7)
    batch = make_batch(args.members, args.voice_share, rng)
    if args.busy:
        with tempfile.TemporaryDirectory() as tmp:
            busy_rounds(args.rounds, batch, tmp)
        return
    best: dict[str, list[float]] = {"v3": [1e9, 1e9], "v4": [1e9, 1e9]}
    with tempfile.TemporaryDirectory() as tmp:
        if args.database_url:
            with pg.server(args.database_url) as admin:

                def fresh(name: str) -> str:
                    return pg.create_database(admin, prefix="lb_bench")

                rounds(args.rounds, batch, best, fresh, lambda url: pg.drop_database(admin, url))
        else:
            rounds(args.rounds, batch, best, lambda name: f"sqlite:///{tmp}/{name}.db", lambda url: None)
    voiced = len(batch.voice)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(f"one flush of {args.members} distinct members ({voiced} with voice) on {backend}, best of {args.rounds}:")
    for i, kind in enumerate(("insert", "update")):
        old, new = best["v3"][i], best["v4"][i]
        print(
            f"  {kind}: apply_batch {new:6.3f} s   v3 peewee insert_many (baseline) {old:6.3f} s   "
            f"ratio {old / new:4.1f}x"
        )


if __name__ == "__main__":
    main()
