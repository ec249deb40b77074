"""Windows (today, week, month, all-time) at a million members with 30 days of daily buckets.

    python bench/windows_scale.py [--members 1000000] [--days-per-member 30] [--samples 300] [--rounds 3]
                                  [--flush-members 100000] [--database-url URL|pg]

Builds a scratch database with the migrations: ``--members`` members, each with a daily bucket on
``--days-per-member`` of the last 30 days (default every day: 30 buckets per member), written in SQL
(``INSERT ... SELECT`` from a members table crossed with a days table, one statement per day).
Values are heavy-tailed: each member's activity level is a Pareto draw, so most members have level 1
and tie on small counts, a few have thousands; voice for 30 % of them. Two seasons cover the 30 days
(the finished one the first 16, the current one the last 14), their totals the sums of their
buckets. Then it times, in this order:

1. the first build of the windows after an upgrade (``repository.prepare_windows``, which runs
   ``rebuild_windows``), and checks a few members' windows against their buckets;
2. ``repository.top`` and ``repository.rank_of`` on both boards of every scope: the current season
   (the baseline, same run), today, week, month and all-time. ``--samples`` members per board,
   spread over the board, rank 1 and the very last included, each rank checked against the true
   position, warm. As in the bot, each board's ranked count is counted after every write by
   ``count_ranked_boards`` (off the hot path) for the season and for every window ranked in the
   last 5 minutes; the first rank of a window nobody ranked for 5 minutes counts its board inline
   (and finds its median): that cold rank is printed on its own;
3. one flush of ``--flush-members`` distinct members (10 % with voice) on today: ``apply_batch`` as
   it is now (season, all-time, today, week, month, daily buckets) against the write before windows
   (``_add_counters`` on the season totals and the daily buckets, the heartbeat and the write
   number), each as inserts (members new to the database) and updates (members already stored,
   spread over the whole board), best of ``--rounds``, on the big database (each round adds new
   members);
4. ``move_windows`` by one day (midnight: the expired day subtracted from week and month, today
   emptied), then by a gap of 3 days, while another connection times the week board's ``rank_of``
   and ``top``; checks a few members against their buckets again.

``--database-url`` runs the same on PostgreSQL: a server URL whose user may create databases (a
fresh one is made and dropped), or ``pg`` for a throw-away cluster (tests/pg.py); there ``VACUUM
(ANALYZE)`` stands in for ``PRAGMA optimize`` after the fill (checked at 5,000 members only). The
scratch SQLite file lives in a temporary directory under /tmp and is deleted at the end: at the
defaults about 2 GB (3.4 GB before schema v8) and 6-7 minutes on a 2-core machine, the fill 30 s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loguru import logger
from peewee import Database, PostgresqlDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/pg.py: the PostgreSQL helpers

from leaderboard_bot.db import open_database, repository
from leaderboard_bot.db.models import database_proxy
from leaderboard_bot.db.storage import optimize
from leaderboard_bot.domain import ALL_TIME, MONTH, TODAY, WEEK, ActivityBatch, Board, shift_day
from tests import pg

GUILD = 1
FINISHED_SEASON, SEASON = 1, 2
DAY = "2026-12-03"  # the last of the 30 days: "today" when the windows are built
SPAN = 30
FIRST_DAY = shift_day(DAY, 1 - SPAN)
SEASON_STARTS = 16  # day index (0 = FIRST_DAY) the current season starts on
READ_EVERY = 0.05  # seconds between reads while the windows move (20 commands a second)
BOARDS: tuple[Board, ...] = ("messages", "voice")
SCOPES = (("season", SEASON), ("today", TODAY.scope), ("week", WEEK.scope), ("month", MONTH.scope))
SCOPES += (("all-time", ALL_TIME.scope),)

# One member's bucket on day index d (0..29): level m, doubled on one day in five (staggered by
# member); voice level v (0 for most), between half and 1.5 times it. Pure SQL, both backends
# (psycopg takes a lone % for a placeholder: fill() doubles it there).
MESSAGES_EXPR = 'm."m" * (CASE WHEN (m."idx" * 13 + d."d" * 7) % 5 = 0 THEN 2 ELSE 1 END)'
VOICE_EXPR = 'm."v" * (0.5 + ((m."idx" * 11 + d."d" * 5) % 7) / 6.0)'


def has_bucket(days_per_member: int) -> str:
    """Which (member, day) pairs have a bucket: every member on ``days_per_member`` of the 30 days,
    staggered, so each day has about the same number of members."""
    return f'(m."idx" + d."d") % {SPAN} < {days_per_member}'


def fill(db: Database, members: int, days_per_member: int, rng: random.Random) -> None:
    postgres = isinstance(db, PostgresqlDatabase)
    p = db.param
    escape = (lambda sql: sql.replace("%", "%%")) if postgres else (lambda sql: sql)
    messages, voice, bucket = escape(MESSAGES_EXPR), escape(VOICE_EXPR), escape(has_bucket(days_per_member))
    key = '"user_id" BIGINT PRIMARY KEY' if postgres else '"user_id" INTEGER PRIMARY KEY'  # SQLite: the rowid
    db.execute_sql(
        f'CREATE TABLE "bench_member" ({key}, "idx" BIGINT NOT NULL, "m" BIGINT NOT NULL, "v" REAL NOT NULL)'
    )
    db.execute_sql('CREATE TABLE "bench_day" ("d" BIGINT PRIMARY KEY, "day" VARCHAR(10) NOT NULL)')
    rows = []
    for i in range(members):
        level = int(rng.paretovariate(1.2))  # >= 1: most members 1, a few thousands (over 30 days)
        voice_level = rng.paretovariate(1.1) * 60.0 if rng.random() < 0.3 else 0.0
        rows.append((member_id(i), i, level, voice_level))  # in id order
    with db.atomic():
        db.cursor().executemany(f'INSERT INTO "bench_member" VALUES ({p}, {p}, {p}, {p})', rows)
        db.cursor().executemany(
            f'INSERT INTO "bench_day" VALUES ({p}, {p})', [(d, shift_day(FIRST_DAY, d)) for d in range(SPAN)]
        )
    del rows
    started = time.perf_counter()
    for d in range(SPAN):  # one day at a time, members in id order: each insert lands at the index's end
        with db.atomic():
            db.execute_sql(
                'INSERT INTO "daily_activity" ("guild_id", "day", "user_id", "messages", "voice_seconds") '
                f'SELECT {p}, d."day", m."user_id", {messages}, {voice} '
                f'FROM "bench_day" AS d CROSS JOIN "bench_member" AS m WHERE d."d" = {p} '
                f'AND {bucket} ORDER BY m."user_id"',
                (GUILD, d),
            )
        if d in (0, SPAN // 2 - 1):
            done = d + 1
            eta = (time.perf_counter() - started) / done * (SPAN - done)
            print(f"  daily buckets: {done}/{SPAN} days written, about {eta:.0f} s to go", flush=True)
    for season, first, last in ((FINISHED_SEASON, 0, SEASON_STARTS - 1), (SEASON, SEASON_STARTS, SPAN - 1)):
        with db.atomic():  # the season's totals: the sums of its days' buckets, the same expressions
            db.execute_sql(
                'INSERT INTO "member_stats" ("guild_id", "season", "user_id", "messages", "voice_seconds") '
                f'SELECT {p}, {p}, m."user_id", SUM({messages}), SUM({voice}) '
                f'FROM "bench_member" AS m CROSS JOIN "bench_day" AS d WHERE d."d" BETWEEN {p} AND {p} '
                f'AND {bucket} GROUP BY m."user_id" ORDER BY m."user_id"',
                (GUILD, season, first, last),
            )
    now = time.time()
    with db.atomic():
        start = now - (SPAN - SEASON_STARTS) * 86_400.0
        finished = (GUILD, FINISHED_SEASON, start - SEASON_STARTS * 86_400.0, start, start, start)
        db.execute_sql(
            'INSERT INTO "season" ("guild_id", "number", "started_at", "ends_at", "ended_at", "announced_at") '
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}), ({p}, {p}, {p}, {p}, NULL, NULL)",
            (*finished, GUILD, SEASON, start, start + 30 * 86_400.0),
        )
        repository.set_setting(GUILD, repository.WRITE_SEQUENCE_KEY, 1)
    db.execute_sql('DROP TABLE "bench_day"')
    db.execute_sql('DROP TABLE "bench_member"')


def scalar(db: Database, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return db.execute_sql(sql, params).fetchone()[0]


def check_windows(db: Database, users: list[int], last_day: str) -> None:
    """Each window of these members equals the sum of their buckets on the window's days, and
    all-time the sum of their season totals."""
    p = db.param
    for user in users:
        for window in (TODAY, WEEK, MONTH):
            assert window.days is not None
            want = db.execute_sql(
                'SELECT COALESCE(SUM("messages"), 0), COALESCE(SUM("voice_seconds"), 0) FROM "daily_activity" '
                f'WHERE "guild_id" = {p} AND "day" BETWEEN {p} AND {p} AND "user_id" = {p}',
                (GUILD, shift_day(last_day, 1 - window.days), last_day, user),
            ).fetchone()
            got = repository.member_totals(GUILD, window.scope, user)
            if int(want[0]) != got[0] or abs(float(want[1]) - got[1]) > 1e-6:
                raise SystemExit(f"{window.period} of {user}: stored {got}, buckets say {want}")
        want = db.execute_sql(
            'SELECT SUM("messages"), SUM("voice_seconds") FROM "member_stats" '
            f'WHERE "guild_id" = {p} AND "season" > 0 AND "user_id" = {p}',
            (GUILD, user),
        ).fetchone()
        got = repository.member_totals(GUILD, ALL_TIME.scope, user)
        if int(want[0] or 0) != got[0] or abs(float(want[1] or 0.0) - got[1]) > 1e-6:
            raise SystemExit(f"all-time of {user}: stored {got}, seasons say {want}")


def sample_positions(count: int, samples: int, rng: random.Random) -> list[int]:
    picks = {0, count - 1, count // 2, count // 4, 3 * count // 4} if count else set()
    while len(picks) < min(samples, count):
        picks.add(rng.randrange(count))
    return sorted(picks)


def sampled_order(db: Database, scope: int, board: Board, positions: list[int]) -> list[tuple[int, int]]:
    """(position, user) at the sampled positions of the board's true order (walked once)."""
    column = "messages" if board == "messages" else "voice_seconds"
    p = db.param
    cursor = db.execute_sql(
        f'SELECT "user_id" FROM "member_stats" WHERE "guild_id" = {p} AND "season" = {p} AND "{column}" > 0 '
        f'ORDER BY "{column}" DESC, "user_id" ASC',
        (GUILD, scope),
    )
    wanted = set(positions)
    out = []
    for position, (user,) in enumerate(cursor):
        if position in wanted:
            out.append((position, int(user)))
    return out


def timed(func: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = func()
    return result, (time.perf_counter() - start) * 1000


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def summary(times: list[float], with_max: bool = True) -> str:
    ordered = sorted(times)
    text = f"p50 {statistics.median(ordered):7.2f} ms  p95 {percentile(ordered, 0.95):7.2f} ms"
    return text + (f"  max {ordered[-1]:7.2f} ms" if with_max else "")


def forget_counts(db: Database) -> None:
    """What the bot holds after a write: no ranked count at the new write number, medians kept."""
    repository._ranked.pop(db, None)


def measure_scope(db: Database, scope: int, samples: int, rng: random.Random) -> dict[Board, dict[str, Any]]:
    results: dict[Board, dict[str, Any]] = {}
    repository._medians.clear()
    forget_counts(db)
    prepared = 0.0
    for board in BOARDS:
        ranked = repository.ranked_count(GUILD, scope, board)
        picks = sampled_order(db, scope, board, sample_positions(ranked, samples, rng))
        row: dict[str, Any] = {"ranked": ranked, "first": None, "prepared": prepared}
        if scope != SEASON:  # cold: a window nobody ranked for 5 minutes counts its board inline
            mid = picks[len(picks) // 2][1]
            forget_counts(db)  # the very first also finds the board's median (kept for 5 minutes)
            _, row["median"] = timed(lambda b=board, u=mid: repository.rank_of(GUILD, scope, b, u))
            forget_counts(db)
            _, row["first"] = timed(lambda b=board, u=mid: repository.rank_of(GUILD, scope, b, u))
            forget_counts(db)
            _, row["count"] = timed(lambda b=board: repository.ranked_count(GUILD, scope, b, 1))
        # The bot counts the season's boards and those of windows ranked lately after every write,
        # off the hot path (Rankings.on_flush): the ranks below find them ready.
        forget_counts(db)
        _, prepared = timed(lambda: repository.count_ranked_boards(GUILD, scope))
        row["prepared"] = prepared
        times = []
        for position, user in picks:
            got, ms = timed(lambda b=board, u=user: repository.rank_of(GUILD, scope, b, u))
            if got != position + 1:
                raise SystemExit(f"scope {scope} {board}: rank of position {position + 1} came back as {got}")
            times.append(ms)
        row["ranks"] = times
        row["ends"] = (times[0], times[-1])
        row["top"] = [timed(lambda b=board: repository.top(GUILD, scope, b, 10))[1] for _ in range(100)]
        results[board] = row
    return results


def measure_reads(db: Database, samples: int, rng: random.Random) -> dict[str, dict[Board, dict[str, Any]]]:
    return {label: measure_scope(db, scope, samples, rng) for label, scope in SCOPES}


def print_reads(results: dict[str, dict[Board, dict[str, Any]]]) -> None:
    for board in BOARDS:
        base = results["season"][board]
        base_p50 = statistics.median(base["ranks"])
        base_top = statistics.median(base["top"])
        print(f"\n{board} board ({len(base['ranks'])} sampled per scope, rank 1 and the last included, all checked):")
        for label, _ in SCOPES:
            row = results[label][board]
            ranks, top_times = row["ranks"], row["top"]
            print(
                f"  {label:9} {row['ranked']:>9} ranked  rank_of {summary(ranks)}  #1/last "
                f"{row['ends'][0]:5.2f}/{row['ends'][1]:5.2f} ms  x{statistics.median(ranks) / base_p50:4.2f}"
            )
            print(
                f"  {'':9} {'':>9}         top 10  {summary(top_times, with_max=False)}  "
                f"x{statistics.median(top_times) / base_top:4.2f}"
            )
            print(
                f"  {'':9} {'':>9}         both boards counted after each write (background): "
                f"{row['prepared']:.1f} ms"
            )
            if row["first"] is not None:
                print(
                    f"  {'':9} {'':>9}         cold: first rank when not ranked for 5 minutes (counts the "
                    f"board inline): {row['first']:.1f} ms, of which the count {row['count']:.1f} ms; "
                    f"{row['median']:.1f} ms when it also finds the median"
                )


def make_batch(users: list[int], rng: random.Random, sequence: int) -> ActivityBatch:
    messages = {(DAY, u): rng.randint(1, 5) for u in users}
    voice = {(DAY, u): rng.uniform(1.0, 60.0) for u in users if rng.random() < 0.1}
    return ActivityBatch(
        guild_id=GUILD, season=SEASON, heartbeat_at=time.time(), messages=messages, voice=voice, sequence=sequence
    )


def flush_before_windows(batch: ActivityBatch) -> None:
    """apply_batch as it was before the windows (commit ae2f486's parent), for this batch: the
    season totals and the daily buckets, the voice heartbeat, the write number. The baseline."""
    messages: dict[int, int] = {}
    voice: dict[int, float] = {}
    for (_, user), count in batch.messages.items():
        messages[user] = messages.get(user, 0) + count
    for (_, user), seconds in batch.voice.items():
        voice[user] = voice.get(user, 0.0) + seconds
    with database_proxy.atomic():
        season_key = ("guild_id", "season", "user_id")
        repository._add_counters("member_stats", season_key, (batch.guild_id, batch.season), messages, voice)
        repository._add_counters(
            "daily_activity", ("guild_id", "day", "user_id"), (batch.guild_id,), batch.messages, batch.voice
        )
        repository.VoiceSession.update(last_seen_at=batch.heartbeat_at).where(
            (repository.VoiceSession.guild_id == batch.guild_id) & repository.VoiceSession.ended_at.is_null()
        ).execute()
        assert batch.sequence is not None
        repository._set_setting(batch.guild_id, repository.WRITE_SEQUENCE_KEY, batch.sequence)


def measure_flushes(
    members: int, stored: int, rounds: int, rng: random.Random, checked: set[int]
) -> dict[str, list[float]]:
    """Best of ``rounds``: [inserts, updates] seconds per variant. Inserts: members new to the
    database; updates: members already stored, spread over the whole board (a fresh sample each time),
    never the ``checked`` ones (the baseline leaves its members' windows behind their buckets)."""
    best = {"windows": [1e9, 1e9], "baseline": [1e9, 1e9]}
    sequence = repository.write_sequence(GUILD)
    fresh = 3 * 10**17  # ids above every stored member: the first write of each is an insert
    for _ in range(rounds):
        for label, flush in (("windows", repository.apply_batch), ("baseline", flush_before_windows)):
            new = list(dict.fromkeys(fresh + rng.randrange(10**15) * 2 + 1 for _ in range(members)))
            fresh += 10**16
            old = [u for u in map(member_id, rng.sample(range(stored), min(members, stored))) if u not in checked]
            for kind, users in enumerate((new, old)):
                sequence += 1
                batch = make_batch(users, rng, sequence)
                _, ms = timed(lambda f=flush, b=batch: f(b))  # type: ignore[misc]
                best[label][kind] = min(best[label][kind], ms / 1000)
    return best


def member_id(index: int) -> int:
    return 10**17 + index * 7_919  # snowflake-sized ids, as fill() makes them


def time_move(db: Database, day: str, watched: list[int]) -> tuple[float, dict[str, list[float]]]:
    """Seconds to move the windows on to ``day``, and the week board's ranks and tops timed on another
    connection meanwhile, one of each every READ_EVERY seconds (commands while the first write of a
    day runs; a busy loop would take the CPU the move needs on a 2-core machine)."""
    stop = threading.Event()
    reads: dict[str, list[float]] = {"rank_of": [], "top 10": []}

    def reader() -> None:
        try:
            while not stop.is_set():
                for user in watched:
                    reads["rank_of"].append(
                        timed(lambda u=user: repository.rank_of(GUILD, WEEK.scope, "messages", u))[1]
                    )
                    reads["top 10"].append(timed(lambda: repository.top(GUILD, WEEK.scope, "messages", 10))[1])
                    if stop.wait(READ_EVERY):
                        break
        finally:
            db.close()  # this thread's connection

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        _, ms = timed(lambda: repository.move_windows(GUILD, day))
    finally:
        stop.set()
        thread.join()
    return ms / 1000, reads


def print_meanwhile(reads: dict[str, list[float]]) -> None:
    for what, times in reads.items():  # the week board's messages, on another connection
        if times:
            print(f"     meanwhile, week {what} x{len(times):<5} {summary(times)}")


@contextmanager
def scratch_database(spec: str | None) -> Iterator[tuple[Database, Callable[[], str]]]:
    """A new scratch database (a file in a temporary directory, or a fresh PostgreSQL database) and
    a function giving its size."""
    if not spec:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            path = Path(tmp) / "windows.db"
            db = open_database(f"sqlite:///{path}")

            def size() -> str:
                total = sum(os.path.getsize(f) for f in Path(tmp).iterdir())
                return f"{total / 1e6:,.0f} MB (file and WAL)"

            try:
                yield db, size
            finally:
                db.close()
        return
    with pg.server(spec) as admin:
        url = pg.create_database(admin, prefix="lb_bench")
        try:
            db = open_database(url)
            try:
                yield db, lambda: f"{repository.database_size() / 1e6:,.0f} MB"
            finally:
                getattr(db, "close_all", db.close)()
        finally:
            pg.drop_database(admin, url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--days-per-member", type=int, default=SPAN, help="buckets per member over the 30 days")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flush-members", type=int, default=100_000)
    parser.add_argument("--database-url", help="PostgreSQL: a server URL that may create databases, or pg")
    args = parser.parse_args()
    if not 1 <= args.days_per_member <= SPAN:
        parser.error(f"--days-per-member is between 1 and {SPAN}")
    logger.remove()  # the migrations' log lines would split the figures
    rng = random.Random(7)
    with scratch_database(args.database_url) as (db, size):
        postgres = isinstance(db, PostgresqlDatabase)
        backend = "PostgreSQL" if postgres else "SQLite"
        buckets = args.members * args.days_per_member
        print(
            f"{args.members:,} members x {args.days_per_member} of the last {SPAN} days = {buckets:,} daily buckets "
            f"({FIRST_DAY} .. {DAY}), two seasons (current from day {SEASON_STARTS + 1}), on {backend}"
        )
        _, ms = timed(lambda: fill(db, args.members, args.days_per_member, rng))
        if postgres:
            db.execute_sql("VACUUM (ANALYZE)")  # what autovacuum does after a large write
        else:
            optimize(db)  # what the bot does at every open
        print(f"written in {ms / 1000:.1f} s; {size()}")

        built, ms = timed(lambda: repository.prepare_windows(GUILD, DAY))
        assert built
        print(f"\n1. first build of the windows (prepare_windows -> rebuild_windows): {ms / 1000:.1f} s; {size()}")
        if not postgres:
            optimize(db)  # the bot runs it at open and close; the windows' rows are new to the planner
        users = [member_id(i) for i in sorted(rng.sample(range(args.members), min(20, args.members)))]
        check_windows(db, users, DAY)
        print(f"   checked against the buckets: {len(users)} members x 4 windows")

        print("\n2. reads, warm (baseline: the current season, same run)")
        print_reads(measure_reads(db, args.samples, rng))

        print(
            f"\n3. one flush of {args.flush_members:,} distinct members (10 % with voice) on {DAY}, "
            f"on the {args.members:,}-member database, best of {args.rounds}:"
        )
        best = measure_flushes(args.flush_members, args.members, args.rounds, rng, set(users))
        for i, kind in enumerate(("inserts", "updates")):
            new, old = best["windows"][i], best["baseline"][i]
            print(
                f"   {kind}: apply_batch with windows {new:6.3f} s   before windows (season + buckets, "
                f"baseline) {old:6.3f} s   ratio {new / old:4.2f}x"
            )
        check_windows(db, users, DAY)

        print("\n4. moving the windows on (each in one transaction, as the first flush of a new day does):")
        on_week = repository.ranked_count(GUILD, WEEK.scope, "messages")
        watched = [u for _, u in sampled_order(db, WEEK.scope, "messages", sample_positions(on_week, 50, rng))]
        day1 = shift_day(DAY, 1)
        seconds, reads = time_move(db, day1, watched)
        print(f"   by one day, {DAY} -> {day1}: {seconds:.1f} s")
        print_meanwhile(reads)
        check_windows(db, users, day1)
        day4 = shift_day(day1, 3)
        seconds, reads = time_move(db, day4, watched)
        print(f"   by a gap of 3 days, {day1} -> {day4} (today already empty): {seconds:.1f} s")
        print_meanwhile(reads)
        check_windows(db, users, day4)
        print(f"   checked against the buckets after each: {len(users)} members x 4 windows; {size()}")


if __name__ == "__main__":
    main()
