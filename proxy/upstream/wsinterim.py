"""The 1xx interim answers a backend sends before accepting a WebSocket upgrade, kept for the client.

aiohttp's client, which the WebSocket relay uses (proxy/serve/streaming.py), reads the 1xx heads before a
final answer and drops them (``ClientResponse.start``). ``InterimKeepingResponse`` is the response class
of the proxy's aiohttp session: inside ``keeping_interim()`` it notes each relayable one (a 103 Early
Hints, say; never the 101 itself) as aiohttp reads it, in the form proxy/core/interim.py sends. Outside
it, nothing changes. The note is a context variable, so concurrent upgrades each keep their own.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterator

import aiohttp

from ..core.interim import MAX_INTERIM, relayable

_kept: ContextVar[list | None] = ContextVar("kept_interim", default=None)


@contextlib.contextmanager
def keeping_interim() -> Iterator[list[tuple[int, tuple[tuple[str, str], ...]]]]:
    """The list the 1xx of the requests sent inside the block are appended to."""
    kept: list = []
    token = _kept.set(kept)
    try:
        yield kept
    finally:
        _kept.reset(token)


class InterimKeepingResponse(aiohttp.ClientResponse):
    async def start(self, connection: Any) -> "InterimKeepingResponse":
        kept = _kept.get()
        protocol = connection.protocol
        if kept is None or protocol is None:
            return await super().start(connection)
        read = protocol.read

        async def read_keeping() -> Any:
            message, payload = await read()
            if relayable(message.code) and len(kept) < MAX_INTERIM:
                kept.append((message.code, tuple(message.headers.items())))
            return message, payload

        protocol.read = read_keeping  # this connection's reads of this answer's heads only: undone below
        try:
            return await super().start(connection)
        finally:
            del protocol.read
