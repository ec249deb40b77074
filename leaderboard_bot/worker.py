"""A single daemon worker thread for blocking work (the database, the recovery file).

Unlike ThreadPoolExecutor's threads, a daemon thread is not joined at interpreter exit, so a job
stuck in a busy wait can never hold up a stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
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
