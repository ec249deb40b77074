"""Which name a member shows: invisible nicknames skipped, direction overrides removed."""

from __future__ import annotations

import pytest

from leaderboard_bot.adapters.disnake_names import name_info, shown_name
from leaderboard_bot.domain import BoardLine, best_name, visible_name
from leaderboard_bot.ui.embeds import leaderboard_embed
from tests.helpers import mock_member, mock_user

INVISIBLE_NICKS = [
    "\u200b\u200b", "\u3164", "\u115f\u1160", " \ufeff ", "\u2800", "\u202e",
    # Found by a tester: shown as blank board lines until they fell back too.
    "\u0301\u0302\u0303",  # combining marks with nothing to sit on
    "\u00ad\u00ad\u00ad",  # soft hyphens
    "\U000e0041\U000e0042",  # tag characters
    "\u2061\u2062\u2063",  # invisible operators
    "\u034f", "\u061c", "\ufe0f", "\u3000\u2003",  # grapheme joiner, letter mark, selector, spaces
]  # fmt: skip


@pytest.mark.parametrize("nick", INVISIBLE_NICKS)
def test_an_invisible_nickname_falls_back_to_the_global_name_then_the_username(nick: str) -> None:
    assert shown_name(mock_member(1, display_name=nick, global_name="Glob", name="user1")) == "Glob"
    assert shown_name(mock_member(1, display_name=nick, global_name="\u200b", name="user1")) == "user1"
    assert name_info(mock_member(1, display_name=nick, name="user1")) == ("user1", "user1")


def test_a_visible_nickname_wins_and_users_use_their_global_name() -> None:
    assert shown_name(mock_member(1, display_name="Ali", global_name="Alice", name="alice")) == "Ali"
    assert shown_name(mock_user(2, global_name="Bobby", name="bob")) == "Bobby"


@pytest.mark.parametrize("name", ["e\u0301", "\u65e5\u672c", "\U0001f642", "a\u00adb", "\u0627\u0644\u0639"])
def test_names_with_something_to_see_are_kept(name: str) -> None:
    assert visible_name(name) == name


@pytest.mark.parametrize(
    "control",
    [
        "\u061c",
        "\u200e",
        "\u200f",
        "\u202a",
        "\u202b",
        "\u202c",
        "\u202d",
        "\u202e",
        "\u2066",
        "\u2067",
        "\u2068",
        "\u2069",
    ],
)
def test_direction_controls_are_removed(control: str) -> None:
    assert visible_name(f"ab{control}cd") == "abcd"
    assert best_name(f"{control}", "x") == "x"


def test_a_reversing_name_cannot_reverse_its_board_line() -> None:
    embed = leaderboard_embed(
        board="messages",
        lines=[BoardLine(rank=1, name="\u202eevil", user_id=1, value=42)],
        arrow="->",
        guild_icon_url=None,
        season_number=1,
        season_ends_at=0.0,
        changed_at=None,
    )
    description = embed.description or ""
    assert "\u202e" not in description and "evil" in description
