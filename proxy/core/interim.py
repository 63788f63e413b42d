"""1xx interim answers from the backend (RFC 9110 §15.2), relayed to the client before the final answer.

A proxy forwards the 1xx answers it did not ask for itself (§15.2); 101 only within an upgrade (the
WebSocket relay, proxy/serve/streaming.py, handles those), so never here; none to an HTTP/1.0 client (§15.2:
it cannot read them). They are never stored: an entry holds the final answer only.

Where they are seen: the lean HTTP/1.1 client (proxy/upstream/http1.py), which every backend request
goes through (fills, and the answers relayed as they come: writes, bypasses, revalidations, HEAD), keeps
them on its response (``Response.interim``, read with ``of``). A ``100 Continue`` to a request that said
``Expect: 100-continue`` is not kept: aiohttp's server already answered 100 to our client. aiohttp's
client, which now serves only WebSockets, reads and drops them; its response class there notes those
before a 101 (proxy/upstream/wsinterim.py), and the relay sends them with ``send_before``.

How they are sent: the fast path puts them in front of the final answer's bytes (a stored fill's from
what it fetched, a streamed one's from its response); on aiohttp's path, whose server has no API for 1xx
(aio-libs/aiohttp#7878), they are written to the request's transport before the handler's response is
prepared (``send_before``), which aiohttp writes next on the same connection: for an answer built from a
fill, and for every relayed answer (``PassThrough.stream``).
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
    """The interim answers a backend response came with (none for anything else)."""
    return tuple(getattr(response, "interim", ()))


def send_before(request: Any, interim: Iterable) -> None:
    """aiohttp's path: write them before the handler's response is written (HTTP/1.1 clients only)."""
    interim = tuple(interim)
    if not interim or request.version < (1, 1):
        return
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.write(wire(interim))
