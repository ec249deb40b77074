"""Issue 9 end to end: a 5xx/429 storm on the board channels. The bot stays up, commands keep
answering, nothing is lost or counted twice, the boards come back edited in place (one pinned
message per channel), and the log tells each distinct failure once or twice, never per attempt."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from typing import Any

from leaderboard_bot.ui.format import format_duration

from .harness import World

ALICE_MESSAGES, BOB_MESSAGES = 5, 3


def bot_posts(w: World, channel: int) -> list[Any]:
    return [m for m in w.fc.channel_messages(channel) if m.author_id == w.fc.bot_id and m.type == 0]


def description(w: World, channel: int) -> str:
    posts = bot_posts(w, channel)
    return str(posts[0].embeds[0].get("description", "")) if len(posts) == 1 else ""


def inject_storm(w: World, channel: int) -> list[Any]:
    """Every route of the board's channel fails for a while, in the order Discord might do it.

    Creating the board: a 503 (disnake gives up at once), then a 502 (disnake retries it).
    Pinning: a 503, then short 429s. Editing: two 503s, then a 500 and a 502 that disnake retries,
    then 429s, the last asking for 3 s (user scope): the retries run out and the refresh fails
    again. Three failed refreshes at most, so the back-off stays short enough for this test."""
    fc = w.fc
    create, edit = rf"^/channels/{channel}/messages$", rf"^/channels/{channel}/messages/\d+$"
    pin = rf"^/channels/{channel}/(messages/)?pins/\d+$"
    return [
        fc.inject_error("POST", create, status=503, times=1),
        fc.inject_error("POST", create, status=502, times=1),
        fc.inject_error("PUT", pin, status=503, times=1),
        fc.inject_error("PUT", pin, status=429, retry_after=0.2, times=2),
        fc.inject_error("PATCH", edit, status=503, times=2),
        fc.inject_error("PATCH", edit, status=500, times=1),
        fc.inject_error("PATCH", edit, status=502, times=1),
        fc.inject_error("PATCH", edit, status=429, retry_after=0.2, times=2, scope="user"),
        fc.inject_error("PATCH", edit, status=429, retry_after=3.0, times=1, scope="user"),
    ]


def failed_calls(w: World, channel: int) -> list[Any]:
    calls = [c for method in ("POST", "PATCH", "PUT") for c in w.fc.calls(method, rf"^/channels/{channel}/")]
    return [c for c in calls if c.status >= 400]


async def test_a_5xx_and_429_storm_on_the_board_channels(world: World) -> None:
    fc, w = world.fc, world
    started = time.monotonic()
    faults = [f for channel in (w.chat_lb, w.vc_lb) for f in inject_storm(w, channel)]
    bot = await w.start_bot(UPDATE_INTERVAL="1s")
    await fc.voice_join(w.alice, w.lounge)  # the voice board changes every second: an edit a cycle

    # The storm: members keep talking and asking for the standings meanwhile.
    answers = []
    for i in range(ALICE_MESSAGES):
        await fc.send_message(w.guild, w.general, w.alice, f"a{i}")
        if i < BOB_MESSAGES:
            await fc.send_message(w.guild, w.general, w.bob, f"b{i}")
        answers.append(await fc.slash(w.guild, w.general, w.carol, "top messages", timeout=5))
        await asyncio.sleep(1.5)
    assert all(a.embeds and a.embeds[0]["title"] for a in answers)  # every command answered, in time

    await fc.wait_for(lambda: all(f.hits == f.times for f in faults), 25, "the storm to hit every route")
    await fc.voice_leave(w.alice, w.guild)

    # Counted exactly once each, whatever the boards went through.
    await w.wait_db(lambda: w.messages_of(w.alice) == ALICE_MESSAGES, "alice's messages")
    assert w.messages_of(w.bob) == BOB_MESSAGES and w.messages_of(w.carol) == 0
    stats = await fc.slash(w.guild, w.general, w.alice, "stats", timeout=5)
    fields = {f["name"]: f["value"] for f in stats.embeds[0]["fields"]}
    assert fields["Messages"] == f"{ALICE_MESSAGES} · rank #1"

    # The boards are current again: the same one message, edited in place, still pinned.
    chat_lines = [f"**#1** Ali — **{ALICE_MESSAGES} messages**", f"**#2** Bobby — **{BOB_MESSAGES} messages**"]
    await fc.wait_for(lambda: all(line in description(w, w.chat_lb) for line in chat_lines), 15, "the chat board")
    await w.wait_db(lambda: w.voice_of(w.alice) > 0, "alice's voice time")
    shown = f"**#1** Ali — **{format_duration(w.voice_of(w.alice))}**"
    await fc.wait_for(lambda: shown in description(w, w.vc_lb), 15, "the voice board")
    # The pin waited for a refresh that got through (it comes after the edit).
    await fc.wait_for(lambda: all(p.pinned for c in (w.chat_lb, w.vc_lb) for p in bot_posts(w, c)), 10, "the pins")
    for channel in (w.chat_lb, w.vc_lb):
        (board,) = bot_posts(w, channel)
        assert board.pinned and board.edit_count >= 1
        created = [c for c in fc.calls("POST", rf"^/channels/{channel}/messages$") if c.status < 300]
        assert len(created) == 1, "the board was posted again"
        assert len(failed_calls(w, channel)) >= 8  # the storm really happened to this channel
    assert bot.returncode is None

    # The log: no traceback, and each distinct failure at most twice (first line, then a summary).
    def edited_lines() -> list[dict[str, Any]]:
        return [
            r
            for r in w.log_records(bot)
            if r["message"].startswith("board refresh:") and r["extra"]["result"] == "edited"
        ]

    # (A refresh's line is written once it has also pinned and saved: a moment after the edit.)
    await fc.wait_for(lambda: {r["extra"]["channel_id"] for r in edited_lines()} == {w.chat_lb, w.vc_lb}, 5, "lines")
    records = w.log_records(bot)
    assert [r for r in records if "exception" in r] == []
    throttled = Counter(
        (r["extra"].get("board"), r["extra"].get("channel_id"), r["message"].split(":")[0], r["extra"]["failure"])
        for r in records
        if "failure" in r["extra"]
    )
    assert throttled and max(throttled.values()) <= 2, throttled
    rate_limited = Counter(
        m.group(1) for r in records if (m := re.search(r'We are being rate limited.*bucket "([^"]+)"', r["message"]))
    )
    assert rate_limited and max(rate_limited.values()) <= 2, rate_limited
    noisy = [r for r in records if r["level"] in ("WARNING", "ERROR", "CRITICAL")]
    all_failed = len(failed_calls(w, w.chat_lb)) + len(failed_calls(w, w.vc_lb))
    assert len(noisy) * 2 <= all_failed, [r["message"] for r in noisy]
    recovered = [r["message"] for r in records if "recovered after" in r["message"]]
    assert any(m.startswith("the messages leaderboard is being updated again") for m in recovered), recovered
    assert any(m.startswith("the voice leaderboard is being updated again") for m in recovered), recovered
    # Each refresh that changed a board said so in one line with its duration and context.
    assert all(r["extra"]["guild_id"] == w.guild and r["extra"]["duration_ms"] >= 0 for r in edited_lines())
    assert time.monotonic() - started < 40
