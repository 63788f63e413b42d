"""Fixtures of the operations suite: the stand-in backend in process, proxies built from a rules file.

``backend``     the stand-in (``standin.build_app(delay_ms=0)``) on a loopback test server: ``.url``,
                ``await .count(route)`` (requests the backend saw for ``GET <route>``).
``make_proxy``  ``await make_proxy(rules_path, store=None, **config)``: ``build_app`` on a loopback test
                server, returned as an ``Ops`` wrapper (``.client``, ``.proxy``, ``.base``, ``.get``,
                ``.metric``).
``mint`` / ``auth`` / ``poll`` helpers; ``ADMIN`` is the admin credential every proxy here has.
"""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import jwt
import orjson
import pytest

import standin
from proxy.serve.config import Config
from proxy.core.identity import IdentityConfig
from proxy.serve.app import PROXY_KEY, build_app
from proxy.store.memory import MemoryStore
from proxy.upstream.client import UpstreamConfig

ROOT = Path(__file__).resolve().parents[2]
RULES_PATH = str(ROOT / "rules.yaml")
SECRET = standin.DEFAULT_SECRET
ADMIN = "ops-admin-token-0123456789abcdef"
PROFILE = "/api/v1/users/profile"


def mint(user: str, ttl: int = 3600, secret: str = SECRET) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + ttl}, secret, algorithm="HS256")


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(user)}"}


async def poll(predicate: Callable[[], Awaitable[bool]], what: str, attempts: int = 500,
               interval: float = 0.01) -> None:
    """Poll until ``predicate`` holds; fail after ``attempts`` polls (bounded, not a timed assert)."""
    for _ in range(attempts):
        if await predicate():
            return
        await asyncio.sleep(interval)
    pytest.fail(f"condition never became true: {what}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


class Backend:
    def __init__(self, client):
        self.client = client
        self.url = f"http://127.0.0.1:{client.server.port}"

    async def count(self, route: str, method: str = "GET") -> int:
        async with self.client.get("/_standin/stats") as resp:
            stats = await resp.json()
        return stats["by_route"].get(f"{method} {route}", 0)


class Ops:
    def __init__(self, client, store):
        self.client, self.store = client, store
        self.base = f"http://127.0.0.1:{client.server.port}"

    @property
    def proxy(self):
        return self.client.app[PROXY_KEY]

    async def request(self, method: str, path: str, user: str | None = None, headers: dict | None = None,
                      json: Any = None) -> tuple[int, Any, Any]:
        h = dict(headers or {})
        if user is not None:
            h.update(auth(user))
        async with self.client.request(method, path, headers=h, json=json) as resp:
            body = await resp.read()
            try:
                document = orjson.loads(body) if body else None
            except orjson.JSONDecodeError:
                document = body
            return resp.status, resp.headers, document

    async def get(self, path: str, user: str | None = None, headers: dict | None = None) -> tuple[int, Any, Any]:
        return await self.request("GET", path, user, headers)

    async def x_cache(self, path: str, user: str | None = None) -> str:
        status, headers, _ = await self.get(path, user)
        assert status == 200, (status, headers)
        return headers["X-Cache"]

    async def metric(self, name: str, **labels: str) -> float:
        async with self.client.get("/metrics") as resp:
            return metric_value(await resp.text(), name, **labels)

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def backend(aiohttp_client) -> Backend:
    return Backend(await aiohttp_client(standin.build_app(delay_ms=0)))


@pytest.fixture
def make_proxy(serve_proxy, backend):
    async def make(rules_path: str | Path = RULES_PATH, store: Any = None, **overrides: Any) -> Ops:
        overrides.setdefault("store_timeout", 1.0)
        config = Config(upstream=UpstreamConfig(url=backend.url), rules_path=str(rules_path),
                        identity=IdentityConfig(secrets=(SECRET,)), admin_token=ADMIN, **overrides)
        store = MemoryStore() if store is None else store
        return Ops(await serve_proxy(build_app(config, store=store)), store)

    return make
