"""Graceful shutdown of ``python -m proxy serve`` on SIGTERM, as real processes: the proxy in front of
the stand-in, one slow request held by the stand-in's gate. After SIGTERM the proxy says not-ready
(``/readyz`` 503 during ``SHUTDOWN_DELAY``) and stops accepting, the in-flight request still completes
with 200, and the process exits 0. A request that outlives ``SHUTDOWN_GRACE`` is cut off; still exit 0."""
from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import jwt
import pytest

import standin

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "/api/v1/users/profile"
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Stack:
    """The stand-in and the proxy as child processes; everything is killed at the end."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []
        self.backend = self.url = ""

    def start(self, **env: str) -> None:
        base = {**os.environ, "JWT_SECRET_KEY": standin.DEFAULT_SECRET, "PENDING_PURGES_FILE": "off"}
        backend = self._spawn("standin", ["-m", "standin", "--listen", "127.0.0.1:0"], base, stdout=subprocess.PIPE)
        line, deadline = b"", time.monotonic() + START_TIMEOUT
        while not line.endswith(b"\n") and time.monotonic() < deadline and backend.poll() is None:
            if select.select([backend.stdout], [], [], 0.1)[0]:
                line += os.read(backend.stdout.fileno(), 4096)
        assert line.startswith(b"standin listening on "), line
        self.backend = line.decode().strip().removeprefix("standin listening on ")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proxy = self._spawn("proxy", ["-m", "proxy", "serve", "--upstream", self.backend, "--listen",
                                           f"127.0.0.1:{self.port}", "--rules", str(ROOT / "rules.yaml")],
                                 {**base, **env})

    def _spawn(self, name: str, argv: list[str], env: dict, stdout=None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=stdout or log, stderr=log)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        return (self.tmp / "proxy.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    s.close()


async def until(predicate, what: str, attempts: int = 400, interval: float = 0.025) -> None:
    for _ in range(attempts):
        if await predicate():
            return
        await asyncio.sleep(interval)
    pytest.fail(f"never happened: {what}")


async def status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0


async def start_held_request(stack: Stack, session: aiohttp.ClientSession) -> asyncio.Task:
    """The proxy up, then one GET held at the stand-in (it read its data and waits for the release)."""
    async def ready() -> bool:
        assert stack.proxy.poll() is None, stack.log()
        return await status(session, stack.url + "/readyz") == 200
    await until(ready, "the proxy is ready", attempts=int(START_TIMEOUT / 0.025))
    async with session.post(stack.backend + "/_standin/gate", json={"method": "GET", "path": PROFILE}) as resp:
        assert resp.status == 200
    token = jwt.encode({"sub": "shutdown-user", "exp": int(time.time()) + 600}, standin.DEFAULT_SECRET,
                       algorithm="HS256")

    async def slow():
        async with session.get(stack.url + PROFILE, headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, resp.headers.get("X-Cache"), await resp.json()
    task = asyncio.create_task(slow())

    async def held() -> bool:
        async with session.get(stack.backend + "/_standin/gate") as resp:
            return (await resp.json())["waiting"] >= 1
    await until(held, "the request is held at the backend")
    return task


async def release(stack: Stack, session: aiohttp.ClientSession) -> None:
    async with session.post(stack.backend + "/_standin/gate/release") as resp:
        assert resp.status == 200


async def exit_code(proc: subprocess.Popen) -> int:
    async def exited() -> bool:
        return proc.poll() is not None
    await until(exited, "the proxy exited", attempts=800)
    return proc.returncode


async def test_sigterm_stops_accepting_finishes_in_flight_and_exits_0(stack):
    stack.start()
    async with aiohttp.ClientSession() as session:
        in_flight = await start_held_request(stack, session)
        stack.proxy.send_signal(signal.SIGTERM)

        async def refusing() -> bool:
            return not accepts(stack.port)
        await until(refusing, "the listener is closed")
        assert not in_flight.done()
        await release(stack, session)
        code, x_cache, body = await asyncio.wait_for(in_flight, 10)
        assert code == 200 and x_cache == "MISS" and body["header"]["responseCode"] == 200
    assert await exit_code(stack.proxy) == 0, stack.log()
    assert '"event":"shutdown"' in stack.log() and '"event":"stopped"' in stack.log()


async def test_sigterm_reports_not_ready_before_closing(stack):
    stack.start(SHUTDOWN_DELAY="3")
    async with aiohttp.ClientSession() as session:
        in_flight = await start_held_request(stack, session)
        stack.proxy.send_signal(signal.SIGTERM)

        async def not_ready() -> bool:
            return await status(session, stack.url + "/readyz") == 503
        await until(not_ready, "/readyz answers 503")
        await release(stack, session)
        code, _, _ = await asyncio.wait_for(in_flight, 10)
        assert code == 200
    assert await exit_code(stack.proxy) == 0, stack.log()


async def test_a_request_longer_than_the_grace_is_cut_and_the_exit_is_still_0(stack):
    stack.start(SHUTDOWN_GRACE="0.5")
    async with aiohttp.ClientSession() as session:
        in_flight = await start_held_request(stack, session)
        stack.proxy.send_signal(signal.SIGTERM)
        assert await exit_code(stack.proxy) == 0, stack.log()
        with pytest.raises(aiohttp.ClientError):  # the held request never got its answer
            await asyncio.wait_for(in_flight, 10)
        await release(stack, session)
