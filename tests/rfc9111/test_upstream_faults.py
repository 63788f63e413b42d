"""What a client gets when the origin misbehaves below HTTP, against a raw local origin that does so on cue
(tests/rfc9111/rawserver.py), on both stores:

* RFC 5861 §4 / RFC 9111 §4.2.4: stale-if-error when a revalidation meets a closed connection, a reset or
  a timeout (HTTP cache and rule mode);
* framing errors: a body shorter than its Content-Length is never stored; a longer one is cut at
  Content-Length and stored as framed; the error's message and metric kind say what happened; on a
  relayed answer (a write, a bypassed GET) a longer body is a 200 cut at Content-Length, a shorter one
  ends with the client's connection closed;
* relayed requests (RFC 9110 §10.1.1, §8.6): Expect: 100-continue completes, a bodyless write carries
  Content-Length: 0, an answer that comes before the body was sent stops the sending, a HEAD answer
  without framing closes its connection;
* RFC 9112 §9.3.1 (retrying requests): a request none of whose bytes reached the origin is sent again on
  a new connection whatever its method; a partly sent one only when it is idempotent.
"""
from __future__ import annotations

import asyncio
import logging

import pytest

from tests.rfc9111.conftest import Clock, auth
from tests.rfc9111.rawserver import Answer, RawOrigin, talk

P = "/r/raw"
TYPES = "/api/v1/achievements/types"  # a rule: global, token required, ttl 86400, stale_if_error 600 (shipped rules.yaml)
ENVELOPE = b'{"header": {"responseCode": 200}}'


@pytest.fixture
async def raw():
    origin = await RawOrigin().start()
    origin.clock = Clock()
    yield origin
    await origin.close()


# ------------------------------------------------------------------- RFC 5861 §4 on dropped connections

FAULTS = {"closed": Answer(action="drop"), "reset": Answer(action="reset"),
          "cut-mid-body": Answer(body=b"par", length=100), "timeout": Answer(action="hang")}


@pytest.mark.parametrize("fault", FAULTS)
async def test_5861_4_http_cache_stale_if_error_when_the_revalidation_fails_below_http(make_cache, raw, fault):
    raw.script(P, Answer(headers=[("Cache-Control", "max-age=10, stale-if-error=600"), ("ETag", '"v1"')],
                         body=b"good"), FAULTS[fault])
    cache = await make_cache(origin=raw, upstream={"read_timeout": 0.3})
    assert (await cache.get(P)).body == b"good"
    cache.clock.advance(30)
    reply = await cache.get(P)
    assert (reply.status, reply.body, reply.x_cache) == (200, b"good", "STALE"), reply
    assert "stale-if-error" in reply.cache_status
    assert raw.requests[-1].headers.get("if-none-match") == '"v1"'  # it was a revalidation


@pytest.mark.parametrize("fault", FAULTS)
async def test_5861_4_rule_stale_if_error_when_the_refill_fails_below_http(make_cache, raw, fault):
    raw.script(TYPES, Answer(headers=[("Content-Type", "application/json")], body=ENVELOPE), FAULTS[fault])
    cache = await make_cache(origin=raw, upstream={"read_timeout": 0.3})
    assert (await cache.get(TYPES)).x_cache == "MISS"
    cache.clock.advance(86400 + 120)  # past ttl and stale_while_revalidate, within stale_if_error
    reply = await cache.get(TYPES)
    assert (reply.status, reply.body, reply.x_cache) == (200, ENVELOPE, "STALE"), reply
    assert "stale-if-error" in reply.cache_status


@pytest.mark.parametrize("fault", ["closed", "reset"])
@pytest.mark.parametrize("method", ["HEAD", "GET-if-none-match"])
async def test_5861_4_stale_if_error_also_answers_head_and_conditional_requests(make_cache, raw, fault, method):
    raw.script(P, Answer(headers=[("Cache-Control", "max-age=10, stale-if-error=600"), ("ETag", '"v1"')],
                         body=b"good"), FAULTS[fault])
    cache = await make_cache(origin=raw)
    await cache.get(P)
    cache.clock.advance(30)
    if method == "HEAD":
        reply = await cache.get(P, method="HEAD")
        assert (reply.status, reply.x_cache) == (200, "STALE"), reply
    else:
        reply = await cache.get(P, {"If-None-Match": '"v1"'})
        assert (reply.status, reply.x_cache) == (304, "STALE"), reply
    assert "stale-if-error" in reply.cache_status


@pytest.mark.parametrize("fault", ["closed", "reset"])
async def test_5861_4_rule_stale_if_error_answers_head(make_cache, raw, fault):
    raw.script(TYPES, Answer(headers=[("Content-Type", "application/json")], body=ENVELOPE), FAULTS[fault])
    cache = await make_cache(origin=raw)
    await cache.get(TYPES)
    cache.clock.advance(86400 + 120)
    reply = await cache.get(TYPES, method="HEAD")
    assert (reply.status, reply.x_cache) == (200, "STALE"), reply


# ------------------------------------------------------ RFC 9112 §9.3.1: retrying on a closed connection

W = "/r/write"


async def raw_request(port: int, head: bytes, body: bytes, go: asyncio.Event) -> tuple[int, bytes]:
    """A client that sends the request's head at once and its body only once ``go`` is set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    await go.wait()
    writer.write(body)
    await writer.drain()
    status_line = await reader.readline()
    answer = await reader.read()  # "Connection: close" was asked for
    writer.close()
    return int(status_line.split()[1]), answer


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT"])
async def test_9112_9_3_1_unsent_request_is_resent_on_a_new_connection_whatever_its_method(make_cache, raw, method):
    """The origin closes an idle keep-alive connection just after the proxy took it for the next request
    and before the request's first byte went out ("Cannot write to closing transport"): nothing reached
    the origin, so the request goes again on a new connection, once, whatever its method."""
    raw.script(W, Answer(body=b"done"))
    cache = await make_cache(origin=raw)
    assert (await cache.get(W, method=method, data=b"first")).status == 200
    opened = raw.connections  # the start-up probe's, and the first request's
    go = asyncio.Event()
    head = (f"{method} {W} HTTP/1.1\r\nHost: test\r\nContent-Length: 6\r\nConnection: close\r\n\r\n").encode()
    second = asyncio.ensure_future(raw_request(cache.proxy.client.port, head, b"second", go))
    await asyncio.sleep(0.3)  # the proxy has taken the pooled connection and waits for the body
    assert raw.close_idle() == 1
    await asyncio.sleep(0.1)  # the proxy's side has seen the close
    go.set()
    status, answer = await second
    assert (status, answer.endswith(b"\r\n\r\ndone")) == (200, True), answer
    assert [r.body for r in raw.requests if r.method == method] == [b"first", b"second"]  # each once
    assert raw.connections == opened + 1


@pytest.mark.parametrize("method, resent", [("POST", False), ("PATCH", False), ("PUT", True), ("DELETE", True),
                                            ("GET", True)])
async def test_9112_9_3_1_sent_request_is_resent_only_when_idempotent(make_cache, raw, method, resent):
    """The origin reads the whole request on a reused connection, then closes it without an answer: it may
    have acted on it, so only an idempotent request is sent again."""
    path = W if method != "GET" else P
    raw.script(path, Answer(body=b"done"), Answer(action="drop"), Answer(body=b"again"))
    cache = await make_cache(origin=raw)
    data = b"x" if method not in ("GET", "DELETE") else None
    assert (await cache.get(path, method=method, data=data, headers={"Cache-Control": "no-store"})).status == 200
    reply = await cache.get(path, method=method, data=data, headers={"Cache-Control": "no-store"})
    assert raw.count(path, method) == (3 if resent else 2)
    assert reply.status == (200 if resent else 502), reply


async def test_9112_9_3_1_burst_of_writes_on_connections_the_origin_closes_never_502s(make_cache, raw):
    """About 25 concurrent PUTs, the origin closing every connection right after its answer (while it
    said keep-alive): no client gets a 502, each PUT reaches the origin at least once."""
    raw.script(W, Answer(body=b"done", close=True))
    cache = await make_cache(origin=raw)
    for _ in range(4):
        replies = await asyncio.gather(*(cache.get(W, method="PUT", data=b"x" * 100) for _ in range(25)))
        assert [r.status for r in replies] == [200] * 25, [r for r in replies if r.status != 200][:3]
    assert raw.count(W, "PUT") >= 100


# ------------------------------------------------------------ framing: Content-Length against the bytes

from tests.functional.conftest import sample  # noqa: E402


async def upstream_errors(cache, kind: str) -> float:
    return sample(await cache.proxy.metrics(), "katiba_cache_upstream_errors_total", kind=kind)


@pytest.mark.parametrize("path, headers", [(P, [("Cache-Control", "max-age=600")]),
                                           (TYPES, [("Content-Type", "application/json")])],
                         ids=["http-cache", "rule"])
async def test_framing_body_longer_than_content_length_is_cut_there_and_stored_as_framed(make_cache, raw, path,
                                                                                        headers):
    """RFC 9112 §6.3: Content-Length frames the answer; what follows it is not part of it. The answer is
    stored as framed (cache-tests' required headers-store-Content-Length, where the origin sends more
    than it announces), the bytes after it are dropped with their connection, and the metric and the log
    say framing."""
    body = ENVELOPE if path == TYPES else b"0123456789"
    raw.script(path, Answer(headers=headers, body=body + b"GARBAGE-AFTER-THE-BODY", length=len(body)))
    raw.script("/r/next", Answer(headers=[("Cache-Control", "no-store")]))
    cache = await make_cache(origin=raw)
    first = await cache.get(path)
    assert (first.status, first.body) == (200, body), first
    second = await cache.get(path)
    assert (second.status, second.body, second.x_cache) == (200, body, "HIT"), second
    assert second.headers["Content-Length"] == str(len(body))
    opened = raw.connections
    await cache.get("/r/next")
    assert raw.count(path) == 1 and raw.connections == opened + 1  # the overrun connection was not reused
    assert await upstream_errors(cache, "framing") == 1


async def test_framing_bytes_after_a_304_are_counted_and_the_revalidation_holds(make_cache, raw):
    raw.script(P, Answer(headers=[("Cache-Control", "max-age=60"), ("ETag", '"v1"')], body=b"kept"),
               Answer(304, headers=[("Cache-Control", "max-age=60"), ("ETag", '"v1"')], body=b"GARBAGE", length=0))
    cache = await make_cache(origin=raw)
    await cache.get(P)
    cache.clock.advance(120)
    reply = await cache.get(P)
    assert (reply.status, reply.body, raw.count(P)) == (200, b"kept", 2), reply
    assert await upstream_errors(cache, "framing") == 1


async def test_framing_bytes_after_a_streamed_fill_are_counted(make_cache, raw):
    """An answer too large to store is relayed as it comes; bytes past its Content-Length still count."""
    body = b"0123456789" * 10
    raw.script(P, Answer(headers=[("Cache-Control", "max-age=60")], body=body + b"GARBAGE", length=len(body)))
    cache = await make_cache(origin=raw, max_body_bytes=20)
    reply = await cache.get(P)
    assert (reply.status, reply.body) == (200, body), reply
    assert await upstream_errors(cache, "framing") == 1


@pytest.mark.parametrize("path, headers", [(P, [("Cache-Control", "max-age=600")]),
                                           (TYPES, [("Content-Type", "application/json")])],
                         ids=["http-cache", "rule"])
async def test_framing_body_shorter_than_content_length_is_an_error_that_says_so(make_cache, raw, path, headers):
    raw.script(path, Answer(headers=headers, body=b'{"header": ', length=500))
    cache = await make_cache(origin=raw)
    reply = await cache.get(path)
    assert reply.status == 502, reply
    assert "Content-Length" in reply.json["detail"] and "unreachable" not in reply.json["detail"], reply
    assert (await cache.get(path)).status == 502 and raw.count(path) == 2  # never stored
    assert await upstream_errors(cache, "framing") == 2 and await upstream_errors(cache, "connect") == 0


# A relayed request (a write, a bypassed GET, a HEAD): it goes through Upstream.send. If-Match makes a GET
# bypass the HTTP cache (passed on, never stored).
RELAYED = {"PUT": ("PUT", W, {}), "bypassed-GET": ("GET", P, {"If-Match": '"v1"'})}


@pytest.mark.parametrize("relayed", RELAYED)
async def test_framing_relayed_answer_longer_than_content_length_is_cut_there(make_cache, raw, relayed):
    """The client gets a 200 with exactly the Content-Length bytes (as nginx does), the upstream connection
    is closed and not used again, the request is not sent again, and the metric's kind says framing."""
    method, path, headers = RELAYED[relayed]
    raw.script(path, Answer(body=b"0123456789GARBAGE", length=10))
    cache = await make_cache(origin=raw)
    data = b"x" if method == "PUT" else None
    for _ in range(2):
        reply = await cache.get(path, headers, method=method, data=data)
        assert (reply.status, reply.body, reply.x_cache) == (200, b"0123456789", "BYPASS"), reply
    opened = raw.connections
    assert (await cache.get(path, headers, method=method, data=data)).status == 200
    assert raw.count(path, method) == 3 and raw.connections == opened + 1  # that connection was closed
    assert await upstream_errors(cache, "framing") == 3 and await upstream_errors(cache, "connect") == 0


@pytest.mark.parametrize("relayed", RELAYED)
async def test_framing_relayed_answer_shorter_than_content_length_cuts_the_client_connection(make_cache, raw, relayed):
    """Fewer bytes than Content-Length, then the origin closes: the client gets the head and the bytes
    that came, then its connection is closed, so it can tell the answer was cut short."""
    method, path, headers = RELAYED[relayed]
    raw.script(path, Answer(body=b"01234", length=100))
    cache = await make_cache(origin=raw)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    body = b"x" if method == "PUT" else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
    data = await talk(cache.proxy.client.port, head, body)  # no "Connection: close": the proxy closes
    answer_head, _, answer_body = data.partition(b"\r\n\r\n")
    assert answer_head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 100" in answer_head, data
    assert answer_body == b"01234", data
    assert raw.count(path, method) == 1  # not sent again
    assert await upstream_errors(cache, "framing") == 1


async def test_relayed_write_answered_before_its_body_was_sent_stops_sending(make_cache, raw):
    """The origin answers 413 as soon as it has read the head: the client gets the 413, the rest of the
    body is not sent, and that upstream connection (its request half sent) is not used again."""
    raw.script(W, Answer(body=b"done"), Answer(413, body=b"too large", early=True), Answer(body=b"done"))
    cache = await make_cache(origin=raw)
    assert (await cache.get(W, method="PUT", data=b"x")).status == 200
    opened = raw.connections
    head = f"PUT {W} HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", cache.proxy.client.port)
    writer.write(head + b"y" * 1000)  # the rest of the 100000 bytes never comes
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 413 "), status_line
    reply = await cache.get(W, method="PUT", data=b"x")
    assert (reply.status, reply.body) == (200, b"done"), reply
    assert raw.count(W, "PUT") == 3 and raw.connections == opened + 1  # the half-sent one was not reused


@pytest.mark.parametrize("framed", [True, False], ids=["content-length", "no-framing"])
async def test_relayed_head_answer_ends_with_its_head_and_without_framing_closes_its_connection(make_cache, raw,
                                                                                              framed):
    """A HEAD answer has no body whatever its Content-Length says: its connection is used again. One with
    neither Content-Length nor chunked: relayed, and its connection closed (no telling what follows)."""
    raw.script(P, Answer(headers=[("Cache-Control", "no-store")], framed=framed))
    cache = await make_cache(origin=raw)
    assert (await cache.get(P, method="HEAD")).status == 200
    opened = raw.connections  # the start-up probe's and the first HEAD's
    reply = await cache.get(P, method="HEAD")
    assert (reply.status, reply.body) == (200, b""), reply
    assert raw.count(P, "HEAD") == 2 and raw.connections == opened + (0 if framed else 1)


# ------------------------------------------ RFC 9110 §10.1.1 Expect, §8.6 Content-Length on relayed writes

async def test_10_1_1_expect_100_continue_on_a_relayed_write_completes(make_cache, raw):
    """Expect is forwarded, the body sent without waiting for the origin's 100 (aiohttp's server already
    answered 100 to the client), and the origin's own 100 is not relayed a second time."""
    raw.script(W, Answer(body=b"done", interim=[(100, [])]))
    cache = await make_cache(origin=raw, upstream={"read_timeout": 2})
    head = (f"PUT {W} HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
            f"Connection: close\r\n\r\n").encode()
    data = await talk(cache.proxy.client.port, head, b"hello", expect_continue=True)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), data
    assert data.count(b" 100 ") == 1 and data.endswith(b"\r\n\r\ndone"), data
    assert raw.count(W, "PUT") == 1
    assert (raw.requests[-1].headers.get("expect"), raw.requests[-1].body) == ("100-continue", b"hello")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_8_6_bodyless_write_is_sent_with_content_length_0(make_cache, raw, method):
    raw.script(W, Answer(body=b"done"))
    cache = await make_cache(origin=raw)
    head = f"{method} {W} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
    data = await talk(cache.proxy.client.port, head)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"done"), data
    assert raw.count(W, method) == 1
    assert raw.requests[-1].headers.get("content-length") == "0", raw.requests[-1].headers


async def test_a_write_whose_answer_is_cut_short_gives_its_backend_slot_back(make_cache, raw):
    """A rule write reads its answer's envelope before purging; the origin sends fewer bytes than its
    Content-Length and closes. The client gets a 502 (the outcome is unknown, so the write purges), and the
    backend slot the request held is free again: leaked, MAX_UPSTREAM such writes would stop the proxy."""
    profile = "/api/v1/users/profile"
    raw.script(profile, Answer(headers=[("Content-Type", "application/json")], body=b'{"header": ', length=500))
    cache = await make_cache(origin=raw, upstream={"max_concurrent": 4})  # slots counted only with a limit
    reply = await cache.get(profile, auth("rfc9111-writer"), method="PUT", json={"display_name": "x"})
    assert reply.status == 502, reply
    assert raw.count(profile, "PUT") == 1
    slots = cache.proxy.proxy.upstream.slots
    assert (slots.peak, slots.active) == (1, 0)  # the request held one, and gave it back


async def test_framing_on_a_rule_write_is_logged_under_its_rule(make_cache, raw, caplog):
    """The relayed answer of a rule's write overruns its Content-Length: cut there, counted as framing,
    and its warning names the write's rule (update_profile), not "none"."""
    profile = "/api/v1/users/profile"
    raw.script(profile, Answer(headers=[("Content-Type", "application/json")], body=ENVELOPE + b"GARBAGE",
                               length=len(ENVELOPE)))
    cache = await make_cache(origin=raw)
    caplog.set_level(logging.WARNING)
    reply = await cache.get(profile, auth("rfc9111-writer"), method="PUT", json={"display_name": "x"})
    assert (reply.status, reply.body) == (200, ENVELOPE), reply
    assert await upstream_errors(cache, "framing") == 1
    logged = [(r.kind, r.rule) for r in caplog.records if getattr(r, "event", None) == "upstream_failure"]
    assert logged == [("framing", "update_profile")], logged


@pytest.mark.parametrize("method, path", [("PUT", "/api/v1/users/profile"), ("M-SEARCH", P)],
                         ids=["rule-write", "unknown-unsafe-method"])
async def test_an_answer_held_across_a_purge_that_fails_gives_its_backend_slot_back(make_cache, raw, method, path):
    """Between a write's answer and its relay the proxy purges; if that raises (a defect, not a store
    outage: those are kept pending), the backend answer is released, so its backend slot is free again."""
    raw.script(path, Answer(headers=[("Content-Type", "application/json")], body=ENVELOPE))
    cache = await make_cache(origin=raw, upstream={"max_concurrent": 4})  # slots counted only with a limit

    async def broken_purge(*args, **kwargs):
        raise RuntimeError("purge defect")

    cache.proxy.proxy.purger.purge = broken_purge
    headers = auth("rfc9111-writer") if path.startswith("/api/") else {}
    reply = await cache.get(path, headers, method=method, json={"display_name": "x"})
    assert reply.status == 500, reply
    assert raw.count(path, method) == 1
    slots = cache.proxy.proxy.upstream.slots
    assert (slots.peak, slots.active) == (1, 0)  # the request held one, and gave it back
