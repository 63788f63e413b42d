"""Issue 20, item 4: what an operator meets in the first hour with ``cache-proxy``: expected failures as
one clean line (never a traceback), messages that say what to type, ``explain`` masking the user id
both offline and against a running proxy, ``stats`` showing reloads, shadow figures and every worker,
the demo's admin token, and a port already in use."""
from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.ops.cli import main

from .conftest import ADMIN, PROFILE, RULES_PATH, mint

REPO = Path(__file__).resolve().parents[2]
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
USER = "3f1c9a7e-5b2d-4e8f-9a61-00c0ffee4242"


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``cache-proxy ARGV`` in a thread (it runs its own event loop); (exit code, stdout, stderr)."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "CACHE_ADMIN_TOKEN", "PROMETHEUS_MULTIPROC_DIR", "WORKERS")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ expected failures: one line


@pytest.mark.parametrize("argv", [
    ("purge", "--all", "--redis", DEAD_REDIS),
    ("purge", "user:{u1}:*", "--redis", DEAD_REDIS),
    ("stats", "--redis", DEAD_REDIS),
])
def test_an_unreachable_store_is_one_line_and_no_traceback(argv):
    """As a user runs it (a process of its own): stderr is exactly one line, the exit code non-zero."""
    done = subprocess.run([sys.executable, "-m", "proxy", *argv, "--rules", RULES_PATH] if argv[0] == "purge"
                          else [sys.executable, "-m", "proxy", *argv], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "127.0.0.1:1" in lines[0] or "unavailable" in lines[0], lines


async def test_purge_without_a_store_mentions_url(capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, out, err = await cli(capsys, "purge", "user:{u1}:*", "--rules", RULES_PATH)
    assert code == 2 and out == ""
    assert "--redis" in err and "--url" in err, err


@pytest.mark.parametrize("where", [("--redis", "redis://127.0.0.1:1/0"), ("--url", "http://127.0.0.1:1")])
async def test_purge_all_with_a_pattern_is_refused(capsys, where):
    code, out, err = await cli(capsys, "purge", "--all", "user:{u1}:*", *where, "--rules", RULES_PATH)
    assert code == 2 and out == "", (code, out, err)
    assert "--all" in err and "PATTERN" in err and "not both" in err, err


async def test_an_unbraced_user_id_is_refused_with_the_form_to_type(capsys, make_proxy):
    """Decision: refuse (``achievements:global:*`` shows that an unbraced segment can be a literal), and
    name the literal pattern for the value given, via ``--redis`` and via ``--url`` alike."""
    code, out, err = await cli(capsys, "purge", "user:123:*", "--redis", DEAD_REDIS, "--rules", RULES_PATH)
    assert code == 1 and out == ""
    assert "user:{123}:*" in err, err
    ops = await make_proxy()
    code, out, err = await cli(capsys, "purge", "achievements:123:*", "--url", ops.base, "--admin-token", ADMIN)
    assert code == 1 and out == ""
    assert "achievements:{123}:*" in err, err
    status, _, body = await ops.request("POST", "/_cache/purge", headers=ops.admin(),
                                        json={"pattern": "user:123:*"})
    assert status == 400 and "user:{123}:*" in body["detail"], body


# --------------------------------------------------------------------------- explain masking


async def test_explain_url_masks_the_user_id_like_offline_explain(capsys, make_proxy, monkeypatch):
    ops = await make_proxy()
    assert await ops.x_cache(PROFILE, USER) == "MISS"
    code, out, err = await cli(capsys, "explain", "GET", PROFILE, "--url", ops.base, "--admin-token", ADMIN,
                               "--token", mint(USER))
    assert code == 0, err
    assert "katiba360:proxy:user:{…4242}:profile" in out and USER not in out, out
    code, out, err = await cli(capsys, "explain", "GET", PROFILE, "--url", ops.base, "--admin-token", ADMIN,
                               "--token", mint(USER), "--json")
    result = json.loads(out)
    assert result["x_cache"] == "HIT" and USER not in out, out
    assert result["identity"]["user_id"] == "…4242"


# ------------------------------------------------------------------------------- admin token


async def test_a_wrong_admin_token_is_said_to_be_refused(capsys, make_proxy):
    ops = await make_proxy()
    code, _, err = await cli(capsys, "stats", "--url", ops.base, "--admin-token", "not-the-token")
    assert code == 1
    assert "refused" in err and "required" not in err, err
    status, _, body = await ops.get("/_cache/stats", headers={"Authorization": "Bearer not-the-token"})
    assert status == 403 and "refused" in body["detail"], body


# -------------------------------------------------------------------------------------- stats


async def test_stats_text_shows_reloads(capsys, make_proxy):
    ops = await make_proxy()
    assert ops.proxy.reload_rules()
    code, out, err = await cli(capsys, "stats", "--url", ops.base, "--admin-token", ADMIN)
    assert code == 0, err
    assert "reloads: success 1, failure 0" in out, out


async def test_stats_text_in_shadow_mode_shows_the_would_be_hits(capsys, make_proxy):
    ops = await make_proxy(cache_mode="shadow")
    for _ in range(3):  # would-miss, then two would-hit-match
        status, _, _ = await ops.get(PROFILE, "shadow-stats-user")
        assert status == 200
    code, out, err = await cli(capsys, "stats", "--url", ops.base, "--admin-token", ADMIN)
    assert code == 0, err
    assert "mode shadow" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("shadow"))
    row = next(line for line in lines[header:] if line.startswith("user_profile"))
    # rule, requests, would-hit, would-stale, mismatches, would-miss, would-hit rate
    assert row.split() == ["user_profile", "3", "2", "0", "0", "1", "66.7%"], out
    code, out, _ = await cli(capsys, "stats", "--url", ops.base, "--admin-token", ADMIN, "--json")
    shadow = json.loads(out)["shadow"]["user_profile"]
    assert shadow == {"would-hit-match": 2, "would-miss": 1}, shadow


# --------------------------------------------------------------------------------------- demo


def test_demo_prints_its_admin_token_and_a_purge_that_works(tmp_path):
    port = _free_port()
    env = _env()
    env.pop("JWT_SECRET_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo", "--listen", f"127.0.0.1:{port}"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        printed = []
        while not printed or "Ctrl-C" not in printed[-1]:
            line = proc.stdout.readline()
            assert line, f"the demo stopped early: {printed}"
            printed.append(line.rstrip("\n"))
        text = "\n".join(printed)
        assert "demo-admin-token" in text, text
        command = next(line.strip() for line in printed if line.strip().startswith("cache-proxy purge"))
        argv = shlex.split(command)[1:]
        assert "--admin-token" in argv and "--url" in argv, command
        for _ in range(200):  # the proxy listens a moment after the banner
            done = subprocess.run([sys.executable, "-m", "proxy", *argv], cwd=REPO, env=_env(),
                                  capture_output=True, text=True, timeout=30)
            if "cannot reach" not in done.stderr:
                break
            time.sleep(0.05)
        assert done.returncode == 0 and done.stdout.startswith("purged "), (done.stdout, done.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        proc.stdout.close()


# ------------------------------------------------------------------------------- port in use


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_one_error_line_and_exit_1(workers, redis_url):
    more = ("--workers", "2", "--redis", redis_url) if workers > 1 else ()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "proxy", "serve", "--upstream", "http://127.0.0.1:1",
                               "--listen", f"127.0.0.1:{port}", "--rules", RULES_PATH, *more], cwd=REPO,
                              env=_env(PENDING_PURGES_FILE="off"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line["level"] in ("error", "critical")]
    assert [e["event"] for e in errors] == ["start_failed"], done.stderr
    assert str(port) in errors[0]["error"] or "in use" in errors[0]["error"], errors
    assert "Unclosed" not in done.stderr and "Traceback" not in done.stderr, done.stderr


# ------------------------------------------------------------------------- stats, two workers


@pytest.fixture
def standin_process(tmp_path):
    """The stand-in backend as its own process (the workers are forked processes too)."""
    with open(tmp_path / "standin.log", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "standin", "--listen", "127.0.0.1:0"], cwd=REPO,
                                env=_env(), stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("standin listening on "), line
        yield line.removeprefix("standin listening on ")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def _get_status(url: str, token: str | None = None) -> int:
    """One request on a connection of its own, so the kernel picks a worker each time."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_stats_with_two_workers_counts_the_whole_instance(tmp_path, standin_process, redis_url):
    port = _free_port()
    env = _env(JWT_SECRET_KEY=str(__import__("standin").DEFAULT_SECRET), CACHE_ADMIN_TOKEN=ADMIN,
               PENDING_PURGES_FILE="off")
    with open(tmp_path / "proxy.log", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--upstream", standin_process,
                                 "--listen", f"127.0.0.1:{port}", "--rules", RULES_PATH, "--redis", redis_url,
                                 "--workers", "2"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):  # bounded wait for both workers to listen
            assert proc.poll() is None, (tmp_path / "proxy.log").read_text()
            if (tmp_path / "proxy.log").read_text().count('"event":"listening"') == 2:
                break
            time.sleep(0.05)
        token = mint("two-workers-stats")
        sent = 40  # 40 connections: the kernel spreads them over both workers
        assert all(_get_status(f"{base}{PROFILE}", token) == 200 for _ in range(sent))
        stats = {}
        for _ in range(30):  # each worker adds its tallies to the shared figures within a second
            done = subprocess.run([sys.executable, "-m", "proxy", "stats", "--url", base, "--admin-token", ADMIN,
                                   "--json"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            stats = json.loads(done.stdout)
            if stats["rules"]["user_profile"]["requests"] == sent:
                break
            time.sleep(0.1)
        row = stats["rules"]["user_profile"]
        assert row["requests"] == sent, row  # one worker's share alone is about half
        assert row["miss"] + row["hit"] + row["stale"] == sent and row["miss"] >= 1, row
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("typed, meant", [
    ("user:123:*", "user:{123}:*"),
    ("achievements:123:*", "achievements:{123}:*"),
    ("user:123:profile", "user:{123}:profile"),  # an exact key
    ("user:{123:*", "user:{123}:*"),
    ("user:{123}:*", None),  # right already
    ("achievements:global:*", None),  # right already: a literal, not a value
    ("user:*", None),
    ("*", None),
    ("user:}{:*", None),
    ("user:a*b:*", None),
    ("user:1:2:*", None),
    ("nope:123:*", None),
])
def test_the_braced_form_is_suggested_only_where_one_namespace_fits(typed, meant):
    from proxy.core.explain import suggest_pattern
    from proxy.core.rulesfile import load_rules

    assert suggest_pattern(typed, load_rules(RULES_PATH)) == meant
