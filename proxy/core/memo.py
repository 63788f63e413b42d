"""Bounded memos of pure functions of request and entry bytes (framed heads, read decisions, decoded
entries, verified tokens).

A memo at its limit forgets its oldest entry, one at a time. Clearing it all at once (what these memos
did) made every hot key a miss at the same moment and sent a burst of fresh objects to the garbage
collector's oldest generation; a plain dict cannot forget its oldest cheaply (iterating from the front
skips every slot already deleted, until the dict is rebuilt), an ``OrderedDict`` can. First in, first
out rather than least recently used: a hit moves nothing, and under the Zipf-like loads of an API the
hit rates of the two differ by a few points (bench/scenario_keyspace.py).

The memos of per-request work (framed heads, read decisions and routes, decoded entries) share one byte
budget, ``MEMO_MAX_BYTES`` (``set_budget``), each by a fixed share of it: at 100k keys a fixed count sized
for one hot key turned most requests into misses (BENCHMARKS.md, keyspace), and counts cannot be summed
into the one figure an operator sizes a container by. Sizes are estimates of what each entry holds.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

V = TypeVar("V")


class Memo(OrderedDict):
    """An ``OrderedDict`` that keeps at most ``limit`` entries (``put``); read it with ``get``."""

    __slots__ = ("limit",)

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key: Hashable, value: V) -> V:
        if len(self) >= self.limit:
            self.popitem(last=False)
        self[key] = value
        return value


DEFAULT_BUDGET = 256 << 20
_budget = [DEFAULT_BUDGET]


def set_budget(max_bytes: int) -> None:
    """The bytes all budgeted memos of this process may hold together (``MEMO_MAX_BYTES``); a smaller
    budget takes effect at each memo's next ``put``; 0 keeps nothing."""
    _budget[0] = max(0, max_bytes)


def budget() -> int:
    return _budget[0]


_LIVE: "weakref.WeakValueDictionary[int, SizedMemo]" = weakref.WeakValueDictionary()  # gone with their owner


def usage() -> dict[str, int]:
    """Estimated bytes held, by memo name (``katiba_cache_memo_bytes``): what ``MEMO_MAX_BYTES`` is sized by."""
    held: dict[str, int] = {}
    for memo in list(_LIVE.values()):
        held[memo.name] = held.get(memo.name, 0) + memo.size
    return held


class SizedMemo(OrderedDict):
    """A memo bounded by the total size its ``put`` calls give (``size_of``: estimated bytes), not by count:
    at most ``share`` of the process's memo budget (``set_budget``)."""

    __slots__ = ("name", "share", "size", "_size_of")  # OrderedDict already takes weak references

    def __init__(self, name: str, share: float, size_of: Callable[[Hashable, object], int]):
        super().__init__()
        self.name, self.share, self.size, self._size_of = name, share, 0, size_of
        _LIVE[id(self)] = self

    @property
    def max_size(self) -> int:
        return int(_budget[0] * self.share)

    def put(self, key: Hashable, value: V) -> V:
        if key in self:
            return value
        size, max_size = self._size_of(key, value), self.max_size
        if size > max_size:
            return value
        self.size += size
        while self.size > max_size:
            old_key, old_value = self.popitem(last=False)
            self.size -= self._size_of(old_key, old_value)
        self[key] = value
        return value

    def clear(self) -> None:
        super().clear()
        self.size = 0
