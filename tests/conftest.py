"""Shared fixtures: tests own their services.

``redis_server`` (session)  a private ``redis-server`` on a free port: ``.url``, ``.port``, ``.stop()``,
                            ``.start()`` (restart on the same port, empty), ``.client()`` (a new sync
                            ``redis.Redis``), ``.admin`` (a shared sync client, str responses),
                            ``.command_count(name)`` / ``.command_counts()`` (``INFO commandstats``,
                            scripts' inner commands included), ``.reset_stats()``, ``.flushall()``,
                            ``.pause()`` / ``.resume()`` (SIGSTOP/SIGCONT: a hung server).
``redis_url``     (function) the session server's URL, FLUSHALLed and with its stats reset first.
``start_redis``   (function) a factory: ``start_redis()`` starts another private server (a
                            ``RedisServer``), killed at teardown.
``rsa_keys``      (session) (private PEM, public PEM) of a fresh RSA key.
``serve_proxy``   (function) ``aiohttp_client`` for the proxy's app, served as ``cache-proxy serve`` serves it.

A missing ``redis-server`` binary fails the run; it is never a skip. Nothing here touches 127.0.0.1:6379.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

STARTUP_TIMEOUT = 10.0


def pytest_configure(config) -> None:
    """The staleness auditor re-fetches a random 1% of hits with the shipped rules: tests count backend
    requests exactly, so it is off for the suite (proxies started as children inherit this too). Tests of
    the auditor turn it on with monkeypatch.setenv("CACHE_AUDIT_SAMPLE", ...): the variable wins over the
    file. A hook, not an import-time assignment: bench/soak.py imports this module, and a benchmark must
    run the proxy as shipped."""
    os.environ["CACHE_AUDIT_SAMPLE"] = "0"


class ServedAsShipped(TestServer):
    """aiohttp's test server cancels a handler whose client has gone (``handler_cancellation=True``);
    ``cache-proxy serve`` runs an ``AppRunner``, which lets it finish (proxy/ops/runner.py). A write whose
    client hangs up still reaches the backend and purges: tests must see what production does."""

    async def _make_runner(self, **kwargs):
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
def serve_proxy(aiohttp_client):
    async def serve(app):
        return await aiohttp_client(ServedAsShipped(app))
    return serve


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found on PATH: the store tests need a real Redis "
                    "(Debian: apt-get install redis-server)", pytrace=False)
    return binary


# Every test redis-server: no persistence, loopback only. A replica's first sync starts at once: Redis 7
# waits repl-diskless-sync-delay (5 s) for more replicas otherwise, which on a loaded machine outlasted
# the tests' bounded polls for "in sync".
REDIS_OPTIONS = ("--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--daemonize", "no",
                 "--repl-diskless-sync-delay", "0")


class RedisServer:
    """One ``redis-server`` process we started, on 127.0.0.1 and a port of our own."""

    def __init__(self, workdir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()):
        self.binary = redis_server_binary()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        assert self.port != 6379, "tests must never use the machine's Redis"
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None
        self._admin: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start (or restart after ``stop``) on the same port, with an empty dataset."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [self.binary, *REDIS_OPTIONS, "--port", str(self.port), "--dir", str(self.workdir),
                 *self.extra_args],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self._log_path()}:\n"
                                   + self._log_tail())
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5,
                                 socket_connect_timeout=0.5) as probe:
                    if probe.ping():
                        return
            except redis.RedisError as exc:
                last_error = exc
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within "
                           f"{STARTUP_TIMEOUT}s ({last_error}):\n" + self._log_tail())

    def stop(self) -> None:
        """Kill the server (no save: ``--save ""``); a later ``start`` comes back empty."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers (a hung Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs) -> redis.Redis:
        """A new sync client (bytes responses unless ``decode_responses=True``); close it when done."""
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    @property
    def admin(self) -> redis.Redis:
        """A long-lived sync client for the fixtures' own bookkeeping (FLUSHALL, INFO)."""
        if self._admin is None:
            self._admin = self.client(decode_responses=True)
        return self._admin

    def command_counts(self) -> dict[str, int]:
        """Calls per command since start or the last ``reset_stats``, from ``INFO commandstats``.

        Names are lower case as Redis reports them (``mget``, ``evalsha``, ``client|setinfo``). The
        ``info`` calls made by this method itself are counted too: compare other commands only.
        """
        stats = self.admin.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}

    def command_count(self, name: str) -> int:
        return self.command_counts().get(name.lower(), 0)

    def reset_stats(self) -> None:
        self.admin.config_resetstat()

    def flushall(self) -> None:
        self.admin.flushall()
        self.admin.script_flush()

    def _log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def _log_tail(self) -> str:
        try:
            return "\n".join(self._log_path().read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<RedisServer port={self.port} running={self.running}>"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-session"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    if not redis_server.running:  # a previous test stopped it without starting it again
        redis_server.start()
    redis_server.flushall()
    redis_server.reset_stats()
    return redis_server.url


@pytest.fixture
def start_redis(tmp_path_factory):
    servers: list[RedisServer] = []

    def start(*extra_args: str) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis-private"), extra_args=extra_args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


# The local Redis Cluster (six redis-server processes, tests/cluster/harness.py), here so the store
# contract runs on it too: ``redis_cluster`` (session), ``cluster_url``, ``start_cluster``.
from tests.cluster.harness import cluster_url, redis_cluster, start_cluster  # noqa: E402,F401


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    """(private PEM, public PEM) of a fresh RSA key, once per session (identity and security tests)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public
