"""Small test helpers shared by the unit tests (no fixtures here: plain objects only)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from leaderboard_bot.config import Tunables, load_settings
from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import ActivityBatch, NameInfo
from leaderboard_bot.services.settings import RuntimeSettings
from leaderboard_bot.services.voice import VoiceDrain, VoicePresence, VoiceRules, VoiceTracker

# 2024-03-10 00:00:00 UTC: a round midnight to build day-crossing scenarios around.
MIDNIGHT = datetime(2024, 3, 10, tzinfo=UTC).timestamp()
DAY = 86_400.0


class FakeClock:
    """A clock that only moves when told to, so no test sleeps."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def set(self, now: float) -> float:
        self.now = now
        return now


class AllowAllGuard:
    """A message guard that counts every message and remembers who asked."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.blocked = 0

    @property
    def allowed(self) -> int:
        return len(self.calls)

    def allow(self, member_id: int, now: float | None = None) -> bool:
        self.calls.append(member_id)
        return True

    def forget_full(self, now: float | None = None) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class DenyListGuard:
    """A message guard that refuses the listed members."""

    def __init__(self, denied: Iterable[int]) -> None:
        self.denied = set(denied)
        self.allowed = 0
        self.blocked = 0

    def allow(self, member_id: int, now: float | None = None) -> bool:
        ok = member_id not in self.denied
        if ok:
            self.allowed += 1
        else:
            self.blocked += 1
        return ok

    def __len__(self) -> int:
        return 0


def voice_tracker(*, count_deafened: bool = False, count_alone: bool = True) -> VoiceTracker:
    """A tracker with fixed counting rules."""
    rules = VoiceRules(count_deafened=count_deafened, count_alone=count_alone)
    return VoiceTracker(lambda: rules)


def tunables(**overrides: object) -> Tunables:
    """The environment's defaults (as with only a token set), with ``overrides``."""
    import dataclasses

    return dataclasses.replace(load_settings({"BOT_TOKEN": "x"}).tunables, **overrides)  # type: ignore[arg-type]


def runtime_settings(**overrides: object) -> RuntimeSettings:
    return RuntimeSettings(tunables(**overrides))


class FakeNameSource:
    """The bot's NameSource port: a member cache and a Discord lookup, recording who was asked."""

    def __init__(
        self,
        live: dict[int, NameInfo] | None = None,
        fetched: dict[int, NameInfo | Exception | None] | None = None,
    ) -> None:
        self.live = dict(live or {})
        self.fetched = dict(fetched or {})
        self.live_calls: list[int] = []
        self.fetch_calls: list[int] = []

    def live_name(self, user_id: int) -> NameInfo | None:
        self.live_calls.append(user_id)
        return self.live.get(user_id)

    async def fetch_name(self, user_id: int) -> NameInfo | None:
        self.fetch_calls.append(user_id)
        result = self.fetched.get(user_id)
        if isinstance(result, Exception):
            raise result
        return result


def here(channel_id: int, *, deafened: bool = False, is_bot: bool = False) -> VoicePresence:
    return VoicePresence(channel_id=channel_id, deafened=deafened, is_bot=is_bot)


def seconds_by_user(drain: VoiceDrain) -> dict[int, float]:
    out: dict[int, float] = {}
    for (_, user), seconds in drain.seconds.items():
        out[user] = out.get(user, 0.0) + seconds
    return out


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


@asynccontextmanager
async def open_storage(database_url: str) -> AsyncIterator[Storage]:
    """A migrated database on its own thread, closed afterwards."""
    storage = Storage(database_url)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


def fail_batches(monkeypatch: pytest.MonkeyPatch, *, times: int = 1) -> list[ActivityBatch]:
    """Make repository.apply_batch raise "database is locked" ``times`` times, then write.
    Returns every batch it was given, in order."""
    real = repository.apply_batch
    attempts: list[ActivityBatch] = []

    def flaky(batch: ActivityBatch) -> None:
        attempts.append(batch)
        if len(attempts) <= times:
            raise sqlite3.OperationalError("database is locked")
        real(batch)

    monkeypatch.setattr(repository, "apply_batch", flaky)
    return attempts
