"""When a request that failed on its connection may be sent to the backend again (RFC 9112 §9.3.1).

The backend closes idle keep-alive connections when it likes (its keep-alive timeout); a request that
took such a connection from the pool just then fails without the backend having seen it. Sending it again
on a new connection is always safe when none of its bytes went out, whatever the method; once some may
have, only an idempotent method (RFC 9110 §9.2.2) may go again, and only with the same body.

What this module knows and how:

* bytes sent: aiohttp's writer refuses to write on a closing transport *before* writing
  (``ClientConnectionResetError``: "Cannot write to closing transport"), and writes the head together
  with the first body chunk. ``Progress`` counts the chunks aiohttp started to write (a public
  ``TraceConfig`` signal, sent just before each write): the refusal of the first write means nothing
  went out.
* the body: bytes can be sent again as they are; a stream (the client's request body) is read through
  ``ReplayableBody``, which keeps what it has passed on, up to ``REPLAY_LIMIT`` bytes, so a second
  attempt sends the same bytes.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

import aiohttp

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 §9.2.2
REPLAY_LIMIT = 1 << 20  # bytes of a streamed body kept for a second attempt


class Progress:
    """One attempt's progress: body chunks aiohttp began to write (the first one carries the head)."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks = 0


async def _on_chunk(session: Any, context: Any, params: Any) -> None:
    progress = getattr(context, "trace_request_ctx", None)
    if isinstance(progress, Progress):
        progress.chunks += 1


def progress_trace() -> aiohttp.TraceConfig:
    """The session's trace: ``Progress`` passed as ``trace_request_ctx`` counts the chunks."""
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_on_chunk)
    return trace


class ReplayableBody:
    """A streamed body that a second attempt can send again from its start."""

    def __init__(self, source: Any):
        self.source = source
        self.kept: list[bytes] = []
        self.size = 0
        self.whole = True  # everything passed on so far is kept
        self.ended = False  # the source is exhausted

    @classmethod
    def wrap(cls, body: Any) -> "ReplayableBody | None":
        """None for what needs no wrapping (no body, bytes: sent again as they are)."""
        if body is None or isinstance(body, (bytes, bytearray, memoryview, str)):
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
        self.ended = True

    @property
    def replayable(self) -> bool:
        return self.whole


def _refused_before_writing(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 5:  # aiohttp wraps the writer's error (ClientOSError from ...)
        if isinstance(exc, aiohttp.ClientConnectionResetError) and "closing transport" in " ".join(map(str, exc.args)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def nothing_sent(exc: BaseException, progress: Progress, replay: ReplayableBody | None, body: Any,
                 headers: Mapping[str, str]) -> bool:
    """None of the request's bytes can have reached the backend: the first write was refused, or, for a
    request with a body (whose head goes out with the first chunk), no write was begun at all (the
    connection closed while the body was awaited)."""
    if "Expect" in headers:  # the head goes out alone before the body: we cannot tell
        return False
    if progress.chunks <= 1 and _refused_before_writing(exc):
        return True
    has_body = (replay is not None and not (replay.ended and replay.size == 0)) or bool(body)
    return has_body and progress.chunks == 0


def may_resend(method: str, exc: BaseException, progress: Progress, replay: ReplayableBody | None,
               body: Any, headers: Mapping[str, str]) -> bool:
    """May the request that failed with ``exc`` (before any answer) go again on a new connection?"""
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ClientResponseError)):
        return False  # no connection at all (a new one would fail alike), or an answer that was not HTTP
    if replay is not None and not replay.replayable:
        return False  # part of the body is gone
    if nothing_sent(exc, progress, replay, body, headers):
        return True
    return method.upper() in IDEMPOTENT and isinstance(
        exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientConnectionResetError))
