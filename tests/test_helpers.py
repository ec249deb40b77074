"""The disnake fakes in tests/helpers.py refuse what disnake itself does not have."""

from __future__ import annotations

import inspect

import pytest

from tests.helpers import mock_guild, mock_interaction, mock_member, mock_voice_channel


def test_setting_an_attribute_disnake_lacks_fails() -> None:
    member = mock_member(1)
    with pytest.raises(AttributeError):
        member.nickname_that_does_not_exist = "x"


def test_reading_an_attribute_disnake_lacks_fails() -> None:
    with pytest.raises(AttributeError):
        _ = mock_guild(1).voice_state_of_everyone


def test_coroutine_methods_are_awaitable_mocks() -> None:
    guild = mock_guild(1)
    assert inspect.iscoroutinefunction(guild.fetch_member)
    assert inspect.iscoroutinefunction(mock_interaction().response.send_message)


def test_values_given_are_kept() -> None:
    member = mock_member(5, bot=True, display_name="Five")
    assert (member.id, member.bot, member.display_name, member.name) == (5, True, "Five", "user5")
    assert mock_voice_channel(3).voice_states == {}
