"""HTTP/1.1 heads in and out for the fast path: framing a request head from the socket's bytes (with the
exact bytes kept, to hand on to aiohttp when the fast path does not answer) and writing an answer's head.

A head this module cannot frame with certainty (Transfer-Encoding, Upgrade, Connection other than
keep-alive, HTTP/1.0, several or odd Content-Lengths, a malformed line, a bare LF) is ``UNFRAMEABLE``:
the connection goes to aiohttp for good, so that its strict parser judges it and nothing is read two ways.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable
from email.utils import formatdate
from http import HTTPStatus

from aiohttp.helpers import EMPTY_BODY_STATUS_CODES  # the statuses aiohttp frames without a body
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from ..core.entry import Entry
from ..core.memo import SizedMemo


MAX_HEAD = 16384  # request line and fields; a longer head is aiohttp's to refuse (431)
# aiohttp's limits on a request head, as the proxy's server runs it (build_app passes these): a head
# over any of them gets aiohttp's 400, so the framer never reads one. Its C parser counts the target
# against max_line_size, its Python parser the whole line; the Python parser counts the request line
# and the blank line among max_headers, the C parser neither. The framer applies the stricter reading.
# No head over MAX_HEAD is framed, and MAX_HEAD is not over max_field_size: no field line the framer reads
# can be over that limit (test_heads_over_aiohttps_limits_are_never_framed fails if the two part).
AIOHTTP_LIMITS = {"max_line_size": 8190, "max_headers": 128, "max_field_size": MAX_HEAD}
_MAX_LINE, _MAX_FIELDS = (AIOHTTP_LIMITS[k] for k in ("max_line_size", "max_headers"))
_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (/[\x21-\x7e]*) HTTP/1\.1")
_FIELDS = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_DIGITS = re.compile(r"[0-9]{1,15}")
_NOT_FAST = frozenset({"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range",
                       "range", "expect"})
# Fields aiohttp's parser refuses to see twice (aiohttp.http_parser.SINGLETON_HEADERS).
_SINGLETONS = frozenset({"content-length", "content-location", "content-range", "content-type", "etag", "host",
                         "max-forwards", "server", "transfer-encoding", "user-agent"})
_SPECIAL = _NOT_FAST | {"transfer-encoding", "upgrade", "connection", "content-length"}


@dataclass(slots=True)
class Head:
    """A framed request head: what it is, and the exact bytes to hand on if this module doesn't answer."""

    raw: bytes
    method: str
    target: str
    body_length: int
    fast: bool
    client_request_id: str  # the first X-Request-ID field's value, "" without one: each answer names it
    lookup: tuple | None = None  # ReadPath._lookup's memo: (rules, verifier, valid until, Lookup)
    template: "Head | None" = None  # for a head with per-request fields: the remembered one without them

    @property
    def headers(self) -> CIMultiDict:
        """The fields, parsed again from ``raw`` at each call (a new object: change it freely). Only a
        lookup new to the memo, a miss, a stale refresh or an audit asks: a memoised head keeps its bytes
        and no parsed fields, which were three fifths of what it held (tracemalloc, a head with a JWT:
        2.4 KiB before, 0.9 KiB now)."""
        raw, fields = _last_framed
        if raw is not self.raw:
            fields = _split_fields(_field_lines(self.raw))
        return CIMultiDict(fields)


UNFRAMEABLE = object()

# The fields of the head framed last, which is the one looked up next (a head new to the memo, framed and
# offered to the read path in one step): its first ``headers`` need not split the lines again.
_last_framed: tuple[bytes, list[tuple[str, str]]] = (b"", [])


def frame(buf: bytearray) -> Head | None | object:
    """The head at the start of ``buf``; None while incomplete; ``UNFRAMEABLE`` if it is not plain."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD or buf.count(b"\n") != buf.count(b"\r\n"):
            return UNFRAMEABLE
        return None
    if end > MAX_HEAD:
        return UNFRAMEABLE
    raw = bytes(buf[:end + 4])
    head = _FRAMED.get(raw)
    if head is None:
        head = _frame_new(raw, end)
    return head


def _frame_new(raw: bytes, end: int) -> Head | object:
    """A head whose exact bytes are not remembered: by way of the one without its per-request fields when it
    has some (that one remembered, not this one), else framed and remembered."""
    stable, varying = _PER_REQUEST_LINE.subn(b"", raw)
    if varying:
        template = _FRAMED.get(stable)
        if template is None:
            template = _framed_and_remembered(stable, len(stable) - 4)
        if template is UNFRAMEABLE:
            return template
        if raw.count(b"\r\n") - 2 > _MAX_FIELDS - 2:  # the field count of aiohttp's limit includes them
            return UNFRAMEABLE
        request_id = _REQUEST_ID_LINE.search(raw)  # the first one, as _frame reads it
        request_id = request_id[1].decode("utf-8", "surrogateescape").strip(" \t") if request_id else ""
        return Head(raw, template.method, template.target, template.body_length, template.fast, request_id,
                    template.lookup, template)
    return _framed_and_remembered(raw, end)


def _framed_and_remembered(raw: bytes, end: int) -> Head | object:
    head = _frame(raw, end)
    if len(raw) <= FRAMED_MAX_BYTES:
        _FRAMED.put(raw, head)
    return head


# Fields that clients, load balancers and tracers set anew on every request. Nothing the fast path decides
# reads them (the rules read the path, the query, Authorization, Origin, Range, Cache-Control...; with
# tracing on, every request takes aiohttp's path), so heads that differ only in them share one parse and
# one lookup: numbered requests were each new to the memo, a hit costing what a request never seen costs.
# A line is one of them only if its name is exact and its value valid (_FIELDS); any other stays in the key.
PER_REQUEST_FIELDS = ("x-request-id", "x-correlation-id", "request-id", "traceparent", "tracestate", "baggage",
                      "x-amzn-trace-id", "x-amz-cf-id", "x-cloud-trace-context", "x-b3-traceid", "x-b3-spanid",
                      "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3", "uber-trace-id",
                      "x-datadog-trace-id", "x-datadog-parent-id", "sentry-trace", "cf-ray", "x-request-start")
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*(?=\r\n)"
_PER_REQUEST_LINE = re.compile(rb"\r\n(?:%s):%s" % (b"|".join(re.escape(n.encode()) for n in PER_REQUEST_FIELDS),
                                                     _VALUE), re.IGNORECASE)
_REQUEST_ID_LINE = re.compile(rb"\r\nx-request-id:(%s)" % _VALUE, re.IGNORECASE)  # group 1: the value

# Frames by their exact bytes: clients repeat byte-identical requests (same token, same fields), and a
# frame is a pure function of its bytes, so each distinct head is parsed once. Heads are never changed
# after framing (the headers are read, or copied before anything is added), except for the memo of
# what the rules make of them (``Head.lookup``).
# A share of the memo budget (core.memo.set_budget).
FRAMED_SHARE = 0.40
FRAMED_MAX_BYTES = 2048  # a typical head with a JWT is under 1 KiB; larger ones are parsed each time


def _framed_size(raw: bytes, head: object) -> int:
    # the key (the Head holds the same bytes), the memo's node, the Head with its strings and the lookup
    # tuple it will memoise (tracemalloc: about 380 bytes besides the raw bytes for a head of six fields)
    return len(raw) + 512


_FRAMED: SizedMemo = SizedMemo("heads", FRAMED_SHARE, _framed_size)


def _frame(raw: bytes, end: int) -> Head | object:
    line_end = raw.find(b"\r\n")
    first = _REQUEST_LINE.fullmatch(raw, 0, line_end)
    if first is None or line_end > _MAX_LINE or _FIELDS.fullmatch(raw, line_end + 2, end + 2) is None:
        return UNFRAMEABLE
    lines = _field_lines(raw)
    if len(lines) > _MAX_FIELDS - 2:
        return UNFRAMEABLE
    fields = _split_fields(lines)
    global _last_framed
    _last_framed = (raw, fields)
    names = {name.lower() for name, _ in fields}
    if "host" not in names or (len(names) < len(fields) and _repeats_a_singleton(fields)):
        return UNFRAMEABLE  # aiohttp refuses these with 400: let it
    body_length, fast = 0, first[1] == b"GET"
    if not names.isdisjoint(_SPECIAL):  # the rare case: look closer
        if "transfer-encoding" in names or "upgrade" in names:
            return UNFRAMEABLE
        headers = CIMultiDict(fields)
        connection = headers.getall("connection", ())
        if connection and (len(connection) > 1 or connection[0].strip().lower() != "keep-alive"):
            return UNFRAMEABLE
        lengths = headers.getall("content-length", ())
        if len(lengths) > 1 or (lengths and _DIGITS.fullmatch(lengths[0]) is None):
            return UNFRAMEABLE
        body_length = int(lengths[0]) if lengths else 0
        fast = fast and body_length == 0 and names.isdisjoint(_NOT_FAST)
    request_id = next((value for name, value in fields if name.lower() == "x-request-id"), "") \
        if "x-request-id" in names else ""
    return Head(raw, first[1].decode("ascii"), first[2].decode("ascii"), body_length, fast, request_id)


def _field_lines(raw: bytes) -> list[str]:
    """The field lines of a whole head (``raw`` ends with its blank line)."""
    line_end, end = raw.find(b"\r\n"), len(raw) - 4
    return raw[line_end + 2:end].decode("utf-8", "surrogateescape").split("\r\n") if end > line_end else []


def _split_fields(lines: list[str]) -> list[tuple[str, str]]:
    """(name, value) per field line of a head already checked by ``_frame``."""
    return [(name, value.strip(" \t")) for name, _, value in (line.partition(":") for line in lines)]


def _repeats_a_singleton(fields: list[tuple[str, str]]) -> bool:
    seen = [name.lower() for name, _ in fields]
    return any(seen.count(name) > 1 for name in _SINGLETONS)


# The per-answer fields: never part of an entry's own head, each answer adds its own after it.
_PER_ANSWER = frozenset({"age", "x-cache", "cache-status", "x-request-id"})


def entry_head(entry: Entry) -> bytes:
    """Status line and the entry's own headers, as aiohttp's path (``RequestPath.read``) would send them;
    computed once per decoded entry (decoded entries are shared, see entry.decode_entry). The ETag is set
    as ``CIMultiDict.__setitem__`` sets it on aiohttp's path: the first ETag field keeps its place, renamed,
    later ones go, and without one it comes last."""
    cached = entry.wire_head
    if cached is not None:
        return cached
    fields, etag = [], False
    for name, value in entry.headers:
        lower = name.lower()
        if lower in _PER_ANSWER or (lower == "etag" and etag):
            continue
        if lower == "etag":
            etag, name = True, "ETag"
        fields.append((name, value))
    if not etag:
        fields.append(("ETag", entry.etag))
    wire_head, dated = _status_and_fields(entry.status, fields, len(entry.body))
    object.__setattr__(entry, "wire_head", wire_head)  # frozen dataclass: a derived, immutable cache
    object.__setattr__(entry, "wire_dated", dated)
    return wire_head


def wire(status: int, headers: CIMultiDict, body: bytes | int | None, reason: str | None = None) -> bytes:
    """An answer as aiohttp's ``web.Response`` would put it on the wire for a keep-alive HTTP/1.1 GET.
    ``body``: the bytes; or only the head, for a body of that many bytes (int) or a chunked one (None)."""
    length = len(body) if isinstance(body, bytes) else body
    head, dated = _status_and_fields(status, headers.items(), length, reason)
    date = b"" if dated else b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
    if not isinstance(body, bytes) or status in EMPTY_BODY_STATUS_CODES:
        body = b""
    return b"".join((head, date, b"\r\n", body))


_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})  # set here, never passed on


def _status_and_fields(status: int, fields: Iterable[tuple[str, str]], length: int | None,
                       reason: str | None = None) -> tuple[bytes, bool]:
    """The status line and ``fields`` (no blank line), framed for ``length`` bytes (None: chunked), with
    aiohttp's defaults appended as its multidict would append them; and whether a Date field is among
    them. One pass over the fields: a hit on an entry new to the decoded-entry memo spent a fifth of its
    time in multidict round trips (tests/unit/test_framing.py holds this to the multidict writer)."""
    lines = [f"HTTP/1.1 {status} {_reason(status) if reason is None else reason}\r\n"]
    typed = served = dated = False
    for name, value in fields:
        lower = name.lower()
        if lower in _FRAMING:
            continue
        if lower == "content-type":
            typed = True
        elif lower == "server":
            served = True
        elif lower == "date":
            dated = True
        lines.append(f"{name}: {value}\r\n")
    framed = status not in EMPTY_BODY_STATUS_CODES
    if framed and length is None:
        lines.append("Transfer-Encoding: chunked\r\n")
    if framed and length != 0 and not typed:
        lines.append("Content-Type: application/octet-stream\r\n")
    if not served:
        lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
    if framed and length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape"), dated


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
