"""The backend behind one seam: build the forwarded request, send it, map failures to 502/504.

Every request goes through the lean HTTP/1.1 client in ``http1.py``: ``fetch`` (the fills' GETs) and
``send`` (writes, bypasses, revalidations, HEAD: the answers relayed as they come). It is a third of a
miss's CPU cheaper than aiohttp's, relays a body longer than its Content-Length cut there (aiohttp's
client refused the whole answer: a 502), and keeps 1xx interim answers for the client (aiohttp's
dropped them). aiohttp's client session stays for WebSockets and the start-up probe. Both share the
slots, the timeouts and the error mapping below; a request that failed before an answer began may be
sent again once (``resend``), on what the lean client reports it wrote (``http1.Sent``).

Pitfalls handled here (conventions.md, "Forwarding"): nothing is decompressed, so bodies and
``Content-Encoding``/``Content-Length`` stay consistent; the request target is sent exactly as the client
wrote it (no ``/../`` or ``%ZZ`` rewritten: keys are computed from exactly what is sent); hop-by-hop
headers (RFC 9110 §7.6.1) are dropped both ways; the body's framing is ours (``Content-Length`` for bytes
and for a body the client framed so, chunked otherwise, ``Content-Length: 0`` for a bodyless POST, PUT or
PATCH); the pool holds ``pool_size`` idle connections.

Production settings ([9/9]): TLS to an https:// backend with a private CA and a client certificate
(``ssl_context``: a file that cannot be loaded is a ValueError naming it, so the start fails);
``max_concurrent`` backend requests at once (``_Slots``: a slot is held until the response is released,
a request waits ``queue_timeout`` at most, then ``UpstreamBusy``, a 503 with Retry-After); and the
start-up probe (``watch_upstream``): an unreachable backend is a warning, and with ``require_at_start``
``answered`` stays False (``/readyz`` not ready) until the backend has answered once.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from . import resend
from ..core.errors import UpstreamError
from .failures import FailureReport, classify
from .http1 import Client, Response, Sent
from .wsinterim import InterimKeepingResponse

log = logging.getLogger("proxy")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "proxy-connection"})


@dataclass(frozen=True)
class UpstreamConfig:
    url: str
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    pool_size: int = 512
    preserve_host: bool = False
    ca_file: str | None = None
    client_cert: str | None = None  # PEM, presented to an https:// backend (mutual TLS)
    client_key: str | None = None  # default: inside client_cert
    max_concurrent: int = 0  # requests sent to the backend at once, streams included (0: no limit)
    queue_timeout: float = 1.0  # longest a request waits for a free slot, then 503 (UpstreamBusy)
    require_at_start: bool = False  # not ready (``answered`` False) until the backend has answered once


class UpstreamBusy(UpstreamError):
    """Every backend slot is taken (``max_concurrent``): answered 503 with Retry-After, never queued long."""

    def __init__(self, status: int, detail: str):
        super().__init__(status, detail, "busy", "no free backend slot (max_concurrent)")


def ssl_context(config: UpstreamConfig) -> ssl.SSLContext | None:
    """The TLS context for an https:// backend: ``ca_file`` (a private CA) and an optional client
    certificate. ValueError naming the file when one cannot be loaded, so a typo fails the start."""
    if not (config.ca_file or config.client_cert):
        return None
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"UPSTREAM_CA_FILE {config.ca_file}: cannot load CA certificates: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    if config.client_cert:
        try:
            context.load_cert_chain(config.client_cert, config.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"UPSTREAM_CLIENT_CERT {config.client_cert}"
                             + (f" / UPSTREAM_CLIENT_KEY {config.client_key}" if config.client_key else "")
                             + f": cannot load the client certificate: {getattr(exc, 'strerror', None) or exc}"
                             ) from None
    return context


class _Slots:
    """At most ``limit`` backend requests at once; a request waits ``wait`` seconds at most for a slot
    (FIFO), then gets ``UpstreamBusy``: the wait is bounded in time, and by MAX_INFLIGHT in length.

    A slot is held from sending the request until its response is released (its body read to the end,
    or dropped), so a long stream holds one too.
    """

    def __init__(self, limit: int, wait: float):
        self.limit, self.wait = limit, wait
        self.active = 0
        self.peak = 0
        self.waiters: deque[asyncio.Future] = deque()
        self.on_busy = lambda: None  # set by the server: counts katiba_cache_overload_total{limit="upstream"}

    async def take(self) -> "_Slot":
        if self.limit <= 0:
            return _Slot(None)
        if self.active < self.limit and not self.waiters:
            self.active += 1
            self.peak = max(self.peak, self.active)
            return _Slot(self)
        if self.wait <= 0:
            self.on_busy()
            raise UpstreamBusy(503, "the backend is busy (too many concurrent requests); retry shortly")
        handed = asyncio.get_running_loop().create_future()
        self.waiters.append(handed)
        try:
            await asyncio.wait_for(handed, self.wait)
        except asyncio.TimeoutError:
            self.on_busy()
            raise UpstreamBusy(503, "the backend is busy (too many concurrent requests); retry shortly") from None
        except BaseException:
            if handed.done() and not handed.cancelled():  # handed over just as we were cancelled
                self.give_back()
            raise
        return _Slot(self)  # handed over by give_back: ``active`` already counts it

    def give_back(self) -> None:
        while self.waiters:
            handed = self.waiters.popleft()
            if not handed.done():
                handed.set_result(None)
                return
        self.active -= 1


class _Slot:
    __slots__ = ("slots",)

    def __init__(self, slots: _Slots | None):
        self.slots = slots

    def release(self) -> None:
        slots, self.slots = self.slots, None
        if slots is not None:
            slots.give_back()


CHUNKED = "Transfer-Encoding: chunked\r\n"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # RFC 9110 §8.6: Content-Length even when 0


def _framing(method: str, headers: Mapping[str, str], body: Any) -> str | None:
    """The body's framing field, replacing the client's; None: the client's ``Content-Length`` stays
    (a streamed body of that length, or none)."""
    if body is None:
        return "Content-Length: 0\r\n" if method.upper() in BODY_METHODS and "Content-Length" not in headers else None
    if isinstance(body, (bytes, bytearray, memoryview)):
        return f"Content-Length: {len(body)}\r\n"
    return None if "Content-Length" in headers else CHUNKED


def strip_hop_by_hop(headers: Mapping[str, str]) -> CIMultiDict:
    named = {h.strip().lower() for v in headers.getall("connection", ()) for h in v.split(",")} \
        if hasattr(headers, "getall") else set()
    out = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in named:
            out.add(name, value)
    return out


class Upstream:
    def __init__(self, config: UpstreamConfig):
        self.config = config
        base = URL(config.url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"upstream URL must be http(s)://host[:port], got {config.url!r}")
        self.base = str(base).rstrip("/")
        self.base_path = base.raw_path.rstrip("/")
        self.host_header = base.raw_authority
        self.session: aiohttp.ClientSession | None = None
        self.ssl: Any = ssl_context(config)  # ValueError naming the file: a bad CA fails the start
        https = base.scheme == "https"
        self.client = Client(base.raw_host or base.host, base.port or (443 if https else 80),
                                (self.ssl or ssl.create_default_context()) if https else None, base.host,
                                config.connect_timeout, config.read_timeout, max_idle=config.pool_size)
        self.slots = _Slots(config.max_concurrent, config.queue_timeout)
        self.failures = FailureReport()  # the server gives it the error counter
        self.answered = not config.require_at_start  # the backend answered once (see ``probe``)

    async def start(self) -> None:
        """aiohttp's session, for WebSockets (proxy/serve/streaming.py) and the start-up probe."""
        connector = aiohttp.TCPConnector(limit=self.config.pool_size, limit_per_host=0, ssl=self.ssl,
                                         ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout,
                                        sock_read=self.config.read_timeout)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                             skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
                                             cookie_jar=aiohttp.DummyCookieJar(),
                                             response_class=InterimKeepingResponse)

    async def close(self) -> None:
        self.client.close()
        if self.session is not None:
            await self.session.close()

    def forward_headers(self, headers: Mapping[str, str], client_ip: str | None, scheme: str,
                        request_id: str) -> CIMultiDict:
        out = strip_hop_by_hop(headers)
        host = headers.get("Host", "")
        prior = ", ".join(out.getall("X-Forwarded-For", ()))
        out.popall("X-Forwarded-For", None)
        if client_ip:
            out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
        elif prior:
            out["X-Forwarded-For"] = prior
        out["X-Forwarded-Proto"] = scheme
        if host:
            out["X-Forwarded-Host"] = host
        else:
            out.popall("X-Forwarded-Host", None)
        if not self.config.preserve_host:
            out["Host"] = self.host_header
        out["X-Request-ID"] = request_id
        return out

    async def send(self, method: str, path_qs: str, headers: CIMultiDict, body: Any = None,
                   rule: str = "none") -> Response:
        """Send and return the response with its body unread; the caller releases it.

        Sent again once, on a new connection (RFC 9112 §9.3.1), when it failed before an answer began
        and ``resend.may_resend`` allows it on what went out (``http1.Sent``). Bytes beyond the answer's
        Content-Length are counted here, under ``rule`` (``on_overrun``: kind ``framing``, logged); the
        relay gets the answer cut at its Content-Length."""
        return await self._exchange(method, path_qs, headers, body, on_overrun=partial(self._overran, rule, method))

    async def fetch(self, path_qs: str, headers: CIMultiDict, rule: str) -> Response:
        """A fill's GET: the response with its body unread; the caller releases it. Bytes beyond the
        answer's Content-Length are counted under ``rule`` whenever they show (a body read whole, a 304,
        a large answer relayed as it comes); the answer ends at its Content-Length, and a fill stores it
        as framed. Failures as ``send``'s: UpstreamError 502 or 504, UpstreamBusy 503."""
        # Not send(...): tracing wraps fetch and send each as one backend call (proxy/serve/tracing.py).
        return await self._exchange("GET", path_qs, headers, None, on_overrun=partial(self._overran, rule, "GET"))

    async def _exchange(self, method: str, path_qs: str, headers: CIMultiDict, body: Any,
                        on_overrun: Callable[[], None] | None = None) -> Response:
        if isinstance(body, str):
            body = body.encode()
        head, chunked = self._request_head(method, path_qs, headers, body)
        replay = resend.ReplayableBody.wrap(body)
        continued = "100-continue" in headers.get("Expect", "").lower()
        for attempt in (1, 2):
            slot = await self.slots.take()  # UpstreamBusy (503) when every slot stays taken
            sent = Sent()
            with _failures_mapped(slot):
                try:  # the slot is given back with the response
                    response = await self.client.request(
                        head, slot.release, sent, replay.data() if replay is not None else body, chunked=chunked,
                        head_only=method == "HEAD", continued=continued, on_overrun=on_overrun)
                except (aiohttp.ClientConnectionError, OSError) as exc:
                    if attempt == 1 and resend.may_resend(method, exc, sent, replay):
                        slot.release()
                        continue
                    raise
            break
        self.answered = True
        return response

    def _overran(self, rule: str, method: str) -> None:
        self.failures(overrun_failure(), rule, method)

    def _request_head(self, method: str, path_qs: str, headers: CIMultiDict, body: Any) -> tuple[bytes, bool]:
        """The request line and fields, and whether the body goes chunked."""
        lines = [f"{method} {self.base_path}{path_qs} HTTP/1.1\r\n"]
        if "Host" not in headers:
            lines.append(f"Host: {self.host_header}\r\n")
        framing = _framing(method, headers, body)
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise UpstreamError(400, "a header holds a line break")
            if framing is None or name.lower() not in ("content-length", "transfer-encoding"):
                lines.append(f"{name}: {value}\r\n")
        if framing is not None:
            lines.append(framing)
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape"), framing == CHUNKED

    async def probe(self) -> str | None:
        """Is the backend there? None if so, else why not. With ``require_at_start``: one GET of the base
        URL, any status counts; otherwise only a connection (and the TLS handshake for https://), so
        the backend sees no request."""
        assert self.session is not None, "Upstream.start() was not awaited"
        timeout = max(1.0, self.config.connect_timeout * 2)
        try:
            if self.config.require_at_start:
                async with self.session.get(URL(self.base + "/", encoded=True), allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=timeout)):
                    pass
            else:
                url = URL(self.base)
                context = (self.ssl or ssl.create_default_context()) if url.scheme == "https" else None
                async with asyncio.timeout(timeout):
                    _, writer = await asyncio.open_connection(url.host, url.port, ssl=context,
                                                              server_hostname=url.host if context else None)
                writer.close()
                try:
                    await writer.wait_closed()
                except (OSError, ssl.SSLError):
                    pass
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            return str(exc) or type(exc).__name__
        self.answered = True
        return None


@contextlib.contextmanager
def _failures_mapped(slot: "_Slot") -> Iterator[None]:
    """Either client's failures as UpstreamError (504 on a timeout, else 502; ``failures.classify`` says
    which kind and why), the slot given back."""
    try:
        yield
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:  # aiohttp.ServerTimeoutError included
        slot.release()
        raise classify(exc) from None
    except BaseException:
        slot.release()
        raise


@contextlib.contextmanager
def released_on_failure(response: Response) -> Iterator[Response]:
    """Hold ``response`` through what comes between its arrival and its relay (a purge): if that fails,
    release it (idempotent); an answer never released would keep its backend slot for good."""
    try:
        yield response
    except BaseException:
        response.release()
        raise


def body_failure(exc: BaseException) -> UpstreamError:
    """What a failure while reading an answer's body was (a timeout, a reset, a body shorter than its
    Content-Length)."""
    return classify(exc, reading_body=True)


def overrun_failure() -> UpstreamError:
    return UpstreamError(502, "upstream sent bytes beyond the answer's Content-Length; the answer ends there, "
                              "the rest was dropped with its connection", "framing",
                         "bytes after the end of the answer")


async def watch_upstream(upstream: Upstream, interval: float = 1.0) -> None:
    """At start-up: probe the backend until it answers once. Unreachable is a warning (and, with
    ``require_at_start``, /readyz stays not ready until then); the proxy serves meanwhile."""
    warned = False
    while True:
        error = await upstream.probe()
        if error is None:
            if warned:
                log.info("upstream answers", extra={"event": "upstream_reachable", "upstream": upstream.base})
            return
        if not warned:
            log.warning("upstream unreachable at start-up" + ("; not ready until it answers"
                                                              if upstream.config.require_at_start else
                                                              "; serving anyway"),
                        extra={"event": "upstream_unreachable", "upstream": upstream.base, "error": error})
            warned = True
        await asyncio.sleep(interval)


def framed_length(upstream_headers: Mapping[str, str]) -> int | None:
    """The Content-Length the backend framed its body with; None when it is chunked or sent until close
    (a relayed answer is then chunked in turn)."""
    length = upstream_headers.get("Content-Length")
    if length is None or not length.isdigit() or upstream_headers.get("Transfer-Encoding"):
        return None
    return int(length)


def response_headers(upstream_headers: Mapping[str, str]) -> CIMultiDict:
    """The backend's response headers minus hop-by-hop and framing (aiohttp re-frames the body)."""
    out = strip_hop_by_hop(upstream_headers)
    out.popall("Content-Length", None)
    return out


async def read_limited(response: Response, limit: int) -> tuple[bytes, bool]:
    """(body, True) when the whole body fits in ``limit``; else (what was read, False), rest unread."""
    chunks, size = [], 0
    try:
        while True:
            chunk = await response.content.readany()
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks), False
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        response.release()
        raise body_failure(exc) from None
