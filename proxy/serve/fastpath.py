"""Cached reads answered straight off the socket, hits and misses; every other request answered by aiohttp.

Why: aiohttp's per-request machinery (request and response objects, a task per request, header
serialisation through a stream writer) costs about 50 µs per request on our 2-core machines, three times
what a hit itself needs. A hit served here skips all of it; a miss skips the hand-off to aiohttp and
its response machinery, about 0.25 ms of an idle miss measured inside the proxy.

How: ``FastRequestHandler`` *is* aiohttp's connection protocol (``RequestHandler``) with one step in
front. It frames each request itself. A bodyless HTTP/1.1 GET with nothing unusual in it (no
conditional or Range header, no Expect) is offered to ``ReadPath``: when the request maps to a cache
rule, the entry is looked up (the in-process L1, else one store round trip). A fresh or
stale-while-revalidate entry is answered at once; otherwise the fill is the proxy's own
(``Proxy.fill_miss``, as on aiohttp's path) and its answer, relayed as it arrives when the body is too
large to store, is written here, with the headers aiohttp's path would send. Anything else (a write,
an unruled route, a request that would bypass the cache for a pending purge, a store failure or the
in-flight limit) goes to aiohttp unchanged, byte for byte, and is answered there; a lookup made already
travels with it (``prefetched``), so no request asks the store twice.

Order and framing: answers leave in request order. A fast answer is written only when aiohttp has
answered every request handed to it, and nothing is handed on while a fast lookup is in flight. A
request this module cannot frame with certainty (Transfer-Encoding, Upgrade, Connection other than
keep-alive, HTTP/1.0, several or odd Content-Lengths, a malformed line, a bare LF) gives the connection
to aiohttp for good, so that aiohttp's strict parser judges it and nothing is read two ways.

``install`` hooks this into an aiohttp ``Application``: every runner (``cache-proxy serve``, the test
client) then gets these connections. ``FAST_PATH=0`` turns it off.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass, replace
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from random import random
from typing import Any, Coroutine

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from ..core import interim, locations
from ..core.entry import Entry
from ..core.errors import LookupRedirected, StoreUnavailable
from .answers import request_id as request_id_var
from .answers import Origin, miss_headers
from ..core.policy import Lookup
from ..upstream.client import body_failure, framed_length
from .wire import CacheStatus, error_response

log = logging.getLogger("proxy")

MAX_HEAD = 16384  # request line and fields; a longer head is aiohttp's to refuse (431)
# aiohttp's limits on a request head, as the proxy's server runs it (build_app passes these): a head
# over any of them gets aiohttp's 400, so the framer never reads one. Its C parser counts the target
# against max_line_size, its Python parser the whole line; the Python parser counts the request line
# and the blank line among max_headers, the C parser neither. The framer applies the stricter reading.
AIOHTTP_LIMITS = {"max_line_size": 8190, "max_headers": 128, "max_field_size": 16384}
_MAX_LINE, _MAX_FIELDS, _MAX_FIELD = (AIOHTTP_LIMITS[k] for k in ("max_line_size", "max_headers", "max_field_size"))
MAX_BUFFERED = 256 << 10  # read no more from a client whose earlier requests are still being answered
_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (/[\x21-\x7e]*) HTTP/1\.1")
_FIELDS = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_DIGITS = re.compile(r"[0-9]{1,15}")
_NOT_FAST = frozenset({"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range",
                       "range", "expect"})
# Fields aiohttp's parser refuses to see twice (aiohttp.http_parser.SINGLETON_HEADERS).
_SINGLETONS = frozenset({"content-length", "content-location", "content-range", "content-type", "etag", "host",
                         "max-forwards", "server", "transfer-encoding", "user-agent"})
_SPECIAL = _NOT_FAST | {"transfer-encoding", "upgrade", "connection", "content-length"}


@dataclass(slots=True)
class Head:
    """A framed request head: what it is, and the exact bytes to hand on if this module doesn't answer."""

    raw: bytes
    method: str
    target: str
    headers: CIMultiDict
    body_length: int
    fast: bool
    lookup: tuple | None = None  # ReadPath._lookup's memo: (rules, verifier, valid until, Lookup)


UNFRAMEABLE = object()
_CANCELLED = object()


def frame(buf: bytearray) -> Head | None | object:
    """The head at the start of ``buf``; None while incomplete; ``UNFRAMEABLE`` if it is not plain."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD or buf.count(b"\n") != buf.count(b"\r\n"):
            return UNFRAMEABLE
        return None
    if end > MAX_HEAD:
        return UNFRAMEABLE
    raw = bytes(buf[:end + 4])
    head = _FRAMED.get(raw)
    if head is None:
        head = _frame(raw, end)
        if len(raw) <= FRAMED_MAX_BYTES:
            if len(_FRAMED) >= FRAMED_MAX:
                _FRAMED.clear()
            _FRAMED[raw] = head
    return head


# Frames by their exact bytes: clients repeat byte-identical requests (same token, same fields), and a
# frame is a pure function of its bytes, so each distinct head is parsed once. Heads are never changed
# after framing (the headers are read, or copied before anything is added), except for the memo of
# what the rules make of them (``Head.lookup``).
_FRAMED: dict[bytes, Head | object] = {}
FRAMED_MAX = 4096
FRAMED_MAX_BYTES = 2048  # a typical head with a JWT is under 1 KiB; larger ones are parsed each time


def _frame(raw: bytes, end: int) -> Head | object:
    line_end = raw.find(b"\r\n")
    first = _REQUEST_LINE.fullmatch(raw, 0, line_end)
    if first is None or line_end > _MAX_LINE or _FIELDS.fullmatch(raw, line_end + 2, end + 2) is None:
        return UNFRAMEABLE
    fields, names = [], set()
    lines = raw[line_end + 2:end].decode("utf-8", "surrogateescape").split("\r\n") if end > line_end else ()
    if len(lines) > _MAX_FIELDS - 2:
        return UNFRAMEABLE
    for line in lines:
        if len(line) > _MAX_FIELD:
            return UNFRAMEABLE
        name, _, value = line.partition(":")
        fields.append((name, value.strip(" \t")))
        names.add(name.lower())
    headers = CIMultiDict(fields)
    if "host" not in names or (len(names) < len(fields) and _repeats_a_singleton(fields)):
        return UNFRAMEABLE  # aiohttp refuses these with 400: let it
    body_length, fast = 0, first[1] == b"GET"
    if not names.isdisjoint(_SPECIAL):  # the rare case: look closer
        if "transfer-encoding" in names or "upgrade" in names:
            return UNFRAMEABLE
        connection = headers.getall("connection", ())
        if connection and (len(connection) > 1 or connection[0].strip().lower() != "keep-alive"):
            return UNFRAMEABLE
        lengths = headers.getall("content-length", ())
        if len(lengths) > 1 or (lengths and _DIGITS.fullmatch(lengths[0]) is None):
            return UNFRAMEABLE
        body_length = int(lengths[0]) if lengths else 0
        fast = fast and body_length == 0 and names.isdisjoint(_NOT_FAST)
    method = first[1].decode("ascii")
    return Head(raw, method, first[2].decode("ascii"), headers, body_length, fast)


def _repeats_a_singleton(fields: list[tuple[str, str]]) -> bool:
    seen = [name.lower() for name, _ in fields]
    return any(seen.count(name) > 1 for name in _SINGLETONS)


@dataclass(slots=True)
class Prefetched:
    """A fast lookup that found no fresh entry, handed to aiohttp's path with the request so that the
    miss neither asks the store nor judges the entry again (``Proxy._read`` takes it when the key
    matches): what the store gave, and ``Proxy.looked_up``'s verdict on it."""

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
    lease: tuple[str, str] | None  # asked for with the lookup (``Proxy.lease_for``)
    written: bytes | None  # the entry this instance was writing when the lookup was sent


@dataclass(slots=True)
class Relay:
    """A miss whose body is relayed as it arrives (over the rule's size limit, or an event stream):
    the head to send, what was read already, the rest still in ``response``; ``done`` records it."""

    head: bytes
    chunked: bool
    prefix: bytes
    response: aiohttp.ClientResponse
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
        if p.mode != "on" or not p.cache_usable or not p.ready:
            return None
        if p.gate.full:
            return None  # aiohttp's path refuses it, and counts that once
        if "#" in head.target:
            return None  # a fragment: aiohttp's path strips it (Proxy._dispatch, request_target)
        first_sight = head.lookup is None
        d = self._lookup(head)
        if d is None or p._purge_pending(d):
            return None
        start = time.perf_counter()
        hit = p.l1_fresh(d)
        if hit is not None:
            if random() < p.auditor.sample:
                self._audit(d, hit[0], head, peer)
            return self.render(d, hit[0], "HIT", hit[1], hit[2], head, start, scheme=peer[1])
        p.gate.enter()  # left in finish() or _from_store()
        try:
            # A request never seen before is mostly a miss: its lookup takes the fill's lease if the entry
            # is absent, one round trip instead of two. Repeated requests are mostly hits: a plain MGET.
            lease = p.lease_for(d) if first_sight else None
            begun = p.store.lookup_future(d.key, d.gen_keys, lease, p.config.lease_ms)
        except BaseException:
            p.gate.leave()
            raise
        if begun is not None:
            return InFlight(d, head, start, peer, *begun)
        return self._from_store(d, head, start, peer)

    def _lookup(self, head: Head) -> Lookup | None:
        """``Proxy.fast_lookup``, remembered on the head. The same bytes make the same Lookup for as long
        as the rules, the verifier and the token's validity are the same: that is checked each time."""
        p = self.proxy
        memo = head.lookup
        if memo is not None and memo[0] is p.rules and memo[1] is p.verifier \
                and (memo[2] == math.inf or p.verifier.clock() < memo[2]):
            return memo[3]
        raw_path, _, query = head.target.partition("?")
        d, until = p.fast_lookup(raw_path, query, head.headers)
        head.lookup = (p.rules, p.verifier, until, d) if d is not None else None
        return d

    async def _from_store(self, d: Lookup, head: Head, start: float,
                          peer: tuple[str | None, str]) -> bytes | Prefetched | Coroutine:
        """The lookup where the store offers no future (memory, cluster, or a connection being made)."""
        p = self.proxy
        try:
            raw, tokens = await p.store.lookup(d.key, d.gen_keys)
        except StoreUnavailable:
            return Prefetched(d.key, store_down=True)
        finally:
            p.gate.leave()
        return self._judged(d, head, start, peer, raw, tokens)

    def finish(self, flight: "InFlight") -> bytes | Prefetched | Coroutine:
        """The answer once ``flight``'s store future is done."""
        p = self.proxy
        p.gate.leave()
        try:
            raw, tokens, lease = p.store.lookup_finished(flight.future, flight.started, flight.d.key, flight.lease,
                                                         flight.written)
        except StoreUnavailable:  # a lease taken expires by itself (lease_ms): the store is failing
            return Prefetched(flight.d.key, store_down=True)
        except LookupRedirected:  # a cluster slot on the move: the awaited lookup follows it
            p.gate.enter()
            return self._from_store(flight.d, flight.head, flight.start, flight.peer)
        return self._judged(flight.d, flight.head, flight.start, flight.peer, raw, tokens, lease)

    def _judged(self, d: Lookup, head: Head, start: float, peer: tuple[str | None, str], raw: bytes | None,
                tokens: list, lease: tuple[str, str] | None = None) -> bytes | Coroutine:
        p = self.proxy
        entry, verdict = p.looked_up(d, raw, tokens, head.target)
        if verdict.usable in ("fresh", "stale"):
            p.drop_lease(lease)  # taken for an entry absent from the store, found being written here
        ttl_left = d.rule.ttl - verdict.age
        if verdict.usable == "fresh":
            if random() < p.auditor.sample:
                self._audit(d, entry, head, peer)
            return self.render(d, entry, "HIT", CacheStatus.hit(ttl_left), verdict.age, head, start, scheme=peer[1])
        if verdict.usable == "stale":
            # Here rather than handed on: the refresh must start in the same step as the lookup, as on
            # aiohttp's path, or a lookup made before a refresh finished could start a second one.
            rid = p.request_id(head.headers)
            p.refresh_stale(d, tokens, head.target, head.headers, peer[0], peer[1], rid)
            status = CacheStatus.hit(ttl_left, "stale-while-revalidate")
            return self.render(d, entry, "STALE", status, verdict.age, head, start, rid, peer[1])
        return self._miss(d, head, start, peer, Prefetched(d.key, tokens, entry, verdict, lease=lease))

    def _audit(self, d: Lookup, entry: Entry, head: Head, peer: tuple[str | None, str]) -> None:
        """A sampled hit: the staleness auditor fetches it again in the background (proxy/serve/auditor.py)."""
        p = self.proxy
        p.auditor.offer(d, entry, Origin(head.target, head.headers, peer[0], peer[1],
                                                 p.request_id(head.headers)))

    async def _miss(self, d: Lookup, head: Head, start: float, peer: tuple[str | None, str],
                    looked: Prefetched) -> bytes | Relay | Prefetched:
        """The fill of a miss, as aiohttp's path makes it (``Proxy.fill_miss``), answered here. Whatever
        would not fetch (a purge pending, the store unusable, the in-flight limit) is handed on with the
        lookup, before anything is fetched, and aiohttp's path bypasses or refuses it as usual."""
        p = self.proxy
        gate = p.gate
        if p._purge_pending(d) or not p.cache_usable or gate.full:
            p.drop_lease(looked.lease)
            looked.lease = None
            return looked
        rid = p.request_id(head.headers)
        request_id_var.set(rid)  # this task's own context: log lines of the fill carry it
        origin = Origin(head.target, head.headers, peer[0], peer[1], rid)
        gate.enter()
        try:
            filled = await p.fill_miss(d, origin, looked.entry, looked.verdict, looked.tokens, looked.lease)
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
        p.point_at_client(headers, head.headers, peer[1])
        record = partial(p.record, "GET", d.rule.name, "miss", fetched.status, cache_status, start, rid)
        hints = interim.wire(fetched.interim) if fetched.interim else b""  # 1xx first (proxy/core/interim.py)
        if fetched.stream is not None:  # recorded once relayed, as aiohttp's path records it
            prefix, upstream = fetched.stream
            hints = interim.wire(interim.of(upstream))  # a streamed fill's 1xx come with its response
            length = framed_length(upstream.headers)
            return Relay(hints + wire(fetched.status, headers, length, upstream.reason), length is None, prefix,
                         upstream, record)
        record()
        return hints + wire(fetched.status, headers, fetched.body)

    def render(self, d: Lookup, entry: Entry, label: str, cache_status: str, age: int, head: Head, start: float,
               rid: str | None = None, scheme: str = "http") -> bytes:
        p = self.proxy
        rid = rid or p.request_id(head.headers)
        relocated = entry.__dict__.get("_wire_relocated")
        if relocated is None:  # computed once per decoded entry, as _wire_head is
            relocated = locations.needs_rewrite(CIMultiDict(entry.headers), p.upstream_address)
            object.__setattr__(entry, "_wire_relocated", relocated)
        shown = entry
        if relocated:  # a Location on the backend's address: this client's own head (locations.py)
            headers = CIMultiDict(entry.headers)
            p.point_at_client(headers, head.headers, scheme)
            shown = replace(entry, headers=tuple(headers.items()))
        parts = [_wire_head(shown), b"Age: %d\r\nX-Cache: %s\r\nCache-Status: " % (age, label.encode()),
                 cache_status.encode(), b"\r\nX-Request-ID: ", rid.encode(), b"\r\n"]
        if not shown.__dict__["_wire_dated"]:
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


def _wire_head(entry: Entry) -> bytes:
    """Status line and the entry's own headers, as ``Proxy._from_entry`` + aiohttp would send them;
    computed once per decoded entry (decoded entries are shared, see entry.decode_entry)."""
    cached = entry.__dict__.get("_wire_head")
    if cached is not None:
        return cached
    headers = CIMultiDict(entry.headers)
    headers["ETag"] = headers.get("ETag", entry.etag)
    for name in ("Age", "X-Cache", "Cache-Status", "X-Request-ID"):
        headers.popall(name, None)
    wire_head, dated = _status_and_fields(entry.status, headers, len(entry.body))
    object.__setattr__(entry, "_wire_head", wire_head)  # frozen dataclass: a derived, immutable cache
    object.__setattr__(entry, "_wire_dated", dated)
    return wire_head


def wire(status: int, headers: CIMultiDict, body: bytes | int | None, reason: str | None = None) -> bytes:
    """An answer as aiohttp's ``web.Response`` would put it on the wire for a keep-alive HTTP/1.1 GET.
    ``body``: the bytes; or only the head, for a body of that many bytes (int) or a chunked one (None)."""
    length = len(body) if isinstance(body, bytes) else body
    head, dated = _status_and_fields(status, headers, length, reason)
    date = b"" if dated else b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
    if not isinstance(body, bytes) or status in _EMPTY_BODY:
        body = b""
    return b"".join((head, date, b"\r\n", body))


_EMPTY_BODY = frozenset((204, 304, *range(100, 200)))  # aiohttp.helpers.EMPTY_BODY_STATUS_CODES


def _status_and_fields(status: int, headers: CIMultiDict, length: int | None,
                       reason: str | None = None) -> tuple[bytes, bool]:
    """The status line and fields (no blank line), framed for ``length`` bytes (None: chunked), with
    aiohttp's defaults; and whether a Date field is among them."""
    headers = CIMultiDict(headers)
    for name in ("Content-Length", "Transfer-Encoding", "Connection"):
        headers.popall(name, None)
    if status not in _EMPTY_BODY:
        if length is None:
            headers["Transfer-Encoding"] = "chunked"
        if length != 0:
            headers.setdefault("Content-Type", "application/octet-stream")
    headers.setdefault("Server", SERVER_SOFTWARE)
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    if status not in _EMPTY_BODY and length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape"), "Date" in headers


class FastRequestHandler(RequestHandler):
    """aiohttp's connection protocol with cached reads answered before aiohttp sees them (module doc)."""

    def __init__(self, manager: web.Server, reads: ReadPath, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self.reads = reads
        self.prefetched: Prefetched | None = None
        self._buf = bytearray()
        self._body_left = 0  # bytes of a handed-on request's body still to pass through
        self._owned = False  # aiohttp has this connection for good
        self._handed = 0  # requests given to aiohttp
        self._answered = 0  # ... and answered by it
        self._busy = False  # a fast lookup is in flight
        self._reading_held = False
        self._peer_info: tuple[str | None, str] | None = None

    def data_received(self, data: bytes) -> None:
        if self._owned:
            super().data_received(data)
            return
        if self._force_close or self._close:
            return
        if self._body_left:
            n = min(self._body_left, len(data))
            self._body_left -= n
            super().data_received(data if n == len(data) else data[:n])
            if n == len(data):
                return
            data = data[n:]
        self._buf += data
        self._pump()
        if len(self._buf) > MAX_BUFFERED:
            self._hold_reading()

    def _pump(self) -> None:
        while self._buf and not (self._busy or self._body_left or self._owned or self._force_close or self._close):
            head = frame(self._buf)
            if head is None:
                break
            if head is UNFRAMEABLE:
                self._give_up()
                return
            del self._buf[:len(head.raw)]
            if head.fast and self._handed == self._answered and not self._paused:
                if self._try_fast(head):
                    continue
                if self._busy:
                    break
            self._hand(head)
        if len(self._buf) <= MAX_BUFFERED:
            self._release_reading()

    # Two parties pause this socket's reading: this module while its own buffer is full, and aiohttp
    # while its request queue (or a flow-controlled payload) is full. Reading resumes only when neither
    # holds it, or one party's resume would let the other's buffer grow without bound.
    def _hold_reading(self) -> None:
        if not self._reading_held:
            self._reading_held = True
            self._pause_transport_reading()

    def _release_reading(self) -> None:
        if self._reading_held:
            self._reading_held = False
            if not (self._reading_paused or self._buffer_paused):
                self._resume_transport_reading()

    def _resume_transport_reading(self) -> None:  # aiohttp's resumes come through here too
        if not self._reading_held:
            super()._resume_transport_reading()

    def _try_fast(self, head: Head) -> bool:
        """True once answered here; else either a lookup is in flight (``_busy``) or it is aiohttp's."""
        try:
            outcome = self.reads.answer(head, self._peer())
        except Exception:  # noqa: BLE001 - never worse than aiohttp's path: hand it on
            log.exception("fast path failed; handing the request to the full path", extra={"event": "fast_path_error"})
            return False
        if outcome is None:
            return False
        if isinstance(outcome, bytes):
            self._write_answer(outcome)
            return True
        self._wait_for(head, outcome)
        return False

    def _wait_for(self, head: Head, outcome: InFlight | Relay | Any) -> None:
        """Hold the connection (``_busy``) until ``outcome`` (a store future, a coroutine, a relay) is done."""
        self._busy = True
        self._request_in_progress = True  # aiohttp's graceful shutdown waits for it (see _lookup_done)
        if isinstance(outcome, InFlight):
            outcome.future.add_done_callback(partial(self._lookup_done, head, outcome))
            return
        if isinstance(outcome, Relay):
            outcome = self._relay(outcome)
        self._loop.create_task(outcome).add_done_callback(partial(self._lookup_done, head, None))

    def _peer(self) -> tuple[str | None, str]:
        """(client address, scheme), as aiohttp's request.remote and request.scheme would give them."""
        if self._peer_info is not None:
            return self._peer_info
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        ip = peer[0] if isinstance(peer, (tuple, list)) and peer else None
        scheme = "https" if transport is not None and transport.get_extra_info("sslcontext") else "http"
        self._peer_info = (ip, scheme)
        return self._peer_info

    def _lookup_done(self, head: Head, flight: InFlight | None, done: asyncio.Future) -> None:
        try:
            outcome = self.reads.finish(flight) if flight is not None else done.result()
        except asyncio.CancelledError:
            outcome = _CANCELLED
        except Exception:  # noqa: BLE001 - never worse than aiohttp's path: hand it on
            log.exception("fast path lookup failed; handing the request to the full path",
                          extra={"event": "fast_path_error"})
            outcome = None
        if isinstance(outcome, Relay) or asyncio.iscoroutine(outcome):
            if self.transport is not None:
                self._wait_for(head, outcome)  # a miss: its fill, then its answer; still busy
                return
            if isinstance(outcome, Relay):
                outcome.response.release()
            else:
                outcome.close()  # never started: nothing was fetched (a lease taken expires: lease_ms)
        self._busy = False
        self._request_in_progress = False
        waiter = self._handler_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.transport is None or outcome is _CANCELLED:
            return
        if isinstance(outcome, bytes):
            self._write_answer(outcome)
        else:
            self._hand(head, outcome)
        self._pump()

    async def _relay(self, relay: Relay) -> bytes:
        """A miss's body relayed as it arrives (as ``Proxy._stream`` does it); a backend failure mid-body
        aborts the client connection, the only way left to say the body is incomplete."""
        p = self.reads.proxy
        try:
            self._write_answer(relay.head)
            chunks = relay.response.content.iter_any()
            chunk = relay.prefix
            while True:
                if chunk:
                    if self.transport is None:
                        break
                    self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if relay.chunked else chunk)
                    if self._paused:  # the client reads slower than the backend sends
                        await self._drain_helper()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
            if relay.chunked and self.transport is not None:
                self.transport.write(b"0\r\n\r\n")
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            if self.transport is not None:  # the backend failed mid-body (a client gone is no error)
                p.upstream.failures(body_failure(exc), "none", "GET")  # counted, logged (rate-limited)
                self.transport.close()
        except Exception:  # noqa: BLE001 - part of an answer is out: nothing may follow it on this connection
            log.exception("relaying a miss failed", extra={"event": "fast_path_error"})
            if self.transport is not None:
                self.transport.close()
        finally:
            relay.response.release()
            relay.done()
        return b""

    def _write_answer(self, answer: bytes) -> None:
        assert self.transport is not None
        self.transport.write(answer)
        # aiohttp closes a connection idle past its keep-alive timeout; answers given here are activity.
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout

    def _hand(self, head: Head, prefetched: Prefetched | None = None) -> None:
        self.prefetched = prefetched  # only ever for the request handed with it (Proxy._read checks the key)
        self._handed += 1
        self.reads.handed.inc()
        available = min(len(self._buf), head.body_length)
        chunk = head.raw + bytes(self._buf[:available]) if available else head.raw
        del self._buf[:available]
        self._body_left = head.body_length - available
        super().data_received(chunk)

    def _give_up(self) -> None:
        self._owned = True
        self.reads.released.inc()
        data = bytes(self._buf)
        self._buf.clear()
        self._release_reading()
        if data:
            super().data_received(data)

    async def _handle_request(self, request, start_time, request_handler):  # type: ignore[override]
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._answered += 1
            self._loop.call_soon(self._pump)  # aiohttp has written its answer: queued fast requests may go

    def _process_keepalive(self) -> None:
        if self._busy and not self._force_close:  # aiohttp sees no request of its own: not idle all the same
            self._keepalive_handle = None
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
            self._keepalive_handle = self._loop.call_at(self._next_keepalive_close_time, self._process_keepalive)
            return
        super()._process_keepalive()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._pump()


class FastServer(web.Server):
    """aiohttp's connection factory, making ``FastRequestHandler`` connections."""

    reads: ReadPath

    def __call__(self) -> RequestHandler:
        return FastRequestHandler(self, self.reads, loop=self._loop, **self._kwargs)


def install(app: web.Application, proxy: Any) -> None:
    """Give every server made for ``app`` fast-path connections. aiohttp has no public hook for its
    connection protocol; ``_make_handler`` is where the Server is made, for ``AppRunner`` and the test
    client alike, and tests/functional/test_fastpath.py fails loudly if that ever changes."""
    reads = ReadPath(proxy)
    make_server = app._make_handler

    def make_fast_server(**kwargs: Any) -> web.Server:
        server = make_server(**kwargs)
        server.__class__ = FastServer
        server.reads = reads  # type: ignore[attr-defined]
        return server

    app._make_handler = make_fast_server  # type: ignore[method-assign]
