"""The fills' lean HTTP/1.1 client (proxy/upstream/http1.py) against real local servers that answer the way
backends misbehave: connections reused and closed while idle, bodies framed every way HTTP/1.1 allows,
interim answers, garbage, silence and resets. Each server counts the connections it accepted and the
requests it read, so reuse is asserted, not assumed."""
from __future__ import annotations

import asyncio
from typing import Callable

import pytest
from multidict import CIMultiDict

from proxy.core.errors import UpstreamError
from proxy.upstream.client import Upstream, UpstreamConfig

Answer = Callable[[int], list[bytes]]  # request number (from 1) -> what the server writes, in pieces


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


class Backend:
    """A raw HTTP/1.1 server: ``answer(n)`` gives the pieces written for the n-th request; the string
    ``"close"`` among them closes the connection there, ``"reset"`` aborts it, ``"wait"`` stops answering."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.heads: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> "Backend":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._answer(reader, writer)
        except asyncio.CancelledError:
            pass  # the test is over
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            self.requests += 1
            self.heads.append(head)
            for piece in self.answer(self.requests):
                if piece == "close":
                    return
                if piece == "reset":
                    writer.transport.abort()
                    return
                if piece == "wait":
                    await asyncio.sleep(3600)
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)  # pieces arrive apart


async def fetch(upstream: Upstream, path: str = "/api/v1/x?a=1") -> tuple[int, CIMultiDict, bytes]:
    response = await upstream.fetch(path, CIMultiDict({"Host": "backend.test", "Accept": "application/json"}), "test")
    body = b"".join([chunk async for chunk in response.content.iter_any()])
    return response.status, CIMultiDict(response.headers), body


def upstream_for(url: str, **config) -> Upstream:
    return Upstream(UpstreamConfig(url=url, **config))


async def test_keep_alive_connections_are_reused_and_the_request_is_sent_as_given():
    async with Backend(lambda n: [ok(b'{"n": %d}' % n)]) as backend:
        upstream = upstream_for(backend.url + "/prefix")
        try:
            bodies = [(await fetch(upstream))[2] for _ in range(3)]
        finally:
            await upstream.close()
    assert bodies == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert (backend.connections, backend.requests) == (1, 3)
    assert backend.heads[0] == b"GET /prefix/api/v1/x?a=1 HTTP/1.1\r\nHost: backend.test\r\nAccept: application/json\r\n\r\n"


@pytest.mark.parametrize("pause", [0.0, 0.1], ids=["sent-before-the-close-arrives", "after-it-arrived"])
async def test_a_connection_the_backend_closed_while_idle_is_replaced_and_the_get_sent_again(pause):
    # every answer says keep-alive, then the server closes (10 ms later) without reading on: the next
    # GET goes out on a connection that is already dead, or finds it gone from the pool
    async with Backend(lambda n: [ok(b'{"n": %d}' % n), "close"]) as backend:
        upstream = upstream_for(backend.url)
        try:
            first = await fetch(upstream)
            await asyncio.sleep(pause)
            second = await fetch(upstream)
        finally:
            await upstream.close()
    assert (first[0], first[2], second[0], second[2]) == (200, b'{"n": 1}', 200, b'{"n": 2}')
    assert backend.connections == 2 and backend.requests == 2  # sent once per connection, never twice


@pytest.mark.parametrize("pieces, body", [
    ([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"until ", b"the close", "close"], b"until the close"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n"],
     b"hello world"),
    ([b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", ok(b"after the hint")], b"after the hint"),
    ([b"HTTP/1.1 200 OK\r\nContent-Len", b"gth: 11\r\nX-Split: yes\r\n\r\nhello", b" world"], b"hello world"),
], ids=["close-delimited", "chunked", "interim-103", "split-anywhere"])
async def test_bodies_framed_every_way_are_read_whole(pieces, body):
    async with Backend(lambda n: pieces) as backend:
        upstream = upstream_for(backend.url)
        try:
            status, headers, got = await fetch(upstream)
        finally:
            await upstream.close()
    assert status == 200 and got == body
    assert "Link" not in headers  # the interim answer's fields are not the answer's


async def test_a_large_body_is_read_as_asked_for():
    big = bytes(range(256)) * 8192  # 2 MiB: above the high-water mark, so reading pauses and resumes
    async with Backend(lambda n: [ok(big)]) as backend:
        upstream = upstream_for(backend.url)
        try:
            response = await upstream.fetch("/big", CIMultiDict(), "test")
            chunks = []
            async for chunk in response.content.iter_any():
                chunks.append(chunk)
                await asyncio.sleep(0)  # a slow reader
            assert b"".join(chunks) == big and len(chunks) > 1
            assert (await fetch(upstream))[2] == big  # read to the end: the connection was reusable
        finally:
            await upstream.close()
    assert backend.connections == 1


async def test_an_answer_that_forbids_keep_alive_is_not_reused():
    async with Backend(lambda n: [ok(extra=b"Connection: close\r\n")]) as backend:
        upstream = upstream_for(backend.url)
        try:
            for _ in range(2):
                assert (await fetch(upstream))[0] == 200
        finally:
            await upstream.close()
    assert backend.connections == 2


@pytest.mark.parametrize("pieces, status", [
    ([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], 502),  # not HTTP
    (["reset"], 502),
    (["close"], 502),  # closed on a new connection before any answer: not sent again
    (["wait"], 504),  # silent past the read timeout
], ids=["garbage", "reset", "closed", "silent"])
async def test_failures_before_the_answer_are_502_or_504(pieces, status):
    async with Backend(lambda n: pieces) as backend:
        upstream = upstream_for(backend.url, read_timeout=0.3)
        try:
            with pytest.raises(UpstreamError) as failed:
                await fetch(upstream)
        finally:
            await upstream.close()
    assert failed.value.status == status
    assert backend.requests == 1


async def test_a_body_cut_short_is_an_error_not_a_shorter_body():
    import aiohttp

    async with Backend(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", "reset"]) as backend:
        upstream = upstream_for(backend.url)
        try:
            response = await upstream.fetch("/cut", CIMultiDict(), "test")
            with pytest.raises(aiohttp.ClientPayloadError):
                while await response.content.readany():
                    pass
            response.release()
        finally:
            await upstream.close()


async def test_unreachable_backend_is_502_and_frees_its_slot():
    async with Backend(lambda n: [ok()]) as backend:
        url = backend.url
    upstream = upstream_for(url, max_concurrent=1, queue_timeout=0.0)  # nothing listens there now
    try:
        for _ in range(2):  # a slot leaked by the first failure would make the second a 503
            with pytest.raises(UpstreamError) as failed:
                await fetch(upstream)
            assert failed.value.status == 502
    finally:
        await upstream.close()
