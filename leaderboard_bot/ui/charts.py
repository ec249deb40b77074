"""Charts as PNG pictures: a member's activity per day (``/stats``) and a board's top (``/top chart:true``).

Pure functions, data in and PNG bytes out, drawn with matplotlib's object API (``Figure`` on an
Agg canvas) and never pyplot: no global figure state, so a chart can be drawn on any thread.
matplotlib is imported on first use (on the thread that draws), not when the bot starts.

Colours read on both of Discord's themes (dark ``#313338``, light ``#FFFFFF``): the background is
transparent, text and grid are a mid grey, the owner's purple (``#571173``, dark on dark) is drawn
with a lighter purple edge, and the second series is that lighter purple (contrast 3:1 or more on
either theme).
"""

from __future__ import annotations

import io
import math
import unicodedata
from collections.abc import Sequence
from datetime import date
from functools import cache
from typing import TYPE_CHECKING, Any

from ..domain import Board, BoardLine

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ACTIVITY_FILENAME = "activity.png"
TOP_FILENAME = "top.png"

PURPLE = "#571173"  # the owner's colour: the messages bars, the /top bars
TINT = "#A560C4"  # a lighter purple: the voice bars, every purple bar's edge, the caller's bar
GREY = "#8E9297"  # text, ticks and grid: about 3.3:1 on white and 3.8:1 on #313338
DPI = 200  # Discord shows an embed image about 400 px wide: 800 px drawn at 200 dpi stay sharp
ACTIVITY_SIZE = (800, 440)  # pixels (width, height)
TOP_WIDTH = 800
TOP_ROW_HEIGHT = 44  # pixels per line of the /top chart
TOP_MARGIN = 60  # pixels above and below the /top chart's bars
NAME_CHARACTERS = 16  # a longer name is cut with an ellipsis on the /top chart
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def top_size(lines: int) -> tuple[int, int]:
    """The /top chart's size in pixels for a board of ``lines`` lines (at least one row high)."""
    return TOP_WIDTH, TOP_MARGIN * 2 + TOP_ROW_HEIGHT * max(1, lines)


def activity_chart(
    days: Sequence[str], messages: Sequence[float], voice_seconds: Sequence[float], *, caption: str = ""
) -> bytes:
    """Messages (top, purple bars) and voice hours (bottom, lighter bars) per day, ``ACTIVITY_SIZE``
    pixels whatever the number of days (none, one, or hundreds)."""
    if not len(days) == len(messages) == len(voice_seconds):
        raise ValueError("one value per day in each series")
    counts = [_finite(m) for m in messages]
    hours = [_finite(s) / 3600.0 for s in voice_seconds]
    figure = _figure(*ACTIVITY_SIZE)
    top, bottom = figure.subplots(2, 1, sharex=True)
    positions = list(range(len(days)))
    width = 0.72 if len(days) > 1 else 0.4
    _bars(top, positions, counts, width, [PURPLE] * len(counts))
    _bars(bottom, positions, hours, width, [TINT] * len(hours))
    _style(top, "Messages", max(counts, default=0.0), _compact)
    _style(bottom, "Voice (hours)", max(hours, default=0.0), _hours)
    if not any(counts) and not any(hours):
        top.text(0.5, 0.45, "No activity on these days", transform=top.transAxes, ha="center", va="center",
                 color=GREY, fontsize=7)
    bottom.set_xlim(-0.6, max(len(days), 1) - 0.4)
    ticks = _day_ticks(len(days))
    bottom.set_xticks(ticks, [_day_label(days[i]) for i in ticks])
    if caption:
        figure.suptitle(_printable(caption, 60), color=GREY, fontsize=7, x=0.99, ha="right", y=0.985)
    figure.subplots_adjust(left=0.11, right=0.96, top=0.9, bottom=0.11, hspace=0.35)
    return _png(figure)


def top_chart(board: Board, lines: Sequence[BoardLine], *, highlight: int | None = None) -> bytes:
    """The board's lines as horizontal bars, rank 1 on top, each labelled with its value; the
    member ``highlight`` (the caller) in the lighter purple. ``top_size(len(lines))`` pixels."""
    figure = _figure(*top_size(len(lines)))
    axes = figure.add_subplot()
    axes.patch.set_alpha(0.0)
    voice = board == "voice"
    values = [_finite(line.value) / (3600.0 if voice else 1.0) for line in lines]
    positions = list(range(len(lines)))
    colours = [TINT if line.user_id == highlight else PURPLE for line in lines]
    _bars(axes, positions, values, 0.7, colours, horizontal=True)
    # Names as plain text beside the axis, not tick labels (a tick is several artists: with 25
    # lines they were half of the drawing time). parse_math=False: a "$" in a name is a dollar sign.
    beside = axes.get_yaxis_transform()  # x in axes fractions, y in data
    for position, line in zip(positions, lines, strict=True):
        name = f"{line.rank}. {_printable(line.name, NAME_CHARACTERS)}"
        axes.text(-0.015, position, name, transform=beside, ha="right", va="center", color=GREY, fontsize=7,
                  parse_math=False)
    axes.set_ylim(max(len(lines), 1) - 0.5, -0.5)  # rank 1 at the top
    peak = max(values, default=0.0)
    axes.set_xlim(0, peak * 1.18 if peak > 0 else 1.0)  # room for the value after the longest bar
    for position, value in zip(positions, values, strict=True):
        text = _hours(value) + " h" if voice else _compact(value)
        axes.text(value, position, " " + text, va="center", ha="left", color=GREY, fontsize=6.5, parse_math=False)
    axes.xaxis.set_visible(False)
    axes.yaxis.set_visible(False)
    for side in ("top", "right", "bottom"):
        axes.spines[side].set_visible(False)
    axes.spines["left"].set_color(GREY)
    _title(axes, "Voice time (hours)" if voice else "Messages")
    if not lines:
        axes.text(0.5, 0.5, "nobody yet", transform=axes.transAxes, ha="center", va="center", color=GREY, fontsize=7)
    height = top_size(len(lines))[1]
    figure.subplots_adjust(left=0.33, right=0.97, top=1 - 36 / height, bottom=20 / height)
    return _png(figure)


# --------------------------------------------------------------------------- drawing


def _figure(width: int, height: int) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    figure.patch.set_alpha(0.0)  # transparent: the theme's own background shows through
    return figure


def _png(figure: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # the figure draws on this Agg canvas from now on (no pyplot, no backend switch)
    out = io.BytesIO()
    # Not bbox_inches="tight": the picture keeps its size, whatever its labels.
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def _bars(
    axes: Axes, positions: Sequence[int], values: Sequence[float], width: float, colours: Sequence[str],
    *, horizontal: bool = False,
) -> None:
    """Bars as one collection (``Axes.bar`` adds a patch per bar, several times slower to draw),
    each with a thin lighter edge so that the dark purple stands out on a dark theme too."""
    from matplotlib.collections import PolyCollection

    half = width / 2
    shapes = []
    for at, value in zip(positions, values, strict=True):
        corners = [(at - half, 0.0), (at - half, value), (at + half, value), (at + half, 0.0)]
        shapes.append([(y, x) for x, y in corners] if horizontal else corners)
    axes.add_collection(PolyCollection(shapes, facecolors=colours, edgecolors=TINT, linewidths=0.6))


def _title(axes: Axes, text: str) -> None:
    """A panel's name above its top left corner (plain text: ``set_title`` re-lays itself out on
    every draw)."""
    axes.text(0.0, 1.04, text, transform=axes.transAxes, color=GREY, fontsize=7.5, ha="left", va="bottom")


def _style(axes: Axes, title: str, peak: float, tick_text: Any) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axes.patch.set_alpha(0.0)
    _title(axes, title)
    axes.set_ylim(0, peak * 1.1 if peak > 0 else 1.0)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=title == "Messages", min_n_ticks=2))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: tick_text(value)))
    axes.grid(axis="y", color=GREY, alpha=0.35, linewidth=0.5)
    axes.set_axisbelow(True)
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    axes.spines["bottom"].set_color(GREY)
    axes.tick_params(colors=GREY, labelsize=6.5, length=2, width=0.5)


def _day_ticks(count: int) -> list[int]:
    """At most about eight day labels, the last day (today) always among them."""
    if count <= 0:
        return []
    step = max(1, math.ceil(count / 8))
    return sorted({*range(count - 1, -1, -step)})


def _day_label(day: str) -> str:
    try:
        parsed = date.fromisoformat(day)
    except ValueError:
        return _printable(day, 10)
    return f"{MONTHS[parsed.month - 1]} {parsed.day}"


# --------------------------------------------------------------------------- text and numbers


def _finite(value: float) -> float:
    """A value fit to draw: not negative, not NaN, not infinite (those draw as nothing)."""
    number = float(value)
    return number if math.isfinite(number) and number > 0 else 0.0


def _compact(value: float) -> str:
    """1234 -> 1.2k, 5_600_000 -> 5.6M: tick and bar labels that fit whatever the size."""
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def _hours(value: float) -> str:
    """Hours: 12, 1.5, 0.25 (a quarter of an hour), 1.2k."""
    if abs(value) >= 1000:
        return _compact(value)
    text = f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@cache
def _glyphs() -> frozenset[int]:
    """The code points the chart font can draw."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family=["sans-serif"]))
    return frozenset(FT2Font(path).get_charmap())


def _printable(text: str, limit: int) -> str:
    """``text`` as the font can draw it on one line: characters it has no glyph for (emoji, most
    scripts beyond Latin, Greek and Cyrillic) and control or format characters dropped, at most
    ``limit`` characters (an ellipsis marks a cut); "?" when nothing drawable is left."""
    glyphs = _glyphs()
    kept = "".join(
        ch if ch.isprintable() or ch == " " else " "
        for ch in unicodedata.normalize("NFC", text)
        if (ord(ch) in glyphs or ch.isspace()) and unicodedata.category(ch) not in ("Cf", "Cs", "Co", "Mn")
    )
    shown = " ".join(kept.split())
    if not shown:
        return "?"
    return shown if len(shown) <= limit else shown[: limit - 1].rstrip() + "…"


def warm_up() -> None:
    """Import matplotlib, load the font and draw once, so that the first real chart is quick."""
    _glyphs()
    activity_chart(["2000-01-01"], [1], [3600.0], caption="warm-up")
