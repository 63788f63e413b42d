"""When a request that failed on its connection may be sent to the backend again (RFC 9112 §9.3.1).

The backend closes idle keep-alive connections when it likes (its keep-alive timeout); a request that
took such a connection from the pool just then fails without the backend having seen it. Sending it again
on a new connection is always safe when none of its bytes went out, whatever the method; once some may
have, only an idempotent method (RFC 9110 §9.2.2) may go again, only with the same body, and only when
the connection was a reused keep-alive one that closed before any answer began (a new connection that
the backend closes on a request is its answer to that request, not a stale connection).

What this module knows and how:

* bytes sent: the lean client (proxy/upstream/http1.py) counts what it handed to the connection
  (``http1.Sent``); a write refused because the connection was closing ("Cannot write to closing
  transport") hands over nothing. The head goes out with the body's first chunk, so a request whose
  client was slow to send its body never leaves a head alone on a connection.
* the body: bytes can be sent again as they are; a stream (the client's request body) is read through
  ``ReplayableBody``, which keeps what it has passed on, up to ``REPLAY_LIMIT`` bytes, so a second
  attempt sends the same bytes.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp

from .http1 import Sent

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 §9.2.2
REPLAY_LIMIT = 1 << 20  # bytes of a streamed body kept for a second attempt


class ReplayableBody:
    """A streamed body that a second attempt can send again from its start."""

    def __init__(self, source: Any):
        self.source = source
        self.kept: list[bytes] = []
        self.size = 0
        self.whole = True  # everything passed on so far is kept

    @classmethod
    def wrap(cls, body: Any) -> "ReplayableBody | None":
        """None for what needs no wrapping (no body, bytes: sent again as they are)."""
        if body is None or isinstance(body, (bytes, bytearray, memoryview)):
            return None
        return cls(body)

    def data(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for chunk in list(self.kept):
            yield chunk
        source = self.source.iter_any() if hasattr(self.source, "iter_any") else self.source
        async for chunk in source:
            if self.whole:
                self.size += len(chunk)
                if self.size > REPLAY_LIMIT:
                    self.whole = False
                    self.kept.clear()
                else:
                    self.kept.append(bytes(chunk))
            yield chunk

    @property
    def replayable(self) -> bool:
        return self.whole


def may_resend(method: str, exc: BaseException, sent: Sent, replay: ReplayableBody | None) -> bool:
    """May the request that failed with ``exc`` (before any answer) go again on a new connection?"""
    if not sent.connected or isinstance(exc, (asyncio.TimeoutError, aiohttp.ClientResponseError)):
        return False  # no connection at all (a new one would fail alike), a backend still busy with it, or
        # an answer that was not HTTP (asyncio.TimeoutError is an OSError)
    if replay is not None and not replay.replayable:
        return False  # part of the body is gone
    if sent.bytes == 0:
        return True  # nothing reached the backend
    return method.upper() in IDEMPOTENT and sent.reused and not sent.answered
