"""1xx interim answers from the backend (RFC 9110 §15.2), relayed to the client before the final answer.

A proxy forwards the 1xx answers it did not ask for itself (§15.2); 101 only within an upgrade (the
WebSocket relay, proxy/serve/streaming.py, handles those), so never here; none to an HTTP/1.0 client (§15.2:
it cannot read them). They are never stored: an entry holds the final answer only.

Where they are seen: the lean fill client (proxy/upstream/http1.py, the fills of rules and of the HTTP cache)
keeps them on its response (``FillResponse.interim``). aiohttp's client (writes, bypasses, HEAD) reads and
drops them without a public way to see them, so answers relayed through it carry none.

How they are sent: the fast path puts them in front of the final answer's bytes; on aiohttp's path,
whose server has no API for 1xx (aio-libs/aiohttp#7878), they are written to the request's transport
before the handler returns its response, which aiohttp writes next on the same connection.
"""
from __future__ import annotations

from http import HTTPStatus
from typing import Any, Iterable

MAX_INTERIM = 10  # more than this many 1xx before one answer: the rest are dropped

Interim = tuple[tuple[int, tuple[tuple[str, str], ...]], ...]


def relayable(status: int) -> bool:
    return 100 <= status < 200 and status != 101


def wire(interim: Interim) -> bytes:
    """The 1xx heads as HTTP/1.1 bytes; fields holding a line break are left out."""
    out = []
    for status, fields in interim[:MAX_INTERIM]:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in fields if not any(c in k + v for c in "\r\n")]
        out.append("".join(lines) + "\r\n")
    return "".join(out).encode("utf-8", "surrogateescape")


def of(response: Any) -> Interim:
    """The interim answers a backend response came with (none for aiohttp's responses)."""
    return tuple(getattr(response, "interim", ()))


def send_before(request: Any, interim: Iterable) -> None:
    """aiohttp's path: write them before the handler's response is written (HTTP/1.1 clients only)."""
    interim = tuple(interim)
    if not interim or request.version < (1, 1):
        return
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.write(wire(interim))
