"""/privacy end to end: hide and show, stop and start, the member's own export, and delete with
nothing left but the stop marker. Every answer is private (ephemeral)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from leaderboard_bot.exts.privacy import CONFIRM_ID

from .harness import World
from .test_departed import board_lines, names_in, top_names
from .test_seasons import CONFIRM_ID as RESET_CONFIRM_ID
from .test_seasons import finals


async def privacy(w: World, user: int, sub: str) -> Any:
    answer = await w.fc.slash(w.guild, w.general, user, f"privacy {sub}")
    assert answer.ephemeral, f"/privacy {sub} answered in public"
    return answer


async def followups(w: World, answer: Any, count: int) -> list[dict[str, Any]]:
    """The follow-up messages of an interaction, once ``count`` of them arrived."""
    inter = answer.interaction
    await w.fc.wait_for(lambda: len(inter.followup_ids) >= count, 10, f"{count} follow-up(s)")
    channel = w.fc.channels[inter.channel_id]
    return [channel.messages[i] for i in inter.followup_ids if i in channel.messages]


def rows_naming(w: World, user: int) -> list[tuple[str, Any]]:
    """Every row in the database file that names the member: any column called user_id, or a
    setting whose key or value holds the id."""
    found: list[tuple[str, Any]] = []
    tables = [name for (name,) in w.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = [row[1] for row in w.query(f'PRAGMA table_info("{table}")')]
        if "user_id" in columns:
            found += [(table, row) for row in w.query(f'SELECT * FROM "{table}" WHERE user_id = ?', user)]
    for key, value in w.query("SELECT key, value FROM setting"):
        if str(user) in key or str(user) in value:
            found.append(("setting", (key, value)))
    return found


async def test_hidden_members_still_count_but_are_never_listed_and_stopped_ones_do_not_count(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s", SPAM_LIMIT="off")
    await fc.wait_for_commands("privacy", guild=w.guild)
    for user, count in ((w.alice, 3), (w.bob, 2), (w.carol, 1)):
        for i in range(count):
            await fc.send_message(w.guild, w.general, user, f"m{i}")
    everyone = ["#1 Ali", "#2 Bobby", "#3 carol"]
    await fc.wait_for(lambda: names_in(board_lines(w, w.chat_lb)) == everyone, 15, "the board with all three")

    hidden = await privacy(w, w.alice, "hide")
    assert "hidden" in hidden.embeds[0]["description"]
    assert "already" in (await privacy(w, w.alice, "hide")).embeds[0]["description"]
    await fc.wait_for(lambda: names_in(board_lines(w, w.chat_lb)) == ["#1 Bobby", "#2 carol"], 10, "Ali off the board")
    names, answer = await top_names(w, w.alice)
    assert names == ["#1 Bobby", "#2 carol"]
    assert "Your rank" not in answer.embeds[0]["description"]  # /top is public: no line for a hidden caller
    stats = await fc.slash(w.guild, w.general, w.alice, "stats")
    assert "#1" in str(stats.embeds[0])  # her own rank, raw, in /stats
    asked = await fc.slash(w.guild, w.general, w.bob, "stats", {"user": w.alice})
    assert asked.ephemeral and asked.embeds[0]["description"] == (
        "**Ali** chose not to be listed, so their stats are private."
    )  # and only to her
    await fc.send_message(w.guild, w.general, w.alice, "still counted")
    await w.wait_db(lambda: w.messages_of(w.alice) == 4, "alice's fourth message, counted while hidden")
    assert "listed" in (await privacy(w, w.alice, "show")).embeds[0]["description"]
    back = ["#1 Ali", "#2 Bobby", "#3 carol"]
    await fc.wait_for(lambda: names_in(board_lines(w, w.chat_lb)) == back, 10, "Ali back on the board")

    # Bobby and carol in voice together: counting. Bobby stops: his time stops at once.
    await fc.voice_join(w.bob, w.lounge)
    await fc.voice_join(w.carol, w.lounge)
    await fc.voice_join(w.alice, w.lounge)
    await w.wait_db(lambda: w.voice_of(w.bob) > 0, "bob's voice time")
    stopped = await privacy(w, w.bob, "stop")
    assert "no longer counted" in stopped.embeds[0]["description"]
    await fc.wait_for(lambda: names_in(board_lines(w, w.chat_lb)) == ["#1 Ali", "#2 carol"], 10, "Bobby off")
    await asyncio.sleep(1.5)  # a flush or two: what he earned before the stop is written
    voice_at_stop = w.voice_of(w.bob)
    for i in range(3):
        await fc.send_message(w.guild, w.general, w.bob, f"not counted {i}")
    await fc.send_message(w.guild, w.general, w.carol, "counted")
    await w.wait_db(lambda: w.messages_of(w.carol) == 2, "carol's message")
    await asyncio.sleep(1.5)
    assert w.messages_of(w.bob) == 2 and w.voice_of(w.bob) == voice_at_stop
    assert w.voice_of(w.carol) > 0
    # Started again: counted again, voice too (he is still in the channel).
    assert "counted" in (await privacy(w, w.bob, "start")).embeds[0]["description"]
    await fc.send_message(w.guild, w.general, w.bob, "counted again")
    await w.wait_db(lambda: w.messages_of(w.bob) == 3, "bob's message after start")
    await w.wait_db(lambda: w.voice_of(w.bob) > voice_at_stop, "bob's voice time after start")
    assert w.query("SELECT key, value FROM setting WHERE key LIKE 'privacy:%'") == []


async def test_a_member_exports_their_data_then_erases_it_and_nothing_is_left(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s", SPAM_LIMIT="off")
    await fc.wait_for_commands("privacy", guild=w.guild)
    for user, count in ((w.alice, 3), (w.bob, 2)):
        for i in range(count):
            await fc.send_message(w.guild, w.general, user, f"m{i}")
    await w.wait_db(lambda: w.messages_of(w.alice) == 3 and w.messages_of(w.bob) == 2, "the messages")
    await fc.wait_for(lambda: names_in(board_lines(w, w.chat_lb)) == ["#1 Ali", "#2 Bobby"], 15, "the board")

    exported = await privacy(w, w.alice, "export")
    assert "only for you" in exported.embeds[0]["description"]
    (sent,) = await followups(w, exported, 1)
    assert sent["flags"] & 64  # ephemeral
    files = {a["filename"]: a for a in sent["attachments"]}
    assert set(files) == {"my-leaderboard-data.json", "my-leaderboard-days.csv"}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    expected_csv = f"day,messages,voice_seconds\r\n{today},3,0.0\r\n"
    assert files["my-leaderboard-days.csv"]["size"] == len(expected_csv.encode())
    assert files["my-leaderboard-data.json"]["size"] > 200

    asked = await privacy(w, w.alice, "delete")
    (cancel_id,) = [
        c["custom_id"] for row in asked.message["components"] for c in row["components"] if "cancel" in c["custom_id"]
    ]
    cancelled = await fc.click(w.guild, w.general, w.alice, asked.interaction.original_id, cancel_id)
    assert "Nothing was erased" in cancelled.embeds[0]["description"]
    assert w.messages_of(w.alice) == 3

    asked = await privacy(w, w.alice, "delete")
    assert "Erase your data?" in asked.embeds[0]["title"]
    assert w.messages_of(w.alice) == 3  # nothing happens before confirming
    (confirm_id,) = [
        c["custom_id"]
        for row in asked.message["components"]
        for c in row["components"]
        if c["custom_id"].startswith(CONFIRM_ID)
    ]
    other = await fc.click(w.guild, w.general, w.bob, asked.interaction.original_id, confirm_id)
    assert "Only the member who asked" in (other.content or str(other.followups) or str(other.message))
    assert w.messages_of(w.alice) == 3
    done = await fc.click(w.guild, w.general, w.alice, asked.interaction.original_id, confirm_id)
    assert "Erased" in done.embeds[0]["description"]
    marker = [("setting", (f"privacy:{w.alice}", '"stopped"'))]
    assert rows_naming(w, w.alice) == marker
    assert rows_naming(w, w.bob) != []  # nobody else's data went
    await fc.wait_for(lambda: names_in(board_lines(w, w.chat_lb)) == ["#1 Bobby"], 10, "Ali off the board")

    await fc.send_message(w.guild, w.general, w.alice, "not counted")
    await fc.send_message(w.guild, w.general, w.bob, "counted")
    await w.wait_db(lambda: w.messages_of(w.bob) == 3, "bob's message")
    await asyncio.sleep(1.0)
    assert rows_naming(w, w.alice) == marker  # still nothing: she is not counted

    await privacy(w, w.alice, "start")
    assert rows_naming(w, w.alice) == []
    await fc.send_message(w.guild, w.general, w.alice, "counted from zero")
    await w.wait_db(lambda: w.messages_of(w.alice) == 1, "alice counted from zero")


async def test_a_hidden_member_is_left_off_the_final_standings_past_boards_and_season_winners(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s", SPAM_LIMIT="off")
    await fc.wait_for_commands("privacy", guild=w.guild)
    owner = fc.guilds[w.guild].owner_id
    for user, count in ((w.alice, 3), (w.bob, 2), (w.carol, 1)):
        for i in range(count):
            await fc.send_message(w.guild, w.general, user, f"m{i}")
    await w.wait_db(lambda: w.messages_of(w.carol) == 1, "the messages")
    await privacy(w, w.alice, "hide")
    # /stats numbers as the boards do, whoever asks: no gap that tells someone above is hidden.
    assert stats_field(await fc.slash(w.guild, w.general, w.carol, "stats", {"user": w.bob}), "Messages") == (
        "2 · rank #1"
    )
    assert stats_field(await fc.slash(w.guild, w.general, w.carol, "stats"), "Messages") == "1 · rank #2"

    asked = await fc.slash(w.guild, w.general, owner, "leaderboard reset")
    (confirm_id,) = [
        c["custom_id"]
        for row in asked.message["components"]
        for c in row["components"]
        if c["custom_id"].startswith(RESET_CONFIRM_ID)
    ]
    await fc.click(w.guild, w.general, owner, asked.interaction.original_id, confirm_id)
    await fc.wait_for(lambda: finals(w, w.chat_lb), 10, "the final standings")
    final = finals(w, w.chat_lb)[0].embeds[0]["description"]
    assert "Bobby" in final and "carol" in final and "Ali" not in final
    past = await fc.slash(w.guild, w.general, w.bob, "seasons")
    (season,) = past.embeds[0]["fields"]
    assert "Messages: **#1** Bobby" in season["value"]
    names, _ = await top_names_of_season(w, w.bob, 1)
    assert names == ["#1 Bobby", "#2 carol"]
    best = await fc.slash(w.guild, w.general, w.carol, "stats", {"user": w.bob})
    assert stats_field(best, "Best finished season") == "Season 1: #1 in messages (2 messages)"
    # Shown again: the archive lists her again too.
    await privacy(w, w.alice, "show")
    names, _ = await top_names_of_season(w, w.bob, 1)
    assert names == ["#1 Ali", "#2 Bobby", "#3 carol"]


def stats_field(answer: Any, name: str) -> str:
    return next(f["value"] for f in answer.embeds[0]["fields"] if f["name"] == name)


async def top_names_of_season(w: World, user: int, season: int) -> tuple[list[str], Any]:
    answer = await w.fc.slash(w.guild, w.general, user, "top messages", {"season": season})
    return names_in(answer.embeds[0]["description"].splitlines()), answer
