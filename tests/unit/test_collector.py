"""The server's paced garbage collection (proxy/serve/collector.py): with memos replacing old entries by
new ones, Python alone lets the young generation grow without bound; a paced young collection empties it,
and each collection's pause is observed into ``katiba_cache_gc_pause_seconds``."""
from __future__ import annotations

import asyncio
import gc
from collections import OrderedDict

import pytest

from proxy.core.metrics import Metrics
from proxy.serve.collector import (DEFAULT_INTERVAL, GC_THRESHOLDS, CollectionPacer, PauseRecorder, pace_collections,
                                   thresholds)

MEMO = 60_000  # entries of a memo at its byte budget: each new one replaces the oldest
TICK = 5_000  # entries replaced between two paced collections
PYTHON_FULL_AFTER = GC_THRESHOLDS[2]  # middle collections after which an unpaced server's Python may run a full one


class Head:  # two tracked objects per entry, like a memoised head and its headers
    __slots__ = ("headers",)

    def __init__(self, i: int):
        self.headers = {"n": [i]}


@pytest.fixture
def serving_thresholds():
    """A pacing server's thresholds, everything older than the test frozen out of the way, restored after."""
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds(DEFAULT_INTERVAL))
    yield
    gc.set_threshold(*old)
    gc.unfreeze()


def churn(memo: OrderedDict, start: int, count: int) -> None:
    for i in range(start, start + count):
        memo[i] = Head(i)
        memo.popitem(last=False)


def young() -> int:
    return len(gc.get_objects(generation=0))


def test_a_paced_young_collection_keeps_what_memo_churn_leaves_young(serving_thresholds):
    memo = OrderedDict((i, Head(i)) for i in range(MEMO))
    gc.collect()
    churn(memo, MEMO, MEMO)  # Python alone: allocations and deallocations cancel out, nothing is collected
    assert gc.get_count()[0] < GC_THRESHOLDS[0]
    assert young() >= 3 * MEMO  # the whole memo is young, for one long collection whenever it comes

    pacer = CollectionPacer(full_interval=600)
    pacer.tick()
    for n in range(2 * MEMO, 3 * MEMO, TICK):  # paced: a tick leaves nothing young
        churn(memo, n, TICK)
        assert 3 * TICK <= young() <= 3 * TICK + 1000
        assert pacer.tick() == 1
        assert young() < 1000


def test_between_full_intervals_python_starts_no_full_collection_of_its_own(serving_thresholds):
    """A full collection walks every memo entry and verified token: up to 0.5 s at 100k keys (bench (f),
    2026-12-07, four in one keyspace proxy's first four minutes, where ``full_interval`` is ten). While
    memos grow (a warm-up, new users, an L1 refilling) a burst of new objects starts one of Python's own
    collections, and Python makes it a full one once enough has moved to the oldest generation. Young
    and middle ones it may start; the oldest generation is the pacer's alone."""
    memo = OrderedDict((i, Head(i)) for i in range(MEMO))
    gc.collect()
    pacer = CollectionPacer(full_interval=600, clock=lambda: 0.0)  # the clock never reaches a full interval
    generations: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        size = MEMO
        for _ in range(PYTHON_FULL_AFTER + 20):  # growing by less than a collection's worth per tick
            memo.update((i, Head(i)) for i in range(size, size + TICK // 3))
            size += TICK // 3
            pacer.tick()
        memo.update((i, Head(i)) for i in range(size, size + GC_THRESHOLDS[0]))  # a burst within one tick
    finally:
        gc.callbacks.remove(seen)
    assert 0 in generations  # the burst started one of Python's own collections
    assert 2 not in generations


async def test_once_the_pacer_stops_python_runs_full_collections_again(serving_thresholds):
    """Nothing else would ever collect the oldest generation: a process whose pacer ended (a server
    shutting down, or the task failing) must not keep its old cycles for good."""
    assert gc.get_threshold() == thresholds(DEFAULT_INTERVAL) != GC_THRESHOLDS
    pacer = asyncio.ensure_future(pace_collections(Metrics(), interval=0.001))
    await asyncio.sleep(0.01)
    assert gc.get_threshold() == thresholds(DEFAULT_INTERVAL)  # pacing: the oldest generation is its own
    pacer.cancel()
    await asyncio.gather(pacer, return_exceptions=True)
    assert gc.get_threshold() == GC_THRESHOLDS


def test_a_full_collection_every_full_interval(serving_thresholds):
    now = [1000.0]
    pacer = CollectionPacer(full_interval=600, clock=lambda: now[0])
    generations = []
    for _ in range(13):
        now[0] += 100
        generations.append(pacer.tick())
    assert generations == [1] * 5 + [2] + [1] * 5 + [2, 1]
    assert gc.get_count()[1:] == (0, 1)  # the last tick: young and middle collected, one more for the oldest


def test_a_disabled_collector_is_left_alone():
    gc.disable()
    try:
        assert CollectionPacer().tick() is None
    finally:
        gc.enable()


def test_every_collection_is_observed_by_generation():
    metrics = Metrics()
    recorder = PauseRecorder()
    gc.callbacks.append(recorder)
    try:
        gc.collect(0)
        gc.collect(1)
        gc.collect(1)
    finally:
        gc.callbacks.remove(recorder)
    recorder.report(metrics)
    registry = metrics.registry
    assert registry.get_sample_value("katiba_cache_gc_pause_seconds_count", {"generation": "0"}) >= 1
    assert registry.get_sample_value("katiba_cache_gc_pause_seconds_count", {"generation": "1"}) >= 2
    assert registry.get_sample_value("katiba_cache_gc_pause_seconds_sum", {"generation": "1"}) > 0
    recorder.report(metrics)  # reported once: nothing is counted twice
    assert registry.get_sample_value("katiba_cache_gc_pause_seconds_count", {"generation": "1"}) < 4
