"""services.web: names and values as on the boards, opaque member links, one snapshot per change
(hidden members left out), the bounded live broadcast, the per-install secret and signed cookies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from leaderboard_bot.config import load_settings
from leaderboard_bot.db import Storage
from leaderboard_bot.exts.web import line_text, shown_name, value_text
from leaderboard_bot.services.container import Services, build_services
from leaderboard_bot.services.web import (
    TABS,
    Broadcast,
    MemberTokens,
    WebBoards,
    install_secret,
    sign,
    sse_event,
    unsign,
)
from tests.factories import MIDNIGHT, FakeClock, FakeNameSource

G = 4141
ALI, BOB, CAT = 111111111111111111, 222222222222222222, 333333333333333333


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    url = f"sqlite:///{tmp_path}/w.db"
    clock = FakeClock(MIDNIGHT + 3600)
    source = FakeNameSource(live={ALI: ("Ali", "ali"), BOB: ("Bob *bold*", "bob"), CAT: ("Cat", "cat")})
    built = build_services(
        load_settings({"BOT_TOKEN": "x", "GUILD_ID": str(G), "DATABASE_URL": url, "SPAM_LIMIT": "off"}),
        Storage(url),
        source,
        clock=clock,
    )
    await built.open()
    try:
        yield built
    finally:
        await built.storage.close()


async def messages(services: Services, counts: dict[int, int]) -> None:
    for user_id, n in counts.items():
        for _ in range(n):
            services.activity.record_message(user_id)
    assert await services.seasons.flush()


def view(services: Services, clock: FakeClock | None = None) -> WebBoards:
    tokens = MemberTokens(b"k" * 32)
    return WebBoards(services.boards, services.seasons, tokens, line_text, clock=clock or FakeClock(5000.0))


def test_names_and_values_read_as_on_the_pinned_boards_through_the_web_extension() -> None:
    assert shown_name("Bob *bold*") == "Bob *bold*"  # the page escapes HTML itself: no markdown escapes
    assert shown_name("x" * 40) == "x" * 31 + "…"
    assert shown_name("line\nbreak") == "line break"
    assert shown_name("\u200b") == "Unknown member"
    assert value_text("voice", 12 * 3600 + 5 * 60 + 9) == "12h 05m"
    assert value_text("messages", 1234) == "1,234 messages"
    assert value_text("messages", 1) == "1 message"


def test_member_links_are_opaque_stable_and_only_those_handed_out_are_answered() -> None:
    tokens = MemberTokens(b"secret-one" * 4)
    token = tokens.token(ALI)
    assert str(ALI) not in token and len(token) == 20
    assert tokens.token(ALI) == token and tokens.user(token) == ALI
    assert MemberTokens(b"secret-two" * 4).token(ALI) != token  # per install
    assert tokens.user("0" * 20) is None
    small = MemberTokens(b"s" * 32, remember=2)
    first = small.token(1)
    small.token(2)
    small.token(3)
    assert small.user(first) is None  # the oldest is forgotten: memory stays bounded


def test_signed_values_refuse_forgery_another_purpose_and_expiry() -> None:
    secret = b"s" * 32
    cookie = sign(secret, "session", {"member": True}, now=100.0, seconds=60.0)
    assert unsign(secret, "session", cookie, now=150.0) == {"member": True, "exp": 160.0}
    assert unsign(secret, "session", cookie, now=161.0) is None
    assert unsign(secret, "state", cookie, now=150.0) is None
    assert unsign(b"t" * 32, "session", cookie, now=150.0) is None
    body, mac = cookie.split(".")
    assert unsign(secret, "session", body + "x." + mac, now=150.0) is None
    assert unsign(secret, "session", None, now=0) is None
    assert unsign(secret, "session", "garbage", now=0) is None
    assert unsign(secret, "session", body + ".\u00e9", now=0) is None  # not ASCII: refused, not a TypeError


async def test_one_broadcast_reaches_every_viewer_and_a_slow_one_keeps_only_the_newest() -> None:
    broadcast = Broadcast(queue_size=2)
    fast, slow = broadcast.subscribe(), broadcast.subscribe()
    assert len(broadcast) == 2
    broadcast.publish(b"1")
    assert await fast.get() == b"1"
    broadcast.publish(b"2")
    broadcast.publish(b"3")
    assert [slow.get_nowait() for _ in range(slow.qsize())] == [b"2", b"3"]  # bounded: "1" dropped
    broadcast.unsubscribe(slow)
    broadcast.publish(b"4")
    assert slow.empty() and len(broadcast) == 1
    broadcast.close()
    assert [fast.get_nowait() for _ in range(fast.qsize())][-1] == b""
    assert sse_event("standings", b'{"a":1}') == b'event: standings\ndata: {"a":1}\n\n'


async def test_the_secret_is_made_once_per_install(services: Services) -> None:
    first = await install_secret(services.storage, G)
    assert len(first) == 32
    assert await install_secret(services.storage, G) == first


async def test_a_snapshot_holds_every_tab_and_changes_only_when_the_standings_do(services: Services) -> None:
    clock = FakeClock(5000.0)
    web = view(services, clock)
    await messages(services, {ALI: 3, BOB: 5})
    first = await web.check()
    assert first is not None and first.version == 5_000_000
    assert set(first.tabs) == set(TABS)
    season = first.tabs["season"]["messages"]
    shown = [(line.rank, line.name, line.value) for line in season]
    assert shown == [(1, "Bob *bold*", "5 messages"), (2, "Ali", "3 messages")]
    assert [line.name for line in first.tabs["today"]["messages"]] == ["Bob *bold*", "Ali"]
    assert first.tabs["season"]["voice"] == []
    payload = json.loads(first.payload)
    assert payload["version"] == first.version and payload["tabs"]["week"]["messages"][0]["name"] == "Bob *bold*"
    assert str(ALI) not in first.payload.decode() and str(BOB) not in first.payload.decode()
    assert await web.check() is None  # unchanged: nothing to send
    clock.advance(10.0)
    await messages(services, {ALI: 4})
    second = await web.check()
    assert second is not None and second.version == 5_010_000 and second.changed_at == 5010.0
    assert [line.name for line in second.tabs["season"]["messages"]] == ["Ali", "Bob *bold*"]
    assert (await web.snapshot()) is second


async def test_a_hidden_member_is_on_no_tab(services: Services) -> None:
    await messages(services, {ALI: 3, BOB: 5, CAT: 1})
    web = view(services)
    await services.privacy.set_flag(BOB, "hidden", True)
    snapshot = await web.snapshot()
    for period in TABS:
        assert "Bob *bold*" not in [line.name for line in snapshot.tabs[period]["messages"]]
    assert [line.rank for line in snapshot.tabs["season"]["messages"]] == [1, 2]


async def test_past_seasons_keep_their_final_standings(services: Services) -> None:
    await messages(services, {ALI: 2, CAT: 7})
    assert await services.seasons.roll(reason="test") is not None
    await messages(services, {BOB: 1})
    web = view(services)
    past = await web.past_seasons()
    assert [s.number for s in past] == [1]
    assert [line.name for line in past[0].boards["messages"]] == ["Cat", "Ali"]
    current = await web.snapshot()
    assert current.season == 2 and [line.name for line in current.tabs["season"]["messages"]] == ["Bob *bold*"]


async def test_checks_at_the_same_time_read_once_each_in_turn(services: Services) -> None:
    await messages(services, {ALI: 1})
    web = view(services)
    results = await asyncio.gather(*(web.check() for _ in range(5)))
    assert sum(1 for r in results if r is not None) == 1
