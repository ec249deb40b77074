"""The chart pictures (ui/charts.py): PNGs of a fixed size, never empty, for every edge case."""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from leaderboard_bot.domain import BoardLine, shift_day
from leaderboard_bot.ui import charts

DAYS_30 = [shift_day("2026-11-04", i) for i in range(30)]


def picture(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def drawn_pixels(png: bytes) -> int:
    """Pixels that are not fully transparent: something was drawn."""
    return int((np.asarray(picture(png).convert("RGBA"))[:, :, 3] > 0).sum())


def purple_pixels(png: bytes) -> int:
    pixels = np.asarray(picture(png).convert("RGBA"))
    return int((pixels == (0x57, 0x11, 0x73, 255)).all(axis=2).sum())


def lines(*pairs: tuple[str, float]) -> list[BoardLine]:
    return [BoardLine(rank=i + 1, name=name, user_id=100 + i, value=value) for i, (name, value) in enumerate(pairs)]


# --------------------------------------------------------------------------- the /stats chart


def test_thirty_days_of_activity_is_a_png_of_the_fixed_size_with_purple_bars() -> None:
    png = charts.activity_chart(DAYS_30, list(range(30)), [i * 600.0 for i in range(30)], caption="Last 30 days")
    image = picture(png)
    assert image.size == charts.ACTIVITY_SIZE == (800, 440)
    assert image.mode == "RGBA"
    assert image.getpixel((2, 2))[3] == 0  # type: ignore[index]  # a transparent background: either theme shows
    assert purple_pixels(png) > 1000  # the messages bars, in the owner's purple


@pytest.mark.parametrize(
    ("days", "messages", "voice"),
    [
        pytest.param([], [], [], id="no-days"),
        pytest.param(DAYS_30, [0] * 30, [0.0] * 30, id="no-activity"),
        pytest.param(["2026-12-03"], [7], [5400.0], id="a-single-day"),
        pytest.param(["2026-12-03"], [0], [0.0], id="a-single-empty-day"),
        pytest.param(DAYS_30, [10**15] * 30, [1e12] * 30, id="huge-values"),
        pytest.param(DAYS_30, [0] * 29 + [2**62], [0.0] * 29 + [3e11], id="one-huge-day"),
        pytest.param(DAYS_30, [-5] * 30, [float("nan")] * 15 + [float("inf")] * 15, id="nonsense-values"),
        pytest.param([shift_day("2026-01-01", i) for i in range(120)], [3] * 120, [60.0] * 120, id="120-days"),
    ],
)
def test_edge_cases_draw_a_non_empty_png_of_the_same_size(
    days: list[str], messages: list[float], voice: list[float]
) -> None:
    png = charts.activity_chart(days, messages, voice, caption="Today")
    assert picture(png).size == charts.ACTIVITY_SIZE
    assert len(png) > 1000
    assert drawn_pixels(png) > 2000  # axes, titles and labels at least


def test_no_activity_says_so_and_draws_no_bars() -> None:
    empty = charts.activity_chart(DAYS_30, [0] * 30, [0.0] * 30)
    busy = charts.activity_chart(DAYS_30, [5] * 30, [0.0] * 30)
    assert purple_pixels(empty) == 0
    assert purple_pixels(busy) > 0


def test_series_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one value per day"):
        charts.activity_chart(DAYS_30, [1], [1.0])


def test_numbers_are_short_whatever_their_size() -> None:
    assert [charts._compact(v) for v in (0, 7, 999, 1000, 1234, 5_600_000, 2e9, 3.5e12, 1e15)] == [
        "0", "7", "999", "1k", "1.2k", "5.6M", "2B", "3.5T", "1000T",
    ]  # fmt: skip
    assert [charts._hours(v) for v in (0, 0.25, 0.8, 1.5, 12, 1500)] == ["0", "0.25", "0.8", "1.5", "12", "1.5k"]


# --------------------------------------------------------------------------- the /top chart


@pytest.mark.parametrize("count", [0, 1, 3, 10, 25])
@pytest.mark.parametrize("board", ["messages", "voice"])
def test_the_top_chart_is_one_row_per_line(board: str, count: int) -> None:
    board_lines = lines(*((f"member {i}", (count - i) * 3_700.0) for i in range(count)))
    png = charts.top_chart(board, board_lines)  # type: ignore[arg-type]
    assert picture(png).size == charts.top_size(count) == (800, 120 + 44 * max(1, count))
    assert drawn_pixels(png) > 1000


ODD_NAMES = [
    "$x^2$ \\frac{",  # TeX markup: never parsed (would raise in mathtext)
    "$$$",
    "田中太郎",  # glyphs the font lacks
    "🎮🔥 gamer",
    "\u202eevil\u202c",  # bidi override
    "\u200b\u200d\ufeff",  # only invisible characters
    "z̸̡̢͓a̷l̴g̵o̶" * 5,  # stacked combining marks
    "a" * 200,
    "line\nbreak\ttab\x00nul",
    "\ud800 lone surrogate",
    "",
    "Zoë Ça Ωmega",
]


@pytest.mark.parametrize("board", ["messages", "voice"])
def test_odd_unicode_names_never_break_the_top_chart(board: str) -> None:
    board_lines = lines(*((name, 1000.0 - i) for i, name in enumerate(ODD_NAMES)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "glyph missing" or mathtext warnings either
        png = charts.top_chart(board, board_lines, highlight=101)  # type: ignore[arg-type]
    assert picture(png).size == charts.top_size(len(ODD_NAMES))


def test_names_keep_what_the_font_can_draw_on_one_short_line() -> None:
    assert charts._printable("Zoë 🎮 gamer", 16) == "Zoë gamer"
    assert charts._printable("田中", 16) == "?"
    assert charts._printable("\u200b\u202e", 16) == "?"
    assert charts._printable("line\nbreak", 16) == "line break"
    assert charts._printable("a" * 40, 16) == "a" * 15 + "…"
    assert charts._printable("$x$", 16) == "$x$"  # kept: drawn as text, not TeX


def test_the_callers_bar_is_the_lighter_purple() -> None:
    board_lines = lines(("Ali", 10.0), ("Bob", 9.0))
    plain = charts.top_chart("messages", board_lines)
    marked = charts.top_chart("messages", board_lines, highlight=board_lines[0].user_id)
    assert purple_pixels(marked) < purple_pixels(plain)


def test_huge_values_on_the_top_chart() -> None:
    png = charts.top_chart("voice", lines(("Ali", 1e15), ("Bob", 1.0), ("Cy", 0.0)))
    assert picture(png).size == charts.top_size(3)


# --------------------------------------------------------------------------- threads


def test_charts_drawn_on_several_threads_at_once_all_come_out_whole() -> None:
    results: list[bytes] = []
    errors: list[BaseException] = []

    def draw(n: int) -> None:
        try:
            if n % 2:
                results.append(charts.activity_chart(DAYS_30, [n] * 30, [60.0 * n] * 30))
            else:
                results.append(charts.top_chart("messages", lines(("Ali", n + 1.0))))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=draw, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 6 and all(picture(png).size[0] == 800 for png in results)


def test_warm_up_draws_without_error() -> None:
    charts.warm_up()
