"""Issue 12's charts: how long one chart takes to draw (target: under 200 ms), per kind and edge case.

    python bench/charts.py [--rounds 50] [--threads 1]

Draws each case ``--rounds`` times with ``leaderboard_bot.ui.charts`` after one warm-up (the bot
warms its charts thread the same way when it loads), in one thread as the bot does (``--threads N``:
N threads drawing at once, to see what concurrency costs), and prints per case the p50 / p95 /
max wall time, the p50 / p95 CPU time of the drawing thread (what the chart itself costs: on a
shared machine the wall time also holds other processes' turns) and the PNG's size, and the first
(cold) draw including matplotlib's import.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leaderboard_bot.domain import BoardLine, shift_day
from leaderboard_bot.ui import charts

TARGET_MS = 200.0


def days(count: int, last: str = "2026-12-03") -> list[str]:
    return [shift_day(last, offset) for offset in range(1 - count, 1)]


def cases(seed: int = 1) -> list[tuple[str, Callable[[], bytes]]]:
    rng = random.Random(seed)
    month = days(30)
    busy_messages = [rng.randint(0, 400) for _ in month]
    busy_voice = [rng.random() * 6 * 3600 for _ in month]
    names = ["Ali", "Bobby", "田中太郎", "Zoë 🎮 gamer", "$x^2$ \\frac{", "a" * 60, "\u202eevil", "z̸̡̢a̷l̴g̵o̶", "Ωmega", "x"]
    top10 = [BoardLine(rank=i + 1, name=n, user_id=i, value=10_000.0 - i * 900) for i, n in enumerate(names)]
    top25 = [BoardLine(rank=i + 1, name=f"member number {i}", user_id=i, value=50_000.0 / (i + 1)) for i in range(25)]
    return [
        ("stats: 30 days, busy", lambda: charts.activity_chart(month, busy_messages, busy_voice, caption="30 days")),
        ("stats: 30 days, no activity", lambda: charts.activity_chart(month, [0] * 30, [0.0] * 30)),
        ("stats: a single day (today)", lambda: charts.activity_chart(days(1), [12], [5400.0])),
        ("stats: 7 days", lambda: charts.activity_chart(days(7), busy_messages[:7], busy_voice[:7])),
        ("stats: 30 days, huge values", lambda: charts.activity_chart(month, [10**15] * 30, [1e12] * 30)),
        ("stats: 120 days (longest season)", lambda: charts.activity_chart(days(120), [5] * 120, [60.0] * 120)),
        ("top: 10 messages, odd names", lambda: charts.top_chart("messages", top10, highlight=3)),
        ("top: 10 voice", lambda: charts.top_chart("voice", top10)),
        ("top: 25 lines", lambda: charts.top_chart("messages", top25)),
        ("top: 1 line", lambda: charts.top_chart("messages", top10[:1])),
    ]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(draw: Callable[[], bytes], rounds: int, threads: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU milliseconds of each draw, and the PNG's size."""
    times: list[float] = []
    cpu: list[float] = []
    size = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal size
        for _ in range(rounds):
            started, started_cpu = time.perf_counter(), time.thread_time()
            png = draw()
            elapsed, used = (time.perf_counter() - started) * 1000, (time.thread_time() - started_cpu) * 1000
            with lock:
                times.append(elapsed)
                cpu.append(used)
                size = len(png)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return times, cpu, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    charts.warm_up()
    print(f"cold: first chart incl. importing matplotlib {(time.perf_counter() - started) * 1000:.0f} ms")
    print(f"{args.rounds} rounds x {args.threads} thread(s); target {TARGET_MS:.0f} ms per chart\n")
    print(f"{'case':36} {'wall p50':>9} {'p95':>7} {'max':>7} {'CPU p50':>8} {'p95':>7} {'PNG KB':>7}")
    worst = worst_cpu = 0.0
    for name, draw in cases():
        draw()  # this case's first draw (its fonts and text layouts cached)
        times, cpu, size = measure(draw, args.rounds, args.threads)
        p95, cpu95 = percentile(times, 0.95), percentile(cpu, 0.95)
        worst, worst_cpu = max(worst, p95), max(worst_cpu, cpu95)
        print(
            f"{name:36} {statistics.median(times):9.1f} {p95:7.1f} {max(times):7.1f} "
            f"{statistics.median(cpu):8.1f} {cpu95:7.1f} {size / 1024:7.1f}"
        )
    print(f"\nworst p95: wall {worst:.1f} ms, CPU {worst_cpu:.1f} ms; target under {TARGET_MS:.0f} ms: "
          f"{'met' if worst < TARGET_MS else 'NOT met'} (wall), {'met' if worst_cpu < TARGET_MS else 'NOT met'} (CPU)")
    print(f"machine load average (1 min) during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
