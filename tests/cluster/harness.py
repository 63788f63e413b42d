"""A real local Redis Cluster for tests: six ``redis-server --cluster-enabled yes`` processes (three
primaries, one replica each), created with ``redis-cli --cluster create ... --cluster-replicas 1``.

``LocalCluster``: ``.url`` (``redis+cluster://127.0.0.1:P1,127.0.0.1:P2``), ``.nodes`` (``RedisServer``
objects from ``tests/conftest.py``), ``.topology()`` (``CLUSTER NODES`` as dicts), ``.primary_of(key)``,
``.command_counts()`` (``INFO commandstats`` summed over the primaries), ``.reset_stats()``,
``.flushall()``, ``.kill(port)``, ``.wait_ok()`` (a bounded poll of ``CLUSTER INFO``), ``.admin()``,
and a slot migration in steps (``begin_migration``, ``migrate_keys``, ``finish_migration``).

Fixtures (imported by ``tests/conftest.py`` so the store contract can use them too):
``redis_cluster`` (session, shared: tests must not change its topology), ``cluster_url`` (flushed, stats
reset), ``start_cluster`` (a factory of private clusters, for failover and resharding; killed at teardown).
A missing ``redis-server`` or ``redis-cli`` fails the run; it is never a skip.
"""
from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.crc import key_slot

if TYPE_CHECKING:
    from tests.conftest import RedisServer

NODE_TIMEOUT_MS = 1000
READY_TIMEOUT = 30.0


# Node ports, and their bus ports 10000 above, below Linux's ephemeral range (32768 and up by default):
# a port the kernel hands out for some outgoing connection between the check and the node's start made
# the node fail to bind its bus ("Address already in use"), seen in a full suite run.
NODE_PORTS = range(12000, 22768)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.choice(NODE_PORTS)
        try:
            with socket.socket() as node, socket.socket() as bus:
                node.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _redis_cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        pytest.fail("redis-cli not found on PATH: the cluster tests create a real Redis Cluster "
                    "(Debian: apt-get install redis-tools)", pytrace=False)
    return binary


class LocalCluster:
    def __init__(self, workdir: Path, size: int = 6):
        from tests.conftest import RedisServer  # here: tests/conftest.py imports this module's fixtures

        self.workdir = Path(workdir)
        self.cli = _redis_cli()
        self.nodes: list[RedisServer] = []
        ports: list[int] = []
        while len(ports) < size:
            port = _free_cluster_port()
            if port not in ports:
                ports.append(port)
        for port in ports:
            self.nodes.append(RedisServer(self.workdir, port=port, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0")))

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self) -> "LocalCluster":
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        done = subprocess.run([self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "1",
                               "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        self.wait_ok()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    def kill(self, port: int) -> None:
        self.node(port).stop()

    # -- views ----------------------------------------------------------------------------------------------
    def topology(self, via: RedisServer | None = None) -> list[dict]:
        """``CLUSTER NODES`` of one running node: id, port, flags, master (id or None), slots."""
        node = via or self.running()[0]
        text = node.admin.execute_command("CLUSTER", "NODES")
        text = text if isinstance(text, str) else "\n".join(
            f"{v['node_id']} {k} {v['flags']} {v['master_id']} x x x {v['connected']}" for k, v in text.items())
        out = []
        for line in text.strip().splitlines():
            parts = line.split()
            address, flags = parts[1], parts[2]
            out.append({"id": parts[0], "port": int(address.split("@")[0].rsplit(":", 1)[1]),
                        "flags": flags, "master": None if parts[3] == "-" else parts[3],
                        "primary": "master" in flags and "fail" not in flags.replace("fail?", ""),
                        "slots": parts[8:]})
        return out

    def primaries(self) -> list[int]:
        return sorted(n["port"] for n in self.topology() if n["primary"] and n["slots"])

    def primary_of(self, key: str) -> int:
        """The port of the primary that owns ``key``'s slot (asked of a running node)."""
        return self._owner(key_slot(key.encode()))

    def replica_of(self, primary_port: int, timeout: float = READY_TIMEOUT) -> int:
        """The port of a replica streaming from ``primary_port``, as that primary itself reports it.

        Asked of the primary (``INFO replication``), not read from gossip: on a loaded machine another
        node's ``CLUSTER NODES`` can flag a healthy replica ``fail?`` for a moment (node timeout 1 s)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.node(primary_port).admin.info("replication")
            online = [v["port"] for k, v in info.items()
                      if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"]
            if online:
                return int(online[0])
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no online replica of {primary_port} within {timeout}s: {info}")
            time.sleep(0.05)

    def info(self, node: RedisServer) -> dict[str, str]:
        text = node.admin.execute_command("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)

    def wait_ok(self, timeout: float = READY_TIMEOUT, primaries: int = 3) -> None:
        """Bounded poll: every running node says ``cluster_state:ok`` with all slots served, and sees
        ``primaries`` primaries owning slots, each of them a running process (after a kill: failed over);
        every running replica's link to its primary is up (its first sync is done)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                running = {n.port for n in self.running()}
                infos = [self.info(n) for n in self.running()]
                views = [{t["port"] for t in self.topology(n) if t["primary"] and t["slots"]} for n in self.running()]
                replicas = [n.admin.info("replication") for n in self.running()]
                synced = all(r.get("master_link_status") == "up" for r in replicas if r.get("role") == "slave")
                if all(i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384" for i in infos) \
                        and all(len(v) == primaries and v <= running for v in views) and synced:
                    return
                last = f"{infos} primaries seen {views}"
            except redis.RedisError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise RuntimeError(f"the cluster did not become ok within {timeout}s: {last}")

    # -- resharding -----------------------------------------------------------------------------------------
    def node_id(self, port: int) -> str:
        return next(n["id"] for n in self.topology() if n["port"] == port)

    def begin_migration(self, slot: int, dst_port: int) -> tuple[RedisServer, RedisServer]:
        """``CLUSTER SETSLOT`` IMPORTING / MIGRATING: from now on clients get ``ASK`` for moved keys."""
        src, dst = self.node(self._owner(slot)), self.node(dst_port)
        dst.admin.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(src.port))
        src.admin.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(dst.port))
        return src, dst

    def migrate_keys(self, slot: int, src: RedisServer, dst: RedisServer, count: int | None = None) -> list[str]:
        """``MIGRATE`` ``count`` (default all) of the slot's keys still on ``src`` to ``dst``."""
        keys = src.admin.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10_000)
        keys = keys[:count] if count is not None else keys
        if keys:
            src.admin.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys)
        return keys

    def finish_migration(self, slot: int, src: RedisServer, dst: RedisServer) -> None:
        dst_id = self.node_id(dst.port)
        for node in [dst, src] + [self.node(p) for p in self.primaries() if p not in (src.port, dst.port)]:
            node.admin.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def _owner(self, slot: int) -> int:
        for start, end, primary, *_ in self.running()[0].admin.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise LookupError(f"slot {slot} has no owner")

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def command_counts(self) -> dict[str, int]:
        """Calls per command since the last ``reset_stats``, summed over the primaries (replicas replay
        writes; they are not counted). ``info`` calls include this method's own."""
        primaries = set(self.primaries())
        total: dict[str, int] = {}
        for node in self.running():
            if node.port not in primaries:
                continue
            for name, count in node.command_counts().items():
                total[name] = total.get(name, 0) + count
        return total

    def counts_by_node(self, command: str) -> dict[int, int]:
        return {n.port: n.command_count(command) for n in self.running()}

    def reset_stats(self) -> None:
        for node in self.running():
            node.reset_stats()

    def flushall(self) -> None:
        primaries = set(self.primaries())
        for node in self.running():
            if node.port in primaries:
                node.admin.flushall()
                node.admin.script_flush()

    def admin(self) -> SyncRedisCluster:
        """A sync cluster client (str responses); close it when done."""
        node = self.running()[0]
        return SyncRedisCluster(host="127.0.0.1", port=node.port, decode_responses=True)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster) -> str:
    redis_cluster.wait_ok()
    redis_cluster.flushall()
    redis_cluster.reset_stats()
    return redis_cluster.url


@pytest.fixture
def start_cluster(tmp_path_factory):
    clusters: list[LocalCluster] = []

    def start() -> LocalCluster:
        cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster-private"))
        clusters.append(cluster)
        return cluster.start()

    yield start
    for cluster in clusters:
        cluster.stop()
