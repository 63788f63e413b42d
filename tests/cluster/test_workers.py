"""``cache-proxy serve --workers N``, as a user runs it: two worker processes on one port (SO_REUSEPORT)
sharing a Redis. Both answer, entries and purges are shared, ``/metrics`` on any worker counts the
requests of all of them, SIGTERM stops everything with exit code 0; a killed worker is replaced; workers
that cannot bind stop the supervisor (exit 1); without Redis, N > 1 is refused (exit 2)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest

import standin
from tests.consistency.checker import _free_ports

REPO = Path(__file__).resolve().parents[2]
SECRET = standin.DEFAULT_SECRET
START_TIMEOUT = 20.0


def _get(url: str, token: str | None = None, method: str = "GET", body: dict | None = None):
    """(status, headers, JSON or text) on a new connection each time, so the kernel picks a worker."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode()


def _token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


@pytest.fixture
def standin_url(tmp_path):
    with open(tmp_path / "standin.log", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "standin", "--listen", "127.0.0.1:0"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("standin listening on "), line
        yield line.removeprefix("standin listening on ")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def _serve(tmp_path: Path, upstream: str, port: int, *args: str,
           env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"proxy-{port}.log"
    environ = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "WORKERS")}
    environ.update({"JWT_SECRET_KEY": SECRET, "CACHE_ADMIN_TOKEN": "admin", "PENDING_PURGES_FILE": "off",
                    **(env or {})})
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--upstream", upstream, "--listen",
                                 f"127.0.0.1:{port}", "--rules", str(REPO / "rules.yaml"), *args],
                                cwd=REPO, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    return proc, log


def _events(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _wait_listening(proc: subprocess.Popen, log: Path, workers: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
        if sum(1 for e in _events(log) if e.get("event") == "listening") == workers:
            return
        time.sleep(0.05)  # a bounded poll of the start-up log
    raise AssertionError(f"{workers} workers not listening within {START_TIMEOUT}s:\n{log.read_text()}")


def _sum(metrics: str, name: str, exclude_rule: str = "internal") -> float:
    total = 0.0
    for line in metrics.splitlines():
        m = re.match(rf'{name}\{{(.*)\}} (\S+)$', line)
        if m and f'rule="{exclude_rule}"' not in m.group(1):
            total += float(m.group(2))
    return total


def _backend_fetches(standin_url: str) -> dict[str, int]:
    """Requests that reached the stand-in backend, by method and route."""
    status, _, stats = _get(f"{standin_url}/_standin/stats")
    assert status == 200, stats
    return stats["by_route"]


WORKERS = 2


def test_two_workers_share_the_port_the_store_and_the_metrics(tmp_path, standin_url, redis_url):
    port = _free_ports(1)[0]
    proc, log = _serve(tmp_path, standin_url, port, "--redis", redis_url, "--workers", str(WORKERS))
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(proc, log, WORKERS)
        metrics_dir = next(e["metrics_dir"] for e in _events(log) if e.get("event") == "workers")
        sent = 0
        reader = _token("types-reader")  # a shared entry, served only to a valid token
        for _ in range(40):
            status, headers, _body = _get(f"{base}/api/v1/achievements/types", reader)
            assert status == 200
            sent += 1
        # One entry for all workers (the shared store). A miss is answered before its store write lands
        # (write-behind), so the other worker may miss once too before it sees the entry: what is
        # guaranteed is at most one backend fetch per worker, then hits whoever answers.
        token = _token("worker-user")
        results = []
        for _ in range(10):
            status, headers, body = _get(f"{base}/api/v1/users/profile", token)
            assert status == 200
            results.append(headers["X-Cache"])
            sent += 1
        assert set(results) <= {"MISS", "HIT"} and results[0] == "MISS", results
        assert 1 <= results.count("MISS") <= WORKERS and "HIT" in results, results
        fetched = _backend_fetches(standin_url)
        assert fetched["GET /api/v1/users/profile"] == results.count("MISS"), (fetched, results)
        assert 1 <= fetched["GET /api/v1/achievements/types"] <= WORKERS, fetched
        status, _, written = _get(f"{base}/api/v1/users/profile", token, "PUT", {"display_name": "two workers"})
        assert status == 200
        sent += 1
        for _ in range(6):  # the purge reached every worker: each answers the new name
            status, _, body = _get(f"{base}/api/v1/users/profile", token)
            assert body["body"]["display_name"] == "two workers"
            assert body["body"]["version"] >= written["body"]["version"]
            sent += 1

        # both workers wrote counters, and one scrape on any worker sums them
        writers = {re.match(r"counter_(\d+)\.db$", f).group(1) for f in os.listdir(metrics_dir)
                   if re.match(r"counter_(\d+)\.db$", f)}
        assert len(writers) == WORKERS, writers
        # Each worker adds its per-request figures to the shared files at least once a second
        # (proxy/core/metrics.py): poll, bounded, until the scrape has them all.
        for _ in range(50):
            status, _, metrics = _get(f"{base}/metrics")
            assert status == 200
            if _sum(metrics, "katiba_cache_requests_total") == sent:
                break
            time.sleep(0.1)
        assert _sum(metrics, "katiba_cache_requests_total") == sent
        # the summed misses are the backend's fetches, whichever worker made them, and the misses that waited
        # for the other worker's fetch (its lease was still held: the entry's write lands after the answer)
        misses = re.search(r'^katiba_cache_requests_total\{result="miss",rule="achievement_types"\} (\S+)$',
                           metrics, re.MULTILINE)
        waited = re.search(r'^katiba_cache_coalesced_waiters_total\{rule="achievement_types"\} (\S+)$',
                           metrics, re.MULTILINE)
        assert misses and float(misses.group(1)) == fetched["GET /api/v1/achievements/types"] + (
            float(waited.group(1)) if waited else 0), metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    events = [e.get("event") for e in _events(log)]
    assert events.count("stopped") == 3  # two workers and the supervisor
    assert not os.path.exists(metrics_dir)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_several_workers_without_redis_are_refused(tmp_path, standin_url, how):
    port = _free_ports(1)[0]
    args, env = (("--workers", "2"), None) if how == "flag" else ((), {"WORKERS": "2"})
    env = {**(env or {}), "REDIS_URL": ""}
    proc, log = _serve(tmp_path, standin_url, port, *args, env=env)
    assert proc.wait(timeout=30) == 2
    text = log.read_text()
    assert "memory store lives inside one process" in text and "listening" not in text, text


def test_an_invalid_worker_count_is_a_usage_error(tmp_path, standin_url, redis_url):
    proc, log = _serve(tmp_path, standin_url, _free_ports(1)[0], "--redis", redis_url, "--workers", "0")
    assert proc.wait(timeout=30) == 2
    assert "--workers must be a positive integer" in log.read_text()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def test_a_worker_that_dies_is_replaced(tmp_path, standin_url, redis_url):
    port = _free_ports(1)[0]
    proc, log = _serve(tmp_path, standin_url, port, "--redis", redis_url, "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(proc, log, 2)
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        _wait_listening(proc, log, 3)  # a third "listening": the replacement
        assert any(e.get("event") == "worker_exited" and e.get("code") == -signal.SIGKILL for e in _events(log))
        now = _children(proc.pid)
        assert len(now) == 2 and workers[0] not in now and workers[1] in now
        for _ in range(10):
            assert _get(f"{base}/api/v1/achievements/types", _token("types-reader"))[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()


def test_workers_that_cannot_start_stop_the_supervisor(tmp_path, standin_url, redis_url):
    import socket

    with socket.socket() as taken:  # bound without SO_REUSEPORT: the workers cannot share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc, log = _serve(tmp_path, standin_url, taken.getsockname()[1], "--redis", redis_url, "--workers", "2")
        assert proc.wait(timeout=30) == 1
    events = [e.get("event") for e in _events(log)]
    # checked before forking (workers.unbindable): one error line, not one per worker
    assert events.count("start_failed") == 1 and "listening" not in events, log.read_text()
