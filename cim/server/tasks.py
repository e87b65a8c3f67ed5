"""Role: background work (logouts, offline stores, reclaims) that nobody awaits.

Held until done (the loop keeps only weak references to tasks), waited for at
shutdown, and a failure is counted and logged instead of vanishing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("cim.server")


class BackgroundTasks:
    """Tasks the node started and must not lose track of."""

    def __init__(self, metrics: Counter[str]) -> None:
        self._metrics = metrics
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._metrics["errors"] += 1
            log.error("background task failed", exc_info=task.exception())
