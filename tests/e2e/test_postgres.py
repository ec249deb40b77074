"""The real bot on PostgreSQL (DATABASE_URL=postgresql://...): counts, live standings, a clean stop
that keeps everything and a restart that continues; its lock file in the directory it starts in."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any
from urllib.parse import urlsplit

import psycopg

from leaderboard_bot.db.migrations import LATEST_VERSION

from .harness import World


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        try:
            return conn.execute(sql, params).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def with_password(url: str) -> tuple[str, str]:
    """The URL with a password in it (the throw-away cluster trusts local connections and ignores
    it), and that password: the log must never show it."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    password = "e2e-db-pa55word"
    userinfo, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo}:{password}@{host}").geturl(), password


def messages_of(url: str, guild: int, user: int) -> int:
    sql = "SELECT SUM(messages) FROM member_stats WHERE guild_id = %s AND season > 0 AND user_id = %s"
    rows = query(url, sql, guild, user)
    return int(rows[0][0] or 0) if rows else 0


async def test_the_bot_counts_and_ranks_on_postgresql_and_a_restart_continues(world: World, postgres_url: str) -> None:
    fc, w = world.fc, world
    url_with_password, password = with_password(postgres_url)
    bot = await w.start_bot(DATABASE_URL=url_with_password)
    assert query(postgres_url, "SELECT version FROM schema_version") == [(LATEST_VERSION,)]
    assert not w.db_path.exists()  # nothing went to SQLite
    port, database = urlsplit(postgres_url).port, urlsplit(postgres_url).path.lstrip("/")
    lock = f"leaderboard-{w.guild}-{database}-127.0.0.1_{port}.lock"  # in the directory it started in
    assert [p.name for p in w.tmp.glob("leaderboard-*")] == [lock]
    for i in range(4):
        await fc.send_message(w.guild, w.general, w.alice, f"hi {i}")
    for i in range(2):
        await fc.send_message(w.guild, w.general, w.bob, f"yo {i}")
    await fc.send_message(w.guild, w.general, w.robot, "beep")  # a bot: ignored
    await w.wait_db(
        lambda: messages_of(postgres_url, w.guild, w.alice) == 4 and messages_of(postgres_url, w.guild, w.bob) == 2,
        "message counts in PostgreSQL",
    )
    top = await fc.slash(w.guild, w.general, w.alice, "top messages")
    text = json.dumps(top.embeds, ensure_ascii=False)
    assert text.index("Ali") < text.index("Bob"), text  # Ali (4) above Bob (2)
    # Counts not yet written are in the standings at once (the read snapshot plus the buffers).
    await fc.send_message(w.guild, w.general, w.bob, "catching up")
    await fc.send_message(w.guild, w.general, w.bob, "and again")
    await fc.send_message(w.guild, w.general, w.bob, "ahead now")
    stats = await fc.slash(w.guild, w.general, w.bob, "stats")
    assert "#1" in json.dumps(stats.embeds, ensure_ascii=False)

    bot.proc.send_signal(signal.SIGTERM)
    assert await bot.stop(timeout=15) == 0
    assert messages_of(postgres_url, w.guild, w.bob) == 5  # the stop wrote what was buffered
    starting = [r["message"] for r in w.log_records(bot) if r["message"].startswith("starting leaderboard-bot")]
    assert len(starting) == 1 and ":***@" in starting[0], starting
    assert password not in bot.output()

    await w.start_bot(DATABASE_URL=postgres_url)
    await fc.send_message(w.guild, w.general, w.alice, "back")
    await w.wait_db(lambda: messages_of(postgres_url, w.guild, w.alice) == 5, "a count after the restart")
    await asyncio.sleep(1.2)  # two more flushes: nothing doubled
    assert (messages_of(postgres_url, w.guild, w.alice), messages_of(postgres_url, w.guild, w.bob)) == (5, 5)
    daily = query(postgres_url, "SELECT SUM(messages) FROM daily_activity WHERE guild_id = %s", w.guild)
    assert daily == [(10,)]


async def test_a_standby_on_another_machine_does_not_take_over_because_the_server_was_away(
    world: World, postgres_url: str, postgres_admin_url: str
) -> None:
    """The PostgreSQL server is away longer than the lease lasts (a restart, a failover): both
    instances lose it, the active one counts in memory. Taking the expired lease the moment the
    server answered again, the standby made the active one drop all it had counted meanwhile."""
    fc, w = world.fc, world
    database = urlsplit(postgres_url).path.lstrip("/")

    async def start(name: str) -> Any:
        (w.tmp / name).mkdir()  # its own directory: as on another machine (its own lock file)
        return await w.launch_bot(
            cwd=w.tmp / name, log_name=name, DATABASE_URL=postgres_url, FLUSH_INTERVAL="2s", SPAM_LIMIT="off",
            STANDBY="on",
        )  # fmt: skip

    active = await start("a")
    await fc.wait_for(lambda: "voice reconciled" in active.output(), 30, "the active instance")
    standby = await start("b")
    await fc.wait_for(lambda: "standing by" in standby.output(), 30, "the standby")

    def server_away(away: bool) -> None:
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(not away).lower()}')
            if away:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))

    await asyncio.to_thread(server_away, True)
    for i in range(10):  # 10 s: longer than the lease (FLUSH_INTERVAL + 5 s)
        await fc.send_message(w.guild, w.general, w.bob, f"during {i}")
        await asyncio.sleep(1.0)
    await asyncio.to_thread(server_away, False)
    await w.wait_db(lambda: messages_of(postgres_url, w.guild, w.bob) == 10, "the counts of the outage", timeout=30)
    await asyncio.sleep(9.0)  # past the standby's watch: the active instance renewed, nothing changed hands
    assert active.returncode is None and "lost the lease" not in active.output()
    assert "took over" not in standby.output()
    assert messages_of(postgres_url, w.guild, w.bob) == 10
