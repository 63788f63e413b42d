"""Cached reads answered straight off the socket, hits and misses; every other request answered by aiohttp.

Why: aiohttp's per-request machinery (request and response objects, a task per request, header
serialisation through a stream writer) costs about 50 µs per request on our 2-core machines, three times
what a hit itself needs. A hit served here skips all of it; a miss skips the hand-off to aiohttp and
its response machinery, about 0.25 ms of an idle miss measured inside the proxy.

How: ``FastRequestHandler`` *is* aiohttp's connection protocol (``RequestHandler``) with one step in
front. It frames each request itself (framing.py). A bodyless HTTP/1.1 GET with nothing unusual in it (no
conditional or Range header, no Expect) is offered to ``ReadPath`` (fastread.py): when the request maps to a cache
rule, the entry is looked up (the in-process L1, else one store round trip). A fresh or
stale-while-revalidate entry is answered at once; otherwise the fill is the proxy's own
(``RequestPath.fill``, as on aiohttp's path) and its answer, relayed as it arrives when the body is too
large to store, is written here, with the headers aiohttp's path would send. Anything else (a write,
an unruled route, a request that would bypass the cache for a pending purge, a store failure or the
in-flight limit) goes to aiohttp unchanged, byte for byte, and is answered there; a lookup made already
travels with it (``prefetched``), so no request asks the store twice.

Order and framing: answers leave in request order. A fast answer is written only when aiohttp has
answered every request handed to it, and nothing is handed on while a fast lookup is in flight. A
request this module cannot frame with certainty (Transfer-Encoding, Upgrade, Connection other than
keep-alive, HTTP/1.0, several or odd Content-Lengths, a malformed line, a bare LF) gives the connection
to aiohttp for good, so that aiohttp's strict parser judges it and nothing is read two ways.

A client's half-close (it shuts its sending side, as ``nc -N`` does) ends its requests, not the exchange:
what it sent is answered on both paths, then the connection is closed (``eof_received``).

``install`` hooks this into an aiohttp ``Application``: every runner (``cache-proxy serve``, the test
client) then gets these connections. ``FAST_PATH=0`` (and tracing) gives every request to aiohttp.
"""
from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from ..core.throttle import LogThrottle
from ..upstream.client import body_failure
from .fastread import InFlight, Prefetched, ReadPath, Relay
from .framing import UNFRAMEABLE, Head, frame

log = logging.getLogger("proxy")

MAX_BUFFERED = 256 << 10  # read no more from a client whose earlier requests are still being answered


_CANCELLED = object()


class FastRequestHandler(RequestHandler):
    """aiohttp's connection protocol with cached reads answered before aiohttp sees them (module doc)."""

    def __init__(self, manager: web.Server, reads: ReadPath, fast: bool, bad_requests: LogThrottle, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self.reads = reads
        self.bad_requests = bad_requests  # the server's, shared: a throttle per connection would limit nothing
        self.prefetched: Prefetched | None = None
        self._buf = bytearray()
        self._body_left = 0  # bytes of a handed-on request's body still to pass through
        self._owned = not fast  # aiohttp has this connection for good
        self._handed = 0  # requests given to aiohttp
        self._answered = 0  # ... and answered by it
        self._busy = False  # a fast lookup is in flight
        self._reading_held = False
        self._peer_info: tuple[str | None, str] | None = None
        self._sent_all = False  # the client half-closed: no request will follow those already read
        self._last_payload: Any = None  # the body of the last request aiohttp read: the one that may be unfinished

    def data_received(self, data: bytes) -> None:
        if self._owned:
            self._to_aiohttp(data)
            return
        if self._force_close or self._close:
            return
        if self._body_left:
            n = min(self._body_left, len(data))
            self._body_left -= n
            self._to_aiohttp(data if n == len(data) else data[:n])
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
        if self._sent_all:
            self._close_when_answered()

    def eof_received(self) -> bool | None:
        """A half-close says the client has sent all it will, not that it left (RFC 9112 §9.6; asyncio's
        default closed the connection, answers and all): what it sent is answered, then the connection is
        closed. A request cut off inside its body can never be whole; such a connection closes at once."""
        if self._upgraded or self._payload_parser is not None:
            return None  # a WebSocket (or other upgrade): its reader learns of the end as before, from the close
        if self._body_unfinished() or self.transport is None or self.transport.get_extra_info("sslcontext"):
            return None  # TLS: asyncio closes on the peer's close_notify whatever this returns
        self._sent_all = True
        self._close_when_answered()
        return True

    def _body_unfinished(self) -> bool:
        return bool(self._body_left) or (self._last_payload is not None and not self._last_payload.is_eof())

    def _to_aiohttp(self, data: bytes) -> None:
        current = self._current_request  # a handler still running, perhaps reading this body
        reading = self._last_payload if self._body_unfinished() and current is not None \
            and current.content is self._last_payload else None
        queued = len(self._messages)
        super().data_received(data)
        self._refuse_other_versions(queued)
        if not self._messages:
            return
        newest, payload = self._messages[-1]
        refused = getattr(newest, "exc", None)  # aiohttp's parse error, queued as a request of its own
        if reading is not None and refused is not None:
            # ... while the request whose body it broke waits for the rest of it, and the backend with it:
            # that request fails now (ClientBodyError: 400), and it is the last on this connection.
            self._messages.pop()
            reading.set_exception(refused)
            self.close()
            return
        self._last_payload = payload  # aiohttp reads a request's body before the next: only the last can be unfinished

    def _refuse_other_versions(self, queued: int) -> None:
        """A request line naming HTTP/2 or later, or none (HTTP/0.9), is answered 505 in its turn (RFC 9110
        §15.6.6), in an HTTP/1.0 status line, and ends the connection: aiohttp would forward it and answer
        in that version's name, which no client of it reads. aiohttp answers the refusal as its own parse
        errors (``_ErrInfo``; tests/functional/test_fastpath.py fails if that changes)."""
        for i in range(queued, len(self._messages)):
            message, payload = self._messages[i]
            version = getattr(message, "version", None)
            if version is None or version in (HttpVersion10, HttpVersion11):
                continue
            refusal = HttpProcessingError(code=505, message=f"HTTP/{version.major}.{version.minor} is not served here")
            self._messages[i] = (_ErrInfo(status=505, exc=refusal, message=refusal.message), payload)
            while len(self._messages) > i + 1:  # the connection ends with the refusal
                self._messages.pop()
            return

    def _close_when_answered(self) -> None:
        """After a half-close: close once every request read is answered; called again after each answer."""
        if self.transport is None or self._busy or self._messages or isinstance(frame(self._buf), Head):
            return
        if self._waiter is not None and not self._waiter.done():
            self.transport.close()  # aiohttp is waiting for a request that cannot come
        else:
            self.close()  # aiohttp closes the connection once the answer it is making is written

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
        # a hit's bytes first: iscoroutine's ABC check was 1% of a Redis hit's time (py-spy, bench (f))
        if type(outcome) is not bytes and (isinstance(outcome, Relay) or asyncio.iscoroutine(outcome)):
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
        """A miss's body relayed as it arrives (as ``PassThrough.stream`` does it); a backend failure mid-body
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
        self.prefetched = prefetched  # only ever for the request handed with it (RequestPath.read checks the key)
        self._handed += 1
        self.reads.handed.inc()
        available = min(len(self._buf), head.body_length)
        chunk = head.raw + bytes(self._buf[:available]) if available else head.raw
        del self._buf[:available]
        self._body_left = head.body_length - available
        self._to_aiohttp(chunk)

    def _give_up(self) -> None:
        self._owned = True
        self.reads.released.inc()
        data = bytes(self._buf)
        self._buf.clear()
        self._release_reading()
        if data:
            self._to_aiohttp(data)

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

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp logs each request it cannot parse at ERROR, with a traceback: any client could fill the
        log with errors. Such a request is the client's error, answered 400: ``bad_request`` at info, at
        most one line a second (``suppressed``: those held back). A client gone before its answer is no error
        at all. Other errors are logged as aiohttp does."""
        exc = kw.get("exc_info")
        if isinstance(exc, ConnectionError) and (self.transport is None or self.transport.is_closing()):
            return  # the client left before its answer (its 100 Continue, say): nothing went wrong here
        if not isinstance(exc, HttpProcessingError):
            super().log_exception(*args, **kw)
            return
        held = self.bad_requests.admit("bad_request")
        if held is not None:
            reason = " ".join(str(exc.message).split())[:200]
            log.info("a request that is not valid HTTP/1.1 was answered 400",
                     extra={"event": "bad_request", "status": exc.code, "reason": reason, "suppressed": held})


class FastServer(web.Server):
    """aiohttp's connection factory, making ``FastRequestHandler`` connections."""

    def __init__(self, reads: ReadPath, *args: Any, fast: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reads, self.fast = reads, fast
        self.bad_requests = LogThrottle()  # one for all connections: the limit is the log's, not a client's

    def __call__(self) -> RequestHandler:
        return FastRequestHandler(self, self.reads, self.fast, self.bad_requests, loop=self._loop, **self._kwargs)


def install(app: web.Application, proxy: Any, fast: bool = True) -> None:
    """Give every server made for ``app`` fast-path connections; ``fast=False`` (``FAST_PATH=0``, tracing):
    aiohttp answers every request, on connections that still answer a half-closed client. aiohttp has no
    public hook for its connection protocol; ``_make_handler`` is where the Server is made, for
    ``AppRunner`` and the test client alike, and tests/functional/test_fastpath.py fails loudly if that ever
    changes."""
    reads = ReadPath(proxy)
    make_server = app._make_handler

    def make_fast_server(**kwargs: Any) -> web.Server:
        # aiohttp's own first: it checks the arguments, freezes the app and adds its handler_args; the
        # fast server is then made with exactly what it was given (``_kwargs``: the protocol's options).
        plain = make_server(**kwargs)
        return FastServer(reads, plain.request_handler, request_factory=plain.request_factory,
                          handler_cancellation=plain.handler_cancellation, loop=kwargs.get("loop"), fast=fast,
                          **plain._kwargs)

    app._make_handler = make_fast_server  # type: ignore[method-assign]
