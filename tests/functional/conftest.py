"""Fixtures of the functional suite: the proxy in front of the in-process stand-in backend.

``backend``      the stand-in (``standin.build_app(delay_ms=0)``) on a loopback test server, wrapped in
                 ``Backend``: ``.url``, ``.stats()`` / ``.requests()`` / ``.route_count(method, route)``
                 (``/_standin/stats`` counters), ``.call(...)`` (straight to the backend, not via the
                 proxy: test set-up) and ``.control(...)`` (``/_standin/*`` hooks).
``store_kind``   ``memory`` | ``redis``: every test that uses ``proxy`` or ``make_proxy`` runs on both.
``make_store``   a fresh store of ``store_kind`` (RedisStore on the session server, flushed per test).
``make_proxy``   ``await make_proxy(upstream_url=..., rules_path=..., store=..., unsafe=..., **config)``:
                 ``proxy.serve.app.build_app`` on a loopback test server, wrapped in ``ProxyClient``.
``proxy``        ``make_proxy()`` with the default rules.yaml in front of ``backend``.

``mint_token``   ``mint_token(user, ttl=3600, secret=..., **claims)``: HS256 JWT with ``standin.DEFAULT_SECRET``
                 (``ProxyClient.get(path, user)`` mints one itself).
``poll``         ``await poll(predicate, what)``: a bounded poll, never a bare sleep as synchronisation.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

import standin
from proxy.serve.config import Config
from proxy.core.identity import IdentityConfig
from proxy.serve.app import PROXY_KEY, build_app
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.upstream.client import UpstreamConfig

ROOT = Path(__file__).resolve().parents[2]
RULES_PATH = str(ROOT / "rules.yaml")
API = "/api/v1"
ADMIN_TOKEN = "admin-token-for-functional-tests-0123456789"
SECRET = standin.DEFAULT_SECRET


# ---------------------------------------------------------------------------------------- tokens

_MINTED: dict[tuple, str] = {}


def mint(user_id: str, ttl: int = 3600, secret: str = SECRET, **claims: Any) -> str:
    """A token for ``user_id``. Long-lived ones (``ttl`` >= 3600, the default) are minted once per user,
    secret and claims: ``exp`` is now + ttl, so tokens minted a second apart differ, and so do the
    requests carrying them (memos, lookups): a test's repeated requests must be byte for byte the same
    whatever the clock. A session is far shorter than the hour of validity this leaves."""
    key = (user_id, ttl, secret, repr(sorted(claims.items())))
    token = _MINTED.get(key) if ttl >= 3600 else None
    if token is None:
        token = jwt.encode({"sub": user_id, "exp": int(time.time()) + ttl, **claims}, secret, algorithm="HS256")
        if ttl >= 3600:
            _MINTED[key] = token
    return token


def auth(user_id: str, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(user_id, **kw)}"}


def new_user() -> str:
    return str(uuid.uuid4())


async def _poll(predicate: Callable[[], Awaitable[bool]], what: str, attempts: int = 500,
                   interval: float = 0.01) -> None:
    """Poll ``predicate`` until true; fail after ``attempts`` polls (bounded, not a timed assert)."""
    for _ in range(attempts):
        if await predicate():
            return
        await asyncio.sleep(interval)
    pytest.fail(f"condition never became true: {what}")


@pytest.fixture
def poll() -> Callable[..., Awaitable[None]]:
    return _poll


# ---------------------------------------------------------------------------------------- replies

@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def x_cache(self) -> str | None:
        return self.headers.get("X-Cache")

    @property
    def cache_status(self) -> str:
        return self.headers.get("Cache-Status", "")

    @property
    def version(self) -> int:
        return self.json["body"]["version"]

    @property
    def code(self) -> int:
        """The envelope's header.responseCode."""
        return self.json["header"]["responseCode"]

    def __repr__(self) -> str:
        return f"<Reply {self.status} X-Cache={self.x_cache} {self.cache_status!r} {self.body[:300]!r}>"


async def _request(client: TestClient, method: str, path: str, user: str | None = None,
                   token: str | None = None, json: Any = None, headers: dict | None = None,
                   data: Any = None) -> Reply:
    h = dict(headers or {})
    if user is not None:
        h.update(auth(user))
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    async with client.request(method, path, json=json, data=data, headers=h) as resp:
        body = await resp.read()
        return Reply(resp.status, resp.headers, body)


# ---------------------------------------------------------------------------------------- backend

class Backend:
    def __init__(self, client: TestClient):
        self.client = client
        self.url = f"http://127.0.0.1:{client.server.port}"

    async def stats(self) -> dict:
        return (await _request(self.client, "GET", "/_standin/stats")).json

    async def requests(self) -> int:
        """Every /api/v1 request the backend received."""
        return (await self.stats())["requests"]

    async def route_count(self, method: str, route: str) -> int:
        """Requests matched to ``method route`` (a route template such as /api/v1/achievements/{achievement_id})."""
        return (await self.stats())["by_route"].get(f"{method} {route}", 0)

    async def call(self, method: str, path: str, user: str | None = None, json: Any = None) -> Reply:
        """Straight to the backend (set-up that must not go through the proxy)."""
        return await _request(self.client, method, path, user=user, json=json)

    async def control(self, method: str, path: str, json: Any = None) -> dict:
        reply = await _request(self.client, method, f"/_standin/{path}", json=json)
        assert reply.status == 200, reply
        return reply.json

    async def award(self, user: str, badge_type: str = "gold") -> str:
        """Give ``user`` a badge straight at the backend; returns the achievement id."""
        reply = await self.call("POST", f"{API}/achievements/award", user, {"badge_type": badge_type})
        assert reply.status == 200 and reply.code == 200, reply
        return reply.json["body"]["achievement"]["id"]

    async def seed(self, user: str) -> dict[str, Any]:
        """Give ``user`` data of every kind straight at the backend, so each of their per-user GETs shows
        ``body.version`` > 0 (a user first seen by the backend shows 0 everywhere). Returns the ids made."""
        writes = [("PUT", "/users/profile", {"display_name": "Seeded Name", "bio": "seeded"}),
                  ("POST", "/users/preferences", {"theme": "dark"}),
                  ("POST", "/users/languages", {"language_code": "sw"}),
                  ("POST", "/users/interests", {"interest": "history"}),
                  ("POST", "/users/accessibility", {"font_size": "large"})]
        ids: dict[str, Any] = {}
        for method, path, body in writes:
            reply = await self.call(method, API + path, user, body)
            assert reply.status == 200 and reply.code == 200, reply
            if "item" in reply.json["body"]:
                ids[path.rsplit("/", 1)[1][:-1] + "_id"] = reply.json["body"]["item"]["id"]
        ids["achievement_id"] = await self.award(user, "gold")
        return ids  # achievement_id, language_id, interest_id


@pytest.fixture
def mint_token() -> Callable[..., str]:
    """``mint_token(user, ttl=3600, secret=SECRET, **claims)``: an HS256 JWT the backend accepts."""
    return mint


@pytest.fixture
async def backend(aiohttp_client) -> Backend:
    return Backend(await aiohttp_client(standin.build_app(delay_ms=0)))


# ---------------------------------------------------------------------------------------- proxy

def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a /metrics text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


class ProxyClient:
    admin_token = ADMIN_TOKEN

    def __init__(self, client: TestClient, store: Any):
        self.client = client
        self.store = store
        self.app = client.app

    @property
    def proxy(self):
        return self.app[PROXY_KEY]

    async def request(self, method: str, path: str, user: str | None = None, **kw: Any) -> Reply:
        return await _request(self.client, method, path, user=user, **kw)

    async def get(self, path: str, user: str | None = None, **kw: Any) -> Reply:
        return await self.request("GET", path, user, **kw)

    async def metrics(self) -> str:
        reply = await self.get("/metrics")
        assert reply.status == 200, reply
        return reply.body.decode()

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent), e.g. ``metric("katiba_cache_stores_total", outcome=...)``."""
        return sample(await self.metrics(), name, **labels)

    async def background_fills(self) -> None:
        """Wait for the fills the last requests started in the background (a write's refetches among them:
        they are spawned before the write's answer is released)."""
        for task in [t for t in self.proxy.background.tasks if getattr(t, "fill", False)]:
            await task

    async def writes_landed(self) -> None:
        """A miss is answered before its store write lands (write-behind): wait for those writes, for
        tests that look at the store or count its commands right after a miss."""
        await self.proxy.store.writes_landed()


@pytest.fixture(params=["memory", "redis"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def make_store(request, store_kind) -> Callable[[], Any]:
    def make():
        if store_kind == "memory":
            return MemoryStore()
        # timeout as the guard's (1 s): a loaded CI box must not read as "store down" (flushed once per test)
        return RedisStore.from_url(request.getfixturevalue("redis_url"), timeout=1.0)

    return make


@pytest.fixture
def make_proxy(serve_proxy, backend, make_store):
    async def make(*, upstream_url: str | None = None, upstream: UpstreamConfig | None = None,
                   rules_path: str | Path = RULES_PATH, store: Any = None, unsafe: frozenset[str] = frozenset(),
                   **overrides: Any) -> ProxyClient:
        overrides.setdefault("store_timeout", 1.0)  # generous: a loaded CI box must not read as "store down"
        config = Config(upstream=upstream or UpstreamConfig(url=upstream_url or backend.url),
                        rules_path=str(rules_path), identity=IdentityConfig(secrets=(SECRET,)),
                        admin_token=ADMIN_TOKEN, **overrides)
        store = make_store() if store is None else store
        client = await serve_proxy(build_app(config, store=store, unsafe=unsafe))
        return ProxyClient(client, store)

    return make


@pytest.fixture
async def proxy(make_proxy) -> ProxyClient:
    return await make_proxy()
