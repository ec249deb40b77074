"""Pure text helpers shared by the embed builders (no disnake imports on purpose)."""

from __future__ import annotations

import logging
import math
import re
from datetime import date

from ..domain import UNKNOWN_MEMBER, visible_name

# Discord's own limit for usernames / nicknames.
NAME_MAX_LEN = 32
TIMESTAMP_STYLES = frozenset("tTdDfFR")

log = logging.getLogger(__name__)

_ZWSP = "\u200b"

# Inline markdown: bold/italic, underline, strike, code, spoiler, masked link, and the
# backslash itself so a trailing "\" cannot escape whatever the embed puts after the name.
_INLINE_MD_RE = re.compile(r"([\\*_~`|\[\]])")
# Block markdown only counts at line start; names never contain newlines after cleanup,
# so line start is the start of the name (quote, heading / subtext, list).
_BLOCK_MD_RE = re.compile(r"^([>#-])")
# Mention-like syntax: "<@id>", "<#id>", "</cmd:id>", "<:emoji:id>", "<t:ts>" would
# render as something the member is not; "@" also covers @everyone / @here.
_ANGLE_RE = re.compile(r"<(?=[#/:]|a:|t:)")


def format_duration(seconds: float) -> str:
    """Voice time such as ``42s``, ``4m 05s`` or ``123h 05m`` (floored, hours never roll into days)."""
    if not math.isfinite(seconds) or seconds <= 0:
        return "0s"
    total = math.floor(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if total < 3600:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def format_count(n: int) -> str:
    """Thousands separators: 1234567 -> ``1,234,567``."""
    return f"{n:,}"


def ordinal_rank(rank: int) -> str:
    """Leaderboard position as shown in lines: ``#1``."""
    return f"#{rank}"


def day_text(day: str, *, year: bool = True) -> str:
    """``2026-12-03`` as ``3 Dec 2026`` (names of days, not instants: no viewer's zone moves them)."""
    d = date.fromisoformat(day)
    return f"{d.day} {d.strftime('%b')}" + (f" {d.year}" if year else "")


def day_range_text(first: str, last: str) -> str:
    """``27 Nov – 3 Dec 2026``; one day alone when they are the same."""
    if first == last:
        return day_text(last)
    return f"{day_text(first, year=first[:4] != last[:4])} – {day_text(last)}"


def _clean(name: str | None) -> str | None:
    """Single-line, stripped name, or None if nothing visible is left."""
    return visible_name(name)


def _truncate(text: str) -> str:
    if len(text) <= NAME_MAX_LEN:
        return text
    return text[: NAME_MAX_LEN - 1].rstrip() + "…"


def _escape(text: str) -> str:
    text = _INLINE_MD_RE.sub(r"\\\1", text)
    text = _BLOCK_MD_RE.sub(r"\\\1", text)
    text = text.replace("@", "@" + _ZWSP)
    text = text.replace("://", ":" + _ZWSP + "//")  # a name like https://evil.example is not a link
    return _ANGLE_RE.sub("<" + _ZWSP, text)


def display_name(*, nick: str | None, global_name: str | None, username: str | None, user_id: int) -> str:
    """Best name for a member, safe to drop into embed markdown.

    Falls back nick -> global name -> username -> ``Unknown member``. ``user_id`` only
    goes to the debug log when no name is usable; it is never shown.
    """
    for candidate in (nick, global_name, username):
        cleaned = _clean(candidate)
        if cleaned is not None:
            # Truncate before escaping so the limit counts visible characters and an
            # escape sequence is never cut in half.
            return _escape(_truncate(cleaned))
    # A raw ID means nothing to readers, so it only goes to the log.
    log.debug("no usable name for member %s", user_id)
    return UNKNOWN_MEMBER


def discord_timestamp(ts: float, style: str = "R") -> str:
    """Discord timestamp markup, e.g. ``<t:1700000000:R>``; each client renders it in its own timezone."""
    if style not in TIMESTAMP_STYLES:
        raise ValueError(f"unknown timestamp style {style!r}; expected one of {''.join(sorted(TIMESTAMP_STYLES))}")
    if not math.isfinite(ts):
        raise ValueError(f"timestamp must be finite, got {ts!r}")
    return f"<t:{math.floor(ts)}:{style}>"
