"""One backend fetch per key at a time: concurrent misses share it, here and across instances.

Within this process, misses for one (key, generations) wait for the first one's fetch (``fill``); a
waiter never receives a body fetched under other generations, nor an answer that was its leader's own
(not shareable). Across instances sharing a store, the fetch is taken under a short lease in the store;
the others poll for the entry the lease holder stores. A lost or expired lease costs at most one extra
fetch, never a stuck request (``coalesce_wait`` bounds every wait).
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

from multidict import CIMultiDict

from ..core import policy
from ..core.entry import decode_entry
from ..core.errors import StoreUnavailable
from ..core.metrics import Metrics
from ..core.policy import Lookup
from ..store.guard import GuardedStore
from .answers import Fetched, Origin
from .background import Background
from .config import Config
from .fill import Filler, replayable

_UNSEEN = object()  # no poll has looked at the entry yet
# A lookup that also takes the fill's lease is a script: it costs the store several times a plain MGET and
# saves a round trip only when the entry is absent. Requests new to this instance (not in the memo of
# framed heads) were nearly all misses in a small keyspace; across 100k keys most are hits on entries
# filled long ago (bench/scenario_keyspace.py). So the share of such lookups that found no entry is kept
# as a moving average over about the last ``_ABSENT_WINDOW`` of them, and the lease rides along only while
# that share is at least ``_LEASE_WITH_LOOKUP_FROM``. Starting at 1: a cold cache is all misses.
_ABSENT_WINDOW = 64
_LEASE_WITH_LOOKUP_FROM = 0.5


class Coalescer:
    def __init__(self, store: GuardedStore, config: Config, metrics: Metrics, filler: Filler,
                 background: Background, clock):
        self.store, self.config, self.metrics, self.filler = store, config, metrics, filler
        self.background, self.clock = background, clock
        self.inflight: dict[tuple, asyncio.Future] = {}
        self.shared_store = store.name != "memory"  # leases matter only where other instances share it
        self.new_requests_absent = 1.0  # of lookups for requests new here: the share that found no entry

    async def fill(self, d: Lookup, tokens: list[str], origin: Origin, lease: tuple[str, str] | None = None
                    ) -> Fetched:
        flight = (d.key, tuple(tokens))
        leader = self.inflight.get(flight)
        if leader is not None and lease is not None:
            # The lease was free when our lookup took it, so this instance's fill of the key holds none:
            # it is waiting for one. Fill under ours; it finds our entry (dropping the lease instead
            # would let another instance fetch as well).
            return await self.fetch_under_lease(d, tokens, origin, lease)
        if leader is not None:
            self.metrics.coalesced.labels(d.rule.name).inc()
            try:
                fetched = await asyncio.wait_for(asyncio.shield(leader), self.config.coalesce_wait)
            except asyncio.TimeoutError:
                fetched = None
            if fetched is None:  # the leader took too long (or failed): fetch, without waiting again
                return await self.filler.fetch(d, tokens, origin, store=False)
            if fetched.shareable:
                return replace(fetched, headers=replayable(fetched.headers, d.rule), collapsed=True)
            # The leader's answer was its own: fetch with this request's credentials, as a fill of its
            # own (one per key across instances sharing the store: the leader's lease is free again).
            return await self.fetch_under_lease(d, tokens, origin)
        future = asyncio.get_running_loop().create_future()
        self.inflight[flight] = future
        try:
            fetched = await self.fetch_under_lease(d, tokens, origin, lease)
        except BaseException:
            future.set_result(None)
            raise
        finally:
            del self.inflight[flight]
        if not future.done():
            future.set_result(fetched)
        return fetched

    def lease_for(self, d: Lookup) -> tuple[str, str] | None:
        """A fill lease for ``d`` (lease key, owner token), where other instances share the store. The
        owner token is this fill's own: a release (in the store script or ``drop_lease``) can never drop
        a lease another fill took after ours expired."""
        return (d.key + "|lease", uuid.uuid4().hex) if self.shared_store else None

    def lease_with_lookup(self, d: Lookup) -> tuple[str, str] | None:
        """The lease for the lookup of a request new to this instance, while such lookups mostly find
        no entry (``_LEASE_WITH_LOOKUP_FROM``); None: a plain lookup, the lease taken by the fill if needed."""
        return self.lease_for(d) if self.new_requests_absent >= _LEASE_WITH_LOOKUP_FROM else None

    def note_new_request_lookup(self, absent: bool) -> None:
        """What the lookup of a request new to this instance found (``lease_with_lookup``'s evidence)."""
        self.new_requests_absent += ((1.0 if absent else 0.0) - self.new_requests_absent) / _ABSENT_WINDOW

    def drop_lease(self, lease: tuple[str, str] | None) -> None:
        """Give back a lease this request holds but will not fill under (sent, not awaited)."""
        if lease is not None:
            self.background.spawn(self.release_lease(lease))

    async def release_lease(self, lease: tuple[str, str]) -> None:
        try:
            await self.store.release_lease(*lease)
        except StoreUnavailable:
            pass  # it expires by itself

    async def fetch_under_lease(self, d: Lookup, tokens: list[str], origin: Origin,
                                 lease: tuple[str, str] | None = None) -> Fetched:
        """Across instances sharing a store: one fetch per key under a short lease, the others poll.

        A waiter takes the entry the lease holder stored, or the lease once it is free; a lost or
        expired lease costs at most one extra fetch, never a stuck request (``coalesce_wait`` bounds it).
        ``lease``: taken already, by the lookup.
        """
        if not self.shared_store:
            return await self.filler.fetch(d, tokens, origin, store=True)
        if lease is None:
            lease = self.lease_for(d)
            try:
                leased = await self.store.acquire_lease(*lease, self.config.lease_ms)
            except StoreUnavailable:
                return await self.filler.fetch(d, tokens, origin, store=True)
            if not leased:
                waited = await self.wait_for_lease_holder(d, tokens)
                if isinstance(waited, Fetched):
                    return waited
                if waited is None:  # the wait is over, or the store failed: fetch, unguarded by a lease
                    return await self.filler.fetch(d, tokens, origin, store=True)
                lease = waited
        fetched = None
        try:
            fetched = await self.filler.fetch(d, tokens, origin, store=True, lease=lease)
            return fetched
        finally:
            # "stored" / "generation-changed": store_if_current ran, and dropped the lease with it
            if fetched is None or fetched.outcome not in ("stored", "generation-changed"):
                await self.release_lease(lease)

    async def wait_for_lease_holder(self, d: Lookup, tokens: list[str]) -> Fetched | tuple[str, str] | None:
        """Another instance holds the fill's lease: poll the store for its entry (a collapsed Fetched),
        or for the lease (returned) once it is free; None after ``coalesce_wait`` or a store failure.

        Where the store can (``leases_with_lookups``), each poll after the first takes the lease only
        if the entry is still the one the previous poll found unusable, atomically: a holder that
        stores and releases between a poll's lookup and its lease never causes a second fetch."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.config.coalesce_wait, 0.002
        atomic, seen = self.store.leases_with_lookups, _UNSEEN
        while loop.time() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
            lease = self.lease_for(d)
            try:
                if atomic and seen is not _UNSEEN:
                    raw, current, leased = await self.store.lookup_or_lease(d.key, d.gen_keys, lease,
                                                                            self.config.lease_ms, seen)
                else:
                    (raw, current), leased = await self.store.lookup(d.key, d.gen_keys), False
                entry = decode_entry(raw)
                if current == list(tokens) and policy.judge(entry, current, d.rule, self.clock()).usable == "fresh":
                    if leased:
                        self.drop_lease(lease)
                    self.metrics.coalesced.labels(d.rule.name).inc()
                    return Fetched(entry.status, CIMultiDict(entry.headers), entry.body, entry.etag, "collapsed",
                                   collapsed=True, storable=True)
                if not atomic and not leased:
                    leased = await self.store.acquire_lease(*lease, self.config.lease_ms)
            except StoreUnavailable:
                return None
            if leased:
                return lease
            seen = raw
        return None
