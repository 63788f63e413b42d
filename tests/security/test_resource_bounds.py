"""One connection cannot make the proxy hold unbounded memory.

A client that pipelines requests and never reads its answers must be stopped by back-pressure: the
proxy stops reading its socket once a bounded amount is buffered (its own framing buffer, aiohttp's
parser and request queue, the answers waiting to be written), so the client's sends block. The bound
is asserted in bytes the client managed to hand over, never in time: with the fast path on and off.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.functional.conftest import API, mint, new_user

PROFILE = f"{API}/users/profile"
SEND_AT_MOST = 200 << 20  # the attack: 200 MB of pipelined requests
STALLED_AFTER = 2.0  # a send blocked this long: the proxy has stopped reading (a loop bound, not an assert)
# Kernel socket buffers on loopback (a few MB each way), the fast path's 256 KiB buffer, aiohttp's queue
# of 32 parsed requests and the write buffer's high-water mark: far under this. Unbounded: 200 MB.
BOUND = 32 << 20


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "full-path"])
async def test_a_client_that_never_reads_cannot_make_the_proxy_buffer_without_bound(make_proxy, backend, poll,
                                                                                     fast_path):
    proxy = await make_proxy(fast_path=fast_path)
    user = new_user()
    request = (f"GET {PROFILE} HTTP/1.1\r\nHost: proxy.test\r\n"
               f"Authorization: Bearer {mint(user)}\r\n\r\n").encode()
    # The cold GET's fill is held at the backend: while it is in flight the fast path stops pumping.
    await backend.control("POST", "gate", json={"method": "GET", "path": PROFILE, "count": 1})
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        await poll(lambda: _waiting(backend), "the cold fill is held at the backend")
        chunk = request * ((64 << 10) // len(request))
        sent, released = len(request), False
        while sent < SEND_AT_MOST:
            writer.write(chunk)
            try:
                await asyncio.wait_for(writer.drain(), STALLED_AFTER)
            except asyncio.TimeoutError:
                if released:
                    break  # the proxy stopped reading: back-pressure holds
                # Stalled while the miss is in flight: now let it finish, which hands the backlog on.
                await backend.control("POST", "gate/release")
                released = True
                continue
            sent += len(chunk)
        assert released, "the proxy never stopped reading while the fill was held"
        assert sent < BOUND, f"the proxy read {sent >> 20} MB from a client that never reads"
    finally:
        writer.transport.abort()
        await backend.control("POST", "gate/release")


async def _waiting(backend) -> bool:
    return (await backend.control("GET", "gate"))["waiting"] >= 1
