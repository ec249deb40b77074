"""The name a member shows, from disnake objects: nickname, else global name, else username,
skipping any that render as nothing (zero-width spaces, Hangul fillers)."""

from __future__ import annotations

import disnake

from ..domain import NameInfo, best_name


def shown_name(user: disnake.User | disnake.Member) -> str:
    nick = user.nick if isinstance(user, disnake.Member) else None
    return best_name(nick, user.global_name, user.name) or user.name


def name_info(user: disnake.User | disnake.Member) -> NameInfo:
    return shown_name(user), user.name
