"""One request on a raw keep-alive connection, its answer read by its Content-Length.

``helpers.raw_exchange`` reads until the server closes, which needs ``Connection: close``; the fast path
hands such a connection to aiohttp, so a request meant for the fast path is sent with this instead."""
from __future__ import annotations

import asyncio

from tests.security.helpers import RawReply


async def one_exchange(host: str, port: int, head: bytes, limit: float = 10.0) -> RawReply:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async def go() -> bytes:
            writer.write(head)
            await writer.drain()
            data = await reader.readuntil(b"\r\n\r\n")
            length = RawReply(data).headers.get("content-length")
            assert length is not None, f"an answer without Content-Length: {data!r}"
            return data + await reader.readexactly(int(length))
        return RawReply(await asyncio.wait_for(go(), limit))
    finally:
        writer.close()
