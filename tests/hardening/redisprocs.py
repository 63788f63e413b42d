"""redis-server processes with production options (TLS, ACL users, Sentinel) for the hardening tests.

Each is started on free loopback ports, waited for with a bounded loop, and killed by the fixture.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import redis

from tests.conftest import REDIS_OPTIONS, redis_server_binary

from .conftest import free_port


class Proc:
    def __init__(self, argv: list[str], workdir: Path, port: int, name: str):
        self.port, self.workdir, self.name = port, workdir, name
        self.log = workdir / f"{name}-{port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def wait(self, ready: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if ready():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} on port {self.port}: {what} did not happen within {seconds}s\n{self.tail()}")

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class Launcher:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[Proc] = []

    def _start(self, name: str, port: int, args: list[str]) -> Proc:
        proc = Proc([redis_server_binary(), *args], self.workdir, port, name)
        self.procs.append(proc)
        return proc

    def tls(self, certs, auth_clients: bool = True) -> Proc:
        port = free_port()
        proc = self._start("redis-tls", port, [
            *REDIS_OPTIONS, "--port", "0", "--tls-port", str(port), "--tls-cert-file", certs.server_cert,
            "--tls-key-file", certs.server_key, "--tls-ca-cert-file", certs.ca,
            "--tls-auth-clients", "yes" if auth_clients else "no", "--dir", str(self.workdir)])
        proc.client = lambda: redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=certs.ca,
                                          ssl_certfile=certs.client_cert, ssl_keyfile=certs.client_key,
                                          socket_timeout=2, decode_responses=True)
        proc.wait(lambda: proc.client().ping(), "PING over TLS")
        return proc

    def acl(self, user: str, password: str) -> Proc:
        port = free_port()
        proc = self._start("redis-acl", port, [
            *REDIS_OPTIONS, "--port", str(port), "--user", user, "on", f">{password}", "~*", "&*", "+@all",
            "--user", "default", "off",
            "--dir", str(self.workdir)])
        proc.client = lambda: redis.Redis(host="127.0.0.1", port=port, username=user, password=password,
                                          socket_timeout=2, decode_responses=True)
        proc.wait(lambda: proc.client().ping(), "PING as the ACL user")
        return proc

    def plain(self, *extra: str) -> Proc:
        port = free_port()
        proc = self._start("redis", port, [*REDIS_OPTIONS, "--port", str(port), "--dir", str(self.workdir), *extra])
        proc.client = lambda: redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)
        proc.wait(lambda: proc.client().ping(), "PING")
        return proc

    def sentinel(self, service: str, master_port: int) -> Proc:
        port = free_port()
        conf = self.workdir / f"sentinel-{port}.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                        f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
                        f"sentinel down-after-milliseconds {service} 1000\n"
                        f"sentinel failover-timeout {service} 5000\n")
        proc = self._start("sentinel", port, [str(conf), "--sentinel"])
        proc.client = lambda: redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)
        proc.wait(lambda: proc.client().sentinel_get_master_addr_by_name(service) is not None, "sentinel knows the master")
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def redis_procs(tmp_path_factory):
    launcher = Launcher(tmp_path_factory.mktemp("redis-procs"))
    yield launcher
    launcher.stop()
