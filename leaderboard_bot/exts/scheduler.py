"""The pinned leaderboards: one bot message per board channel, edited in place on a schedule.

Edits happen only when the rendered embed changed (Discord throttles edits to hour-old messages,
error 30046), a deleted message is re-posted and pinned, and no HTTP error ever ends the loop:
forbidden channels and throttling back off and retry on later cycles.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import disnake
from disnake.ext import commands, tasks
from loguru import logger

from ..bot import LeaderboardBot
from ..db import Board, repository
from ..services.backoff import Backoff
from ..services.ranking import BOARDS
from ..ui.embeds import board_title, format_value, leaderboard_embed

EDIT_LIMIT_CODE = 30046  # "maximum edits to messages older than 1 hour reached"
MISSING_ACCESS_CODES = {10003, 50001, 50013}  # unknown channel, missing access, missing permissions
MAX_BACKOFF_SECONDS = 15 * 60
# A refresh normally takes well under a second; disnake's own 5xx retries take up to ~25 s.
REFRESH_TIMEOUT = 120.0
# disnake sleeps through every 429, even one asking to wait an hour (edit limit 30046).
# A wait longer than this while refreshing is abandoned and becomes a back-off instead.
LONG_RATE_LIMIT_SECONDS = 30.0


@dataclass
class BoardPost:
    """What the bot knows about one pinned board; persisted so restarts reuse the message."""

    board: Board
    channel_id: int
    message_id: int | None = None
    standings_hash: str | None = None
    changed_at: float | None = None
    embed_hash: str | None = None
    pinned: bool = False

    @property
    def setting_key(self) -> str:
        return f"board:{self.board}"

    def to_setting(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("board")
        return data


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Scheduler(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot
        settings = bot.settings
        self.posts: dict[Board, BoardPost] = {
            "messages": BoardPost("messages", settings.chat_lb_channel_id),
            "voice": BoardPost("voice", settings.vc_lb_channel_id),
        }
        interval = settings.update_interval
        self._backoff = {board: Backoff(interval, MAX_BACKOFF_SECONDS) for board in BOARDS}
        self._locks: dict[Board, asyncio.Lock] = {board: asyncio.Lock() for board in BOARDS}
        self._pin_backoff = {board: Backoff(interval, MAX_BACKOFF_SECONDS) for board in BOARDS}
        # Boards whose stored message was checked on this connection: a deletion while the bot
        # was offline sends no event, and an unchanged board would otherwise never notice.
        self._verified: set[Board] = set()
        self._saved: dict[Board, dict[str, object]] = {}
        self._loaded = False
        self.refresh_loop.change_interval(seconds=settings.update_interval)
        self.refresh_loop.start()

    def cog_unload(self) -> None:
        self.refresh_loop.cancel()

    # ------------------------------------------------------------------ the loop

    @tasks.loop(seconds=60)
    async def refresh_loop(self) -> None:
        await self.refresh_all()

    @refresh_loop.before_loop
    async def _before_refresh(self) -> None:
        await self.bot.wait_until_ready()

    async def refresh_all(self, *, force: bool = False) -> None:
        # Each board is guarded on its own: one failing channel never stops or delays the other.
        await asyncio.gather(*(self._refresh_guarded(board, force) for board in BOARDS))

    async def _refresh_guarded(self, board: Board, force: bool) -> None:
        try:
            await self.refresh(board, force=force)
        except Exception:
            logger.exception("refreshing the {} leaderboard failed; will retry next cycle", board)

    async def _load_state(self) -> None:
        if self._loaded:
            return
        guild_id = self.bot.settings.guild_id
        for post in self.posts.values():
            stored = await self.bot.storage.run(repository.get_setting, guild_id, post.setting_key)
            if isinstance(stored, dict) and stored.get("channel_id") == post.channel_id:
                post.message_id = stored.get("message_id")
                post.standings_hash = stored.get("standings_hash")
                post.changed_at = stored.get("changed_at")
                post.embed_hash = stored.get("embed_hash")
                post.pinned = bool(stored.get("pinned", False))
                self._saved[post.board] = post.to_setting()
        self._loaded = True

    async def _save(self, post: BoardPost) -> None:
        state = post.to_setting()
        if self._saved.get(post.board) == state:
            return  # unchanged: no write every cycle
        await self.bot.storage.run(repository.set_setting, self.bot.settings.guild_id, post.setting_key, state)
        self._saved[post.board] = state

    # ------------------------------------------------------------------ one board

    async def refresh(self, board: Board, *, force: bool = False) -> None:
        async with self._locks[board]:
            await self._load_state()
            backoff = self._backoff[board]
            if not force and backoff.waiting():
                return
            task = asyncio.ensure_future(self._refresh(self.posts[board]))
            _rate_limit_watch.watch(task, self._no_global_limit)
            try:
                try:
                    await asyncio.wait_for(asyncio.shield(task), REFRESH_TIMEOUT)
                except TimeoutError:
                    if not self._no_global_limit():
                        await task  # every request waits out a global limit; cancelling would wedge disnake
                    else:
                        task.cancel()
                        self._on_http_error(board, _Throttled(None))
                        return
            except disnake.HTTPException as error:
                self._on_http_error(board, error)
                return
            except asyncio.CancelledError:
                retry_after = _rate_limit_watch.pop(task)
                if retry_after is None:  # we are being cancelled ourselves (shutdown)
                    task.cancel()
                    raise
                self._on_http_error(board, _Throttled(retry_after))
                return
            finally:
                _rate_limit_watch.pop(task)
            if backoff.succeeded():
                logger.info("the {} leaderboard is being updated again", board)

    def _no_global_limit(self) -> bool:
        """False while disnake waits out a global rate limit (its private flag; True if absent)."""
        flag = getattr(self.bot.http, "_global_over", None)
        return flag is None or flag.is_set()

    async def _refresh(self, post: BoardPost) -> None:
        channel = self.bot.get_channel(post.channel_id)
        if not isinstance(channel, disnake.abc.Messageable) or not hasattr(channel, "get_partial_message"):
            raise _ChannelMissing(post.channel_id)
        bot = self.bot
        season = bot.seasons.current  # read once: a roll during the refresh must not mislabel the lines
        lines = await bot.board_lines(post.board, season=season.number)
        standings = [
            season.number,
            [(line.user_id, line.name, format_value(post.board, line.value)) for line in lines],
        ]
        standings_hash = _digest(standings)
        if standings_hash != post.standings_hash:
            post.standings_hash = standings_hash
            post.changed_at = time.time()
        guild = bot.guild
        embed = leaderboard_embed(
            board=post.board,
            lines=lines,
            arrow=bot.settings.arrow_emoji,
            guild_icon_url=guild.icon.url if guild and guild.icon else None,
            season_number=season.number,
            season_ends_at=season.ends_at,
            changed_at=post.changed_at,
        )
        embed_hash = _digest(embed.to_dict())
        if post.message_id is None:
            post.message_id = await self._adopt_pinned(channel, post.board)
        if post.message_id is not None and post.board not in self._verified:
            try:
                stored = await channel.fetch_message(post.message_id)
            except disnake.NotFound:
                logger.warning("the {} leaderboard message is gone; posting a new one", post.board)
                post.message_id = None
            else:
                post.pinned = stored.pinned
            self._verified.add(post.board)
        if post.message_id is not None and embed_hash != post.embed_hash:
            try:
                await channel.get_partial_message(post.message_id).edit(embed=embed)  # type: ignore[attr-defined]
            except disnake.NotFound:
                logger.warning("the {} leaderboard message was deleted; posting a new one", post.board)
                post.message_id = None
        # (An unchanged embed is not edited at all: nothing counts against Discord's edit limits.)
        if post.message_id is None:
            message = await channel.send(embed=embed)
            post.message_id, post.pinned = message.id, False
            self._pin_backoff[post.board].succeeded()  # a new message starts a new pin history
            await self._save(post)  # stored before pinning, so nothing can lead to a second post
        if not post.pinned:
            await self._pin(channel, post)
        post.embed_hash = embed_hash
        await self._save(post)

    async def _adopt_pinned(self, channel: disnake.abc.Messageable, board: Board) -> int | None:
        """Reuse our own pinned board if the database lost its id, instead of posting a duplicate."""
        me = self.bot.user
        if me is None or not hasattr(channel, "pins"):
            return None
        try:
            async for message in channel.pins():  # type: ignore[attr-defined]
                if message.author.id == me.id and any(e.title == board_title(board) for e in message.embeds):
                    logger.info("re-using the pinned {} leaderboard message {}", board, message.id)
                    return message.id
        except disnake.HTTPException:
            return None
        return None

    async def _pin(self, channel: disnake.abc.Messageable, post: BoardPost) -> None:
        """Pin the board; a failure is retried on later cycles with back-off, warned about once."""
        backoff = self._pin_backoff[post.board]
        if backoff.waiting() or post.message_id is None:
            return
        try:
            await channel.get_partial_message(post.message_id).pin(reason="leaderboard")  # type: ignore[attr-defined]
        except disnake.HTTPException as error:
            delay, first = backoff.failed()
            if first:
                logger.warning(
                    "could not pin the {} leaderboard ({} {}): give the bot Pin Messages in <#{}>; retrying in {:.0f}s",
                    post.board,
                    error.status,
                    error.text,
                    post.channel_id,
                    delay,
                )
            return
        post.pinned = True
        if backoff.succeeded():
            logger.info("the {} leaderboard is pinned now", post.board)

    def _on_http_error(self, board: Board, error: disnake.HTTPException) -> None:
        at_least = 0.0
        channel_id = self.posts[board].channel_id
        if isinstance(error, _ChannelMissing) or error.code in MISSING_ACCESS_CODES or error.status == 403:
            reason = "the bot cannot see or post in the channel: check its permissions there"
        elif isinstance(error, _Throttled) and error.retry_after is None:
            reason = "Discord did not answer in time"
        elif error.code == EDIT_LIMIT_CODE or isinstance(error, _Throttled):
            retry_after = error.retry_after if isinstance(error, _Throttled) else None
            at_least = min(retry_after or 600.0, 3600.0)
            reason = (
                "Discord is limiting edits to this (older) message"
                if error.code == EDIT_LIMIT_CODE
                else "Discord is rate limiting the bot"
            )
        else:
            reason = f"Discord answered {error.status} {error.text!r}"
        delay, first = self._backoff[board].failed(at_least=at_least)
        if first:
            logger.warning(
                "could not update the {} leaderboard in <#{}>: {}; retrying in {:.0f}s",
                board,
                channel_id,
                reason,
                delay,
            )
        else:
            logger.debug("{} leaderboard still failing ({}); next try in {:.0f}s", board, reason, delay)

    # ------------------------------------------------------------------ listeners

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        self._verified.clear()  # after a re-IDENTIFY, deletions in the gap sent no event

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: disnake.RawMessageDeleteEvent) -> None:
        for post in self.posts.values():
            if payload.message_id == post.message_id:
                post.message_id = None
                logger.warning("the {} leaderboard message was deleted; posting a new one", post.board)
                await self.refresh(post.board, force=True)


class _ChannelMissing(disnake.HTTPException):
    """The board channel is not visible to the bot (deleted, or no View Channel permission)."""

    def __init__(self, channel_id: int) -> None:
        Exception.__init__(self, f"channel {channel_id} not found")
        self.status = 404
        self.code = 10003
        self.text = "Unknown Channel"


class _Throttled(disnake.HTTPException):
    """A refresh abandoned because Discord asked for a long wait, or did not answer in time."""

    def __init__(self, retry_after: float | None) -> None:
        Exception.__init__(self, "rate limited" if retry_after else "timed out")
        self.retry_after = retry_after
        self.status = 429 if retry_after else 504
        self.code = 0
        self.text = "rate limited" if retry_after else "timed out"


class _RateLimitWatch(logging.Filter):
    """Spots disnake announcing a long rate-limit sleep inside a watched refresh task, and
    cancels that task so the scheduler can back off instead of hanging for the whole wait.
    A global limit is never cut short: disnake only lifts its global lock after that sleep."""

    def __init__(self) -> None:
        super().__init__()
        self._watched: dict[asyncio.Future[None], Callable[[], bool]] = {}
        self._long_waits: dict[asyncio.Future[None], float] = {}

    def watch(self, task: asyncio.Future[None], no_global_limit: Callable[[], bool] = lambda: True) -> None:
        self._watched[task] = no_global_limit

    def pop(self, task: asyncio.Future[None]) -> float | None:
        self._watched.pop(task, None)
        return self._long_waits.pop(task, None)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("We are being rate limited") or not record.args:
            return True
        try:
            task = asyncio.current_task()
            retry_after = float(record.args[0])  # type: ignore[index]
        except (RuntimeError, TypeError, ValueError, KeyError, IndexError):
            return True
        if task in self._watched and retry_after > LONG_RATE_LIMIT_SECONDS:
            # Decide once disnake has set up its sleep (and, for a global limit, its lock).
            task.get_loop().call_soon(self._cancel_unless_global, task, retry_after)
        return True

    def _cancel_unless_global(self, task: asyncio.Future[None], retry_after: float) -> None:
        no_global_limit = self._watched.get(task)
        if no_global_limit is None or task.done() or not no_global_limit():
            return
        self._long_waits[task] = retry_after
        task.cancel()


_rate_limit_watch = _RateLimitWatch()
logging.getLogger("disnake.http").addFilter(_rate_limit_watch)


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Scheduler(bot))
