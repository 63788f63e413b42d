"""The backend over HTTPS with a private CA and an optional client certificate; clear start-up errors for a
bad CA file; an unreachable backend at start is a warning (the proxy starts), and with
REQUIRE_UPSTREAM_AT_START=1 /readyz says not ready until the backend has answered once."""
from __future__ import annotations

import asyncio
import signal
import ssl
import sys

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.upstream.client import UpstreamConfig

from .conftest import ADMIN_TOKEN, RULES_PATH, SECRET, free_port, subprocess_env, wait_ready


def server_context(certs, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(certs.ca)
    return context


async def hello(request: web.Request) -> web.Response:
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    subject = dict(x[0] for x in peer["subject"]) if peer else {}
    return web.json_response({"client": subject.get("commonName")})


async def test_https_backend_with_a_private_ca(make_proxy, origin, certs):
    url = await origin(hello, ssl_context=server_context(certs, require_client_cert=False))
    trusted = await make_proxy(upstream=UpstreamConfig(url=url, ca_file=certs.ca))
    reply = await trusted.get("/anything")
    assert reply.status == 200 and reply.json == {"client": None}
    untrusted = await make_proxy(upstream=UpstreamConfig(url=url, ca_file=certs.other_ca))
    reply = await untrusted.get("/anything")
    assert reply.status == 502 and "detail" in reply.json  # never sent to an unverified backend


async def test_https_backend_that_requires_a_client_certificate(make_proxy, origin, certs):
    url = await origin(hello, ssl_context=server_context(certs, require_client_cert=True))
    with_cert = await make_proxy(upstream=UpstreamConfig(url=url, ca_file=certs.ca, client_cert=certs.client_cert,
                                                         client_key=certs.client_key))
    reply = await with_cert.get("/anything")
    assert reply.status == 200 and reply.json == {"client": "katiba-cache proxy"}
    without = await make_proxy(upstream=UpstreamConfig(url=url, ca_file=certs.ca))
    assert (await without.get("/anything")).status == 502


async def run_serve(env: dict, *args: str, until_ready: int | None = None, port: int | None = None):
    """``cache-proxy serve``; with ``until_ready`` wait for /readyz to answer it, then SIGTERM."""
    port = port or free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--rules", RULES_PATH, "--listen", f"127.0.0.1:{port}", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if until_ready is None:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, err.decode(), port, proc
    return None, "", port, proc


async def stop(proc) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, err.decode()


async def test_a_bad_upstream_ca_file_exits_1_naming_the_file(tmp_path, certs):
    garbage = tmp_path / "broken-ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for path in (tmp_path / "missing-ca.pem", garbage):
        code, err, _, _ = await run_serve(subprocess_env(JWT_SECRET_KEY=SECRET, UPSTREAM_CA_FILE=str(path)),
                                          "--upstream", "https://127.0.0.1:1")
        assert code == 1, err
        assert f"UPSTREAM_CA_FILE {path}" in err and "cannot load CA certificates" in err, err
    code, err, _, _ = await run_serve(subprocess_env(JWT_SECRET_KEY=SECRET, UPSTREAM_CA_FILE=certs.ca,
                                                     UPSTREAM_CLIENT_CERT=str(tmp_path / "no-cert.pem")),
                                      "--upstream", "https://127.0.0.1:1")
    assert code == 1 and f"UPSTREAM_CLIENT_CERT {tmp_path / 'no-cert.pem'}" in err, err
    code, err, _, _ = await run_serve(subprocess_env(JWT_SECRET_KEY=SECRET, REDIS_CA_FILE=str(garbage)),
                                      "--upstream", "http://127.0.0.1:1", "--redis", "rediss://127.0.0.1:1/0")
    assert code == 1 and str(garbage) in err, err


async def test_an_unreachable_backend_at_start_is_a_warning_and_the_proxy_serves(backend):
    dead = f"http://127.0.0.1:{free_port()}"
    _, _, port, proc = await run_serve(subprocess_env(JWT_SECRET_KEY=SECRET, CACHE_ADMIN_TOKEN=ADMIN_TOKEN),
                                       "--upstream", dead, until_ready=200)
    try:
        body = await wait_ready(f"http://127.0.0.1:{port}/readyz")
        assert body["ready"] is True
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/api/v1/achievements/badge-types") as resp:
                assert resp.status == 502  # answered, not hung
    finally:
        code, err = await stop(proc)
    assert code == 0
    warnings = [line for line in err.splitlines() if '"event":"upstream_unreachable"' in line]
    assert len(warnings) == 1 and '"level":"warning"' in warnings[0] and dead in warnings[0], err


async def not_found(request: web.Request) -> web.Response:
    return web.Response(status=404)


async def test_require_upstream_at_start_keeps_readyz_not_ready_until_it_answers(poll):
    port = free_port()
    _, _, proxy_port, proc = await run_serve(
        subprocess_env(JWT_SECRET_KEY=SECRET, REQUIRE_UPSTREAM_AT_START="1"),
        "--upstream", f"http://127.0.0.1:{port}", until_ready=503)
    server = None
    try:
        body = await wait_ready(f"http://127.0.0.1:{proxy_port}/readyz", status=503)
        assert body["ready"] is False and body["upstream_answered"] is False
        await wait_ready(f"http://127.0.0.1:{proxy_port}/healthz")  # alive all the same
        app = web.Application()
        app.router.add_get("/", not_found)  # any answer counts
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server()
        body = await wait_ready(f"http://127.0.0.1:{proxy_port}/readyz", status=200)
        assert body["ready"] is True and body["upstream_answered"] is True
    finally:
        code, err = await stop(proc)
        if server is not None:
            await server.close()
    assert code == 0, err
    assert "not ready until it answers" in err and '"event":"upstream_reachable"' in err
