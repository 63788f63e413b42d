"""Which entries were read lately: the memory behind ``refresh_after_purge``.

When a write by user U purges entries read in the last ``demand_window`` of rules with
``refresh_after_purge: true``, they are worth fetching again at once, with U's credentials: an app re-reads
right after its own write, and a shared page (the leaderboard) is read by many right after any award.
This module only remembers and answers "which recent reads did this purge empty?"; the refetch itself
(under the fill guard) is the request path's.

Two kinds of reads. A user's own (a key with ``{user_id}``) is recorded under the reader's verified user
id and handed only to that user's purges, so a purge of user V's namespaces caused by U's write (an award
to V) never hands U's credentials to V's entries. A shared one (``user_id=None``: a key the same for
everyone) is handed to whichever writer's purge empties it. Either is handed out once: until it is read
again no later purge refetches it, so each read pays for one refetch at most.

Pure bookkeeping: no store, no sockets, no aiohttp. It may import only the standard library. Bounded:
at most ``max_users`` users (the least recently active forgotten first), ``max_per_user`` reads each and
``max_shared`` shared reads (the oldest forgotten first); one purge hands out at most
``max_shared_per_purge`` shared reads, the latest read first, and forgets the others it emptied.
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


MAX_SHARED_PER_PURGE = 16  # shared reads one purge hands out (explain.py names it)


class RecentReads:
    def __init__(self, max_users: int = 10_000, max_per_user: int = 16, max_shared: int = 256,
                 max_shared_per_purge: int = MAX_SHARED_PER_PURGE, clock: Callable[[], float] = time.monotonic):
        self.max_users, self.max_per_user, self.clock = max_users, max_per_user, clock
        self.max_shared, self.max_shared_per_purge = max_shared, max_shared_per_purge
        self._by_user: OrderedDict[str, OrderedDict[str, RecentRead]] = OrderedDict()
        self._shared: OrderedDict[str, RecentRead] = OrderedDict()  # oldest read first

    def __len__(self) -> int:  # for tests and explain: O(users)
        return sum(len(reads) for reads in self._by_user.values()) + len(self._shared)

    def note(self, user_id: str | None, key: str, gen_keys: Iterable[str], window: float, request: Any) -> None:
        """``user_id`` (None: a shared entry, whoever read it) read ``key`` (guarded by ``gen_keys``) now;
        remember it for ``window`` seconds."""
        if user_id is None:
            self._shared.pop(key, None)
            if len(self._shared) >= self.max_shared:
                self._shared.popitem(last=False)
            self._shared[key] = RecentRead(key, frozenset(gen_keys), self.clock() + window, request)
            return
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
        """The reads, still in their window, that a purge of ``purged`` generation keys by ``user_id``'s
        write emptied: that user's own, then the shared ones (bounded). They are forgotten (the refetch,
        when it is read again, notes them anew)."""
        purged = frozenset(purged)
        now = self.clock()
        hit = self._take(self._by_user.get(user_id), purged, now)
        if user_id in self._by_user and not self._by_user[user_id]:
            del self._by_user[user_id]
        shared = self._take(self._shared, purged, now)
        return hit + shared[::-1][:self.max_shared_per_purge]

    @staticmethod
    def _take(reads: OrderedDict[str, RecentRead] | None, purged: frozenset[str], now: float) -> list[RecentRead]:
        """Remove from ``reads`` those ``purged`` emptied (returned, oldest first) and those out of their window."""
        if not reads:
            return []
        hit = [r for r in reads.values() if r.gen_keys & purged and r.until > now]
        for r in hit:
            del reads[r.key]
        for stale in [r.key for r in reads.values() if r.until <= now]:
            del reads[stale]
        return hit
