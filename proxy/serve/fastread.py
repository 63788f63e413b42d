"""The fast path's reads: a plain GET framed off the socket, looked up (L1, else one store round trip)
and answered with the bytes aiohttp's path would send: a fresh or stale-while-revalidate hit at once, a
miss through the request path's own fill (``RequestPath.fill``), its answer relayed as it arrives when the body
is too large to store. Whatever it cannot answer goes to aiohttp with the lookup already made
(``Prefetched``), so no request asks the store twice. It calls only the request path's public methods.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace
from email.utils import formatdate
from functools import partial
from random import random
from typing import Any, Coroutine

from multidict import CIMultiDict

from ..core import interim, locations
from ..core.entry import Entry
from ..core.errors import LookupRedirected, StoreUnavailable
from ..core.policy import Lookup
from ..upstream.client import framed_length
from ..upstream.http1 import Response as UpstreamResponse
from .answers import request_id as request_id_var
from .answers import Origin, miss_headers
from .framing import Head, entry_head, wire
from .wire import CacheStatus, error_response


@dataclass(slots=True)
class Prefetched:
    """A fast lookup that found no fresh entry, handed to aiohttp's path with the request so that the
    miss neither asks the store nor judges the entry again (``RequestPath.read`` takes it when the key
    matches): what the store gave, and ``RequestPath.looked_up``'s verdict on it."""

    key: str
    tokens: list | None = None
    entry: Entry | None = None
    verdict: Any = None  # policy.Verdict
    store_down: bool = False
    lease: tuple[str, str] | None = None  # the fill's lease, taken by the lookup (never handed on)


@dataclass(slots=True)
class InFlight:
    """A lookup sent as a store future (an auto-pipelined ``MGET``): no coroutine or task per hit."""

    d: Lookup
    head: Head
    start: float
    peer: tuple[str | None, str]
    future: asyncio.Future
    started: float
    lease: tuple[str, str] | None  # asked for with the lookup (``Coalescer.lease_with_lookup``)
    written: bytes | None  # the entry this instance was writing when the lookup was sent
    first_sight: bool = False  # a request new to this instance (its head was not in the framing memo)


@dataclass(slots=True)
class Relay:
    """A miss whose body is relayed as it arrives (over the rule's size limit, or an event stream):
    the head to send, what was read already, the rest still in ``response``; ``done`` records it."""

    head: bytes
    chunked: bool
    prefix: bytes
    response: UpstreamResponse
    done: Any


class ReadPath:
    """Answers a framed GET of a cached route, from the cache or by its fill; the decisions are the proxy's."""

    def __init__(self, proxy: Any):
        self.proxy = proxy
        self._date = (0, b"")
        counter = proxy.metrics.fast_path
        self.answered, self.handed, self.released = (counter.labels(o) for o in ("answered", "handed", "released"))

    def answer(self, head: Head, peer: tuple[str | None, str]) -> bytes | InFlight | Coroutine | None:
        """Bytes: the answer. None: aiohttp's to answer. ``InFlight`` or a coroutine: the store lookup,
        whose outcome is the answer, a ``Prefetched`` to hand on, or the miss (``_miss``) to await."""
        p = self.proxy
        if p.mode != "on" or not p.store_watch.cache_usable or not p.ready:
            return None
        if p.gate.full:
            return None  # aiohttp's path refuses it, and counts that once
        if "#" in head.target:
            return None  # a fragment: aiohttp's path strips it (RequestPath._dispatch, request_target)
        first_sight = head.lookup is None
        d = self._lookup(head)
        if d is None or p.purge_pending(d):
            return None
        start = time.perf_counter()
        hit = p.l1_fresh(d)
        if hit is not None:
            if random() < p.auditor.sample:
                self._audit(d, hit[0], head, peer)
            return self.render(d, hit[0], "HIT", hit[1], hit[2], head, start, scheme=peer[1])
        p.gate.enter()  # left in finish() or _from_store()
        try:
            # A request never seen before may well be a miss: while such requests mostly are, its lookup
            # takes the fill's lease if the entry is absent, one round trip instead of two. Repeated
            # requests are mostly hits: a plain MGET.
            lease = p.coalescer.lease_with_lookup(d) if first_sight else None
            begun = p.store.lookup_future(d.key, d.gen_keys, lease, p.config.lease_ms)
        except BaseException:
            p.gate.leave()
            raise
        if begun is not None:
            return InFlight(d, head, start, peer, *begun, first_sight)
        return self._from_store(d, head, start, peer, first_sight)

    def _lookup(self, head: Head) -> Lookup | None:
        """``RequestPath.fast_lookup``, remembered on the head. The same bytes make the same Lookup for as long
        as the rules, the verifier and the token's validity are the same: that is checked each time."""
        p = self.proxy
        memo = head.lookup
        if memo is not None and memo[0] is p.rules and memo[1] is p.verifier \
                and (memo[2] == math.inf or p.verifier.clock() < memo[2]):
            return memo[3]
        raw_path, _, query = head.target.partition("?")
        d, until = p.fast_lookup(raw_path, query, head.headers)
        head.lookup = (p.rules, p.verifier, until, d) if d is not None else None
        if head.template is not None:  # its per-request fields aside, the next such request is this one
            head.template.lookup = head.lookup
        return d

    async def _from_store(self, d: Lookup, head: Head, start: float, peer: tuple[str | None, str],
                          first_sight: bool = False) -> bytes | Prefetched | Coroutine:
        """The lookup where the store offers no future (memory, cluster, or a connection being made)."""
        p = self.proxy
        try:
            raw, tokens = await p.store.lookup(d.key, d.gen_keys)
        except StoreUnavailable:
            return Prefetched(d.key, store_down=True)
        finally:
            p.gate.leave()
        if first_sight:
            p.coalescer.note_new_request_lookup(raw is None)
        return self._judged(d, head, start, peer, raw, tokens)

    def finish(self, flight: "InFlight") -> bytes | Prefetched | Coroutine:
        """The answer once ``flight``'s store future is done."""
        p = self.proxy
        p.gate.leave()
        try:
            raw, tokens, lease = p.store.lookup_finished(flight.future, flight.started, flight.d.key,
                                                         flight.d.gen_keys, flight.lease, flight.written)
        except StoreUnavailable:  # a lease taken expires by itself (lease_ms): the store is failing
            return Prefetched(flight.d.key, store_down=True)
        except LookupRedirected:  # a cluster slot on the move, or global tokens to read again: awaited lookup
            p.gate.enter()
            return self._from_store(flight.d, flight.head, flight.start, flight.peer, flight.first_sight)
        if flight.first_sight:
            p.coalescer.note_new_request_lookup(raw is None)
        return self._judged(flight.d, flight.head, flight.start, flight.peer, raw, tokens, lease)

    def _judged(self, d: Lookup, head: Head, start: float, peer: tuple[str | None, str], raw: bytes | None,
                tokens: list, lease: tuple[str, str] | None = None) -> bytes | Coroutine:
        p = self.proxy
        entry, verdict = p.looked_up(d, raw, tokens, head.target)
        if verdict.usable in ("fresh", "stale"):
            p.coalescer.drop_lease(lease)  # taken for an entry absent from the store, found being written here
        ttl_left = d.rule.ttl - verdict.age
        if verdict.usable == "fresh":
            if random() < p.auditor.sample:
                self._audit(d, entry, head, peer)
            return self.render(d, entry, "HIT", CacheStatus.hit(ttl_left), verdict.age, head, start, scheme=peer[1])
        if verdict.usable == "stale":
            # Here rather than handed on: the refresh must start in the same step as the lookup, as on
            # aiohttp's path, or a lookup made before a refresh finished could start a second one.
            rid = p.request_id_given(head.client_request_id)
            p.refresh_stale(d, tokens, head.target, head.headers, peer[0], peer[1], rid)
            status = CacheStatus.hit(ttl_left, "stale-while-revalidate")
            return self.render(d, entry, "STALE", status, verdict.age, head, start, rid, peer[1])
        return self._miss(d, head, start, peer, Prefetched(d.key, tokens, entry, verdict, lease=lease))

    def _audit(self, d: Lookup, entry: Entry, head: Head, peer: tuple[str | None, str]) -> None:
        """A sampled hit: the staleness auditor fetches it again in the background (proxy/serve/auditor.py)."""
        p = self.proxy
        p.auditor.offer(d, entry, Origin(head.target, head.headers, peer[0], peer[1],
                                                 p.request_id_given(head.client_request_id)))

    async def _miss(self, d: Lookup, head: Head, start: float, peer: tuple[str | None, str],
                    looked: Prefetched) -> bytes | Relay | Prefetched:
        """The fill of a miss, as aiohttp's path makes it (``RequestPath.fill``), answered here. Whatever
        would not fetch (a purge pending, the store unusable, the in-flight limit) is handed on with the
        lookup, before anything is fetched, and aiohttp's path bypasses or refuses it as usual."""
        p = self.proxy
        gate = p.gate
        if p.purge_pending(d) or not p.store_watch.cache_usable or gate.full:
            p.coalescer.drop_lease(looked.lease)
            looked.lease = None
            return looked
        rid = p.request_id_given(head.client_request_id)
        request_id_var.set(rid)  # this task's own context: log lines of the fill carry it
        origin = Origin(head.target, head.headers, peer[0], peer[1], rid)
        gate.enter()
        try:
            filled = await p.fill(d, origin, looked.entry, looked.verdict, looked.tokens, looked.lease)
        finally:
            gate.leave()
        if filled is None:  # the store failed before anything was fetched
            return Prefetched(d.key, store_down=True)
        if filled.fetched is None:
            return self.render(d, looked.entry, "STALE", filled.cache_status, looked.verdict.age, head, start, rid,
                               peer[1])
        fetched, cache_status = filled.fetched, filled.cache_status
        p.metrics.tally.inc(self.answered)
        if fetched.error is not None:
            response = error_response(fetched.error.status, fetched.error.detail, "MISS", cache_status)
            p.record("GET", d.rule.name, "miss", response.status, cache_status, start, rid)
            return wire(response.status, CIMultiDict(response.headers), response.body)
        headers = miss_headers(fetched.headers, fetched.etag, cache_status)
        p.point_at_client(headers, origin.headers, peer[1])
        record = partial(p.record, "GET", d.rule.name, "miss", fetched.status, cache_status, start, rid)
        # 1xx first (proxy/core/interim.py): a stored fill keeps them, a streamed one still has them on its
        # response (as PassThrough.stream relays them on aiohttp's path)
        if fetched.stream is not None:  # recorded once relayed, as aiohttp's path records it
            prefix, upstream = fetched.stream
            hints = interim.wire(interim.of(upstream))
            length = framed_length(upstream.headers)
            return Relay(hints + wire(fetched.status, headers, length, upstream.reason), length is None, prefix,
                         upstream, record)
        record()
        hints = interim.wire(fetched.interim) if fetched.interim else b""
        return hints + wire(fetched.status, headers, fetched.body)

    def render(self, d: Lookup, entry: Entry, label: str, cache_status: str, age: int, head: Head, start: float,
               rid: str | None = None, scheme: str = "http") -> bytes:
        p = self.proxy
        rid = rid or p.request_id_given(head.client_request_id)
        relocated = entry.wire_relocated
        if relocated is None:  # computed once per decoded entry, as entry_head is
            relocated = locations.needs_rewrite(entry.headers, p.upstream_address)
            object.__setattr__(entry, "wire_relocated", relocated)
        shown = entry
        if relocated:  # a Location on the backend's address: this client's own head (locations.py)
            headers = CIMultiDict(entry.headers)
            p.point_at_client(headers, head.headers, scheme)
            shown = replace(entry, headers=tuple(headers.items()))
        parts = [entry_head(shown), b"Age: %d\r\nX-Cache: %s\r\nCache-Status: " % (age, label.encode()),
                 cache_status.encode(), b"\r\nX-Request-ID: ", rid.encode(), b"\r\n"]
        if not shown.wire_dated:
            parts.append(self._date_line())
        parts += (b"\r\n", entry.body)
        p.record("GET", d.rule.name, "hit" if label == "HIT" else "stale", entry.status, cache_status, start, rid)
        p.metrics.tally.inc(self.answered)
        return b"".join(parts)

    def _date_line(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n")
        return self._date[1]
