"""The server's paced garbage collection (proxy/serve/collector.py): with memos replacing old entries by
new ones, Python alone lets the young generation grow without bound; a paced young collection empties it,
and each collection's pause is observed into ``katiba_cache_gc_pause_seconds``."""
from __future__ import annotations

import gc
from collections import OrderedDict

import pytest

from proxy.core.metrics import Metrics
from proxy.serve.collector import GC_THRESHOLDS, CollectionPacer, PauseRecorder

MEMO = 60_000  # entries of a memo at its byte budget: each new one replaces the oldest
TICK = 5_000  # entries replaced between two paced collections


class Head:  # two tracked objects per entry, like a memoised head and its headers
    __slots__ = ("headers",)

    def __init__(self, i: int):
        self.headers = {"n": [i]}


@pytest.fixture
def serving_thresholds():
    """The server's thresholds, everything older than the test frozen out of the way, restored after."""
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
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
