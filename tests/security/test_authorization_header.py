"""The ``Authorization`` header as the backend reads it, on the raw bytes, through both request paths.

The backend accepts exactly ``Authorization: Bearer <token>`` with one space (the contract, Identity).
A spelling it refuses (``bearer``, ``BEARER``, two spaces, a tab, no token) must never be answered from
the cache: it bypasses (``Cache-Status: ...; detail=invalid-token``) and the backend gives its 401, warm
or cold. Whitespace after the value is not part of it (RFC 9110 §5.5): both the proxy's parsers and the
backend's drop it, so it reads as the plain header, a HIT when warm. A header with bytes that are not
UTF-8 is an invalid token: bypassed to the backend, never a 500, nothing logged above DEBUG.

Requests go on a raw keep-alive socket (``Connection: close`` would keep them off the fast path).
"""
from __future__ import annotations

import logging

import pytest

from tests.functional.conftest import API, mint, new_user
from tests.security.helpers import RawReply, raw_request

PROFILE = f"{API}/users/profile"
LEADERBOARD = f"{API}/achievements/leaderboard?limit=10&offset=0"  # global, served only to a valid token
TYPES = f"{API}/achievements/types"  # global, served only to a valid token


async def raw_get(proxy, target: str, authorization: bytes) -> RawReply:
    """One GET with ``Authorization: <authorization>`` written byte for byte, on its own keep-alive connection."""
    server = proxy.client.server
    head = b"GET %s HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: %s\r\n\r\n" % (target.encode(), authorization)
    return await raw_request(server.host, server.port, head)


def refused_spellings(token: str) -> dict[str, bytes]:
    t = token.encode()
    return {
        "lower-case-scheme": b"bearer " + t,
        "upper-case-scheme": b"BEARER " + t,
        "two-spaces": b"Bearer  " + t,
        "tab": b"Bearer\t" + t,
        "leading-space-in-token-part": b"Bearer \t" + t,
        "no-space": b"Bearer" + t,
    }


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "full-path"])
async def test_only_the_exact_bearer_spelling_is_served_from_the_cache(make_proxy, backend, fast_path):
    proxy = await make_proxy(fast_path=fast_path)
    user = new_user()
    token = mint(user)
    for target in (PROFILE, LEADERBOARD):
        warm = await raw_get(proxy, target, b"Bearer " + token.encode())
        assert warm.status == 200 and warm.headers["x-cache"] == "MISS", warm
        assert (await raw_get(proxy, target, b"Bearer " + token.encode())).headers["x-cache"] == "HIT"
        for kind, value in refused_spellings(token).items():
            before = await backend.requests()
            reply = await raw_get(proxy, target, value)
            assert reply.headers["x-cache"] == "BYPASS" and "detail=invalid-token" in reply.headers["cache-status"], \
                (kind, target, reply)
            assert reply.status == 401, (kind, target, reply)  # the backend's answer, never the entry
            assert await backend.requests() - before == 1
        # trailing whitespace is not part of the value: the same token, the same entry
        for trailing in (b" ", b"\t", b" \t "):
            reply = await raw_get(proxy, target, b"Bearer " + token.encode() + trailing)
            assert reply.status == 200 and reply.headers["x-cache"] == "HIT", (trailing, target, reply)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "full-path"])
async def test_a_non_utf8_authorization_is_an_invalid_token_not_a_500(make_proxy, backend, fast_path, caplog):
    proxy = await make_proxy(fast_path=fast_path)
    token = mint(new_user()).encode()
    for target in (PROFILE, LEADERBOARD, TYPES):  # warm: a bad header must get none of these entries
        assert (await raw_get(proxy, target, b"Bearer " + token)).status == 200
    hostile = [b"Bearer " + token[:10] + b"\xff" + token[10:], b"Bearer \xc3\x28" + token,
               b"Bearer " + token + b"\x80", b"\xffearer " + token]
    with caplog.at_level(logging.DEBUG):
        for value in hostile:
            for target in (PROFILE, LEADERBOARD, TYPES):  # every route needs a valid token (the contract)
                before = await backend.requests()
                reply = await raw_get(proxy, target, value)
                assert reply.status != 500 and b"Traceback" not in reply.body, (value, target, reply)
                assert reply.headers["x-cache"] == "BYPASS" and "detail=invalid-token" in reply.headers["cache-status"]
                assert await backend.requests() - before == 1  # the backend's to answer
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG and getattr(r, "event", None) != "access"
            and r.name.startswith(("proxy", "aiohttp.server", "aiohttp.web"))]
    assert not loud, [(r.levelname, r.getMessage()) for r in loud]
