"""GuildMemberLookup: the member cache, then one REST lookup; only "Unknown Member" means gone."""

from __future__ import annotations

from typing import Any
from unittest.mock import AsyncMock, MagicMock

import disnake
import pytest

from leaderboard_bot.adapters.disnake_members import GuildMemberLookup
from tests.helpers import mock_guild, mock_member


def http_error(kind: type[disnake.HTTPException], status: int, code: int) -> disnake.HTTPException:
    response = MagicMock(status=status, reason="error")
    return kind(response, {"code": code, "message": "error"})


def guild_with(cached: Any = None, fetched: Any = None) -> Any:
    guild = mock_guild(1)
    guild.get_member = MagicMock(return_value=cached)
    guild.fetch_member = (
        AsyncMock(side_effect=fetched) if isinstance(fetched, Exception) else AsyncMock(return_value=fetched)
    )
    return guild


async def test_a_cached_member_is_here_without_asking_discord() -> None:
    guild = guild_with(cached=mock_member(5))
    assert await GuildMemberLookup(lambda: guild).is_member(5) is True
    guild.fetch_member.assert_not_called()


async def test_a_member_discord_returns_is_here() -> None:
    guild = guild_with(fetched=mock_member(5))
    assert await GuildMemberLookup(lambda: guild).is_member(5) is True
    guild.fetch_member.assert_awaited_once_with(5)


@pytest.mark.parametrize("code", [10007, 10013])
async def test_unknown_member_or_user_means_gone(code: int) -> None:
    guild = guild_with(fetched=http_error(disnake.NotFound, 404, code))
    assert await GuildMemberLookup(lambda: guild).is_member(5) is False


@pytest.mark.parametrize(
    "error",
    [
        http_error(disnake.NotFound, 404, 10004),  # unknown guild: not about the member
        http_error(disnake.Forbidden, 403, 50001),
        http_error(disnake.HTTPException, 429, 0),
        http_error(disnake.DiscordServerError, 503, 0),
        OSError("connection reset"),
    ],
)
async def test_any_other_failure_cannot_tell(error: Exception) -> None:
    guild = guild_with(fetched=error)
    assert await GuildMemberLookup(lambda: guild).is_member(5) is None


async def test_no_guild_or_an_unavailable_one_cannot_tell() -> None:
    assert await GuildMemberLookup(lambda: None).is_member(5) is None
    guild = guild_with()
    guild.unavailable = True
    assert await GuildMemberLookup(lambda: guild).is_member(5) is None
    guild.fetch_member.assert_not_called()
