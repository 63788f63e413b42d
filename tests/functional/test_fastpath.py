"""The fast path (proxy/serve/fastpath.py): fresh hits answered off the socket, everything else by aiohttp.

What a client must not be able to tell apart: the answers (headers included) of the two paths, the
order of answers on one connection whatever mix of hits, misses and writes it pipelines, and requests
split or merged across TCP segments in any way. The counters say which path answered:
``katiba_cache_fast_path_total{outcome="answered"|"handed"|"released"}``.
"""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from proxy.store.memory import MemoryStore

from .conftest import API, RULES_PATH, auth, mint, new_user

PROFILE = f"{API}/users/profile"
VOLATILE = {"date", "x-request-id", "age"}


def fast_counts(metrics_text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r'katiba_cache_fast_path_total\{outcome="(\w+)"\} ([0-9.e+]+)',
                                                    metrics_text)}


async def test_hits_and_misses_are_answered_on_the_fast_path_and_the_rest_by_the_full_one(proxy):
    user = new_user()
    replies = [await proxy.get(PROFILE, user) for _ in range(4)]
    assert [r.x_cache for r in replies] == ["MISS", "HIT", "HIT", "HIT"]
    assert len({r.body for r in replies}) == 1
    write = await proxy.request("PUT", PROFILE, user, json={"bio": "fast"})
    assert write.status == 200
    counts = fast_counts(await proxy.metrics())
    assert counts["answered"] == 4  # the miss and the three hits
    assert counts["handed"] == 2  # the write, and the /metrics scrape itself
    assert counts.get("released", 0) == 0


async def test_a_miss_after_a_fast_lookup_asks_the_store_once(proxy, store_kind, request):
    lookups = []
    store = proxy.proxy.store
    counted, counted_future = store.lookup, store.lookup_future

    async def lookup(key, gen_keys):
        lookups.append(key)
        return await counted(key, gen_keys)

    def lookup_future(key, gen_keys):  # Redis' hits: the MGET as a future, no coroutine
        begun = counted_future(key, gen_keys)
        if begun is not None:
            lookups.append(key)
        return begun

    store.lookup, store.lookup_future = lookup, lookup_future
    user = new_user()
    await proxy.get(PROFILE, user)  # creates the user's generations: the next miss finds them
    redis_server = request.getfixturevalue("redis_server") if store_kind == "redis" else None
    mgets = redis_server.command_count("mget") if redis_server else 0
    lookups.clear()
    reply = await proxy.get(f"{API}/users/preferences", user)
    assert reply.x_cache == "MISS"
    assert len(lookups) == 1  # the fast path's lookup, reused by the fill on the full path
    if redis_server is not None:
        assert redis_server.command_count("mget") - mgets == 1


async def test_both_paths_send_the_same_headers_for_one_entry(make_proxy):
    store = MemoryStore()
    fast = await make_proxy(store=store)
    full = await make_proxy(store=store, fast_path=False)
    user = new_user()
    assert (await fast.get(PROFILE, user)).x_cache == "MISS"
    a, b = await fast.get(PROFILE, user), await full.get(PROFILE, user)
    assert a.x_cache == b.x_cache == "HIT" and a.body == b.body and a.status == b.status
    assert fast_counts(await fast.metrics())["answered"] == 2  # the miss, then the hit
    assert "katiba_cache_fast_path_total" not in await full.metrics() or \
        fast_counts(await full.metrics()).get("answered", 0) == 0
    assert {k.lower() for k in a.headers} == {k.lower() for k in b.headers}
    for name in a.headers:
        if name.lower() not in VOLATILE:
            assert a.headers.getall(name) == b.headers.getall(name), name


# ----------------------------------------------------------------------------- on the wire

class Wire:
    """A raw HTTP/1.1 connection to the proxy: bytes out exactly as given, answers parsed in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, proxy) -> "Wire":
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.client.server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if status in (204, 304):
            body = b""
        elif "content-length" in headers:
            body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 10)
        else:  # chunked
            assert headers.get("transfer-encoding") == "chunked", headers
            body = b""
            while True:
                size = int((await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 10)).strip(), 16)
                chunk = await asyncio.wait_for(self.reader.readexactly(size + 2), 10)
                if size == 0:
                    break
                body += chunk[:-2]
        return status, headers, body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def get(path: str, user: str, extra: str = "") -> bytes:
    token = auth(user)["Authorization"]
    return f"GET {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: {token}\r\n{extra}\r\n".encode()


def put_profile(user: str, name: str, chunked: bool = False) -> bytes:
    body = ('{"display_name": "%s", "bio": ""}' % name).encode()
    token = auth(user)["Authorization"]
    head = f"PUT {PROFILE} HTTP/1.1\r\nHost: proxy\r\nAuthorization: {token}\r\nContent-Type: application/json\r\n"
    if chunked:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def display_name(body: bytes) -> str:
    import orjson
    return orjson.loads(body)["body"]["display_name"]


async def filled(proxy, user: str) -> None:
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"


async def filled_wire(proxy) -> tuple[str, "Wire"]:
    """A new user whose profile is cached, and a raw connection to the proxy."""
    user = new_user()
    await filled(proxy, user)
    return user, await Wire.open(proxy)


async def test_pipelined_hit_write_hit_are_answered_in_order_and_the_write_purges(proxy):
    user, wire = await filled_wire(proxy)
    await wire.send(get(PROFILE, user) + put_profile(user, "Pipelined") + get(PROFILE, user))
    first, write, last = [await wire.answer() for _ in range(3)]
    assert first[1]["x-cache"] == "HIT" and display_name(first[2]) != "Pipelined"
    assert write[0] == 200 and write[1]["x-cache"] == "BYPASS"
    assert last[1]["x-cache"] == "MISS" and display_name(last[2]) == "Pipelined"
    await wire.close()


async def test_a_request_sent_a_byte_at_a_time_is_answered_from_the_cache(proxy):
    user, wire = await filled_wire(proxy)
    for byte in get(PROFILE, user):
        await wire.send(bytes([byte]))
    status, headers, _ = await wire.answer()
    assert status == 200 and headers["x-cache"] == "HIT"
    await wire.close()


async def test_a_body_split_across_segments_then_a_hit_in_the_same_segment(proxy):
    user = new_user()
    await filled(proxy, user)
    write = put_profile(user, "Split Body")
    head_end = write.index(b"\r\n\r\n") + 4
    wire = await Wire.open(proxy)
    await wire.send(write[:head_end + 5])
    await wire.send(write[head_end + 5:] + get(PROFILE, user))
    write_answer, read = await wire.answer(), await wire.answer()
    assert write_answer[0] == 200
    assert read[1]["x-cache"] == "MISS" and display_name(read[2]) == "Split Body"
    await wire.send(get(PROFILE, user))
    again = await wire.answer()
    assert again[1]["x-cache"] == "HIT" and display_name(again[2]) == "Split Body"
    await wire.close()


async def test_a_chunked_request_releases_the_connection_to_the_full_path(proxy):
    user, wire = await filled_wire(proxy)
    before = fast_counts(await proxy.metrics()).get("answered", 0)
    await wire.send(put_profile(user, "Chunked", chunked=True) + get(PROFILE, user))
    write, read = await wire.answer(), await wire.answer()
    assert write[0] == 200 and read[1]["x-cache"] == "MISS" and display_name(read[2]) == "Chunked"
    await wire.send(get(PROFILE, user))
    assert (await wire.answer())[1]["x-cache"] == "HIT"  # answered by aiohttp from now on
    await wire.close()
    counts = fast_counts(await proxy.metrics())
    assert counts["released"] == 1 and counts.get("answered", 0) == before


@pytest.mark.parametrize("request_bytes", [
    b"GET /api/v1/users/profile HTTP/1.1\nHost: proxy\n\n",  # bare LF
    b"GET /api/v1/users/profile HTTP/1.1\r\nHost : proxy\r\n\r\n",  # space before the colon
    b"GET /api/v1/users/profile HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET http://elsewhere/api/v1/users/profile HTTP/1.1\r\nHost: proxy\r\n\r\n",  # absolute form
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS on the plain port
])
async def test_requests_it_cannot_frame_are_judged_by_aiohttp(proxy, request_bytes):
    wire = await Wire.open(proxy)
    await wire.send(request_bytes)
    try:
        status, _, _ = await wire.answer()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        status = None  # closed without an answer: acceptable for garbage
    assert status is None or 400 <= status < 500
    await wire.close()
    assert fast_counts(await proxy.metrics()).get("released", 0) == 1


async def test_http_1_0_and_connection_close_are_answered_and_closed_by_aiohttp(proxy):
    user = new_user()
    await filled(proxy, user)
    for version, extra in (("HTTP/1.0", ""), ("HTTP/1.1", "Connection: close\r\n")):
        wire = await Wire.open(proxy)
        await wire.send(get(PROFILE, user, extra).replace(b"HTTP/1.1", version.encode(), 1))
        status, headers, body = await wire.answer()
        assert status == 200 and headers["x-cache"] == "HIT" and body
        assert await asyncio.wait_for(wire.reader.read(), 10) == b""  # closed after the answer
        await wire.close()


async def test_a_conditional_request_is_answered_by_the_full_path_with_304(proxy):
    user = new_user()
    await filled(proxy, user)
    etag = (await proxy.get(PROFILE, user)).headers["ETag"]
    wire = await Wire.open(proxy)
    await wire.send(get(PROFILE, user, f"If-None-Match: {etag}\r\n"))
    status, headers, body = await wire.answer()
    assert status == 304 and headers["x-cache"] == "HIT" and body == b""
    await wire.close()


async def test_thousands_of_pipelined_hits_are_all_answered_in_order(proxy):
    """Far more than the read buffer holds: reading pauses and resumes, nothing is lost or reordered."""
    users = [new_user() for _ in range(3)]
    for user in users:
        await filled(proxy, user)
    requests = [get(PROFILE, users[i % 3], f"X-Request-ID: pipelined-{i}\r\n") for i in range(3000)]
    before = fast_counts(await proxy.metrics())["answered"]  # the fills
    wire = await Wire.open(proxy)

    async def send_all() -> None:
        for i in range(0, len(requests), 100):
            await wire.send(b"".join(requests[i:i + 100]))

    sender = asyncio.create_task(send_all())
    answers = [await wire.answer() for _ in range(len(requests))]
    await sender
    assert [h["x-request-id"] for _, h, _ in answers] == [f"pipelined-{i}" for i in range(3000)]
    assert {h["x-cache"] for _, h, _ in answers} == {"HIT"}
    assert {body for _, _, body in answers[::3]} == {answers[0][2]}  # user 0's profile, never another's
    await wire.close()
    assert fast_counts(await proxy.metrics())["answered"] - before == 3000


async def test_requests_numbered_by_their_client_are_looked_up_once(proxy, monkeypatch):
    """Issue 21: a client (or a load balancer, a tracer) that gives each request its own X-Request-ID and
    traceparent made each one new to the fast path: its head parsed, the rules applied and the head kept
    again every time. Each answer still names its own request."""
    user = new_user()
    await filled(proxy, user)
    heads_before = await proxy.metric("katiba_cache_memo_bytes", memo="heads")
    lookups = []
    fast_lookup = proxy.proxy.fast_lookup
    monkeypatch.setattr(proxy.proxy, "fast_lookup", lambda *args: lookups.append(args[0]) or fast_lookup(*args))
    requests = [get(PROFILE, user, f"X-Request-ID: numbered-{i}\r\ntraceparent: 00-{i:032x}-00f067aa0ba902b7-01\r\n")
                for i in range(200)]
    wire = await Wire.open(proxy)
    await wire.send(b"".join(requests))
    answers = [await wire.answer() for _ in requests]
    await wire.close()
    assert [h["x-request-id"] for _, h, _ in answers] == [f"numbered-{i}" for i in range(200)]
    assert {h["x-cache"] for _, h, _ in answers} == {"HIT"}
    assert lookups == [PROFILE]  # the rules applied once, for the first of them
    grown = await proxy.metric("katiba_cache_memo_bytes", memo="heads") - heads_before
    assert grown < 2 * (len(requests[0]) + 512)  # one head remembered (framing._framed_size), not 200

async def test_one_connection_never_gets_another_users_entry(proxy):
    alice, bob = new_user(), new_user()
    await filled(proxy, alice)
    wire = await Wire.open(proxy)
    await wire.send(get(PROFILE, alice) + get(PROFILE, bob) + get(PROFILE, alice) + get(PROFILE, bob))
    answers = [await wire.answer() for _ in range(4)]
    assert [h["x-cache"] for _, h, _ in answers] == ["HIT", "MISS", "HIT", "HIT"]
    assert answers[0][2] == answers[2][2] and answers[1][2] == answers[3][2] and answers[0][2] != answers[1][2]
    await wire.close()


async def test_a_miss_handed_on_is_judged_once(proxy):
    """The fast path's verdict travels with the request: a warm rule counts one read of demand, not two."""
    reply = await proxy.get(f"{API}/achievements/types", "reader-1")
    assert reply.x_cache == "MISS"
    demand = proxy.proxy.warmer.demand
    assert [count for count, d, _ in demand.values() if d.rule.name == "achievement_types"] == [1]
    assert (await proxy.get(f"{API}/achievements/types", "reader-2")).x_cache == "HIT"
    assert [count for count, d, _ in demand.values() if d.rule.name == "achievement_types"] == [2]


async def test_a_request_repeated_byte_for_byte_is_refused_once_its_token_expires(proxy):
    """The fast path remembers what the rules make of a request's exact bytes; the token's expiry still
    applies to every one of them (the verifier's clock moves here, the bytes stay the same)."""
    user = new_user()
    headers = {"Authorization": f"Bearer {mint(user, ttl=600)}"}
    assert [(await proxy.get(PROFILE, headers=headers)).x_cache for _ in range(3)] == ["MISS", "HIT", "HIT"]
    assert fast_counts(await proxy.metrics())["answered"] == 3
    verifier = proxy.proxy.verifier
    verifier.clock = lambda: time.time() + 601
    reply = await proxy.get(PROFILE, headers=headers)
    assert reply.x_cache == "BYPASS" and "invalid-token" in reply.cache_status, reply.headers
    assert fast_counts(await proxy.metrics())["answered"] == 3


async def test_a_request_repeated_byte_for_byte_follows_reloaded_rules(make_proxy, tmp_path):
    """Rules reloaded: the same bytes are judged by the new rules at once (here: the route is gone)."""
    rules = tmp_path / "rules.yaml"
    text = Path(RULES_PATH).read_text()
    rules.write_text(text)
    proxy = await make_proxy(rules_path=rules)
    user = new_user()
    headers = auth(user)
    assert [(await proxy.get(PROFILE, headers=headers)).x_cache for _ in range(2)] == ["MISS", "HIT"]
    rules.write_text(text.replace("match: GET /api/v1/users/profile\n", "match: GET /api/v1/users/profile/gone\n", 1))
    assert proxy.proxy.reload_rules() is True
    reply = await proxy.get(PROFILE, headers=headers)
    assert reply.x_cache == "BYPASS", reply.headers


async def test_a_fill_slower_than_the_keep_alive_timeout_is_still_answered(proxy, backend):
    """aiohttp closes a connection it sees idle past its keep-alive timeout; a miss being filled on the
    fast path is not idle, however long the backend takes."""
    from .test_concurrency import held, hold, release

    wire = await Wire.open(proxy)
    await wire.send(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert (await wire.answer())[0] == 200
    await hold(backend)
    await wire.send(get(PROFILE, new_user()))
    await held(backend)
    loop = asyncio.get_running_loop()
    for protocol in proxy.client.server.runner.server._connections:  # aiohttp's timer, due now
        protocol._keepalive_handle.cancel()
        protocol._next_keepalive_close_time = loop.time()
        protocol._keepalive_handle = loop.call_at(loop.time(), protocol._process_keepalive)
    await asyncio.sleep(0.05)  # it fires while the fill waits at the backend
    await release(backend)
    status, headers, _ = await wire.answer()
    assert (status, headers["x-cache"]) == (200, "MISS")
    await wire.close()


async def test_pipelined_miss_hit_write_miss_are_answered_in_order(proxy, backend):
    """A miss holds its connection's later requests until it is answered: the second read is the hit
    the fill stored, the write waits for both, and the read after it is filled anew."""
    user, wire = new_user(), await Wire.open(proxy)
    await wire.send(get(PROFILE, user) + get(PROFILE, user) + put_profile(user, "Piped") + get(PROFILE, user))
    answers = [await wire.answer() for _ in range(4)]
    assert [(status, headers["x-cache"]) for status, headers, _ in answers] == \
        [(200, "MISS"), (200, "HIT"), (200, "BYPASS"), (200, "MISS")]
    assert display_name(answers[0][2]) != "Piped" and display_name(answers[3][2]) == "Piped"
    assert await backend.route_count("GET", PROFILE) == 2
    await wire.close()


async def test_a_client_gone_during_its_fill_still_leaves_the_entry_stored(proxy, backend, caplog):
    """The fill finishes and is stored for the next reader; the answer has nowhere to go, and that is
    no error."""
    from .test_concurrency import held, hold, release

    user, wire = new_user(), await Wire.open(proxy)
    await hold(backend)
    await wire.send(get(PROFILE, user))
    await held(backend)
    await wire.close()
    await release(backend)
    for _ in range(100):  # the fill completes after the client left; wait for it (bounded)
        if proxy.proxy.gate.inflight == 0 and not proxy.proxy.coalescer.inflight:
            break
        await asyncio.sleep(0.01)
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"
    assert await backend.route_count("GET", PROFILE) == 1
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.parametrize("budget", [0, 8 << 20])
async def test_the_memo_budget_bounds_what_is_remembered_never_what_is_answered(make_proxy, monkeypatch, budget):
    from proxy.core import memo
    from proxy.serve import framing

    monkeypatch.setattr(memo, "_budget", list(memo._budget))  # the setting is per process: restore it after
    framed = []
    real_frame = framing._frame
    monkeypatch.setattr(framing, "_frame", lambda raw, end: framed.append(raw) or real_frame(raw, end))
    monkeypatch.setattr(framing, "_FRAMED", framing.SizedMemo("heads", framing.FRAMED_SHARE, framing._framed_size))
    proxy = await make_proxy(memo_max_bytes=budget)
    assert memo.budget() == budget
    user = new_user()
    replies = [await proxy.get(PROFILE, user) for _ in range(3)]
    assert [r.x_cache for r in replies] == ["MISS", "HIT", "HIT"] and len({r.body for r in replies}) == 1
    assert fast_counts(await proxy.metrics())["answered"] == 3
    profile_heads = [raw for raw in framed if raw.startswith(b"GET " + PROFILE.encode())]
    assert len(profile_heads) == (3 if budget == 0 else 1)  # no budget: framed each time; else once
    assert len(framing._FRAMED) == (0 if budget == 0 else len(set(framed)))
    decisions = proxy.proxy.rules.memo
    assert (framing._FRAMED.size, decisions.size) == (0, 0) if budget == 0 else \
        0 < framing._FRAMED.size <= budget * framing.FRAMED_SHARE and 0 < decisions.size
    shown = {m[1]: float(m[2]) for m in re.finditer(r'katiba_cache_memo_bytes\{memo="(\w+)"\} ([0-9.e+]+)',
                                                     await proxy.metrics())}
    assert {"heads", "decisions", "routes", "entries"} <= set(shown)
    assert shown["heads"] >= framing._FRAMED.size and shown["decisions"] >= decisions.size  # other proxies' too


async def test_malformed_requests_are_logged_at_info_and_throttled_never_as_errors(proxy, caplog):
    """aiohttp logs each request it cannot parse at ERROR with a traceback: any client could fill the log
    with errors. They are the client's (answered 400): one ``bad_request`` line at info a second, with the
    number held back."""
    import logging
    server = proxy.client.server.runner.server
    clock = server.bad_requests.clock = type("Frozen", (), {"now": 0.0, "__call__": lambda self: self.now})()
    caplog.set_level(logging.INFO)
    for second in (0.0, 0.0, 0.0, 1.5):
        clock.now = second
        wire = await Wire.open(proxy)
        await wire.send(b"GET /api/v1/users/profile HTTP/1.1\r\nHost : proxy\r\n\r\n")
        assert (await wire.answer())[0] == 400
        await wire.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    lines = [r for r in caplog.records if getattr(r, "event", None) == "bad_request"]
    assert [(r.levelname, r.status, r.suppressed) for r in lines] == [("INFO", 400, 0), ("INFO", 400, 2)]
    assert all(r.reason for r in lines)


@pytest.mark.parametrize("request_line, status", [("GET {path} HTTP/2.0", 505), ("GET {path}", 505),
                                                  ("GET {path} HTTP/3.0", 400)], ids=["http-2", "http-0.9", "http-3"])
async def test_a_request_line_in_another_http_version_is_refused(proxy, backend, request_line, status):
    """RFC 9110 §15.6.6: HTTP/2, or HTTP/0.9, over this HTTP/1.1 port is answered 505, in a status line
    any client can read (aiohttp's parser refuses the versions it does not know at all with a 400); nothing
    reaches the backend, and the connection ends."""
    user = new_user()
    head = get(PROFILE, user).replace(b"GET /api/v1/users/profile HTTP/1.1",
                                      request_line.format(path=PROFILE).encode(), 1)
    wire = await Wire.open(proxy)
    await wire.send(head)
    data = await asyncio.wait_for(wire.reader.read(), 10)
    assert re.match(rb"HTTP/1\.[01] %d " % status, data), data[:200]
    await wire.close()
    assert await backend.route_count("GET", PROFILE) == 0
