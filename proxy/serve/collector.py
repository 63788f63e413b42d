"""Python's garbage collector, paced by the server: collections on a timer, and every pause counted.

Why a timer: CPython (3.11, 3.12) starts a collection when allocations of tracked objects outnumber
their deallocations by the first threshold. The memos and the L1 drop an old entry for each new one once
they sit at their byte budget, so that difference stays near zero while every new entry joins the youngest
generation. With 100k keys it held hundreds of thousands of objects by the time a collection came, and
that one collection paused the process for 310 ms (bench scenario (f), redis+l1, 2026-12-06).

So the server collects the young and middle generations every ``interval`` itself: each pause is bounded by
what arrived since the previous tick, about 2 ms there. (Young alone each tick, the middle one every tenth
as Python orders them, left the middle one with ten ticks' survivors: 10 to 70 ms.)

The oldest generation holds every memo entry and verified token that outlived two ticks, and a full
collection walks all of it and everything it points at: 0.4 to 1.2 s at 100k keys. Python would start one
whenever a quarter of it is new since the last, which growing memos (a warm-up, new users, an L1
refilling) make every few seconds. The server runs one every ``full_interval`` instead (600 s by default)
and, while it paces, lets Python start none (``thresholds``): the only garbage that waits for it is
cycles that outlived two ticks, few here since requests' objects die by reference counting. Python may
still start young and middle collections of its own after a burst of allocations (more than the first
threshold within one tick).

Every collection's pause (these and Python's own) is observed into ``katiba_cache_gc_pause_seconds``.
"""
from __future__ import annotations

import asyncio
import gc
import time

from ..core.metrics import Metrics

# The collector's thresholds once serving (set by proxy/ops/runner.py). Python's defaults (700, 10, 10) ran
# a full collection about every second under load with many keys: objects the memos keep live long enough
# to reach the oldest generation, and each full collection walks all of them. Request objects die by
# reference counting whatever the thresholds; only cycles wait for a collection, and those are few and
# short-lived here. Unpaced, full collections come a hundred middle ones apart, not ten; paced, the
# third threshold is never reached (each middle collection adds one to its count): the pacer runs them.
GC_THRESHOLDS = (10_000, 10, 100)
_NEVER = 2**31 - 1  # the largest threshold Python takes (a C int); ten ticks a second reach it in 6 years


def thresholds(pace_interval: float) -> tuple[int, int, int]:
    """``gc.set_threshold``'s arguments for a server pacing its collections every ``pace_interval`` s (0: not)."""
    return GC_THRESHOLDS if pace_interval <= 0 else (*GC_THRESHOLDS[:2], _NEVER)

DEFAULT_INTERVAL = 0.1
DEFAULT_FULL_INTERVAL = 600.0


class PauseRecorder:
    """A ``gc.callbacks`` entry: each collection's generation and duration, kept until ``report``. It only
    appends: a callback runs wherever an allocation started the collection, maybe inside a metric's lock."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def report(self, metrics: Metrics) -> None:
        pauses, self.pauses = self.pauses, []
        for generation, seconds in pauses:
            metrics.gc_pause.labels(str(generation)).observe(seconds)


class CollectionPacer:
    """Which collection each tick runs (module doc): the young and middle generations, all three once
    ``full_interval`` seconds have passed since the last full one."""

    def __init__(self, full_interval: float = DEFAULT_FULL_INTERVAL, clock=time.monotonic):
        self.full_interval, self.clock = full_interval, clock
        self.last_full = clock()

    def tick(self) -> int | None:
        """Collect; the oldest generation collected, or None when the collector is disabled (``gc.disable()``)."""
        if not gc.isenabled():
            return None
        now = self.clock()
        generation = 2 if now - self.last_full >= self.full_interval else 1
        gc.collect(generation)
        if generation == 2:
            self.last_full = now
        return generation


async def pace_collections(metrics: Metrics, interval: float = DEFAULT_INTERVAL,
                           full_interval: float = DEFAULT_FULL_INTERVAL) -> None:
    """Until cancelled: observe every collection's pause and, with ``interval`` > 0, run a
    ``CollectionPacer`` tick each ``interval`` seconds (module doc)."""
    recorder = PauseRecorder()
    pacer = CollectionPacer(full_interval)
    gc.callbacks.append(recorder)
    try:
        while True:
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if interval > 0:
                pacer.tick()
            recorder.report(metrics)
    finally:
        gc.callbacks.remove(recorder)
        recorder.report(metrics)
        if gc.get_threshold()[2] == _NEVER:  # no pacer any more: Python's own full collections come back
            gc.set_threshold(*GC_THRESHOLDS)
