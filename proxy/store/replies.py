"""What both Redis stores (redis.py, cluster.py) make of Redis's replies and failures: any Redis, socket
or timeout failure raised as ``StoreUnavailable``, the server's ``run_id`` (to tell a restart or a
failover), and plain text out of bytes.
"""
from __future__ import annotations

import asyncio
import functools
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import quote

from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from ..core.errors import StoreUnavailable

T = TypeVar("T")


def raising_unavailable(failures: tuple[type[BaseException], ...], convert: Callable[[BaseException], StoreUnavailable]):
    """A decorator re-raising any of ``failures`` from the coroutine method as ``convert(exc)``, a
    ``StoreUnavailable`` (this store's, and the cluster store's with its own failures)."""

    def decorate(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return await method(*args, **kwargs)
            except failures as exc:
                raise convert(exc) from exc

        return wrapper

    return decorate


STORE_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


def as_unavailable(exc: BaseException) -> StoreUnavailable:
    error = StoreUnavailable(str(exc) or type(exc).__name__)
    # The server answered (e.g. OOM under ``noeviction``): not a sign that it is down or replaced.
    # READONLY is: we are talking to a replica, i.e. a failover happened.
    error.answered = isinstance(exc, ResponseError) and not isinstance(exc, ReadOnlyError)
    return error


async def connection_run_id(connection) -> str:
    """The ``run_id`` of the server behind a fresh redis-py connection, or "" when ``INFO`` is refused
    (ACL) or unsupported: then restarts cannot be told apart."""
    try:
        await connection.send_command("INFO", "server")
        return run_id(await connection.read_response())
    except ResponseError:
        return ""


def run_id(info: bytes | str | dict) -> str:
    """The ``run_id`` of an ``INFO server`` reply (raw or parsed); "" if it has none."""
    if isinstance(info, dict):
        return text(info.get("run_id")) or ""
    lines = info.decode() if isinstance(info, bytes) else info
    for line in lines.splitlines():
        if line.startswith("run_id:"):
            return line[7:].strip()
    return ""


def quote_param(value: str) -> str:
    return quote(str(value), safe="")


def text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode()


def reply(future: asyncio.Future) -> Any:
    """A done pipeline future's reply, or its failure as StoreUnavailable."""
    if future.cancelled():
        raise StoreUnavailable("lookup cancelled")
    exc = future.exception()
    if exc is not None:
        raise as_unavailable(exc) if isinstance(exc, STORE_FAILURES) else exc
    return future.result()
