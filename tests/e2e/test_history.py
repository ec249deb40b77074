"""Issue 11 end to end: /top and /stats for today, the last 7 and 30 days, all time and a finished
season (picked with autocomplete), the best finished season in /stats, and days in TIMEZONE.

The past is written into the database before the bot starts (a bot cannot be sent messages dated
last month: it judges them by the season's start), so these also show the windows being built
from an upgraded database's daily buckets."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from leaderboard_bot.db.models import DailyActivity, MemberStats, Season
from leaderboard_bot.db.storage import open_database

from .harness import World

DAY = 86_400.0


def utc_day(days_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).date().isoformat()


def seed_history(w: World) -> None:
    """Season 1 ran from 40 to 10 days ago (Bobby won messages with 50, Ali second with 5);
    season 2 began 10 days ago (Ali: 4 messages 9 days ago and 3 two days ago)."""
    now = time.time()
    database = open_database(f"sqlite:///{w.db_path}")
    try:
        guild = w.guild
        Season.insert_many(
            [
                {"guild_id": guild, "number": 1, "started_at": now - 40 * DAY, "ends_at": now - 10 * DAY,
                 "ended_at": now - 10 * DAY, "announced_at": now - 10 * DAY},
                {"guild_id": guild, "number": 2, "started_at": now - 10 * DAY, "ends_at": now + 20 * DAY},
            ]
        ).execute()  # fmt: skip
        MemberStats.insert_many(
            [
                {"guild_id": guild, "season": 1, "user_id": w.bob, "messages": 50, "voice_seconds": 0.0},
                {"guild_id": guild, "season": 1, "user_id": w.alice, "messages": 5, "voice_seconds": 600.0},
                {"guild_id": guild, "season": 2, "user_id": w.alice, "messages": 7, "voice_seconds": 0.0},
            ]
        ).execute()
        DailyActivity.insert_many(
            [
                {"guild_id": guild, "day": utc_day(35), "user_id": w.bob, "messages": 50, "voice_seconds": 0.0},
                {"guild_id": guild, "day": utc_day(35), "user_id": w.alice, "messages": 5, "voice_seconds": 600.0},
                {"guild_id": guild, "day": utc_day(9), "user_id": w.alice, "messages": 4, "voice_seconds": 0.0},
                {"guild_id": guild, "day": utc_day(2), "user_id": w.alice, "messages": 3, "voice_seconds": 0.0},
            ]
        ).execute()
    finally:
        database.close()


def board_text(result: object) -> str:
    return result.embeds[0].get("description", "")  # type: ignore[attr-defined]


def field(result: object, name: str) -> str:
    fields = result.embeds[0].get("fields", [])  # type: ignore[attr-defined]
    return next(f["value"] for f in fields if f["name"] == name)


async def test_each_period_shows_its_own_board_exact_up_to_now(world: World) -> None:
    fc, w = world.fc, world
    seed_history(w)
    await w.start_bot(SPAM_LIMIT="off", FLUSH_INTERVAL="60s")  # today's messages stay unwritten: merged live
    await fc.wait_for_commands("top", guild=w.guild)
    for i in range(2):
        await fc.send_message(w.guild, w.general, w.alice, f"today {i}")
    await fc.send_message(w.guild, w.general, w.carol, "hello")
    await w.wait_log("built the today, week, month and all-time boards")

    async def top(**options: object) -> object:
        return await fc.slash(w.guild, w.general, w.bob, "top messages", options)

    expected = {
        "today": ("Today", ["**#1** Ali — **2 messages**", "**#2** carol — **1 message**"]),
        "week": ("Last 7 days", ["**#1** Ali — **5 messages**", "**#2** carol — **1 message**"]),
        "month": ("Last 30 days", ["**#1** Ali — **9 messages**", "**#2** carol — **1 message**"]),
        "all-time": ("All time", ["**#1** Bobby — **50 messages**", "**#2** Ali — **14 messages**"]),
        "season": (None, ["**#1** Ali — **9 messages**", "**#2** carol — **1 message**"]),
    }
    for period, (label, lines) in expected.items():
        result = await top(period=period)
        text = board_text(result)
        assert all(line in text for line in lines), (period, text)
        title = result.embeds[0]["title"]  # type: ignore[attr-defined]
        assert title == ("Message Leaderboard" if label is None else f"Message Leaderboard · {label}")
        assert "<a:purp_arrow:1403295268505522187>" in text
    week = await top(period="week")
    assert field(week, "Last 7 days").endswith(" · UTC days")
    assert utc_day(6)[8:].lstrip("0") in field(week, "Last 7 days")
    # Bobby's caller line: off the week's board entirely, so no rank line.
    assert "Your rank" not in board_text(week)
    alltime = await top(period="all-time")
    assert "Every season since" in field(alltime, "All time")

    # The finished season's board, chosen through autocomplete.
    choices = await fc.autocomplete(w.guild, w.general, w.bob, "top messages", "season", "")
    assert [c["value"] for c in choices] == [1]
    assert choices[0]["name"].startswith("Season 1 · ")
    season1 = await top(season=1)
    assert season1.embeds[0]["title"] == "Message Leaderboard · Season 1"  # type: ignore[attr-defined]
    assert "**#1** Bobby — **50 messages**" in board_text(season1) and "**#2** Ali" in board_text(season1)
    assert field(season1, "Season 1").startswith("Finished · ran <t:")
    voice1 = await fc.slash(w.guild, w.general, w.bob, "top voice", {"season": 1})
    assert "**#1** Ali — **10m 00s**" in voice1.embeds[0]["description"]

    # Friendly, private answers to what cannot be shown.
    both = await top(period="week", season=1)
    assert both.ephemeral and "either a period or a past season" in board_text(both)
    future = await top(season=9)
    assert future.ephemeral and "hasn't started yet" in board_text(future)
    current = await top(season=2)
    assert not current.ephemeral and current.embeds[0]["title"] == "Message Leaderboard"  # type: ignore[attr-defined]


async def test_stats_for_each_period_and_the_best_finished_season(world: World) -> None:
    fc, w = world.fc, world
    seed_history(w)
    await w.start_bot(SPAM_LIMIT="off")
    await fc.wait_for_commands("stats", guild=w.guild)
    await fc.send_message(w.guild, w.general, w.alice, "hi")
    await w.wait_db(lambda: w.messages_of(w.alice) == 13, "alice's message")

    week = await fc.slash(w.guild, w.general, w.alice, "stats", {"period": "week"})
    assert week.embeds[0]["title"] == "Stats for Ali · Last 7 days"
    assert field(week, "Messages").startswith("4 · rank #1")
    assert field(week, "Best finished season") == "Season 1: #1 in voice time (10m 00s)"  # beats #2 in messages
    today = await fc.slash(w.guild, w.general, w.alice, "stats", {"period": "today"})
    assert field(today, "Messages").startswith("1 · rank #1")
    season = await fc.slash(w.guild, w.general, w.alice, "stats")
    assert field(season, "Messages").startswith("8 · rank #1") and "Season 2 ends" in str(season.embeds[0])
    past = await fc.slash(w.guild, w.general, w.alice, "stats", {"season": 1})
    assert field(past, "Voice time") == "10m 00s · rank #1"
    assert "In voice now" not in [f["name"] for f in past.embeds[0]["fields"]]  # a finished season has no "now"

    # Bobby: nothing in the last 7 days, but a finished season he won: the card still shows it.
    bob = await fc.slash(w.guild, w.general, w.alice, "stats", {"user": w.bob, "period": "week"})
    assert field(bob, "Best finished season") == "Season 1: #1 in messages (50 messages)"
    assert field(bob, "Messages") == "0 · unranked"
    # Carol: nothing anywhere.
    carol = await fc.slash(w.guild, w.general, w.alice, "stats", {"user": w.carol, "period": "month"})
    assert board_text(carol) == "**carol** hasn't been active in the last 30 days."


async def test_days_follow_the_configured_timezone(world: World) -> None:
    fc, w = world.fc, world
    zone = "Pacific/Kiritimati"  # UTC+14: its date differs from UTC's for 14 hours of every day
    await w.start_bot(SPAM_LIMIT="off", TIMEZONE=zone)
    await fc.wait_for_commands("top", guild=w.guild)
    await fc.send_message(w.guild, w.general, w.alice, "kia ora")
    await w.wait_db(lambda: w.query("SELECT day FROM daily_activity"), "the day bucket")
    local_today = datetime.now(ZoneInfo(zone)).date().isoformat()
    assert w.query("SELECT day, messages FROM daily_activity") == [(local_today, 1)]
    today = await fc.slash(w.guild, w.general, w.bob, "top messages", {"period": "week"})
    assert field(today, "Last 7 days").endswith(f" · {zone} days")
    assert "**#1** Ali — **1 message**" in board_text(today)


async def test_a_bad_timezone_stops_the_bot_with_one_line(world: World) -> None:
    fc, w = world.fc, world
    bot = await fc.start_bot(
        ["-m", "leaderboard_bot"],
        env=w.env(TIMEZONE="Europe/Atlantis"),
        cwd=str(w.tmp),
        token_env="BOT_TOKEN",
        token="e2e-secret-token",
        log_path=w.tmp / "bad-zone.log",
    )
    code = await asyncio.wait_for(bot.proc.wait(), 30)
    output = bot.output()
    assert code not in (0, None)
    assert 'TIMEZONE: "Europe/Atlantis" is not a time zone' in output
    assert "Traceback" not in output
