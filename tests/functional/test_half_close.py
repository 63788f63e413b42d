"""A client that half-closes (``shutdown(SHUT_WR)``, ``nc -N``, ``printf ... | nc``) once it has sent its
requests is done sending, not gone: each request it sent is answered, then the proxy closes (RFC 9112
§9.6; the HTTP working group's reading of a half-close, httpwg/http-core#22). A half-close inside a body
leaves a request that can never be complete: the connection closes, and the backend never gets it whole.
"""
from __future__ import annotations

import asyncio

from .conftest import new_user
from .test_fastpath import PROFILE, Wire, display_name, filled, get, put_profile


async def half_closed(proxy, data: bytes) -> Wire:
    wire = await Wire.open(proxy)
    await wire.send(data)
    wire.writer.write_eof()
    return wire


async def closed_by_proxy(wire: Wire) -> bool:
    """The proxy closed its side once it had answered: nothing more to read (bounded: a hang fails)."""
    rest = await asyncio.wait_for(wire.reader.read(), 10)
    await wire.close()
    return rest == b""


async def test_a_hit_sent_before_a_half_close_is_answered(proxy):
    user = new_user()
    await filled(proxy, user)
    wire = await half_closed(proxy, get(PROFILE, user))
    status, headers, body = await wire.answer()
    assert (status, headers["x-cache"]) == (200, "HIT") and body
    assert await closed_by_proxy(wire)


async def test_a_miss_hit_write_and_read_pipelined_before_a_half_close_are_all_answered(proxy, backend):
    user = new_user()
    wire = await half_closed(proxy, get(PROFILE, user) + get(PROFILE, user) + put_profile(user, "Half")
                             + get(PROFILE, user))
    answers = [await wire.answer() for _ in range(4)]
    assert [(status, headers["x-cache"]) for status, headers, _ in answers] == \
        [(200, "MISS"), (200, "HIT"), (200, "BYPASS"), (200, "MISS")]
    assert display_name(answers[3][2]) == "Half"
    assert await closed_by_proxy(wire)
    assert await backend.route_count("GET", PROFILE) == 2


async def test_an_http_1_0_request_before_a_half_close_is_answered_by_aiohttp(proxy):
    user = new_user()
    await filled(proxy, user)
    wire = await half_closed(proxy, get(PROFILE, user).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    status, headers, _ = await wire.answer()
    assert (status, headers["x-cache"]) == (200, "HIT")
    assert await closed_by_proxy(wire)


async def test_a_write_released_to_aiohttp_then_a_half_close_is_answered(proxy, backend):
    user = new_user()
    wire = await half_closed(proxy, put_profile(user, "Chunked Half", chunked=True) + get(PROFILE, user))
    write, read = await wire.answer(), await wire.answer()
    assert write[0] == 200 and display_name(read[2]) == "Chunked Half"
    assert await closed_by_proxy(wire)


async def test_a_half_close_inside_a_body_never_completes_the_write(proxy):
    user = new_user()
    await filled(proxy, user)
    wire = await half_closed(proxy, put_profile(user, "Never Sent")[:-5])
    assert await closed_by_proxy(wire)
    assert display_name((await proxy.get(PROFILE, user)).body) != "Never Sent"


async def test_a_half_close_inside_a_body_aiohttp_has_stopped_reading_closes_at_once(proxy):
    """/healthz answers without reading the body, and aiohttp then waits up to its lingering time (10 s)
    for the rest: a half-close says the rest will never come. Chunked, so aiohttp frames it."""
    head = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = await half_closed(proxy, head + b"3\r\nabc\r\n")
    rest = await asyncio.wait_for(wire.reader.read(), 5)
    assert not rest or rest.startswith(b"HTTP/1.1 200 ")
    await wire.close()


async def test_with_the_fast_path_off_requests_before_a_half_close_are_answered_by_aiohttp(make_proxy):
    proxy = await make_proxy(fast_path=False)
    user = new_user()
    await filled(proxy, user)
    wire = await half_closed(proxy, get(PROFILE, user) + get(PROFILE, user))
    answers = [await wire.answer() for _ in range(2)]
    assert [(status, headers["x-cache"]) for status, headers, _ in answers] == [(200, "HIT"), (200, "HIT")]
    assert await closed_by_proxy(wire)


async def test_a_client_gone_before_its_100_continue_is_no_error(proxy, caplog):
    """It asked for a 100 Continue, then closed before sending its body: aiohttp's expect handler finds the
    connection closing. Nothing went wrong on this side: no error line."""
    import logging
    caplog.set_level(logging.INFO)
    user = new_user()
    head = put_profile(user, "Expecting").split(b"\r\n\r\n")[0] + b"\r\nExpect: 100-continue\r\n\r\n"
    wire = await half_closed(proxy, head)
    assert await closed_by_proxy(wire)
    await asyncio.sleep(0.1)  # let the handler of the closed connection run (it did, or it never will)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
