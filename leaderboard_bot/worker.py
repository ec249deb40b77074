"""Workers for blocking work: a single daemon thread (the database, the recovery file) and a
child process (the charts).

Unlike ThreadPoolExecutor's threads, a daemon thread is not joined at interpreter exit, so a job
stuck in a busy wait can never hold up a stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
Job = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


class DaemonWorker:
    def __init__(self, name: str, wrap: Callable[[Callable[[], Any]], Any] | None = None) -> None:
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._wrap = wrap or (lambda func: func())
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, func: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((future, func))
        return future

    async def run(self, func: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.submit(func))

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            future, func = job
            del job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._wrap(func))
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
                del error
            del future, func

    def stop(self, timeout: float) -> bool:
        """Let queued jobs finish, then end; False when still busy after ``timeout``."""
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _quiet_child() -> None:
    """In the child: Ctrl+C in the bot's terminal reaches the whole process group; the bot ends
    its child itself. A little lower priority, so that a chart yields the CPU to counting. And it
    ends with the bot even after a ``kill -9``, which leaves no one to tell it (it holds both ends
    of its job queue, so it would never see the queue close)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(5)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns when the parent process has ended, however it ended
    os._exit(0)


class ProcessWorker:
    """Jobs (picklable: a module-level function or a ``partial`` of one) run one at a time in a
    child process, started on first use and ended after ``idle`` seconds without work.

    For work that is heavy in memory and pure Python (the charts: matplotlib holds about 50 MB
    and the GIL while it draws): the bot's own process keeps neither, and a job that hangs or
    crashes costs a new child, never the bot. A job abandoned while it runs (its caller gave up)
    ends its child, so the next job never queues behind a stuck one."""

    def __init__(self, name: str, *, idle: float = 600.0) -> None:
        self.name = name
        self.idle = idle
        self.children_started = 0
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._busy = 0
        self._idle_timer: threading.Timer | None = None

    @property
    def alive(self) -> bool:
        return self._pool is not None

    def submit(self, func: Callable[[], T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_child
                )
                self.children_started += 1
            pool = self._pool
            self._busy += 1
        try:
            future = pool.submit(func)
        except BaseException:  # a pool broken by a child that died: the next job starts a new one
            self._job_done(None, pool)
            raise
        future.add_done_callback(lambda done: self._job_done(done, pool))
        return future

    async def run(self, func: Callable[[], T]) -> T:
        future = self.submit(func)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.running():
                self._end(kill=True)  # its caller gave up: never leave the next job behind it
            raise

    def _job_done(self, future: concurrent.futures.Future[Any] | None, pool: ProcessPoolExecutor) -> None:
        broken = future is None or (
            not future.cancelled() and isinstance(future.exception(), concurrent.futures.process.BrokenProcessPool)
        )
        with self._lock:
            self._busy -= 1
            if broken and self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            if self._busy == 0 and self._pool is not None and self._idle_timer is None:
                self._idle_timer = threading.Timer(self.idle, self._end_if_idle)
                self._idle_timer.daemon = True
                self._idle_timer.start()

    def _end_if_idle(self) -> None:
        with self._lock:
            self._idle_timer = None
            if self._busy:
                return
        self._end(kill=False)

    def _end(self, *, kill: bool) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        if pool is None:
            return
        processes = dict(getattr(pool, "_processes", None) or {})  # pid -> Process: private, stable since 3.8
        if kill:
            for process in processes.values():
                with contextlib.suppress(Exception):
                    process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """End the child now (a chart being drawn is dropped): a stop never waits for one."""
        self._end(kill=True)
