"""Tasks an extension starts and keeps until it unloads.

asyncio holds only weak references to tasks, so each must be kept somewhere; and a task that dies
of an unexpected error says nothing unless someone reads its result. One place does both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

from loguru import logger


class Background:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: dict[asyncio.Future[Any], str] = {}

    def start(self, work: Coroutine[Any, Any, Any], what: str) -> asyncio.Future[Any]:
        """Run ``work`` (described by ``what`` in the log should it fail) until it ends or
        :meth:`cancel_all`."""
        task = asyncio.ensure_future(work)
        self._tasks[task] = what
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Future[Any]) -> None:
        what = self._tasks.pop(task, "a background task")
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.opt(exception=error).error("{}: {} stopped on an unexpected error", self.owner, what)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Future[Any]]:
        return iter(list(self._tasks))
