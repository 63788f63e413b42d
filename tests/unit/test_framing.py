"""proxy.serve.framing.frame against aiohttp's own parser: whatever the fast path frames, aiohttp reads alike.

The fast path frames requests before aiohttp sees them, and hands aiohttp the bytes it does not answer.
If the two ever disagreed on where a request ends, or on its method, target or fields, a client could
smuggle a request past one of them. So: for generated requests, plain and hostile, a request that
``frame`` accepts must parse in aiohttp to the same method, target, fields and body length, with the
connection kept alive; anything else must come back ``UNFRAMEABLE`` (aiohttp then judges it alone).
"""
from __future__ import annotations

import asyncio
import re
from http import HTTPStatus

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import EMPTY_BODY_STATUS_CODES
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserC, HttpRequestParserPy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.core.entry import Entry
from proxy.serve.framing import AIOHTTP_LIMITS, MAX_HEAD, UNFRAMEABLE, entry_head, frame, wire

NEXT = b"GET /next HTTP/1.1\r\nHost: next\r\n\r\n"

names = st.one_of(
    st.sampled_from(["Host", "host", "Content-Length", "content-length", "Transfer-Encoding", "Connection",
                     "Upgrade", "Authorization", "Range", "If-None-Match", "Expect", "Content-Type", "X-A",
                     "User-Agent", "Host ", " Host", "X A", "X:A", ""]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=12),
)
values = st.one_of(
    st.sampled_from(["", "0", "5", "05", "+5", "5 ", " 5", "5,5", "-1", "99999999999999999999", "chunked",
                     "close", "keep-alive", "Keep-Alive", "upgrade", "websocket", "100-continue", "a b",
                     "Bearer abc.def.ghi", "\t tabbed \t", "caf\u00e9"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xff), max_size=16),
)
separators = st.sampled_from([": ", ":", " : ", ":\t", ":  "])
endings = st.sampled_from(["\r\n"] * 12 + ["\n", "\r", "\r\n "])


@st.composite
def requests(draw) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "get", "GE T", "OPTIONS", "CONNECT"]))
    target = draw(st.one_of(
        st.sampled_from(["/", "/api/v1/users/profile", "/a?b=c&d", "*", "http://x/y", "//a", "/a b", "/\x7f"]),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7f), max_size=20).map(lambda t: "/" + t),
    ))
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1"]))
    fields = draw(st.lists(st.tuples(names, separators, values, endings), max_size=6))
    if draw(st.booleans()):
        fields.insert(0, ("Host", ": ", "proxy", "\r\n"))
    head = f"{method} {target} {version}\r\n" + "".join(n + s + v + e for n, s, v, e in fields) + "\r\n"
    body = draw(st.binary(max_size=8))
    return head.encode("latin-1") + body + NEXT


@st.composite
def requests_near_the_limits(draw) -> bytes:
    """Plain requests around aiohttp's limits (AIOHTTP_LIMITS): target length, field count, field size."""
    target = "/" + "t" * draw(st.one_of(st.integers(8150, 8200), st.integers(0, 10)))
    fields = [("Host", "proxy")] + [(f"X-{i}", "v") for i in range(draw(st.integers(0, 140)))]
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), ("X-Long", "v" * draw(st.integers(8000, 16400))))
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    return head.encode() + NEXT


# The server's parser is the C one; the Python one is what aiohttp falls back to (AIOHTTP_NO_EXTENSIONS).
PARSERS = {"c-parser": HttpRequestParserC, "python-parser": HttpRequestParserPy}


def parse(data: bytes, parser_class=HttpRequestParser):
    """aiohttp's parse of ``data`` (by default its C parser, as the server uses, with the server's limits):
    messages with their payloads."""
    loop = asyncio.new_event_loop()
    try:
        parser = parser_class(BaseProtocol(loop), loop, 2 ** 16, **AIOHTTP_LIMITS)
        messages, upgraded, tail = parser.feed_data(data)
        return [(m, p) for m, p in messages], upgraded, tail
    finally:
        loop.close()


def check(data: bytes, parser_class=HttpRequestParser) -> None:
    """Frame ``data`` request by request as the fast path does, each compared with aiohttp's reading."""
    framed = 0
    while data:
        head = frame(bytearray(data))
        if head is None or head is UNFRAMEABLE:  # waits for more, or aiohttp reads the rest alone
            return
        end = len(head.raw) + head.body_length
        assert end <= len(data) or head.body_length  # a head is framed only once it is all there
        messages, upgraded, _ = parse(data[:end], parser_class)
        assert not upgraded and len(messages) == 1, (data, messages)
        message, payload = messages[0]
        assert message.method == head.method and message.path == head.target
        # (aiohttp spells well-known names its own way, "host" as "Host": names compare caselessly)
        assert [(k.lower(), v) for k, v in message.headers.items()] == [(k.lower(), v) for k, v in head.headers.items()]
        assert head.client_request_id == message.headers.get("X-Request-ID", "")  # each answer names it
        assert tuple(message.version) == (1, 1) and not message.should_close
        if head.body_length:
            assert payload.is_eof() and b"".join(payload._buffer) == data[len(head.raw):end]
        if head.fast:
            assert head.method == "GET" and head.body_length == 0
            assert not any(h in message.headers for h in ("Range", "If-None-Match", "Expect", "Transfer-Encoding"))
        data, framed = data[end:], framed + 1
    assert framed  # the whole input was framed: it ended with NEXT


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_what_the_fast_path_frames_aiohttp_reads_alike(data):
    check(data)


@pytest.mark.parametrize("parser_class", PARSERS.values(), ids=PARSERS.keys())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=requests_near_the_limits())
def test_heads_over_aiohttps_limits_are_never_framed(parser_class, data):
    """A head aiohttp refuses (request line over 8,190 bytes, over 128 fields, a field over 16 KiB) is
    handed on untouched, so aiohttp answers its 400; one it reads is read alike."""
    check(data, parser_class)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n" + NEXT,
    b"POST /w HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + NEXT,
    b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nX: 2\r\n\r\n" + NEXT,
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n" + NEXT,
])
def test_plain_requests_are_framed(data):
    assert frame(bytearray(data)) is not UNFRAMEABLE
    check(data)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",  # no Host: aiohttp says 400
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * MAX_HEAD + b"\r\n\r\n",
])
def test_requests_it_does_not_frame_for_certain_go_to_aiohttp_whole(data):
    assert frame(bytearray(data)) is UNFRAMEABLE


def test_an_incomplete_head_waits_for_more_unless_it_cannot_be_plain():
    assert frame(bytearray(b"GET / HTTP/1.1\r\nHost: a\r\n")) is None
    assert frame(bytearray(b"GET / HTTP/1.1\r\nHost: a\r")) is None
    assert frame(bytearray(b"GET / HTTP/1.1\nHost: a\n")) is UNFRAMEABLE  # bare LF: never plain
    assert frame(bytearray(b"G" * (MAX_HEAD + 1))) is UNFRAMEABLE


def test_the_frame_cache_is_bounded_in_bytes_and_keeps_no_large_head(monkeypatch):
    from proxy.core import memo
    from proxy.serve import framing
    monkeypatch.setattr(memo, "_budget", [1 << 20])
    framing._FRAMED.clear()
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * framing.FRAMED_MAX_BYTES + b"\r\n\r\n"
    assert frame(bytearray(big)).target == "/"
    assert not framing._FRAMED  # parsed, not kept
    limit = framing._FRAMED.max_size
    count = limit // framing._framed_size(b"GET /0 HTTP/1.1\r\nHost: a\r\n\r\n", None) + 10
    for i in range(count):
        frame(bytearray(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i))
    assert 0 < framing._FRAMED.size <= limit and len(framing._FRAMED) < count
    framing._FRAMED.clear()


def test_a_remembered_head_holds_little_besides_its_bytes(monkeypatch):
    """Issue 21: at 100k users the framing memo held only half the distinct heads in its share of
    MEMO_MAX_BYTES, each keeping its fields parsed (a CIMultiDict and a string per value: two thirds of
    what it held). A memoised head keeps its bytes; its fields are parsed again only when asked for."""
    import tracemalloc

    from proxy.core import memo
    from proxy.serve import framing

    monkeypatch.setattr(memo, "_budget", [1 << 30])
    monkeypatch.setattr(framing, "_FRAMED", framing.SizedMemo("heads", framing.FRAMED_SHARE, framing._framed_size))
    token = "eyJhbGciOiJIUzI1NiJ9." + "x" * 300
    raws = [(f"GET /api/v1/users/profile HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer {token}{i:06d}"
             f"\r\nUser-Agent: wrk\r\nAccept: */*\r\nX-Request-ID: req-{i}\r\n\r\n").encode() for i in range(2000)]
    buffers = [bytearray(raw) for raw in raws]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        heads = [frame(buffer) for buffer in buffers]
        seventh, last = heads[7], heads[-1]
        del heads  # each request's own head (its X-Request-ID): what stays is what the memo holds
        per_head = (tracemalloc.get_traced_memory()[0] - before) / len(raws)
    finally:
        tracemalloc.stop()
    assert len(framing._FRAMED) == len(raws) and seventh.client_request_id == "req-7"
    assert seventh.headers["Authorization"] == f"Bearer {token}000007"  # parsed again when asked for
    assert last.headers["Authorization"] == f"Bearer {token}001999"
    remembered = next(iter(framing._FRAMED))
    # what the memo counts each head as is no under-estimate, and is about the bytes alone
    assert per_head <= framing._framed_size(remembered, None) <= len(remembered) + 512, per_head



# --------------------------------------------------------------- fields set anew on every request

def _head_with(fields: list[tuple[str, str]], target: str = "/api/v1/users/profile") -> bytes:
    return (f"GET {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n").encode(
        "utf-8", "surrogateescape")


def test_heads_differing_only_in_request_and_trace_ids_are_parsed_once(monkeypatch):
    """Issue 21: clients and load balancers number their requests (X-Request-ID, traceparent). Each
    such head was new to the framing memo, parsed and looked up again, and kept: a hit cost as much as a
    request never seen (bench.keyspace_model, 1k keys: 8.3 us per hit without ids, 23.5 with them)."""
    from proxy.core import memo
    from proxy.serve import framing

    monkeypatch.setattr(memo, "_budget", [1 << 30])
    monkeypatch.setattr(framing, "_FRAMED", framing.SizedMemo("heads", framing.FRAMED_SHARE, framing._framed_size))
    raws = [_head_with([("Host", "proxy"), ("X-Request-ID", f"req-{i}"), ("Authorization", "Bearer t"),
                        ("traceparent", f"00-{i:032x}-00f067aa0ba902b7-01"), ("X-AMZN-Trace-Id", f"Root={i}")])
            for i in range(100)]
    heads = [frame(bytearray(raw)) for raw in raws]
    assert len(framing._FRAMED) == 1  # one head remembered: the request without its per-request fields
    assert [h.raw for h in heads] == raws  # each handed on as the client sent it
    assert [h.client_request_id for h in heads] == [f"req-{i}" for i in range(100)]
    assert heads[42].headers["traceparent"] == f"00-{42:032x}-00f067aa0ba902b7-01"
    assert {(h.method, h.target, h.fast, h.body_length) for h in heads} == {("GET", "/api/v1/users/profile", True, 0)}


@st.composite
def requests_with_per_request_fields(draw) -> tuple[bytes, bytes]:
    """Two requests alike but for the values (and count) of per-request fields, as ``requests`` draws them."""
    if draw(st.booleans()):
        base = draw(requests())
    else:  # mostly framable: the per-request fields then decide
        fields = draw(st.lists(st.tuples(names, separators, values), max_size=3))
        base = ("GET /api/v1/users/profile HTTP/1.1\r\nHost: proxy\r\n"
                + "".join(f"{n}{s}{v}\r\n" for n, s, v in fields) + "\r\n").encode("latin-1") + NEXT
    head, _, rest = base.partition(b"\r\n\r\n")
    per_request_names = st.sampled_from(["X-Request-ID", "x-request-id", "traceparent", "TraceParent", "tracestate",
                             "X-Amzn-Trace-Id", "X-Request-IDs", "X-Request", "b3"])
    twins = []
    for _ in range(2):
        lines = head.split(b"\r\n")
        for name, separator, value in draw(st.lists(st.tuples(per_request_names, separators, values), max_size=3)):
            line = (name + separator + value).encode("latin-1")
            lines.insert(draw(st.integers(1, len(lines))), line)
        twins.append(b"\r\n".join(lines) + b"\r\n\r\n" + rest)
    return twins[0], twins[1]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests_with_per_request_fields())
def test_a_head_framed_from_its_twin_is_the_head_framed_alone(twins):
    """A head framed by way of one already seen without its per-request fields is what framing it alone
    gives: the same refusals (aiohttp's limits counted on the whole head), fields, request id and bytes."""
    from proxy.serve import framing

    first, second = twins
    frame(bytearray(first))
    head = frame(bytearray(second))
    end = second.find(b"\r\n\r\n")
    alone = framing._frame(second[:end + 4], end) if 0 <= end <= MAX_HEAD else None
    if head is None or head is UNFRAMEABLE or alone is None or alone is UNFRAMEABLE:
        assert head is alone or (head is UNFRAMEABLE and end > MAX_HEAD)
        return
    assert (head.raw, head.method, head.target, head.body_length, head.fast, head.client_request_id) == \
        (alone.raw, alone.method, alone.target, alone.body_length, alone.fast, alone.client_request_id)
    assert list(head.headers.items()) == list(alone.headers.items())
    check(second)


def test_per_request_fields_are_counted_against_aiohttps_field_limit():
    fields = [("Host", "proxy")] + [(f"X-{i}", "v") for i in range(AIOHTTP_LIMITS["max_headers"] - 3)]
    assert frame(bytearray(_head_with(fields))) is not UNFRAMEABLE
    assert frame(bytearray(_head_with(fields + [("X-Request-ID", "one-too-many")]))) is UNFRAMEABLE


# ------------------------------------------------------------------------- an entry's head, rendered

entry_names = st.one_of(
    st.sampled_from(["ETag", "etag", "Content-Type", "content-type", "Server", "Date", "date", "Age",
                     "X-Cache", "cache-status", "X-Request-ID", "Content-Length", "Transfer-Encoding",
                     "Connection", "Location", "Vary", "Cache-Control"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters=":"),
            min_size=1, max_size=10),
)
entry_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xff), max_size=12)


statuses = st.sampled_from([100, 103, 200, 201, 203, 204, 301, 304, 404, 410, 299, 599])


def multidict_head(status: int, headers: CIMultiDict, length: int | None) -> tuple[bytes, bool]:
    """The oracle: the head as the writer made it on aiohttp's own multidict before it was one pass (field
    order, the defaults appended by ``setdefault``, aiohttp's list of bodiless statuses), and whether a
    Date field is among its fields."""
    headers = CIMultiDict(headers)
    for name in ("Content-Length", "Transfer-Encoding", "Connection"):
        headers.popall(name, None)
    if status not in EMPTY_BODY_STATUS_CODES:
        if length is None:
            headers["Transfer-Encoding"] = "chunked"
        if length != 0:
            headers.setdefault("Content-Type", "application/octet-stream")
    headers.setdefault("Server", SERVER_SOFTWARE)
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"] + [f"{name}: {value}\r\n" for name, value in headers.items()]
    if status not in EMPTY_BODY_STATUS_CODES and length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape"), "Date" in headers


@settings(max_examples=400, deadline=None)
@given(status=statuses, headers=st.lists(st.tuples(entry_names, entry_values), max_size=8),
       length=st.sampled_from([None, 0, 1, 9]))
def test_an_answers_head_is_what_the_multidict_writer_gave(status, headers, length):
    """``wire`` writes every fast answer's head in one pass over its fields: the same bytes, field for
    field, as the multidict writer gave, then a Date line unless the fields hold one."""
    expected, dated = multidict_head(status, CIMultiDict(headers), length)
    written = wire(status, CIMultiDict(headers), length)
    assert written.startswith(expected) and written.endswith(b"\r\n")
    date_line = written[len(expected):-2]
    if dated:
        assert date_line == b""
    else:
        assert re.fullmatch(rb"Date: [A-Za-z]{3}, \d\d [A-Za-z]{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", date_line)


@settings(max_examples=400, deadline=None)
@given(status=statuses, headers=st.lists(st.tuples(entry_names, entry_values), max_size=8),
       body=st.sampled_from([b"", b"x", b'{"id": 1}']))
def test_an_entrys_head_is_what_the_multidict_writer_gave_for_its_fields(status, headers, body):
    """``entry_head`` gives, in one pass, what the multidict writer gave for the entry's fields with its
    ETag set as aiohttp's path sets it (``CIMultiDict.__setitem__``) and the per-answer fields dropped."""
    entry = Entry(status, tuple(headers), body, 0.0, (), "f", '"stored-etag"')
    reference = CIMultiDict(headers)
    reference["ETag"] = reference.get("ETag", entry.etag)
    for name in ("Age", "X-Cache", "Cache-Status", "X-Request-ID"):
        reference.popall(name, None)
    assert (entry_head(entry), entry.wire_dated) == multidict_head(status, reference, len(body))
