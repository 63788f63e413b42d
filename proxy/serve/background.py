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
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, *others, return_exceptions=True)
