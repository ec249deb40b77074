"""Runtime settings end to end: changed without a restart, kept across one, a board moved to
another channel, excluded channels and roles, and changes while the database is locked."""

from __future__ import annotations

import asyncio
import time

from .harness import World
from .test_reliability import write_lock


def board(w: World, channel: int) -> object | None:
    mine = [m for m in w.fc.channel_messages(channel, include_system=False) if m.embeds]
    return mine[-1] if mine else None


async def change(w: World, name: str, value: str) -> str:
    owner = w.fc.guilds[w.guild].owner_id
    answer = await w.fc.slash(w.guild, w.general, owner, "leaderboard settings set", {"name": name, "value": value})
    assert answer.ephemeral
    return str(answer.embeds[0]["description"])


async def test_a_setting_changes_at_once_survives_a_restart_and_resets(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s", SPAM_LIMIT="off")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    for user in (w.alice, w.bob, w.carol):
        await fc.send_message(w.guild, w.general, user, "hi")
    await fc.wait_for(lambda: (m := board(w, w.chat_lb)) and m.embeds[0]["description"].count("\n") >= 2, 15, "3 lines")
    assert "is now `1`" in await change(w, "LEADERBOARD_SIZE", "1")
    await fc.wait_for(lambda: board(w, w.chat_lb).embeds[0]["description"].count("#") == 1, 10, "a top 1")
    refused = await change(w, "UPDATE_INTERVAL", "whenever")
    assert "Nothing changed" in refused and "UPDATE_INTERVAL" in refused
    member = await fc.slash(w.guild, w.general, w.bob, "leaderboard settings show", permissions=0)
    assert member.ephemeral and "Manage Server" in member.embeds[0]["description"]
    await w.stop_all()
    await w.start_bot(UPDATE_INTERVAL="1s")
    owner = fc.guilds[w.guild].owner_id
    shown = await fc.slash(w.guild, w.general, owner, "leaderboard settings show")
    assert "`LEADERBOARD_SIZE` = `1` · *changed here*" in shown.embeds[0]["description"]
    top = await fc.slash(w.guild, w.general, w.alice, "top messages")
    assert top.embeds[0]["description"].count("**#") == 1
    reset = await fc.slash(w.guild, w.general, owner, "leaderboard settings reset", {"name": "LEADERBOARD_SIZE"})
    assert "LEADERBOARD_SIZE" in reset.embeds[0]["description"]
    top = await fc.slash(w.guild, w.general, w.alice, "top messages")
    assert top.embeds[0]["description"].count("**#") == 3


async def test_a_board_moved_to_another_channel_is_posted_there_and_leaves_a_note(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    old = await fc.wait_for(lambda: (m := board(w, w.chat_lb)) and m.pinned and m, 15, "the board")
    new_channel = fc.add_channel(w.guild, "new-chat-lb")
    await change(w, "CHAT_LB_CHANNEL_ID", str(new_channel))
    await fc.wait_for(lambda: (m := board(w, new_channel)) and m.pinned, 10, "the board in the new channel")
    note = await fc.wait_for(
        lambda: (
            (m := board(w, w.chat_lb)) and "moved to" in (m.embeds[0].get("description") or "") and not m.pinned and m
        ),
        10,
        "the unpinned note",
    )
    assert note.id == old.id and not note.pinned and str(new_channel) in note.embeds[0]["description"]


async def test_a_board_channel_the_board_cannot_live_in_is_refused_and_nothing_moves(world: World) -> None:
    """Changed, the setting turns the working board into a "moved" note: a channel the board
    cannot be posted in would leave no board anywhere, so it is refused first, saying why."""
    from fakecord import CATEGORY  # type: ignore[import-not-found]

    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    old = await fc.wait_for(lambda: (m := board(w, w.chat_lb)) and m.pinned and m, 15, "the board")
    category = fc.add_channel(w.guild, "Boards", type=CATEGORY)
    elsewhere = fc.add_channel(fc.add_guild("Another server"), "their-chat")
    locked = fc.add_channel(w.guild, "read-only")
    fc.set_channel_forbidden(locked)
    await asyncio.sleep(0.5)  # the gateway's channel events reach the bot
    assert "is not a text channel" in await change(w, "CHAT_LB_CHANNEL_ID", str(category))
    assert "not a channel of this server" in await change(w, "CHAT_LB_CHANNEL_ID", str(elsewhere))
    refused = await change(w, "VC_LB_CHANNEL_ID", str(locked))
    assert refused.startswith("Nothing changed") and "lacks Send Messages" in refused
    await asyncio.sleep(2.5)  # two refreshes: the boards stayed where they were
    assert board(w, w.chat_lb).id == old.id and board(w, w.chat_lb).pinned  # type: ignore[attr-defined]
    assert "moved to" not in (board(w, w.chat_lb).embeds[0].get("description") or "")  # type: ignore[attr-defined]
    assert board(w, category) is None and board(w, locked) is None
    owner = fc.guilds[w.guild].owner_id
    shown = await fc.slash(w.guild, w.general, owner, "leaderboard settings show")
    assert "changed here" not in shown.embeds[0]["description"]


async def test_excluded_channels_and_roles_are_not_counted(world: World) -> None:
    fc, w = world.fc, world
    commands_channel = fc.add_channel(w.guild, "bot-commands")
    muted = fc.add_role(w.guild, "muted")
    await w.start_bot(SPAM_LIMIT="off", FLUSH_INTERVAL="0.5s")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    await change(w, "EXCLUDED_CHANNELS", f"{commands_channel}, {w.lounge}")
    await change(w, "EXCLUDED_ROLES", str(muted))
    await fc.member_update(w.guild, w.carol, roles=[muted])
    await fc.send_message(w.guild, commands_channel, w.alice, "!help")  # excluded channel
    await fc.send_message(w.guild, w.general, w.carol, "muted talk")  # excluded role
    await fc.send_message(w.guild, w.general, w.alice, "counted")
    await w.wait_db(lambda: w.messages_of(w.alice) == 1, "alice's one counted message")
    await asyncio.sleep(1.0)
    assert w.messages_of(w.alice) == 1 and w.messages_of(w.carol) == 0
    # Voice: bob counts in Lounge 2; excluding it stops him at that moment.
    await fc.voice_join(w.bob, w.lounge2)
    await asyncio.sleep(1.5)
    stopped = time.monotonic()
    await change(w, "EXCLUDED_CHANNELS", f"{commands_channel}, {w.lounge}, {w.lounge2}")
    await asyncio.sleep(2.0)
    credited = w.voice_of(w.bob)
    assert 1.0 <= credited <= 1.5 + (time.monotonic() - stopped) - 1.5
    await fc.voice_move(w.alice, w.lounge)
    await asyncio.sleep(1.5)
    assert w.voice_of(w.alice) == 0.0


async def test_set_and_reset_answer_in_time_while_the_database_is_locked_and_change_nothing(world: World) -> None:
    """A backup holding the write lock: both commands are acknowledged within Discord's 3 s
    (fakecord raises InteractionTimeout otherwise), then say nothing changed; nothing did, in
    memory or on disk; the log has one line per refusal and no traceback."""
    fc, w = world.fc, world
    bot = await w.start_bot(FLUSH_INTERVAL="0.5s", SPAM_LIMIT="off")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    owner = fc.guilds[w.guild].owner_id
    assert "is now `5`" in await change(w, "LEADERBOARD_SIZE", "5")
    with write_lock(w.db_path):
        await fc.send_message(w.guild, w.general, w.alice, "a flush waits on the lock too")
        await asyncio.sleep(1.0)
        answers = [
            await fc.slash(
                w.guild, w.general, owner, "leaderboard settings set", {"name": "LEADERBOARD_SIZE", "value": "3"},
                timeout=40,
            ),
            await fc.slash(w.guild, w.general, owner, "leaderboard settings reset", {"name": "all"}, timeout=40),
        ]  # fmt: skip
        for answer in answers:
            text = answer.embeds[0]["description"]
            assert answer.ephemeral and text.startswith("Nothing changed") and "busy" in text, text
        shown = await fc.slash(w.guild, w.general, owner, "leaderboard settings show")  # no I/O: answers at once
        assert "`LEADERBOARD_SIZE` = `5` · *changed here*" in shown.embeds[0]["description"]
    assert w.query("SELECT value FROM setting WHERE key = 'override:LEADERBOARD_SIZE'") == [('"5"',)]
    records = [r for r in w.log_records(bot) if "/leaderboard settings" in r["message"]]
    refused = [r for r in records if "nothing changed" in r["message"]]
    assert [r["level"] for r in refused] == ["WARNING", "WARNING"], refused
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    assert "Traceback" not in bot.output() and "could not send the apology" not in bot.output()
    # The lock gone, the same commands work.
    assert "is now `3` (was `5`)" in await change(w, "LEADERBOARD_SIZE", "3")
    reset = await fc.slash(w.guild, w.general, owner, "leaderboard settings reset", {"name": "all"})
    assert reset.embeds[0]["description"] == "Back to the environment's values: LEADERBOARD_SIZE."
    assert w.query("SELECT value FROM setting WHERE key LIKE 'override:%'") == []
