"""The web extension over HTTP (aiohttp's test server, real services): the page and its tabs, the
data endpoint, member pages and their chart, 404 for hidden members, no user id on any page, the
live stream, the packaged templates, and the Discord sign-in against a fake OAuth2 server."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from loguru import logger

from leaderboard_bot.config import load_settings
from leaderboard_bot.db import Storage
from leaderboard_bot.exts.web import MEMBER_RECHECK, SESSION_COOKIE, Web, package_files
from leaderboard_bot.services.container import Services, build_services
from tests.factories import MIDNIGHT, FakeClock, FakeNameSource
from tests.services.test_membership import FakeLookup

G = 5151
ALI, BOB, CAT = 111111111111111111, 222222222222222222, 333333333333333333
IDS = (str(ALI), str(BOB), str(CAT))
FORMS = web.AppKey("forms", list[dict[str, Any]])
MEMBER = 777777777777777777  # who signs in


async def open_services(tmp_path: Path, **env: str) -> Services:
    url = f"sqlite:///{tmp_path}/web.db"
    source = FakeNameSource(live={ALI: ("Ali", "ali"), BOB: ("<b>Bob</b>", "bob"), CAT: ("Cat", "cat")})
    settings = load_settings(
        {"BOT_TOKEN": "x", "GUILD_ID": str(G), "DATABASE_URL": url, "SPAM_LIMIT": "off", "WEB_PORT": "8080", **env}
    )
    services = build_services(settings, Storage(url), source, clock=FakeClock(MIDNIGHT + 3600))
    await services.open()
    return services


async def messages(services: Services, counts: dict[int, int]) -> None:
    for user_id, n in counts.items():
        for _ in range(n):
            services.activity.record_message(user_id)
    assert await services.seasons.flush()


def fake_bot(services: Services, config: Any) -> Any:
    guild = SimpleNamespace(name="Purple Place", icon=None)
    return SimpleNamespace(
        config=config, services=services, get_guild=lambda guild_id: guild, get_cog=lambda name: None
    )


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[Web, TestClient[Any, Any], Services]]:
    services = await open_services(tmp_path, WEB_PUBLIC="true")
    await messages(services, {ALI: 3, BOB: 5, CAT: 1})
    config = load_settings({"BOT_TOKEN": "x", "GUILD_ID": str(G), "WEB_PORT": "8080", "WEB_PUBLIC": "true"})
    cog = Web(fake_bot(services, config))
    assert await cog.prepare()
    client: TestClient[Any, Any] = TestClient(TestServer(cog.make_app()))
    await client.start_server()
    try:
        yield cog, client, services
    finally:
        cog.cog_unload()
        await client.close()
        await services.storage.close()


def member_links(html: str) -> list[str]:
    return re.findall(r'href="/member/([0-9a-f]+)"', html)


def test_the_templates_and_static_files_ship_with_the_package() -> None:
    files = package_files()
    names = {f.name for f in files.joinpath("templates").iterdir()}
    assert {"base.html", "index.html", "member.html", "board.html", "message.html", "signin.html"} <= names
    assert "#571173" in files.joinpath("static", "site.css").read_text()
    assert "EventSource" in files.joinpath("static", "live.js").read_text()


async def test_the_page_shows_both_boards_in_the_owner_look_without_ids_or_outside_resources(
    site: tuple[Web, TestClient[Any, Any], Services],
) -> None:
    _cog, client, _services = site
    reply = await client.get("/")
    assert reply.status == 200
    html = await reply.text()
    assert "Message Leaderboard" in html and "Voice Leaderboard" in html and "Purple Place" in html
    assert html.index("&lt;b&gt;Bob&lt;/b&gt;") < html.index("Ali") < html.index("Cat")  # escaped, ranked
    assert "<b>Bob</b>" not in html
    assert "5 messages" in html and "1 message<" in html
    assert not any(i in html for i in IDS)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from elsewhere
    assert 'aria-current="page"' in html and 'href="/?period=week"' in html
    assert "default-src 'self'" in reply.headers["Content-Security-Policy"]
    css = await client.get("/static/site.css")
    assert css.status == 200 and "#571173" in await css.text()
    assert (await client.get("/static/nothing.js")).status == 404


async def test_each_tab_and_the_data_endpoint_serve_the_same_standings(
    site: tuple[Web, TestClient[Any, Any], Services],
) -> None:
    _cog, client, _services = site
    html = await (await client.get("/?period=today")).text()
    assert re.search(r'href="/\?period=today" class="tab" aria-current="page"', html)
    data = await (await client.get("/api/boards?period=week")).json()
    assert data["period"] == "week"
    assert [(e["rank"], e["name"], e["value"]) for e in data["boards"]["messages"]] == [
        (1, "<b>Bob</b>", "5 messages"), (2, "Ali", "3 messages"), (3, "Cat", "1 message"),
    ]  # fmt: skip
    assert data["boards"]["voice"] == []
    assert not any(i in json.dumps(data) for i in IDS)
    assert (await client.get("/api/boards?period=decade")).status == 400
    assert (await client.get("/?period=decade")).status == 404


async def test_a_member_page_shows_their_season_and_chart_and_hidden_members_are_not_found(
    site: tuple[Web, TestClient[Any, Any], Services],
) -> None:
    cog, client, services = site
    html = await (await client.get("/")).text()
    links = member_links(html)
    assert len(links) == 3  # the messages board (nobody has voice time)
    first = links[0]
    page = await client.get(f"/member/{first}")
    assert page.status == 200
    text = await page.text()
    assert "&lt;b&gt;Bob&lt;/b&gt;" in text and "5 messages" in text and "#1" in text
    assert not any(i in text for i in IDS)
    chart = await client.get(f"/member/{first}/activity.png")
    assert chart.status == 200 and chart.content_type == "image/png"
    assert (await chart.read()).startswith(b"\x89PNG")
    assert (await client.get("/member/0123456789abcdef0123")).status == 404
    await services.privacy.set_flag(BOB, "hidden", True)
    assert (await client.get(f"/member/{first}")).status == 404
    assert (await client.get(f"/member/{first}/activity.png")).status == 404
    await cog.push_change()
    assert "Bob" not in await (await client.get("/")).text()


async def test_with_hide_departed_a_member_who_left_has_no_page_either(
    site: tuple[Web, TestClient[Any, Any], Services],
) -> None:
    _cog, client, services = site
    first = member_links(await (await client.get("/")).text())[0]  # Bob's
    services.membership._answers[BOB] = False  # a lookup found he left
    assert (await client.get(f"/member/{first}")).status == 200  # HIDE_DEPARTED off: shown
    services.settings.update(hide_departed=True)
    assert (await client.get(f"/member/{first}")).status == 404
    assert (await client.get(f"/member/{first}/activity.png")).status == 404


async def test_past_seasons_are_listed_with_their_final_standings(
    site: tuple[Web, TestClient[Any, Any], Services],
) -> None:
    _cog, client, services = site
    assert await services.seasons.roll(reason="test") is not None
    html = await (await client.get("/")).text()
    assert "Past seasons" in html and "Season 1" in html and "Season 2" in html


async def test_the_live_stream_sends_the_standings_then_each_change(
    site: tuple[Web, TestClient[Any, Any], Services],
) -> None:
    cog, client, services = site
    await cog.push_change()
    stream = await client.get("/events")
    assert stream.headers["Content-Type"] == "text/event-stream"

    async def next_event() -> dict[str, Any]:
        lines = []
        while (line := await stream.content.readline()) != b"\n":
            lines.append(line.decode())
        assert lines[0] == "event: standings\n"
        result: dict[str, Any] = json.loads(lines[1].removeprefix("data: "))
        return result

    first = await next_event()
    assert [e["name"] for e in first["tabs"]["season"]["messages"]] == ["<b>Bob</b>", "Ali", "Cat"]
    assert len(cog.broadcast) == 1
    await messages(services, {CAT: 10})
    assert await cog.push_change()
    assert not await cog.push_change()  # nothing new: nothing sent
    second = await next_event()
    assert second["version"] > first["version"]
    assert second["tabs"]["season"]["messages"][0]["name"] == "Cat"
    cog.broadcast.close()  # the bot is stopping: every stream ends, none holds the stop up
    assert await asyncio.wait_for(stream.content.read(), 5) == b""
    assert len(cog.broadcast) == 0


async def test_a_flush_wakes_the_watcher_which_pushes_the_change_once(
    site: tuple[Web, TestClient[Any, Any], Services],
) -> None:
    cog, _client, services = site
    await cog.push_change()
    queue = cog.broadcast.subscribe()
    watcher = asyncio.ensure_future(cog._watch())
    try:
        await messages(services, {ALI: 10})  # the flush listener wakes the watcher
        event = await asyncio.wait_for(queue.get(), 5)
        names = [e["name"] for e in json.loads(event.split(b"data: ", 1)[1])["tabs"]["today"]["messages"]]
        assert names[0] == "Ali"
        await asyncio.sleep(1.5)
        assert queue.empty()  # nothing changed since: nothing sent
    finally:
        watcher.cancel()


async def test_the_site_stays_off_without_a_port_and_refuses_to_start_unprotected(tmp_path: Path) -> None:
    services = await open_services(tmp_path)
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="ERROR")
    try:
        off = load_settings({"BOT_TOKEN": "x", "GUILD_ID": str(G)})
        assert not await Web(fake_bot(services, off)).prepare()
        private = load_settings({"BOT_TOKEN": "x", "GUILD_ID": str(G), "WEB_PORT": "8080"})
        assert not await Web(fake_bot(services, private)).prepare()
        assert any("WEB_CLIENT_ID" in line for line in seen)
    finally:
        logger.remove(sink)
        await services.storage.close()


# --------------------------------------------------------------------------- sign-in


def fake_discord(guild_id: int) -> web.Application:
    """Discord's OAuth2 token endpoint and /users/@me/guilds, as far as the sign-in uses them."""
    app = web.Application()
    app[FORMS] = []

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        app[FORMS].append(form)
        if form.get("code") not in ("member", "stranger"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response({"access_token": f"token-{form['code']}", "token_type": "Bearer"})

    async def guilds(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        assert request.query["limit"] == "200"
        ids = [str(guild_id), "42"] if auth == "Bearer token-member" else ["42"]
        return web.json_response([{"id": i, "name": "x"} for i in ids])

    async def me(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        return web.json_response({"id": str(MEMBER) if auth == "Bearer token-member" else "4242", "username": "x"})

    app.router.add_post("/api/v10/oauth2/token", token)
    app.router.add_get("/api/v10/users/@me", me)
    app.router.add_get("/api/v10/users/@me/guilds", guilds)
    return app


@pytest.fixture
async def private_site(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], web.Application, Web]]:
    discord_app = fake_discord(G)
    discord = TestServer(discord_app)
    await discord.start_server()
    services = await open_services(tmp_path)
    await messages(services, {ALI: 2})
    config = load_settings(
        {
            "BOT_TOKEN": "x",
            "GUILD_ID": str(G),
            "WEB_PORT": "8080",
            "WEB_OAUTH_BASE": str(discord.make_url("")),
            "WEB_CLIENT_ID": "1234",
            "WEB_CLIENT_SECRET": "shh",
            "WEB_REDIRECT_URL": "http://127.0.0.1/auth/callback",
        }
    )
    cog = Web(fake_bot(services, config))
    assert await cog.prepare()
    client: TestClient[Any, Any] = TestClient(TestServer(cog.make_app()))
    await client.start_server()
    try:
        yield client, discord_app, cog
    finally:
        cog.cog_unload()
        await client.close()
        await discord.close()
        await services.storage.close()


async def start_sign_in(client: TestClient[Any, Any]) -> str:
    login = await client.get("/auth/login", allow_redirects=False)
    assert login.status == 302
    target = urlsplit(login.headers["Location"])
    assert target.path == "/oauth2/authorize"
    query = parse_qs(target.query)
    assert query["scope"] == ["identify guilds"] and query["response_type"] == ["code"]
    assert query["client_id"] == ["1234"] and query["redirect_uri"] == ["http://127.0.0.1/auth/callback"]
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    return query["state"][0]


async def test_a_member_signs_in_with_discord_and_then_sees_the_page(
    private_site: tuple[TestClient[Any, Any], web.Application, Web],
) -> None:
    client, discord, _cog = private_site
    gate = await client.get("/", allow_redirects=False)
    assert gate.status == 401 and "Sign in with Discord" in await gate.text()
    assert (await client.get("/api/boards")).status == 401
    assert (await client.get("/events")).status == 401
    assert (await client.get("/static/site.css")).status == 200  # the sign-in page has its look
    assert (await client.get("/icon.png")).status == 404  # open too (this fake server has no icon)
    state = await start_sign_in(client)
    back = await client.get(f"/auth/callback?code=member&state={state}", allow_redirects=False)
    assert back.status == 302 and back.headers["Location"] == "/"
    session = back.headers.getall("Set-Cookie")
    assert any(c.startswith(SESSION_COOKIE) and "HttpOnly" in c and "SameSite=Lax" in c for c in session)
    assert discord[FORMS][-1] == {
        "grant_type": "authorization_code", "code": "member", "redirect_uri": "http://127.0.0.1/auth/callback",
        "client_id": "1234", "client_secret": "shh",
    }  # fmt: skip
    page = await client.get("/")
    assert page.status == 200 and "Ali" in await page.text()
    assert (await client.get("/api/boards")).status == 200
    await client.get("/auth/logout")
    assert (await client.get("/", allow_redirects=False)).status == 401


async def test_someone_outside_the_server_or_with_a_forged_state_is_not_let_in(
    private_site: tuple[TestClient[Any, Any], web.Application, Web],
) -> None:
    client, _discord, _cog = private_site
    state = await start_sign_in(client)
    stranger = await client.get(f"/auth/callback?code=stranger&state={state}", allow_redirects=False)
    assert stranger.status == 403 and "only shown to members" in await stranger.text()
    assert (await client.get("/", allow_redirects=False)).status == 401
    forged = await client.get("/auth/callback?code=member&state=made-up", allow_redirects=False)
    assert forged.status == 400
    state = await start_sign_in(client)
    refused = await client.get(f"/auth/callback?code=expired&state={state}", allow_redirects=False)
    assert refused.status == 502
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: "eyJtZW1iZXIiOnRydWV9.forged"})
    assert (await client.get("/", allow_redirects=False)).status == 401


async def test_a_signed_in_member_who_leaves_the_server_is_turned_away_at_the_next_check(
    private_site: tuple[TestClient[Any, Any], web.Application, Web],
) -> None:
    client, _discord, cog = private_site
    lookup = FakeLookup({MEMBER: True})
    cog.bot.services.membership.lookup = lookup
    state = await start_sign_in(client)
    await client.get(f"/auth/callback?code=member&state={state}", allow_redirects=False)
    assert str(MEMBER) not in await (await client.get("/")).text()  # signed in; the id is never shown
    assert lookup.calls == []  # just signed in: not asked again yet
    lookup.answers[MEMBER] = False  # they left
    assert (await client.get("/")).status == 200  # until the next check
    later = time.time() + MEMBER_RECHECK + 1
    cog._now = lambda: later  # type: ignore[method-assign]
    assert (await client.get("/", allow_redirects=False)).status == 401
    assert lookup.calls == [MEMBER]
    lookup.answers[MEMBER] = RuntimeError("Discord is down")
    cog._members_checked.clear()
    assert (await client.get("/")).status == 200  # a failing lookup lets them in


# --------------------------------------------------------------------------- accessibility


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_colours_the_page_uses_for_text_have_enough_contrast() -> None:
    css = package_files().joinpath("static", "site.css").read_text()
    colours = dict(re.findall(r"--(\w+): (#[0-9a-fA-F]{6});", css))
    assert colours["purple"].lower() == "#571173"
    pairs = [
        ("text", "bg"), ("text", "card"), ("muted", "card"), ("muted", "bg"), ("purple", "card"), ("purple", "bg"),
    ]  # fmt: skip
    for fore, back in pairs:
        assert contrast(colours[fore], colours[back]) >= 4.5, (fore, back)  # WCAG AA for body text
    assert contrast("#ffffff", colours["purple"]) >= 4.5  # the header and the selected tab


class _Outline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


async def test_the_page_has_a_language_labels_one_heading_and_named_regions(
    site: tuple[Web, TestClient[Any, Any], Services],
) -> None:
    _cog, client, services = site
    assert await services.seasons.roll(reason="test") is not None  # a past season too
    for path in ("/", "/?period=month"):
        outline = _Outline()
        outline.feed(await (await client.get(path)).text())
        tags = outline.tags
        assert ("html", {"lang": "en"}) in tags
        assert any(t == "meta" and a.get("name") == "viewport" for t, a in tags)
        assert [t for t, _ in tags].count("h1") == 1
        ids = {a["id"] for _, a in tags if a.get("id")}
        labelled = [a["aria-labelledby"] for t, a in tags if t == "section"]
        assert labelled and all(label in ids for label in labelled)  # every region is named by its heading
        assert len(labelled) == len(set(labelled))
        assert all("alt" in a for t, a in tags if t == "img")
        assert any(t == "nav" and a.get("aria-label") for t, a in tags)
        assert sum(1 for t, a in tags if t == "a" and a.get("aria-current") == "page") == 1
        assert any(t == "a" and a.get("href") == "#main" for t, a in tags)  # skip link
        assert any(a.get("aria-live") for _, a in tags)
