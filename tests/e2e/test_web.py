"""The web leaderboard in a real browser (Debian's headless Chromium driven by Playwright) against
the real bot connected to fakecord: the page lists the same top 10 as the pinned board, a message
sent in the fake Discord shows up on the open page without a reload, the member page draws its
chart, a member who chose /privacy hide is absent (and their page is not found), and with
SCREENSHOT_DIR set the main page and a member page are saved at a desktop and a phone size."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .harness import World
from .test_departed import board_lines

CHROMIUM = "/usr/bin/chromium"
try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # the test extra is not installed
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(async_playwright is None, reason="playwright is not installed (pip install -e '.[test]')"),
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)",
    ),
]

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
EXTRA = 10  # members beyond alice, bob and carol: more than a board of ten


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert async_playwright is not None
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


def board_entries(w: World, channel: int) -> list[tuple[str, str, str]]:
    """The pinned board's lines: "<arrow> **#1** Ali — **3 messages**" -> ("#1", "Ali", "3 messages")."""
    out = []
    for line in board_lines(w, channel):
        if "**#" not in line or line.startswith("Your rank"):
            continue
        rank = line.split("**", 2)[1]
        name, value = line.split("** ", 1)[1].rsplit(" — ", 1)
        out.append((rank, name, value.strip("*")))
    return out


async def page_entries(page: Page, board: str = "messages") -> list[tuple[str, str, str]]:
    rows: list[list[str]] = await page.eval_on_selector_all(
        f'ol[data-board="{board}"] li',
        "items => items.map(li => [li.querySelector('.rank').textContent, li.querySelector('.name').textContent,"
        " li.querySelector('.value').textContent])",
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def start(w: World) -> str:
    port = free_port()
    await w.start_bot(UPDATE_INTERVAL="1s", SPAM_LIMIT="off", WEB_PORT=str(port), WEB_PUBLIC="true")
    await w.wait_log("web leaderboard on http://")
    return f"http://127.0.0.1:{port}"


async def send(w: World, user: int, count: int) -> None:
    for i in range(count):
        await w.fc.send_message(w.guild, w.general, user, f"hello {i}")


async def eventually(page: Page, check: Any, what: str, timeout: float = 20.0) -> None:
    async def ready() -> bool:
        return bool(await check())

    deadline = 0.0
    while not await ready():
        deadline += 0.2
        if deadline > timeout:
            raise AssertionError(f"timed out waiting for {what}: the page shows {await page_entries(page)}")
        await page.wait_for_timeout(200)


async def test_the_page_matches_the_pinned_board_updates_live_and_draws_a_member_chart(
    world: World, browser: Browser
) -> None:
    w, fc = world, world.fc
    extra = []
    for i in range(EXTRA):
        user = fc.add_user(f"member{i:02d}", global_name=f"Member {i:02d}")
        fc.add_member(w.guild, user)
        extra.append(user)
    site = await start(w)
    await send(w, w.alice, 15)
    await send(w, w.bob, 14)
    await send(w, w.carol, 13)
    for i, user in enumerate(extra):
        await send(w, user, 12 - i)  # 12 .. 3: the last ones are below the top ten
    await fc.wait_for(
        lambda: len(board_entries(w, w.chat_lb)) == 10 and board_entries(w, w.chat_lb)[-1][2] == "6 messages",
        20,
        "the pinned board with its ten lines",
    )
    pinned = board_entries(w, w.chat_lb)
    assert pinned[0] == ("#1", "Ali", "15 messages")

    page = await browser.new_page(viewport=DESKTOP)
    reply = await page.goto(site + "/")
    assert reply is not None and reply.status == 200
    await eventually(page, lambda: _same(page, pinned), "the page to list the pinned board's ten")
    html = await page.content()
    assert not any(str(user) in html for user in (w.alice, w.bob, w.carol, *extra))
    assert await page.locator("h1").first.inner_text() != ""
    await page.wait_for_function("document.body.getAttribute('data-live') === '1'", timeout=10_000)
    await page.evaluate("window.notReloaded = true")

    last = extra[-1]  # 3 messages, not on the board: 20 more make them first
    await send(w, last, 20)

    async def moved_up() -> bool:
        entries = await page_entries(page)
        return bool(entries) and entries[0] == ("#1", f"Member {EXTRA - 1:02d}", "23 messages")

    await eventually(page, moved_up, "the new leader on the open page")
    assert await page.evaluate("window.notReloaded === true")  # updated in place, not reloaded
    assert "not yet" not in await page.locator("#changed").inner_text()

    await page.get_by_role("link", name="Ali", exact=True).first.click()
    await page.wait_for_url("**/member/*")
    member_url = page.url
    assert str(w.alice) not in member_url and str(w.alice) not in await page.content()
    assert await page.locator("h1").inner_text() == "Ali"
    await page.wait_for_function(
        "() => { const c = document.getElementById('chart'); return c && c.complete && c.naturalWidth > 0 }",
        timeout=30_000,
    )
    assert await page.evaluate("document.getElementById('chart').naturalWidth") == 800

    await page.keyboard.press("Tab")  # the first stop is the skip link: the page is keyboard-usable
    assert await page.evaluate("document.activeElement.textContent") == "Skip to the leaderboard"

    directory = os.environ.get("SCREENSHOT_DIR")
    if directory:
        await screenshots(browser, Path(directory), site, member_url)


async def _same(page: Page, pinned: list[tuple[str, str, str]]) -> bool:
    return await page_entries(page) == pinned


async def screenshots(browser: Browser, directory: Path, site: str, member_url: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for label, viewport, scale in (("desktop", DESKTOP, 1), ("phone", PHONE, 2)):
        context = await browser.new_context(viewport=viewport, device_scale_factor=scale, is_mobile=label == "phone")
        page = await context.new_page()
        for name, url in (("leaderboard", site + "/"), ("member", member_url)):
            await page.goto(url)
            if name == "member":
                await page.wait_for_function("document.getElementById('chart').naturalWidth > 0", timeout=30_000)
            path = directory / f"web-{name}-{label}.png"
            await page.screenshot(path=str(path), full_page=True)
            assert path.stat().st_size > 1000
        await context.close()


async def test_a_hidden_member_is_absent_and_their_page_is_not_found(world: World, browser: Browser) -> None:
    w, fc = world, world.fc
    site = await start(w)
    await fc.wait_for_commands("privacy", guild=w.guild)
    await send(w, w.alice, 3)
    await send(w, w.bob, 2)
    await send(w, w.carol, 1)
    page = await browser.new_page(viewport=PHONE)
    await page.goto(site + "/")

    async def names() -> list[str]:
        return [name for _rank, name, _value in await page_entries(page)]

    async def everyone() -> bool:
        return await names() == ["Ali", "Bobby", "carol"]

    await eventually(page, everyone, "all three on the page")
    alice_page = site + (await page.get_by_role("link", name="Ali", exact=True).first.get_attribute("href") or "")
    await page.wait_for_function("document.body.getAttribute('data-live') === '1'", timeout=10_000)
    answer = await fc.slash(w.guild, w.general, w.alice, "privacy hide")
    assert answer.ephemeral

    async def without_ali() -> bool:
        return await names() == ["Bobby", "carol"]

    await eventually(page, without_ali, "Ali off the open page")
    await page.reload()
    assert await names() == ["Bobby", "carol"]
    assert "Ali" not in await page.locator("main").inner_text()
    gone = await page.goto(alice_page)
    assert gone is not None and gone.status == 404
    api = await page.goto(site + "/api/boards?period=all-time")
    assert api is not None and "Ali" not in await api.text()

    await page.goto(site + "/")  # a live viewer connected while the bot stops: it does not hold the stop up
    await page.wait_for_function("document.body.getAttribute('data-live') === '1'", timeout=10_000)
    started = time.monotonic()
    await w.stop_all()
    assert time.monotonic() - started < 10
    assert w.bots[0].returncode == 0


async def fake_discord_oauth(guild: int, user: int) -> tuple[Any, str]:
    """Discord's OAuth2 pages as far as the sign-in uses them: the authorize page approves at once
    (as for someone who approved before) and sends the browser back with a code; the token and
    guilds endpoints answer for that code. Returns (runner, base URL)."""
    from aiohttp import web

    async def authorize(request: web.Request) -> web.Response:
        query = request.query
        assert query["scope"] == "identify guilds" and query["response_type"] == "code"
        target = f"{query['redirect_uri']}?code=member-code&state={query['state']}"
        return web.Response(status=302, headers={"Location": target})

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["code"] == "member-code" and form["client_secret"] == "e2e-secret"
        return web.json_response({"access_token": "member-token", "token_type": "Bearer"})

    async def guilds(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer member-token"
        return web.json_response([{"id": str(guild), "name": "Test Guild"}])

    async def me(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer member-token"
        return web.json_response({"id": str(user), "username": "alice"})

    app = web.Application()
    app.router.add_get("/oauth2/authorize", authorize)
    app.router.add_post("/api/v10/oauth2/token", token)
    app.router.add_get("/api/v10/users/@me/guilds", guilds)
    app.router.add_get("/api/v10/users/@me", me)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_a_member_signs_in_with_discord_in_the_browser(world: World, browser: Browser) -> None:
    w = world
    runner, oauth = await fake_discord_oauth(w.guild, w.alice)
    try:
        port = free_port()
        site = f"http://127.0.0.1:{port}"
        await w.start_bot(
            UPDATE_INTERVAL="1s", SPAM_LIMIT="off", WEB_PORT=str(port), WEB_OAUTH_BASE=oauth,
            WEB_CLIENT_ID="1234", WEB_CLIENT_SECRET="e2e-secret", WEB_REDIRECT_URL=f"{site}/auth/callback",
        )  # fmt: skip
        await w.wait_log("web leaderboard on http://")
        assert "e2e-secret" not in w.log_text()
        await send(w, w.alice, 2)
        page = await browser.new_page(viewport=DESKTOP)
        gate = await page.goto(site + "/")
        assert gate is not None and gate.status == 401
        assert "Ali" not in await page.locator("main").inner_text()
        await page.get_by_role("link", name="Sign in with Discord").click()
        await page.wait_for_url(site + "/")
        await eventually(page, lambda: _has(page, "Ali"), "the board after signing in")
        assert str(w.alice) not in await page.content()
        cookies = {c["name"]: c for c in await page.context.cookies()}
        assert cookies["lb_session"]["httpOnly"] and cookies["lb_session"]["sameSite"] == "Lax"
        await page.get_by_role("link", name="Sign out").click()
        again = await page.goto(site + "/")
        assert again is not None and again.status == 401
    finally:
        await runner.cleanup()


async def _has(page: Page, name: str) -> bool:
    return name in [entry[1] for entry in await page_entries(page)]
