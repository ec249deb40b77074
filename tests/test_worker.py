"""leaderboard_bot/worker.py: the charts' child process (ProcessWorker) starts on first use, ends
when idle, never leaves a job behind one that hangs or crashes, and a stop never waits for it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path

import pytest

from leaderboard_bot.worker import DaemonWorker, ProcessWorker


def child_pid() -> int:
    return os.getpid()


def sleep_then(seconds: float, value: bytes) -> bytes:
    time.sleep(seconds)
    return value


def die() -> None:
    os._exit(3)  # as a segfault or the OOM killer would end it


def interrupt_self() -> str:
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C in the bot's terminal reaches its child too
    time.sleep(0.1)
    return "still here"


def alive(pid: int) -> bool:
    """Running (a zombie, ended but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


async def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
def worker() -> Iterator[ProcessWorker]:
    made = ProcessWorker("test-charts", idle=60.0)
    yield made
    made.stop()


async def test_jobs_run_in_one_child_process_started_on_first_use(worker: ProcessWorker) -> None:
    assert not worker.alive and worker.children_started == 0
    first = await worker.run(child_pid)
    assert first != os.getpid()
    assert await worker.run(child_pid) == first  # the same child serves the next job
    assert worker.children_started == 1


async def test_an_idle_child_ends_and_the_next_job_starts_another() -> None:
    worker = ProcessWorker("test-charts", idle=0.2)
    try:
        pid = await worker.run(child_pid)
        await wait_until(lambda: not worker.alive)
        await wait_until(lambda: not alive(pid))
        assert await worker.run(child_pid) != pid
        assert worker.children_started == 2
    finally:
        worker.stop()


async def test_a_job_its_caller_gave_up_on_ends_its_child(worker: ProcessWorker) -> None:
    pid = await worker.run(child_pid)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(worker.run(partial(sleep_then, 30.0, b"late")), 0.3)
    await wait_until(lambda: not alive(pid))
    started = time.monotonic()
    assert await worker.run(partial(sleep_then, 0.0, b"next")) == b"next"  # not queued behind the stuck one
    assert time.monotonic() - started < 10.0
    assert worker.children_started == 2


async def test_a_child_that_dies_fails_its_job_and_the_next_one_works(worker: ProcessWorker) -> None:
    with pytest.raises(BrokenProcessPool):
        await worker.run(die)
    assert await worker.run(partial(sleep_then, 0.0, b"drawn")) == b"drawn"
    assert worker.children_started == 2


async def test_ctrl_c_is_left_to_the_bot(worker: ProcessWorker) -> None:
    assert await worker.run(interrupt_self) == "still here"


async def test_stop_ends_the_child_at_once_even_mid_job(worker: ProcessWorker) -> None:
    pid = await worker.run(child_pid)
    job = asyncio.ensure_future(worker.run(partial(sleep_then, 30.0, b"late")))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    worker.stop()
    assert time.monotonic() - started < 1.0
    await wait_until(lambda: not alive(pid))
    assert not worker.alive
    with pytest.raises(BrokenProcessPool):
        await job


async def test_the_thread_worker_still_runs_jobs_in_order() -> None:
    worker = DaemonWorker("test-thread")
    try:
        assert [await worker.run(partial(int, n)) for n in ("1", "2")] == [1, 2]
    finally:
        assert worker.stop(1.0)


BOT_KILLED = """
import asyncio, os, sys, time
from leaderboard_bot.worker import ProcessWorker

async def main() -> None:
    worker = ProcessWorker("charts")
    print(await worker.run(os.getpid), flush=True)
    time.sleep(60)

if __name__ == "__main__":
    asyncio.run(main())
"""


async def test_the_child_ends_when_the_bot_is_killed_with_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "bot.py"
    script.write_text(BOT_KILLED)
    bot = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert bot.stdout is not None
        child = int(await asyncio.wait_for(bot.stdout.readline(), 30))
        assert alive(child)
    finally:
        bot.kill()
        await bot.wait()
    await wait_until(lambda: not alive(child))
