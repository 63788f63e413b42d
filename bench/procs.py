"""The processes a benchmark run owns, all on 127.0.0.1: stand-in backend, redis-server, our proxy, nginx.

Each ``start_*`` returns a ``Service`` (its ``Popen``, URL and log file) that ``stop()`` ends: SIGTERM,
then SIGKILL after a grace period; only processes started here are ever signalled. ``cores`` pins a
process (and its children) with ``taskset -c``. ``ensure_tools`` installs nginx and wrk with apt-get
when they are missing (as root; otherwise it says what to install). CPU time of a process tree comes
from /proc, so a run can say how busy the server and the load generator were.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cores: str | None) -> list[str]:
    return ["taskset", "-c", cores] if cores and shutil.which("taskset") else []


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=grace)

    def log_tail(self, n: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def wait_http(url: str, timeout: float = 20.0, service: Service | None = None, ok=(200,)) -> None:
    """Until ``url`` answers a status in ``ok``. A ``service`` that does not come up (it exited, the time ran
    out, or the wait was interrupted) is stopped before the error goes on: never left running."""
    try:
        _wait_http(url, timeout, service, ok)
    except BaseException:
        if service is not None:
            service.stop()
        raise


def _wait_http(url: str, timeout: float, service: Service | None, ok) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if service is not None and not service.alive():
            raise RuntimeError(f"{service.name} exited ({service.proc.returncode}): {service.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
            last = f"HTTP {e.code}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s ({last})")


# ------------------------------------------------------------------------------------ tools

def ensure_tools(names: tuple[str, ...] = ("nginx", "wrk")) -> None:
    """nginx (Debian's nginx-light, else nginx) and wrk, installed with apt-get if missing."""
    missing = [n for n in names if not _which(n)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"missing {', '.join(missing)}: install them (Debian: apt-get install -y "
                           f"nginx-light wrk) or run the harness as root")
    log(f"installing {', '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    packages = ["wrk"] if "wrk" in missing else []
    if "nginx" in missing:
        packages.append("nginx-light")
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, stdout=subprocess.DEVNULL)
    if done.returncode != 0 and "nginx-light" in packages:
        packages[packages.index("nginx-light")] = "nginx"
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    still = [n for n in names if not _which(n)]
    if still:
        raise RuntimeError(f"could not install {', '.join(still)}")
    # Debian's package may start a system nginx on port 80; the bench never uses it (its own prefix).


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
                                      None)


def tool_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name, cmd in (("nginx", ["nginx", "-v"]), ("wrk", ["wrk", "--version"]),
                      ("redis", ["redis-server", "--version"])):
        exe = _which(cmd[0])
        if not exe:
            continue
        r = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True)
        text = (r.stdout + r.stderr).strip().splitlines()
        out[name] = text[0].split(" Copyright")[0].split(" sha=")[0] if text else "?"
    return out


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, AttributeError):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gb": mem_gb, "kernel": os.uname().release,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


# ------------------------------------------------------------------------------- CPU time

def cpu_pressure() -> float | None:
    """/proc/pressure/cpu 'some avg10': % of time some task waited for a CPU (other work on the machine)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, user+system seconds) of ``pid``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its live descendants."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in table:
            total += table[p][1]
        todo.extend(c for c, (pp, _) in table.items() if pp == p)
    return total


# ---------------------------------------------------------------------------------- services

def start_standin(tmp: Path, secret: str, delay_ms: float = 20, cores: str | None = None) -> Service:
    log_path = tmp / "standin.log"
    env = dict(os.environ, JWT_SECRET_KEY=secret, STANDIN_RATE_LIMIT="100000000")
    proc = subprocess.Popen([*pinned(cores), sys.executable, "-m", "standin", "--listen", "127.0.0.1:0",
                             "--delay-ms", str(delay_ms)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=open(log_path, "wb"), stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("standin listening on "):
        proc.kill()
        raise RuntimeError(f"stand-in did not start: {line!r} {log_path.read_text()[-2000:]}")
    svc = Service("standin", proc, line.removeprefix("standin listening on "), log_path)
    wait_http(svc.url + "/_standin/health", service=svc)
    return svc


def start_redis(tmp: Path, cores: str | None = None) -> Service:
    port = free_port()
    log_path = tmp / f"redis-{port}.log"
    proc = subprocess.Popen([*pinned(cores), "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp),
                             "--maxmemory-policy", "noeviction"],
                            cwd=tmp, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    svc = Service("redis", proc, f"redis://127.0.0.1:{port}/0", log_path, {"port": port})
    import redis

    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or not svc.alive():
                svc.stop()
                raise RuntimeError(f"redis-server did not start: {svc.log_tail()}")
            time.sleep(0.05)
    client.close()
    return svc


def proxy_has_workers() -> bool:
    r = subprocess.run([sys.executable, "-m", "proxy", "serve", "--help"], cwd=ROOT, capture_output=True, text=True)
    return "--workers" in r.stdout


def start_proxy(tmp: Path, name: str, upstream: str, secret: str, admin_token: str, redis_url: str | None = None,
                workers: int = 1, cores: str | None = None, rules: Path | None = None,
                settings: dict[str, str] | None = None) -> Service:
    """``settings``: more environment settings of the proxy (e.g. ``L1_MAX_BYTES``)."""
    port = free_port()
    log_path = tmp / f"proxy-{name}.log"
    env = dict(os.environ, JWT_SECRET_KEY=secret, CACHE_ADMIN_TOKEN=admin_token, LOG_FORMAT="json",
               PENDING_PURGES_FILE=str(tmp / f"pending-{name}"))
    for var in ("REDIS_URL", "UPSTREAM_URL", "RULES_PATH", "CACHE_MODE", "LISTEN"):
        env.pop(var, None)
    env.update(settings or {})
    cmd = [*pinned(cores), sys.executable, "-m", "proxy", "serve", "--upstream", upstream,
           "--listen", f"127.0.0.1:{port}", "--rules", str(rules or ROOT / "rules.yaml")]
    if redis_url:
        cmd += ["--redis", redis_url]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
                            stdin=subprocess.DEVNULL)
    svc = Service(f"proxy-{name}", proc, f"http://127.0.0.1:{port}", log_path,
                  {"store": ("redis-cluster" if "cluster" in redis_url else "redis") if redis_url else "memory", "workers": workers, "rules": str(rules or "rules.yaml")})
    wait_http(svc.url + "/readyz", service=svc)
    return svc


def rules_with_l1(tmp: Path, rules: tuple[str, ...], l1_ttl: int = 60) -> Path:
    """A copy of rules.yaml in ``tmp`` where each rule named in ``rules`` gets ``l1_ttl`` (the line
    ``    l1_ttl: <n>`` inserted after the rule's ``key:`` line)."""
    return rules_with(tmp, "rules-l1.yaml", {name: [f"l1_ttl: {l1_ttl}"] for name in rules})


def rules_with(tmp: Path, filename: str, additions: dict[str, list[str]]) -> Path:
    """A copy of rules.yaml as ``tmp/filename`` where each rule named in ``additions`` gets those lines
    (e.g. ``"l1_ttl: 60"``, ``"vary_query: [v]"``), inserted after the rule's ``key:`` line."""
    lines = (ROOT / "rules.yaml").read_text().splitlines(keepends=True)
    out, current, done = [], None, set()
    for line in lines:
        out.append(line)
        m = re.match(r"\s*- name:\s*([A-Za-z0-9_]+)", line)
        if m:
            current = m.group(1)
        elif current in additions and current not in done and re.match(r"\s+key:", line):
            out.extend(f"    {extra}\n" for extra in additions[current])
            done.add(current)
    missing = set(additions) - done
    if missing:
        raise RuntimeError(f"rules.yaml: no key: line found for {', '.join(sorted(missing))}")
    path = tmp / filename
    path.write_text("".join(out))
    return path


def rules_with_defaults(tmp: Path, filename: str, lines: list[str]) -> Path:
    """A copy of rules.yaml as ``tmp/filename`` with ``lines`` (e.g. ``"refresh_after_purge: true"``)
    added at the top of its ``defaults:`` block."""
    text = (ROOT / "rules.yaml").read_text()
    m = re.search(r"^defaults:[ \t]*\n", text, re.MULTILINE)
    if m is None:
        raise RuntimeError("rules.yaml: no defaults: block")
    path = tmp / filename
    path.write_text(text[:m.end()] + "".join(f"  {line}\n" for line in lines) + text[m.end():])
    return path


# What every benchmark nginx shares: one process tree under {prefix}, no access log, temp paths there.
NGINX_HEAD = """\
worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
"""
NGINX_CONF = NGINX_HEAD + """\
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=katiba:32m max_size=1g inactive=2h use_temp_path=off;
    upstream backend {{ server {backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location /api/v1/ {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache katiba;
            # per-user routes: the token is part of the key (as our proxy keys on the verified user)
            proxy_cache_key "$request_method$request_uri$http_authorization";
            proxy_cache_valid 200 1h;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            proxy_cache_methods GET HEAD;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""


def start_nginx(tmp: Path, backend_url: str, workers: int = 1, cores: str | None = None,
                template: str = NGINX_CONF) -> Service:
    """nginx with ``template`` (NGINX_CONF by default) as its configuration; a template may use
    ``{base_port}``, a second free port."""
    exe = _which("nginx")
    if not exe:
        raise RuntimeError("nginx not installed")
    port = free_port()
    prefix = tmp / f"nginx-{port}"
    prefix.mkdir()
    backend = backend_url.removeprefix("http://").rstrip("/")
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(template.format(workers=workers, prefix=prefix, port=port, backend=backend, user=user,
                                    base_port=free_port()))
    log_path = prefix / "stderr.log"
    proc = subprocess.Popen([*pinned(cores), exe, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    svc = Service("nginx", proc, f"http://127.0.0.1:{port}", prefix / "error.log", {"workers": workers})
    # Any answer from the backend through nginx says it is up (the backend may want a token: 401).
    wait_http(svc.url + "/api/v1/achievements/types", service=svc, ok=(200, 401))
    return svc


class ClusterService:
    """A 6-node Redis Cluster (3 primaries, 1 replica each) started with the test suite's
    ``tests/cluster/harness.py`` (``LocalCluster``: ``redis-server --cluster-enabled yes --save ""
    --appendonly no`` on free ports, ``redis-cli --cluster create ... --cluster-replicas 1``, then a
    wait for ``cluster_state:ok``). Looks like a ``Service`` to ``Bench.close()``: ``stop()`` kills the
    six redis-server processes this started. ``pids``: all six, so a run counts the whole cluster's CPU."""

    def __init__(self, cluster) -> None:
        self.name = "redis-cluster"
        self.cluster = cluster
        self.url = cluster.url
        self.log_path = None
        self.extra = {"nodes": [n.port for n in cluster.nodes]}

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(n.proc.pid for n in self.cluster.nodes if n.proc is not None)

    @property
    def pid(self) -> int:
        return self.pids[0]

    def alive(self) -> bool:
        return all(n.running for n in self.cluster.nodes)

    def stop(self, grace: float = 5.0) -> None:
        self.cluster.stop()

    def log_tail(self, n: int = 20) -> str:
        return ""


def start_redis_cluster(tmp: Path, cores: str | None = None) -> ClusterService:
    """Six cluster nodes in ``tmp/redis-cluster``; with ``cores``, each redis-server is pinned there
    (``sched_setaffinity`` once it runs, as ``taskset -c`` pins the single redis-server)."""
    for exe in ("redis-server", "redis-cli"):
        if not shutil.which(exe):
            raise RuntimeError(f"{exe} not found on PATH: the cluster target needs it (Debian: redis-server, "
                               "redis-tools)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.cluster.harness import LocalCluster

    workdir = tmp / "redis-cluster"
    workdir.mkdir(exist_ok=True)
    cluster = LocalCluster(workdir)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    svc = ClusterService(cluster)
    if cores and hasattr(os, "sched_setaffinity"):
        cpus = {int(c) for c in cores.split(",")}
        for pid in svc.pids:
            os.sched_setaffinity(pid, cpus)
    return svc
