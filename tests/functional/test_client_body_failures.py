"""A request body the client does not finish (it went away mid-upload, or broke its chunked framing) is
the client's failure, not the backend's: it is not counted in ``katiba_cache_upstream_errors_total`` nor
logged as an ``upstream_failure`` (an operator's alert on backend failures must not fire on clients
that hang up), and a client still there is answered 400, not 502."""
from __future__ import annotations

import logging
import re

from .conftest import auth, new_user
from .test_fastpath import PROFILE, Wire


def upstream_errors(metrics_text: str) -> float:
    return sum(float(v) for v in re.findall(r"^katiba_cache_upstream_errors_total\{[^}]*\} ([0-9.e+]+)$",
                                            metrics_text, re.M))


def upstream_failure_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "upstream_failure"]


async def known_user(proxy) -> str:
    """A user the backend knows, so that it reads the body rather than refusing the PUT at once."""
    user = new_user()
    assert (await proxy.get(PROFILE, user)).status == 200
    return user


def put_head(user: str, framing: str) -> bytes:
    return (f"PUT {PROFILE} HTTP/1.1\r\nHost: proxy\r\nAuthorization: {auth(user)['Authorization']}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n").encode()


async def backend_saw_the_put(poll, backend) -> None:
    async def seen() -> bool:
        return await backend.route_count("PUT", PROFILE) == 1
    await poll(seen, "the PUT's head and first bytes reached the backend")


async def settled(poll, proxy, backend) -> None:
    """The backend has seen the PUT and the proxy holds no request (bounded: a hang fails)."""
    async def done() -> bool:
        return await backend.route_count("PUT", PROFILE) == 1 and proxy.proxy.gate.inflight == 0
    await poll(done, "the PUT reached the backend once and the proxy holds no request")


async def test_a_client_gone_mid_body_is_no_upstream_failure(proxy, backend, caplog, poll):
    caplog.set_level(logging.INFO)
    before = upstream_errors(await proxy.metrics())
    wire = await Wire.open(proxy)
    await wire.send(put_head(await known_user(proxy), "Content-Length: 200\r\n") + b'{"display_name": "cut')
    await backend_saw_the_put(poll, backend)  # before the client leaves
    await wire.close()
    await settled(poll, proxy, backend)
    assert upstream_errors(await proxy.metrics()) == before
    assert not upstream_failure_lines(caplog)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") and r.name.startswith("proxy")]


async def test_a_broken_chunked_body_is_answered_400_and_is_no_upstream_failure(proxy, backend, caplog, poll):
    caplog.set_level(logging.INFO)
    before = upstream_errors(await proxy.metrics())
    wire = await Wire.open(proxy)
    await wire.send(put_head(await known_user(proxy), "Transfer-Encoding: chunked\r\n") + b'6\r\n{"a": \r\n')
    await backend_saw_the_put(poll, backend)
    await wire.send(b"zz-not-a-chunk-size\r\n\r\n")
    status, headers, _ = await wire.answer()
    assert status == 400 and headers["x-cache"] == "BYPASS"
    await wire.close()
    await settled(poll, proxy, backend)
    assert upstream_errors(await proxy.metrics()) == before
    assert not upstream_failure_lines(caplog)
