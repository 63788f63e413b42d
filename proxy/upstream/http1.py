"""A lean HTTP/1.1 client for the fills' GETs: one request at a time per pooled keep-alive connection.

Why: a fill is a bodyless GET whose answer is usually small and read whole. aiohttp's client builds a
request object, a connector lease, timers and a stream reader around each one; in a profile of misses
that was a third of the proxy's CPU, about 0.14 ms per request on a warm core (more on a cold one).
Here a request is one ``write`` of bytes and the answer is parsed by ``httptools`` (llhttp, in C).
aiohttp's client stays for everything else: writes, bypasses, revalidations, WebSockets.

What a caller gets (``FillResponse``) is the part of aiohttp's ``ClientResponse`` the fill and its relays
use: ``status``, ``reason``, ``headers``, ``content.readany()`` / ``content.iter_any()`` and
``release()``. Failures keep aiohttp's types, so the callers' handling is the same for both clients:
``aiohttp.ClientConnectionError`` (connect, reset), ``aiohttp.ClientResponseError`` (not HTTP),
``aiohttp.ClientPayloadError`` (cut mid-body), ``asyncio.TimeoutError`` (connect or read timeout).

Connections: idle ones are reused last-in first-out; one that the backend closed while idle (its
keep-alive timeout) is noticed on reuse and the GET sent again once on a new connection, as aiohttp
does for idempotent requests. A connection goes back to the pool only after a complete answer that
allows keep-alive; anything else closes it. The body of a large answer is read as the caller asks for
it (flow control: reading from the backend pauses above ``HIGH_WATER`` buffered bytes).
"""
from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import AsyncIterator, Callable

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

HIGH_WATER = 256 << 10
LOW_WATER = 64 << 10


class _Stale(Exception):
    """A reused connection closed before the first byte of the answer: the backend had closed it idle."""


class _Connection(asyncio.Protocol):
    """One backend connection and the answer being read on it."""

    def __init__(self, client: "FillClient"):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.response: FillResponse | None = None

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
        self.client.forget(self)
        if self.response is not None:
            self.response.lost(exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.client.forget(self)


class FillResponse:
    """The answer to one fill, read as it arrives (see the module docstring for the API it keeps)."""

    def __init__(self, connection: _Connection, read_timeout: float, on_release):
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
        self._got_bytes = False
        self._extra = False  # a second message after ours: the backend is not speaking HTTP/1.1 to us
        self._keep_alive = False
        self.overran = False  # bytes arrived after the complete answer (beyond its Content-Length)
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
            if status != 101 and len(self.interim) < 10:  # kept for the client (proxy/core/interim.py)
                self.interim.append((status, tuple(self._raw_headers)))
            self._raw_headers, self.reason = [], ""
            return
        self.status = status
        headers = CIMultiDict(self._raw_headers)
        self.headers = CIMultiDictProxy(headers)
        self._framed = "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._head_done = True
        self._wake()

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
        self._got_bytes = True
        if self._complete:  # bytes after a complete answer: the connection cannot be reused
            self.overran = True
            self.connection.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._complete:  # the answer was whole; what followed it is not HTTP: cut there
                self.overran = True
                self.connection.close()
                return
            self._fail(aiohttp.ClientResponseError(None, (), status=502, message=f"malformed answer: {exc}")
                       if not self._head_done else aiohttp.ClientPayloadError(f"malformed body: {exc}"))
            self.connection.close()
            return
        if self._extra:  # another message after ours, in the same bytes
            self.overran = True
            self.connection.close()

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
        """Until something arrives; ``asyncio.TimeoutError`` after ``read_timeout`` of silence."""
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
        allows keep-alive, else it is closed. Idempotent. ``notify`` False: the request is sent again, so
        its ``on_release`` is not called yet."""
        if self._released:
            return
        self._released = True
        connection = self.connection
        connection.response = None
        if not notify:
            connection.close()
            return
        reusable = self._complete and self._keep_alive and not self._chunks and self._error is None \
            and not self._extra
        self._on_release(connection if reusable and connection.transport is not None else None)
        if not reusable:
            connection.close()

    close = release


class FillClient:
    """Pooled keep-alive connections to one backend (``host``, ``port``; ``ssl`` for https)."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | bool | None, server_hostname: str | None,
                 connect_timeout: float, read_timeout: float, max_idle: int = 256):
        self.host, self.port = host, port
        self.ssl, self.server_hostname = ssl_context, server_hostname
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_idle = max_idle
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    async def get(self, head: bytes, on_release: Callable[[], None]) -> FillResponse:
        """Send ``head`` (the request line and fields, ``\\r\\n\\r\\n`` included) and return once the answer's
        head is read. ``on_release`` is called once, when the caller releases the answer."""
        while self.idle:
            connection = self.idle.pop()
            if connection.transport is None or connection.transport.is_closing():
                continue
            try:
                return await self._exchange(connection, head, on_release)
            except _Stale:
                break  # closed by the backend while idle: sent again on a new connection, once
        connection = await self._connect()
        return await self._exchange(connection, head, on_release)

    async def _exchange(self, connection: _Connection, head: bytes, on_release) -> FillResponse:
        response = FillResponse(connection, self.read_timeout, self._released(on_release))
        connection.response = response
        assert connection.transport is not None
        connection.transport.write(head)
        try:
            await response.head()
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            stale = connection.reused and not response._got_bytes
            response.release(notify=not stale)  # a stale connection's request is sent again
            if stale:
                raise _Stale() from exc
            raise
        except BaseException:
            response.release()
            raise
        return response

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
