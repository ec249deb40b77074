"""Issue 4 end to end: seasons end on time (and on request), are archived, and announced once."""

from __future__ import annotations

import asyncio
import copy

import pytest

from .harness import World

CONFIRM_ID = "leaderboard-reset:confirm"


def finals(w: World, channel: int) -> list:
    return [
        m
        for m in w.fc.channel_messages(channel)
        if m.author_id == w.fc.bot_id and m.embeds and "final standings" in m.embeds[0].get("title", "")
    ]


async def test_a_short_season_is_archived_announced_once_and_restarted(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(RESET_PERIOD="6s", UPDATE_INTERVAL="1s", SPAM_LIMIT="off")
    for i in range(3):
        await fc.send_message(w.guild, w.general, w.alice, f"a{i}")
    await fc.send_message(w.guild, w.general, w.bob, "b")
    await fc.voice_join(w.carol, w.lounge)
    await fc.wait_for(lambda: finals(w, w.chat_lb) and finals(w, w.vc_lb), 20, "final standings in both channels")
    (chat_final,) = finals(w, w.chat_lb)
    (voice_final,) = finals(w, w.vc_lb)
    assert chat_final.embeds[0]["title"] == "Season 1 — final standings"
    assert not chat_final.pinned and not voice_final.pinned
    desc = chat_final.embeds[0]["description"]
    assert "**#1** Ali — **3 messages**" in desc and "**#2** Bobby — **1 message**" in desc
    assert "carol" in voice_final.embeds[0]["description"]
    # Archived, nothing deleted; season 2 is open and its boards start from zero.
    await w.wait_db(
        lambda: w.query("SELECT 1 FROM season WHERE number = 1 AND announced_at IS NOT NULL"),
        "season 1 marked as announced",
    )
    seasons = w.query("SELECT number, ended_at IS NOT NULL, announced_at IS NOT NULL FROM season ORDER BY number")
    assert seasons[0] == (1, 1, 1) and seasons[1][0] == 2
    assert w.query("SELECT messages FROM member_stats WHERE season = 1 AND user_id = ?", w.alice) == [(3,)]
    # Voice in progress across the boundary is split: carol keeps accruing in season 2.
    await w.wait_db(
        lambda: w.query("SELECT voice_seconds FROM member_stats WHERE season = 2 AND user_id = ?", w.carol),
        "carol's season 2 voice time",
    )
    (season1_end,) = w.query("SELECT ended_at FROM season WHERE number = 1")[0]
    (session_start,) = w.query("SELECT started_at FROM voice_session WHERE user_id = ?", w.carol)[0]
    (v1,) = w.query("SELECT voice_seconds FROM member_stats WHERE season = 1 AND user_id = ?", w.carol)[0]
    assert v1 == pytest.approx(season1_end - session_start, abs=0.05)
    # The pinned board now shows the new, empty season.
    await fc.wait_for(
        lambda: any(
            "Season 2" in [f["name"] for f in m.embeds[0].get("fields", [])]
            and "No messages counted yet" in m.embeds[0].get("description", "")
            for m in fc.channel_messages(w.chat_lb)
            if m.pinned and m.embeds
        ),
        15,
        "the board to show season 2",
    )
    await asyncio.sleep(1.5)
    titles = [m.embeds[0]["title"] for m in finals(w, w.chat_lb)]
    assert titles.count("Season 1 — final standings") == 1  # announced once


async def test_restarts_do_not_move_the_reset_date(world: World) -> None:
    w = world
    bot = await w.start_bot(RESET_PERIOD="1h")
    await w.wait_db(lambda: w.query("SELECT ends_at FROM season WHERE number = 1"), "season 1")
    (ends_at,) = w.query("SELECT ends_at FROM season WHERE number = 1")[0]
    await asyncio.sleep(1.0)
    bot.proc.send_signal(15)
    assert await bot.stop(timeout=15) == 0
    await w.start_bot(RESET_PERIOD="1h")
    await asyncio.sleep(1.0)
    assert w.query("SELECT number, ends_at FROM season") == [(1, ends_at)]


async def test_manual_reset_needs_confirmation_and_manage_server(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    owner = fc.guilds[w.guild].owner_id
    await fc.send_message(w.guild, w.general, w.alice, "hello")
    await w.wait_db(lambda: w.messages_of(w.alice) == 1, "alice's message")
    none_yet = await fc.slash(w.guild, w.general, w.bob, "seasons")
    assert none_yet.embeds[0]["description"] == "No season has finished yet."
    # A member without Manage Server is refused, kindly and privately.
    denied = await fc.slash(w.guild, w.general, w.bob, "leaderboard reset")
    assert denied.ephemeral and "Manage Server" in denied.embeds[0]["description"]
    asked = await fc.slash(w.guild, w.general, owner, "leaderboard reset")
    assert asked.ephemeral and "season 1" in asked.embeds[0]["description"]
    assert w.query("SELECT COUNT(*) FROM season") == [(1,)]  # nothing happens before confirming
    (confirm_id,) = [
        c["custom_id"]
        for row in asked.message["components"]
        for c in row["components"]
        if c["custom_id"].startswith(CONFIRM_ID)
    ]
    # What another device (a stale client) still shows: the buttons, after this one used them.
    stale = copy.deepcopy(fc._get_message(w.general, asked.interaction.original_id))
    done = await fc.click(w.guild, w.general, owner, asked.interaction.original_id, confirm_id)
    assert "Season 1 is archived" in done.embeds[0]["description"]
    assert w.query("SELECT number, ended_at IS NOT NULL FROM season ORDER BY number") == [(1, 1), (2, 0)]
    # fakecord's click() refuses a button the message no longer has: the stale client's click, by hand.
    click = {"custom_id": confirm_id, "component_type": 2}
    again = await fc.await_interaction(fc.create_interaction(w.guild, w.general, owner, click, type=3, message=stale))
    assert again.ephemeral and "expired" in again.embeds[0]["description"]  # answered, nothing more reset
    assert w.query("SELECT COUNT(*) FROM season") == [(2,)]
    await fc.wait_for(lambda: finals(w, w.chat_lb) and finals(w, w.vc_lb), 10, "announcements")
    assert "Ali" in finals(w, w.chat_lb)[0].embeds[0]["description"]
    top = await fc.slash(w.guild, w.general, w.alice, "top messages")
    assert "No messages counted yet" in top.embeds[0]["description"]
    # The finished season stays visible: /seasons lists it with its winners.
    past = await fc.slash(w.guild, w.general, w.bob, "seasons")
    assert not past.ephemeral
    (season,) = past.embeds[0]["fields"]
    assert season["name"] == "Season 1" and "Messages: **#1** Ali" in season["value"]
    assert "Voice: nobody" in season["value"]
    # One line for the reset, with the seasons, the server, its duration and who asked.
    (reset,) = [r for r in w.log_records(w.bots[0]) if r["message"].startswith("season reset:")]
    assert reset["level"] == "INFO" and reset["extra"]["trigger"] == "manual" and reset["extra"]["user_id"] == owner
    assert (reset["extra"]["finished_season"], reset["extra"]["season"]) == (1, 2)
    assert reset["extra"]["guild_id"] == w.guild and reset["extra"]["duration_ms"] >= 0


async def test_a_bot_offline_at_reset_time_resets_when_back(world: World) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot(RESET_PERIOD="1h")
    await fc.send_message(w.guild, w.general, w.bob, "before the downtime")
    await w.wait_db(lambda: w.messages_of(w.bob) == 1, "bob's message")
    bot.proc.send_signal(15)
    assert await bot.stop(timeout=15) == 0
    # While the bot is down, its season's end passes (the stored clock says so).
    import sqlite3

    conn = sqlite3.connect(w.db_path)
    conn.execute("UPDATE season SET started_at = started_at - 5400, ends_at = ends_at - 5400 WHERE number = 1")
    conn.commit()
    conn.close()
    await w.start_bot(RESET_PERIOD="1h")
    await fc.wait_for(lambda: finals(w, w.chat_lb) and finals(w, w.vc_lb), 15, "final standings after the downtime")
    assert "Bobby" in finals(w, w.chat_lb)[0].embeds[0]["description"]
    await w.wait_db(lambda: w.query("SELECT number FROM season WHERE ended_at IS NULL") == [(2,)], "season 2 open")
    # The cadence holds: season 2 began at season 1's scheduled end (30 min ago), not at the restart.
    ((scheduled_end,),) = w.query("SELECT ends_at FROM season WHERE number = 1")
    assert w.query("SELECT started_at, ends_at FROM season WHERE number = 2") == [
        (scheduled_end, scheduled_end + 3600.0)
    ]


async def test_final_standings_owed_to_a_forbidden_channel_are_posted_once_it_is_allowed(world: World) -> None:
    fc, w = world.fc, world
    fc.set_channel_forbidden(w.chat_lb)
    await w.start_bot(RESET_PERIOD="4s", UPDATE_INTERVAL="1s")
    await fc.send_message(w.guild, w.general, w.alice, "hi")
    await fc.wait_for(lambda: finals(w, w.vc_lb), 15, "the voice board's final standings")
    await w.wait_log("cannot post season 1 final standings")
    assert not finals(w, w.chat_lb)
    assert w.query("SELECT announced_at FROM season WHERE number = 1") == [(None,)]  # still owed
    fc.set_channel_forbidden(w.chat_lb, False)
    await fc.wait_for(lambda: finals(w, w.chat_lb), 30, "the owed final standings")
    # Seasons keep ending every 4 s meanwhile; the owed season 1 still comes first, and once.
    first = finals(w, w.chat_lb)[0]
    assert first.embeds[0]["title"] == "Season 1 — final standings"
    assert "Ali" in first.embeds[0]["description"]
    await w.wait_db(lambda: w.query("SELECT 1 FROM season WHERE number = 1 AND announced_at IS NOT NULL"), "announced")
    titles = [m.embeds[0]["title"] for m in finals(w, w.chat_lb)]
    assert titles.count("Season 1 — final standings") == 1
    assert w.log_text().count("cannot post season 1 final standings") == 1
