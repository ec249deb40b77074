"""Plain types every layer shares (db, services, ui, exts): boards, ranked entries, batches, names."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal, get_args

Board = Literal["messages", "voice"]
BOARDS: tuple[Board, ...] = get_args(Board)

Period = Literal["season", "today", "week", "month", "all-time"]
PERIODS: tuple[Period, ...] = get_args(Period)


@dataclass(frozen=True)
class Window:
    """A board over the last ``days`` days including today (None: all of time) instead of a
    season. Its totals are stored like a season's, under the negative ``scope`` number in place of
    a season number, so every ranking query and cache serves a window unchanged."""

    period: Period
    scope: int
    days: int | None


TODAY = Window("today", -1, 1)
WEEK = Window("week", -7, 7)
MONTH = Window("month", -30, 30)
ALL_TIME = Window("all-time", -1000, None)
ROLLING_WINDOWS: tuple[Window, ...] = (TODAY, WEEK, MONTH)
WINDOWS: dict[Period, Window] = {w.period: w for w in (*ROLLING_WINDOWS, ALL_TIME)}
_BY_SCOPE = {w.scope: w for w in WINDOWS.values()}


def shift_day(day: str, days: int) -> str:
    """The day name (``YYYY-MM-DD``) ``days`` after ``day`` (before, when negative)."""
    return (date.fromisoformat(day) + timedelta(days=days)).isoformat()


def days_between(first: str, last: str) -> int:
    """How many days ``last`` is after ``first``."""
    return (date.fromisoformat(last) - date.fromisoformat(first)).days


def window_of(scope: int) -> Window | None:
    """The window a scope number stands for; None for a season number."""
    return _BY_SCOPE.get(scope)

NameInfo = tuple[str, str | None]  # (display name, username)

# What a member without any usable name is called; a raw ID means nothing to readers.
UNKNOWN_MEMBER = "Unknown member"

# Line breaks and other control characters would break one-line layouts (board lines, titles).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# Bidirectional embeddings, overrides and isolates: a name holding one could reverse the rest
# of its board line ("#1 Alice — 42" shown backwards). Removed from every name.
# The direction marks (LRM, RLM, ALM) go too: next to the " — 42" that follows a name they can
# move it to the other side.
BIDI_CONTROLS = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Characters that render as nothing; a name made only of these is as good as blank for readers:
# every character of these categories (combining marks with nothing to sit on, format characters
# such as zero-width spaces, soft hyphens, tags and joiners, and spaces), and the letters and
# symbols below that draw nothing (the Hangul fillers trick, the blank Braille pattern).
INVISIBLE_CATEGORIES = frozenset({"Mn", "Me", "Cf", "Cc", "Zs", "Zl", "Zp"})
INVISIBLE_CHARACTERS = frozenset("\u115f\u1160\u2800\u3164\uffa0")


def _draws_nothing(character: str) -> bool:
    return character in INVISIBLE_CHARACTERS or unicodedata.category(character) in INVISIBLE_CATEGORIES


def visible_name(name: str | None) -> str | None:
    """The name on one line, without control or direction characters; None if nothing visible is left."""
    if name is None:
        return None
    text = BIDI_CONTROLS.sub("", CONTROL_CHARACTERS.sub(" ", name)).strip()
    if all(map(_draws_nothing, text)):
        return None
    return text


def best_name(*candidates: str | None) -> str | None:
    """The first candidate (nickname, global name, username) that shows something."""
    for candidate in candidates:
        if (shown := visible_name(candidate)) is not None:
            return shown
    return None


@dataclass(frozen=True)
class RankedEntry:
    user_id: int
    value: float


@dataclass(frozen=True)
class BoardLine:
    """One ranked line of a board, with the member's raw display name (escaped when rendered)."""

    rank: int
    name: str
    user_id: int
    value: float


@dataclass(frozen=True)
class SessionOpen:
    key: str
    user_id: int
    channel_id: int
    started_at: float


@dataclass(frozen=True)
class SessionClose:
    key: str
    ended_at: float


@dataclass(frozen=True)
class SeasonRoll:
    """Ends season ``number`` at ``ended_at`` and opens the next, in the same transaction as the
    batch that closes the finished season's counts."""

    number: int
    ended_at: float
    period: float
    next_starts_at: float | None = None  # the scheduled boundary; None: the next starts at ended_at

    @property
    def next_start(self) -> float:
        return self.ended_at if self.next_starts_at is None else self.next_starts_at


Counts = tuple[int, float]  # (messages, voice seconds)


@dataclass(frozen=True)
class FinishedSeason:
    """A season in the archive, with the winner of each board (None: nobody on it)."""

    number: int
    started_at: float
    ended_at: float
    winners: dict[Board, BoardLine | None]


@dataclass(frozen=True)
class Placing:
    """Where a member finished on one board of a finished season."""

    season: int
    board: Board
    rank: int
    value: float


@dataclass(frozen=True)
class LeaseClaim:
    """"``holder`` counts for the guild until ``expires_at``" (0 releases it), asserted by a write."""

    holder: str
    expires_at: float
    renewed_at: float = 0.0  # on the holder's clock: expires_at - renewed_at is how long it claims


@dataclass(frozen=True)
class Unwritten:
    """Per-member counts not yet in the database, captured on the event loop at one moment:
    the buffers, and the write under way (numbered ``in_flight_sequence``). A database snapshot
    that includes every write up to number S lacks ``beyond(S)`` of them."""

    committed: int  # the last write number committed when captured
    in_flight_sequence: int | None = None
    buffered: dict[int, Counts] = field(default_factory=dict)
    in_flight: dict[int, Counts] = field(default_factory=dict)
    final: bool = False  # a finished season: nothing is unwritten whatever the snapshot
    day: str | None = None  # a window's: the day (TIMEZONE's) its counts were captured on

    def members(self) -> set[int]:
        return set(self.buffered) | set(self.in_flight)

    def beyond(self, stored: int) -> dict[int, Counts] | None:
        """What a snapshot holding writes up to ``stored`` lacks; None when a write committed
        after the capture (its counts are neither in memory any more nor in that snapshot's
        complement): read again."""
        if self.final:
            return {}
        if stored == self.committed:
            parts = (self.buffered, self.in_flight)
        elif self.in_flight_sequence is not None and stored == self.in_flight_sequence:
            parts = (self.buffered, {})
        else:
            return None
        merged = dict(parts[0])
        for user, (messages, voice) in parts[1].items():
            had = merged.get(user, (0, 0.0))
            merged[user] = (had[0] + messages, had[1] + voice)
        return merged


@dataclass
class ActivityBatch:
    """Everything one flush writes, in one transaction."""

    guild_id: int
    season: int
    heartbeat_at: float
    messages: dict[tuple[str, int], int] = field(default_factory=dict)  # (day, user) -> count
    voice: dict[tuple[str, int], float] = field(default_factory=dict)  # (day, user) -> seconds
    opened: list[SessionOpen] = field(default_factory=list)
    closed: list[SessionClose] = field(default_factory=list)
    names: dict[int, NameInfo] = field(default_factory=dict)  # user -> (display, username)
    roll: SeasonRoll | None = None
    # Every write is numbered; the database keeps the highest number written, in the same
    # transaction. A saved batch whose number is not above it was written already.
    sequence: int | None = None
    recovery_id: str | None = None  # only in recovery files of format 1: their applied-marker
    # The writer's lease, renewed (or released) in the same transaction: a write by an instance
    # that lost it fails whole (see services.lease). Never saved to the recovery file.
    lease: LeaseClaim | None = None
    # The writer's day when the batch was taken: the windows move on to it (never back). Not
    # saved to the recovery file: a batch read back moves them no further than its own days.
    today: str | None = None

    def is_empty(self) -> bool:
        return not (self.messages or self.voice or self.opened or self.closed or self.names)

    def per_member(self) -> dict[int, Counts]:
        """The batch's counts summed over days, per member."""
        return counts_per_member(self.messages, ((user, seconds) for (_, user), seconds in self.voice.items()))


def counts_per_member(
    messages: Mapping[tuple[str, int], int], voice: Iterable[tuple[int, float]]
) -> dict[int, Counts]:
    """(day, member) message counts and (member, seconds) voice credits, summed per member."""
    out: dict[int, Counts] = {}
    for (_, user), count in messages.items():
        had_messages, had_voice = out.get(user, (0, 0.0))
        out[user] = (had_messages + count, had_voice)
    for user, seconds in voice:
        had_messages, had_voice = out.get(user, (0, 0.0))
        out[user] = (had_messages, had_voice + seconds)
    return out
