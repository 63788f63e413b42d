"""Which of a user's own entries that user read lately: the memory behind ``refresh_after_purge``.

When a write by user U purges U's entries, the reads U made in the last ``demand_window`` of rules with
``refresh_after_purge: true`` are worth fetching again at once, with U's credentials: an app re-reads
right after its own write. This module only remembers and answers "which of U's recent reads did this
purge empty?"; the refetch itself (under the fill guard) is the request path's.

Pure bookkeeping: no store, no sockets, no aiohttp. It may import only the standard library. Bounded:
at most ``max_users`` users (the least recently active forgotten first) and ``max_per_user`` reads each
(the oldest forgotten first). Records are keyed by the reader's verified user id, so a purge of user V's
namespaces caused by U's write (an award to V) never hands U's credentials to V's entries.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable


@dataclass(frozen=True, slots=True)
class RecentRead:
    key: str
    gen_keys: frozenset[str]  # the namespaces whose purge empties this entry (the global epoch left out)
    until: float  # the end of its demand window (the clock's time)
    request: Any  # what the caller needs to fetch it again


class RecentReads:
    def __init__(self, max_users: int = 10_000, max_per_user: int = 16,
                 clock: Callable[[], float] = time.monotonic):
        self.max_users, self.max_per_user, self.clock = max_users, max_per_user, clock
        self._by_user: OrderedDict[str, OrderedDict[str, RecentRead]] = OrderedDict()

    def __len__(self) -> int:  # for tests and explain: O(users)
        return sum(len(reads) for reads in self._by_user.values())

    def note(self, user_id: str, key: str, gen_keys: Iterable[str], window: float, request: Any) -> None:
        """``user_id`` read ``key`` (guarded by ``gen_keys``) now; remember it for ``window`` seconds."""
        reads = self._by_user.get(user_id)
        if reads is None:
            if len(self._by_user) >= self.max_users:
                self._by_user.popitem(last=False)
            reads = self._by_user[user_id] = OrderedDict()
        else:
            self._by_user.move_to_end(user_id)
            reads.pop(key, None)
        if len(reads) >= self.max_per_user:
            reads.popitem(last=False)
        reads[key] = RecentRead(key, frozenset(gen_keys), self.clock() + window, request)

    def emptied_by(self, user_id: str, purged: Iterable[str]) -> list[RecentRead]:
        """The reads of ``user_id``, still in their window, that a purge of ``purged`` generation keys
        emptied; they are forgotten (the refetch, when it is read again, notes them anew)."""
        reads = self._by_user.get(user_id)
        if not reads:
            return []
        purged = frozenset(purged)
        now = self.clock()
        hit = [r for r in reads.values() if r.gen_keys & purged and r.until > now]
        for r in hit:
            del reads[r.key]
        for stale in [r.key for r in reads.values() if r.until <= now]:
            del reads[stale]
        if not reads:
            del self._by_user[user_id]
        return hit
