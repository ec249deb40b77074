"""Charts in answers (exts/errors.py Reply.file, exts/leaderboards.py): the picture goes with the
answer on both paths, and an answer whose chart fails or is late still arrives, without it."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import disnake
import pytest
from loguru import logger

from leaderboard_bot.domain import BoardLine
from leaderboard_bot.exts import leaderboards
from leaderboard_bot.exts.errors import Reply
from leaderboard_bot.exts.leaderboards import Leaderboards, with_picture
from leaderboard_bot.ui import charts
from leaderboard_bot.ui.embeds import notice_embed
from tests.exts.test_errors import DEFER_AFTER, GUILD_ID, FakeInter, FakeResponse, respond


class FileResponse(FakeResponse):
    async def send_message(self, *, embed: disnake.Embed, ephemeral: bool = False, **kwargs: Any) -> None:
        self.inter.calls.append(("send", embed.description, ephemeral, kwargs.get("file")))
        self.done = True


class FileInter(FakeInter):
    """FakeInter whose answers also record the file they carry."""

    def __init__(self) -> None:
        super().__init__()
        self.response = FileResponse(self, 0)

    async def edit_original_response(self, *, embed: disnake.Embed, **kwargs: Any) -> None:  # type: ignore[override]
        self.calls.append(("edit", embed.description, kwargs.get("file")))


def sleep_then(seconds: float, value: bytes) -> bytes:
    time.sleep(seconds)
    return value


def png_file() -> disnake.File:
    return disnake.File(io.BytesIO(b"\x89PNG fake"), filename="activity.png")


async def reply_with_file(file: disnake.File | None, *, after: float = 0.0) -> Reply:
    await asyncio.sleep(after)
    return Reply(notice_embed("numbers"), file=file)


# --------------------------------------------------------------------------- Reply.file


async def test_a_fast_answer_uploads_its_picture_with_the_response() -> None:
    inter, file = FileInter(), png_file()
    await respond(inter, reply_with_file(file))  # type: ignore[arg-type]
    assert inter.calls == [("send", "numbers", False, file)]


async def test_a_deferred_answer_uploads_its_picture_with_the_edit() -> None:
    inter, file = FileInter(), png_file()
    await respond(inter, reply_with_file(file, after=DEFER_AFTER * 2))  # type: ignore[arg-type]
    assert inter.calls == [("defer", {}), ("edit", "numbers", file)]


async def test_an_answer_without_a_picture_passes_no_file_at_all() -> None:
    # The plain FakeInter takes no file argument: an answer without a picture must not send one.
    inter = FakeInter()
    await respond(inter, reply_with_file(None))
    assert inter.calls == [("send", "numbers", False)]


def test_with_picture_points_the_embed_image_at_the_attachment() -> None:
    file = png_file()
    reply = with_picture(notice_embed("x"), file)
    assert reply.file is file and reply.embed.image.url == "attachment://activity.png"
    bare = with_picture(notice_embed("x"), None)
    assert bare.file is None and bare.embed.image.url is None


# --------------------------------------------------------------------------- drawing within the budget


def cog() -> Leaderboards:
    return Leaderboards(SimpleNamespace(config=SimpleNamespace(guild_id=GUILD_ID, charts=True)))  # type: ignore[arg-type]


async def test_a_drawn_chart_becomes_an_attachment() -> None:
    async def draw() -> bytes:
        return b"\x89PNG..."

    file = await cog()._picture(draw(), "top.png")
    assert file is not None and file.filename == "top.png" and file.fp.read() == b"\x89PNG..."


async def test_a_chart_that_fails_is_left_out() -> None:
    async def draw() -> bytes:
        raise RuntimeError("matplotlib exploded")

    assert await cog()._picture(draw(), "top.png") is None


async def test_nothing_to_draw_is_no_attachment() -> None:
    async def draw() -> bytes | None:
        return None

    assert await cog()._picture(draw(), "activity.png") is None


async def test_a_chart_over_the_budget_is_left_out_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    board = cog()
    try:
        await board.chart_worker.run(os.getpid)  # the child started (its start is not what is timed)
        monkeypatch.setattr(leaderboards, "CHART_BUDGET", 0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        late = partial(sleep_then, 10.0, b"late")
        assert await board._picture(board.chart_worker.run(late), "top.png") is None
        assert loop.time() - started < 1.0
        assert await board.chart_worker.run(partial(sleep_then, 0.0, b"next")) == b"next"  # not behind it
    finally:
        board.cog_unload()


async def test_charts_are_drawn_in_the_charts_process_not_the_bots() -> None:
    board = cog()
    try:
        assert await board.chart_worker.run(os.getpid) != os.getpid()
        png = await board.chart_worker.run(partial(charts.activity_chart, ["2026-12-01"], [3], [60.0], caption="x"))
        assert png.startswith(b"\x89PNG")
    finally:
        board.cog_unload()


# --------------------------------------------------------------------------- /top chart:true


def top_bot(lines: list[Any]) -> Any:
    """Just what _top_reply reads."""

    async def lines_for_reply(board: str, *, season: int, caller: int) -> tuple[Any, ...]:
        return lines, None, None, False

    async def finished() -> list[Any]:
        return []

    season = SimpleNamespace(number=1, ends_at=2_000_000_000.0, started_at=1_000_000_000.0)
    calendar = SimpleNamespace(day_of=lambda ts: "2026-12-03", zone_name="UTC")
    return SimpleNamespace(
        config=SimpleNamespace(guild_id=GUILD_ID, charts=True),
        services=SimpleNamespace(
            seasons=SimpleNamespace(current=season, finished=finished),
            boards=SimpleNamespace(lines_for_reply=lines_for_reply, changed_at=lambda board: None),
            settings=SimpleNamespace(current=SimpleNamespace(arrow_emoji="➤")),
            activity=SimpleNamespace(calendar=calendar, clock=lambda: 1_700_000_000.0),
        ),
    )


def top_inter() -> Any:
    return SimpleNamespace(author=SimpleNamespace(id=42), guild=None)


LINES = [BoardLine(rank=1, name="Ali", user_id=42, value=12.0)]


async def test_top_with_chart_attaches_the_board_picture() -> None:
    board = Leaderboards(top_bot(LINES))
    try:
        reply = await board._top_reply(top_inter(), "messages", chart=True)
    finally:
        board.cog_unload()
    assert reply.file is not None and reply.file.filename == "top.png"
    assert reply.embed.image.url == "attachment://top.png"
    assert reply.file.fp.read(8) == b"\x89PNG\r\n\x1a\n"


async def test_top_without_chart_or_with_an_empty_board_has_no_picture() -> None:
    plain = await Leaderboards(top_bot(LINES))._top_reply(top_inter(), "messages")
    assert plain.file is None and plain.embed.image.url is None
    empty = await Leaderboards(top_bot([]))._top_reply(top_inter(), "voice", chart=True)
    assert empty.file is None and empty.embed.image.url is None


async def test_with_charts_off_nothing_is_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("CHARTS=off draws nothing")

    monkeypatch.setattr(leaderboards.charts, "top_chart", never)
    bot = top_bot(LINES)
    bot.config.charts = False
    reply = await Leaderboards(bot)._top_reply(top_inter(), "messages", chart=True)
    assert reply.file is None and reply.embed.image.url is None


async def test_top_answers_without_the_picture_when_drawing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("no renderer")

    monkeypatch.setattr(leaderboards.charts, "top_chart", broken)
    board = Leaderboards(top_bot(LINES))
    try:
        reply = await board._top_reply(top_inter(), "messages", chart=True)
    finally:
        board.cog_unload()
    assert reply.file is None and reply.embed.image.url is None
    assert reply.embed.title  # the board itself is all there


# --------------------------------------------------------------------------- which days /stats charts


def scope_bot(finished: Any = None) -> Any:
    """Just what _scope reads: season 5 running, season 4 finished (1-30 Nov 2026 UTC)."""
    season_4 = SimpleNamespace(number=4, started_at=1_793_491_200.0, ended_at=1_796_083_200.0, ends_at=0.0)

    async def finished_seasons() -> list[Any]:
        return [season_4]

    async def finished_season(number: int) -> Any:
        return season_4 if number == 4 else None

    from leaderboard_bot.services.days import Calendar

    return SimpleNamespace(
        config=SimpleNamespace(guild_id=GUILD_ID, charts=True),
        services=SimpleNamespace(
            seasons=SimpleNamespace(
                current=SimpleNamespace(number=5, started_at=1_796_083_200.0),
                finished=finished_seasons,
                finished_season=finished_season,
            ),
            activity=SimpleNamespace(calendar=Calendar(), clock=lambda: 1_796_299_200.0),  # 3 Dec 2026 12:00 UTC
        ),
    )


@pytest.mark.parametrize(
    ("period", "past_season", "first", "last", "count"),
    [
        ("today", None, "2026-12-03", "2026-12-03", 1),
        ("week", None, "2026-11-27", "2026-12-03", 7),
        ("month", None, "2026-11-04", "2026-12-03", 30),
        ("season", None, "2026-11-04", "2026-12-03", 30),  # the running season: the last 30 days
        ("all-time", None, "2026-11-04", "2026-12-03", 30),
        ("season", 5, "2026-11-04", "2026-12-03", 30),  # the running season asked by number
        ("season", 4, "2026-11-01", "2026-11-30", 30),  # a finished season: its own days
    ],
)
async def test_the_stats_chart_covers_the_periods_days(
    period: str, past_season: int | None, first: str, last: str, count: int
) -> None:
    scope = await Leaderboards(scope_bot())._scope(period, past_season)
    assert not isinstance(scope, Reply)
    assert (scope.chart_days[0], scope.chart_days[-1], len(scope.chart_days)) == (first, last, count)


async def test_no_days_to_chart_is_no_picture() -> None:
    board = Leaderboards(scope_bot())
    assert await board._activity_chart(42, leaderboards.Scope(5, None)) is None


@pytest.fixture
def chart_logs() -> Iterator[list[str]]:
    records: list[str] = []
    sink = logger.add(lambda message: records.append(str(message)), level="DEBUG", format="{message}")
    yield records
    logger.remove(sink)


async def test_a_chart_failing_at_every_command_is_logged_once_then_its_recovery(chart_logs: list[str]) -> None:
    board = cog()

    async def broken() -> bytes:
        raise RuntimeError("no renderer")

    async def fine() -> bytes:
        return b"\x89PNG"

    for _ in range(5):
        assert await board._picture(broken(), "activity.png") is None
    assert await board._picture(fine(), "activity.png") is not None
    lines = [line for line in chart_logs if "activity.png" in line]
    assert lines[0].startswith("could not draw the chart activity.png: answered without it")
    assert len(lines) == 2 and "drawn again" in lines[1] and "recovered after 5 failures" in lines[1]
