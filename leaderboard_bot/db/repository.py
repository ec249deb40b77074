"""Every query the bot runs. All functions are blocking: call them through ``Storage.run``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from peewee import EXCLUDED, chunked, fn

from ..domain import ActivityBatch, Board, RankedEntry
from .models import DailyActivity, MemberName, MemberStats, Season, Setting, VoiceSession, database_proxy

# SQLite caps bound variables per statement; 5 columns x 100 rows stays far below it.
CHUNK_ROWS = 100
WRITE_SEQUENCE_KEY = "write_sequence"  # the highest numbered batch committed (see services.recovery)
RECOVERY_MARKER_PREFIX = "recovered:"  # format-1 recovery files' applied-markers


# --------------------------------------------------------------------------- writes


def apply_batch(batch: ActivityBatch) -> None:
    """Add a flush's counts, record voice sessions and move the heartbeat, atomically."""
    totals: dict[int, list[float]] = {}
    daily: dict[tuple[str, int], list[float]] = {}
    for (day, user), count in batch.messages.items():
        totals.setdefault(user, [0, 0.0])[0] += count
        daily.setdefault((day, user), [0, 0.0])[0] += count
    for (day, user), seconds in batch.voice.items():
        totals.setdefault(user, [0, 0.0])[1] += seconds
        daily.setdefault((day, user), [0, 0.0])[1] += seconds

    with database_proxy.atomic():
        _add_counts(
            MemberStats,
            (MemberStats.guild_id, MemberStats.season, MemberStats.user_id),
            [
                {
                    "guild_id": batch.guild_id,
                    "season": batch.season,
                    "user_id": user,
                    "messages": int(m),
                    "voice_seconds": float(v),
                }
                for user, (m, v) in totals.items()
            ],
        )
        _add_counts(
            DailyActivity,
            (DailyActivity.guild_id, DailyActivity.day, DailyActivity.user_id),
            [
                {"guild_id": batch.guild_id, "day": day, "user_id": user, "messages": int(m), "voice_seconds": float(v)}
                for (day, user), (m, v) in daily.items()
            ],
        )
        for sessions in chunked(batch.opened, CHUNK_ROWS):
            VoiceSession.insert_many(
                [
                    {
                        "key": s.key,
                        "guild_id": batch.guild_id,
                        "user_id": s.user_id,
                        "channel_id": s.channel_id,
                        "started_at": s.started_at,
                        "last_seen_at": s.started_at,
                    }
                    for s in sessions
                ]
            ).on_conflict_ignore().execute()
        for closed in batch.closed:
            VoiceSession.update(ended_at=closed.ended_at, last_seen_at=closed.ended_at).where(
                (VoiceSession.key == closed.key) & VoiceSession.ended_at.is_null()
            ).execute()
        # Every open session has been credited up to this flush: that is its heartbeat.
        VoiceSession.update(last_seen_at=batch.heartbeat_at).where(
            (VoiceSession.guild_id == batch.guild_id) & VoiceSession.ended_at.is_null()
        ).execute()
        name_rows = [
            {
                "guild_id": batch.guild_id,
                "user_id": user,
                "display_name": display[:255],
                "username": (username or None),
                "updated_at": batch.heartbeat_at,
            }
            for user, (display, username) in batch.names.items()
        ]
        for chunk in chunked(name_rows, CHUNK_ROWS):
            MemberName.insert_many(chunk).on_conflict(
                conflict_target=[MemberName.guild_id, MemberName.user_id],
                update={
                    MemberName.display_name: EXCLUDED.display_name,
                    MemberName.username: EXCLUDED.username,
                    MemberName.updated_at: EXCLUDED.updated_at,
                },
            ).execute()
        if batch.sequence is not None and batch.sequence > int(get_setting(batch.guild_id, WRITE_SEQUENCE_KEY, 0)):
            _set_setting(batch.guild_id, WRITE_SEQUENCE_KEY, batch.sequence)
        if batch.recovery_id is not None:
            _set_setting(batch.guild_id, f"{RECOVERY_MARKER_PREFIX}{batch.recovery_id}", batch.heartbeat_at)
        if batch.roll is not None:
            roll = batch.roll
            roll_season(batch.guild_id, roll.number, roll.ended_at, roll.period, starts_at=roll.next_start)


def _add_counts(model: type[MemberStats] | type[DailyActivity], key: tuple[Any, ...], rows: list[dict]) -> None:
    """Upsert rows whose counters add to the stored ones (never replace: that would reset them)."""
    for chunk in chunked(rows, CHUNK_ROWS):
        model.insert_many(chunk).on_conflict(
            conflict_target=list(key),
            update={
                model.messages: model.messages + EXCLUDED.messages,
                model.voice_seconds: model.voice_seconds + EXCLUDED.voice_seconds,
            },
        ).execute()


def close_orphan_sessions(guild_id: int) -> int:
    """Close sessions a crash left open at their last heartbeat: time after it was never credited."""
    return (
        VoiceSession.update(ended_at=VoiceSession.last_seen_at)
        .where((VoiceSession.guild_id == guild_id) & VoiceSession.ended_at.is_null())
        .execute()
    )


def prune_closed_sessions(guild_id: int, ended_before: float, limit: int = 500) -> int:
    """Delete up to ``limit`` voice sessions that ended before ``ended_before`` (small batches, so
    the write lock is held briefly). The time they counted stays in the totals and daily buckets."""
    keys = [
        row.key
        for row in VoiceSession.select(VoiceSession.key)
        .where(
            (VoiceSession.guild_id == guild_id)
            & VoiceSession.ended_at.is_null(False)
            & (VoiceSession.ended_at < ended_before)
        )
        .limit(limit)
    ]
    if not keys:
        return 0
    with database_proxy.atomic():
        return int(VoiceSession.delete().where(VoiceSession.key.in_(keys)).execute())


def prune_recovery_markers(guild_id: int, older_than: float) -> int:
    """Format-1 applied-markers only matter while such a file may still exist; drop old ones.
    The retired ``heartbeat`` setting (written, never read) goes too."""
    rows = list(
        Setting.select().where(
            (Setting.guild_id == guild_id)
            & ((Setting.key.startswith(RECOVERY_MARKER_PREFIX)) | (Setting.key == "heartbeat"))
        )
    )
    stale = [r.key for r in rows if r.key == "heartbeat" or float(json.loads(r.value)) < older_than]
    if not stale:
        return 0
    with database_proxy.atomic():
        return int(Setting.delete().where((Setting.guild_id == guild_id) & Setting.key.in_(stale)).execute())


def _set_setting(guild_id: int, key: str, value: Any) -> None:
    Setting.insert(guild_id=guild_id, key=key, value=json.dumps(value)).on_conflict(
        conflict_target=[Setting.guild_id, Setting.key], update={Setting.value: EXCLUDED.value}
    ).execute()


def set_setting(guild_id: int, key: str, value: Any) -> None:
    with database_proxy.atomic():
        _set_setting(guild_id, key, value)


def settings_with_prefix(guild_id: int, prefix: str) -> dict[str, Any]:
    rows = Setting.select().where((Setting.guild_id == guild_id) & Setting.key.startswith(prefix))
    return {str(r.key): json.loads(r.value) for r in rows}


def delete_setting(guild_id: int, key: str) -> None:
    with database_proxy.atomic():
        Setting.delete().where((Setting.guild_id == guild_id) & (Setting.key == key)).execute()


def get_setting(guild_id: int, key: str, default: Any = None) -> Any:
    row = Setting.get_or_none((Setting.guild_id == guild_id) & (Setting.key == key))
    return default if row is None else json.loads(row.value)


# --------------------------------------------------------------------------- reads


def _board_column(board: Board) -> Any:
    return MemberStats.messages if board == "messages" else MemberStats.voice_seconds


def top(guild_id: int, season: int, board: Board, limit: int) -> list[RankedEntry]:
    """The highest totals of a season, ties broken by user id so the order is stable."""
    column = _board_column(board)
    query: Any = (
        MemberStats.select(MemberStats.user_id, column.alias("value"))
        .where((MemberStats.guild_id == guild_id) & (MemberStats.season == season) & (column > 0))
        .order_by(column.desc(), MemberStats.user_id.asc())
        .limit(limit)
        .tuples()
    )
    return [RankedEntry(int(user), float(value)) for user, value in query]


def member_totals(guild_id: int, season: int, user_id: int) -> tuple[int, float]:
    row = MemberStats.get_or_none(
        (MemberStats.guild_id == guild_id) & (MemberStats.season == season) & (MemberStats.user_id == user_id)
    )
    return (0, 0.0) if row is None else (int(row.messages), float(row.voice_seconds))


def rank_of(guild_id: int, season: int, board: Board, user_id: int) -> int | None:
    """1-based position the member holds in ``top`` order, or None with nothing on that board."""
    column = _board_column(board)
    row = MemberStats.get_or_none(
        (MemberStats.guild_id == guild_id) & (MemberStats.season == season) & (MemberStats.user_id == user_id)
    )
    mine = 0 if row is None else (row.messages if board == "messages" else row.voice_seconds)
    if not mine or mine <= 0:
        return None
    ahead = (
        MemberStats.select(fn.COUNT(MemberStats.user_id))
        .where(
            (MemberStats.guild_id == guild_id)
            & (MemberStats.season == season)
            & ((column > mine) | ((column == mine) & (MemberStats.user_id < user_id)))
        )
        .scalar()
    )
    return int(ahead) + 1


def ranked_count(guild_id: int, season: int, board: Board) -> int:
    column = _board_column(board)
    return (
        MemberStats.select()
        .where((MemberStats.guild_id == guild_id) & (MemberStats.season == season) & (column > 0))
        .count()
    )


def names(guild_id: int, user_ids: Iterable[int]) -> dict[int, str]:
    ids = list(user_ids)
    if not ids:
        return {}
    query: Any = MemberName.select(MemberName.user_id, MemberName.display_name).where(
        (MemberName.guild_id == guild_id) & (MemberName.user_id.in_(ids))
    )
    return {int(u): str(n) for u, n in query.tuples()}


def open_sessions(guild_id: int) -> list[VoiceSession]:
    return list(VoiceSession.select().where((VoiceSession.guild_id == guild_id) & VoiceSession.ended_at.is_null()))


def daily_totals(guild_id: int, first_day: str, last_day: str) -> Mapping[int, tuple[int, float]]:
    """Per-member sums over a range of UTC days (inclusive): a week or a chart is this query."""
    query: Any = (
        DailyActivity.select(DailyActivity.user_id, fn.SUM(DailyActivity.messages), fn.SUM(DailyActivity.voice_seconds))
        .where((DailyActivity.guild_id == guild_id) & (DailyActivity.day.between(first_day, last_day)))
        .group_by(DailyActivity.user_id)
        .tuples()
    )
    return {int(u): (int(m or 0), float(v or 0.0)) for u, m, v in query}


# --------------------------------------------------------------------------- seasons


def current_season(guild_id: int) -> Season | None:
    return (
        Season.select()
        .where((Season.guild_id == guild_id) & Season.ended_at.is_null())
        .order_by(Season.number.desc())
        .first()
    )


def ensure_season(guild_id: int, now: float, period: float) -> Season:
    """The open season, starting the first one at ``now`` if there is none."""
    with database_proxy.atomic():
        season = current_season(guild_id)
        if season is None:
            last = Season.select(fn.MAX(Season.number)).where(Season.guild_id == guild_id).scalar() or 0
            season = Season.create(guild_id=guild_id, number=last + 1, started_at=now, ends_at=now + period)
        return season


def roll_season(
    guild_id: int, number: int, ended_at: float, period: float, *, starts_at: float | None = None
) -> Season:
    """Archive season ``number`` (ended at ``ended_at``) and open the next, starting at
    ``starts_at`` (default: ``ended_at``) and lasting ``period``; idempotent."""
    start = ended_at if starts_at is None else starts_at
    with database_proxy.atomic():
        Season.update(ended_at=ended_at).where(
            (Season.guild_id == guild_id) & (Season.number == number) & Season.ended_at.is_null()
        ).execute()
        nxt = Season.get_or_none((Season.guild_id == guild_id) & (Season.number == number + 1))
        if nxt is None:
            nxt = Season.create(guild_id=guild_id, number=number + 1, started_at=start, ends_at=start + period)
        return nxt


def set_season_end(guild_id: int, number: int, ends_at: float) -> None:
    Season.update(ends_at=ends_at).where((Season.guild_id == guild_id) & (Season.number == number)).execute()


def unannounced_seasons(guild_id: int) -> list[Season]:
    return list(
        Season.select()
        .where((Season.guild_id == guild_id) & Season.ended_at.is_null(False) & Season.announced_at.is_null())
        .order_by(Season.number)
    )


def mark_season_announced(guild_id: int, number: int, at: float | None = None) -> None:
    Season.update(announced_at=time.time() if at is None else at).where(
        (Season.guild_id == guild_id) & (Season.number == number)
    ).execute()


def season(guild_id: int, number: int) -> Season | None:
    return Season.get_or_none((Season.guild_id == guild_id) & (Season.number == number))
