"""Voice time accounting as a pure state machine (no Discord, no database, injected times).

The tracker knows where every member is and decides, per member, whether time counts now:
in a tracked channel (the caller passes ``channel_id=None`` for AFK and untracked places),
not a bot, not deafened unless deafened time counts, and not alone unless alone time counts.
Every change re-evaluates the channels it touches, because one member leaving can make
another one alone. Counted time accrues into intervals that a flush collects.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ..domain import SessionClose, SessionOpen


@dataclass(frozen=True)
class VoiceRules:
    """Which voice time counts besides plain presence (VOICE_COUNT_DEAFENED, VOICE_COUNT_ALONE)."""

    count_deafened: bool = False
    count_alone: bool = True


@dataclass(frozen=True)
class VoicePresence:
    channel_id: int
    deafened: bool = False
    is_bot: bool = False


@dataclass(frozen=True)
class CreditedInterval:
    user_id: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class _OpenSession:
    key: str
    channel_id: int
    started_at: float
    credited_until: float


@dataclass
class VoiceDrain:
    """What a flush takes from the tracker (and gives back if the write fails)."""

    intervals: list[CreditedInterval] = field(default_factory=list)
    opened: list[SessionOpen] = field(default_factory=list)
    closed: list[SessionClose] = field(default_factory=list)


class VoiceTracker:
    def __init__(self, rules: Callable[[], VoiceRules] = VoiceRules) -> None:
        # Read at every decision, so a runtime change applies from the next re-evaluation.
        self.rules = rules
        self._presence: dict[int, VoicePresence] = {}
        self._open: dict[int, _OpenSession] = {}
        self._pending = VoiceDrain()
        self._suspended = False

    # ------------------------------------------------------------------ queries

    def presence(self, user_id: int) -> VoicePresence | None:
        return self._presence.get(user_id)

    def present_users(self) -> set[int]:
        return set(self._presence)

    def is_counting(self, user_id: int) -> bool:
        return user_id in self._open

    def counting_users(self) -> set[int]:
        return set(self._open)

    def session_seconds(self, user_id: int, now: float) -> float | None:
        """Length of the member's current counted session, or None when not counting."""
        session = self._open.get(user_id)
        return None if session is None else max(0.0, now - session.started_at)

    def unflushed_seconds(self, user_id: int, now: float) -> float:
        """Time not yet written to the database: drained-but-pending intervals plus the live session."""
        pending = sum(i.seconds for i in self._pending.intervals if i.user_id == user_id)
        session = self._open.get(user_id)
        live = max(0.0, now - session.credited_until) if session else 0.0
        return pending + live

    # ------------------------------------------------------------------ changes

    def update(self, user_id: int, presence: VoicePresence | None, now: float) -> None:
        """A member joined, left, moved or changed mute/deafen state (None: not in a tracked channel)."""
        old = self._presence.get(user_id)
        if presence is None:
            self._presence.pop(user_id, None)
        else:
            self._presence[user_id] = presence
        channels = {p.channel_id for p in (old, presence) if p is not None}
        self._reevaluate(channels, now, also={user_id})

    @property
    def suspended(self) -> bool:
        return self._suspended

    def suspend(self, now: float) -> None:
        """Contact with Discord was lost: stop every session now, because nobody can tell what
        happens until contact is back. Presence is kept; reconcile() resumes counting."""
        if self._suspended:
            return
        for user_id in list(self._open):
            self._close(user_id, now)
        self._suspended = True

    def reconcile(self, actual: dict[int, VoicePresence], now: float, gone_at: float | None = None) -> None:
        """Align with the guild's real voice states (start-up, reconnects) and resume counting if
        suspended. Members no longer there stop counting at ``gone_at`` (the last time they were
        known to be there); members present start or keep counting from ``now``."""
        gone_at = now if gone_at is None else min(gone_at, now)
        for user_id in [u for u in self._presence if u not in actual]:
            self.update(user_id, None, gone_at)
        for user_id, presence in actual.items():
            if self._presence.get(user_id) != presence:
                self.update(user_id, presence, now)
        self._suspended = False
        self._reevaluate({p.channel_id for p in self._presence.values()}, now)

    def rules_changed(self, now: float) -> None:
        """The counting rules changed: decide again for everyone, from ``now``."""
        self._reevaluate({p.channel_id for p in self._presence.values()}, now)

    def stop_all(self, now: float) -> None:
        """Close every session at ``now`` (shutdown): the members are no longer watched."""
        for user_id in list(self._open):
            self._close(user_id, now)
        self._presence.clear()

    def checkpoint(self, now: float) -> VoiceDrain:
        """Credit live sessions up to ``now`` and hand over everything not yet written."""
        for user_id, session in self._open.items():
            if now > session.credited_until:
                self._pending.intervals.append(CreditedInterval(user_id, session.credited_until, now))
                session.credited_until = now
        drained, self._pending = self._pending, VoiceDrain()
        return drained

    def restore(self, drained: VoiceDrain) -> None:
        """Put back a drain whose write failed, ahead of anything recorded since."""
        self._pending = VoiceDrain(
            intervals=drained.intervals + self._pending.intervals,
            opened=drained.opened + self._pending.opened,
            closed=drained.closed + self._pending.closed,
        )

    # ------------------------------------------------------------------ internals

    def _should_count(self, user_id: int, presence: VoicePresence, rules: VoiceRules) -> bool:
        if presence.is_bot:
            return False
        if presence.deafened and not rules.count_deafened:
            return False
        if not rules.count_alone:
            company = any(
                other != user_id and p.channel_id == presence.channel_id and not p.is_bot
                for other, p in self._presence.items()
            )
            if not company:
                return False
        return True

    def _reevaluate(self, channels: set[int], now: float, also: set[int] | None = None) -> None:
        users = {u for u, p in self._presence.items() if p.channel_id in channels} | (also or set())
        rules = self.rules()
        for user_id in sorted(users):
            presence = self._presence.get(user_id)
            should = presence is not None and not self._suspended and self._should_count(user_id, presence, rules)
            session = self._open.get(user_id)
            if session is not None and (not should or presence is None or session.channel_id != presence.channel_id):
                self._close(user_id, now)
                session = None
            if should and session is None and presence is not None:
                self._start(user_id, presence.channel_id, now)

    def _start(self, user_id: int, channel_id: int, now: float) -> None:
        key = uuid.uuid4().hex
        self._open[user_id] = _OpenSession(key=key, channel_id=channel_id, started_at=now, credited_until=now)
        self._pending.opened.append(SessionOpen(key, user_id, channel_id, now))

    def _close(self, user_id: int, now: float) -> None:
        session = self._open.pop(user_id)
        end = max(now, session.credited_until)  # never negative, never before what was credited
        if end > session.credited_until:
            self._pending.intervals.append(CreditedInterval(user_id, session.credited_until, end))
        self._pending.closed.append(SessionClose(session.key, end))


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def split_by_day(start: float, end: float) -> list[tuple[str, float]]:
    """Seconds of [start, end) falling on each UTC day."""
    out: list[tuple[str, float]] = []
    cursor = start
    while cursor < end:
        day_start = datetime.fromtimestamp(cursor, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        next_midnight = (day_start + timedelta(days=1)).timestamp()
        stop = min(end, next_midnight)
        out.append((day_start.strftime("%Y-%m-%d"), stop - cursor))
        cursor = stop
    return out
