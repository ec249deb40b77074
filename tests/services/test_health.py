"""Health status rules, the live facts, and the Prometheus registry read back with its own parser."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from leaderboard_bot.services.health import (
    FAILING_FLUSHES,
    GATEWAY_FAILING_AFTER,
    HealthMonitor,
    Sources,
    percentile,
)
from leaderboard_bot.ui.embeds import health_embed
from tests.factories import FakeClock


def monitor(**sources: object) -> tuple[HealthMonitor, FakeClock]:
    clock = FakeClock(1_000.0)
    return HealthMonitor(Sources(**sources), clock=clock), clock  # type: ignore[arg-type]


def test_ok_when_nothing_is_wrong() -> None:
    health, _ = monitor()
    assert health.status() == ("ok", "all systems normal")


def test_retrying_flushes_degrade_then_fail_after_three_intervals() -> None:
    failing_since: list[float | None] = [None]
    health, clock = monitor(failing_since=lambda: failing_since[0], flush_interval=lambda: 5.0)
    failing_since[0] = clock.now
    clock.advance(FAILING_FLUSHES * 5.0)
    status, reason = health.status()
    assert status == "degraded" and "retrying" in reason
    assert health.facts().failing_since == clock.now - FAILING_FLUSHES * 5.0
    clock.advance(0.1)
    status, reason = health.status()
    assert status == "failing" and "refused writes" in reason


def test_a_gateway_drop_degrades_then_fails_after_a_minute() -> None:
    health, clock = monitor()
    health.disconnected()
    assert health.status()[0] == "degraded"
    clock.advance(GATEWAY_FAILING_AFTER + 1)
    assert health.status()[0] == "failing"
    health.connected()
    assert health.status()[0] == "ok"


def test_boards_backing_off_degrade() -> None:
    health, _ = monitor(boards_backing_off=lambda: ["messages"])
    status, reason = health.status()
    assert status == "degraded" and "messages" in reason


def test_events_per_second_counts_the_last_minute_only() -> None:
    health, clock = monitor()
    clock.advance(120.0)
    for _ in range(120):
        health.event()
    assert health.events_per_second() == 2.0
    clock.advance(61.0)
    health.event()
    assert health.events_per_second() == 1 / 60


def test_percentiles_and_bounded_samples() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([1, 2, 3, 4], 0.5) == 2 and percentile(range(1, 101), 0.95) == 95
    health, _ = monitor()
    for n in range(2_000):
        health.command("top", n / 1000)
    p50, p95, samples = health.facts().command_latency["top"]
    assert samples == 500 and p50 < p95  # the most recent 500 only: memory stays bounded


def test_metrics_parse_back_with_the_expected_names_and_values() -> None:
    health, _ = monitor(
        messages_counted=lambda: 42,
        buffered=lambda: (3, 4),
        cache_counts=lambda: (3, 1),
        flush_failures=lambda: 2,
        voice_counting=lambda: 5,
    )
    health.command("stats", 0.2)
    health.flushed(0.01, True)
    health.flushed(5.0, False, "locked")
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(health.registry).decode())}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("leaderboard_messages_counted_total", ())] == 42
    assert value[("leaderboard_flush_failures_total", ())] == 2
    assert value[("leaderboard_voice_counting", ())] == 5
    assert value[("leaderboard_buffered_rows", (("kind", "messages"),))] == 3
    assert value[("leaderboard_cache_hit_ratio", ())] == 0.75
    assert value[("leaderboard_status", (("status", "ok"),))] == 1.0
    assert value[("leaderboard_command_seconds_count", (("command", "stats"),))] == 1
    assert value[("leaderboard_flush_seconds_count", (("result", "failed"),))] == 1
    assert families["leaderboard_command_seconds"].type == "histogram"


def test_spilled_rows_the_oldest_unsaved_activity_and_clamped_timestamps_are_reported() -> None:
    health, clock = monitor(
        buffered=lambda: (7, 0),
        spilled_rows=lambda: 1_000,
        unsaved_since=lambda: clock.now - 90.0,
        timestamps_clamped=lambda: 3,
    )
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(health.registry).decode())}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("leaderboard_buffered_rows", (("kind", "spilled"),))] == 1_000
    assert value[("leaderboard_oldest_unsaved_seconds", ())] == 90.0
    assert value[("leaderboard_timestamps_clamped_total", ())] == 3
    body = health.facts().to_json()
    assert body["buffered"] == {
        "message_rows": 7,
        "voice_rows": 0,
        "spilled_rows": 1_000,
        "unsaved_since": clock.now - 90.0,
    }
    assert body["timestamps_clamped"] == 3


def test_facts_as_json_carry_the_last_flush_and_refresh() -> None:
    health, clock = monitor()
    health.flushed(0.02, False, "OperationalError: database is locked")
    health.refreshed("voice", 0.3, True)
    body = health.facts().to_json()
    assert body["status"] == "ok"
    assert body["last_flush"] == {
        "at": clock.now,
        "seconds": 0.02,
        "ok": False,
        "detail": "OperationalError: database is locked",
    }
    assert body["last_board_refresh"]["voice"]["ok"] is True
    health.sample_process()
    assert health.facts().memory_bytes > 0


def test_a_write_hanging_on_a_lock_degrades_before_it_fails() -> None:
    waiting = [0.0]
    health, _ = monitor(write_waiting=lambda: waiting[0], flush_interval=lambda: 5.0)
    waiting[0] = 4.0
    assert health.status()[0] == "ok"  # a slow write, not yet trouble
    waiting[0] = 6.0
    assert health.status()[0] == "degraded"
    waiting[0] = 16.0
    assert health.status()[0] == "failing"


def test_memory_entries_are_in_the_facts_the_metrics_and_the_embed() -> None:
    entries = {"spam_buckets": 12, "names": 10_000, "name_fingerprints": 150_000}
    health, _ = monitor(memory_entries=lambda: dict(entries))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(health.registry).decode())}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("leaderboard_memory_entries", (("structure", "name_fingerprints"),))] == 150_000
    facts = health.facts()
    assert facts.to_json()["memory_entries"] == entries
    embed = health_embed(facts, now=0.0)
    held = next(f.value for f in embed.fields if f.name.startswith("Held in memory"))
    assert "spam buckets 12" in held and "name fingerprints 150,000" in held


def test_counting_an_event_allocates_nothing_within_a_second() -> None:
    health, clock = monitor()
    clock.advance(120.0)
    for _ in range(1_000):
        health.event()
    assert len(health._events) == 0 and health._second_count == 1_000  # one counter, no entry per event
    clock.advance(1.0)
    health.event()
    assert list(health._events) == [(int(clock.now) - 1, 1_000)]
