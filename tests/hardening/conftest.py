"""Fixtures of the production-hardening suite ([9/9]).

``backend``       the stand-in backend on a loopback test server (``Backend`` from the functional suite).
``make_proxy``    ``await make_proxy(upstream_url=..., store=..., **config)``: ``build_app`` on a loopback test
                  server (memory store unless ``store`` is given), wrapped in ``ProxyClient``.
``origin``        ``await origin(handler)``: a scripted backend (one aiohttp handler for every path) on
                  loopback; returns its base URL. ``Origin`` counters live in the test.
``certs``         a private CA with a server certificate (127.0.0.1, localhost) and a client certificate,
                  written as PEM files (``certs.ca``, ``certs.server_cert``, ``certs.server_key``,
                  ``certs.client_cert``, ``certs.client_key``), made with ``cryptography``.
``poll``          ``await poll(predicate, what)``: bounded polling, never a bare sleep.
``metric(text, name, **labels)`` reads one sample of a Prometheus text page (0.0 when absent).
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import standin
from proxy.serve.config import Config
from proxy.core.identity import IdentityConfig
from proxy.serve.app import build_app
from proxy.store.memory import MemoryStore
from proxy.upstream.client import UpstreamConfig
from tests.functional.conftest import ADMIN_TOKEN, RULES_PATH, SECRET, Backend, ProxyClient, _poll

ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m proxy`` child: this checkout importable from any directory."""
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PENDING_PURGES_FILE": "off", "WATCH_RULES": "0"}
    env.update(extra)
    return env


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def poll():
    return _poll


@pytest.fixture
async def backend(aiohttp_client) -> Backend:
    return Backend(await aiohttp_client(standin.build_app(delay_ms=0)))


def make_config(upstream_url: str, **overrides: Any) -> Config:
    overrides.setdefault("store_timeout", 1.0)
    upstream = overrides.pop("upstream", None) or UpstreamConfig(url=upstream_url)
    return Config(upstream=upstream, rules_path=str(overrides.pop("rules_path", RULES_PATH)),
                  identity=IdentityConfig(secrets=(SECRET,)), admin_token=ADMIN_TOKEN, **overrides)


@pytest.fixture
def make_proxy(serve_proxy, backend):
    async def make(*, upstream_url: str | None = None, store: Any = None, **overrides: Any) -> ProxyClient:
        config = make_config(upstream_url or backend.url, **overrides)
        store = MemoryStore() if store is None else store
        client = await serve_proxy(build_app(config, store=store))
        return ProxyClient(client, store)

    return make


@pytest.fixture
async def origin():
    """``await origin(handler, ssl_context=None)`` -> base URL of a scripted backend on loopback."""
    servers: list[TestServer] = []

    async def start(handler, ssl_context=None) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(ssl=ssl_context)
        servers.append(server)
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


# ------------------------------------------------------------------------------- certificates

@dataclass
class Certs:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing here: trusting it must fail


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert=None, key=None) -> str:
    from cryptography.hazmat.primitives import serialization

    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return str(path)


def _ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca_cert, ca_key, name: str, server: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    ca_cert, ca_key = _ca("katiba-cache test CA")
    other_cert, _ = _ca("some other CA")
    server_cert, server_key = _leaf(ca_cert, ca_key, "127.0.0.1", server=True)
    client_cert, client_key = _leaf(ca_cert, ca_key, "katiba-cache proxy", server=False)
    return Certs(ca=_write(d / "ca.pem", ca_cert), server_cert=_write(d / "server.pem", server_cert),
                 server_key=_write(d / "server.key", key=server_key), client_cert=_write(d / "client.pem", client_cert),
                 client_key=_write(d / "client.key", key=client_key), other_ca=_write(d / "other-ca.pem", other_cert))


# ------------------------------------------------------------------------------- subprocesses

async def wait_ready(url: str, attempts: int = 500, status: int = 200) -> dict:
    """Poll ``url`` (a /readyz) until it answers ``status``; bounded."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(attempts):
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == status:
                        return await resp.json()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            await asyncio.sleep(0.02)
    pytest.fail(f"{url} never answered {status}")
