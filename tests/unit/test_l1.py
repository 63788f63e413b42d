"""The in-process L1's byte budget (proxy/store/l1.py): ``L1_MAX_BYTES`` bounds the memory its entries
really keep alive, measured with tracemalloc, not just their keys and bodies."""
from __future__ import annotations

import tracemalloc

import pytest

from proxy.core import memo
from proxy.core.entry import decode_entry
from proxy.serve.framing import entry_head
from proxy.store.l1 import L1Cache
from tests.unit.entry_shapes import SHAPES, stored


@pytest.fixture
def no_decoded_memo(monkeypatch):
    """Decoded entries kept by L1 alone (no memo sharing them), as under a budget full of other keys."""
    monkeypatch.setattr(memo, "_budget", [0])


def fill(l1: L1Cache, items) -> int:
    """Put each stored entry in ``l1`` as a Redis hit does, rendered as its first hit renders it; the bytes
    this left allocated (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, raw, gen_keys in items:
            entry = decode_entry(raw)
            l1.put(key, entry, list(entry.generations), gen_keys, 60, raw)
            entry_head(entry)  # rendered once by the first hit, and kept with the entry
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("headers,body_len", SHAPES)
def test_an_entry_counts_what_it_keeps_alive(headers, body_len, no_decoded_memo):
    l1 = L1Cache(1 << 40)
    l1.healthy = True
    items = [stored(headers, body_len) for _ in range(2000)]
    real = fill(l1, items)
    assert len(l1) == len(items)
    assert 0.85 * l1.bytes <= real <= 1.15 * l1.bytes, (real / len(items), l1.bytes / len(items))


def test_the_budget_bounds_real_memory(no_decoded_memo):
    budget = 2 << 20
    l1 = L1Cache(budget)
    l1.healthy = True
    items = [stored(*SHAPES[i % len(SHAPES)]) for i in range(4000)]  # about 4x what fits
    real = fill(l1, items)
    assert l1.bytes <= budget and len(l1) < len(items) / 2
    assert real <= 1.15 * budget, real
    newest = items[-1][0]
    assert l1.get(newest) is not None and l1.get(items[0][0]) is None  # the oldest went first



def test_a_copy_past_its_ttl_is_renewed_only_from_the_bytes_it_came_from():
    now = [1000.0]
    l1 = L1Cache(1 << 30, clock=lambda: now[0])
    l1.healthy = True
    (key, raw, gen_keys), (_, other, _) = stored(*SHAPES[0]), stored(*SHAPES[0])
    entry = decode_entry(raw)
    l1.put(key, entry, entry.generations, gen_keys, 60, raw)
    held = l1.bytes
    now[0] += 61
    assert l1.get(key) is None and len(l1) == 1  # not served; kept until the store's answer is known
    assert l1.decoded(key, other) is None and l1.decoded(key, None) is None
    assert l1.decoded(key, bytes(raw)) is entry  # the same bytes, another object (as each Redis reply is)
    l1.put(key, entry, entry.generations, gen_keys, 60, raw)
    assert l1.get(key) == (entry, entry.generations)
    assert (l1.renewed, l1.bytes, len(l1), l1.evicted["expired"]) == (1, held, 1, 0)

    now[0] += 61
    l1.discard(key)  # the store had nothing fresh
    assert (len(l1), l1.bytes, l1.evicted["expired"]) == (0, 0, 1)

    l1.put(key, entry, entry.generations, gen_keys, 60, raw)
    now[0] += 61
    replaced = decode_entry(other)
    l1.put(key, replaced, replaced.generations, gen_keys, 60, other)  # the store holds another entry now
    assert l1.get(key)[0] is replaced and (l1.renewed, l1.evicted["expired"], len(l1)) == (1, 2, 1)
    l1.healthy = False  # invalidations may be lost: nothing L1 holds stands in for the store's answer
    assert l1.decoded(key, other) is None
    l1.healthy = True
    now[0] += 61
    assert l1.invalidate([gen_keys[0]]) == 1 and l1.decoded(key, other) is None
