"""Issue 4 end to end: the pinned leaderboards are posted once, edited in place, and survive
deletion, missing permissions, rate limits and restarts."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from .harness import World, make_world

ARROW = "<a:purp_arrow:1403295268505522187>"


def bot_posts(w: World, channel: int) -> list:
    return [m for m in w.fc.channel_messages(channel) if m.author_id == w.fc.bot_id and m.type == 0]


async def the_board(w: World, channel: int, timeout: float = 15.0) -> Any:
    return await w.fc.wait_for(lambda: next(iter(bot_posts(w, channel)), None), timeout, f"a board in {channel}")


async def test_boards_are_posted_pinned_and_edited_in_place(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s")
    chat = await the_board(w, w.chat_lb)
    voice = await the_board(w, w.vc_lb)
    await fc.wait_for(lambda: all(m.pinned for m in bot_posts(w, w.chat_lb) + bot_posts(w, w.vc_lb)), 10, "pins")
    assert chat.embeds[0]["title"] == "Message Leaderboard"
    assert voice.embeds[0]["title"] == "Voice Leaderboard"
    assert chat.embeds[0]["color"] == 0x571173
    assert chat.embeds[0]["thumbnail"]["url"].startswith(fc.url)  # the guild icon
    for i in range(3):
        await fc.send_message(w.guild, w.general, w.alice, f"a{i}")
    for i in range(2):
        await fc.send_message(w.guild, w.general, w.bob, f"b{i}")
    await fc.send_message(w.guild, w.general, w.carol, "c")

    def ranked() -> bool:
        posts = bot_posts(w, w.chat_lb)
        return len(posts) == 1 and "carol" in posts[0].embeds[0].get("description", "")

    await fc.wait_for(ranked, 15, "the message board to show all three members")
    (board,) = bot_posts(w, w.chat_lb)
    assert board.id == chat.id and board.edit_count >= 1
    lines = board.embeds[0]["description"].splitlines()
    assert lines == [
        f"{ARROW} **#1** Ali — **3 messages**",
        f"{ARROW} **#2** Bobby — **2 messages**",
        f"{ARROW} **#3** carol — **1 message**",
    ]
    fields = {f["name"]: f["value"] for f in board.embeds[0]["fields"]}
    assert "<t:" in fields["Season 1"] and "<t:" in fields["Last change"]
    # Nothing changes: further cycles must not edit the message at all.
    edits = board.edit_count
    await asyncio.sleep(3.5)
    assert bot_posts(w, w.chat_lb)[0].edit_count == edits
    assert len(fc.calls("POST", rf"^/channels/{w.chat_lb}/messages$")) == 1
    assert len(fc.calls("PUT", rf"^/channels/{w.chat_lb}/(messages/)?pins/")) == 1


async def test_voice_board_shows_durations(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s")
    await fc.voice_join(w.alice, w.lounge)
    await asyncio.sleep(2.5)
    await fc.voice_leave(w.alice, w.guild)

    def shown() -> str | None:
        posts = bot_posts(w, w.vc_lb)
        desc = posts[0].embeds[0].get("description", "") if posts else ""
        return desc if "Ali" in desc else None

    desc = await fc.wait_for(shown, 15, "alice on the voice board")
    assert desc.startswith(f"{ARROW} **#1** Ali — **") and desc.rstrip().endswith("s**")


async def test_a_deleted_board_is_posted_again_and_pinned(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s")
    first = await the_board(w, w.chat_lb)
    await fc.wait_for(lambda: bot_posts(w, w.chat_lb)[0].pinned, 10, "the pin")
    await fc.delete_message(w.chat_lb, first.id)
    second = await fc.wait_for(
        lambda: next((m for m in bot_posts(w, w.chat_lb) if m.id != first.id and m.pinned), None),
        15,
        "a new pinned board",
    )
    assert len(bot_posts(w, w.chat_lb)) == 1
    stored = w.query("SELECT value FROM setting WHERE key = 'board:messages'")
    assert str(second.id) in stored[0][0]


async def test_a_forbidden_channel_is_logged_once_and_retried(world: World) -> None:
    fc, w = world.fc, world
    fc.set_channel_forbidden(w.chat_lb)
    bot = await w.start_bot(UPDATE_INTERVAL="1s")
    await the_board(w, w.vc_lb)  # the other board is unaffected
    await w.wait_log("could not update the messages leaderboard")
    await asyncio.sleep(3)
    assert w.log_text().count("could not update the messages leaderboard") == 1
    assert bot.returncode is None
    fc.set_channel_forbidden(w.chat_lb, False)
    await the_board(w, w.chat_lb, timeout=30)
    await w.wait_log("the messages leaderboard is being updated again")


async def test_a_429_on_edit_is_retried_and_the_schedule_survives(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s")
    board = await the_board(w, w.chat_lb)
    fc.inject_error("PATCH", rf"^/channels/{w.chat_lb}/messages/{board.id}$", status=429, retry_after=0.3, times=1)
    await fc.send_message(w.guild, w.general, w.alice, "one")
    await fc.wait_for(lambda: "Ali" in bot_posts(w, w.chat_lb)[0].embeds[0].get("description", ""), 15, "the edit")
    patches = fc.calls("PATCH", rf"^/channels/{w.chat_lb}/messages/{board.id}$")
    assert [c.status for c in patches][:2] == [429, 200]
    await fc.send_message(w.guild, w.general, w.bob, "two")  # the loop is still running
    await fc.wait_for(lambda: "Bobby" in bot_posts(w, w.chat_lb)[0].embeds[0].get("description", ""), 15, "next edit")
    assert len(bot_posts(w, w.chat_lb)) == 1


async def test_a_server_error_on_edit_does_not_end_the_loop(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s")
    board = await the_board(w, w.chat_lb)
    fc.inject_error("PATCH", rf"^/channels/{w.chat_lb}/messages/{board.id}$", status=500, times=5)
    await fc.send_message(w.guild, w.general, w.alice, "one")
    # disnake retries a 5xx five times (~25 s) before giving up; then the loop must carry on.
    await w.wait_log("could not update the messages leaderboard", timeout=45)
    await fc.wait_for(lambda: "Ali" in bot_posts(w, w.chat_lb)[0].embeds[0].get("description", ""), 40, "recovery")


async def test_a_restart_edits_the_same_messages(world: World) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot(UPDATE_INTERVAL="1s")
    chat = await the_board(w, w.chat_lb)
    voice = await the_board(w, w.vc_lb)
    await asyncio.sleep(1.5)
    bot.proc.send_signal(signal.SIGTERM)
    assert await bot.stop(timeout=15) == 0
    posts_before = len(fc.calls("POST", r"^/channels/\d+/messages$"))
    await w.start_bot(UPDATE_INTERVAL="1s")
    await fc.send_message(w.guild, w.general, w.carol, "after restart")
    await fc.wait_for(lambda: "carol" in bot_posts(w, w.chat_lb)[0].embeds[0].get("description", ""), 15, "edit")
    assert [m.id for m in bot_posts(w, w.chat_lb)] == [chat.id]
    assert [m.id for m in bot_posts(w, w.vc_lb)] == [voice.id]
    assert len(fc.calls("POST", r"^/channels/\d+/messages$")) == posts_before


async def test_edit_limit_on_old_messages_backs_off(tmp_path: Path) -> None:
    w = await make_world(tmp_path, old_message_edits=(1, 3600))
    fc = w.fc
    try:
        await w.start_bot(UPDATE_INTERVAL="1s")
        board = await the_board(w, w.chat_lb)
        fc.advance_clock(3601)  # the board is now "older than an hour"
        for i, user in enumerate((w.alice, w.bob, w.carol)):
            await fc.send_message(w.guild, w.general, user, f"m{i}")
            await asyncio.sleep(1.2)
        await w.wait_log("Discord is rate limiting the bot", timeout=15)
        await asyncio.sleep(2.5)
        patches = fc.calls("PATCH", rf"^/channels/{w.chat_lb}/messages/{board.id}$")
        assert len([c for c in patches if c.status == 429]) == 1  # backed off after one 30046: no tight retries
        assert w.bots[0].returncode is None
    finally:
        await w.stop_all()
        await fc.stop()


async def test_a_board_deleted_while_the_bot_was_down_is_posted_again(world: World) -> None:
    fc, w = world.fc, world
    bot = await w.start_bot(UPDATE_INTERVAL="1s")
    first = await the_board(w, w.chat_lb)
    await asyncio.sleep(1.5)
    bot.proc.send_signal(signal.SIGTERM)
    assert await bot.stop(timeout=15) == 0
    await fc.delete_message(w.chat_lb, first.id)  # nobody is listening for this deletion
    await w.start_bot(UPDATE_INTERVAL="1s")
    second = await fc.wait_for(
        lambda: next((m for m in bot_posts(w, w.chat_lb) if m.pinned), None), 15, "a new pinned board"
    )
    assert second.id != first.id and len(bot_posts(w, w.chat_lb)) == 1


async def test_a_failed_pin_is_retried(world: World) -> None:
    fc, w = world.fc, world
    fc.inject_error("PUT", rf"^/channels/{w.chat_lb}/(messages/)?pins/\d+$", status=403, times=2)
    await w.start_bot(UPDATE_INTERVAL="1s")
    await w.wait_log("could not pin the messages leaderboard")
    board = await fc.wait_for(lambda: next((m for m in bot_posts(w, w.chat_lb) if m.pinned), None), 20, "the pin")
    assert len(bot_posts(w, w.chat_lb)) == 1 and board.pinned
    assert w.log_text().count("could not pin the messages leaderboard") == 1  # warned once
    await w.wait_log("the messages leaderboard is pinned now")


async def test_without_read_message_history_the_board_is_still_edited_in_place(world: World) -> None:
    """Read Message History taken away (single-message GETs and the pin list answer 403 Missing
    Access; editing its own message still works): after a restart the stored board keeps being
    edited, never re-posted, and the missing permission is logged once and shown in /health."""
    fc, w = world.fc, world
    bot = await w.start_bot(UPDATE_INTERVAL="1s")
    board = await fc.wait_for(lambda: next((m for m in bot_posts(w, w.chat_lb) if m.pinned), None), 20, "the pin")
    await asyncio.sleep(1.5)
    bot.proc.send_signal(signal.SIGTERM)
    assert await bot.stop(timeout=15) == 0
    reads = rf"^/channels/{w.chat_lb}/messages/\d+$"
    read_before = len(fc.calls("GET", reads))
    fc.inject_error("GET", reads, status=403, code=50001, times=10_000)
    fc.inject_error("GET", rf"^/channels/{w.chat_lb}/(messages/)?pins", status=403, code=50001, times=10_000)
    await w.start_bot(UPDATE_INTERVAL="1s")
    for user, name in ((w.alice, "Ali"), (w.bob, "Bobby"), (w.carol, "carol")):
        await fc.send_message(w.guild, w.general, user, "hello")
        await fc.wait_for(
            lambda name=name: name in bot_posts(w, w.chat_lb)[0].embeds[0].get("description", ""), 15, f"{name} shown"
        )
    await asyncio.sleep(3)  # more cycles: nothing more is logged or fetched
    assert [m.id for m in bot_posts(w, w.chat_lb)] == [board.id]  # edited in place, never a second board
    assert len(fc.calls("POST", rf"^/channels/{w.chat_lb}/messages$")) == 1
    assert not fc.calls("DELETE", rf"^/channels/{w.chat_lb}/")
    patches = [c.status for c in fc.calls("PATCH", rf"^/channels/{w.chat_lb}/messages/{board.id}$")]
    assert len(patches) >= 3 and set(patches) == {200}
    assert [c.status for c in fc.calls("GET", reads)][read_before:] == [403]  # read once, not every cycle
    log = w.log_text()
    assert log.count("give the bot Read Message History") == 1
    assert "could not update the messages leaderboard" not in log
    health = await fc.slash(w.guild, w.general, fc.guilds[w.guild].owner_id, "health")
    refreshes = {f["name"]: f["value"] for f in health.embeds[0]["fields"]}["Last board refresh"]
    assert "without Read Message History" in refreshes
