"""/health in Discord, and /healthz and /metrics over real HTTP on 127.0.0.1."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .harness import World
from .test_reliability import free_port, write_lock


async def test_health_for_managers_only_and_ephemeral(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot()
    await fc.wait_for_commands("health", guild=w.guild)
    await fc.send_message(w.guild, w.general, w.alice, "hi")
    await fc.slash(w.guild, w.general, w.alice, "top messages")
    owner = fc.guilds[w.guild].owner_id
    answer = await fc.slash(w.guild, w.general, owner, "health")
    assert answer.ephemeral
    (embed,) = answer.embeds
    assert embed["title"].endswith("Bot health: ok")
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert {"Uptime", "Gateway latency", "Events / s (1 min)", "Messages counted", "Process"} <= set(fields)
    assert "/top" in fields["Command response times"] and "p95" in fields["Command response times"]
    denied = await fc.slash(w.guild, w.general, w.bob, "health", permissions=0)
    assert denied.ephemeral and "Manage Server" in denied.embeds[0]["description"]
    lines = [r for r in w.log_records(w.bots[-1]) if r["message"].startswith("/top messages by")]
    assert lines and lines[0]["extra"]["command"] == "top messages" and "answered in" in lines[0]["message"]


async def test_healthz_and_metrics_over_http_even_with_the_database_locked(world: World) -> None:
    fc, w = world.fc, world
    port = free_port()
    await w.start_bot(HEALTH_PORT=str(port), FLUSH_INTERVAL="0.5s")
    await fc.send_message(w.guild, w.general, w.alice, "hi")
    await w.wait_db(lambda: w.messages_of(w.alice) == 1, "alice's message")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
            body = await response.json()
        assert body["status"] == "ok" and body["messages_counted"] == 1 and body["last_flush"]["ok"] is True
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"leaderboard_messages_counted", "leaderboard_flush_seconds", "leaderboard_status"} <= names
        with write_lock(w.db_path):  # a busy database never makes a probe wait
            await fc.send_message(w.guild, w.general, w.alice, "while locked")
            await fc.sleep(2.0)
            async with http.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                degraded = await r.json()
            assert degraded["status"] in ("degraded", "failing") and degraded["database_failing_since"]
            async with http.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=1)) as r:
                assert r.status == 200
        await w.wait_db(lambda: w.messages_of(w.alice) == 2, "the message written once the lock goes")


async def test_command_spam_is_asked_to_slow_down_privately(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(COMMAND_LIMIT="3/10s")
    await fc.wait_for_commands("top", guild=w.guild)
    answers = [await fc.slash(w.guild, w.general, w.alice, "top messages") for _ in range(4)]
    assert [a.ephemeral for a in answers] == [False, False, False, True]
    assert "Slow down a little: try again in" in answers[-1].embeds[0]["description"]
    other = await fc.slash(w.guild, w.general, w.bob, "top messages")  # per member
    assert not other.ephemeral
    owner = fc.guilds[w.guild].owner_id  # Manage Server: exempt from the limit, nothing else
    assert [(await fc.slash(w.guild, w.general, owner, "top messages")).ephemeral for _ in range(5)] == [False] * 5


async def test_start_up_names_a_missing_board_channel_once(world: World) -> None:
    bot = await world.start_bot(CHAT_LB_CHANNEL_ID="123456789012345678")
    await world.wait_log("is not a channel the bot can see")
    lines = [line for line in bot.output().splitlines() if "CHAT_LB_CHANNEL_ID=123456789012345678" in line]
    assert len(lines) == 1
    assert "the bot is missing" not in bot.output()  # the channels that exist have every permission


async def test_start_up_outside_the_configured_server_gives_the_invite_link(world: World) -> None:
    fc, w = world.fc, world
    bot = await fc.start_bot(
        ["-m", "leaderboard_bot"], env=w.env(GUILD_ID="123456789012345678"), cwd=str(w.tmp), token_env="BOT_TOKEN"
    )
    w.bots.append(bot)
    await w.wait_log("is not in the server GUILD_ID=123456789012345678", timeout=30)
    (line,) = [x for x in bot.output().splitlines() if "invite it with" in x]
    assert "scope=bot+applications.commands" in line and "permissions=2251799813778432" in line


async def test_start_up_names_each_permission_missing_in_a_board_channel_once(world: World) -> None:
    fc, w = world.fc, world
    fc.set_channel_forbidden(w.vc_lb)  # an overwrite denying Send Messages, Embed Links, Pin Messages, ...
    bot = await w.start_bot()
    await w.wait_log("the bot is missing")
    lines = [line for line in bot.output().splitlines() if "the bot is missing" in line]
    assert len(lines) == 1
    (line,) = lines
    assert "#vc-lb" in line and "VC_LB_CHANNEL_ID" in line
    assert "Send Messages" in line and "Embed Links" in line
    assert bot.returncode is None  # it keeps running: the other board and the commands still work
    await fc.send_message(w.guild, w.general, w.alice, "hi")
    await w.wait_db(lambda: w.messages_of(w.alice) == 1, "a message counted despite the bad channel")
