"""The fast path refuses what aiohttp refuses: a request line over 8,190 bytes, more than 128 header fields,
a field over 16 KiB. Such a request gets aiohttp's 400 on both paths, is never answered from the cache and
never reaches the backend. Sent on a raw keep-alive socket (``Connection: close`` would keep it off the
fast path). The framer's agreement with aiohttp's parser on generated heads is
tests/unit/test_framing.py."""
from __future__ import annotations

import pytest

from tests.functional.conftest import API, mint, new_user
from tests.security.helpers import raw_request

TYPES = f"{API}/achievements/types"  # global: warm, a HIT for any request with a valid token
ACHIEVEMENT = f"{API}/achievements/"  # + {achievement_id}: per user, any id is keyed (long ones hashed)


def oversized(token: str) -> dict[str, bytes]:
    auth = f"Authorization: Bearer {token}\r\n"
    long_target = ACHIEVEMENT + "a" * 8225  # a request line of 8,265 bytes
    return {
        "request-line-over-8190": f"GET {long_target} HTTP/1.1\r\nHost: proxy.test\r\n{auth}\r\n",
        "129-fields": f"GET {TYPES} HTTP/1.1\r\nHost: proxy.test\r\n{auth}"
                      + "".join(f"X-F{i}: v\r\n" for i in range(127)) + "\r\n",
        "300-fields": f"GET {TYPES} HTTP/1.1\r\nHost: proxy.test\r\n{auth}"
                      + "".join(f"X-F{i}: v\r\n" for i in range(298)) + "\r\n",
    }


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "full-path"])
@pytest.mark.parametrize("case", ["request-line-over-8190", "129-fields", "300-fields"])
async def test_requests_over_aiohttps_limits_get_its_400_on_both_paths(make_proxy, backend, fast_path, case):
    proxy = await make_proxy(fast_path=fast_path)
    token = mint(new_user())
    assert (await proxy.get(TYPES, token=token)).status == 200
    assert (await proxy.get(TYPES, token=token)).x_cache == "HIT"
    before = await backend.requests()
    server = proxy.client.server
    reply = await raw_request(server.host, server.port, oversized(token)[case].encode())
    # aiohttp's own answer: not a HIT, not a fill relaying the backend's own 400 (both carry Cache-Status)
    assert reply.status == 400 and "x-cache" not in reply.headers and "cache-status" not in reply.headers, \
        (case, reply)
    assert await backend.requests() == before


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "full-path"])
async def test_requests_under_the_limits_are_served(make_proxy, fast_path):
    """The control: 126 fields (what both of aiohttp's parsers accept) make a plain request, a HIT when warm."""
    proxy = await make_proxy(fast_path=fast_path)
    token = mint(new_user())
    assert (await proxy.get(TYPES, token=token)).status == 200
    server = proxy.client.server
    fields = "".join(f"X-F{i}: v\r\n" for i in range(124))
    request = f"GET {TYPES} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {token}\r\n{fields}\r\n"
    reply = await raw_request(server.host, server.port, request.encode())
    assert reply.status == 200 and reply.headers["x-cache"] == "HIT", reply
