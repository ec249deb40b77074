"""HIDE_DEPARTED end to end: a member who left the server is hidden from the pinned board and /top
(found by a REST lookup: the bot has no members intent), and shown again after rejoining."""

from __future__ import annotations

import asyncio
from typing import Any

from .harness import World
from .test_settings import change

MEMBER_LOOKUP = r"/guilds/\d+/members/\d+$"


def board_lines(w: World, channel: int) -> list[str]:
    posts = [m for m in w.fc.channel_messages(channel) if m.author_id == w.fc.bot_id and m.type == 0 and m.embeds]
    return posts[-1].embeds[0].get("description", "").splitlines() if posts else []


def names_in(lines: list[str]) -> list[str]:
    # "<arrow> **#1** Ali — **3 messages**" -> "#1 Ali" (the caller's own line is left out)
    ranked = [line for line in lines if "**#" in line and not line.startswith("Your rank")]
    return [line.split("**", 2)[1] + " " + line.split("** ", 1)[1].split(" —")[0] for line in ranked]


def season_messages(w: World, user: int) -> int:
    rows = w.query("SELECT messages FROM member_stats WHERE guild_id = ? AND user_id = ? AND season = 1", w.guild, user)
    return int(rows[0][0]) if rows else 0


async def top_names(w: World, user: int) -> tuple[list[str], Any]:
    answer = await w.fc.slash(w.guild, w.general, user, "top messages")
    return names_in(answer.embeds[0]["description"].splitlines()), answer


async def test_a_departed_member_is_hidden_and_shown_again_after_rejoining(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="30s", SPAM_LIMIT="off")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    for user, count in ((w.alice, 3), (w.bob, 2), (w.carol, 1)):
        for i in range(count):
            await fc.send_message(w.guild, w.general, user, f"m{i}")
    await change(w, "UPDATE_INTERVAL", "1s")
    everyone = ["#1 Ali", "#2 Bobby", "#3 carol"]
    await fc.wait_for(lambda: names_in(board_lines(w, w.chat_lb)) == everyone, 15, "the board with all three")

    await fc.member_leave(w.guild, w.bob)
    await change(w, "UPDATE_INTERVAL", "30s")  # from here, only the setting itself refreshes the board
    assert (await top_names(w, w.alice))[0] == everyone  # the setting is off: shown, and nobody asked
    assert fc.calls("GET", MEMBER_LOOKUP) == []

    assert "is now `true`" in await change(w, "HIDE_DEPARTED", "true")
    hidden = ["#1 Ali", "#2 carol"]
    await fc.wait_for(lambda: names_in(board_lines(w, w.chat_lb)) == hidden, 10, "the board without Bobby at once")
    assert (await top_names(w, w.alice))[0] == hidden
    # carol's own rank, shown under a top 1, leaves Bobby out: #2, not #3.
    await change(w, "LEADERBOARD_SIZE", "1")
    names, answer = await top_names(w, w.carol)
    assert names == ["#1 Ali"]
    assert "Your rank: **#2** carol" in answer.embeds[0]["description"]
    await change(w, "LEADERBOARD_SIZE", "10")
    lookups = fc.calls("GET", MEMBER_LOOKUP)
    assert any(c.path.endswith(f"/members/{w.bob}") and c.status == 404 for c in lookups)
    assert season_messages(w, w.bob) == 2  # hidden, not deleted

    # Bobby rejoins and writes: proof of presence, shown again at once (no 10-minute wait).
    await fc.member_join(w.guild, w.bob)
    await fc.send_message(w.guild, w.general, w.bob, "back")
    await fc.send_message(w.guild, w.general, w.bob, "back again")
    back = ["#1 Bobby", "#2 Ali", "#3 carol"]  # 4 messages now
    for _ in range(20):  # /top counts what is not written yet too
        if (await top_names(w, w.alice))[0] == back:
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError("/top does not show Bobby again")
    await change(w, "UPDATE_INTERVAL", "1s")
    await fc.wait_for(lambda: names_in(board_lines(w, w.chat_lb)) == back, 10, "the board with Bobby again")


async def test_a_failed_lookup_never_hides_anyone(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s", SPAM_LIMIT="off", HIDE_DEPARTED="on")
    for user, count in ((w.alice, 3), (w.bob, 2), (w.carol, 1)):
        for i in range(count):
            await fc.send_message(w.guild, w.general, user, f"m{i}")
    await fc.wait_for(lambda: len(board_lines(w, w.chat_lb)) == 3, 15, "the board with all three")
    await w.stop_all()
    # Both leave while the bot is away; Discord then fails carol's lookup (a 403, then 503s).
    await fc.member_leave(w.guild, w.bob)
    await fc.member_leave(w.guild, w.carol)
    fc.inject_error("GET", rf"/guilds/{w.guild}/members/{w.carol}$", status=403, code=50001, times=1)
    fc.inject_error("GET", rf"/guilds/{w.guild}/members/{w.carol}$", status=503, times=100)
    await w.start_bot(UPDATE_INTERVAL="1s", HIDE_DEPARTED="on")
    await fc.wait_for(
        lambda: names_in(board_lines(w, w.chat_lb)) == ["#1 Ali", "#2 carol"], 20, "Bobby hidden, carol shown"
    )
    assert (await top_names(w, w.alice))[0] == ["#1 Ali", "#2 carol"]
    carol_lookups = fc.calls("GET", rf"/guilds/{w.guild}/members/{w.carol}$")
    assert carol_lookups and all(c.status in (403, 503) for c in carol_lookups)
