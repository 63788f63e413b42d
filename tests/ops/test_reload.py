"""Hot reload of the rules: ``RequestPath.reload_rules`` (SIGHUP), the file watcher of ``cache-proxy serve``.

Covers: a cut TTL applies to entries already stored (freshness uses the current rule; the proxy's clock
is moved instead of sleeping), a changed key template or vary_query never serves entries written under
the old one, an invalid file is refused (file:line errors in the log, ``reloads_total{result="failure"}``)
while the old rules keep answering, the watcher reloads on a change of the file, and a real
``cache-proxy serve`` process reloads on SIGHUP with JSON log lines carrying the request id.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time

import aiohttp
import pytest

import standin
from proxy.ops.runner import watch_rules

from .conftest import ADMIN, PROFILE, SECRET, auth, metric_value, poll

RULES = """version: 1
prefix: "ops-reload"
defaults: {auth: required, cache_when: {status: [200], json: {path: header.responseCode, between: [200, 299]}}}
rules:
  - name: user_profile
    match: GET /api/v1/users/profile
    key: "@KEY@"
    ttl: @TTL@
    vary_query: @VARY@
  - name: update_profile
    match: PUT /api/v1/users/profile
    purge: ["user:{user_id}:*"]
"""

INVALID = """version: 1
prefix: "ops-reload"
rules:
  - name: user_profile
    match: GET /api/v1/users/profile
    key: "user:{user_id}:profile"
    ttl: soon
    colour: blue
"""


def rules_text(key: str = "user:{user_id}:profile", ttl: int = 3600, vary: str = "[]") -> str:
    return RULES.replace("@KEY@", key).replace("@TTL@", str(ttl)).replace("@VARY@", vary)


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(rules_text())
    return path


async def test_cut_ttl_applies_to_stored_entries_at_once(make_proxy, backend, rules_file):
    ops = await make_proxy(rules_file)
    proxy, user = ops.proxy, "reload-ttl-user"
    assert await ops.x_cache(PROFILE, user) == "MISS"
    assert await ops.x_cache(PROFILE, user) == "HIT"
    start = time.time()
    proxy.clock = lambda: start + 100  # the entry is now 100 s old
    assert await ops.x_cache(PROFILE, user) == "HIT"  # ttl 3600
    assert await backend.count(PROFILE) == 1

    rules_file.write_text(rules_text(ttl=60))
    assert proxy.reload_rules() is True
    assert proxy.rules.by_name("user_profile").ttl == 60
    assert await ops.x_cache(PROFILE, user) == "MISS"  # 100 s old, ttl now 60: not served
    assert await backend.count(PROFILE) == 2
    assert await ops.x_cache(PROFILE, user) == "HIT"  # the new entry, stored at the proxy's clock
    proxy.clock = lambda: start + 100 + 61
    assert await ops.x_cache(PROFILE, user) == "MISS"  # new entries follow the new ttl too
    assert await backend.count(PROFILE) == 3
    assert await ops.metric("katiba_cache_reloads_total", result="success") == 1


@pytest.mark.parametrize("change", [{"key": "user:{user_id}:profile_v2"}, {"vary": "[lang]"}],
                         ids=["key-template", "vary-query-same-stored-key"])
async def test_changed_key_template_never_serves_old_entries(make_proxy, backend, rules_file, change):
    ops = await make_proxy(rules_file)
    user = "reload-key-user"
    assert await ops.x_cache(PROFILE, user) == "MISS"
    assert await ops.x_cache(PROFILE, user) == "HIT"
    rules_file.write_text(rules_text(**change))
    assert ops.proxy.reload_rules() is True
    status, _, explained = await ops.get(f"/_cache/explain?url={PROFILE}&user_id={user}", headers=ops.admin())
    assert status == 200, explained
    assert explained["x_cache"] == "MISS"
    if "vary" in change:  # same stored key, other fingerprint: the entry is there and refused
        assert explained["entry"]["state"] == "rule-changed", explained
    assert await ops.x_cache(PROFILE, user) == "MISS"
    assert await backend.count(PROFILE) == 2
    assert await ops.x_cache(PROFILE, user) == "HIT"


async def test_invalid_file_is_refused_and_old_rules_stay(make_proxy, backend, rules_file, caplog):
    ops = await make_proxy(rules_file)
    user = "reload-invalid-user"
    assert await ops.x_cache(PROFILE, user) == "MISS"
    rules_file.write_text(INVALID)
    with caplog.at_level(logging.ERROR, logger="proxy"):
        assert ops.proxy.reload_rules() is False
    refused = [r for r in caplog.records if getattr(r, "event", None) == "reload_failed"]
    assert len(refused) == 1
    errors = refused[0].errors
    assert any(e.startswith(f"{rules_file}:7: ") and "ttl" in e for e in errors), errors
    assert any(e.startswith(f"{rules_file}:8: ") and "colour" in e for e in errors), errors
    assert await ops.metric("katiba_cache_reloads_total", result="failure") == 1
    assert await ops.metric("katiba_cache_reloads_total", result="success") == 0
    assert ops.proxy.rules.prefix == "ops-reload" and ops.proxy.rules.by_name("update_profile") is not None
    assert await ops.x_cache(PROFILE, user) == "HIT"  # the old rules still answer
    assert await backend.count(PROFILE) == 1


async def test_watcher_reloads_when_the_file_changes(make_proxy, backend, rules_file):
    ops = await make_proxy(rules_file)
    stop = asyncio.Event()
    watcher = asyncio.get_running_loop().create_task(watch_rules(ops.proxy, str(rules_file), stop, debounce_ms=20))
    edits = 0

    def rewrite(text: str) -> None:
        nonlocal edits
        edits += 1  # a new comment each time: the watcher may start after the first write
        tmp = rules_file.with_suffix(".tmp")
        tmp.write_text(f"{text}# edit {edits}\n")
        os.replace(tmp, rules_file)  # the way editors and ConfigMaps replace a file

    async def reloaded(result: str, test=lambda: True) -> bool:
        if await ops.metric("katiba_cache_reloads_total", result=result) >= 1 and test():
            return True
        rewrite(current)
        await asyncio.sleep(0.05)
        return False

    try:
        current = rules_text(ttl=42)
        await poll(lambda: reloaded("success", lambda: ops.proxy.rules.by_name("user_profile").ttl == 42),
                   "the watcher reloads the changed file")
        current = INVALID
        await poll(lambda: reloaded("failure"), "the watcher refuses the invalid file")
        assert ops.proxy.rules.by_name("user_profile").ttl == 42  # still the last good rules
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 10)


async def test_watcher_follows_a_configmap_symlink_swap(make_proxy, backend, tmp_path):
    """Kubernetes mounts `rules.yaml -> ..data/rules.yaml`, `..data -> ..<timestamp>/` and updates by
    swapping `..data`: no event names rules.yaml, yet the rules changed."""
    mount = tmp_path / "configmap"
    mount.mkdir()
    (mount / "..v1").mkdir()
    (mount / "..v1" / "rules.yaml").write_text(rules_text())
    (mount / "..data").symlink_to("..v1")
    (mount / "rules.yaml").symlink_to("..data/rules.yaml")
    ops = await make_proxy(mount / "rules.yaml")
    stop = asyncio.Event()
    watcher = asyncio.get_running_loop().create_task(
        watch_rules(ops.proxy, str(mount / "rules.yaml"), stop, debounce_ms=20))
    versions = 0

    async def swapped() -> bool:
        nonlocal versions
        if ops.proxy.rules.by_name("user_profile").ttl == 42:
            return True
        versions += 1  # a new version each time: the watcher may start after the first swap
        version = mount / f"..v{versions + 1}"
        version.mkdir()
        (version / "rules.yaml").write_text(f"{rules_text(ttl=42)}# version {versions}\n")
        (mount / "..data_tmp").symlink_to(version.name)
        os.replace(mount / "..data_tmp", mount / "..data")
        await asyncio.sleep(0.05)
        return False

    try:
        await poll(swapped, "the watcher reloads after the ..data swap")
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``cache-proxy serve`` in a child process, in front of an in-process stand-in backend."""

    def __init__(self, proc, base: str, session: aiohttp.ClientSession, log_path):
        self.proc, self.base, self.session, self.log_path = proc, base, session, log_path

    async def x_cache(self, rid: str = "") -> str:
        headers = auth("served-user") | ({"X-Request-ID": rid} if rid else {})
        async with self.session.get(self.base + PROFILE, headers=headers) as resp:
            assert resp.status == 200
            return resp.headers["X-Cache"]

    async def reloads(self, result: str) -> float:
        async with self.session.get(f"{self.base}/metrics") as resp:
            return metric_value(await resp.text(), "katiba_cache_reloads_total", result=result)

    async def reloaded(self, result: str, n: int = 1) -> bool:
        return await self.reloads(result) >= n

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]  # JSON lines only


@contextlib.asynccontextmanager
async def serve(aiohttp_server, tmp_path, rules_file, *flags: str):
    backend = await aiohttp_server(standin.build_app(delay_ms=0))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CACHE_MODE", "RULES_PATH", "WATCH_RULES")}
    env.update(JWT_SECRET_KEY=SECRET, CACHE_ADMIN_TOKEN=ADMIN, ACCESS_LOG="1")
    log_path = tmp_path / "proxy.log"
    with open(log_path, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--upstream", f"http://127.0.0.1:{backend.port}",
            "--rules", str(rules_file), "--listen", f"127.0.0.1:{port}", *flags,
            env=env, stdout=log_file, stderr=log_file, stdin=asyncio.subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            async def ready() -> bool:
                assert proc.returncode is None, log_path.read_text()
                try:
                    async with session.get(f"{base}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await poll(ready, "the proxy starts", attempts=1000)
            yield Served(proc, base, session, log_path)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0, log_path.read_text()


async def test_sighup_reloads_a_running_proxy(aiohttp_server, tmp_path, rules_file):
    async with serve(aiohttp_server, tmp_path, rules_file, "--no-watch-rules") as served:
        assert await served.x_cache() == "MISS"
        assert await served.x_cache("ops-rid-1") == "HIT"

        rules_file.write_text(rules_text(key="user:{user_id}:profile_v2"))
        served.proc.send_signal(signal.SIGHUP)
        await poll(lambda: served.reloaded("success"), "SIGHUP reloads the rules")
        assert await served.x_cache() == "MISS"  # entries of the old key template are not served
        assert await served.x_cache() == "HIT"

        rules_file.write_text(INVALID)
        served.proc.send_signal(signal.SIGHUP)
        await poll(lambda: served.reloaded("failure"), "SIGHUP refuses the invalid file")
        assert await served.x_cache() == "HIT"  # the last good rules still answer
        assert await served.reloads("success") == 1
    lines = served.log_lines()
    assert all({"ts", "level", "event"} <= set(line) for line in lines), lines
    refused = [line for line in lines if line["event"] == "reload_failed"]
    assert len(refused) == 1 and any(e.startswith(f"{rules_file}:7: ") for e in refused[0]["errors"]), refused
    access = [line for line in lines if line["event"] == "access" and line.get("request_id") == "ops-rid-1"]
    assert len(access) == 1 and access[0]["result"] == "hit", access
    assert all(line.get("request_id") for line in lines if line["event"] == "access")
    assert not any(line["event"] == "rules_changed" for line in lines)  # --no-watch-rules: SIGHUP only


async def test_serve_reloads_when_the_file_changes(aiohttp_server, tmp_path, rules_file):
    async with serve(aiohttp_server, tmp_path, rules_file) as served:
        assert await served.x_cache() == "MISS"
        edits = 0

        async def changed(result: str, text: str) -> bool:
            nonlocal edits
            if await served.reloaded(result):
                return True
            edits += 1  # new content each time: the watcher may start after the first write
            rules_file.write_text(f"{text}# edit {edits}\n")
            await asyncio.sleep(0.05)
            return False

        text = rules_text(key="user:{user_id}:profile_v2")
        await poll(lambda: changed("success", text), "the file change is picked up")
        assert await served.x_cache() == "MISS"
        assert await served.x_cache() == "HIT"
    assert any(line["event"] == "rules_changed" for line in served.log_lines())


async def test_a_log_file_beside_the_rules_does_not_feed_the_watcher(aiohttp_server, tmp_path, rules_file):
    """The natural setup `serve ... > proxy.log 2>&1` next to rules.yaml: the proxy's own log lines must
    not count as changes (the watcher library's "1 change detected" at info used to change the folder,
    which logged again, forever). One real edit gives one `rules_changed` line."""
    assert (tmp_path / "proxy.log").parent == rules_file.parent  # serve() logs into the rules folder
    async with serve(aiohttp_server, tmp_path, rules_file) as served:
        edits = 0

        async def picked_up() -> bool:
            nonlocal edits
            if await served.reloaded("success"):
                return True
            edits += 1  # new content each time: the watcher may start after the first write
            rules_file.write_text(f"{rules_text()}# warm-up edit {edits}\n")
            await asyncio.sleep(0.05)
            return False

        await poll(picked_up, "the watcher is running")

        def events(name: str) -> int:
            return sum(1 for line in served.log_lines() if line["event"] == name)

        async def settle(polls: int = 20) -> None:
            for _ in range(polls):  # a bounded number of polls: a loop would keep writing lines meanwhile
                await served.reloads("success")
                await asyncio.sleep(0.05)

        await settle()
        before_reloads, before_changed = await served.reloads("success"), events("rules_changed")
        quiet_before = [line for line in served.log_lines() if line["event"] != "access"]
        await settle()
        quiet_after = [line for line in served.log_lines() if line["event"] != "access"]
        assert quiet_after == quiet_before, quiet_after[len(quiet_before):][:5]  # nothing changed: nothing logged

        rules_file.write_text(rules_text(ttl=60))  # one real edit
        await poll(lambda: served.reloaded("success", int(before_reloads) + 1), "the edit is picked up")
        await settle()
        assert await served.reloads("success") == before_reloads + 1
        assert events("rules_changed") == before_changed + 1
    lines = served.log_lines()
    flood = [line for line in lines if "change detected" in json.dumps(line)]
    assert not flood, flood[:3]
    assert events("rules_changed") == before_changed + 1
