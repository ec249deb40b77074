"""The web leaderboard (WEB_PORT): both boards of every tab, past seasons, member pages with their
activity chart, a JSON endpoint and live updates over Server-Sent Events, served by aiohttp from
the bot's own process with Jinja2 templates. The standings come from ``services.web``, which reads
``services.boards`` once per change for every viewer. With WEB_PUBLIC=false visitors sign in with
Discord (OAuth2 authorization code) and only the guild's members see the site."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import jinja2
from aiohttp import web
from disnake.ext import commands
from loguru import logger

from ..domain import BOARDS, PERIODS, UNKNOWN_MEMBER, Board, BoardLine, visible_name
from ..services.daily import chart_days, member_days
from ..services.web import (
    BOARD_LABELS,
    TAB_LABELS,
    TABS,
    Broadcast,
    MemberTokens,
    WebBoards,
    install_secret,
    sign,
    sse_event,
    unsign,
)
from ..ui.format import NAME_MAX_LEN, format_count, format_duration

if TYPE_CHECKING:
    from ..bot import LeaderboardBot

CHECK_GAP = 1.0  # seconds: at most one standings check per second, however many flushes
FALLBACK_CHECK = 15.0  # seconds: names, departures and privacy choices change without a flush
KEEPALIVE = 15.0  # seconds between comments on an idle live stream (finds viewers who left)
CHART_TTL = 60.0  # a member's chart is drawn at most once a minute
MEMBER_RECHECK = 600.0  # seconds: a signed-in visitor who left the server is let in at most this long after
SESSION_COOKIE = "lb_session"
STATE_COOKIE = "lb_state"
OPEN_PATHS = ("/auth/", "/static/", "/icon.png")  # what the sign-in page itself needs
SECURITY_HEADERS = {
    # Everything comes from the bot itself: no external fonts, scripts, images or trackers.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def package_files() -> Any:
    """The templates and static files shipped in the package (``leaderboard_bot/web``)."""
    return resources.files("leaderboard_bot").joinpath("web")


def shown_name(name: str) -> str:
    """The name as the pinned boards show it (one line, visible characters, 32 at most), without
    their markdown escapes: the page escapes HTML itself."""
    cleaned = visible_name(name) or UNKNOWN_MEMBER
    return cleaned if len(cleaned) <= NAME_MAX_LEN else cleaned[: NAME_MAX_LEN - 1].rstrip() + "…"


def value_text(board: Board, value: float) -> str:
    """``1,234 messages`` / ``1 message``, or voice as ``12h 05m`` (as on the boards)."""
    if board == "voice":
        return format_duration(value)
    count = max(int(value), 0)
    return f"{format_count(count)} {'message' if count == 1 else 'messages'}"


def line_text(board: Board, line: BoardLine) -> tuple[str, str]:
    return shown_name(line.name), value_text(board, line.value)


def _time_text(ts: float | None) -> str:
    if ts is None:
        return "not yet"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


class Web(commands.Cog):
    def __init__(self, bot: LeaderboardBot) -> None:
        self.bot = bot
        self.config = bot.config
        self.broadcast = Broadcast()
        self.secret = b""
        self.tokens: MemberTokens | None = None
        self.view: WebBoards | None = None
        self._runner: web.AppRunner | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._unsubscribe: list[Callable[[], None]] = []
        self._charts: dict[int, tuple[float, bytes | None]] = {}
        self._icon: tuple[str, bytes] | None = None
        self._members_checked: dict[int, tuple[float, bool]] = {}  # signed-in visitor -> (when, still here)
        files = package_files()
        self._static = {name: files.joinpath("static", name).read_bytes() for name in ("site.css", "live.js")}
        self.templates = jinja2.Environment(
            loader=jinja2.DictLoader(
                {
                    t.name: t.read_text(encoding="utf-8")
                    for t in files.joinpath("templates").iterdir()
                    if t.name.endswith(".html")
                }
            ),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = _time_text
        self.templates.filters["iso"] = _iso

    # ------------------------------------------------------------------ lifecycle

    async def cog_load(self) -> None:
        if await self.prepare():
            await self._start_server(self.config.web_host, self.config.web_port or 0)

    async def prepare(self) -> bool:
        """Everything but the listening socket: the secret, the views, the listeners. False when
        the site is off (no WEB_PORT) or cannot be served as configured (told in the log)."""
        config = self.config
        if config.web_port is None:
            return False
        oauth = config.web_client_id and config.web_client_secret and config.web_redirect_url
        if not config.web_public and not oauth:
            logger.error(
                "the web leaderboard is not started: WEB_PUBLIC=false needs WEB_CLIENT_ID, WEB_CLIENT_SECRET and "
                "WEB_REDIRECT_URL for the Discord sign-in (or set WEB_PUBLIC=true to show it to anyone)"
            )
            return False
        services = self.bot.services
        self.secret = await install_secret(services.storage, config.guild_id)
        self.tokens = MemberTokens(self.secret)
        self.view = WebBoards(services.boards, services.seasons, self.tokens, line_text)
        services.activity.add_flush_listener(self._on_flush)
        privacy = getattr(services, "privacy", None)  # /privacy hide and stop (services.privacy)
        if privacy is not None:
            self._unsubscribe.append(privacy.subscribe(self._on_privacy))
        self._unsubscribe.append(services.seasons.add_roll_listener(self._on_roll))
        return True

    def cog_unload(self) -> None:
        self._closed = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._watcher is not None:
            self._watcher.cancel()
        self.broadcast.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            task = asyncio.ensure_future(runner.cleanup())
            task.add_done_callback(lambda t: t.exception())

    def _on_flush(self, batch: object) -> None:
        if not self._closed:
            self._wake.set()

    def _on_privacy(self, user_id: int, before: frozenset[str], after: frozenset[str]) -> None:
        if self.view is not None:
            self.view.forget_past()
        self._charts.pop(user_id, None)
        self._wake.set()

    def _on_roll(self, finished: object, current: object) -> None:
        if self.view is not None:
            self.view.forget_past()
        self._wake.set()

    async def _watch(self) -> None:
        """Check the standings after each flush (at most once per CHECK_GAP) and push a change to
        every live viewer: one read and one JSON body per change, whatever the number of viewers."""
        assert self.view is not None
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FALLBACK_CHECK)
            self._wake.clear()
            try:
                await self.push_change()
            except Exception as error:
                logger.debug("web: reading the standings failed: {}", error)
            await asyncio.sleep(CHECK_GAP)

    async def push_change(self) -> bool:
        """Read the standings once; when they changed, send them to every live viewer."""
        assert self.view is not None
        snapshot = await self.view.check()
        if snapshot is None:
            return False
        self.broadcast.publish(sse_event("standings", snapshot.payload))
        return True

    async def _start_server(self, host: str, port: int) -> None:
        app = self.make_app()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            await runner.cleanup()
            logger.error("cannot serve the web leaderboard on {}:{} ({}); the bot runs without it", host, port,
                         error.strerror or error)  # fmt: skip
            return
        self._runner = runner
        self._watcher = asyncio.ensure_future(self._watch())
        logger.info(
            "web leaderboard on http://{}:{}/ ({})", host, port,
            "public" if self.config.web_public else "for the server's members, after signing in with Discord",
        )  # fmt: skip

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/boards", self._api_boards)
        app.router.add_get("/events", self._events)
        app.router.add_get("/member/{token}", self._member)
        app.router.add_get("/member/{token}/activity.png", self._member_chart)
        app.router.add_get("/icon.png", self._guild_icon)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_get("/auth/login", self._login)
        app.router.add_get("/auth/callback", self._callback)
        app.router.add_get("/auth/logout", self._logout)
        return app

    # ------------------------------------------------------------------ helpers

    def _render(self, template: str, status: int = 200, **values: Any) -> web.Response:
        guild = self.bot.get_guild(self.config.guild_id)
        body = self.templates.get_template(template).render(
            guild_name=guild.name if guild is not None else "Leaderboard",
            has_icon=guild is not None and guild.icon is not None,
            signed_in=not self.config.web_public,
            **values,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def _not_found(self) -> web.Response:
        return self._render("message.html", 404, title="Not found", text="There is nothing to show here.")

    def _listed_member(self, token: str) -> int | None:
        """The member behind a link, unless they chose to be hidden or not counted."""
        user_id = self.tokens.user(token) if self.tokens is not None else None
        if user_id is None:
            return None
        privacy = getattr(self.bot.services, "privacy", None)
        if privacy is not None and privacy.is_unlisted(user_id):
            return None
        membership = getattr(self.bot.services, "membership", None)
        if membership is not None and membership.known_departed(user_id):  # (only with HIDE_DEPARTED)
            return None  # left off the boards: no page of their own either
        return user_id

    def _now(self) -> float:
        return time.time()

    # ------------------------------------------------------------------ pages

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """WEB_PUBLIC=false: only visitors signed in as members of the guild get past this."""
        if not self.config.web_public and not request.path.startswith(OPEN_PATHS):
            session = unsign(self.secret, "session", request.cookies.get(SESSION_COOKIE), now=self._now())
            if session is None or not session.get("member") or not await self._still_member(session.get("user")):
                if request.path.startswith(("/api/", "/events")) or request.path.endswith(".png"):
                    return web.json_response({"error": "sign in with Discord first"}, status=401)
                return self._render("signin.html", 401, title="Sign in")
        response = await handler(request)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    async def _still_member(self, user: object) -> bool:
        """Whether a signed-in visitor is still in the server: asked through the bot's member lookup
        (its cache, then Discord) at most every MEMBER_RECHECK seconds. Only Discord's "Unknown
        Member" turns them away; a lookup that fails lets them in."""
        lookup = getattr(getattr(self.bot.services, "membership", None), "lookup", None)
        if lookup is None or not isinstance(user, str) or not user.isdecimal():
            return True
        user_id, now = int(user), self._now()
        known = self._members_checked.get(user_id)
        if known is not None and now - known[0] < MEMBER_RECHECK:
            return known[1]
        try:
            answer = await asyncio.wait_for(lookup.is_member(user_id), 3.0)
        except Exception as error:
            logger.debug("web: could not tell whether a signed-in visitor is still in the server ({!r})", error)
            answer = None
        here = answer is not False
        self._members_checked[user_id] = (now, here)
        while len(self._members_checked) > 10_000:
            self._members_checked.pop(next(iter(self._members_checked)))
        return here

    async def _index(self, request: web.Request) -> web.Response:
        assert self.view is not None
        period = request.query.get("period", "season")
        if period not in PERIODS:
            return self._not_found()
        snapshot = await self.view.snapshot()
        past = await self.view.past_seasons()
        return self._render(
            "index.html",
            title="Leaderboard",
            period=period,
            tabs=[(p, TAB_LABELS[p]) for p in TABS],
            boards=[(board, BOARD_LABELS[board], snapshot.tabs[period][board]) for board in BOARDS],
            snapshot=snapshot,
            past=[(s, [(b, BOARD_LABELS[b], s.boards[b]) for b in BOARDS]) for s in past],
        )

    async def _api_boards(self, request: web.Request) -> web.Response:
        assert self.view is not None
        period = request.query.get("period", "season")
        if period not in PERIODS:
            return web.json_response({"error": f"period must be one of {', '.join(TABS)}"}, status=400)
        snapshot = await self.view.snapshot()
        return web.json_response(snapshot.tab(period))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the current standings, then each change (the same bytes for every
        viewer), and a comment every KEEPALIVE seconds so a viewer who left is noticed."""
        assert self.view is not None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        queue = self.broadcast.subscribe()
        try:
            current = self.view.current
            if current is not None:
                await response.write(sse_event("standings", current.payload))
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    event = b": keep-alive\n\n"
                if not event:  # the bot is stopping
                    break
                await response.write(event)
        except (ConnectionError, RuntimeError):
            pass  # the viewer went away
        finally:
            self.broadcast.unsubscribe(queue)
        return response

    async def _member(self, request: web.Request) -> web.Response:
        user_id = self._listed_member(request.match_info["token"])
        if user_id is None:
            return self._not_found()
        services = self.bot.services
        standing = await services.rankings.standing(user_id)
        name = (await services.names.resolve([user_id]))[user_id]
        return self._render(
            "member.html",
            title=shown_name(name),
            name=shown_name(name),
            token=request.match_info["token"],
            season=standing.season,
            messages=value_text("messages", standing.messages),
            voice=value_text("voice", standing.voice_seconds),
            message_rank=standing.message_rank,
            voice_rank=standing.voice_rank,
            chart=_charts_module() is not None,
        )

    async def _member_chart(self, request: web.Request) -> web.Response:
        user_id = self._listed_member(request.match_info["token"])
        charts = _charts_module()
        if user_id is None or charts is None:
            return self._not_found()
        cached = self._charts.get(user_id)
        if cached is not None and self._now() - cached[0] < CHART_TTL:
            png = cached[1]
        else:
            png = await self._draw_chart(user_id, charts)
            self._charts[user_id] = (self._now(), png)
            while len(self._charts) > 256:
                self._charts.pop(next(iter(self._charts)))
        if png is None:
            return self._not_found()
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "max-age=60"})

    async def _draw_chart(self, user_id: int, charts: Any) -> bytes | None:
        """The member's last 30 days drawn off the event loop (on the charts thread of /stats when
        that extension is loaded, so drawings never run two at a time)."""
        services = self.bot.services
        activity = services.activity
        days = chart_days(activity.calendar.day_of(activity.clock()))
        series = await member_days(services.storage, activity, user_id, days)
        if series is None:
            return None
        draw = partial(charts.activity_chart, series.days, series.messages, series.voice_seconds,
                       caption=f"last {len(days)} days · {activity.calendar.zone_name} days")  # fmt: skip
        worker = getattr(self.bot.get_cog("Leaderboards"), "chart_worker", None)
        if worker is not None:
            png: bytes = await worker.run(draw)
            return png
        return await asyncio.to_thread(draw)

    async def _guild_icon(self, request: web.Request) -> web.Response:
        """The server's icon, fetched from Discord once and served by the bot (no external image)."""
        guild = self.bot.get_guild(self.config.guild_id)
        if guild is None or guild.icon is None:
            return self._not_found()
        key = guild.icon.key
        if self._icon is None or self._icon[0] != key:
            try:
                self._icon = (key, await guild.icon.with_static_format("png").with_size(128).read())
            except Exception as error:
                logger.debug("web: the server icon could not be read: {}", error)
                return self._not_found()
        return web.Response(body=self._icon[1], content_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            return self._not_found()
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return web.Response(body=body, content_type=kind, headers={"Cache-Control": "max-age=300"})

    # ------------------------------------------------------------------ sign-in with Discord

    def _cookie_flags(self) -> dict[str, Any]:
        secure = bool(self.config.web_redirect_url and self.config.web_redirect_url.startswith("https://"))
        return {"httponly": True, "samesite": "Lax", "secure": secure, "path": "/"}

    async def _login(self, request: web.Request) -> web.Response:
        if self.config.web_public:
            raise web.HTTPFound("/")
        state = secrets.token_urlsafe(24)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.config.web_client_id,
                "scope": "identify guilds",
                "state": state,
                "redirect_uri": self.config.web_redirect_url,
                "prompt": "none",
            }
        )
        response = _redirect(f"{self.config.web_oauth_base}/oauth2/authorize?{query}")
        cookie = sign(self.secret, "state", {"state": state}, now=self._now(), seconds=600)
        response.set_cookie(STATE_COOKIE, cookie, max_age=600, **self._cookie_flags())
        return response

    async def _callback(self, request: web.Request) -> web.Response:
        if self.config.web_public:
            raise web.HTTPFound("/")
        expected = unsign(self.secret, "state", request.cookies.get(STATE_COOKIE), now=self._now())
        state, code = request.query.get("state", ""), request.query.get("code", "")
        if (
            expected is None
            or not code
            or not secrets.compare_digest(str(expected.get("state")).encode(), state.encode())
        ):
            text = "That sign-in link expired or was not started here. Please sign in again."
            return self._render("message.html", 400, title="Sign-in failed", text=text)
        try:
            member = await self._member_id(code)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
            logger.warning("web sign-in: Discord did not answer as expected ({})", error)
            return self._render("message.html", 502, title="Sign-in failed",
                                text="Discord did not confirm the sign-in. Please try again.")  # fmt: skip
        if member is None:
            return self._render("message.html", 403, title="Members only",
                                text="This leaderboard is only shown to members of the server.")  # fmt: skip
        response = _redirect("/")
        self._members_checked[int(member)] = (self._now(), True)
        cookie = sign(self.secret, "session", {"member": True, "user": member}, now=self._now())
        response.set_cookie(SESSION_COOKIE, cookie, max_age=7 * 86400, **self._cookie_flags())
        response.del_cookie(STATE_COOKIE, path="/")
        return response

    async def _member_id(self, code: str) -> str | None:
        """Trade the code for a token and ask Discord who the visitor is and whether they are in
        the guild: their id when they are (kept in the signed cookie, never shown), else None."""
        base = self.config.web_oauth_base
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.config.web_redirect_url or "",
                "client_id": self.config.web_client_id or "",
                "client_secret": self.config.web_client_secret or "",
            }
            async with session.post(f"{base}/api/v10/oauth2/token", data=form) as reply:
                reply.raise_for_status()
                token = (await reply.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{base}/api/v10/users/@me", headers=headers) as reply:
                reply.raise_for_status()
                user = str((await reply.json())["id"])
            # 200 is the most servers an account can be in: one page holds them all.
            guilds_url = f"{base}/api/v10/users/@me/guilds"
            async with session.get(guilds_url, headers=headers, params={"limit": "200"}) as reply:
                reply.raise_for_status()
                guilds = await reply.json()
        if not user.isdecimal():
            raise ValueError("Discord sent a user without an id")
        wanted = str(self.config.guild_id)
        return user if any(isinstance(g, dict) and str(g.get("id")) == wanted for g in guilds) else None

    async def _logout(self, request: web.Request) -> web.Response:
        response = self._render("message.html", title="Signed out", text="You are signed out.")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _charts_module() -> Any:
    """``ui.charts`` when it can be imported (matplotlib installed), else None: no chart."""
    try:
        from ..ui import charts
    except ImportError:
        return None
    return charts


def setup(bot: LeaderboardBot) -> None:
    bot.add_cog(Web(bot))
