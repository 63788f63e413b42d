"""Command line of the stand-in backend.

``python -m standin --listen 127.0.0.1:PORT [--delay-ms 20] [--db PATH|:memory:] [--rate-limit N]``

Prints nothing on stdout except, once listening, exactly one line
``standin listening on http://HOST:PORT`` (flushed; with port 0 the real port is printed).
Stops cleanly on SIGINT/SIGTERM. The JWT secret comes from env ``JWT_SECRET_KEY`` (or
``JWT_SECRET_KEY_FILE``), else ``standin.DEFAULT_SECRET``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

from . import DEFAULT_RATE_LIMIT
from .app import build_app


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m standin", description="katiba360 stand-in backend")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8001), metavar="HOST:PORT",
                   help="address to listen on; port 0 picks a free one (default 127.0.0.1:8001)")
    p.add_argument("--delay-ms", type=float, default=20.0, help="simulated DB latency per request")
    p.add_argument("--db", default=":memory:", help="sqlite path or :memory: (default)")
    p.add_argument("--rate-limit", type=int, default=None,
                   help=f"requests per caller per minute (default env STANDIN_RATE_LIMIT or {DEFAULT_RATE_LIMIT})")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    app = build_app(delay_ms=args.delay_ms, db_path=args.db, rate_limit=args.rate_limit)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    real_port = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    sys.stdout.write(f"standin listening on http://{shown}:{real_port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop  # optional, faster when present
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
