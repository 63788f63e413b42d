"""Bounded memos of pure functions of request and entry bytes (framed heads, read decisions, decoded
entries, verified tokens).

A memo at its limit forgets its oldest entry, one at a time. Clearing it all at once (what these memos
did) made every hot key a miss at the same moment and sent a burst of fresh objects to the garbage
collector's oldest generation; a plain dict cannot forget its oldest cheaply (iterating from the front
skips every slot already deleted, until the dict is rebuilt), an ``OrderedDict`` can. First in, first
out rather than least recently used: a hit moves nothing, and under the Zipf-like loads of an API the
hit rates of the two differ by a few points (bench/scenario_keyspace.py).
"""
from __future__ import annotations

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


class SizedMemo(OrderedDict):
    """A memo bounded by the total size its ``put`` calls give (``size_of``: bytes, say), not by count."""

    __slots__ = ("max_size", "size", "_size_of")

    def __init__(self, max_size: int, size_of: Callable[[Hashable, object], int]):
        super().__init__()
        self.max_size, self.size, self._size_of = max_size, 0, size_of

    def put(self, key: Hashable, value: V) -> V:
        if key in self:
            return value
        self.size += self._size_of(key, value)
        while self and self.size > self.max_size:
            old_key, old_value = self.popitem(last=False)
            self.size -= self._size_of(old_key, old_value)
        self[key] = value
        return value

    def clear(self) -> None:
        super().clear()
        self.size = 0
