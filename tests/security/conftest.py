"""Fixtures of the security battery.

The functional suite's fixtures are re-exported as they are (``backend``, ``make_store``, ``make_proxy``,
``proxy``, ``store_kind``: every test using a proxy runs on the memory store and on Redis, ``mint_token``,
``poll``). Added here:

``reflector``              the scripted origin of ``helpers.Reflector`` on a loopback server.
``make_configured_proxy``  like ``make_proxy`` but every Config field may be given, ``identity`` and
                           ``admin_token`` included (make_proxy fixes those two).
``rsa_keys``               (from tests/conftest.py) (private PEM, public PEM) of a fresh RSA key, once per session.
"""
from __future__ import annotations

from typing import Any

import pytest

from proxy.serve.config import Config
from proxy.core.identity import IdentityConfig
from proxy.serve.app import build_app
from proxy.upstream.client import UpstreamConfig
from tests.functional.conftest import *  # noqa: F401,F403  (backend, make_proxy, proxy, store_kind, ...)
from tests.functional.conftest import ADMIN_TOKEN, RULES_PATH, SECRET, ProxyClient
from tests.security.helpers import Reflector


@pytest.fixture
async def reflector(aiohttp_server) -> Reflector:
    origin = Reflector()
    server = await aiohttp_server(origin.app)
    origin.url = f"http://127.0.0.1:{server.port}"
    return origin


@pytest.fixture
def make_configured_proxy(serve_proxy, backend, make_store):
    async def make(*, upstream_url: str | None = None, rules_path: Any = RULES_PATH,
                   identity: IdentityConfig | None = None, admin_token: str | None = ADMIN_TOKEN,
                   **overrides: Any) -> ProxyClient:
        overrides.setdefault("store_timeout", 1.0)
        config = Config(upstream=UpstreamConfig(url=upstream_url or backend.url), rules_path=str(rules_path),
                        identity=identity or IdentityConfig(secrets=(SECRET,)), admin_token=admin_token,
                        **overrides)
        store = make_store()
        return ProxyClient(await serve_proxy(build_app(config, store=store)), store)

    return make


