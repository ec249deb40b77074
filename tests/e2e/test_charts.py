"""Issue 12 (charts) end to end: /stats answers with its activity chart attached and shown as the
embed's image, /top chart:true with the board's; without a working renderer the answer still
arrives, without a picture.

One bot per module with a known history (starting one takes about a second); a second bot whose
matplotlib cannot be imported shows the fallback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from .harness import World, make_world

if TYPE_CHECKING:
    from driver import InteractionResult  # type: ignore[import-not-found]


async def _close(w: World) -> None:
    await w.stop_all()
    for i, bot in enumerate(w.bots):
        print(f"---- bot {i} output (tail) ----\n{bot.output()[-4000:]}")
    await w.fc.stop()


async def _activity(w: World) -> None:
    fc = w.fc
    for user, count in ((w.alice, 3), (w.bob, 2)):
        for i in range(count):
            await fc.send_message(w.guild, w.general, user, f"m{i}")
    await w.wait_db(lambda: [w.messages_of(u) for u in (w.alice, w.bob)] == [3, 2], "messages flushed")


@pytest.fixture(scope="module")
async def charted(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    w = await make_world(tmp_path_factory.mktemp("charts"))
    try:
        await w.start_bot(SPAM_LIMIT="off")
        await w.fc.wait_for_commands("top", "stats", guild=w.guild)
        await w.wait_log("charts ready", timeout=60)  # matplotlib loaded on the charts thread (slow on a busy box)
        await _activity(w)
        yield w
    finally:
        await _close(w)


@pytest.fixture(scope="module")
async def unchartable(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """A bot whose matplotlib fails to import: every chart fails."""
    tmp = tmp_path_factory.mktemp("no-charts")
    broken = tmp / "broken-site" / "matplotlib"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("matplotlib is broken on purpose (test)")\n')
    w = await make_world(tmp)
    try:
        await w.start_bot(SPAM_LIMIT="off", PYTHONPATH=str(broken.parent))
        await w.fc.wait_for_commands("top", "stats", guild=w.guild)
        await w.wait_log("charts cannot be drawn (matplotlib is broken on purpose (test))", timeout=60)
        await _activity(w)
        yield w
    finally:
        await _close(w)


def attachments(result: InteractionResult) -> list[dict[str, Any]]:
    return list((result.message or {}).get("attachments", []))


def image_url(result: InteractionResult) -> str | None:
    (embed,) = result.embeds
    return (embed.get("image") or {}).get("url")


def field(result: InteractionResult, name: str) -> str:
    (embed,) = result.embeds
    return next(f["value"] for f in embed["fields"] if f["name"] == name)


# --------------------------------------------------------------------------- a working renderer


async def test_stats_attaches_the_activity_chart_as_the_embed_image(charted: World) -> None:
    w = charted
    res = await w.fc.slash(w.guild, w.general, w.alice, "stats")
    assert not res.ephemeral
    assert field(res, "Messages").startswith("3 ")  # the figures are all there
    (picture,) = attachments(res)
    assert picture["filename"] == "activity.png" and picture["size"] > 1000
    assert image_url(res) == "attachment://activity.png"


@pytest.mark.parametrize("period", ["today", "week", "month", "all-time"])
async def test_stats_for_each_period_has_its_chart(charted: World, period: str) -> None:
    w = charted
    res = await w.fc.slash(w.guild, w.general, w.alice, "stats", {"user": w.bob, "period": period})
    assert field(res, "Messages").startswith("2 ")
    assert [a["filename"] for a in attachments(res)] == ["activity.png"]
    assert image_url(res) == "attachment://activity.png"


async def test_stats_without_activity_is_a_notice_without_a_chart(charted: World) -> None:
    w = charted
    res = await w.fc.slash(w.guild, w.general, w.alice, "stats", {"user": w.carol})
    assert "hasn't been active" in res.embeds[0]["description"]
    assert attachments(res) == [] and image_url(res) is None


@pytest.mark.parametrize("board", ["messages", "voice"])
async def test_top_with_chart_true_attaches_the_board_chart(charted: World, board: str) -> None:
    w = charted
    if board == "voice":
        await w.fc.voice_join(w.bob, w.lounge)
        await w.wait_db(lambda: w.voice_of(w.bob) > 0, "voice time flushed")
    res = await w.fc.slash(w.guild, w.general, w.alice, f"top {board}", {"chart": True})
    (picture,) = attachments(res)
    assert picture["filename"] == "top.png" and picture["size"] > 1000
    assert image_url(res) == "attachment://top.png"
    if board == "voice":
        await w.fc.voice_leave(w.bob, w.guild)


async def test_top_without_chart_has_no_picture(charted: World) -> None:
    w = charted
    res = await w.fc.slash(w.guild, w.general, w.alice, "top messages")
    assert res.embeds[0]["title"] == "Message Leaderboard"
    assert attachments(res) == [] and image_url(res) is None
    option = next(o for o in w.fc.find_command("top", w.guild)["options"] if o["name"] == "messages")
    chart = next(o for o in option["options"] if o["name"] == "chart")
    assert chart["type"] == 5 and not chart.get("required")  # a boolean, off by default


# --------------------------------------------------------------------------- a broken renderer


async def test_without_a_renderer_stats_and_top_still_answer_without_pictures(unchartable: World) -> None:
    w = unchartable
    stats = await w.fc.slash(w.guild, w.general, w.alice, "stats")
    assert field(stats, "Messages").startswith("3 ")
    assert attachments(stats) == [] and image_url(stats) is None
    top = await w.fc.slash(w.guild, w.general, w.alice, "top messages", {"chart": True})
    assert top.embeds[0]["title"] == "Message Leaderboard" and "Ali" in top.embeds[0]["description"]
    assert attachments(top) == [] and image_url(top) is None
    await w.wait_log("could not draw the chart activity.png")
    await w.wait_log("could not draw the chart top.png")



# --------------------------------------------------------------------------- a finished season


async def test_a_finished_season_has_its_charts_too(world: World) -> None:
    from .test_history import seed_history  # season 1 ran from 40 to 10 days ago; Bobby won messages

    w = world
    seed_history(w)
    await w.start_bot()
    await w.fc.wait_for_commands("top", "stats", guild=w.guild)
    await w.wait_log("charts ready", timeout=60)
    stats = await w.fc.slash(w.guild, w.general, w.alice, "stats", {"user": w.bob, "season": 1})
    assert field(stats, "Messages").startswith("50 ")
    assert [a["filename"] for a in attachments(stats)] == ["activity.png"]
    assert image_url(stats) == "attachment://activity.png"
    top = await w.fc.slash(w.guild, w.general, w.alice, "top messages", {"season": 1, "chart": True})
    assert "Bobby" in top.embeds[0]["description"]
    assert [a["filename"] for a in attachments(top)] == ["top.png"] and image_url(top) == "attachment://top.png"
