"""Fakes of disnake objects, built on ``spec_set`` so they fail the moment they drift from disnake.

Setting or reading an attribute disnake's class does not have raises AttributeError, and coroutine
methods become AsyncMocks automatically (python-discord's ``tests/helpers.py`` is the model).
"""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

import disnake
from disnake.interactions import ApplicationCommandInteraction


def _mock(spec: type, **attributes: Any) -> MagicMock:
    mock = MagicMock(spec_set=spec)
    for name, value in attributes.items():
        setattr(mock, name, value)
    return mock


def mock_member(
    user_id: int,
    *,
    bot: bool = False,
    display_name: str | None = None,
    name: str | None = None,
    global_name: str | None = None,
) -> Any:
    """A member whose nickname is ``display_name`` (when given)."""
    name = name or f"user{user_id}"
    return _mock(
        disnake.Member,
        id=user_id,
        bot=bot,
        display_name=display_name or global_name or name,
        nick=display_name,
        global_name=global_name,
        name=name,
    )


def mock_user(user_id: int, *, bot: bool = False, global_name: str | None = None, name: str | None = None) -> Any:
    name = name or f"user{user_id}"
    display_name = global_name or name
    return _mock(disnake.User, id=user_id, bot=bot, global_name=global_name, name=name, display_name=display_name)


def mock_voice_channel(channel_id: int) -> Any:
    return _mock(disnake.VoiceChannel, id=channel_id, voice_states={})


def mock_text_channel(channel_id: int, *, guild_id: int | None = None) -> Any:
    """A text channel, in the guild ``guild_id`` when given."""
    guild = mock_guild(guild_id) if guild_id is not None else None
    return _mock(disnake.TextChannel, id=channel_id, guild=guild)


def mock_voice_state(channel: Any, *, deaf: bool = False, self_deaf: bool = False) -> Any:
    return _mock(disnake.VoiceState, channel=channel, deaf=deaf, self_deaf=self_deaf)


def mock_guild(guild_id: int, **attributes: Any) -> Any:
    defaults: dict[str, Any] = {"id": guild_id, "unavailable": False, "afk_channel": None, "icon": None}
    return _mock(disnake.Guild, **{**defaults, **attributes})


def mock_message(message_id: int, **attributes: Any) -> Any:
    """A message that shows an embed and has no flags unless told otherwise."""
    defaults: dict[str, Any] = {"flags": disnake.MessageFlags(), "embeds": [disnake.Embed(title="board")]}
    return _mock(disnake.Message, id=message_id, **{**defaults, **attributes})


def mock_interaction(**attributes: Any) -> Any:
    """An ApplicationCommandInteraction whose ``response`` is a spec'd InteractionResponse."""
    inter = _mock(ApplicationCommandInteraction, **attributes)
    inter.response = MagicMock(spec_set=disnake.InteractionResponse)
    inter.followup = MagicMock(spec_set=disnake.Webhook)
    return inter
