"""The member commands' guards (exts/leaderboards.py), with the recording fake interaction."""

from __future__ import annotations

from types import SimpleNamespace

from leaderboard_bot.exts.errors import Reply
from leaderboard_bot.exts.leaderboards import SERVER_ONLY, Leaderboards, _no_such_season
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


def test_a_season_that_cannot_be_shown_is_explained() -> None:
    finished = [SimpleNamespace(number=n) for n in (3, 2, 1)]
    assert _no_such_season(9, 4, finished) == "Season 9 hasn't started yet: this is season 4."
    assert _no_such_season(2, 4, []) == "No season has finished yet, so there are no past boards to show."
    assert _no_such_season(5, 6, finished) == "There's no finished season 5 to show. Finished seasons: 1–3."
    gappy = [SimpleNamespace(number=n) for n in (7, 2)]
    assert _no_such_season(5, 8, gappy) == (
        "There's no finished season 5 to show. Finished seasons: 2–7 (some are missing)."
    )
