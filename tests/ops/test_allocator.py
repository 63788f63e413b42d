"""Issue 21: ``cache-proxy serve`` runs under glibc's malloc with transparent huge pages (``HUGE_PAGES``,
proxy/ops/allocator.py): the choice of environment, and a real ``serve`` process that re-executes itself
into it, keeps its pid, says so in its ``listening`` line and holds huge pages."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.ops.allocator import TUNABLE, THP_MODE, allocator_environment, describe

from .test_cli_rough_edges import REPO, _env, _free_port

GLIBC = ("glibc", "2.36")


def test_by_default_serve_asks_for_glibc_malloc_with_huge_pages():
    chosen = allocator_environment({"PATH": "/usr/bin"}, GLIBC)
    assert chosen == {"PATH": "/usr/bin", "PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": TUNABLE}


def test_the_operators_own_glibc_tunables_are_kept():
    chosen = allocator_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC)
    assert chosen["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"


@pytest.mark.parametrize("environ, libc", [
    ({"HUGE_PAGES": "0"}, GLIBC),  # turned off
    ({"PYTHONMALLOC": "pymalloc"}, GLIBC),  # the operator chose already
    ({}, ("glibc", "2.31")),  # no glibc.malloc.hugetlb yet
    ({}, ("", "")),  # musl (Alpine), or a libc Python cannot name
    ({}, ("glibc", "unknown")),
])
def test_nothing_changes_where_the_choice_is_not_ours_or_cannot_work(environ, libc):
    assert allocator_environment(environ, libc) is None


def test_describe_says_what_runs():
    assert describe({}) == {"allocator": "pymalloc", "huge_pages": "off"}
    shown = describe({"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": TUNABLE})
    assert shown["allocator"] == "malloc" and shown["huge_pages"] == _kernel_thp_mode()


def _kernel_thp_mode() -> str:
    try:
        return THP_MODE.read_text().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return "unavailable"


def _serve(tmp_path: Path, **settings: str) -> tuple[subprocess.Popen, dict, Path]:
    """A real ``python -m proxy serve`` (memory store); its ``listening`` log line once it listens."""
    log_path = tmp_path / f"proxy-{len(list(tmp_path.iterdir()))}.log"
    env = _env(JWT_SECRET_KEY="allocator-test-secret-0123456789abcdef", PENDING_PURGES_FILE="off", **settings)
    for name in ("PYTHONMALLOC", "GLIBC_TUNABLES", "HUGE_PAGES"):
        if name not in settings:
            env.pop(name, None)
    with open(log_path, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--upstream", "http://127.0.0.1:1",
                                 "--listen", f"127.0.0.1:{_free_port()}"], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    for _ in range(400):  # bounded wait for the listener
        assert proc.poll() is None, log_path.read_text()
        for line in log_path.read_text().splitlines():
            if '"event":"listening"' in line:
                return proc, json.loads(line), log_path
        time.sleep(0.05)
    raise AssertionError(f"no listening line: {log_path.read_text()}")


def _environ_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def _huge_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError("no AnonHugePages line")


def test_serve_reexecutes_itself_under_malloc_with_huge_pages_keeping_its_pid(tmp_path):
    proc, listening, _ = _serve(tmp_path)
    try:
        environ = _environ_of(proc.pid)  # the pid the supervisor started is the one serving
        assert environ.get("PYTHONMALLOC") == "malloc" and environ.get("GLIBC_TUNABLES") == TUNABLE, environ
        mode = _kernel_thp_mode()
        assert listening["allocator"] == "malloc" and listening["huge_pages"] == mode, listening
        if mode in ("always", "madvise"):  # the kernel grants them: the heap is backed by 2 MiB pages
            assert _huge_kib(proc.pid) >= 2048
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("settings, allocator", [
    ({"HUGE_PAGES": "0"}, "pymalloc"),
    ({"PYTHONMALLOC": "pymalloc"}, "pymalloc"),
])
def test_serve_keeps_pythons_allocator_when_told_to(tmp_path, settings, allocator):
    proc, listening, _ = _serve(tmp_path, **settings)
    try:
        assert TUNABLE not in _environ_of(proc.pid).get("GLIBC_TUNABLES", "")
        assert listening["allocator"] == allocator and listening["huge_pages"] == "off", listening
        if _kernel_thp_mode() == "madvise":  # nobody asked for them
            assert _huge_kib(proc.pid) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
