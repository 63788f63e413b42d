"""Auto-pipelining for the hit path: one connection, one write per event-loop turn, replies in order.

Every cache lookup is one ``MGET``. Under load, redis-py spends more time checking connections in and
out of its pool and wrapping each command than Redis spends answering it. Here, commands issued during
one turn of the event loop are packed into a single write on one long-lived connection, and hiredis
parses the replies as they arrive, resolving the callers' futures in FIFO order. A caller that gives up
(a timeout cancels its future) leaves its slot in the FIFO; its reply is read and dropped, so the order
stays right. A lost connection fails every pending command and the next one reconnects.

Only plain commands go through here (``MGET``); scripts and admin commands stay on redis-py.
"""
from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis
from redis.exceptions import ResponseError


def _pack_command(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# hiredis encodes the same RESP in C (a third of the time, on every hit); the Python one is its fallback
# and the reference tests/unit compares it with.
pack_command = getattr(hiredis, "pack_command", None) or _pack_command


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: "AutoPipeline"):
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.owner.pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = pending.popleft()
            if future.done():
                continue  # its caller timed out; the reply keeps the FIFO aligned
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(self, exc)


class AutoPipeline:
    def __init__(self, url: str, connect_timeout: float = 0.25, reply_timeout: float = 0.25, resolver=None):
        """``url``: redis:// or rediss:// with redis-py's TLS query parameters (``ssl_ca_certs``,
        ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``). ``resolver``, an
        async callable returning (host, port), is asked at every connect instead (Sentinel: the master)."""
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.db = int(parts.path.lstrip("/") or 0)
        self.ssl: ssl_module.SSLContext | None = None
        if parts.scheme.startswith("rediss"):
            from .redisconf import tls_context

            self.ssl = tls_context(dict(parse_qsl(parts.query)))
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.pending: deque[asyncio.Future] = deque()
        self.buffer: list[bytes] = []
        self.protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._flush_scheduled = False
        self.subscribers: set[asyncio.StreamWriter] = set()  # subscribe()'s connections, to this server

    async def execute(self, *args: Any) -> Any:
        if self.protocol is None:
            await self._connect()
        return await self._enqueue(args)

    def submit(self, *args: Any) -> asyncio.Future | None:
        """The command's reply as a future, queued like ``execute``'s; None while not connected (then
        ``execute`` connects). For callers that chain a callback instead of awaiting (proxy/serve/fastpath.py)."""
        return self._enqueue(args) if self.protocol is not None else None

    def _enqueue(self, args: tuple[Any, ...]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append(future)
        self.buffer.append(pack_command(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        data, self.buffer = b"".join(self.buffer), []
        if not data:
            return
        if self.protocol is None or self.protocol.transport is None:
            self.lost(self.protocol, ConnectionError("not connected"))
            return
        self.protocol.transport.write(data)
        # One timer per write, not per command: if the newest reply of this batch is late, the server is
        # hung or gone; drop the connection (failing everything pending) rather than wait on it.
        last = self.pending[-1]
        asyncio.get_running_loop().call_later(self.reply_timeout, self._expire, self.protocol, last)

    def _expire(self, protocol: _Protocol, last: asyncio.Future) -> None:
        if not last.done() and protocol is self.protocol:
            if protocol.transport is not None:
                protocol.transport.abort()
            self.lost(protocol, TimeoutError("no reply in time"))

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.protocol is not None:
                return
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.connect_timeout):
                if self.resolver is not None:
                    self.host, self.port = await self.resolver()
                _, protocol = await loop.create_connection(lambda: _Protocol(self), self.host, self.port,
                                                           ssl=self.ssl)
            self.protocol = protocol
            handshake = []
            if self.password:
                auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                handshake.append(self._enqueue(auth))
            if self.db:
                handshake.append(self._enqueue(("SELECT", self.db)))
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await asyncio.gather(*handshake)
            except BaseException:
                self.close()
                raise

    def lost(self, protocol: _Protocol | None, exc: Exception | None) -> None:
        if protocol is not None and protocol is not self.protocol:
            return
        self.protocol = None
        error = ConnectionError(f"redis connection lost: {exc or 'closed'}")
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
        self.buffer = []

    def close(self) -> None:
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        self.lost(protocol, None)

    def close_subscriptions(self) -> None:
        """End every ``subscribe`` iteration with an error (its subscriber then knows messages may be
        missed, and subscribes again: to the server the resolver names then)."""
        for writer in list(self.subscribers):
            writer.transport.abort()


async def subscribe(pipeline: AutoPipeline, channel: str):
    """Yield ``[]`` once subscribed to ``channel``, then each message's generation keys.

    Its own connection (a subscribed connection can do nothing else), with the pipeline's address,
    credentials and TLS. Any loss of the connection ends the iteration with an error, so the caller
    knows messages may have been missed.
    """
    host, port = await pipeline.resolver() if pipeline.resolver is not None else (pipeline.host, pipeline.port)
    async with asyncio.timeout(max(pipeline.connect_timeout, 1.0)):
        reader, writer = await asyncio.open_connection(host, port, ssl=pipeline.ssl)
    parser = hiredis.Reader()
    pipeline.subscribers.add(writer)
    try:
        if pipeline.password:
            auth = ("AUTH", pipeline.username, pipeline.password) if pipeline.username else ("AUTH", pipeline.password)
            writer.write(pack_command(auth))
        writer.write(pack_command(("SUBSCRIBE", channel)))
        await writer.drain()
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("invalidation channel closed")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise ResponseError(str(reply))
                if isinstance(reply, list) and len(reply) == 3:
                    kind = reply[0]
                    if kind == b"subscribe":
                        yield []
                    elif kind == b"message":
                        yield [k for k in reply[2].decode().split("\n") if k]
    finally:
        pipeline.subscribers.discard(writer)
        writer.close()
