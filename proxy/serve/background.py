"""Tasks that outlive the request that started them: write-behind stores, refreshes, purge retries.

Every one is tracked here so that shutdown can let the fills among them finish (bounded by the grace
period) and cancel the rest; a task that is not tracked could be lost with whatever it was writing.
"""
from __future__ import annotations

import asyncio
from typing import Coroutine


class Background:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, *, fill: bool = False) -> asyncio.Task:
        """Run ``coro`` in the background; a ``fill`` (it writes an entry) is let finish at shutdown."""
        return self.track(asyncio.get_running_loop().create_task(coro), fill=fill)

    def track(self, task: asyncio.Task, *, fill: bool = False) -> asyncio.Task:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if fill:
            task.fill = True  # type: ignore[attr-defined]
        return task

    def fills(self) -> list[asyncio.Task]:
        return [t for t in self.tasks if getattr(t, "fill", False)]

    async def cancel_all(self, *others: asyncio.Task) -> None:
        """Cancel every tracked task and ``others``, again and again until each has ended: on Python 3.11
        a timeout firing with a cancellation can turn it into a TimeoutError that a store client then
        catches, and a loop that lost its cancellation so would keep shutdown waiting for ever."""
        pending = {*self.tasks, *others}
        while pending:
            for task in pending:
                task.cancel()
            done, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved, so never logged as "never retrieved"


RECANCEL_AFTER = 0.5  # seconds between cancellations of a task that has not ended
