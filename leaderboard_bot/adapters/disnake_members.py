"""``services.membership.MemberLookup`` on disnake: is someone still in the server?

Without the members intent the bot is never told who left, so it asks: the member cache first
(members in voice, the bot itself: free), then ``GET /guilds/{guild}/members/{user}``. Only Discord's
"Unknown Member" (or "Unknown User", a deleted account) means gone; any other failure is "cannot
tell" (None), which never hides anyone.
"""

from __future__ import annotations

from collections.abc import Callable

import disnake
from loguru import logger

GONE_CODES = frozenset({10007, 10013})  # Unknown Member, Unknown User


class GuildMemberLookup:
    def __init__(self, guild: Callable[[], disnake.Guild | None]) -> None:
        self._guild = guild

    async def is_member(self, user_id: int) -> bool | None:
        guild = self._guild()
        if guild is None or guild.unavailable:
            return None
        if guild.get_member(user_id) is not None:
            return True
        try:
            await guild.fetch_member(user_id)
        except disnake.NotFound as error:
            if error.code in GONE_CODES:
                return False
            logger.debug("member lookup for {}: unexpected 404 ({}); shown", user_id, error)
            return None
        except (disnake.HTTPException, OSError) as error:  # 403, 429, 5xx, network
            logger.debug("member lookup for {} failed ({}); shown", user_id, error)
            return None
        return True
