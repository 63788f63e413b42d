"""Running wrk with the bench's Lua scripts, and what comes back.

``run_wrk`` starts ``wrk`` (pinned with taskset when ``cores`` is given), bounded in time (``-d``) and,
for scripts that count responses, in count (``BENCH_MAX`` per thread); the script's ``done()`` writes
a JSON report (bench/lua/common.lua) that is read back into a ``Run``. The CPU time wrk used comes from
``wait4``'s rusage, and the server's from /proc, so a result says whether the client core was saturated.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import cpu_pressure, pinned, tree_cpu

LUA_DIR = Path(__file__).resolve().parent / "lua"


@dataclass
class Run:
    label: str
    requests: int
    duration_s: float
    rps: float
    percentiles_ms: dict[str, float]  # "50" -> ms
    errors: dict[str, int]
    bytes_per_response: float
    client_cpu: float | None = None  # share of one core used by the load generator
    server_cpu: float | None = None  # share of one core used by the server process tree
    server_cpu_s_by_pid: dict[int, float] = field(default_factory=dict)  # CPU seconds of each of ``server_pids``' trees
    routes: dict = field(default_factory=dict)  # katiba: per-route raw data
    extra: dict = field(default_factory=dict)

    def p(self, q: float) -> float:
        return self.percentiles_ms[_pkey(q)]

    def summary(self) -> dict:
        out = {"label": self.label, "requests": self.requests, "duration_s": round(self.duration_s, 3),
               "rps": round(self.rps, 1),
               "latency_ms": {k: round(v, 3) for k, v in self.percentiles_ms.items()},
               "errors": self.errors, "bytes_per_response": round(self.bytes_per_response, 1),
               "client_cpu": _r(self.client_cpu), "server_cpu": _r(self.server_cpu)}
        out.update(self.extra)
        return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _pkey(q: float) -> str:
    return f"{q:g}"


def run_wrk(url: str, *, script: str, connections: int, duration: float, threads: int = 1,
            headers: dict[str, str] | None = None, env: dict[str, str] | None = None, max_per_thread: int = 0,
            rate: float = 0.0, cores: str | None = "1", server_pids: tuple[int, ...] = (), label: str = "",
            timeout_s: float = 5.0) -> Run:
    threads = max(1, min(threads, connections))
    fd, out_path = tempfile.mkstemp(prefix="wrk-", suffix=".json")
    os.close(fd)
    run_env = dict(os.environ, BENCH_OUT=out_path, BENCH_LUA_DIR=str(LUA_DIR), BENCH_THREADS=str(threads),
                   BENCH_MAX=str(max_per_thread), BENCH_RATE=str(rate))
    run_env.update(env or {})
    cmd = [*pinned(cores), "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
           "--timeout", f"{timeout_s:g}s", "-s", str(LUA_DIR / script)]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(url)
    server_before = {p: tree_cpu(p) for p in server_pids}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = started + duration + 60
    markers = Path(out_path).parent.glob  # threads that reached their count leave "<out>.done.<id>"
    status, interrupted = None, False
    while status is None:
        pid, st, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status = st
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"wrk did not finish: {' '.join(cmd)}")
        if not interrupted and max_per_thread and len(list(markers(Path(out_path).name + ".done.*"))) >= threads:
            proc.send_signal(signal.SIGINT)  # every thread is done: end the run before its time bound
            interrupted = True
        time.sleep(0.05)
    for marker in markers(Path(out_path).name + ".done.*"):
        marker.unlink()
    elapsed = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    spent = {p: tree_cpu(p) - before for p, before in server_before.items()}
    server_cpu = sum(spent.values()) / elapsed if server_pids else None
    try:
        report = json.loads(Path(out_path).read_text())
    except (OSError, ValueError):
        raise RuntimeError(f"wrk produced no report (exit {proc.returncode}): {stdout[-1500:]} {stderr[-1500:]}")
    finally:
        os.unlink(out_path)
        routes = _collect_lines(out_path)
    duration_s = report["duration_us"] / 1e6
    requests = report["requests"]
    client_cpu = (usage.ru_utime + usage.ru_stime) / elapsed
    return Run(label=label, requests=requests, duration_s=duration_s, rps=requests / duration_s if duration_s else 0.0,
               percentiles_ms={_pkey(p): v / 1000 for p, v in report["percentiles_us"]},
               errors=report["errors"], bytes_per_response=report["bytes"] / requests if requests else 0.0,
               client_cpu=client_cpu, server_cpu=server_cpu, server_cpu_s_by_pid=spent, routes=routes,
               extra={"cpu_pressure_avg10": cpu_pressure(), **{k: v for k, v in report.items() if k not in REPORT_KEYS}})


# What common.lua's write_report always writes; a script's own extra fields (e.g. keyspace.lua's "prefill"
# counts) go into Run.extra.
REPORT_KEYS = {"duration_us", "requests", "bytes", "errors", "latency_us", "percentiles_us"}


def _collect_lines(out_path: str) -> dict:
    """Per-thread response lines ("route X-Cache status latency_us") into per-route counts and latencies."""
    routes: dict[str, dict] = {}
    for part in sorted(Path(out_path).parent.glob(Path(out_path).name + ".t*")):
        with open(part, encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) != 4:
                    continue
                name, xcache, status, lat = fields
                r = routes.get(name)
                if r is None:
                    r = routes[name] = {"count": 0, "xcache": {}, "status": {}, "lat_us": []}
                r["count"] += 1
                r["xcache"][xcache] = r["xcache"].get(xcache, 0) + 1
                r["status"][status] = r["status"].get(status, 0) + 1
                r["lat_us"].append(float(lat))
        part.unlink()
    return routes
