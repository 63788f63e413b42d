"""The lean HTTP/1.1 client every backend request goes through (WebSockets aside): one request at a time
per pooled keep-alive connection.

Why: a fill is a bodyless GET whose answer is usually small and read whole. aiohttp's client builds a
request object, a connector lease, timers and a stream reader around each one; in a profile of misses
that was a third of the proxy's CPU, about 0.14 ms per request on a warm core (more on a cold one).
Here a request is one ``write`` of bytes and the answer is parsed by ``httptools`` (llhttp, in C). The
relayed requests (writes, bypasses, revalidations, HEAD) use it too, because aiohttp's client turns a
body longer than its Content-Length into an error for the whole answer and drops 1xx interim answers.

What a caller gets (``Response``) is the part of aiohttp's ``ClientResponse`` the relays use: ``status``,
``reason``, ``headers``, ``content.readany()`` / ``content.iter_any()`` and ``release()``, plus ``interim``
(the 1xx answers before it, proxy/core/interim.py). Failures keep aiohttp's types, so the
callers' handling is the same as it was for aiohttp's client: ``aiohttp.ClientConnectionError`` (connect,
reset; "Cannot write to closing transport" when nothing could be written), ``aiohttp.ClientResponseError``
(not HTTP), ``aiohttp.ClientPayloadError`` (cut mid-body), ``asyncio.TimeoutError`` (connect or read
timeout). ``Sent`` says what of a request went out, for the resend decision (proxy/upstream/resend.py);
this module never sends a request twice.

The request: the head goes out in one write with the body's first chunk (a streamed body's first chunk is
awaited before a connection is taken), so a request whose write was refused left nothing at the backend.
The rest of a streamed body is sent while the answer is awaited, with flow control; ``Expect:
100-continue`` does not make it wait (aiohttp's server already answered 100 to our client, and the
backend's own 100 is dropped). A final answer that comes before the body was sent whole stops the
sending, and that connection is not used again.

The answer: 1xx interim answers before it are kept (101 aside); a HEAD answer ends with its head (one
without framing closes its connection); bytes that arrive with the answer beyond its end (more than its
Content-Length) are cut off, call ``on_overrun`` (once) and close the connection; a body
shorter than its framing announced is a ``ClientPayloadError`` once the connection closes.

Connections: idle ones are reused last-in first-out. A connection goes back to the pool only after a
complete answer that allows keep-alive, to a request sent whole; anything else closes it. The body of a
large answer is read as the caller asks for it (flow control: reading from the backend pauses above
``HIGH_WATER`` buffered bytes).
"""
from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, AsyncIterator, Callable

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from ..core.errors import ClientBodyError
from ..core.interim import MAX_INTERIM, relayable

HIGH_WATER = 256 << 10
LOW_WATER = 64 << 10


class Sent:
    """What one request put on its connection: ``connected`` (a connection was there to write on),
    ``reused`` (a pooled keep-alive one), ``bytes`` (of the request, handed to the connection) and
    ``answered`` (bytes of an answer arrived)."""

    __slots__ = ("connected", "reused", "bytes", "answered")

    def __init__(self) -> None:
        self.connected = self.reused = self.answered = False
        self.bytes = 0


class _HeadEnds(Exception):
    """Raised from the parser's callback to stop it after a HEAD answer's head: llhttp would read a body."""


class _Connection(asyncio.Protocol):
    """One backend connection and the answer being read on it."""

    def __init__(self, client: "Client"):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.response: Response | None = None
        self._writable: asyncio.Future | None = None  # set while the transport's buffer is full

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        response.feed(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._wake_writer()
        self.client.forget(self)
        if self.response is not None:
            self.response.lost(exc)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- ours --------------------------------------------------------------------------------------------
    def write(self, data: bytes, sent: Sent) -> None:
        """Hand ``data`` to the transport; refused before anything is written when it is closing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        transport.write(data)
        sent.bytes += len(data)

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self._wake_writer()
        self.client.forget(self)


class Response:
    """The answer to one request, read as it arrives (see the module docstring for the API it keeps)."""

    def __init__(self, connection: _Connection, read_timeout: float, on_release, sent: Sent,
                 head_only: bool = False, continued: bool = False, on_overrun: Callable[[], None] | None = None):
        self.connection = connection
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy = CIMultiDictProxy(CIMultiDict())
        self.content = self
        self._raw_headers: list[tuple[str, str]] = []
        self._parser = httptools.HttpResponseParser(self)
        self._head_done = False
        self._framed = False  # Content-Length or chunked: the end is in the stream, not at close
        self._complete = False
        self._error: BaseException | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._read_timeout = read_timeout
        self._on_release = on_release
        self._released = False
        self._sent = sent
        self._head_only = head_only  # the answer to a HEAD: no body, whatever its fields say
        self._continued = continued  # the request said Expect: 100-continue, our client was answered 100
        self._on_overrun = on_overrun
        self._extra = False  # a second message after ours: the backend is not speaking HTTP/1.1 to us
        self._keep_alive = False
        self.sending: asyncio.Task | None = None  # the rest of a streamed request body going out
        self._cut_short = False  # the request's body was not sent whole: the connection is not reusable
        self._overran = False  # bytes arrived after the complete answer (beyond its Content-Length)
        self.interim: list[tuple[int, tuple[tuple[str, str], ...]]] = []  # 1xx before it (proxy/core/interim.py)

    # -- httptools callbacks -----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._head_done:
            self._extra = True

    def on_status(self, reason: bytes) -> None:
        if not self._head_done:
            self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:
            self._raw_headers.append((name.decode("utf-8", "surrogateescape"),
                                      value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if self._head_done:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints): the real one follows
            if relayable(status) and not (status == 100 and self._continued) and len(self.interim) < MAX_INTERIM:
                self.interim.append((status, tuple(self._raw_headers)))  # kept for the client
            self._raw_headers, self.reason = [], ""
            return
        self.status = status
        headers = CIMultiDict(self._raw_headers)
        self.headers = CIMultiDictProxy(headers)
        self._framed = "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._head_done = True
        if self.sending is not None and not self.sending.done():  # answered before the body was sent
            self.sending.cancel()
            self._cut_short = True
        self._wake()
        if self._head_only:  # no body follows; without framing, no telling where a next answer begins
            self._keep_alive = (self._framed or status in (204, 304)) and self._parser.should_keep_alive()
            self._complete = True
            raise _HeadEnds()

    def on_body(self, body: bytes) -> None:
        if self._extra:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.connection.transport is not None:
            self._paused = True
            self.connection.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self._head_done or self._extra:  # the end of an interim answer, or of a stray one
            return
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message is done
        self._complete = True
        self._wake()

    # -- fed by the connection ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._sent.answered = True
        if self._complete:  # bytes after a complete answer: the connection cannot be reused
            self._overrun()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadEnds):  # the end of a HEAD answer (its head)
                if not data.endswith(b"\r\n\r\n"):  # and bytes after it
                    self._overrun()
                return
            if self._complete:  # the answer was whole; what followed it is not HTTP: cut there
                self._overrun()
                return
            self._fail(aiohttp.ClientResponseError(None, (), status=502, message=f"malformed answer: {exc}")
                       if not self._head_done else aiohttp.ClientPayloadError(f"malformed body: {exc}"))
            self.connection.close()
            return
        if self._extra:  # another message after ours, in the same bytes
            self._overrun()

    def _overrun(self) -> None:
        self.connection.close()
        if not self._overran:
            self._overran = True
            if self._on_overrun is not None:
                self._on_overrun()

    def lost(self, exc: Exception | None) -> None:
        if self._complete:
            return
        if self._head_done and not self._framed and exc is None:  # a body delimited by the close
            self._complete = True
            self._wake()
            return
        if not self._head_done:
            self._fail(aiohttp.ServerDisconnectedError() if exc is None else
                       aiohttp.ClientOSError(getattr(exc, "errno", None) or 0, str(exc) or type(exc).__name__))
        elif exc is None:
            self._fail(aiohttp.ClientPayloadError("the backend closed the connection before the end of the body "
                                                  "its framing announced (Content-Length or chunked)"))
        else:
            self._fail(aiohttp.ClientPayloadError(f"the backend closed the connection mid-body: {exc}"))

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until something arrives (or more of the request went out); ``asyncio.TimeoutError`` after
        ``read_timeout`` of that silence."""
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._read_timeout):
                await waiter
        finally:
            self._waiter = None

    # -- the caller's side --------------------------------------------------------------------------------
    async def head(self) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def readany(self) -> bytes:
        """The next bytes of the body; b"" at its end."""
        while not self._chunks:
            if self._complete:
                self.release()  # read to the end: the connection and the backend slot are free again
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < LOW_WATER and self.connection.transport is not None:
            self._paused = False
            self.connection.transport.resume_reading()
        return chunk

    async def iter_any(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_any()])

    def release(self, notify: bool = True) -> None:
        """Done with this answer: the connection goes back to the pool if the answer was read whole and
        allows keep-alive and the request went out whole, else it is closed. Idempotent. ``notify`` False:
        the request failed, its ``on_release`` is not called (the caller frees what it holds)."""
        if self._released:
            return
        self._released = True
        if self.sending is not None and not self.sending.done():
            self.sending.cancel()
            self._cut_short = True
        connection = self.connection
        connection.response = None
        if not notify:
            connection.close()
            return
        reusable = self._complete and self._keep_alive and not self._chunks and self._error is None \
            and not self._extra and not self._cut_short
        self._on_release(connection if reusable and connection.transport is not None else None)
        if not reusable:
            connection.close()

    close = release


class Client:
    """Pooled keep-alive connections to one backend (``host``, ``port``; ``ssl`` for https)."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | bool | None, server_hostname: str | None,
                 connect_timeout: float, read_timeout: float, max_idle: int = 256):
        self.host, self.port = host, port
        self.ssl, self.server_hostname = ssl_context, server_hostname
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_idle = max_idle
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    async def request(self, head: bytes, on_release: Callable[[], None], sent: Sent, body: Any = None, *,
                      chunked: bool = False, head_only: bool = False, continued: bool = False,
                      on_overrun: Callable[[], None] | None = None) -> Response:
        """Send ``head`` (the request line and fields, ``\\r\\n\\r\\n`` included) and ``body`` (bytes, or an
        async iterable of them, framed ``chunked`` when the head says so) and return once the answer's head
        is read. ``on_release`` is called once, when the caller releases the answer; on a failure it is
        not, and ``sent`` says how far the request went (proxy/upstream/resend.py decides on a resend).
        ``head_only``: the request is a HEAD; ``continued``: it said Expect: 100-continue."""
        rest: AsyncIterator[bytes] | None = None
        if body is None:
            first = b""
        elif isinstance(body, (bytes, bytearray, memoryview)):
            first = bytes(body)
        else:  # the head goes out with the first chunk: awaited before a connection is taken
            rest = _from_client(body)
            first = await anext(rest, b"")
            if not first:
                rest = None
        if chunked:
            first = (b"%x\r\n%s\r\n" % (len(first), first) if first else b"") + (b"0\r\n\r\n" if rest is None else b"")
        connection = self._pooled() or await self._connect()
        sent.connected, sent.reused = True, connection.reused
        response = Response(connection, self.read_timeout, self._released(on_release), sent, head_only, continued,
                            on_overrun)
        connection.response = response
        try:
            connection.write(head + first, sent)
            if rest is not None:
                response.sending = asyncio.ensure_future(_send_rest(connection, response, rest, chunked, sent))
            await response.head()
        except BaseException:
            response.release(notify=False)
            raise
        return response

    def _pooled(self) -> _Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if connection.transport is not None and not connection.transport.is_closing():
                return connection
        return None

    def _released(self, on_release):
        def released(connection: _Connection | None) -> None:
            if connection is not None and len(self.idle) < self.max_idle:
                connection.reused = True
                self.idle.append(connection)
            elif connection is not None:
                connection.close()
            on_release()
        return released

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, connection = await loop.create_connection(lambda: _Connection(self), self.host, self.port,
                                                         ssl=self.ssl or None,
                                                         server_hostname=self.server_hostname if self.ssl else None)
        self.open.add(connection)
        return connection

    def forget(self, connection: _Connection) -> None:
        self.open.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def close(self) -> None:
        for connection in list(self.open):
            connection.close()
        self.idle.clear()


async def _from_client(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The client's body, a failure reading it (the client gone, its chunked framing broken) told apart from
    the backend's own failures as ``ClientBodyError``."""
    chunks = aiter(body)
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except Exception as exc:  # noqa: BLE001 - whatever the client's side raised
            raise ClientBodyError(exc) from exc
        yield chunk


async def _send_rest(connection: _Connection, response: Response, rest: AsyncIterator[bytes], chunked: bool,
                     sent: Sent) -> None:
    """The rest of a streamed request body, while the answer is awaited. Stopped (cancelled) by a final
    answer that comes first; a body the client could not finish sending fails the request."""
    try:
        async for chunk in rest:
            await connection.drain()
            if connection.transport is None:
                return  # the connection is gone: the answer's side says how
            connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk, sent)
            response._wake()  # progress: the answer's read timeout counts from here
        if chunked:
            await connection.drain()
            if connection.transport is not None:
                connection.write(b"0\r\n\r\n", sent)
    except aiohttp.ClientConnectionResetError:
        return  # closing under us: the answer's side says how
    except Exception as exc:  # noqa: BLE001 - the client's body failed (it went away, or sent too little)
        response._fail(exc)
        connection.close()
