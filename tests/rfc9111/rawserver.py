"""A raw asyncio HTTP/1.1 origin that misbehaves on cue, for what a well-behaved aiohttp origin cannot do:
answer with a body longer or shorter than its Content-Length, drop or reset the connection, stay silent,
send 1xx interim answers (also before a WebSocket's 101), answer before the request's body arrived, send a
head without framing, close keep-alive connections the moment they go idle.

``RawOrigin.script(path, Answer(...), ...)`` (consumed in order, the last one repeats). Every request read
whole (head and Content-Length body; an ``early`` answer's head alone) is recorded: ``count(path, method)``.
Connections are counted too (``connections``), and ``close_idle()`` closes every connection that is between
requests. ``talk(port, head, body)`` is a raw client of the proxy: everything it answers until it closes.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import struct
from dataclasses import dataclass, field


_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


@dataclass
class Answer:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"representation"
    length: int | None = None  # the Content-Length sent (default: len(body))
    interim: list[tuple[int, list[tuple[str, str]]]] = field(default_factory=list)  # 1xx sent first
    action: str = "answer"  # answer | drop (FIN, no answer) | reset (RST, no answer) | hang (no answer)
    #                         | websocket (101 accepting the upgrade, then one text frame ``body``, then silence until closed)
    close: bool = False  # close the connection right after the answer (it still said keep-alive)
    reset_after: bool = False  # RST right after the answer's bytes (a short body then a reset)
    early: bool = False  # answer once the head is read, before the body; the connection then serves no more
    framed: bool = True  # False: no Content-Length (a body then ends at the close; a HEAD answer keeps it open)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class RawOrigin:
    def __init__(self) -> None:
        self.scripts: dict[str, list[Answer]] = {}
        self.requests: list[Seen] = []
        self.connections = 0
        self.idle: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None
        self.url = ""
        self.received = asyncio.Event()

    def script(self, path: str, *answers: Answer) -> None:
        self.scripts[path] = list(answers)

    def count(self, path: str, method: str | None = None) -> int:
        return sum(1 for r in self.requests if r.path == path and (method is None or r.method == method))

    async def start(self) -> "RawOrigin":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        for writer in list(self.idle):
            writer.close()
        if self.server is not None:
            self.server.close()

    def close_idle(self) -> int:
        """Close every connection waiting for its next request (a keep-alive timeout firing)."""
        closed = len(self.idle)
        for writer in list(self.idle):
            writer.close()
        self.idle.clear()
        return closed

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                self.idle.add(writer)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                finally:
                    self.idle.discard(writer)
                if writer.is_closing():
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = b""
                if self._next(path, peek=True).early:
                    answer = self._next(path)  # the body is left unread: nothing more is served on this connection
                    self.requests.append(Seen(method, path.partition("?")[0], headers, b""))
                    await self._answer(writer, method, answer)
                    while await reader.read(65536):
                        pass
                    return
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif "chunked" in headers.get("transfer-encoding", ""):
                    body = await _read_chunked(reader)
                self.requests.append(Seen(method, path.partition("?")[0], headers, body))
                self.received.set()
                answer = self._next(path)
                if answer.action == "websocket":
                    await self._accept_websocket(reader, writer, headers, answer)
                    return
                if not await self._answer(writer, method, answer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.idle.discard(writer)
            if not writer.is_closing():
                writer.close()

    def _next(self, path: str, peek: bool = False) -> Answer:
        script = self.scripts.get(path.partition("?")[0])
        if not script:
            return Answer(404, body=b"")
        return script.pop(0) if len(script) > 1 and not peek else script[0]

    async def _accept_websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                headers: dict[str, str], a: Answer) -> None:
        key = headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        out = _interim_heads(a.interim) + (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode()
        writer.write(out + bytes([0x81, len(a.body)]) + a.body)  # FIN + text, unmasked (a server's frame)
        await writer.drain()
        while await reader.read(65536):  # what the proxy sends is not read as frames: served until it closes
            pass

    async def _answer(self, writer: asyncio.StreamWriter, method: str, a: Answer) -> bool:
        """Write the answer; False when the connection is over."""
        if a.action == "drop":
            writer.close()
            return False
        if a.action == "reset":
            _reset(writer)
            return False
        if a.action == "hang":
            await asyncio.sleep(3600)
            return False
        out = _interim_heads(a.interim)
        length = len(a.body) if a.length is None else a.length
        out += f"HTTP/1.1 {a.status} Status\r\n".encode()
        out += b"".join(f"{k}: {v}\r\n".encode() for k, v in a.headers)
        out += f"Content-Length: {length}\r\n\r\n".encode() if a.framed else b"\r\n"
        out += a.body if method != "HEAD" else b""
        writer.write(out)
        await writer.drain()
        if a.reset_after:
            _reset(writer)
            return False
        if a.close or (a.length is not None and a.length > len(a.body)) or (not a.framed and method != "HEAD"):
            writer.close()
            return False
        return True


async def talk(port: int, head: bytes, body: bytes = b"", expect_continue: bool = False) -> bytes:
    """One raw request to the proxy on its own connection: ``head`` (``\\r\\n\\r\\n`` included), then ``body``,
    after the proxy's ``100 Continue`` (returned first) when ``expect_continue``; everything the proxy sends
    until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head if expect_continue else head + body)
    await writer.drain()
    got = b""
    if expect_continue:
        got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(body)
        await writer.drain()
    got += await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return got


def _interim_heads(interim: list[tuple[int, list[tuple[str, str]]]]) -> bytes:
    return b"".join(f"HTTP/1.1 {status} Interim\r\n".encode()
                    + b"".join(f"{k}: {v}\r\n".encode() for k, v in fields) + b"\r\n" for status, fields in interim)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readline()).strip().split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return body
        body += await reader.readexactly(size)
        await reader.readline()
