"""Admin listener: /metrics, /healthz, /readyz and /_cache/* on their own port (--admin-listen); then those
paths on the public port reach the backend like any other path. Without it they stay on the public port."""
from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
from aiohttp import web

from proxy.ops.admin import build_admin_app
from tests.functional.conftest import auth
from proxy.serve.app import PROXY_KEY

from .conftest import ADMIN_TOKEN, RULES_PATH, SECRET, free_port, metric, subprocess_env, wait_ready

ADMIN_PATHS = ("/metrics", "/healthz", "/readyz", "/_cache/stats")


def recording_origin(seen: list[str]):
    async def handler(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"origin": request.raw_path}, status=200)
    return handler


async def test_with_an_admin_listener_admin_paths_are_backend_paths_on_the_public_port(make_proxy, origin,
                                                                                       aiohttp_client):
    seen: list[str] = []
    url = await origin(recording_origin(seen))
    proxy = await make_proxy(upstream_url=url, admin_listen="127.0.0.1:0")
    for path in ADMIN_PATHS:
        reply = await proxy.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert reply.status == 200 and reply.json == {"origin": path}, reply  # the backend's answer
        assert reply.x_cache == "BYPASS"
    assert seen == list(ADMIN_PATHS)

    admin = await aiohttp_client(build_admin_app(proxy.app[PROXY_KEY]))
    async with admin.get("/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200 and "katiba_cache_requests_total" in text
    # the four public requests above were counted by the proxy that the admin port reports on
    assert metric(text, "katiba_cache_requests_total", rule="none", result="bypass") == 4
    async with admin.get("/readyz") as resp:
        assert resp.status == 200 and (await resp.json())["ready"] is True
    async with admin.get("/healthz") as resp:
        assert resp.status == 200
    async with admin.get("/_cache/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200 and "rules" in await resp.json()
    async with admin.get("/_cache/stats") as resp:
        assert resp.status == 401  # still needs the admin credential
    async with admin.get("/api/v1/users/profile") as resp:
        assert resp.status == 404  # the admin port never forwards
    assert seen == list(ADMIN_PATHS)  # nothing on the admin port reached the backend


async def test_without_an_admin_listener_admin_paths_stay_on_the_public_port(make_proxy, origin):
    seen: list[str] = []
    url = await origin(recording_origin(seen))
    proxy = await make_proxy(upstream_url=url)
    assert (await proxy.get("/healthz")).json == {"status": "ok"}
    assert (await proxy.get("/readyz")).json["ready"] is True
    assert "katiba_cache_" in await proxy.metrics()
    assert (await proxy.get("/_cache/stats")).status == 401
    assert seen == []


async def test_cache_proxy_serve_admin_listen_serves_both_ports(backend, tmp_path):
    public, admin = free_port(), free_port()
    env = subprocess_env(JWT_SECRET_KEY=SECRET, CACHE_ADMIN_TOKEN=ADMIN_TOKEN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--upstream", backend.url, "--rules", RULES_PATH,
        "--listen", f"127.0.0.1:{public}", "--admin-listen", f"127.0.0.1:{admin}", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path)
    try:
        await wait_ready(f"http://127.0.0.1:{admin}/readyz")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{public}/readyz") as resp:
                assert resp.status == 404  # the stand-in has no /readyz: the path went to the backend
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as resp:
                assert resp.status == 200 and "katiba_cache_" in await resp.text()
            async with session.get(f"http://127.0.0.1:{public}/api/v1/users/profile", headers=auth("admin-port-user")) as resp:
                assert resp.status == 200 and resp.headers["X-Cache"] == "MISS"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"\"admin_listen\":\"127.0.0.1:" in err
