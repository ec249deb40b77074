"""/leaderboard export end to end: Manage Server only, a private CSV whose content is as expected
(hidden members only as a count, stopped ones absent), periods, per-day rows, friendly refusals."""

from __future__ import annotations

import time
from typing import Any

from .harness import World
from .test_privacy import followups, privacy


async def export(w: World, user: int, options: dict[str, Any] | None = None) -> Any:
    answer = await w.fc.slash(w.guild, w.general, user, "leaderboard export", options or {})
    assert answer.ephemeral
    return answer


def csv_bytes(*rows: tuple[object, ...]) -> int:
    return sum(len((",".join(str(c) for c in row) + "\r\n").encode()) for row in rows)


HEADER = ("user_id", "name", "messages", "voice_seconds", "message_rank", "voice_rank")


async def test_owners_export_a_csv_without_hidden_or_stopped_members(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s", SPAM_LIMIT="off")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    owner = fc.guilds[w.guild].owner_id
    for user, count in ((w.alice, 4), (w.bob, 3), (w.carol, 2)):
        for i in range(count):
            await fc.send_message(w.guild, w.general, user, f"m{i}")
    await w.wait_db(lambda: w.messages_of(w.carol) == 2, "the messages")

    denied = await export(w, w.bob)
    assert "Manage Server" in denied.embeds[0]["description"]
    assert denied.interaction.followup_ids == []

    # Everyone: Ali, Bobby, carol in board order.
    answer = await export(w, owner)
    assert "Season 1" in answer.embeds[0]["description"] and "3 rows" in answer.embeds[0]["description"]
    (sent,) = await followups(w, answer, 1)
    assert sent["flags"] & 64
    (attachment,) = sent["attachments"]
    assert attachment["filename"] == "leaderboard-season-1.csv"
    assert attachment["size"] == csv_bytes(
        HEADER,
        (w.alice, "Ali", 4, "0.0", 1, ""),
        (w.bob, "Bobby", 3, "0.0", 2, ""),
        (w.carol, "carol", 2, "0.0", 3, ""),
    )

    # Ali hides, carol stops: Ali is only counted, carol is not there at all; Bobby is #1.
    await privacy(w, w.alice, "hide")
    await privacy(w, w.carol, "stop")
    answer = await export(w, owner, {"period": "week"})
    text = answer.embeds[0]["description"]
    assert "The last 7 days" in text and "1 row" in text and "1 member who chose to hide is left out" in text
    (sent,) = await followups(w, answer, 1)
    (attachment,) = sent["attachments"]
    assert attachment["filename"] == "leaderboard-week.csv"
    assert attachment["size"] == csv_bytes(HEADER, (w.bob, "Bobby", 3, "0.0", 1, ""))

    today = time.strftime("%Y-%m-%d", time.gmtime())
    answer = await export(w, owner, {"first_day": today, "last_day": today, "per_day": True})
    (sent,) = await followups(w, answer, 1)
    (attachment,) = sent["attachments"]
    assert attachment["filename"] == f"leaderboard-{today}-to-{today}.csv"
    assert attachment["size"] == csv_bytes(("day", *HEADER), (today, w.bob, "Bobby", 3, "0.0", 1, ""))


async def test_bad_export_options_get_a_friendly_private_answer(world: World) -> None:
    fc, w = world.fc, world
    await w.start_bot(UPDATE_INTERVAL="1s")
    await fc.wait_for_commands("leaderboard", guild=w.guild)
    owner = fc.guilds[w.guild].owner_id
    cases = [
        ({"season": 1, "period": "week"}, "Pick one"),
        ({"first_day": "2026-01-01"}, "needs both"),
        ({"first_day": "2026-13-01", "last_day": "2026-12-31"}, "YYYY-MM-DD"),
        ({"first_day": "2026-02-01", "last_day": "2026-01-01"}, "swap them"),
        ({"season": 9}, "There's no season 9"),
    ]
    for options, expected in cases:
        answer = await export(w, owner, options)
        assert expected in answer.embeds[0]["description"], options
        assert answer.interaction.followup_ids == []
    assert "Sorry" not in w.log_text()
