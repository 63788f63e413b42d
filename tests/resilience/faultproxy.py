"""A small asyncio TCP fault proxy for the resilience tests: put it between the proxy and Redis.

    fault = await FaultProxy.start("127.0.0.1", redis_port)
    store = RedisStore.from_url(fault.url)
    fault.delay = 0.2        # every chunk, both ways, is held this long (order kept per direction)
    fault.blackhole = True   # connections stay open, bytes are swallowed: a hung network path
    fault.cut()              # reset every open connection (a network break)
    fault.refuse = True      # new connections are closed at once (nothing listening behind it)
    fault.heal()             # back to a clean pipe
    await fault.close()

``connections`` counts accepted connections and ``chunks`` the chunks forwarded towards the target: a
test can assert that a client stopped asking (the count stops growing) without measuring time.
"""
from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.delay = 0.0
        self.blackhole = False
        self.refuse = False
        self.connections = 0
        self.chunks = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(cls, target_host: str, target_port: int) -> "FaultProxy":
        proxy = cls(target_host, target_port)
        proxy.server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        proxy.port = proxy.server.sockets[0].getsockname()[1]
        return proxy

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def heal(self) -> None:
        self.delay, self.blackhole, self.refuse = 0.0, False, False

    def cut(self) -> None:
        """Abort every open connection, both sides."""
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        tasks = [asyncio.create_task(self._pump(reader, up_writer, towards_target=True)),
                 asyncio.create_task(self._pump(up_reader, writer, towards_target=False))]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for w in (writer, up_writer):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()
            self._tasks.difference_update(tasks)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, towards_target: bool) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            if self.blackhole:
                continue  # swallowed: the sender waits for a reply that never comes
            if self.delay:
                await asyncio.sleep(self.delay)  # the injected fault itself, not synchronisation
            if towards_target:
                self.chunks += 1
            writer.write(data)
            await writer.drain()


async def _serve(target: str) -> None:
    """``python -m tests.resilience.faultproxy HOST:PORT``: prints ``listening PORT``, then obeys stdin
    lines ``delay SECONDS``, ``blackhole``, ``refuse``, ``cut``, ``heal`` (each answered ``ok``)."""
    import sys

    host, _, port = target.rpartition(":")
    proxy = await FaultProxy.start(host, int(port))
    print(f"listening {proxy.port}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "delay":
            proxy.delay = float(arg)
        elif cmd == "blackhole":
            proxy.blackhole = True
        elif cmd == "refuse":
            proxy.refuse = True
        elif cmd == "cut":
            proxy.cut()
        elif cmd == "heal":
            proxy.heal()
        print("ok", flush=True)
    await proxy.close()


if __name__ == "__main__":
    import sys

    asyncio.run(_serve(sys.argv[1]))
