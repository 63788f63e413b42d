"""Shutdown ends every background task, even one whose first cancellation was swallowed.

On Python 3.11 a timeout that fires together with a cancellation can turn the cancellation into a
TimeoutError (async-timeout, asyncio.wait_for), and a store client that catches TimeoutError then
swallows it: the store watcher kept looping and ``cancel_all`` waited for it forever (a test teardown hung
under CPU load). ``cancel_all`` cancels again until every task has ended."""
from __future__ import annotations

import asyncio

from proxy.serve.background import Background


async def swallows_first_cancellation() -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass  # what a client library's timeout did with it
    while True:
        await asyncio.sleep(0.01)  # the watcher's next probe


async def test_cancel_all_ends_a_task_that_swallowed_its_first_cancellation():
    background = Background()
    spawned = background.spawn(swallows_first_cancellation())
    other = asyncio.get_running_loop().create_task(swallows_first_cancellation())
    await asyncio.sleep(0)
    other.cancel()  # as the app cancels its watcher before the grace period
    await asyncio.wait_for(background.cancel_all(other), 5)  # a bound for the test only: hangs before
    assert spawned.done() and other.done()
