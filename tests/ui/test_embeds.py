from __future__ import annotations

import re

import disnake
import pytest

from leaderboard_bot.domain import ALL_TIME, MONTH, TODAY, WEEK, Board, BoardLine, Placing, Window
from leaderboard_bot.ui.embeds import (
    BRAND_COLOUR,
    DEFAULT_ARROW,
    board_title,
    final_standings_embed,
    finished_season_period,
    format_line,
    format_value,
    guild_icon_url,
    health_embed,
    leaderboard_embed,
    notice_embed,
    stats_embed,
    window_period,
)

ZWSP = "\u200b"
ICON = "https://cdn.discordapp.com/icons/1/abc.png"
AVATAR = "https://cdn.discordapp.com/avatars/2/def.png"
ENDS = 1_700_600_000.0
CHANGED = 1_700_000_123.7
TS_R = re.compile(r"<t:\d+:R>")


def make_lines(n: int, *, board: Board = "messages", name_len: int | None = None) -> list[BoardLine]:
    lines = []
    for i in range(1, n + 1):
        name = ("x" * name_len) if name_len else f"member{i}"
        value = float(1000 - i) if board == "messages" else float(3600 * (30 - i))
        lines.append(BoardLine(rank=i, name=name, user_id=1000 + i, value=value))
    return lines


def board(
    lines: list[BoardLine], *, kind: Board = "messages", arrow: str = DEFAULT_ARROW, **kwargs: object
) -> disnake.Embed:
    params: dict[str, object] = {
        "board": kind,
        "lines": lines,
        "arrow": arrow,
        "guild_icon_url": ICON,
        "season_number": 3,
        "season_ends_at": ENDS,
        "changed_at": CHANGED,
    }
    params.update(kwargs)
    return leaderboard_embed(**params)  # type: ignore[arg-type]


def desc_lines(embed: disnake.Embed) -> list[str]:
    assert embed.description is not None
    return embed.description.split("\n")


def assert_within_limits(embed: disnake.Embed) -> None:
    assert len(embed.title or "") <= 256
    assert len(embed.description or "") <= 4096
    for field in embed.fields:
        assert len(field.name) <= 256
        assert len(field.value) <= 1024
    assert len(embed) <= 6000


# --- leaderboard ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "title"), [("messages", "Message Leaderboard"), ("voice", "Voice Leaderboard")])
def test_title_colour_thumbnail(kind: Board, title: str) -> None:
    embed = board(make_lines(3, board=kind), kind=kind)
    assert embed.title == title == board_title(kind)
    assert embed.colour is not None
    assert embed.colour.value == 0x571173 == BRAND_COLOUR
    assert embed.thumbnail.url == ICON


def test_no_thumbnail_without_icon() -> None:
    embed = board(make_lines(3), guild_icon_url=None)
    assert embed.thumbnail.url is None
    assert "thumbnail" not in embed.to_dict()


@pytest.mark.parametrize("n", [10, 25])
@pytest.mark.parametrize("kind", ["messages", "voice"])
def test_every_line_starts_with_arrow_and_rank(n: int, kind: Board) -> None:
    embed = board(make_lines(n, board=kind), kind=kind)
    rows = desc_lines(embed)
    assert len(rows) == n
    for i, row in enumerate(rows, start=1):
        assert row.startswith(f"{DEFAULT_ARROW} **#{i}** member{i} — **")
        assert row.endswith("**")


def test_custom_arrow() -> None:
    rows = desc_lines(board(make_lines(5), arrow="➤"))
    assert all(row.startswith("➤ **#") for row in rows)


def test_line_format_exact() -> None:
    line = BoardLine(rank=1, name="alice", user_id=1, value=1234)
    assert format_line(line, arrow="→", board="messages") == "→ **#1** alice — **1,234 messages**"
    assert format_line(line, arrow=None, board="messages") == "**#1** alice — **1,234 messages**"


def test_names_escaped_and_mentions_neutralised() -> None:
    lines = [
        BoardLine(rank=1, name="*bob*", user_id=1, value=5),
        BoardLine(rank=2, name="@everyone", user_id=2, value=4),
        BoardLine(rank=3, name="<@123>", user_id=3, value=3),
    ]
    description = board(lines).description
    assert description is not None
    assert "\\*bob\\*" in description
    assert "@everyone" not in description
    assert f"@{ZWSP}everyone" in description
    assert "<@123>" not in description


def test_blank_name_falls_back() -> None:
    row = desc_lines(board([BoardLine(rank=1, name="  \n ", user_id=9, value=2)]))[0]
    assert "Unknown member" in row


def test_voice_values() -> None:
    lines = [
        BoardLine(rank=1, name="a", user_id=1, value=43500),
        BoardLine(rank=2, name="b", user_id=2, value=250),
    ]
    rows = desc_lines(board(lines, kind="voice"))
    assert rows[0].endswith("— **12h 05m**")
    assert rows[1].endswith("— **4m 10s**")


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("messages", 1, "1 message"),
        ("messages", 0, "0 messages"),
        ("messages", 2, "2 messages"),
        ("messages", 1234.0, "1,234 messages"),
        ("voice", 43500, "12h 05m"),
        ("voice", 250, "4m 10s"),
    ],
)
def test_format_value(kind: Board, value: float, expected: str) -> None:
    assert format_value(kind, value) == expected


def test_singular_message_in_embed() -> None:
    rows = desc_lines(board([BoardLine(rank=1, name="solo", user_id=1, value=1)]))
    assert rows[0].endswith("— **1 message**")


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("messages", "No messages counted yet this season. Say hi and claim the top spot!"),
        ("voice", "No voice time yet this season. Hop into a voice channel to get on the board!"),
    ],
)
def test_empty_board_texts(kind: Board, text: str) -> None:
    embed = board([], kind=kind)
    assert embed.description == text
    assert embed.title == board_title(kind)


def test_caller_line_only_when_given() -> None:
    lines = make_lines(10)
    without = board(lines)
    assert "Your rank" not in (without.description or "")

    caller = BoardLine(rank=42, name="me", user_id=77, value=3)
    with_caller = board(lines, caller_line=caller)
    description = with_caller.description or ""
    top, _, tail = description.partition("\n\n")
    assert top == without.description
    assert tail == "Your rank: **#42** me — **3 messages**"
    assert DEFAULT_ARROW not in tail


def test_fields() -> None:
    embed = board(make_lines(3))
    season, change = embed.fields
    assert season.name == "Season 3"
    assert season.inline and change.inline
    assert season.value == f"Resets <t:{int(ENDS)}:R>\n<t:{int(ENDS)}:f>"
    assert TS_R.search(season.value)
    assert change.name == "Last change"
    assert change.value == "<t:1700000123:R>"


def test_changed_at_none() -> None:
    embed = board(make_lines(3), changed_at=None)
    assert embed.fields[1].value == "—"


def test_no_embed_timestamp() -> None:
    embed = board(make_lines(3))
    assert embed.timestamp is None
    assert "timestamp" not in embed.to_dict()


@pytest.mark.parametrize("kind", ["messages", "voice"])
def test_deterministic(kind: Board) -> None:
    lines = make_lines(25, board=kind)
    caller = BoardLine(rank=30, name="*me*", user_id=5, value=7)
    first = board(lines, kind=kind, caller_line=caller)
    second = board(list(lines), kind=kind, caller_line=caller)
    assert first.to_dict() == second.to_dict()
    assert board([], kind=kind).to_dict() == board([], kind=kind).to_dict()


@pytest.mark.parametrize("kind", ["messages", "voice"])
@pytest.mark.parametrize("char", ["x", "*", "@", "<"])
def test_limits_with_25_max_length_names(kind: Board, char: str) -> None:
    # Worst cases: names that double in length once escaped, plus huge values.
    lines = [
        BoardLine(rank=i, name=char * 40, user_id=i, value=10**12 if kind == "messages" else 10**9)
        for i in range(1, 26)
    ]
    caller = BoardLine(rank=99_999, name=char * 40, user_id=0, value=10**12)
    embed = board(lines, kind=kind, caller_line=caller)
    assert_within_limits(embed)
    rows = desc_lines(embed)
    assert len(rows) == 27  # all 25 lines, blank, caller line: nothing had to be dropped
    assert all(row.startswith(DEFAULT_ARROW) for row in rows[:25])

    final = final_standings_embed(
        board=kind,
        lines=lines,
        arrow=DEFAULT_ARROW,
        guild_icon_url=ICON,
        season_number=3,
        started_at=1.0,
        ended_at=ENDS,
    )
    assert_within_limits(final)
    assert len(desc_lines(final)) == 27


def test_huge_arrow_drops_whole_lines_but_keeps_caller() -> None:
    caller = BoardLine(rank=99, name="me", user_id=0, value=1)
    embed = board(make_lines(25), arrow="A" * 500, caller_line=caller)
    assert_within_limits(embed)
    rows = desc_lines(embed)
    assert rows[-1] == "Your rank: **#99** me — **1 message**"
    assert all(row.startswith("A" * 500 + " **#") and row.endswith("**") for row in rows[:-2])
    assert len(rows) - 2 < 25


# --- final standings -----------------------------------------------------------------------


def final(lines: list[BoardLine], kind: Board = "messages") -> disnake.Embed:
    return final_standings_embed(
        board=kind,
        lines=lines,
        arrow=DEFAULT_ARROW,
        guild_icon_url=ICON,
        season_number=3,
        started_at=1_690_000_000.0,
        ended_at=1_700_000_000.0,
    )


@pytest.mark.parametrize("kind", ["messages", "voice"])
def test_final_standings(kind: Board) -> None:
    embed = final(make_lines(10, board=kind), kind)
    assert embed.title == "Season 3 — final standings"
    assert embed.colour is not None and embed.colour.value == BRAND_COLOUR
    assert embed.thumbnail.url == ICON
    rows = desc_lines(embed)
    assert rows[0] == f"**{board_title(kind)}**"
    assert rows[1] == ""
    assert len(rows) == 12
    assert all(row.startswith(f"{DEFAULT_ARROW} **#{i}** ") for i, row in enumerate(rows[2:], start=1))
    (ran,) = embed.fields
    assert ran.name == "Season ran"
    assert ran.value == "<t:1690000000:D> – <t:1700000000:D>"
    assert embed.timestamp is None
    assert embed.to_dict() == final(make_lines(10, board=kind), kind).to_dict()


def test_final_standings_empty() -> None:
    embed = final([], "voice")
    assert embed.description == "**Voice Leaderboard**\n\nNobody made it onto this board this season."


# --- stats ---------------------------------------------------------------------------------


def stats(**kwargs: object) -> disnake.Embed:
    params: dict[str, object] = {
        "name": "alice",
        "avatar_url": AVATAR,
        "messages": 1234,
        "message_rank": 2,
        "voice_seconds": 43500.0,
        "voice_rank": 5,
        "in_voice_channel_id": None,
        "live_session_seconds": None,
        "season_number": 3,
        "season_ends_at": ENDS,
    }
    params.update(kwargs)
    return stats_embed(**params)  # type: ignore[arg-type]


def fields_by_name(embed: disnake.Embed) -> dict[str, str]:
    return {f.name: f.value for f in embed.fields}


def test_stats_ranked() -> None:
    embed = stats()
    assert embed.title == "Stats for alice"
    assert embed.colour is not None and embed.colour.value == BRAND_COLOUR
    assert embed.thumbnail.url == AVATAR
    assert fields_by_name(embed) == {
        "Messages": "1,234 · rank #2",
        "Voice time": "12h 05m · rank #5",
        "In voice now": "No",
        "Season 3 ends": f"<t:{int(ENDS)}:D> (<t:{int(ENDS)}:R>)",
    }
    assert embed.to_dict() == stats().to_dict()


def test_stats_unranked_and_in_voice() -> None:
    embed = stats(
        messages=0,
        message_rank=None,
        voice_seconds=250,
        voice_rank=None,
        in_voice_channel_id=555,
        live_session_seconds=250.0,
        avatar_url=None,
    )
    fields = fields_by_name(embed)
    assert fields["Messages"] == "0 · unranked"
    assert fields["Voice time"] == "4m 10s · unranked"
    assert fields["In voice now"] == "<#555> for 4m 10s"
    assert embed.thumbnail.url is None


def test_stats_in_voice_unknown_length() -> None:
    assert fields_by_name(stats(in_voice_channel_id=555))["In voice now"] == "<#555>"


def test_stats_title_plain_and_truncated() -> None:
    # Titles do not render markdown, so no escaping backslashes; newlines are flattened.
    assert stats(name="*bob*\nsecond").title == "Stats for *bob* second"
    long = stats(name="n" * 500)
    assert long.title is not None
    assert len(long.title) == 256
    assert long.title.startswith("Stats for nnn") and long.title.endswith("…")
    assert stats(name=" \n ").title == "Stats for Unknown member"


# --- notice --------------------------------------------------------------------------------


def test_notice() -> None:
    embed = notice_embed("All set!", title="Done")
    assert embed.description == "All set!"
    assert embed.title == "Done"
    assert embed.colour is not None and embed.colour.value == BRAND_COLOUR
    untitled = notice_embed("x" * 5000)
    assert untitled.title is None
    assert_within_limits(untitled)


def test_guild_icon_url_is_the_icon_or_nothing() -> None:
    from unittest.mock import MagicMock

    with_icon = MagicMock(spec_set=disnake.Guild)
    with_icon.icon.url = "https://cdn.example/icon.png"
    without_icon = MagicMock(spec_set=disnake.Guild)
    without_icon.icon = None
    assert guild_icon_url(with_icon) == "https://cdn.example/icon.png"
    assert guild_icon_url(without_icon) is None
    assert guild_icon_url(None) is None


def test_health_shows_spilled_rows_the_oldest_unsaved_activity_and_what_was_held_back() -> None:
    from leaderboard_bot.services.health import HealthMonitor, Sources

    now = 1_700_000_000.0
    sources = Sources(
        buffered=lambda: (12, 3),
        spilled_rows=lambda: 100_000,
        unsaved_since=lambda: now - 600.0,
        recovery_file_saved=lambda: True,
        spam_blocked=lambda: 4,
        timestamps_clamped=lambda: 2,
    )
    embed = health_embed(HealthMonitor(sources, clock=lambda: now).facts(), now=now)
    fields = {f.name: f.value for f in embed.fields}
    waiting = fields["Waiting to be written"]
    assert "12 message rows, 3 voice rows" in waiting
    assert "100,000 rows moved to disk" in waiting and "(also saved to disk)" in waiting
    assert f"<t:{int(now - 600)}:R>" in waiting  # the oldest unsaved activity, when it is over a minute old
    assert fields["Anti-spam and clock"] == "4 messages held back · 2 timestamps corrected"


def test_stale_figures_carry_a_note_and_fresh_ones_do_not() -> None:
    from leaderboard_bot.ui.embeds import STALE_NOTE

    assert board(lines=make_lines(3)).footer.text is None
    assert stats().footer.text is None
    assert board(lines=make_lines(3), stale=True).footer.text == STALE_NOTE
    assert stats(stale=True).footer.text == STALE_NOTE
    assert "may be a little out of date" in STALE_NOTE


def test_past_seasons_list_dates_and_each_boards_winner() -> None:
    from leaderboard_bot.domain import FinishedSeason
    from leaderboard_bot.ui.embeds import seasons_embed

    winner = BoardLine(rank=1, name="Ali *the* best", user_id=5, value=42)
    seasons = [
        FinishedSeason(2, 1_700_000_000.0, 1_702_592_000.0, {"messages": winner, "voice": None}),
        FinishedSeason(1, 1_697_408_000.0, 1_700_000_000.0, {"messages": None, "voice": None}),
    ]
    embed = seasons_embed(seasons, guild_icon_url=ICON)
    assert embed.title == "Past seasons" and embed.thumbnail.url == ICON
    assert [f.name for f in embed.fields] == ["Season 2", "Season 1"]
    value = embed.fields[0].value or ""
    assert "<t:1700000000:D> – <t:1702592000:D>" in value
    assert "Messages: **#1** Ali" in value and "42 messages" in value and "Voice: nobody" in value
    assert "\\*the\\*" in value  # markdown in names is neutralised, as on the boards
    assert seasons_embed([], guild_icon_url=None).description == "No season has finished yet."


def test_stats_say_whether_voice_counts_now_and_what_the_anti_spam_limit_held_back() -> None:
    embed = stats(in_voice_channel_id=77, live_session_seconds=None, voice_status="not counting while deafened")
    assert fields_by_name(embed)["In voice now"] == "<#77>\nnot counting while deafened"
    held = stats(held_back_today=3)
    assert fields_by_name(held)["Messages"] == "1,234 · rank #2\n3 held back by the anti-spam limit today"
    assert "\n" not in fields_by_name(stats())["Messages"]  # nothing held back: nothing said


# --------------------------------------------------------------------------- periods


def test_a_window_board_is_titled_and_dated_by_its_days_in_the_owners_look() -> None:
    period = window_period(WEEK, today="2026-12-03", zone="Europe/Berlin", first_day="2026-01-10")
    embed = board(make_lines(3), period=period)
    assert embed.title == "Message Leaderboard · Last 7 days"
    assert embed.colour is not None and embed.colour.value == BRAND_COLOUR
    assert embed.thumbnail.url == ICON
    assert all(line.startswith(DEFAULT_ARROW) for line in desc_lines(embed))
    # No reset date, no "last change": those belong to the pinned season boards.
    assert fields_by_name(embed) == {"Last 7 days": "27 Nov – 3 Dec 2026 · Europe/Berlin days"}


@pytest.mark.parametrize(
    ("window", "label", "dates"),
    [
        (TODAY, "Today", "3 Dec 2026 · UTC days"),
        (MONTH, "Last 30 days", "4 Nov – 3 Dec 2026 · UTC days"),
        (ALL_TIME, "All time", "Every season since 10 Jan 2026"),
    ],
)
def test_each_window_names_its_days(window: Window, label: str, dates: str) -> None:
    period = window_period(window, today="2026-12-03", zone="UTC", first_day="2026-01-10")
    assert (period.label, period.dates) == (label, dates)


def test_a_window_across_new_year_names_both_years() -> None:
    period = window_period(WEEK, today="2027-01-02", zone="UTC", first_day="2026-01-10")
    assert period.dates == "27 Dec 2026 – 2 Jan 2027 · UTC days"


def test_an_empty_window_or_finished_season_says_so_in_its_own_words() -> None:
    today = window_period(TODAY, today="2026-12-03", zone="UTC", first_day="2026-01-10")
    assert board([], kind="voice", period=today).description == "No voice time counted today."
    finished = finished_season_period(2, 1_700_000_000.0, 1_702_592_000.0)
    embed = board([], period=finished)
    assert embed.description == "No messages counted in season 2."
    assert embed.title == "Message Leaderboard · Season 2"
    assert fields_by_name(embed) == {"Season 2": "Finished · ran <t:1700000000:D> – <t:1702592000:D>"}


def test_stats_for_a_window_and_a_finished_season_with_the_best_one() -> None:
    week = window_period(WEEK, today="2026-12-03", zone="UTC", first_day="2026-01-10")
    embed = stats(period=week, best_season=Placing(4, "voice", 2, 3_700.0))
    assert embed.title == "Stats for alice · Last 7 days"
    fields = fields_by_name(embed)
    assert fields["Last 7 days"] == "27 Nov – 3 Dec 2026 · UTC days"
    assert fields["Best finished season"] == "Season 4: #2 in voice time (1h 01m)"
    assert "Season 3 ends" not in fields and "In voice now" in fields
    finished = stats(period=finished_season_period(2, 1_700_000_000.0, 1_702_592_000.0), held_back_today=3)
    names = list(fields_by_name(finished))
    assert "In voice now" not in names and "Best finished season" not in names
    assert "held back" not in fields_by_name(finished)["Messages"]  # "today" means nothing in a finished season


def test_a_long_name_leaves_room_for_the_period_in_the_title() -> None:
    week = window_period(WEEK, today="2026-12-03", zone="UTC", first_day="2026-01-10")
    embed = stats(name="n" * 300, period=week)
    assert embed.title is not None and len(embed.title) <= 256 and embed.title.endswith(" · Last 7 days")
