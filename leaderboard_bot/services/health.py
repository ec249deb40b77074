"""What the bot is doing and whether it is well: in-memory facts only, so a probe never waits on
the database (facts that need I/O, like the database size, are sampled in the background).

Status rules (also in the README):
- **failing**: the gateway has been disconnected for over ``GATEWAY_FAILING_AFTER`` seconds, or
  the database has refused writes for over ``FAILING_FLUSHES`` flush intervals.
- **degraded**: flushes are retrying, a board is backing off, or the gateway dropped recently.
- **ok**: none of that.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

GATEWAY_FAILING_AFTER = 60.0
FAILING_FLUSHES = 3
LATENCY_SAMPLES = 500  # per command, for p50/p95 in /health (the histogram keeps the long view)
EVENT_WINDOW = 60  # seconds of events-per-second history

Clock = Callable[[], float]


@dataclass
class Outcome:
    """The last run of something periodic: when, how long, and how it went."""

    at: float
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class Facts:
    """A snapshot of everything /health, /healthz and /metrics report."""

    status: str
    reason: str
    uptime: float
    gateway_latency: float | None
    events_per_second: float
    messages_counted: int
    voice_counting: int
    buffered_message_rows: int
    buffered_voice_rows: int
    spilled_rows: int  # moved from memory to the recovery file (the buffer's bound was reached)
    unsaved_since: float | None  # when the oldest activity not yet in the database was recorded
    failing_since: float | None
    recovery_file_saved: bool
    last_flush: Outcome | None
    last_refresh: dict[str, Outcome]
    cache_hit_rate: float | None
    database_bytes: int | None
    cpu_percent: float
    memory_bytes: int
    command_latency: dict[str, tuple[float, float, int]]  # command -> (p50, p95, samples)
    flush_failures: int
    spam_blocked: int
    timestamps_clamped: int
    role: str = "active"
    # Entries held per member-keyed structure (spam buckets, names, ...): each is bounded.
    memory_entries: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def outcome(o: Outcome | None) -> dict[str, Any] | None:
            return None if o is None else {"at": o.at, "seconds": o.seconds, "ok": o.ok, "detail": o.detail}

        return {
            "status": self.status,
            "reason": self.reason,
            "uptime_seconds": self.uptime,
            "gateway_latency_seconds": self.gateway_latency,
            "events_per_second": self.events_per_second,
            "messages_counted": self.messages_counted,
            "voice_sessions_counting": self.voice_counting,
            "buffered": {
                "message_rows": self.buffered_message_rows,
                "voice_rows": self.buffered_voice_rows,
                "spilled_rows": self.spilled_rows,
                "unsaved_since": self.unsaved_since,
            },
            "database_failing_since": self.failing_since,
            "recovery_file_saved": self.recovery_file_saved,
            "last_flush": outcome(self.last_flush),
            "last_board_refresh": {board: outcome(o) for board, o in self.last_refresh.items()},
            "cache_hit_rate": self.cache_hit_rate,
            "database_bytes": self.database_bytes,
            "process": {"cpu_percent": self.cpu_percent, "memory_bytes": self.memory_bytes},
            "command_latency_seconds": {
                name: {"p50": p50, "p95": p95, "samples": n} for name, (p50, p95, n) in self.command_latency.items()
            },
            "flush_failures": self.flush_failures,
            "spam_blocked": self.spam_blocked,
            "timestamps_clamped": self.timestamps_clamped,
            "role": self.role,
            "memory_entries": dict(self.memory_entries),
        }


@dataclass
class Sources:
    """Where the live facts come from: callables reading other services' in-memory state."""

    messages_counted: Callable[[], int] = lambda: 0
    voice_counting: Callable[[], int] = lambda: 0
    buffered: Callable[[], tuple[int, int]] = lambda: (0, 0)
    spilled_rows: Callable[[], int] = lambda: 0
    unsaved_since: Callable[[], float | None] = lambda: None
    timestamps_clamped: Callable[[], int] = lambda: 0
    role: Callable[[], str] = lambda: "active"  # or "standby" (services.lease)
    lease_holder: Callable[[], str | None] = lambda: None
    failing_since: Callable[[], float | None] = lambda: None
    write_waiting: Callable[[], float] = lambda: 0.0  # seconds the current write has been waiting
    recovery_file_saved: Callable[[], bool] = lambda: False
    flush_interval: Callable[[], float] = lambda: 5.0
    cache_counts: Callable[[], tuple[int, int]] = lambda: (0, 0)
    flush_failures: Callable[[], int] = lambda: 0
    spam_blocked: Callable[[], int] = lambda: 0
    gateway_latency: Callable[[], float | None] = lambda: None
    boards_backing_off: Callable[[], list[str]] = field(default=lambda: [])
    memory_entries: Callable[[], dict[str, int]] = field(default=lambda: {})


def percentile(samples: Iterable[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


class HealthMonitor:
    def __init__(self, sources: Sources | None = None, *, clock: Clock = time.time) -> None:
        self.sources = sources or Sources()
        self.clock = clock
        self.started_at = clock()
        self._events: deque[tuple[int, int]] = deque()  # (second, count) of past seconds
        self._second = 0  # the second being counted, and its count so far (no tuple per event)
        self._second_count = 0
        self._latencies: dict[str, deque[float]] = {}
        self.last_flush: Outcome | None = None
        self.last_refresh: dict[str, Outcome] = {}
        self.disconnected_since: float | None = None
        self.database_bytes: int | None = None
        self.cpu_percent = 0.0
        self.memory_bytes = 0
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # primes the counter: the next call measures since now
        self.registry = CollectorRegistry()
        self.command_seconds = Histogram(
            "leaderboard_command_seconds",
            "Time from a slash command's creation to its answer",
            ["command"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0),
        )
        self.flush_seconds = Histogram(
            "leaderboard_flush_seconds",
            "Duration of each attempt to write buffered activity",
            ["result"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0),
        )
        self.registry.register(_FactsCollector(self))

    # ------------------------------------------------------------------ recording (on the loop)

    def event(self) -> None:
        """One gateway event handled (runs for every message: an addition in the usual case)."""
        second = int(self.clock())
        if second == self._second:
            self._second_count += 1
            return
        if self._second_count:
            self._events.append((self._second, self._second_count))
        self._second, self._second_count = second, 1
        while self._events and self._events[0][0] <= second - EVENT_WINDOW:
            self._events.popleft()

    def command(self, name: str, seconds: float) -> None:
        samples = self._latencies.setdefault(name, deque(maxlen=LATENCY_SAMPLES))
        samples.append(seconds)
        self.command_seconds.labels(command=name).observe(seconds)

    def flushed(self, seconds: float, ok: bool, detail: str = "") -> None:
        self.last_flush = Outcome(self.clock(), seconds, ok, detail)
        self.flush_seconds.labels(result="ok" if ok else "failed").observe(seconds)

    def refreshed(self, board: str, seconds: float, ok: bool, detail: str = "") -> None:
        self.last_refresh[board] = Outcome(self.clock(), seconds, ok, detail)

    def connected(self) -> None:
        self.disconnected_since = None

    def disconnected(self) -> None:
        if self.disconnected_since is None:
            self.disconnected_since = self.clock()

    def sample_process(self) -> None:
        """CPU since the last sample and resident memory (cheap; run every few seconds)."""
        self.cpu_percent = self._process.cpu_percent(None)
        self.memory_bytes = int(self._process.memory_info().rss)

    # ------------------------------------------------------------------ reading

    def events_per_second(self) -> float:
        now = int(self.clock())
        recent = sum(count for second, count in self._events if second > now - EVENT_WINDOW)
        if self._second > now - EVENT_WINDOW:
            recent += self._second_count
        window = min(EVENT_WINDOW, max(1.0, self.clock() - self.started_at))
        return recent / window

    def status(self) -> tuple[str, str]:
        now = self.clock()
        sources = self.sources
        if self.disconnected_since is not None and now - self.disconnected_since > GATEWAY_FAILING_AFTER:
            return "failing", f"disconnected from Discord for {now - self.disconnected_since:.0f}s"
        failing_since = sources.failing_since()
        interval = sources.flush_interval()
        waiting = sources.write_waiting()
        if waiting > interval:  # a write hanging on a lock is trouble before it fails
            failing_since = min(failing_since or now, now - waiting)
        limit = FAILING_FLUSHES * interval
        if failing_since is not None and now - failing_since > limit:
            return "failing", f"the database has refused writes for {now - failing_since:.0f}s"
        reasons = []
        if failing_since is not None:
            reasons.append("database writes are waiting or retrying")
        if backing_off := sources.boards_backing_off():
            reasons.append(f"board(s) backing off: {', '.join(backing_off)}")
        if self.disconnected_since is not None:
            reasons.append("reconnecting to Discord")
        if reasons:
            return "degraded", "; ".join(reasons)
        if sources.role() == "standby":
            holder = sources.lease_holder() or "another instance"
            return "ok", f"standing by: {holder} counts; this one takes over if it stops"
        return "ok", "all systems normal"

    def _trouble_since(self) -> float | None:
        failing_since = self.sources.failing_since()
        waiting = self.sources.write_waiting()
        if waiting > self.sources.flush_interval():
            return min(failing_since or self.clock(), self.clock() - waiting)
        return failing_since

    def facts(self) -> Facts:
        status, reason = self.status()
        hits, misses = self.sources.cache_counts()
        message_rows, voice_rows = self.sources.buffered()
        return Facts(
            status=status,
            reason=reason,
            uptime=self.clock() - self.started_at,
            gateway_latency=self.sources.gateway_latency(),
            events_per_second=self.events_per_second(),
            messages_counted=self.sources.messages_counted(),
            voice_counting=self.sources.voice_counting(),
            buffered_message_rows=message_rows,
            buffered_voice_rows=voice_rows,
            spilled_rows=self.sources.spilled_rows(),
            unsaved_since=self.sources.unsaved_since(),
            failing_since=self._trouble_since(),
            recovery_file_saved=self.sources.recovery_file_saved(),
            last_flush=self.last_flush,
            last_refresh=dict(self.last_refresh),
            cache_hit_rate=None if hits + misses == 0 else hits / (hits + misses),
            database_bytes=self.database_bytes,
            cpu_percent=self.cpu_percent,
            memory_bytes=self.memory_bytes,
            command_latency={
                name: (percentile(s, 0.5), percentile(s, 0.95), len(s)) for name, s in self._latencies.items() if s
            },
            flush_failures=self.sources.flush_failures(),
            spam_blocked=self.sources.spam_blocked(),
            timestamps_clamped=self.sources.timestamps_clamped(),
            role=self.sources.role(),
            memory_entries=self.sources.memory_entries(),
        )


class _FactsCollector(Collector):
    """Gauges and counters read from the live facts at scrape time (no second copy to update)."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterable[Any]:
        facts = self.monitor.facts()
        status = GaugeMetricFamily("leaderboard_status", "1 for the current status", labels=["status"])
        for name in ("ok", "degraded", "failing"):
            status.add_metric([name], 1.0 if facts.status == name else 0.0)
        yield status
        role = GaugeMetricFamily("leaderboard_role", "1 for this instance's role", labels=["role"])
        for name in ("active", "standby"):
            role.add_metric([name], 1.0 if facts.role == name else 0.0)
        yield role
        yield GaugeMetricFamily("leaderboard_uptime_seconds", "Seconds since start", value=facts.uptime)
        yield CounterMetricFamily("leaderboard_messages_counted", "Messages counted", value=facts.messages_counted)
        yield CounterMetricFamily("leaderboard_flush_failures", "Failed flush attempts", value=facts.flush_failures)
        yield CounterMetricFamily("leaderboard_spam_blocked", "Messages not counted (spam)", value=facts.spam_blocked)
        yield GaugeMetricFamily("leaderboard_voice_counting", "Members whose voice time counts now",
                                value=facts.voice_counting)  # fmt: skip
        yield GaugeMetricFamily("leaderboard_events_per_second", "Gateway events handled, last minute",
                                value=facts.events_per_second)  # fmt: skip
        buffered = GaugeMetricFamily("leaderboard_buffered_rows", "Rows waiting to be written", labels=["kind"])
        buffered.add_metric(["messages"], facts.buffered_message_rows)
        buffered.add_metric(["voice"], facts.buffered_voice_rows)
        buffered.add_metric(["spilled"], facts.spilled_rows)
        yield buffered
        if facts.unsaved_since is not None:
            yield GaugeMetricFamily("leaderboard_oldest_unsaved_seconds", "Age of the oldest activity not yet written",
                                    value=max(0.0, self.monitor.clock() - facts.unsaved_since))  # fmt: skip
        yield CounterMetricFamily("leaderboard_timestamps_clamped", "Messages whose timestamp was out of bounds",
                                  value=facts.timestamps_clamped)  # fmt: skip
        if facts.cache_hit_rate is not None:
            yield GaugeMetricFamily("leaderboard_cache_hit_ratio", "Ranked-top cache hits / lookups",
                                    value=facts.cache_hit_rate)  # fmt: skip
        if facts.database_bytes is not None:
            yield GaugeMetricFamily("leaderboard_database_bytes", "Size of the database files",
                                    value=facts.database_bytes)  # fmt: skip
        if facts.gateway_latency is not None and math.isfinite(facts.gateway_latency):
            yield GaugeMetricFamily("leaderboard_gateway_latency_seconds", "Heartbeat latency",
                                    value=facts.gateway_latency)  # fmt: skip
        yield GaugeMetricFamily("leaderboard_process_cpu_percent", "Process CPU, last sample", value=facts.cpu_percent)
        yield GaugeMetricFamily("leaderboard_process_memory_bytes", "Resident memory", value=facts.memory_bytes)
        entries = GaugeMetricFamily("leaderboard_memory_entries", "Entries held per member-keyed structure",
                                    labels=["structure"])  # fmt: skip
        for name, count in sorted(facts.memory_entries.items()):
            entries.add_metric([name], count)
        yield entries


def database_bytes(path: str) -> int | None:
    """The SQLite file and its WAL, for sampling off the loop; None for an in-memory database.
    (PostgreSQL's size is the server's ``pg_database_size``: exts.health reads it on a reader.)"""
    if path == ":memory:":
        return None
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))
