"""Reliability end to end: a database locked by another process, kill -9 during an outage, a
second instance, RESUME replays, back-dated bursts, boards a moderator purges, unpins or hides,
a board channel in another server, and expired confirmations."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from leaderboard_bot.exts.seasons import CONFIRM_ID

from .harness import World


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another process (a backup, an admin shell) holds the database's write lock."""
    holder = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sessions_of(w: World, user: int) -> list[tuple[float, float | None]]:
    return [
        (float(a), None if b is None else float(b))
        for a, b in w.query("SELECT started_at, ended_at FROM voice_session WHERE user_id = ?", user)
    ]


async def test_a_restart_while_another_program_holds_the_write_lock_waits_for_it_then_counts(world: World) -> None:
    """systemd restarts a crashed bot while an admin shell holds the write lock. What start-up
    writes (the recovery file, sessions left open) must wait for the lock, so the bot waits: it
    says so (not "standing by: None counts"), and counts as soon as the database answers."""
    fc, w = world.fc, world
    first = await w.start_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off")
    await fc.send_message(w.guild, w.general, w.carol, "before")
    await w.wait_db(lambda: w.messages_of(w.carol) == 1, "the first message")
    first.proc.kill()  # its lease row stays, unexpired
    await first.proc.wait()
    with write_lock(w.db_path):
        second = await w.launch_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off")  # (not counting yet)
        await fc.wait_for(lambda: "waiting for it before counting" in second.output(), 15, "the waiting line")
    await fc.wait_for(lambda: "the database answers again" in second.output(), 30, "the takeover")
    await fc.wait_for_commands("top", guild=w.guild)
    await fc.send_message(w.guild, w.general, w.carol, "after")
    await w.wait_db(lambda: w.messages_of(w.carol) == 2, "a count once the lock went")
    top = await fc.slash(w.guild, w.general, w.alice, "top messages")
    assert "carol" in top.embeds[0]["description"]
    output = second.output()
    assert "standing by" not in output and "took over from" not in output and "Traceback" not in output
    assert second.returncode is None


async def test_a_database_file_deleted_under_the_running_bot_loses_nothing_counted_after(world: World) -> None:
    """rm leaderboard.db while the bot runs: it used to go on writing into the deleted file and
    exit 0, and the restart began from an empty file with everything since gone."""
    fc, w = world.fc, world
    bot = await w.start_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off")
    await fc.send_message(w.guild, w.general, w.carol, "before")
    await w.wait_db(lambda: w.messages_of(w.carol) == 1, "the first message")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{w.db_path}{suffix}").unlink(missing_ok=True)
    for i in range(3):
        await fc.send_message(w.guild, w.general, w.carol, f"after {i}")
    await fc.wait_for(lambda: "was deleted or replaced" in bot.output(), 10, "the warning")
    bot.proc.send_signal(signal.SIGTERM)
    assert await bot.stop(timeout=15) == 1  # not everything could be written: it is on disk
    await w.start_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off")
    await w.wait_db(lambda: w.messages_of(w.carol) == 3, "the counts since the deletion, in the new file")
    await asyncio.sleep(1.0)
    assert w.messages_of(w.carol) == 3  # once


async def test_a_database_locked_for_30_seconds_never_freezes_the_bot(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(FLUSH_INTERVAL="1s")  # the default anti-spam limit stays on
    await fc.wait_for_commands("stats", guild=w.guild)
    started = time.monotonic()
    with write_lock(w.db_path):
        await fc.voice_join(w.bob, w.lounge)
        joined = time.monotonic()
        left_at = None
        acks: list[float] = []
        for i in range(12):  # 12 calm messages, 2 s apart, and commands meanwhile
            await fc.send_message(w.guild, w.general, w.carol, f"calm {i}")
            if i % 2 == 0:
                asked = time.monotonic()
                # slash() raises InteractionTimeout unless the bot acknowledges within 3 s.
                await fc.slash(w.guild, w.general, w.alice, "stats" if i % 4 == 0 else "top messages", wait_final=False)
                acks.append(time.monotonic() - asked)
            if i == 3:
                await fc.voice_leave(w.bob, w.guild)
                left_at = time.monotonic()
            await asyncio.sleep(max(0.0, started + 2.0 * (i + 1) - time.monotonic()))
        await asyncio.sleep(max(0.0, started + 30.0 - time.monotonic()))
        assert w.messages_of(w.carol) == 0  # nothing could be written meanwhile
    assert max(acks) < 3.0
    assert left_at is not None
    await w.wait_db(lambda: w.messages_of(w.carol) == 12, "all 12 messages once the lock goes", timeout=30)
    await w.wait_db(lambda: w.voice_of(w.bob) > 0, "bob's voice time")
    assert abs(w.voice_of(w.bob) - (left_at - joined)) < 1.0
    await asyncio.sleep(2.0)
    assert w.messages_of(w.carol) == 12  # nothing doubled either


async def test_kill_9_during_an_outage_loses_at_most_one_flush_interval(world: World) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot(FLUSH_INTERVAL="1s", SPAM_LIMIT="off")
    with write_lock(w.db_path):
        for i in range(12):
            await fc.send_message(w.guild, w.general, w.carol, f"m{i}")
        await fc.voice_join(w.alice, w.lounge)
        await asyncio.sleep(3.0)  # past one flush interval: the recovery file has them
        bot.proc.kill()  # kill -9: no shutdown code runs
        await bot.proc.wait()
    assert list(w.tmp.glob("leaderboard.db.unsaved*.json"))
    await w.start_bot(FLUSH_INTERVAL="1s")
    await w.wait_db(lambda: w.messages_of(w.carol) == 12, "the 12 messages from the recovery file")
    assert w.voice_of(w.alice) >= 1.0  # voice time up to the last save counts too
    await asyncio.sleep(2.0)
    assert w.messages_of(w.carol) == 12
    assert not list(w.tmp.glob("leaderboard.db.unsaved*.json"))


async def test_a_second_instance_refuses_to_start_and_a_killed_one_never_blocks(world: World) -> None:
    fc, w = world.fc, world
    first = await w.start_bot(SPAM_LIMIT="off")
    second = await fc.start_bot(["-m", "leaderboard_bot"], env=w.env(), cwd=str(w.tmp), token_env="BOT_TOKEN")
    assert await asyncio.wait_for(second.proc.wait(), 30) == 1
    lines = [line for line in second.output().splitlines() if "already using" in line]
    assert len(lines) == 1 and f"pid {first.proc.pid}" in lines[0] and "Traceback" not in second.output()
    for i in range(10):
        await fc.send_message(w.guild, w.general, w.carol, f"m{i}")
    await w.wait_db(lambda: w.messages_of(w.carol) == 10, "10 messages, counted once")
    first.proc.kill()
    await first.proc.wait()
    await w.start_bot()  # the kernel released the dead one's lock


async def test_a_resumed_connection_credits_the_gap(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(FLUSH_INTERVAL="0.5s")
    await fc.voice_join(w.bob, w.lounge)
    joined = time.monotonic()
    mark = len(fc.gateway_log)
    await asyncio.sleep(1.0)
    await fc.drop_connection("abrupt")
    await fc.wait_for(lambda: any(e.get("op") == 6 for e in fc.gateway_log[mark:] if e["kind"] == "op"), 30, "a RESUME")
    await w.wait_log("voice reconciled (resumed)")
    await asyncio.sleep(1.0)
    await fc.voice_leave(w.bob, w.guild)
    stayed = time.monotonic() - joined
    await w.wait_db(lambda: sessions_of(w, w.bob) and sessions_of(w, w.bob)[-1][1] is not None, "the session closed")
    assert len(sessions_of(w, w.bob)) == 1  # one unbroken session
    await w.wait_db(lambda: abs(w.voice_of(w.bob) - stayed) < 1.0, f"{stayed:.1f}s of voice, the gap included")


async def test_back_dated_messages_in_a_burst_are_all_counted_in_the_day_they_were_sent(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot()  # the default anti-spam limit (5 in a burst) judges by when they were sent
    now = time.time()
    for i in range(12):  # sent calmly, 2 s apart, delivered all at once (a stall, a replay)
        await fc.send_message(w.guild, w.general, w.carol, f"calm {i}", at=now - 24.0 + 2.0 * i)
    await w.wait_db(lambda: w.messages_of(w.carol) == 12, "all 12 calm messages")
    days = w.query("SELECT day, messages FROM daily_activity WHERE user_id = ?", w.carol)
    sent_days = {datetime.fromtimestamp(now - 24.0 + 2.0 * i, UTC).strftime("%Y-%m-%d") for i in range(12)}
    assert {d for d, _ in days} == sent_days and sum(n for _, n in days) == 12
    # A real burst is still refused.
    for i in range(8):
        await fc.send_message(w.guild, w.general, w.bob, f"spam {i}")
    await asyncio.sleep(1.5)
    assert w.messages_of(w.bob) == 5


async def test_a_timestamp_from_the_future_is_clamped_and_logged_once(world: World) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot(SPAM_LIMIT="off")
    for i in range(3):
        await fc.send_message(w.guild, w.general, w.carol, f"from the future {i}", at=time.time() + 86_400.0 * 30)
    await w.wait_db(lambda: w.messages_of(w.carol) == 3, "the three messages, counted")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert w.query("SELECT day FROM daily_activity WHERE user_id = ?", w.carol) == [(today,)]
    assert bot.output().count("in the future") == 1


async def test_messages_replayed_after_a_resume_are_all_counted(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot()
    mark = len(fc.gateway_log)
    await fc.drop_connection("abrupt")
    now = time.time()
    for i in range(12):  # sent while the bot is away; Discord replays them on RESUME in one go
        await fc.send_message(w.guild, w.general, w.carol, f"while away {i}", at=now - 24.0 + 2.0 * i)
    await fc.wait_for(lambda: any(e.get("op") == 6 for e in fc.gateway_log[mark:] if e["kind"] == "op"), 30, "a RESUME")
    await w.wait_db(lambda: w.messages_of(w.carol) == 12, "all 12 replayed messages")


# --------------------------------------------------------------------------- boards heal themselves


async def rest(w: World, method: str, path: str, body: object = None) -> int:
    """What a moderator's client does, straight to the fake's REST API."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"{w.fc.url}/api/v10{path}", json=body, headers={"Authorization": "Bot moderator"}
        ) as response,
    ):
        return response.status


def board_message(w: World, channel: int) -> object | None:
    mine = [m for m in w.fc.channel_messages(channel, include_system=False) if m.embeds]
    return mine[-1] if mine else None


@pytest.mark.parametrize("which", ["chat_lb", "vc_lb"])
async def test_a_purged_unpinned_or_hidden_board_is_restored_within_one_update(world: World, which: str) -> None:
    fc, w = world.fc, world
    channel = getattr(w, which)
    await w.start_bot(UPDATE_INTERVAL="2s")

    def healthy() -> object | None:
        msg = board_message(w, channel)
        ok = msg is not None and msg.pinned and msg.embeds and not (msg.flags & 4)  # type: ignore[attr-defined]
        return msg if ok else None

    first = await fc.wait_for(healthy, 20, "the pinned board")
    # A moderator purges the channel.
    ids = [m.id for m in fc.channel_messages(channel)]
    assert await rest(w, "POST", f"/channels/{channel}/messages/bulk-delete", {"messages": ids}) in (200, 204)
    again = await fc.wait_for(lambda: (m := healthy()) is not None and m.id != first.id and m, 4, "a new board")
    # A moderator unpins it.
    assert await rest(w, "DELETE", f"/channels/{channel}/pins/{again.id}") in (200, 204)
    await fc.wait_for(lambda: board_message(w, channel).pinned, 4, "the board pinned again")
    # A moderator removes (suppresses) its embed.
    assert await rest(w, "PATCH", f"/channels/{channel}/messages/{again.id}", {"flags": 4}) == 200
    await fc.wait_for(lambda: (m := healthy()) is not None and m.id == again.id, 4, "the embed shown again")
    assert len([m for m in fc.channel_messages(channel, include_system=False) if m.embeds]) == 1


async def test_a_board_channel_in_another_server_is_refused(world: World) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot(CHAT_LB_CHANNEL_ID=str(w.other_general), UPDATE_INTERVAL="1s")
    await fc.wait_for(lambda: board_message(w, w.vc_lb), 20, "the voice board, which is fine")
    await asyncio.sleep(3.0)
    assert fc.channel_messages(w.other_general) == []
    refusals = [line for line in bot.output().splitlines() if "belongs to another server" in line]
    assert len(refusals) == 1 and "CHAT_LB_CHANNEL_ID" in refusals[0]


# --------------------------------------------------------------------------- clear words


async def test_a_confirmation_clicked_after_a_restart_has_expired(world: World) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot()
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    owner = fc.guilds[w.guild].owner_id
    asked = await fc.slash(w.guild, w.general, owner, "leaderboard reset")
    (confirm_id,) = [
        c["custom_id"]
        for row in asked.message["components"]
        for c in row["components"]
        if c["custom_id"].startswith(CONFIRM_ID)
    ]
    await w.stop_all()
    assert bot.returncode == 0
    await w.start_bot()
    done = await fc.click(w.guild, w.general, owner, asked.interaction.original_id, confirm_id)
    assert done.ephemeral and "expired" in done.embeds[0]["description"]
    assert w.query("SELECT COUNT(*) FROM season") == [(1,)]


async def test_discord_unreachable_at_start_is_retried_with_one_line_per_attempt(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import sys

    from .conftest import FAKECORD_DIR, PROJECT_ROOT

    with socket.socket() as probe:  # a port nobody listens on: "connection refused", like a dead network
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "FAKECORD_URL": f"http://127.0.0.1:{port}",
        "PYTHONPATH": os.pathsep.join([str(FAKECORD_DIR / "redirect"), str(PROJECT_ROOT)]),
        "BOT_TOKEN": "e2e-secret-token",
        "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "LOG_FORMAT": "text",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "leaderboard_bot",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while len([line for line in seen if "cannot reach Discord" in line]) < 2 and time.monotonic() < deadline:
        seen.append((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
    proc.send_signal(signal.SIGTERM)
    rest_of_output, _ = await asyncio.wait_for(proc.communicate(), 15)
    output = "".join(seen) + rest_of_output.decode()
    attempts = [line for line in output.splitlines() if "cannot reach Discord" in line]
    assert len(attempts) == 2 and "attempt 1" in attempts[0] and "attempt 2" in attempts[1]
    assert "Traceback" not in output
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "nick",
    [
        "\u200b\u3164",  # zero-width space and a Hangul filler
        "\u0301\u0302\u00ad\U000e0041",  # combining marks, a soft hyphen, a tag character
    ],
)
async def test_an_invisible_nickname_shows_the_global_name_on_the_board(world: World, nick: str) -> None:
    fc, w = world.fc, world
    ghost = fc.add_user("ghost", global_name="Casper")
    fc.add_member(w.guild, ghost, nick=nick)
    await w.start_bot(UPDATE_INTERVAL="1s", SPAM_LIMIT="off")
    await fc.send_message(w.guild, w.general, ghost, "boo")
    board = await fc.wait_for(
        lambda: (m := board_message(w, w.chat_lb)) is not None and "Casper" in m.embeds[0]["description"] and m,
        15,
        "Casper on the board",
    )
    assert "Unknown member" not in board.embeds[0]["description"]


async def test_a_full_buffer_spills_to_disk_during_an_outage_and_nothing_is_lost_or_doubled(world: World) -> None:
    """MAX_PENDING_ROWS bounds what waits in memory: past it the oldest rows go to the recovery
    file, /healthz says so, and they are written once when the lock goes; a kill -9 in between
    loses none of them either."""
    fc, w = world.fc, world
    members = [fc.add_user(f"member{i}") for i in range(40)]
    for member in members:
        fc.add_member(w.guild, member)
    port = free_port()
    bot = await w.start_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off", MAX_PENDING_ROWS="20", HEALTH_PORT=str(port))

    def spilled_parts() -> list[dict]:
        return [
            part
            for path in w.tmp.glob("leaderboard.db.unsaved*.json")
            for part in json.loads(path.read_text())["parts"]
            if part.get("spilled")
        ]

    with write_lock(w.db_path):
        for member in members[:30]:
            await fc.send_message(w.guild, w.general, member, "hello")
        await w.wait_db(spilled_parts, "rows spilled to the recovery file")
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            body = await r.json()
        assert body["buffered"]["spilled_rows"] > 0
        assert body["buffered"]["message_rows"] < 20  # the bound holds
        assert body["buffered"]["unsaved_since"] is not None
        bot.proc.kill()  # kill -9 with rows on disk and rows in memory (saved at the last failed flush)
        await bot.proc.wait()
    await w.start_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off", MAX_PENDING_ROWS="20")
    await w.wait_db(lambda: all(w.messages_of(m) == 1 for m in members[:30]), "the 30 messages after a kill -9")

    with write_lock(w.db_path):  # a second outage, this time ended by the lock going away
        for member in members:
            await fc.send_message(w.guild, w.general, member, "again")
        await w.wait_db(spilled_parts, "rows spilled again")
        await asyncio.sleep(1.0)
    await w.wait_db(
        lambda: all(w.messages_of(m) == (2 if i < 30 else 1) for i, m in enumerate(members)),
        "every message of the second outage once the lock goes",
    )
    await asyncio.sleep(1.5)
    assert [w.messages_of(m) for m in members] == [2] * 30 + [1] * 10  # nothing doubled
    await w.wait_db(lambda: not list(w.tmp.glob("leaderboard.db.unsaved*.json")), "the recovery file removed")


async def test_commands_answer_from_the_last_figures_with_a_note_while_the_database_is_locked(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off")
    await fc.wait_for_commands("stats", guild=w.guild)
    for _ in range(3):
        await fc.send_message(w.guild, w.general, w.alice, "hi")
    await w.wait_db(lambda: w.messages_of(w.alice) == 3, "alice's messages")
    fresh = await fc.slash(w.guild, w.general, w.alice, "top messages")
    assert "footer" not in fresh.embeds[0] or not fresh.embeds[0]["footer"].get("text")
    await fc.slash(w.guild, w.general, w.alice, "stats")
    with write_lock(w.db_path):
        await fc.send_message(w.guild, w.general, w.alice, "while locked")
        await asyncio.sleep(3.0)  # a flush has been hanging on the lock for over 2 s now
        for command in ("top messages", "stats"):
            asked = time.monotonic()
            answer = await fc.slash(w.guild, w.general, w.alice, command)
            assert time.monotonic() - asked < 3.0  # answered, not only acknowledged
            (embed,) = answer.embeds
            assert "may be a little out of date" in embed["footer"]["text"], command
            assert not answer.ephemeral
        top = (await fc.slash(w.guild, w.general, w.bob, "top messages")).embeds[0]["description"]
        assert "Ali" in top and "3" in top  # the last figures read, names included
    await w.wait_db(lambda: w.messages_of(w.alice) == 4, "the message written once the lock goes")
    await asyncio.sleep(1.0)
    after = await fc.slash(w.guild, w.general, w.alice, "stats")
    assert not after.embeds[0].get("footer", {}).get("text")
    assert "4" in after.embeds[0]["fields"][0]["value"]
