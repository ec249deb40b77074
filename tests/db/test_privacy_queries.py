"""The queries of /privacy and /leaderboard export on both backends: one member's data, the erase
of every row naming them, and the export's rows with board-order ranks, streamed in chunks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from peewee import Database

from leaderboard_bot.db import repository
from leaderboard_bot.db.storage import open_database
from leaderboard_bot.domain import ALL_TIME, ActivityBatch, SessionClose, SessionOpen
from tests.conftest import close_database

G = 222
A, B, C = 610000000000000001, 610000000000000002, 610000000000000003


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = open_database(database_url)
    try:
        yield database
    finally:
        close_database(database)


def add(day: str, season: int, messages: dict[int, int], voice: dict[int, float] | None = None, **extra: Any) -> None:
    repository.apply_batch(
        ActivityBatch(
            guild_id=G,
            season=season,
            heartbeat_at=1_700_000_000.0,
            messages={(day, u): n for u, n in messages.items()},
            voice={(day, u): s for u, s in (voice or {}).items()},
            today=day,
            **extra,
        )
    )


def collect(**options: Any) -> tuple[list[Any], list[Any]]:
    excluded: list[Any] = []
    rows: list[Any] = []
    repository.export_rows(G, on_excluded=excluded.extend, emit=rows.extend, **options)
    return excluded, rows


def test_export_rows_rank_in_board_order_in_chunks_with_names(db: Database) -> None:
    repository.ensure_season(G, 1_699_000_000.0, 86_400 * 30)
    add("2024-03-09", 1, {A: 2, B: 2}, {C: 5.0}, names={A: ("Ann", "ann")})
    add("2024-03-10", 1, {A: 1, C: 7})
    chunks: list[int] = []
    rows: list[Any] = []

    def emit(part: list[Any]) -> None:
        chunks.append(len(part))
        rows.extend(part)

    excluded: list[Any] = []
    repository.export_rows(
        G, scope=1, first_day="", last_day="", per_day=False, excluded=[B], on_excluded=excluded.extend, emit=emit,
        chunk=2,
    )  # fmt: skip
    assert chunks == [2, 1]
    assert rows == [
        (None, C, None, 7, 5.0, 1, 1),
        (None, A, "Ann", 3, 0.0, 2, 2),
        (None, B, None, 2, 0.0, 3, 3),
    ]
    assert excluded == [(None, B, 2, 0.0)]
    # A window, a date range (summed), per day (ranked per day).
    assert collect(scope=ALL_TIME.scope, first_day="", last_day="", per_day=False, excluded=[])[1] == rows
    _, ranged = collect(scope=None, first_day="2024-03-09", last_day="2024-03-09", per_day=False, excluded=[])
    assert [(u, m, v, mr, vr) for _, u, _, m, v, mr, vr in ranged] == [
        (A, 2, 0.0, 1, 2),
        (B, 2, 0.0, 2, 3),
        (C, 0, 5.0, 3, 1),
    ]
    excluded, per_day = collect(scope=1, first_day="2024-03-09", last_day="2024-03-10", per_day=True, excluded=[A])
    assert [(d, u, m, mr) for d, u, _, m, _, mr, _ in per_day] == [
        ("2024-03-09", A, 2, 1),
        ("2024-03-09", B, 2, 2),
        ("2024-03-09", C, 0, 3),
        ("2024-03-10", C, 7, 1),
        ("2024-03-10", A, 1, 2),
    ]
    assert sorted(excluded) == [("2024-03-09", A, 2, 0.0), ("2024-03-10", A, 1, 0.0)]
    assert repository.stored_days(G) == ("2024-03-09", "2024-03-10")
    assert repository.stored_days(G + 1) is None


def test_a_members_data_and_its_erase(db: Database) -> None:
    repository.ensure_season(G, 1_699_000_000.0, 86_400 * 30)
    add("2024-03-09", 1, {A: 2, B: 1}, opened=[SessionOpen("k", A, 9, 1_700_000_000.0)], names={A: ("Ann", None)})
    add("2024-03-09", 1, {}, closed=[SessionClose("k", 1_700_000_050.0)])
    repository.roll_season(G, 1, 1_700_000_100.0, 86_400 * 30)
    repository.set_setting(G, repository.privacy_key(A), "hidden")
    repository.set_setting(G, f"something:{A}:else", 1)
    repository.set_setting(G, f"unrelated:{A}1", 1)  # a longer number that merely starts with the id
    data = repository.member_data(G, A)
    assert [(s["season"], s["messages"]) for s in data["seasons"]] == [(1, 2)]
    assert data["days"] == [{"day": "2024-03-09", "messages": 2, "voice_seconds": 0.0}]
    assert data["voice_sessions"][0]["ended_at"] == 1_700_000_050.0
    assert data["name"]["display_name"] == "Ann" and data["privacy"] == "hidden"
    assert data["best_placing"] == {"season": 1, "board": "messages", "rank": 1, "value": 2.0}

    deleted = repository.erase_member(G, A, {repository.privacy_key(A): "stopped"})
    assert deleted["setting"] == 2 and deleted["voice_session"] == 1 and deleted["best_placing"] == 1
    assert repository.member_data(G, A) == {
        "seasons": [],
        "windows": [],
        "days": [],
        "voice_sessions": [],
        "name": None,
        "best_placing": None,
        "privacy": "stopped",
    }
    assert repository.get_setting(G, f"unrelated:{A}1") == 1
    assert repository.member_totals(G, 1, B) == (1, 0.0)
