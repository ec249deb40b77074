"""The pinned leaderboards: one bot message per board channel, edited in place on a schedule.

Edits happen only when the rendered embed changed (Discord throttles edits to hour-old messages,
error 30046), a deleted message is re-posted and pinned, and no HTTP error ever ends the loop:
forbidden channels and throttling back off and retry on later cycles. A board the bot may edit but
not read back (no Read Message History) is still edited in place, and that is told once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import disnake
from disnake.ext import commands, tasks
from loguru import logger

from ..adapters.disnake_ratelimit import RateLimitWatch, global_limit_in_force, no_global_limit
from ..background import Background
from ..config import Tunables
from ..db import repository
from ..db.storage import StorageError
from ..domain import BOARDS, Board
from ..logs import is_expected_failure
from ..services.backoff import Backoff
from ..services.boards import digest
from ..services.logthrottle import LogThrottle, report_failure, report_recovery
from ..services.seasons import SeasonInfo
from ..ui.embeds import board_title, format_value, guild_icon_url, leaderboard_embed, notice_embed

if TYPE_CHECKING:
    from ..bot import LeaderboardBot

EDIT_LIMIT_CODE = 30046  # "maximum edits to messages older than 1 hour reached"
MISSING_ACCESS_CODES = {10003, 50001, 50013}  # unknown channel, missing access, missing permissions
MAX_BACKOFF_SECONDS = 15 * 60
# A refresh normally takes well under a second; disnake's own 5xx retries take up to ~25 s.
REFRESH_TIMEOUT = 120.0
# disnake sleeps through every 429, even one asking to wait an hour (edit limit 30046).
# A wait longer than this while refreshing is abandoned and becomes a back-off instead.
LONG_RATE_LIMIT_SECONDS = 30.0
# Each stored board is fetched this often to see that it is still there, pinned and showing its
# embed (one GET per board; events cover the rest: delete, bulk delete, edit, pins update).
VERIFY_EVERY_SECONDS = 10 * 60.0
# What one refresh did (the "result" field of its log line); the rest log at DEBUG.
CHANGED_RESULTS = {"posted", "edited", "pinned"}
# A board deleted within this long of being posted, a second time in a row, was most likely
# deleted by a bot (an auto-moderator): the next post waits 5 s, doubling up to MAX_BACKOFF_SECONDS.
QUICK_DELETE_SECONDS = 60.0
REPOST_WAIT_SECONDS = 5.0
# /health's word for a board edited blind: the bot may edit its message but not read it back.
UNREAD_DETAIL = "updated, but without Read Message History it cannot check the board is still there or pinned"


@dataclass
class BoardPost:
    """The pinned message of one board; persisted so restarts reuse the message. (What the board
    shows and when that last changed belongs to ``services.boards``.)"""

    board: Board
    channel_id: int
    message_id: int | None = None
    embed_hash: str | None = None
    pinned: bool = False

    @property
    def setting_key(self) -> str:
        return f"board:{self.board}"

    def to_setting(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("board")
        return data


class Scheduler(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot
        settings = bot.services.settings
        self.posts: dict[Board, BoardPost] = {b: BoardPost(b, settings.board_channel(b)) for b in BOARDS}

        def interval() -> float:
            return settings.current.update_interval

        self._backoff = {board: Backoff(interval, MAX_BACKOFF_SECONDS) for board in BOARDS}
        self._locks: dict[Board, asyncio.Lock] = {board: asyncio.Lock() for board in BOARDS}
        self._pin_backoff = {board: Backoff(interval, MAX_BACKOFF_SECONDS) for board in BOARDS}
        # A board deleted soon after it was posted, again and again (an auto-moderator deleting
        # everything there), is posted again after growing waits: no wall of posts and pin notices.
        self._posted_at: dict[Board, float] = {}
        self._quick_deletes: dict[Board, int] = {}
        self._repost_not_before: dict[Board, float] = {}
        # Boards whose stored message was checked on this connection: a deletion while the bot
        # was offline sends no event, and an unchanged board would otherwise never notice.
        self._verified: set[Board] = set()
        self._verified_at: dict[Board, float] = {}
        self._saved: dict[Board, dict[str, object]] = {}
        self._loaded = False
        self._rate_limits = RateLimitWatch(
            long_wait=LONG_RATE_LIMIT_SECONDS, no_global_limit=lambda: no_global_limit(bot.http)
        )
        self._unsubscribe: list[Callable[[], None]] = []
        # Refreshes not awaited (a season roll, a settings change, a delayed repost): cancelled at unload.
        self._background_refreshes = Background("scheduler")
        self._moved: list[BoardPost] = []  # posts whose channel setting changed, awaiting their note
        # Failures that repeat every cycle are logged once per kind, then summarised (not a storm).
        self.log_throttle = LogThrottle()

    async def cog_load(self) -> None:
        self._rate_limits.install()
        self._unsubscribe = [
            self.bot.services.settings.subscribe(self._on_settings),
            self.bot.services.seasons.add_roll_listener(self._on_season_roll),
        ]
        self.refresh_loop.change_interval(seconds=self.bot.services.settings.current.update_interval)
        self.refresh_loop.start()

    def cog_unload(self) -> None:
        self.refresh_loop.cancel()
        self._background_refreshes.cancel_all()
        self._rate_limits.uninstall()
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    def _on_settings(self, old: Tunables, new: Tunables) -> None:
        if new.update_interval != old.update_interval:
            self.refresh_loop.change_interval(seconds=new.update_interval)
        if new.hide_departed != old.hide_departed:  # who is shown changes: not at the next cycle
            self._background_refreshes.start(self.refresh_all(), "a refresh after HIDE_DEPARTED changed")

    def _refresh_later(self, board: Board, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            await self._refresh_guarded(board, True)

        self._background_refreshes.start(later(), f"the {board} board's delayed refresh")

    def _on_season_roll(self, finished: SeasonInfo, current: SeasonInfo) -> None:
        # Both boards start from zero now; not awaited, so the final standings are not held up.
        self._background_refreshes.start(self.refresh_all(force=True), "the refresh after a season reset")

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
        except Exception as error:
            # A database outage or a network error is expected and told in one line; a traceback
            # only for the unexpected, and only the first time.
            report_failure(
                self.log_throttle,
                ("refresh", board),
                type(error).__name__,
                f"refreshing the {board} leaderboard failed ({type(error).__name__}: {error}); will retry next cycle",
                summary=f"refreshing the {board} leaderboard ({type(error).__name__})",
                level="WARNING" if is_expected_failure(error) else "ERROR",
                exception=None if is_expected_failure(error) else error,
                board=board,
            )

    async def _load_state(self) -> None:
        if self._loaded:
            return
        guild_id = self.bot.config.guild_id
        for post in self.posts.values():
            stored = await self.bot.services.storage.run(repository.get_setting, guild_id, post.setting_key)
            if isinstance(stored, dict) and stored.get("channel_id") == post.channel_id:
                post.message_id = stored.get("message_id")
                post.embed_hash = stored.get("embed_hash")
                post.pinned = bool(stored.get("pinned", False))
                self._saved[post.board] = post.to_setting()
        self._loaded = True

    async def _save(self, post: BoardPost) -> None:
        state = post.to_setting()
        if self._saved.get(post.board) == state:
            return  # unchanged: no write every cycle
        await self.bot.services.storage.run(repository.set_setting, self.bot.config.guild_id, post.setting_key, state)
        self._saved[post.board] = state

    # ------------------------------------------------------------------ one board

    async def refresh(self, board: Board, *, force: bool = False) -> None:
        started = time.perf_counter()
        result: str | None = "failed"  # unless the refresh says otherwise
        try:
            result = await self._refresh_locked(board, force=force)
        except asyncio.CancelledError:
            result = None  # a stop, not a refresh
            raise
        finally:
            seconds = time.perf_counter() - started
            failures = self._backoff[board].failures
            detail = f"backing off after {failures} failure(s)" if failures else ""
            if not failures and self.unreadable(board):
                detail = UNREAD_DETAIL  # working, but not as it should: a warning in /health
            self.bot.services.health.refreshed(board, seconds, not detail, detail)
            if result is not None:
                self._log_refresh(board, result, seconds)

    def _log_refresh(self, board: Board, result: str, seconds: float) -> None:
        """One line per board per refresh. Only a change is worth INFO: an unchanged board every
        minute would bury everything else, and failures have their own (throttled) warning."""
        channel_id = self.posts[board].channel_id
        logger.bind(
            board=board,
            guild_id=self.bot.config.guild_id,
            channel_id=channel_id,
            result=result,
            duration_ms=round(seconds * 1000, 1),
        ).log(
            "INFO" if result in CHANGED_RESULTS else "DEBUG",
            "board refresh: the {} leaderboard in <#{}> {} in {:.0f} ms",
            board,
            channel_id,
            result,
            seconds * 1000,
        )

    def backing_off(self) -> list[str]:
        """Boards whose last refresh failed (for the health status)."""
        return [board for board in BOARDS if self._backoff[board].failures > 0]

    def unreadable(self, board: Board) -> bool:
        """Whether the board's message was refused to the bot (403) when it last checked it: it is
        edited blind, without knowing whether it is still there and pinned."""
        return self.log_throttle.failures(("read", board)) > 0

    async def _refresh_locked(self, board: Board, *, force: bool) -> str:
        """Returns what the refresh did: posted, edited, pinned, unchanged, failed or backing off."""
        async with self._locks[board]:
            await self._load_state()
            backoff = self._backoff[board]
            if not force and backoff.waiting():
                return "backing off"
            post = self._post(board)
            task = asyncio.ensure_future(self._refresh(post))
            self._rate_limits.watch(task)
            try:
                try:
                    result = await asyncio.wait_for(asyncio.shield(task), REFRESH_TIMEOUT)
                except TimeoutError:
                    if global_limit_in_force(self.bot.http):
                        result = await task  # every request waits out a global limit; cancelling would wedge disnake
                    else:
                        task.cancel()
                        self._on_http_error(board, _Throttled(None))
                        return "failed"
            except disnake.HTTPException as error:
                self._on_http_error(board, error)
                return "failed"
            except asyncio.CancelledError:
                retry_after = self._rate_limits.pop(task)
                if retry_after is None:  # we are being cancelled ourselves (shutdown)
                    task.cancel()
                    raise
                self._on_http_error(board, _Throttled(retry_after))
                return "failed"
            finally:
                self._rate_limits.pop(task)
            backoff.succeeded()
            report_recovery(
                self.log_throttle,
                ("refresh", board),
                f"the {board} leaderboard is being updated again",
                board=board,
                channel_id=post.channel_id,
            )
        if self._moved:
            await self._leave_moved_notes()
        return result

    def _post(self, board: Board) -> BoardPost:
        """The board's post, moved to a new channel when its channel setting changed."""
        post = self.posts[board]
        channel_id = self.bot.services.settings.board_channel(board)
        if post.channel_id != channel_id:
            logger.info("the {} leaderboard moves to <#{}>", board, channel_id)
            if post.message_id is not None:
                self._moved.append(post)
            post = self.posts[board] = BoardPost(board, channel_id)
            self._verified.discard(board)
        return post

    async def _leave_moved_notes(self) -> None:
        """The board left behind in the old channel says where it went (best effort, once)."""
        while self._moved:
            old = self._moved.pop()
            channel = self.bot.get_channel(old.channel_id)
            if old.message_id is None or not hasattr(channel, "get_partial_message"):
                continue
            message = channel.get_partial_message(old.message_id)  # type: ignore[union-attr]
            note = notice_embed(f"This leaderboard moved to <#{self.posts[old.board].channel_id}>.")
            try:
                await message.edit(embed=note)
                await message.unpin(reason="leaderboard moved")  # type: ignore[misc]
            except disnake.HTTPException as error:
                logger.info("could not leave a note on the old {} leaderboard: {}", old.board, error)

    async def _refresh(self, post: BoardPost) -> str:
        """Bring one board up to date; returns posted, edited, pinned or unchanged."""
        channel = self.bot.get_channel(post.channel_id)
        if not isinstance(channel, disnake.abc.Messageable) or not hasattr(channel, "get_partial_message"):
            raise _ChannelMissing(post.channel_id)
        owner = getattr(channel, "guild", None)
        if owner is None or owner.id != self.bot.config.guild_id:
            raise _ForeignChannel(post.channel_id, getattr(owner, "name", "a direct message"))
        bot = self.bot
        season = bot.services.seasons.current  # read once: a roll during the refresh must not mislabel the lines
        lines = await bot.services.boards.lines(post.board, season=season.number)
        # What readers see (formatted values): a change too small to show is no change.
        shown = [season.number, [(line.user_id, line.name, format_value(post.board, line.value)) for line in lines]]
        changed_at = await bot.services.boards.note_shown(post.board, shown)
        embed = leaderboard_embed(
            board=post.board,
            lines=lines,
            arrow=bot.services.settings.current.arrow_emoji,
            guild_icon_url=guild_icon_url(bot.guild),
            season_number=season.number,
            season_ends_at=season.ends_at,
            changed_at=changed_at,
        )
        embed_hash = digest(embed.to_dict())
        if post.message_id is None:
            post.message_id = await self._adopt_pinned(channel, post.board)
        now = asyncio.get_running_loop().time()
        if now - self._verified_at.get(post.board, now) >= VERIFY_EVERY_SECONDS:
            self._verified.discard(post.board)
        unread: disnake.Forbidden | None = None
        if post.message_id is not None and post.board not in self._verified:
            try:
                stored = await channel.fetch_message(post.message_id)
            except disnake.NotFound:
                logger.warning("the {} leaderboard message is gone; posting a new one", post.board)
                post.message_id = None
            except disnake.Forbidden as error:
                # No Read Message History: the message cannot be read, but the bot may still edit
                # its own message. The edit checks what it can: it fails with NotFound if the board
                # is gone (re-posted below), with Forbidden if the bot cannot post here at all.
                unread = error
                post.embed_hash = None
            else:
                self._readable(post)
                post.pinned = stored.pinned
                if stored.flags.suppress_embeds or not stored.embeds:
                    logger.warning("the {} leaderboard's embed was hidden; restoring it", post.board)
                    post.embed_hash = None
            self._verified.add(post.board)  # (unreadable: checked again at the next verification)
            self._verified_at[post.board] = now
        result = "unchanged"
        if post.message_id is not None and embed_hash != post.embed_hash:
            try:
                # suppress_embeds=False also undoes a moderator's "remove embed".
                await channel.get_partial_message(post.message_id).edit(embed=embed, suppress_embeds=False)
                result = "edited"
                if unread is not None:
                    self._unreadable(post, unread)
            except disnake.NotFound:
                logger.warning("the {} leaderboard message was deleted; posting a new one", post.board)
                post.message_id = None
        # (An unchanged embed is not edited at all: nothing counts against Discord's edit limits.)
        if post.message_id is None:
            if asyncio.get_running_loop().time() < self._repost_not_before.get(post.board, 0.0):
                return "backing off"
            message = await channel.send(embed=embed)
            self._posted_at[post.board] = asyncio.get_running_loop().time()
            post.message_id, post.pinned, result = message.id, False, "posted"
            self._pin_backoff[post.board].succeeded()  # a new message starts a new pin history
            self.log_throttle.succeeded(("pin", post.board))
            try:
                await self._save(post)  # stored before pinning, so nothing can lead to a second post
            except StorageError:
                # Pin it anyway: a restart before the next save adopts our pinned board instead of
                # posting a second one. The save is retried at the end of every refresh.
                logger.warning("could not store the new {} leaderboard's id yet; will retry", post.board)
        if not post.pinned and await self._pin(channel, post) and result == "unchanged":
            result = "pinned"
        post.embed_hash = embed_hash
        await self._save(post)
        return result

    def _unreadable(self, post: BoardPost, error: disnake.Forbidden) -> None:
        """The bot may edit its board but not read it (no Read Message History). Told once while
        it lasts (a missing permission stays missing until someone grants it, so no summaries
        every few minutes), counted for the recovery line and shown in /health."""
        operation = ("read", post.board)
        if self.unreadable(post.board):
            self.log_throttle.failed(operation, (error.status, error.code))
            return
        report_failure(
            self.log_throttle,
            operation,
            (error.status, error.code),
            f"cannot read the {post.board} leaderboard message in <#{post.channel_id}> ({error.status} {error.text}): "
            f"give the bot Read Message History there. Until then it keeps editing message {post.message_id} in "
            "place, but cannot check that it is still there and pinned (a deleted board is noticed, and posted "
            "again, only when an edit fails)",
            board=post.board,
            channel_id=post.channel_id,
            status=error.status,
            code=error.code,
        )

    def _readable(self, post: BoardPost) -> None:
        report_recovery(
            self.log_throttle,
            ("read", post.board),
            f"the bot can read the {post.board} leaderboard message again",
            board=post.board,
            channel_id=post.channel_id,
        )

    async def _adopt_pinned(self, channel: disnake.abc.Messageable, board: Board) -> int | None:
        """Reuse our own pinned board if the database lost its id, instead of posting a duplicate."""
        me = self.bot.user
        if me is None or not hasattr(channel, "pins"):
            return None
        try:
            async for message in channel.pins():
                if message.author.id == me.id and any(e.title == board_title(board) for e in message.embeds):
                    logger.info("re-using the pinned {} leaderboard message {}", board, message.id)
                    return message.id
        except disnake.HTTPException:
            return None
        return None

    async def _pin(self, channel: disnake.abc.Messageable, post: BoardPost) -> bool:
        """Pin the board (True once done); a failure is retried on later cycles with back-off,
        logged once per kind of failure."""
        backoff = self._pin_backoff[post.board]
        if backoff.waiting() or post.message_id is None:
            return False
        try:
            await channel.get_partial_message(post.message_id).pin(reason="leaderboard")  # type: ignore[attr-defined]
        except disnake.HTTPException as error:
            delay, _ = backoff.failed()
            where = f": give the bot Pin Messages in <#{post.channel_id}>" if error.status == 403 else ""
            report_failure(
                self.log_throttle,
                ("pin", post.board),
                (error.status, error.code),
                f"could not pin the {post.board} leaderboard ({error.status} {error.text}){where}; "
                f"retrying in {delay:.0f}s",
                summary=f"could not pin the {post.board} leaderboard ({error.status} {error.code})",
                board=post.board,
                channel_id=post.channel_id,
                status=error.status,
                code=error.code,
            )
            return False
        post.pinned = True
        backoff.succeeded()
        report_recovery(
            self.log_throttle, ("pin", post.board), f"the {post.board} leaderboard is pinned now", board=post.board
        )
        return True

    def _on_http_error(self, board: Board, error: disnake.HTTPException) -> None:
        at_least = 0.0
        channel_id = self.posts[board].channel_id
        if isinstance(error, _ForeignChannel):
            reason = (
                f"that channel belongs to another server ({error.server}), and this server's standings are "
                f"never posted there: set {_setting_name(board)} to a channel of server {self.bot.config.guild_id}"
            )
            self._backoff[board].failed(at_least=MAX_BACKOFF_SECONDS)
            report_failure(
                self.log_throttle,
                ("refresh", board),
                "foreign channel",
                f"refusing to post the {board} leaderboard in <#{channel_id}>: {reason}",
                summary=f"refusing to post the {board} leaderboard in <#{channel_id}> (a channel of another server)",
                level="ERROR",
                board=board,
                channel_id=channel_id,
            )
            return
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
        delay, _ = self._backoff[board].failed(at_least=at_least)
        # One line per distinct failure (5xx, 429, 403... each by status and Discord code), then
        # a summary at most every few minutes while it lasts: never a line per attempt.
        report_failure(
            self.log_throttle,
            ("refresh", board),
            (type(error).__name__, error.status, error.code),
            f"could not update the {board} leaderboard in <#{channel_id}>: {reason}; retrying in {delay:.0f}s",
            summary=f"could not update the {board} leaderboard in <#{channel_id}> ({reason})",
            board=board,
            channel_id=channel_id,
            status=error.status,
            code=error.code,
        )

    # ------------------------------------------------------------------ listeners

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        self._verified.clear()  # after a re-IDENTIFY, deletions in the gap sent no event

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: disnake.RawMessageDeleteEvent) -> None:
        await self._deleted({payload.message_id})

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: disnake.RawBulkMessageDeleteEvent) -> None:
        await self._deleted(set(payload.message_ids))  # a moderator's purge

    async def _deleted(self, message_ids: set[int]) -> None:
        for post in self.posts.values():
            if post.message_id in message_ids:
                post.message_id = None
                now = asyncio.get_running_loop().time()
                age = now - self._posted_at.get(post.board, float("-inf"))
                streak = self._quick_deletes[post.board] = (
                    self._quick_deletes.get(post.board, 0) + 1 if age < QUICK_DELETE_SECONDS else 0
                )
                if streak <= 1:  # once (a moderator's purge): posted again at once
                    logger.warning("the {} leaderboard message was deleted; posting a new one", post.board)
                    await self.refresh(post.board, force=True)
                    continue
                delay = min(MAX_BACKOFF_SECONDS, REPOST_WAIT_SECONDS * 2.0 ** min(streak - 2, 20))
                self._repost_not_before[post.board] = now + delay
                if streak == 2:
                    logger.warning(
                        "the {} leaderboard was deleted {:.0f}s after it was posted: something (an auto-moderator?) "
                        "deletes messages in <#{}>. It is posted again after growing waits (up to {:.0f} min) while "
                        "this goes on; exempt the bot there, or choose another channel",
                        post.board,
                        age,
                        post.channel_id,
                        MAX_BACKOFF_SECONDS / 60,
                    )
                self._refresh_later(post.board, delay)

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: disnake.RawMessageUpdateEvent) -> None:
        for post in self.posts.values():
            if payload.message_id != post.message_id:
                continue
            data = payload.data
            suppressed = bool(int(data.get("flags") or 0) & disnake.MessageFlags.suppress_embeds.flag)
            unpinned = data.get("pinned") is False
            if suppressed or ("embeds" in data and not data["embeds"]):
                logger.warning("the {} leaderboard's embed was hidden; restoring it", post.board)
                post.embed_hash = None
            elif unpinned and post.pinned:
                logger.warning("the {} leaderboard was unpinned; pinning it again", post.board)
                post.pinned = False
            else:
                continue
            await self.refresh(post.board, force=True)

    @commands.Cog.listener()
    async def on_guild_channel_pins_update(
        self, channel: disnake.abc.GuildChannel | disnake.Thread, last_pin: object
    ) -> None:
        for post in self.posts.values():
            if channel.id == post.channel_id and post.message_id is not None:
                self._verified.discard(post.board)  # the next refresh checks it is still pinned
                if not post.pinned:  # a pin freed (Discord keeps 250 a channel): try now, not in minutes
                    self._pin_backoff[post.board].retry_now()
                await self.refresh(post.board, force=True)


def _setting_name(board: Board) -> str:
    return "CHAT_LB_CHANNEL_ID" if board == "messages" else "VC_LB_CHANNEL_ID"


class _ForeignChannel(disnake.HTTPException):
    """The board channel belongs to another server (or is not in a server at all)."""

    def __init__(self, channel_id: int, server: str) -> None:
        Exception.__init__(self, f"channel {channel_id} is in {server}")
        self.server = server
        self.status = 0
        self.code = 0
        self.text = "channel of another server"


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


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Scheduler(bot))
