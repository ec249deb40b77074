"""Voice time accounting as a pure state machine (no Discord, no database, injected times).

The tracker knows where every member is and decides, per member, whether time counts now:
in a tracked channel (the caller passes ``channel_id=None`` for AFK and untracked places),
not a bot, not deafened unless deafened time counts, and not alone unless alone time counts.
A change re-evaluates the member and, when it makes a channel gain or lose company (one member
leaving can make another one alone), that channel's members. Members are indexed by channel with
the count of humans in each, so a voice event costs at most the members of the channels it
touches, and a reconcile is one pass over the members in voice. Counted time accrues into
per-member, per-day totals that a flush collects: the pending work is bounded by members and
days, never by how many flushes failed.

Times are wall-clock times (they decide the day a second belongs to, and are stored); the caller
checks the wall clock against a monotonic one (:class:`VoiceClock`) and reports a step with
:meth:`VoiceTracker.clock_jumped`, so a step is never credited as time in voice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from loguru import logger

from ..domain import SessionClose, SessionOpen
from .days import UTC_CALENDAR, Calendar


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


@dataclass
class _OpenSession:
    key: str
    channel_id: int
    started_at: float  # on the current wall clock: moves with a clock jump, so the live length stays real
    credited_until: float
    opened_at: float = 0.0  # the session row's started_at, as stored (never moved)


# A wall-clock reading that differs from the last one plus the monotonic time since by more than
# this is a step of the clock (NTP, an operator, a VM resumed from suspend), not time in voice.
JUMP_TOLERANCE = 1.0


@dataclass(frozen=True)
class ClockJump:
    """The wall clock stepped: it read ``after`` when, by the monotonic clock, it should have read ``before``."""

    before: float
    after: float

    @property
    def size(self) -> float:
        return self.after - self.before


class VoiceClock:
    """The wall clock as voice accounting reads it, checked against a monotonic clock.

    Each reading is the wall time (days and stored timestamps need it); it is compared with the
    previous reading plus the monotonic time elapsed since, and a difference over ``tolerance``
    is reported as a :class:`ClockJump` (once: the next reading compares with this one). Without
    a monotonic clock (a fake wall clock in tests) nothing is ever reported."""

    def __init__(
        self,
        wall: Callable[[], float],
        monotonic: Callable[[], float] | None = None,
        tolerance: float = JUMP_TOLERANCE,
    ) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self.tolerance = tolerance
        self._last: tuple[float, float] | None = None  # (wall, monotonic) of the previous reading

    def read(self) -> tuple[float, ClockJump | None]:
        wall = self.wall()
        if self.monotonic is None:
            return wall, None
        mono = self.monotonic()
        last, self._last = self._last, (wall, mono)
        if last is None:
            return wall, None
        expected = last[0] + (mono - last[1])
        if abs(wall - expected) <= self.tolerance:
            return wall, None
        return wall, ClockJump(before=expected, after=wall)


# Sessions opened and closed while writes fail are kept as history up to this many; past it the
# oldest finished ones are dropped (their time is kept: it is in the per-day totals).
MAX_PENDING_SESSIONS = 50_000


@dataclass
class VoiceDrain:
    """What a flush takes from the tracker (and gives back if the write fails)."""

    seconds: dict[tuple[str, int], float] = field(default_factory=dict)  # (day, user) -> seconds
    opened: dict[str, SessionOpen] = field(default_factory=dict)  # by session key
    closed: dict[str, SessionClose] = field(default_factory=dict)
    calendar: Calendar = field(default=UTC_CALENDAR, compare=False, repr=False)  # whose days credit splits at

    def credit(self, user_id: int, start: float, end: float) -> None:
        for day, seconds in self.calendar.split(start, end):
            key = (day, user_id)
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def absorb(self, newer: VoiceDrain) -> None:
        """Add ``newer`` (recorded after this one) into this one."""
        for key, seconds in newer.seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.opened.update(newer.opened)
        self.closed.update(newer.closed)

    def copy(self) -> VoiceDrain:
        return VoiceDrain(dict(self.seconds), dict(self.opened), dict(self.closed), self.calendar)

    def is_empty(self) -> bool:
        return not (self.seconds or self.opened or self.closed)


class VoiceTracker:
    def __init__(self, rules: Callable[[], VoiceRules] = VoiceRules, calendar: Calendar = UTC_CALENDAR) -> None:
        # Read at every decision, so a runtime change applies from the next re-evaluation.
        self.rules = rules
        self.calendar = calendar
        self._presence: dict[int, VoicePresence] = {}
        # The index: members per channel and how many of them are humans (company: a deafened
        # human is company, a bot is not). Empty channels are removed.
        self._members: dict[int, set[int]] = {}
        self._humans: dict[int, int] = {}
        # The rules each channel was last fully decided with: rules are read live, so an event in
        # a channel decided under other rules re-decides all of it (a change without rules_changed).
        self._decided_with: dict[int, VoiceRules] = {}
        self._open: dict[int, _OpenSession] = {}
        self._pending = VoiceDrain(calendar=calendar)
        self._suspended = False
        self._held_since: float | None = None
        self._dropped_sessions = 0

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
        pending = sum(seconds for (_, user), seconds in self._pending.seconds.items() if user == user_id)
        session = self._open.get(user_id)
        live = max(0.0, now - session.credited_until) if session else 0.0
        return pending + live

    def humans_in(self, channel_id: int) -> int:
        """Members in the channel who count as company (humans, deafened or not)."""
        return self._humans.get(channel_id, 0)

    def unflushed_by_member(self, now: float, first_day: str | None = None) -> dict[int, float]:
        """:meth:`unflushed_seconds` of everyone at once: one pass over what is pending and open;
        with ``first_day``, only the time on that day and later."""
        out: dict[int, float] = {}
        for (day, user), seconds in self._pending.seconds.items():
            if first_day is None or day >= first_day:
                out[user] = out.get(user, 0.0) + seconds
        until = now if self._held_since is None else min(now, self._held_since)
        since = float("-inf") if first_day is None else self.calendar.day_start(first_day)
        for user, session in self._open.items():
            start = max(session.credited_until, since)
            if until > start:
                out[user] = out.get(user, 0.0) + (until - start)
        return out

    # ------------------------------------------------------------------ changes

    def update(self, user_id: int, presence: VoicePresence | None, now: float) -> None:
        """A member joined, left, moved or changed mute/deafen state (None: not in a tracked channel).
        Costs O(1) unless the change gives or takes a channel's company (then O(its members))."""
        old = self._presence.get(user_id)
        flipped = self._place(user_id, old, presence)
        rules = self.rules()
        users = {user_id}
        for channel in {p.channel_id for p in (old, presence) if p is not None}:
            members = self._members.get(channel)
            if members is None:
                self._decided_with.pop(channel, None)
                continue
            # Others in the channel can only change if their company did (and it matters), or if
            # the channel was decided under other rules.
            if (channel in flipped and not rules.count_alone) or self._decided_with.get(channel) != rules:
                users |= members
                self._decided_with[channel] = rules
        self._reevaluate(users, now, rules)

    @property
    def suspended(self) -> bool:
        return self._suspended

    def hold(self, now: float) -> None:
        """The connection dropped: until it resumes nobody knows who left, so nothing past ``now``
        is credited yet. A RESUME (:meth:`release`) credits the gap, because Discord replays what
        happened in it; a new session (:meth:`suspend`) never does."""
        if self._held_since is None:
            self._held_since = now

    def release(self) -> None:
        """The session resumed and missed events were replayed: the gap counts after all."""
        self._held_since = None

    @property
    def held_since(self) -> float | None:
        return self._held_since

    def suspend(self, now: float) -> None:
        """Events were lost (a new gateway session, a guild outage): stop every session at the
        moment contact was lost (``now``, or when the connection dropped if that was earlier).
        Presence is kept; reconcile() resumes counting."""
        at = now if self._held_since is None else min(now, self._held_since)
        self._held_since = None
        if self._suspended:
            return
        for user_id in list(self._open):
            self._close(user_id, at)
        self._suspended = True

    def reconcile(self, actual: dict[int, VoicePresence], now: float, gone_at: float | None = None) -> None:
        """Align with the guild's real voice states (start-up, reconnects) and resume counting if
        suspended. Members no longer there stop counting at ``gone_at`` (the last time they were
        known to be there); members present start or keep counting from ``now``. Called while
        held (the connection dropped and did not resume), it first suspends at the drop."""
        if self._held_since is not None:
            # Contact is back without a RESUME (a new session): what happened in the gap was not
            # replayed, so it is not credited.
            self.suspend(now)
        gone_at = now if gone_at is None else min(gone_at, now)
        rules = self.rules()
        # Leaves first, all at gone_at: the gone stop, and so do those they left alone.
        gone = [u for u in self._presence if u not in actual]
        if gone:
            touched: set[int] = set()
            for user_id in gone:
                touched.add(self._presence[user_id].channel_id)
                self._place(user_id, self._presence[user_id], None)
            users = set(gone)
            for channel in touched:
                users |= self._members.get(channel, set())
            self._reevaluate(users, gone_at, rules)
        # Then every arrival and change at once, and one decision for everyone from now (deciding
        # after each change would only add zero-length sessions at now).
        for user_id, presence in actual.items():
            old = self._presence.get(user_id)
            if old != presence:
                self._place(user_id, old, presence)
        self._suspended = False
        self._decide_all(now, rules)

    def rules_changed(self, now: float) -> None:
        """The counting rules changed: decide again for everyone, from ``now``."""
        self._decide_all(now, self.rules())

    def clock_jumped(self, before: float, after: float) -> None:
        """The wall clock stepped from ``before`` to ``after`` at one real moment (see
        :class:`VoiceClock`). Open sessions are credited up to ``before`` on the old clock and go
        on from ``after`` on the new one: the step itself is never credited nor taken away, and
        each second lands on the day the clock showed when it passed. A moment the connection
        dropped moves with the clock, so a RESUME still credits exactly the real gap."""
        until = before if self._held_since is None else min(before, self._held_since)
        shift = after - before
        for user_id, session in self._open.items():
            if until > session.credited_until:
                self._pending.credit(user_id, session.credited_until, until)
                session.credited_until = until
            session.credited_until += shift
            session.started_at += shift
        if self._held_since is not None:
            self._held_since += shift

    def stop_all(self, now: float) -> None:
        """Close every session at ``now`` (shutdown): the members are no longer watched. While the
        connection is down, only up to when it dropped: the gap can no longer be replayed."""
        at = now if self._held_since is None else min(now, self._held_since)
        for user_id in list(self._open):
            self._close(user_id, at)
        self._presence.clear()
        self._members.clear()
        self._humans.clear()
        self._decided_with.clear()

    def checkpoint(self, now: float) -> VoiceDrain:
        """Credit live sessions up to ``now`` and hand over everything not yet written."""
        pending = self._pending
        until = now if self._held_since is None else min(now, self._held_since)
        for user_id, session in self._open.items():
            if until > session.credited_until:
                pending.credit(user_id, session.credited_until, until)
                session.credited_until = until
        drained, self._pending = pending, VoiceDrain(calendar=self.calendar)
        return drained

    def restore(self, drained: VoiceDrain) -> None:
        """Put back a drain whose write failed, merged with anything recorded since."""
        drained.absorb(self._pending)
        drained.calendar = self.calendar
        self._pending = drained
        self._bound_pending()

    def pending_rows(self) -> int:
        return len(self._pending.seconds)

    def uncredited(self, since: float, until: float) -> VoiceDrain:
        """The open sessions' time in [``since``, ``until``) not credited yet, as a copy: nothing
        is moved (for the recovery file, time the buffers hold back for the next season)."""
        out = VoiceDrain(calendar=self.calendar)
        end = until if self._held_since is None else min(until, self._held_since)
        for user_id, session in self._open.items():
            start = max(session.credited_until, since)
            if end > start:
                out.credit(user_id, start, end)
        return out

    def pending(self) -> VoiceDrain:
        """A copy of what is credited but not yet handed to a flush (for the recovery file)."""
        return self._pending.copy()

    def _bound_pending(self) -> None:
        pending = self._pending
        excess = len(pending.opened) - MAX_PENDING_SESSIONS
        if excess <= 0:
            return
        finished = [key for key in pending.opened if key in pending.closed][:excess]
        for key in finished:
            del pending.opened[key]
            del pending.closed[key]
        if self._dropped_sessions == 0:
            logger.warning(
                "over {} voice sessions waiting for the database: the history of the oldest finished ones is "
                "dropped (their time still counts)",
                MAX_PENDING_SESSIONS,
            )
        self._dropped_sessions += len(finished)

    # ------------------------------------------------------------------ internals

    def _place(self, user_id: int, old: VoicePresence | None, new: VoicePresence | None) -> set[int]:
        """Record the member's presence and keep the index; return the channels that gained or
        lost company (two humans or more)."""
        if new is None:
            self._presence.pop(user_id, None)
        else:
            self._presence[user_id] = new
        if old == new:
            return set()
        flipped: set[int] = set()
        if old is not None:
            channel = old.channel_id
            members = self._members[channel]
            members.discard(user_id)
            if not old.is_bot:
                self._humans[channel] -= 1
                if self._humans[channel] == 1:
                    flipped.add(channel)
            if not members:
                del self._members[channel]
                del self._humans[channel]
        if new is not None:
            channel = new.channel_id
            self._members.setdefault(channel, set()).add(user_id)
            humans = self._humans.get(channel, 0)
            if not new.is_bot:
                humans += 1
                if humans == 2:
                    flipped ^= {channel}  # a deafen toggle leaves and re-enters the same channel
            self._humans[channel] = humans
        return flipped

    def _should_count(self, presence: VoicePresence, rules: VoiceRules) -> bool:
        if presence.is_bot:
            return False
        if presence.deafened and not rules.count_deafened:
            return False
        # A human is one of the channel's humans: company is at least one other.
        return rules.count_alone or self._humans.get(presence.channel_id, 0) >= 2

    def _decide_all(self, now: float, rules: VoiceRules) -> None:
        self._decided_with = dict.fromkeys(self._members, rules)
        self._reevaluate(self._presence, now, rules)

    def _reevaluate(self, users: Iterable[int], now: float, rules: VoiceRules) -> None:
        # In member order, so sessions open and close in a stable order.
        for user_id in sorted(users):
            presence = self._presence.get(user_id)
            should = presence is not None and not self._suspended and self._should_count(presence, rules)
            session = self._open.get(user_id)
            if session is not None and (not should or presence is None or session.channel_id != presence.channel_id):
                self._close(user_id, now)
                session = None
            if should and session is None and presence is not None:
                self._start(user_id, presence.channel_id, now)

    def _start(self, user_id: int, channel_id: int, now: float) -> None:
        key = uuid.uuid4().hex
        self._open[user_id] = _OpenSession(
            key=key, channel_id=channel_id, started_at=now, credited_until=now, opened_at=now
        )
        self._pending.opened[key] = SessionOpen(key, user_id, channel_id, now)

    def _close(self, user_id: int, now: float) -> None:
        session = self._open.pop(user_id)
        end = max(now, session.credited_until)  # never negative, never before what was credited
        if end > session.credited_until:
            self._pending.credit(user_id, session.credited_until, end)
        # The row ends when the clock says it does now; after the clock stepped back past the
        # row's start, at its start (a row never ends before it starts).
        self._pending.closed[session.key] = SessionClose(session.key, max(end, session.opened_at))


def voice_status(
    *,
    counting: bool,
    connection_lost: bool,
    in_afk: bool,
    excluded_channel: bool,
    excluded_role: bool,
    deafened: bool,
    alone: bool,
    rules: VoiceRules,
) -> str:
    """One short line for /stats: whether a member's voice time counts right now, and if not, why
    (the first reason that applies, in the order the tracker decides)."""
    if counting:
        return "counting now"
    if connection_lost:
        return "not counting: the bot lost its connection to Discord (back soon)"
    if in_afk:
        return "not counting: in the AFK channel"
    if excluded_channel:
        return "not counting: this channel is excluded from the leaderboard"
    if excluded_role:
        return "not counting: holds a role excluded from the leaderboard"
    if deafened and not rules.count_deafened:
        return "not counting while deafened"
    if alone and not rules.count_alone:
        return "not counting while alone in the channel"
    return "not counting right now"
