"""Fail fast and fail open: a circuit breaker and latency metrics in front of the store.

Every store bounds its own calls (RedisStore: socket and reply timeouts of ``STORE_TIMEOUT``; the memory
store never waits), so no per-call ``asyncio.timeout`` is paid on the hit path here.

While the breaker is open, calls raise ``StoreUnavailable`` at once, so requests go straight to the
backend instead of each waiting out a timeout; after ``reset_after`` seconds one probe is let through
(half-open) and its outcome closes or re-opens the breaker. The proxy's store watcher also probes with
``verify`` (off the request path, whatever the breaker's state): its success closes the breaker. Opening
and closing are each logged once (``store_circuit_open`` / ``store_circuit_closed``) and shown by the
``katiba_cache_circuit_state`` gauge and ``/readyz``.

``on_unreachable``, if set, is called on every failure that says the store could not be reached
(timeouts, refused or lost connections, a read-only replica), not on errors the server answered (e.g.
OOM under ``noeviction``): the proxy then stops reading from the store until ``verify`` succeeds.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Callable, Sequence

from ..core.errors import StoreUnavailable
from ..core.metrics import Metrics
from .base import Store

log = logging.getLogger("proxy.store")

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half-open", OPEN: "open"}


class CircuitBreaker:
    def __init__(self, failures_to_open: int = 5, reset_after: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.failures_to_open = failures_to_open
        self.reset_after = reset_after
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.clock() - self.opened_at >= self.reset_after:
            self.state = HALF_OPEN
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        if self.state != CLOSED:
            log.info("store circuit closed", extra={"event": "store_circuit_closed"})
        self.state, self.failures, self._probing = CLOSED, 0, False

    def failed(self) -> None:
        self.failures += 1
        self._probing = False
        if self.state == HALF_OPEN or self.failures >= self.failures_to_open:
            if self.state == CLOSED:  # a failed half-open probe re-opens quietly: one line per outage
                log.warning("store circuit opened", extra={"event": "store_circuit_open", "failures": self.failures})
            self.state, self.opened_at = OPEN, self.clock()


class GuardedStore:
    """Wraps a Store: the same methods, each with a timeout, the breaker and latency metrics."""

    def __init__(self, store: Store, metrics: Metrics, timeout: float = 0.1, breaker: CircuitBreaker | None = None):
        self.inner = store
        self.name = store.name
        self.metrics = metrics
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker()
        self.on_unreachable: Callable[[], None] | None = None
        self._observe = {op: functools.partial(metrics.tally.observe, metrics.store_duration.labels(op)) for op in
                         ("lookup", "ensure", "store", "bump", "lease", "release", "stats", "ping")}
        # Entries sent by write_behind whose store call has not returned: key -> encoded entry.
        self.writing: dict[str, bytes] = {}
        self._writes: set[asyncio.Task] = set()

    async def _call(self, op: str, fn, *args):
        breaker = self.breaker
        if not breaker.allow():
            if self.on_unreachable is not None:
                self.on_unreachable()  # e.g. opened by the watcher's failing probes while no request came
            raise StoreUnavailable("circuit open")
        start = time.perf_counter()
        try:
            result = await fn(*args)
        except (StoreUnavailable, TimeoutError, OSError) as exc:
            raise self._failed(op, exc) from None
        self._succeeded(op, start)
        return result

    def _failed(self, op: str, exc: BaseException) -> StoreUnavailable:
        breaker = self.breaker
        breaker.failed()
        self.metrics.circuit_state.set(breaker.state)
        self.metrics.store_errors.labels(op).inc()
        log.warning("store error", extra={"event": "store_error", "op": op, "error": str(exc) or type(exc).__name__})
        self._unreachable(exc)
        return StoreUnavailable(f"{op}: {exc or type(exc).__name__}")

    def _succeeded(self, op: str, start: float) -> None:
        self._observe[op](time.perf_counter() - start)
        breaker = self.breaker
        if breaker.state != CLOSED or breaker.failures:
            breaker.succeeded()
            self.metrics.circuit_state.set(CLOSED)

    async def lookup(self, key: str, gen_keys: Sequence[str]) -> tuple[bytes | None, list[str | None]]:
        written = self.writing.get(key) if self.writing else None
        raw, tokens = await self._call("lookup", self.inner.lookup, key, gen_keys)
        return self._seen(key, raw, written), tokens

    def _seen(self, key: str, raw: bytes | None, written: bytes | None) -> bytes | None:
        """The entry a lookup should judge: one this instance is writing (``write_behind``) or was
        writing when the lookup was sent (``written``), else what the store gave. Whether the store read
        the key before or after such a write landed is a race the lookup must not lose: the write may
        travel on another connection, and its answer may come back first."""
        if self.writing:
            return self.writing.get(key) or written or raw
        return raw if written is None else written

    def lookup_future(self, key: str, gen_keys: Sequence[str], lease: tuple[str, str] | None = None,
                      lease_ms: int = 0) -> tuple[asyncio.Future, float, tuple[str, str] | None, bytes | None] | None:
        """The lookup as (the store's future, start time, ``lease``, the entry being written here) when
        the store offers one (Redis' auto-pipeline) and the breaker is closed; None: await ``lookup``.
        With ``lease`` (key, owner), a store that can (single-node Redis) also takes the fill's lease if
        the entry is absent; the third item is then ``lease``, else None. ``lookup_finished`` takes
        them back and gives the result."""
        if self.breaker.state != CLOSED:
            return None
        leasing = getattr(self.inner, "lookup_leasing_future", None) if lease is not None else None
        start = time.perf_counter()
        if leasing is not None:
            future = leasing(key, gen_keys, lease[0], lease[1], lease_ms)
        else:
            begin = getattr(self.inner, "lookup_future", None)
            future, lease = (None if begin is None else begin(key, gen_keys)), None
        return None if future is None else (future, start, lease, self.writing.get(key) if self.writing else None)

    def lookup_finished(self, future: asyncio.Future, start: float, key: str, gen_keys: Sequence[str],
                        lease: tuple[str, str] | None, written: bytes | None
                        ) -> tuple[bytes | None, list[str | None], tuple[str, str] | None]:
        """``lookup``'s result (or its StoreUnavailable) from a done ``lookup_future``, with the lease if
        it was asked for and taken. LookupRedirected passes through: no failure, the caller asks
        ``lookup`` instead."""
        try:
            if lease is not None:
                raw, tokens, taken = self.inner.lookup_leasing_outcome(future)
                lease = lease if taken else None
            else:
                raw, tokens = self.inner.lookup_outcome(future, key, gen_keys)
        except (StoreUnavailable, TimeoutError, OSError) as exc:
            raise self._failed("lookup", exc) from None
        self._succeeded("lookup", start)
        return self._seen(key, raw, written), tokens, lease

    @property
    def leases_with_lookups(self) -> bool:
        """The store can take a fill's lease in the lookup's round trip (``lookup_or_lease``)."""
        return hasattr(self.inner, "lookup_or_lease")

    def lookup_or_lease(self, key: str, gen_keys: Sequence[str], lease: tuple[str, str], lease_ms: int,
                        unusable: bytes | None):
        """(entry, tokens, leased): the store's own entry, never one being written here (the caller
        compares it with what it saw before)."""
        return self._call("lookup", self.inner.lookup_or_lease, key, gen_keys, *lease, lease_ms, unusable)

    def ensure_generations(self, gen_keys: Sequence[str], ttl: int):
        return self._call("ensure", self.inner.ensure_generations, gen_keys, ttl)

    def store_if_current(self, key, value, ttl, gen_keys, expected, gen_ttl, lease=None):
        return self._call("store", self.inner.store_if_current, key, value, ttl, gen_keys, expected, gen_ttl, lease)

    def write_behind(self, key, value, ttl, gen_keys, expected, gen_ttl, lease=None) -> asyncio.Task:
        """``store_if_current`` sent, not awaited: the caller answers its client without waiting for the
        store's round trip. Until the store call returns, this instance's lookups of ``key`` see ``value``
        instead of what the store holds (older, if anything), so the next request here is a hit even if
        the write travels on another connection than the lookup (a large entry, a cluster node), and a
        stale-while-revalidate refresh that just ended is not started again. That entry is judged like a
        stored one, against the generations the lookup read: if a purge made the store refuse the
        write, the lookup reads the bumped generation and the entry is not served."""
        self.writing[key] = value
        task = asyncio.get_running_loop().create_task(
            self.store_if_current(key, value, ttl, gen_keys, expected, gen_ttl, lease))
        self._writes.add(task)

        def written(_: asyncio.Task) -> None:
            self._writes.discard(task)
            if self.writing.get(key) is value:
                del self.writing[key]
        task.add_done_callback(written)
        return task

    async def writes_landed(self) -> None:
        """Return once every write sent by ``write_behind`` so far has had the store's answer."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def bump(self, gen_keys: Sequence[str], ttl: int):
        return self._call("bump", self.inner.bump, gen_keys, ttl)

    def acquire_lease(self, key: str, owner: str, ttl_ms: int):
        return self._call("lease", self.inner.acquire_lease, key, owner, ttl_ms)

    def release_lease(self, key: str, owner: str):
        return self._call("release", self.inner.release_lease, key, owner)

    def stats(self):
        return self._call("stats", self.inner.stats)

    def ping(self):
        return self._call("ping", self.inner.ping)

    def _unreachable(self, exc: BaseException) -> None:
        if self.on_unreachable is not None and not getattr(exc, "answered", False):
            self.on_unreachable()

    async def verify(self, marker_key: str, epoch_key: str, epoch_ttl: int) -> bool:
        """The store watcher's probe (``RedisStore.verify``; ``ping`` for stores without one), whatever the
        breaker's state. Success closes the breaker; failure counts against it. True if the epoch was bumped."""
        breaker = self.breaker
        fn = getattr(self.inner, "verify", None)
        try:
            if fn is None:
                await self.inner.ping()
                bumped = False
            else:
                bumped = await fn(marker_key, epoch_key, epoch_ttl)
        except (StoreUnavailable, TimeoutError, OSError) as exc:
            breaker.failed()
            self.metrics.circuit_state.set(breaker.state)
            self.metrics.store_errors.labels("verify").inc()
            raise StoreUnavailable(f"verify: {exc or type(exc).__name__}") from None
        if breaker.state != CLOSED or breaker.failures:
            breaker.succeeded()
            self.metrics.circuit_state.set(CLOSED)
        return bumped

    async def close(self) -> None:
        await self.inner.close()
