"""A hot standby: a second instance with STANDBY=on connects without counting, answers nothing,
and takes over when the active one is killed (SIGKILL), with nothing counted twice."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from .harness import World
from .test_reliability import free_port


async def healthz(port: int) -> dict:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
        return dict(await r.json())


async def test_a_standby_takes_over_when_the_active_instance_is_killed_and_nothing_is_doubled(world: World) -> None:
    fc, w = world.fc, world
    active = await w.start_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off", STANDBY="on")
    await fc.wait_for_commands("stats", guild=w.guild)
    port = free_port()
    standby = await w.launch_bot(
        log_name="bot-standby", FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off", STANDBY="on", HEALTH_PORT=str(port)
    )
    await fc.wait_for(lambda: "standing by" in standby.output(), 30, "the second instance to stand by")
    await fc.wait_for(lambda: "Shard ID None has connected" in standby.output(), 30, "the standby to connect")

    await fc.voice_join(w.bob, w.lounge)
    joined = time.monotonic()
    for i in range(5):
        await fc.send_message(w.guild, w.general, w.alice, f"before {i}")
    answer = await fc.slash(w.guild, w.general, w.carol, "stats", {"user": w.alice})
    assert "5" in answer.embeds[0]["fields"][0]["value"]
    await w.wait_db(lambda: w.messages_of(w.alice) == 5, "the five messages, counted once")
    body = await healthz(port)
    assert body["role"] == "standby" and "standing by" in body["reason"]
    await asyncio.sleep(1.0)
    assert w.messages_of(w.alice) == 5  # the standby saw them too, and counted none
    assert "answered in" not in standby.output()  # and answered no command

    last_flush = time.monotonic()
    active.proc.kill()  # SIGKILL: no shutdown, no lease release
    await active.proc.wait()
    killed = time.monotonic()
    await fc.wait_for(lambda: "took over from" in standby.output(), 15, "the standby to take over")
    took_over = time.monotonic()
    assert took_over - killed < 0.5 + 3.0  # FLUSH_INTERVAL plus a few seconds (the documented window)
    # Who is in voice is read once it counts: at the takeover, or at READY when the takeover came first
    # (a slow machine: the standby's READY still being handled when the active one died).
    await fc.wait_for(
        lambda: "voice reconciled (" in standby.output().split("took over from", 1)[1], 20, "the voice reconcile"
    )

    for i in range(3):
        await fc.send_message(w.guild, w.general, w.alice, f"after {i}")
    await w.wait_db(lambda: w.messages_of(w.alice) == 8, "the messages after the takeover, counted by the standby")
    body = await healthz(port)
    assert body["role"] == "active"
    answer = await fc.slash(w.guild, w.general, w.carol, "stats", {"user": w.alice})
    assert answer.embeds[0]["fields"][0]["value"].startswith("8")  # answered by the new active instance

    await fc.voice_leave(w.bob, w.guild)
    left = time.monotonic()
    await w.wait_db(lambda: w.voice_of(w.bob) > 0 and not w.query(
        "SELECT 1 FROM voice_session WHERE user_id = ? AND ended_at IS NULL", w.bob
    ), "bob's voice time closed")
    await asyncio.sleep(1.0)
    credited = w.voice_of(w.bob)
    lost_window = took_over - last_flush + 1.0  # what the dead instance had not written, and the switch
    assert left - joined - lost_window - 1.0 <= credited <= left - joined + 1.0  # never more than real time
    assert w.messages_of(w.alice) == 8  # nothing doubled


async def test_a_standby_that_takes_over_uses_the_settings_changed_after_it_started(world: World) -> None:
    """Settings set (or reset) with /leaderboard settings on the active instance while the standby
    waits are in force from the standby's first counted message: an excluded channel is not
    counted, the spam limit holds, /top has the stored size, and settings show marks them."""
    fc, w = world.fc, world
    commands_channel = fc.add_channel(w.guild, "bot-commands")
    active = await w.start_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off", STANDBY="on")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    owner = fc.guilds[w.guild].owner_id

    async def change(name: str, value: str) -> None:
        answer = await fc.slash(w.guild, w.general, owner, "leaderboard settings set", {"name": name, "value": value})
        assert "is now" in answer.embeds[0]["description"]

    await change("VOICE_COUNT_ALONE", "false")  # stored before the standby starts: it loads this one
    standby = await w.launch_bot(log_name="bot-standby", FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off", STANDBY="on")
    await fc.wait_for(lambda: "standing by" in standby.output(), 30, "the second instance to stand by")
    await fc.wait_for(lambda: "Shard ID None has connected" in standby.output(), 30, "the standby to connect")
    await change("EXCLUDED_CHANNELS", str(commands_channel))
    await change("LEADERBOARD_SIZE", "1")
    await change("SPAM_LIMIT", "2/1h")
    reset = await fc.slash(w.guild, w.general, owner, "leaderboard settings reset", {"name": "VOICE_COUNT_ALONE"})
    assert "VOICE_COUNT_ALONE" in reset.embeds[0]["description"]
    for user in (w.alice, w.carol):
        await fc.send_message(w.guild, w.general, user, "before")
    await w.wait_db(lambda: w.messages_of(w.alice) == w.messages_of(w.carol) == 1, "the first messages")

    active.proc.kill()  # SIGKILL: no shutdown, no lease release
    await active.proc.wait()
    await fc.wait_for(lambda: "took over from" in standby.output(), 15, "the standby to take over")
    await fc.wait_for(
        lambda: "voice reconciled (" in standby.output().split("took over from", 1)[1], 20, "the voice reconcile"
    )
    for i in range(3):
        await fc.send_message(w.guild, commands_channel, w.alice, f"!help {i}")  # excluded
    for i in range(5):
        await fc.send_message(w.guild, w.general, w.bob, f"burst {i}")  # 2 per hour
    await fc.send_message(w.guild, w.general, w.carol, "after")
    await w.wait_db(lambda: w.messages_of(w.carol) == 2, "the messages after the takeover")
    await asyncio.sleep(1.0)
    assert w.messages_of(w.alice) == 1  # nothing from the excluded channel
    assert w.messages_of(w.bob) == 2  # the spam limit set on the active instance
    shown = (await fc.slash(w.guild, w.general, owner, "leaderboard settings show")).embeds[0]["description"]
    for line in ("`LEADERBOARD_SIZE` = `1` · *changed here*", "`SPAM_LIMIT` = `2/3600s` · *changed here*"):
        assert line in shown, shown
    assert f"`EXCLUDED_CHANNELS` = `{commands_channel}` · *changed here*" in shown, shown
    assert "`VOICE_COUNT_ALONE` = `true`\n" in shown + "\n", shown  # reset on the active one: from .env again
    top = await fc.slash(w.guild, w.general, w.bob, "top messages")  # bob leads: no "your rank" line
    assert top.embeds[0]["description"].count("**#") == 1, top.embeds[0]["description"]
