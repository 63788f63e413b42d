"""Backend failures: what kind each is, said plainly, counted, and logged at warning without flooding.

``classify`` turns what either upstream client raised into an ``UpstreamError`` whose ``kind`` (the
``katiba_cache_upstream_errors_total`` label) and message say what happened:

* ``timeout``  no answer (or no more of it) within the configured timeouts: 504;
* ``connect``  no connection, or the connection closed or was reset before an answer began: 502;
* ``framing``  the answer does not agree with its own framing: not HTTP: 502; a body shorter than
               its Content-Length (the connection closed early): 502 before the answer began, else
               the client's connection closed after the bytes that came; bytes beyond its
               Content-Length: the answer ends there (relayed, and stored as framed by a fill),
               and its backend connection closed;
* ``body``     the connection failed while the body was being read (a reset mid-body): 502;
* ``busy``     no free backend slot (``max_concurrent``, ``UpstreamBusy``): 503, nothing was sent.

A request body that failed on the client's side (the client gone mid-upload, its chunked framing broken:
``ClientBodyError``, kind ``client``) is none of these: answered 400, neither counted nor logged here.

``FailureReport`` counts each and logs it at warning with its cause (exception class and message), the
rule and the method, never a path or a user id (a path may hold one), at most ``per_second`` lines per
kind and second; the lines it holds back are counted in the next line it writes (``suppressed``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import aiohttp

from ..core.errors import UpstreamError
from ..core.throttle import LogThrottle

log = logging.getLogger("proxy")


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - ClientResponseError without request_info cannot render itself
        return str(getattr(exc, "message", "") or "")


def _cause(exc: BaseException) -> str:
    message = " ".join(_text(exc).split())  # aiohttp's parser errors span lines
    return f"{type(exc).__name__}: {message[:300]}" if message else type(exc).__name__


def _is_framing(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {_text(exc)} {type(exc.__cause__).__name__} {_text(exc.__cause__) if exc.__cause__ else ''}".lower()
    return "contentlength" in text or "content length" in text or "content-length" in text \
        or "transferencoding" in text or "malformed" in text


def classify(exc: BaseException, reading_body: bool = False) -> UpstreamError:
    """The UpstreamError for what a client raised; ``reading_body``: the answer's head had arrived."""
    cause = _cause(exc)
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp.ServerTimeoutError included
        return UpstreamError(504, "upstream timed out" + (" mid-body" if reading_body else ""), "timeout", cause)
    if isinstance(exc, aiohttp.ClientResponseError):  # the head was not HTTP
        return UpstreamError(502, "upstream sent a malformed answer (not valid HTTP/1.1)", "framing", cause)
    if reading_body or isinstance(exc, aiohttp.ClientPayloadError):
        if _is_framing(exc):
            return UpstreamError(502, "upstream closed the connection mid-body, before the end its "
                                      "Content-Length (or chunked framing) announced", "framing", cause)
        return UpstreamError(502, "upstream failed mid-body", "body", cause)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, "upstream unreachable: cannot connect", "connect", cause)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError, aiohttp.ClientOSError)):
        return UpstreamError(502, "upstream closed the connection before answering", "connect", cause)
    return UpstreamError(502, f"upstream unreachable: {type(exc).__name__}", "connect", cause)


class FailureReport:
    """Count and log backend failures (see the module docstring)."""

    def __init__(self, counter: Any = None, per_second: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.counter = counter  # katiba_cache_upstream_errors_total (labels: kind); None: log only
        self.throttle = LogThrottle(per_second, clock)

    def __call__(self, error: UpstreamError, rule: str = "none", method: str = "") -> None:
        if error.kind == "client":  # the client's body failed (ClientBodyError): the backend did nothing wrong
            return
        if self.counter is not None:
            self.counter.labels(error.kind).inc()
        held = self.throttle.admit(error.kind)
        if held is None:
            return
        log.warning(f"upstream failure: {error.detail}",
                    extra={"event": "upstream_failure", "kind": error.kind, "status": error.status,
                           "cause": error.cause or error.detail, "rule": rule, "method": method,
                           "suppressed": held})
