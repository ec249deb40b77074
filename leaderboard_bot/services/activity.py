"""The activity buffer: counts messages and voice time in memory and writes them in batches.

Everything here runs on the event loop (no locks needed for the in-memory state); the only
blocking work, the batch write, goes through ``Storage.run`` to the database thread. Which
season a flush writes is not known here: the caller (the season owner) says so.

While the database refuses writes, the buffers stay merged per member and day (the work of a
retry does not grow with the outage) and everything unwritten is saved to the recovery file at
every failed attempt, and every ``snapshot_every`` seconds while a write hangs, so a crash
loses at most that much. The buffers are bounded: at ``max_pending_rows`` rows (member x day) the
oldest tenth is spilled to the recovery file (see services.recovery) and written back, first,
once the database accepts writes again. Nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import math
import time
import traceback
from collections import Counter
from collections.abc import Callable
from itertools import islice

from loguru import logger

from ..db import Storage, repository
from ..db.storage import StorageError
from ..domain import (
    ActivityBatch,
    Counts,
    LeaseClaim,
    NameInfo,
    SeasonRoll,
    Unwritten,
    counts_per_member,
    shift_day,
    window_of,
)
from .names import NameService
from .ratelimit import MessageGuard
from .recovery import RecoveryFile
from .voice import VoiceClock, VoiceDrain, VoicePresence, VoiceTracker

Clock = Callable[[], float]
SeasonNumber = Callable[[], int]  # the season owner's answer to "which season is it now?"
FlushListener = Callable[[ActivityBatch], None]  # runs inside the write lock: must not block

FUTURE_TOLERANCE = 10.0  # a message stamped later than this after our clock is clamped to now
PAST_TOLERANCE = 15 * 60.0  # ... and one stamped this long before the last good write, to it
FAILURE_REMINDER_EVERY = 300.0  # while writes keep failing, one reminder line this often
SHUTDOWN_BUDGET = 3.5  # a stop ends within this, with the data in the database or on disk
PRUNE_BATCH = 500  # closed voice sessions deleted per transaction: the write lock is held briefly
RECOVERY_MARKER_RETENTION = 30 * 86_400.0
HELD_BACK_MEMBERS = 10_000  # members whose held-back messages today are remembered (for /stats)
MAX_PENDING_ROWS = 1_000_000  # (member, day) rows held in memory; past it the oldest go to disk
SPILL_SHARE = 0.1  # the share of the bound moved to disk at once (so a full buffer spills rarely)
# A burst of new members (a raid, an announcement) is written at this many rows instead of waiting
# for the flush interval: what a burst holds in memory (the rows, the names to write) stays bounded,
# and with it the allocator's high-water mark, which a process never fully gives back.
EARLY_FLUSH_ROWS = 20_000
SPILL_RETRY_AFTER = 30.0  # after the disk refused a spill, the rows stay in memory this long


class ActivityService:
    def __init__(
        self,
        storage: Storage,
        *,
        guild_id: int,
        voice: VoiceTracker,
        guard: MessageGuard,
        names: NameService,
        clock: Clock = time.time,
        monotonic: Clock | None = None,
        recovery: RecoveryFile | None = None,
        snapshot_every: Callable[[], float] = lambda: 60.0,
        earliest_event: Callable[[], float] = lambda: 0.0,
        current_season: SeasonNumber = lambda: 1,
        observe_flush: Callable[[float, bool, str], None] | None = None,
        max_pending_rows: int = MAX_PENDING_ROWS,
        claim_lease: Callable[[bool], LeaseClaim | None] = lambda release: None,
    ) -> None:
        self.storage = storage
        self.recovery = recovery
        self.guild_id = guild_id
        self.voice = voice
        self.guard = guard
        self.names = names
        self.clock = clock
        # Voice time is wall time checked against ``monotonic`` (None: the wall clock is trusted,
        # as with a fake one in tests): a step of the wall clock is never credited (voice_now).
        self.voice_clock = VoiceClock(lambda: self.clock(), monotonic)
        self.clock_jumps = 0
        self.snapshot_every = snapshot_every
        self.earliest_event = earliest_event  # the current season's start: nothing counts before it
        self.current_season = current_season  # where spilled rows belong if read back at the next start
        self.season_end: Callable[[], float] = lambda: math.inf  # set by the season service (its end)
        self.observe_flush = observe_flush  # (seconds, ok, detail) after every write attempt
        self._messages: Counter[tuple[str, int]] = Counter()
        self.calendar = voice.calendar  # one calendar for messages and voice: TIMEZONE's days
        self._day_start = float("inf")  # the day of the last message counted: [start, end) and its name
        self._day_end = float("-inf")
        self._day = ""
        self._flush_lock = asyncio.Lock()
        self._listeners: list[FlushListener] = []
        self._next_sequence = 1
        self._in_flight: ActivityBatch | None = None
        self._in_flight_since = 0.0
        self._rest_season = 0
        self._failing_since: float | None = None
        self._last_failure_line = 0.0
        self._saved_to_disk = False
        self._saved_up_to = 0  # the highest part number in this process's recovery file
        self._shutdown_saved = False  # after a stop saved the file, nothing may remove it
        self.committed_sequence = 0  # the number of the last batch this process committed
        self.committed_roll: SeasonRoll | None = None  # the last season end this process committed
        self._clamped_logged = False
        self.flush_failures = 0
        self.messages_counted = 0
        self.timestamps_clamped = 0
        self.last_flush_at: float | None = None
        self.last_error: StorageError | None = None
        self.max_pending_rows = max_pending_rows
        self.early_flush_rows = EARLY_FLUSH_ROWS
        # Told (once per batch) when the buffers reach early_flush_rows while writes succeed: the
        # bot then flushes without waiting for the interval (exts.tracking).
        self.on_many_pending: Callable[[], None] | None = None
        self._early_flush_asked = False
        self.claim_lease = claim_lease  # what each write asserts (services.lease); True: release it
        self.on_lease_lost: Callable[[str], None] | None = None
        self.fenced = False  # lost the lease: never writes again (another instance counts)
        self._releasing = False
        self._spilled: dict[int, int] = {}  # write number -> rows, of parts only in the recovery file
        self._spill_task: asyncio.Task[None] | None = None
        self._spill_retry_at = 0.0
        self._unbounded_logged = False
        self.rows_spilled = 0
        self._held_back: dict[int, int] = {}
        self._held_back_day = ""
        self._started_at = clock()

    # ------------------------------------------------------------------ recording

    def record_message(self, user_id: int, sent_at: float | None = None) -> bool:
        """Count one message if the member's anti-spam bucket allows it. ``sent_at`` is when it
        was sent (its snowflake): it decides the day and the spam bucket, so messages handled
        late in one burst (after a stall or a RESUME) are judged as they were sent."""
        now = self.clock()  # once per message: the rest of this runs for every message
        if sent_at is None:
            at = judged = now
        else:
            at = self._event_time(sent_at, now)
            # The spam bucket takes the message's own time even when it is older than the floor
            # (an old time can never mint tokens); clamping it too would turn a calm replay into a burst.
            judged = sent_at if sent_at <= now + FUTURE_TOLERANCE else at
        if not (self._day_start <= at < self._day_end):  # the day's name is found once per day, not per message
            self._day_start, self._day_end, self._day = self.calendar.span(at)
        if not self.guard.allow(user_id, judged):
            self._note_held_back(user_id, self._day)
            return False
        key = (self._day, user_id)
        messages = self._messages
        count = messages.get(key)
        self.messages_counted += 1
        if count is not None:
            messages[key] = count + 1
            return True
        messages[key] = 1
        # Only a new row can reach the bounds.
        rows = len(messages) + self.voice.pending_rows()
        if rows >= self.max_pending_rows:
            self._request_spill()
        elif rows >= self.early_flush_rows and not self._early_flush_asked and self._failing_since is None:
            self._early_flush_asked = True  # (while writes fail, the rows wait for the next attempt)
            if self.on_many_pending is not None:
                self.on_many_pending()
        return True

    def _event_time(self, sent_at: float, now: float) -> float:
        floor = self.earliest_event()
        if self.last_flush_at is not None:
            floor = max(floor, self.last_flush_at - PAST_TOLERANCE)
        if sent_at > now + FUTURE_TOLERANCE:
            return self._clamped(sent_at, now, "in the future")
        if sent_at < floor:
            return self._clamped(sent_at, min(floor, now), "too far in the past")
        return sent_at

    def _clamped(self, sent_at: float, to: float, why: str) -> float:
        self.timestamps_clamped += 1
        if not self._clamped_logged:
            self._clamped_logged = True
            logger.warning(
                "a message's timestamp is {} ({:.0f}s from this machine's clock); it is counted at {:.0f} "
                "instead. Check the system clock (NTP) if this repeats (logged once)",
                why,
                sent_at - self.clock(),
                to,
            )
        return to

    def voice_now(self) -> float:
        """The wall time to give the voice tracker now. Every voice path reads it (first), so a
        step of the wall clock since the last reading is found before any time is credited: open
        sessions skip it (VoiceTracker.clock_jumped), and it is logged once, with its size. Time
        in voice is thus what the monotonic clock measured, on the days the wall clock showed."""
        now, jump = self.voice_clock.read()
        if jump is not None:
            self.clock_jumps += 1
            self.voice.clock_jumped(jump.before, jump.after)
            logger.warning(
                "the system clock jumped {} by {:.0f}s ({}); the jump is not counted as voice time for the {} "
                "member(s) in voice, only the real time elapsed",
                "forward" if jump.size > 0 else "back",
                abs(jump.size),
                "an NTP correction, a manual change or a resume from suspend"
                if jump.size > 0
                else "an NTP correction or a manual change",
                len(self.voice.counting_users()),
            )
        return now

    def _checkpoint_voice(self, now: float) -> VoiceDrain:
        """The voice credited up to ``now``, read earlier (a write waited in between). A clock step
        since the last reading is skipped first; after a step back, ``now`` is past the new clock
        and would credit the step, so the clock's reading of this moment is used instead. Never
        past the current season's end (``season_end``): while its reset is due (the database
        locked, a write hanging), time since then belongs to the next season, and stays in the
        open sessions until the reset has opened it. Every credit goes through here (writes,
        recovery-file snapshots, spills)."""
        return self.voice.checkpoint(min(now, self.voice_now(), self.season_end()))

    def record_voice(self, user_id: int, presence: VoicePresence | None, now: float | None = None) -> None:
        at = self.voice_now()
        self.voice.update(user_id, presence, at if now is None else now)

    def reconcile_voice(self, actual: dict[int, VoicePresence], gone_at: float | None = None) -> None:
        self.voice.reconcile(actual, self.voice_now(), gone_at)

    def hold_voice(self) -> None:
        """The gateway connection dropped: credit nothing past now until it resumes or not."""
        self.voice.hold(self.voice_now())

    def resume_voice(self) -> None:
        """The session resumed and Discord replayed the gap: it counts."""
        self.voice.release()

    def suspend_voice(self) -> None:
        """Events were lost: the gap is never credited (see VoiceTracker.suspend)."""
        self.voice.suspend(self.voice_now())

    def forget(self, user_id: int) -> int:
        """Drop the member's counts not yet written (``/privacy delete``): their message rows,
        and their voice credit and sessions waiting for a flush. Call with :meth:`quiescent` held
        (no write under way) and after they stopped counting. Returns the rows dropped."""
        mine = [key for key in self._messages if key[1] == user_id]
        for key in mine:
            del self._messages[key]
        self._held_back.pop(user_id, None)
        drained = self._checkpoint_voice(self.voice_now())  # take everything, give back the rest
        opened = [key for key, session in drained.opened.items() if session.user_id == user_id]
        seconds = [key for key in drained.seconds if key[1] == user_id]
        for key in seconds:
            del drained.seconds[key]
        for session_key in opened:
            del drained.opened[session_key]
            drained.closed.pop(session_key, None)
        self.voice.restore(drained)
        return len(mine) + len(seconds) + len(opened)

    def pending_messages(self, user_id: int) -> int:
        return sum(n for (_, user), n in self._messages.items() if user == user_id)

    def unflushed_voice_seconds(self, user_id: int) -> float:
        in_flight = self._in_flight
        extra = sum(s for (_, u), s in in_flight.voice.items() if u == user_id) if in_flight else 0.0
        return self.voice.unflushed_seconds(user_id, self.voice_now()) + extra

    def _note_held_back(self, user_id: int, day: str) -> None:
        """Count what the anti-spam limit held back today, per member (for /stats). Only members
        held back have an entry; a new day, or more than HELD_BACK_MEMBERS of them, starts over."""
        if day != self._held_back_day or len(self._held_back) >= HELD_BACK_MEMBERS:
            self._held_back_day, self._held_back = day, {}
        self._held_back[user_id] = self._held_back.get(user_id, 0) + 1

    def held_back_today(self, user_id: int) -> int:
        """Messages of the member the anti-spam limit did not count today."""
        if self._held_back_day != self.calendar.day_of(self.clock()):
            return 0
        return self._held_back.get(user_id, 0)

    def unwritten(self, season: int) -> Unwritten:
        """Everyone's counts not yet in the database, as of now (see Unwritten), for ``season``,
        the current one, or a window's scope. One pass over the buffers. While the write that ends
        ``season`` is under way, the buffers already belong to the next season, so only that write
        is added."""
        if window_of(season) is not None:
            return self._unwritten_in_window(season)
        in_flight = self._in_flight
        rolling = in_flight is not None and in_flight.roll is not None and in_flight.season == season
        buffered = (
            {}
            if rolling
            else counts_per_member(self._messages, self.voice.unflushed_by_member(self.voice_now()).items())
        )
        if in_flight is None or in_flight.season != season:
            return Unwritten(committed=self.committed_sequence, buffered=buffered)
        return Unwritten(
            committed=self.committed_sequence,
            in_flight_sequence=in_flight.sequence,
            buffered=buffered,
            in_flight=in_flight.per_member(),
        )

    def _unwritten_in_window(self, scope: int) -> Unwritten:
        """What a window lacks: the buffered and in-flight counts on its days, as the write that
        takes them will add them (the days from the window's first up to the writer's today).
        Between midnight and the first write after it, the stored window still ends yesterday
        (a reader passes over a window whose days are all gone: ranking.read_live)."""
        window = window_of(scope)
        assert window is not None
        now = self.voice_now()
        today = self.calendar.day_of(now)
        first_day = None if window.days is None else shift_day(today, 1 - window.days)
        buffered = counts_per_member(
            self._messages if first_day is None else {k: n for k, n in self._messages.items() if k[0] >= first_day},
            self.voice.unflushed_by_member(now, first_day).items(),
        )
        in_flight = self._in_flight
        if in_flight is None:
            return Unwritten(committed=self.committed_sequence, buffered=buffered, day=today)
        flight_first = None if window.days is None else shift_day(in_flight.today or today, 1 - window.days)
        flight: dict[int, Counts] = counts_per_member(
            {k: n for k, n in in_flight.messages.items() if flight_first is None or k[0] >= flight_first},
            ((user, s) for (day, user), s in in_flight.voice.items() if flight_first is None or day >= flight_first),
        )
        return Unwritten(
            committed=self.committed_sequence,
            in_flight_sequence=in_flight.sequence,
            buffered=buffered,
            in_flight=flight,
            day=today,
        )

    def live_session_seconds(self, user_id: int) -> float | None:
        return self.voice.session_seconds(user_id, self.voice_now())

    def add_flush_listener(self, listener: FlushListener) -> None:
        self._listeners.append(listener)

    def write_waiting(self) -> float:
        """How long the write under way has been waiting for the database (0 when none is)."""
        return 0.0 if self._in_flight is None else max(0.0, self.clock() - self._in_flight_since)

    @property
    def saved_to_disk(self) -> bool:
        """Whether unwritten counts are in this process's recovery file right now."""
        return self._saved_to_disk

    @property
    def failing_since(self) -> float | None:
        """When writes started failing (None while they work)."""
        return self._failing_since

    def buffered(self) -> tuple[int, int]:
        """(message rows, voice rows) waiting to be written, in memory."""
        return len(self._messages), self.voice.pending_rows()

    def unsaved_since(self) -> float | None:
        """When the oldest activity not yet in the database was recorded (None when all is written):
        everything waiting arrived after the last good write (or this process's start)."""
        in_memory = self._messages or self.voice.pending_rows() or self._in_flight is not None
        if not (in_memory or self._spilled):
            return None
        return self.last_flush_at if self.last_flush_at is not None else self._started_at

    @property
    def spilled_rows(self) -> int:
        """Rows waiting to be written that were moved from memory to the recovery file."""
        return sum(self._spilled.values())

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Write what earlier runs saved to disk, then close sessions a crash left open (at
        their heartbeat, so downtime is never credited)."""
        if self.recovery is not None:
            stored = await self.recovery.apply_all(self.storage, self.guild_id)
        else:
            key = repository.WRITE_SEQUENCE_KEY
            stored = int(await self.storage.run(repository.get_setting, self.guild_id, key, 0))
        self._next_sequence = stored + 1
        self.committed_sequence = max(self.committed_sequence, stored)  # what the database holds now
        await self.storage.run(
            repository.prune_recovery_markers, self.guild_id, self.clock() - RECOVERY_MARKER_RETENTION
        )
        closed = await self.storage.run(repository.close_orphan_sessions, self.guild_id)
        if closed:
            logger.info("closed {} voice session(s) left open by an unclean stop, at their last heartbeat", closed)
        started = time.perf_counter()
        today = self.calendar.day_of(self.clock())
        if await self.storage.run(repository.prepare_windows, self.guild_id, today, self.calendar.zone_name):
            logger.info(
                "built the today, week, month and all-time boards from the stored activity in {:.1f}s",
                time.perf_counter() - started,
            )
        started = time.perf_counter()
        if placed := await self.storage.run(repository.prepare_placings, self.guild_id):
            logger.info(
                "recorded the members' best placings of {} finished season(s) in {:.1f}s",
                placed,
                time.perf_counter() - started,
            )
        return closed

    async def prune_history(self, retention: float, pause: float = 0.1) -> int:
        """Delete voice sessions that ended over ``retention`` seconds ago, in small batches with
        a pause between them so flushes and commands get the database in between."""
        cutoff = self.clock() - retention
        total = 0
        while True:
            deleted = await self.storage.run(repository.prune_closed_sessions, self.guild_id, cutoff, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                return total
            await asyncio.sleep(pause)

    def quiescent(self) -> asyncio.Lock:
        """Hold this to read stored totals and the buffers together, or to write with
        :meth:`write_locked`: no flush moves data between them meanwhile."""
        return self._flush_lock

    async def flush(self, season: SeasonNumber, now: float | None = None) -> bool:
        """Write everything buffered into the season ``season()`` names at the moment of writing
        (asked under the lock, so a season ending meanwhile is never written into)."""
        async with self._flush_lock:
            return await self.write_locked(season(), now)

    async def write_locked(self, season: int, now: float | None = None, *, roll: SeasonRoll | None = None) -> bool:
        """Write everything buffered into ``season`` in one transaction; the caller holds
        :meth:`quiescent`. On failure the data goes back into the buffers (and to the recovery
        file) and the next flush retries it: nothing counted is dropped. With ``roll``, the same
        transaction ends the season, and the caller moves on to the next one before releasing.
        Spilled parts are written first, each in its own transaction: their numbers are lower."""
        if self.fenced:
            return False
        now = self.clock() if now is None else now
        if self._spilled and not await self._write_spilled(season, now):
            return False
        batch = self._take(season, now)
        batch.roll = roll
        return await self._commit(batch, now, spilled=False)

    async def _write_spilled(self, season: int, now: float) -> bool:
        assert self.recovery is not None  # only a recovery file takes spills
        while self._spilled:
            # Re-read each time: a part spilled while an earlier one is written gets a higher
            # number, still lower than the batch this flush writes next, so it goes first too.
            sequence = min(self._spilled)
            part = await self.recovery.load_spilled(sequence)
            if part is None:
                if sequence in self._spilled:  # (not a spill the disk refused meanwhile: that one is in memory)
                    logger.error("the spilled counts numbered {} are gone from {}", sequence, self.recovery.own_path)
                    self._spilled.pop(sequence, None)
                continue
            part.season = season  # like the buffers, they belong to the season being written
            part.heartbeat_at = now if self.last_flush_at is None else self.last_flush_at  # no session credit
            part.lease = self.claim_lease(self._releasing)
            if not await self._commit(part, now, spilled=True):
                return False
            self._spilled.pop(sequence, None)
        return True

    async def _commit(self, batch: ActivityBatch, now: float, *, spilled: bool) -> bool:
        self._in_flight = batch
        self._in_flight_since = self.clock()
        started = time.perf_counter()
        try:
            error, cancelled = await self._write(batch)
        finally:
            self._in_flight = None
        seconds = time.perf_counter() - started
        if self.observe_flush is not None and not isinstance(error, asyncio.CancelledError):
            detail = "" if error is None else str(error)
            self.observe_flush(seconds, error is None, detail)
        if error is None:
            _log_flush(batch, seconds, spilled=spilled)
        if isinstance(error, asyncio.CancelledError):
            # The loop itself is closing (the end of a stop that saved everything to disk).
            if not spilled:
                self._give_back(batch)
            raise asyncio.CancelledError
        if isinstance(error, StorageError) and error.kind == "lease lost":
            await self._fence(error, batch)
            return False
        if error is not None:
            if not spilled:  # a spilled part stays in the file, under its own number
                self._give_back(batch)
            self._note_failure(error, now)
            await self._save_snapshot(batch.season)  # the roll did not happen: all of it is still this season
            if cancelled:
                raise asyncio.CancelledError
            return False
        self.committed_sequence = max(self.committed_sequence, batch.sequence or 0)
        if batch.roll is not None:
            self.committed_roll = batch.roll
        if spilled:
            self._spilled.pop(batch.sequence or 0, None)
        self._note_success(now)
        for listener in self._listeners:
            try:
                listener(batch)
            except Exception:
                logger.exception("flush listener failed")
        if cancelled:
            raise asyncio.CancelledError
        return True

    def _take(self, season: int, now: float) -> ActivityBatch:
        """The buffers as one batch; time in voice credited up to ``now``, or the season's end if
        it has passed (see :meth:`_checkpoint_voice`)."""
        messages, self._messages = self._messages, Counter()
        self._early_flush_asked = False
        credited_until = min(now, self.season_end())
        drained = self._checkpoint_voice(credited_until)
        # The heartbeat: open sessions are credited up to here (a crash closes them at it).
        batch = self._batch(season, credited_until, messages, drained, self.names.take_unwritten())
        batch.lease = self.claim_lease(self._releasing)
        batch.today = self.calendar.day_of(now)
        batch.sequence = self._next_sequence
        self._next_sequence += 1
        return batch

    def _give_back(self, batch: ActivityBatch) -> None:
        # The returned rows are older than anything recorded since: they go first, so that a
        # spill, which takes rows in order, takes the oldest.
        merged = Counter(batch.messages)
        merged.update(self._messages)
        self._messages = merged
        self.names.restore_unwritten(batch.names)
        self.voice.restore(
            VoiceDrain(
                seconds=dict(batch.voice),
                opened={o.key: o for o in batch.opened},
                closed={c.key: c for c in batch.closed},
            )
        )
        if len(self._messages) + self.voice.pending_rows() >= self.max_pending_rows:
            self._request_spill()  # a spill asked for during the write found the buffers empty

    def _note_failure(self, error: BaseException, now: float) -> None:
        self.flush_failures += 1
        self.last_error = error if isinstance(error, StorageError) else StorageError.describe(error)
        first = self._failing_since is None
        if first:
            self._failing_since = now
        if first or now - self._last_failure_line >= FAILURE_REMINDER_EVERY:
            self._last_failure_line = now
            advice = self.last_error.advice
            # (Whether the recovery file could take them is said by its own lines.)
            logger.warning(
                "{} ({}){}; {} message(s) kept in memory and retried every flush",
                "cannot write activity"
                if first
                else f"still cannot write activity after {now - (self._failing_since or now):.0f}s",
                self.last_error,
                f": {advice}" if advice else "",
                sum(self._messages.values()),
            )

    def _note_success(self, now: float) -> None:
        self.last_flush_at = now
        if self._failing_since is not None:
            logger.info(
                "the database accepts writes again after {:.0f}s; everything kept meanwhile is written",
                now - self._failing_since,
            )
        self._failing_since = None
        self.last_error = None
        if self._saved_to_disk and self.recovery is not None and not self._shutdown_saved:
            task: asyncio.Future[object]
            if self.committed_sequence >= self._saved_up_to and not self._spilled:
                self._saved_to_disk = False
                task = asyncio.ensure_future(self.recovery.clear())
            else:
                # The file also holds what arrived while this write hung (a higher number): it
                # must stay until that is written too, so rewrite it with what is still unwritten.
                task = asyncio.ensure_future(self._save_snapshot(self._rest_season))
            task.add_done_callback(lambda t: t.exception())

    async def _write(self, batch: ActivityBatch) -> tuple[BaseException | None, bool]:
        """Run the batch write to its end even if the caller is cancelled meanwhile (a task loop
        being stopped): the data is already out of the buffers, so the outcome must be known.
        While it hangs (a locked database), the unwritten data is saved to disk regularly."""
        write = asyncio.ensure_future(self.storage.run(repository.apply_batch, batch))
        cancelled = False
        next_snapshot = self.clock() + self.snapshot_every()
        while not write.done():
            try:
                await asyncio.wait_for(asyncio.shield(write), max(0.05, next_snapshot - self.clock()))
            except TimeoutError:
                # Its own try: a cancel or an error while saving must not end the wait, or the
                # batch (out of the buffers, not yet written) would be in neither place.
                try:  # (_snapshot files the rest of a roll under the next season)
                    await self._save_snapshot(batch.season)
                except asyncio.CancelledError:
                    cancelled = True
                except Exception:
                    logger.exception("could not save the unwritten counts to disk; the write goes on")
                next_snapshot = self.clock() + self.snapshot_every()
            except asyncio.CancelledError:
                cancelled = True
            except Exception:
                break
        if write.cancelled():
            return asyncio.CancelledError("the database write was cancelled"), cancelled
        error = write.exception()
        del write
        if error is not None:
            # Its traceback runs through this frame, which held the write and so the error: a
            # cycle that kept every failed batch until a full garbage collection (an outage of
            # a busy server is many such batches).
            traceback.clear_frames(error.__traceback__)
            error.__traceback__ = None
        return error, cancelled

    # ------------------------------------------------------------------ the recovery file

    def _snapshot(self, season: int, now: float) -> list[ActivityBatch]:
        """Everything unwritten as numbered parts: the write under way (if any) keeps its own
        number; the rest gets the number of the next write, which will include all of it."""
        in_flight = self._in_flight
        # A spilled part being written is in the file already (carried over under its number).
        parts = [in_flight] if in_flight is not None and (in_flight.sequence or 0) not in self._spilled else []
        if in_flight is not None and in_flight.roll is not None:
            season = in_flight.season + 1  # the rest belongs to the season the roll opens
        self._rest_season = season
        drained = self._checkpoint_voice(now)
        self.voice.restore(drained)  # the buffers stay as they are; only a copy goes to disk
        voice = self.voice.pending()
        # Time past the season's end stays in the open sessions until the reset (not credited):
        # the file holds it too, or a crash meanwhile would lose it. Filed with the rest (under the
        # next season while the reset is under way; under this one if a crash comes first).
        voice.absorb(self.voice.uncredited(self.season_end(), min(now, self.voice_now())))
        rest = self._batch(season, now, Counter(self._messages), voice, self.names.unwritten())
        rest.sequence = self._next_sequence
        if not rest.is_empty():
            parts.append(rest)
        return parts

    def _note_saved(self, parts: list[ActivityBatch]) -> None:
        self._saved_to_disk = True
        self._saved_up_to = max([p.sequence or 0 for p in parts] + list(self._spilled))

    async def _save_snapshot(self, season: int) -> bool:
        if self.recovery is None:
            return False
        parts = self._snapshot(season, self.clock())
        if not parts and not self._spilled:
            return True
        saved = await self.recovery.save(parts, committed=self.committed_sequence, season=self._rest_season)
        if saved:
            self._note_saved(parts)
        return saved

    # ------------------------------------------------------------------ losing the lease

    async def _fence(self, error: StorageError, refused: ActivityBatch) -> None:
        """Another instance holds the lease and counts from its takeover on. What is buffered here
        cannot be split into before and after that moment, so it is dropped, with the recovery
        file: activity before the takeover that this instance had not written is lost, never
        counted twice. (``refused``: the write that found the lease gone, dropped as well.)"""
        self.fenced = True
        messages = sum(self._messages.values()) + sum(refused.messages.values())
        self._messages = Counter()
        now = self.voice_now()
        self.voice.stop_all(now)
        self.voice.checkpoint(now)
        self.names.take_unwritten()
        self._spilled.clear()
        if self.recovery is not None:
            await self.recovery.clear()
        self._saved_to_disk = False
        logger.error(
            "this instance lost the lease ({}): another instance counts for this server now. {} unwritten "
            "message(s) held here are dropped so that nothing is counted twice; stopping",
            error,
            messages,
        )
        if self.on_lease_lost is not None:
            self.on_lease_lost(str(error))

    # ------------------------------------------------------------------ spilling

    def _request_spill(self) -> None:
        if self.fenced:
            return
        if self.recovery is None:
            if not self._unbounded_logged:
                self._unbounded_logged = True
                logger.warning(
                    "{} rows of activity are waiting in memory and an in-memory database has no recovery file "
                    "to spill them to; they stay in memory (logged once)",
                    self.max_pending_rows,
                )
            return
        if (self._spill_task is not None and not self._spill_task.done()) or self.clock() < self._spill_retry_at:
            return
        try:
            self._spill_task = asyncio.get_running_loop().create_task(self._spill())
        except RuntimeError:  # no loop (a synchronous caller): the next message asks again
            return

    async def _spill(self) -> None:
        """Move the oldest rows out of memory into a numbered part of the recovery file. The rows
        leave the buffers before anything is awaited, so no flush can take them twice; if the
        disk refuses them, they come back (as the oldest) and a spill is tried again later."""
        while len(self._messages) + self.voice.pending_rows() >= self.max_pending_rows and not self.fenced:
            if not await self._spill_once():
                return
        if self.fenced and self.recovery is not None:
            await self.recovery.clear()  # a save queued before the fence must not outlive it

    async def _spill_once(self) -> bool:
        assert self.recovery is not None
        now = self.clock()
        over = len(self._messages) + self.voice.pending_rows() - self.max_pending_rows
        target = max(1, int(self.max_pending_rows * SPILL_SHARE)) + max(0, over)
        messages = dict(islice(self._messages.items(), target))  # insertion order: the oldest first
        for key in messages:
            del self._messages[key]
        drained = self._checkpoint_voice(now)
        voice = dict(islice(drained.seconds.items(), max(0, target - len(messages))))
        for key in voice:
            del drained.seconds[key]
        self.voice.restore(drained)
        if not messages and not voice:
            return False
        in_flight = self._in_flight
        season = self.current_season()
        if in_flight is not None and in_flight.roll is not None:
            season = in_flight.season + 1  # as in _snapshot: what is not in the roll belongs to the next season
        part = ActivityBatch(guild_id=self.guild_id, season=season, heartbeat_at=now, messages=messages, voice=voice)
        part.sequence = self._next_sequence
        self._next_sequence += 1
        self._spilled[part.sequence] = len(messages) + len(voice)
        rest = self._snapshot(season, now)  # also the rest, now under a higher number
        saved = await self.recovery.save(rest, spilled=[part], committed=self.committed_sequence, season=season)
        if not saved:
            self._spilled.pop(part.sequence, None)
            self._give_back(part)
            self._spill_retry_at = self.clock() + SPILL_RETRY_AFTER
            return False
        self._note_saved(rest)
        self.rows_spilled += len(messages) + len(voice)
        logger.warning(
            "{} rows of activity waiting to be written were moved from memory to {} (the buffer is bounded at "
            "{}); they are written back as soon as the database accepts writes",
            len(messages) + len(voice),
            self.recovery.own_path,
            self.max_pending_rows,
        )
        return True

    async def shutdown(self, season: SeasonNumber, *, budget: float = SHUTDOWN_BUDGET) -> bool:
        """Close voice sessions at shutdown time and write everything, within ``budget`` seconds
        whatever the database does: what cannot be written in time goes to the recovery file
        and is written at the next start. Returns False when the database did not take it all."""
        started = time.monotonic()
        now = self.voice_now()
        self.voice.stop_all(now)
        if self.fenced:
            return True  # another instance counts: nothing here may be written or saved
        self._releasing = True  # the last write hands the lease on: a standby takes over at once

        def left() -> float:
            return max(0.0, budget - (time.monotonic() - started))

        try:
            await asyncio.wait_for(self._flush_lock.acquire(), left() / 2)
        except TimeoutError:
            # A write is hanging (a locked database); the file keeps it under its own number.
            await self._save_at_shutdown(season())
            return False
        write = asyncio.ensure_future(self.write_locked(season(), now))
        try:
            done, _ = await asyncio.wait({write}, timeout=left() * 0.6)
            if write in done and not write.cancelled() and write.exception() is None and write.result():
                return True
            # Failed, or still waiting on the database (then the batch in flight keeps its number).
            await self._save_at_shutdown(season())
            return False
        finally:
            if write.done():
                self._flush_lock.release()

    async def _save_at_shutdown(self, season: int) -> None:
        if self.recovery is None:
            logger.error("no recovery file for an in-memory database: the unwritten activity is lost")
            return
        parts = self._snapshot(season, self.clock())
        if not parts:
            return
        try:
            saved = await asyncio.wait_for(
                self.recovery.save(parts, committed=self.committed_sequence, season=self._rest_season), 1.0
            )
        except TimeoutError:
            saved = False
        if not saved:
            logger.error("could not save the unwritten counts to disk: they are lost")
            return
        self._note_saved(parts)
        self._shutdown_saved = True
        logger.error(
            "the database could not be written at shutdown; saved {} message(s) and {:.0f}s of voice time to {}: "
            "they are written at the next start",
            sum(sum(p.messages.values()) for p in parts),
            sum(sum(p.voice.values()) for p in parts),
            self.recovery.own_path,
        )

    def _batch(
        self,
        season: int,
        now: float,
        messages: Counter[tuple[str, int]],
        drained: VoiceDrain,
        names: dict[int, NameInfo],
    ) -> ActivityBatch:
        return ActivityBatch(
            guild_id=self.guild_id,
            season=season,
            heartbeat_at=now,
            messages=dict(messages),
            voice=dict(drained.seconds),
            opened=list(drained.opened.values()),
            closed=list(drained.closed.values()),
            names=dict(names),
        )


def _log_flush(batch: ActivityBatch, seconds: float, *, spilled: bool) -> None:
    """One line per write, with its duration; an empty flush (nothing happened) only at DEBUG.
    Failed attempts are told by _note_failure, rate-limited, so an outage is not a log storm."""
    messages = sum(batch.messages.values())
    voice = sum(batch.voice.values())
    members = len({user for _, user in batch.messages} | {user for _, user in batch.voice})
    level = "DEBUG" if batch.is_empty() and batch.roll is None else "INFO"
    logger.bind(
        guild_id=batch.guild_id,
        season=batch.season,
        sequence=batch.sequence,
        members=members,
        duration_ms=round(seconds * 1000, 1),
    ).log(
        level,
        "flush {}wrote {} message(s) and {:.0f}s of voice for {} member(s) into season {} in {:.0f} ms",
        "(spilled part) " if spilled else "",
        messages,
        voice,
        members,
        batch.season,
        seconds * 1000,
    )
