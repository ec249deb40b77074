"""Issue 3 end to end: the real bot counts messages and voice time against fakecord."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from leaderboard_bot.db.migrations import LATEST_VERSION

from .harness import GUILD_MESSAGES_INTENT, GUILD_VOICE_STATES_INTENT, GUILDS_INTENT, World, make_world


async def test_starts_with_only_the_intents_it_uses_and_never_logs_the_token(world: World) -> None:
    bot = await world.start_bot()
    identify = next(e for e in world.fc.gateway_log if e["kind"] == "op" and e["op"] == 2)
    assert identify["d"]["intents"] == GUILDS_INTENT | GUILD_MESSAGES_INTENT | GUILD_VOICE_STATES_INTENT
    assert world.query("SELECT version FROM schema_version") == [(LATEST_VERSION,)]
    assert world.query("PRAGMA journal_mode") == [("wal",)]
    bot.proc.send_signal(signal.SIGTERM)
    assert await bot.stop(timeout=15) == 0
    assert "e2e-secret-token" not in bot.output()
    records = world.log_records(bot)
    assert records and all("record" in r or "message" in r or "text" in r for r in records)


async def test_counts_messages_exactly_and_ignores_bots_dms_and_other_guilds(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot()
    for i in range(4):
        await fc.send_message(w.guild, w.general, w.alice, f"hi {i}")
    for i in range(3):
        await fc.send_message(w.guild, w.general, w.bob, f"yo {i}", reply_to=None)
    first = await fc.send_message(w.guild, w.general, w.carol, "question")
    await fc.send_message(w.guild, w.general, w.alice, "answer", reply_to=int(first["id"]))
    await fc.send_message(w.guild, w.general, w.robot, "beep")  # a bot: ignored
    await fc.send_message(w.other_guild, w.other_general, w.alice, "elsewhere")  # other guild: ignored
    await fc.send_message(None, fc.dm_channel(w.alice), w.alice, "dm")  # DM: ignored
    await w.wait_db(
        lambda: w.messages_of(w.alice) == 5 and w.messages_of(w.bob) == 3 and w.messages_of(w.carol) == 1,
        "message counts",
    )
    await asyncio.sleep(1.2)  # two more flushes: nothing else may arrive
    assert (w.messages_of(w.alice), w.messages_of(w.bob), w.messages_of(w.carol)) == (5, 3, 1)
    assert w.messages_of(w.robot) == 0
    assert w.query("SELECT COUNT(*) FROM member_stats WHERE guild_id != ?", w.guild) == [(0,)]
    day_total = w.query("SELECT SUM(messages) FROM daily_activity WHERE guild_id = ?", w.guild)
    assert day_total == [(9,)]
    names = dict(w.query("SELECT user_id, display_name FROM member_name WHERE guild_id = ?", w.guild))
    assert names[w.alice] == "Ali" and names[w.bob] == "Bobby" and names[w.carol] == "carol"


async def test_spam_beyond_the_token_bucket_is_not_counted(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(SPAM_LIMIT="3/60s")
    for i in range(10):
        await fc.send_message(w.guild, w.general, w.bob, f"spam {i}")
    await fc.send_message(w.guild, w.general, w.alice, "calm")
    await w.wait_db(lambda: w.messages_of(w.alice) == 1, "alice's message")
    await asyncio.sleep(1.2)
    assert w.messages_of(w.bob) == 3


async def test_voice_time_counts_across_join_move_afk_and_leave(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot()
    t0 = time.monotonic()
    await fc.voice_join(w.alice, w.lounge)
    await asyncio.sleep(1.0)
    await fc.voice_move(w.alice, w.lounge2)
    await asyncio.sleep(1.0)
    t_afk = time.monotonic()
    await fc.voice_afk(w.alice, w.guild)
    await asyncio.sleep(1.5)  # AFK: not counted
    t_back = time.monotonic()
    await fc.voice_move(w.alice, w.lounge)
    await asyncio.sleep(0.5)
    t_leave = time.monotonic()
    await fc.voice_leave(w.alice, w.guild)
    expected = (t_afk - t0) + (t_leave - t_back)
    await w.wait_db(
        lambda: len(w.query("SELECT 1 FROM voice_session WHERE user_id = ? AND ended_at IS NOT NULL", w.alice)) == 3,
        "three closed sessions",
    )
    await asyncio.sleep(0.7)
    counted = w.voice_of(w.alice)
    assert abs(counted - expected) < 0.6, (counted, expected)
    channels = [
        r[0] for r in w.query("SELECT channel_id FROM voice_session WHERE user_id = ? ORDER BY started_at", w.alice)
    ]
    assert channels == [w.lounge, w.lounge2, w.lounge]
    sessions = w.query("SELECT SUM(ended_at - started_at) FROM voice_session WHERE user_id = ?", w.alice)
    assert abs(sessions[0][0] - counted) < 0.01
    await asyncio.sleep(1.0)
    assert w.voice_of(w.alice) == counted  # nothing accrues after leaving


async def test_deafened_time_does_not_count_by_default(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot()
    await fc.voice_join(w.bob, w.lounge, self_deaf=True)
    await asyncio.sleep(1.2)
    await fc.voice_update(w.bob, w.guild, self_deaf=False)
    await asyncio.sleep(1.0)
    await fc.voice_leave(w.bob, w.guild)
    await w.wait_db(
        lambda: w.query("SELECT 1 FROM voice_session WHERE user_id = ? AND ended_at IS NOT NULL", w.bob),
        "bob's session",
    )
    await asyncio.sleep(0.7)
    assert 0.6 < w.voice_of(w.bob) < 1.6


async def test_sigterm_keeps_every_count_and_a_restart_continues(world: World) -> None:
    fc, w = world.fc, world
    # A long flush interval: only the shutdown flush can save these counts.
    bot = await w.start_bot(FLUSH_INTERVAL="1h", SPAM_LIMIT="off")
    for i in range(7):
        await fc.send_message(w.guild, w.general, w.alice, f"m{i}")
    await fc.voice_join(w.bob, w.lounge)
    await fc.flush()
    await asyncio.sleep(1.5)
    assert w.messages_of(w.alice) == 0  # still buffered
    stop_at = time.time()
    bot.proc.send_signal(signal.SIGTERM)
    assert await bot.stop(timeout=15) == 0
    assert w.messages_of(w.alice) == 7
    (ended_at,) = w.query("SELECT ended_at FROM voice_session WHERE user_id = ?", w.bob)[0]
    assert ended_at is not None and abs(ended_at - stop_at) < 1.0
    assert 1.0 < w.voice_of(w.bob) < 3.0
    # Restart on the same database: counting continues from the stored totals.
    await fc.voice_leave(w.bob, w.guild)
    await w.start_bot()
    for i in range(2):
        await fc.send_message(w.guild, w.general, w.alice, f"again {i}")
    await w.wait_db(lambda: w.messages_of(w.alice) == 9, "counts after restart")


async def test_kill_9_loses_at_most_a_flush_and_never_invents_voice_time(world: World) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot(FLUSH_INTERVAL="0.5s")
    await fc.voice_join(w.carol, w.lounge)
    for i in range(3):
        await fc.send_message(w.guild, w.general, w.carol, f"m{i}")
    await w.wait_db(lambda: w.messages_of(w.carol) == 3, "messages flushed")
    await asyncio.sleep(1.0)
    bot.proc.send_signal(signal.SIGKILL)
    await bot.proc.wait()
    killed_at = time.time()
    ((last_seen, ended),) = w.query("SELECT last_seen_at, ended_at FROM voice_session WHERE user_id = ?", w.carol)
    assert ended is None and last_seen <= killed_at
    credited_before = w.voice_of(w.carol)
    await asyncio.sleep(2.0)  # downtime: must never be credited
    await fc.voice_leave(w.carol, w.guild)  # carol leaves while the bot is down
    await w.start_bot()
    await w.wait_db(
        lambda: w.query("SELECT ended_at FROM voice_session WHERE user_id = ? AND ended_at IS NOT NULL", w.carol),
        "orphan session closed",
    )
    ((ended_at, last_seen_after),) = w.query(
        "SELECT ended_at, last_seen_at FROM voice_session WHERE user_id = ?", w.carol
    )
    assert ended_at == last_seen_after == last_seen  # closed at the heartbeat, not at restart
    await asyncio.sleep(1.0)
    assert w.voice_of(w.carol) == pytest.approx(credited_before)
    assert w.messages_of(w.carol) == 3


async def test_members_already_in_voice_at_start_are_counted_from_then(world: World) -> None:
    fc, w = world.fc, world
    await fc.voice_join(w.alice, w.lounge)  # before the bot exists
    await asyncio.sleep(1.0)
    started = time.time()
    await w.start_bot()
    await asyncio.sleep(1.5)
    await fc.voice_leave(w.alice, w.guild)
    await w.wait_db(
        lambda: w.query("SELECT 1 FROM voice_session WHERE user_id = ? AND ended_at IS NOT NULL", w.alice),
        "alice's session",
    )
    ((started_at,),) = w.query("SELECT started_at FROM voice_session WHERE user_id = ?", w.alice)
    assert started_at >= started - 0.1
    await asyncio.sleep(0.7)
    assert 1.0 < w.voice_of(w.alice) < 2.5


async def test_reconnect_reconciles_and_never_credits_the_gap(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot()
    joined = time.monotonic()
    await fc.voice_join(w.alice, w.lounge)
    await fc.voice_join(w.bob, w.lounge2)
    await w.wait_db(lambda: len(w.query("SELECT 1 FROM voice_session WHERE ended_at IS NULL")) == 2, "two sessions")
    mark = len(fc.gateway_log)
    reconciles = w.log_text().count("voice reconciled")
    dropped = time.monotonic()
    await fc.drop_connection("invalidate")  # session lost: events in the gap are not replayed
    await fc.voice_leave(w.alice, w.guild)
    await fc.wait_for_gateway("op", since=mark, op=2, timeout=30)
    await w.wait_log("voice reconciled", count=reconciles + 1)
    back = time.monotonic()
    await w.wait_db(
        lambda: w.query("SELECT 1 FROM voice_session WHERE user_id = ? AND ended_at IS NOT NULL", w.alice),
        "alice closed after reconnect",
    )
    await asyncio.sleep(1.0)
    # Alice is credited only up to the disconnect, not through the gap to the reconnect.
    assert w.voice_of(w.alice) <= (dropped - joined) + 0.3 < (back - joined)
    frozen = w.voice_of(w.alice)
    # Bob stayed: he counts again from the reconnect, in a new session; the gap is not his either.
    assert w.query("SELECT COUNT(*) FROM voice_session WHERE user_id = ? AND ended_at IS NULL", w.bob) == [(1,)]
    await asyncio.sleep(1.0)
    assert w.voice_of(w.alice) == frozen
    assert w.voice_of(w.bob) < (time.monotonic() - joined) - (back - dropped) + 0.6


async def test_bots_already_in_voice_at_start_are_not_company(world: World) -> None:
    fc, w = world.fc, world
    await fc.voice_join(w.robot, w.lounge)
    await fc.voice_join(w.alice, w.lounge)  # her only company is a bot
    await w.start_bot(VOICE_COUNT_ALONE="false")
    await asyncio.sleep(1.5)
    assert w.query("SELECT user_id FROM voice_session") == []
    await fc.voice_join(w.bob, w.lounge)  # a person joins: alice and bob count, the bot never
    await w.wait_db(lambda: len(w.query("SELECT 1 FROM voice_session")) == 2, "two sessions")
    assert sorted(r[0] for r in w.query("SELECT user_id FROM voice_session")) == sorted([w.alice, w.bob])


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP])  # Ctrl+C; its terminal closed
async def test_sigint_and_sighup_also_flush_and_exit_0(world: World, stop: signal.Signals) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot(FLUSH_INTERVAL="1h")
    for i in range(3):
        await fc.send_message(w.guild, w.general, w.bob, f"m{i}")
    await fc.flush()
    await asyncio.sleep(0.5)
    bot.proc.send_signal(stop)
    assert await bot.stop(timeout=15) == 0
    assert w.messages_of(w.bob) == 3


async def test_a_rejected_token_stops_with_a_clear_line(tmp_path: Path) -> None:
    w = await make_world(tmp_path, token="the-real-token")
    try:
        bot = await w.fc.start_bot(
            ["-m", "leaderboard_bot"], env=w.env(), cwd=str(tmp_path), token_env="BOT_TOKEN", token="a-wrong-token"
        )
        w.bots.append(bot)
        assert await asyncio.wait_for(bot.proc.wait(), 30) == 1
        out = bot.output()
        assert "Discord rejected BOT_TOKEN" in out and "a-wrong-token" not in out
        assert "Traceback" not in out
    finally:
        await w.fc.stop()


async def test_a_locked_database_at_shutdown_keeps_the_counts_for_the_next_start(world: World) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot(FLUSH_INTERVAL="1h", SPAM_LIMIT="off")
    for i in range(6):
        await fc.send_message(w.guild, w.general, w.carol, f"m{i}")
    await fc.flush()
    await asyncio.sleep(0.5)
    import sqlite3

    blocker = sqlite3.connect(w.db_path, timeout=1)
    blocker.execute("BEGIN IMMEDIATE")  # e.g. a backup tool holding the write lock
    try:
        stopping = time.monotonic()
        bot.proc.send_signal(signal.SIGTERM)
        assert await bot.stop(timeout=40) == 1  # not a clean stop, and it says so
        assert time.monotonic() - stopping < 5.0  # inside docker stop's 10 s grace, with room
    finally:
        blocker.rollback()
        blocker.close()
    assert "they are written at the next start" in bot.output()
    assert list(w.tmp.glob("leaderboard.db.unsaved*.json"))
    await w.start_bot()
    await w.wait_db(lambda: w.messages_of(w.carol) == 6, "the saved counts written after the restart")
    assert not list(w.tmp.glob("leaderboard.db.unsaved*.json"))


async def test_a_stop_requested_during_start_up_exits_cleanly(tmp_path: Path) -> None:
    w = await make_world(tmp_path)
    try:
        fc = w.fc
        fc.inject_error("GET", r"^/gateway/bot$", status=500, times=10)  # Discord is having a bad day
        bot = await fc.start_bot(["-m", "leaderboard_bot"], env=w.env(), cwd=str(tmp_path), token_env="BOT_TOKEN")
        w.bots.append(bot)
        await fc.wait_for(lambda: fc.calls("GET", r"^/gateway/bot$"), 30, "the bot to ask for the gateway")
        bot.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bot.proc.wait(), 30) == 0
        assert "Traceback" not in bot.output()
    finally:
        await w.fc.stop()


async def test_stage_channel_time_counts_for_speakers_and_audience(world: World) -> None:
    fc, w = world.fc, world
    stage = fc.add_channel(w.guild, "Town Hall", type=13)  # a stage channel
    await w.start_bot()
    started = time.monotonic()
    fc.set_voice_state(w.guild, w.alice, stage, suppress=True)  # in the audience
    fc.set_voice_state(w.guild, w.bob, stage)  # on stage
    await asyncio.sleep(1.5)
    await fc.voice_leave(w.alice, w.guild)
    await fc.voice_leave(w.bob, w.guild)
    elapsed = time.monotonic() - started
    await w.wait_db(
        lambda: len(w.query("SELECT 1 FROM voice_session WHERE channel_id = ? AND ended_at IS NOT NULL", stage)) == 2,
        "both stage sessions closed",
    )
    await asyncio.sleep(0.7)
    for user in (w.alice, w.bob):
        assert 1.0 < w.voice_of(user) <= elapsed + 0.3


# Shifts time.time() in the bot's process by the seconds written in $CLOCK_FILE (re-read every
# 0.05 s), as NTP or an operator stepping the system clock would; time.monotonic() is untouched.
CLOCK_HOOK = """
import os, time as _t
_path, _real = os.environ["CLOCK_FILE"], _t.time
_state = {"at": -1.0, "off": 0.0}
def time():
    now = _t.monotonic()
    if now - _state["at"] > 0.05:
        _state["at"] = now
        try:
            _state["off"] = float(open(_path).read().strip() or 0)
        except (OSError, ValueError):
            pass
    return _real() + _state["off"]
_t.time = time
"""


async def test_a_wall_clock_step_and_back_credits_only_the_real_time_in_voice(world: World) -> None:
    fc, w = world.fc, world
    hook = w.tmp / "clockhook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CLOCK_HOOK)
    offset = w.tmp / "clock"
    offset.write_text("0")
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (str(hook), root, os.environ.get("PYTHONPATH", "")) if p)
    bot = await w.start_bot(CLOCK_FILE=str(offset), PYTHONPATH=path)
    joined = time.monotonic()
    await fc.voice_join(w.bob, w.lounge)
    await asyncio.sleep(1.5)
    offset.write_text(str(3 * 3600))  # the clock steps 3 hours forward...
    await asyncio.sleep(2.0)
    offset.write_text("0")  # ... and is set right again
    await asyncio.sleep(1.5)
    left = time.monotonic()
    await fc.voice_leave(w.bob, w.guild)
    await w.wait_db(
        lambda: w.query("SELECT 1 FROM voice_session WHERE user_id = ? AND ended_at IS NOT NULL", w.bob),
        "bob's session closed",
    )
    await asyncio.sleep(0.7)
    assert abs(w.voice_of(w.bob) - (left - joined)) < 0.6, (w.voice_of(w.bob), left - joined)
    [(started, ended)] = w.query("SELECT started_at, ended_at FROM voice_session WHERE user_id = ?", w.bob)
    assert ended <= time.time() and abs((ended - started) - w.voice_of(w.bob)) < 0.6  # never in the future
    jumps = [
        r.get("message", "")
        for r in w.log_records(bot)
        if r.get("level") == "WARNING" and "clock jumped" in r.get("message", "")
    ]
    assert len(jumps) == 2 and "forward by 10800s" in jumps[0] and "back by 10800s" in jumps[1], jumps
