"""The member commands' guards (exts/leaderboards.py), with the recording fake interaction."""

from __future__ import annotations

from types import SimpleNamespace

from leaderboard_bot.exts.errors import Reply
from leaderboard_bot.exts.leaderboards import SERVER_ONLY, Leaderboards
from tests.exts.test_errors import GUILD_ID, FakeInter, answer, reply


def cog() -> Leaderboards:
    bot = SimpleNamespace(config=SimpleNamespace(guild_id=GUILD_ID))
    return Leaderboards(bot)  # type: ignore[arg-type]


async def test_outside_the_server_the_answer_is_ephemeral_and_nothing_is_built() -> None:
    built: list[bool] = []

    async def build() -> Reply:
        built.append(True)
        return reply("should not be built")

    inter = FakeInter(guild_id=None)
    await cog()._answer(inter, "stats", build)  # type: ignore[arg-type]
    assert inter.calls == [("send", SERVER_ONLY, True)]
    assert built == []


async def test_inside_the_server_the_built_reply_is_sent() -> None:
    inter = FakeInter()
    await cog()._answer(inter, "stats", lambda: answer("numbers"))  # type: ignore[arg-type]
    assert inter.calls == [("send", "numbers", False)]
