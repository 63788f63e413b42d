"""Packaging and the read-only, non-root runtime: `pip wheel .` builds a wheel with the default rules.yaml
inside (a file, not the repository's symlink), installable in a venv where `cache-proxy --version` and
`cache-proxy check` work from any directory (pipx's layout); and the proxy runs on a read-only root
filesystem with a tmpfs /tmp as an unprivileged user (what the Docker image and compose.yaml do), two
workers and a Redis store included, writing nothing elsewhere."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import aiohttp
import pytest

from tests.functional.conftest import auth

from .conftest import RULES_PATH, ROOT, SECRET, free_port, subprocess_env, wait_ready

SOURCES = ("pyproject.toml", "README.md", "rules.yaml", "proxy", "standin")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    assert (src / "proxy" / "rules.yaml").is_symlink()  # as in the repository
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(out), "--no-deps", "-q"],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = list(out.glob("katiba_cache-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


def test_the_wheel_holds_the_default_rules_as_a_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo("proxy/rules.yaml")
        assert not stat.S_ISLNK(info.external_attr >> 16)
        assert archive.read(info) == (ROOT / "rules.yaml").read_bytes()
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        assert "cache-proxy = proxy.ops.cli:main" in archive.read(entry_points).decode()


def _site_dirs_of_this_interpreter() -> list[str]:
    """Where the running interpreter finds the dependencies: its own site-packages, whether it is a
    base interpreter or a venv (`venv --system-site-packages` would see the base, not an outer venv)."""
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]


def test_installed_in_a_venv_the_command_works_from_anywhere(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The dependencies come from the environment running the tests (offline: no index); plain path lines,
    # so an editable install of the checkout there (its own .pth) is not picked up.
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "dependencies-of-the-test-run.pth").write_text("\n".join(_site_dirs_of_this_interpreter()) + "\n")
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    clean_env = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH, no VIRTUAL_ENV of the test run
    run = lambda *args: subprocess.run([str(venv / "bin" / "cache-proxy"), *args], capture_output=True,  # noqa: E731
                                       text=True, timeout=60, cwd=empty, env=clean_env)
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("cache-proxy 0."), out
    out = run("check")  # no rules.yaml here: the copy inside the package
    assert out.returncode == 0, out.stderr
    assert str(venv) in out.stdout and "proxy/rules.yaml: ok" in out.stdout, out.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import proxy; print(proxy.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=empty, env=clean_env)
    assert where.stdout.startswith(str(venv)), where  # the wheel's copy, not the checkout


# The one writable place is a fresh tmpfs at $TMPDIR (the image's /tmp); it is not /tmp itself, since the
# checkout under test may live below /tmp and must stay visible.
READ_ONLY = "mount -o remount,bind,ro / && mount -t tmpfs -o mode=1777 tmpfs \"$TMPDIR\" && "
# As root: a mount namespace, then uid 10001 (CAP_DAC_READ_SEARCH: the interpreter may live under /root).
AS_ROOT = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
           READ_ONLY + "exec setpriv --reuid 10001 --regid 10001 --clear-groups "
           "--inh-caps +dac_read_search --ambient-caps +dac_read_search \"$@\"", "sh")
# As a user (already unprivileged): a user namespace lets it mount; it stays itself outside of it.
AS_USER = ("unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "sh", "-c",
           READ_ONLY + "exec \"$@\"", "sh")


async def test_runs_read_only_as_an_unprivileged_user_writing_only_to_tmp(backend, redis_url, tmp_path):
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.fail("util-linux's unshare and setpriv are needed for this test", pytrace=False)
    port = free_port()
    writable = tmp_path / "tmp"
    writable.mkdir()
    env = subprocess_env(JWT_SECRET_KEY=SECRET, HOME="/nonexistent", PENDING_PURGES_FILE="", TMPDIR=str(writable))
    # the unprivileged user can read (CAP_DAC_READ_SEARCH: the interpreter lives under /root) but not write
    proc = await asyncio.create_subprocess_exec(
        *(AS_ROOT if os.geteuid() == 0 else AS_USER),
        sys.executable, "-m", "proxy", "serve", "--upstream", backend.url, "--rules", RULES_PATH,
        "--listen", f"127.0.0.1:{port}", "--redis", redis_url, "--workers", "2", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT))
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base + "/readyz")
        user = str(uuid.uuid4())
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(4):
                async with session.get(base + "/api/v1/users/profile", headers=auth(user)) as resp:
                    statuses.append((resp.status, resp.headers["X-Cache"]))
            assert statuses[0] == (200, "MISS") and (200, "HIT") in statuses[1:]
            async with session.get(base + "/metrics") as resp:  # multiprocess metrics live in /tmp
                assert resp.status == 200 and "katiba_cache_requests_total" in await resp.text()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "Read-only file system" not in text and "Permission denied" not in text, text[-3000:]
    assert '"level":"error"' not in text, text[-3000:]
