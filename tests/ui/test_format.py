from __future__ import annotations

import pytest

from leaderboard_bot.ui.format import (
    UNKNOWN_MEMBER,
    discord_timestamp,
    display_name,
    format_count,
    format_duration,
    ordinal_rank,
)

ZWSP = "\u200b"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (-5, "0s"),
        (-0.5, "0s"),
        (0.9, "0s"),
        (1, "1s"),
        (42, "42s"),
        (59.9, "59s"),
        (60, "1m 00s"),
        (61, "1m 01s"),
        (245, "4m 05s"),
        (250, "4m 10s"),
        (3599, "59m 59s"),
        (3599.99, "59m 59s"),
        (3600, "1h 00m"),
        (3661, "1h 01m"),
        (7199, "1h 59m"),
        (43500, "12h 05m"),
        (86400, "24h 00m"),
        (100 * 3600, "100h 00m"),
        (123 * 3600 + 5 * 60 + 59, "123h 05m"),
        (float("nan"), "0s"),
    ],
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0"), (999, "999"), (1000, "1,000"), (1234567, "1,234,567"), (-1234, "-1,234")],
)
def test_format_count(n: int, expected: str) -> None:
    assert format_count(n) == expected


def test_ordinal_rank() -> None:
    assert ordinal_rank(1) == "#1"
    assert ordinal_rank(2) == "#2"
    assert ordinal_rank(100) == "#100"


def _name(nick: str | None = None, global_name: str | None = None, username: str | None = None) -> str:
    return display_name(nick=nick, global_name=global_name, username=username, user_id=123456789)


def test_display_name_fallback_order() -> None:
    assert _name("Nick", "Global", "user") == "Nick"
    assert _name(None, "Global", "user") == "Global"
    assert _name(None, None, "user") == "user"
    assert _name(None, None, None) == UNKNOWN_MEMBER == "Unknown member"


def test_display_name_blank_strings_fall_through() -> None:
    assert _name("", "Global", "user") == "Global"
    assert _name("   ", "\t", "user") == "user"
    assert _name("\n", None, " ") == UNKNOWN_MEMBER
    # Invisible-only names (Hangul filler, zero-width space) read as blank too.
    assert _name("\u3164\u3164", "\u200b", "user") == "user"


def test_display_name_never_shows_id() -> None:
    assert "123456789" not in _name()


def test_display_name_strips_outer_whitespace() -> None:
    assert _name("  bob  ") == "bob"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("*bob*", r"\*bob\*"),
        ("**bob**", r"\*\*bob\*\*"),
        ("_bob_", r"\_bob\_"),
        ("__bob__", r"\_\_bob\_\_"),
        ("~~bob~~", r"\~\~bob\~\~"),
        ("`bob`", r"\`bob\`"),
        ("||bob||", r"\|\|bob\|\|"),
        ("back\\slash", r"back\\slash"),
        ("trailing\\", "trailing\\\\"),
        ("> quote", r"\> quote"),
        (">>> quote", r"\>>> quote"),
        ("a > b", "a > b"),  # only line start makes a quote
        ("# big", r"\# big"),
        ("-# small", r"\-# small"),
        ("- item", r"\- item"),
        ("a-b #1", "a-b #1"),
        ("[x](https://e.vil)", "\\[x\\](https:" + ZWSP + "//e.vil)"),
        ("plain name", "plain name"),
    ],
)
def test_display_name_escapes_markdown(raw: str, expected: str) -> None:
    assert _name(raw) == expected


def test_display_name_collapses_newlines() -> None:
    assert _name("bob\nthe\r\nbuilder") == "bob the builder"
    assert _name("bob\n\n\nbuilder") == "bob builder"
    assert _name("line\n> quote") == "line > quote"
    assert _name("\n> quote") == r"\> quote"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("@everyone", f"@{ZWSP}everyone"),
        ("hi @here", f"hi @{ZWSP}here"),
        ("<@123>", f"<@{ZWSP}123>"),
        ("<@&456>", f"<@{ZWSP}&456>"),
        ("<#789>", f"<{ZWSP}#789>"),
        ("<t:1700000000:R>", f"<{ZWSP}t:1700000000:R>"),
        ("<3 you", "<3 you"),
        ("https://evil.example/login", f"https:{ZWSP}//evil.example/login"),  # not a link on the board
    ],
)
def test_display_name_neutralises_mentions(raw: str, expected: str) -> None:
    assert _name(raw) == expected


def test_display_name_truncates_to_32_visible_chars() -> None:
    exact = "x" * 32
    assert _name(exact) == exact
    long = "y" * 40
    out = _name(long)
    assert len(out) == 32
    assert out == "y" * 31 + "…"


def test_display_name_truncates_before_escaping() -> None:
    out = _name("*" * 40)
    assert out == "\\*" * 31 + "…"  # 31 visible stars plus ellipsis, no half escape


def test_display_name_truncation_drops_trailing_space() -> None:
    assert _name("a" * 30 + "  tail") == "a" * 30 + "…"


def test_discord_timestamp() -> None:
    assert discord_timestamp(1700000000) == "<t:1700000000:R>"
    assert discord_timestamp(1700000000.9, "F") == "<t:1700000000:F>"
    for style in "tTdDfFR":
        assert discord_timestamp(0, style) == f"<t:0:{style}>"


def test_discord_timestamp_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        discord_timestamp(1700000000, "x")
    with pytest.raises(ValueError):
        discord_timestamp(float("inf"))
