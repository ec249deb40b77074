"""The web leaderboard's data: the standings of every tab from the same boards as the pinned
messages (``services.boards``, which leaves out hidden and, with HIDE_DEPARTED, departed members),
one snapshot per change shared by every viewer, opaque member links, the live broadcast and the
signed sign-in cookie. No disnake, no aiohttp: ``exts/web`` serves what this builds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..db import Storage, repository
from ..domain import BOARDS, WINDOWS, Board, BoardLine, Period
from .boards import BoardService, digest
from .seasons import SeasonInfo, SeasonService

# The tabs, in the order the page shows them, and their labels.
TABS: tuple[Period, ...] = ("season", "today", "week", "month", "all-time")
TAB_LABELS: dict[Period, str] = {
    "season": "This season",
    "today": "Today",
    "week": "Last 7 days",
    "month": "Last 30 days",
    "all-time": "All time",
}
BOARD_LABELS: dict[Board, str] = {"messages": "Message Leaderboard", "voice": "Voice Leaderboard"}
SECRET_KEY = "web:secret"  # the per-install secret (member links, sign-in cookies), kept in the settings table
TOKEN_CHARS = 20  # hex characters of a member link: 80 bits of an HMAC, never the id itself
REMEMBERED_TOKENS = 50_000  # member links the site can answer (those it has shown), oldest forgotten first
PAST_SEASONS_SHOWN = 12
PAST_SEASONS_TTL = 60.0  # seconds: final standings only change when a member hides or comes back
CLIENT_QUEUE = 4  # events waiting per live viewer; a slower viewer skips to the newest (each is the whole state)


# How a line reads on the page: (name, value), as the pinned boards show them (given by the caller:
# formatting lives in ui/).
LineText = Callable[[Board, BoardLine], tuple[str, str]]


class MemberTokens:
    """Opaque member links: an HMAC of the user id with the per-install secret. The site answers
    only tokens it has handed out (members shown on a board), so a link cannot be guessed from an
    id and no id is ever printed."""

    def __init__(self, secret: bytes, *, remember: int = REMEMBERED_TOKENS) -> None:
        self._secret = secret
        self._remember = remember
        self._known: OrderedDict[str, int] = OrderedDict()

    def token(self, user_id: int) -> str:
        mac = hmac.new(self._secret, f"member:{user_id}".encode(), hashlib.sha256).hexdigest()[:TOKEN_CHARS]
        self._known[mac] = user_id
        self._known.move_to_end(mac)
        while len(self._known) > self._remember:
            self._known.popitem(last=False)
        return mac

    def user(self, token: str) -> int | None:
        return self._known.get(token)


@dataclass(frozen=True)
class WebLine:
    rank: int
    name: str
    value: str
    token: str

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "name": self.name, "value": self.value, "member": self.token}


@dataclass(frozen=True)
class Snapshot:
    """Every tab of the running season, as shown; ``payload`` is the same as JSON bytes (the
    data endpoint's body and the live event's data), built once per change."""

    season: int
    season_ends_at: float
    tabs: dict[Period, dict[Board, list[WebLine]]]
    changed_at: float
    version: int
    payload: bytes = field(repr=False)

    def tab(self, period: Period) -> dict[str, Any]:
        return {
            "period": period,
            "season": self.season,
            "changed_at": self.changed_at,
            "boards": {board: [line.to_json() for line in self.tabs[period][board]] for board in BOARDS},
        }


@dataclass(frozen=True)
class PastSeason:
    number: int
    started_at: float
    ended_at: float
    boards: dict[Board, list[WebLine]]


def lines_out(board: Board, lines: list[BoardLine], tokens: MemberTokens, text: LineText) -> list[WebLine]:
    return [WebLine(line.rank, *text(board, line), tokens.token(line.user_id)) for line in lines]


class WebBoards:
    """The standings the site shows, read from ``services.boards`` at most once per change check
    (not per viewer), and the moment they last changed."""

    def __init__(
        self,
        boards: BoardService,
        seasons: SeasonService,
        tokens: MemberTokens,
        text: LineText,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.boards = boards
        self.seasons = seasons
        self.tokens = tokens
        self.text = text
        self.clock = clock
        self.current: Snapshot | None = None
        self._hash: str | None = None
        self._lock = asyncio.Lock()
        self._past: tuple[float, list[PastSeason]] | None = None

    async def check(self) -> Snapshot | None:
        """Read every tab; the new snapshot when what they show changed (None when unchanged)."""
        async with self._lock:
            season: SeasonInfo = self.seasons.current
            tabs: dict[Period, dict[Board, list[WebLine]]] = {}
            for period in TABS:
                scope = season.number if period == "season" else WINDOWS[period].scope
                tabs[period] = {
                    board: lines_out(board, await self.boards.lines(board, season=scope), self.tokens, self.text)
                    for board in BOARDS
                }
            as_json = {p: {b: [line.to_json() for line in ls] for b, ls in t.items()} for p, t in tabs.items()}
            shown = [season.number, as_json]
            shown_hash = digest(shown)
            if shown_hash == self._hash and self.current is not None:
                return None
            previous = self.current
            changed_at = self.clock()
            if previous is None:  # the first read after a start: when the pinned boards last changed
                known = [self.boards.changed_at(board) for board in BOARDS]
                changed_at = max((k for k in known if k is not None), default=changed_at)
            # Milliseconds, and always more than the last: a page left open across a restart of
            # the bot still takes the new run's standings as newer than what it shows.
            version = max(int(self.clock() * 1000), 0 if previous is None else previous.version + 1)
            payload = json.dumps(
                {"season": season.number, "changed_at": changed_at, "version": version, "tabs": shown[1]},
                separators=(",", ":"),
            ).encode()
            self._hash = shown_hash
            self.current = Snapshot(season.number, season.ends_at, tabs, changed_at, version, payload)
            return self.current

    async def snapshot(self) -> Snapshot:
        """The latest snapshot (read once if none was yet)."""
        if self.current is None:
            await self.check()
        assert self.current is not None
        return self.current

    async def past_seasons(self) -> list[PastSeason]:
        """The most recent finished seasons, newest first, with their final standings."""
        now = self.clock()
        if self._past is not None and now - self._past[0] < PAST_SEASONS_TTL:
            return self._past[1]
        finished = sorted(await self.seasons.finished(), key=lambda s: s.number, reverse=True)[:PAST_SEASONS_SHOWN]
        out = []
        for info in finished:
            boards = {
                board: lines_out(board, await self.boards.lines(board, season=info.number), self.tokens, self.text)
                for board in BOARDS
            }
            out.append(PastSeason(info.number, info.started_at, info.ended_at or info.ends_at, boards))
        self._past = (now, out)
        return out

    def forget_past(self) -> None:
        self._past = None


class Broadcast:
    """One stream of events for every live viewer: each publish is one bytes object queued to each
    client (no per-viewer rendering). Queues are bounded: a viewer that does not keep up loses
    older events (each carries the whole state, so the newest is enough)."""

    def __init__(self, *, queue_size: int = CLIENT_QUEUE) -> None:
        self.queue_size = queue_size
        self._clients: set[asyncio.Queue[bytes]] = set()
        self.published = 0

    def __len__(self) -> int:
        return len(self._clients)

    def subscribe(self) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(self.queue_size)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes]) -> None:
        self._clients.discard(queue)

    def publish(self, event: bytes) -> None:
        self.published += 1
        for queue in self._clients:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def close(self) -> None:
        """Tell every live viewer's stream to end (an empty event), so a stop does not wait on them."""
        for queue in list(self._clients):
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(b"")


def sse_event(name: str, data: bytes) -> bytes:
    """One Server-Sent Event (``data`` holds no newline: compact JSON)."""
    return b"event: " + name.encode() + b"\ndata: " + data.replace(b"\n", b"") + b"\n\n"


# --------------------------------------------------------------------------- secret and sessions


async def install_secret(storage: Storage, guild_id: int) -> bytes:
    """The per-install secret: made once, kept in the settings table (a restart keeps links and
    sign-ins valid)."""
    stored = await storage.run(repository.get_setting, guild_id, SECRET_KEY)
    if isinstance(stored, str) and len(stored) >= 32:
        return bytes.fromhex(stored)
    secret = secrets.token_hex(32)
    await storage.run(repository.set_setting, guild_id, SECRET_KEY, secret)
    return bytes.fromhex(secret)


SESSION_SECONDS = 7 * 86400.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, purpose: str, value: dict[str, Any], *, now: float, seconds: float = SESSION_SECONDS) -> str:
    """``value`` as a cookie: base64 JSON and an HMAC over it (and ``purpose``), valid ``seconds``."""
    body = _b64(json.dumps({**value, "exp": now + seconds}, separators=(",", ":")).encode())
    mac = _b64(hmac.new(secret, f"{purpose}.{body}".encode(), hashlib.sha256).digest())
    return f"{body}.{mac}"


def unsign(secret: bytes, purpose: str, cookie: str | None, *, now: float) -> dict[str, Any] | None:
    """The value of a cookie made by :func:`sign`; None when forged, for another purpose or expired."""
    if not cookie or cookie.count(".") != 1:
        return None
    body, mac = cookie.split(".")
    expected = _b64(hmac.new(secret, f"{purpose}.{body}".encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac.encode(), expected.encode()):  # bytes: a str with "é" would raise
        return None
    try:
        value = json.loads(_unb64(body))
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("exp"), int | float) or value["exp"] < now:
        return None
    return value
