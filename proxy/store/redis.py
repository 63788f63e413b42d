"""The Redis store: entries, namespace generations and fill leases in one Redis (``redis://``, ``rediss://``).

This module owns the redis-py client, its connection pool and the Lua scripts that make the fill guard
atomic. Nothing Redis-specific leaves it: every ``RedisError``, ``OSError`` and ``asyncio.TimeoutError`` is
re-raised as ``proxy.errors.StoreUnavailable`` so callers can fail open to the backend.

Round trips per operation (each is one command on the server):

* ``lookup``             1  ``MGET key gen...`` (the entry and its guarding tokens together)
* ``ensure_generations`` 1  ``EVALSHA`` (GET each, SET the missing ones to fresh tokens)
* ``store_if_current``   1  ``EVALSHA`` (compare every token, then SET the entry and EXPIRE the tokens;
                            with ``lease``, the same script also drops the fill lease: no extra round trip)
* ``bump``               1  ``EVALSHA`` (SET every generation to a fresh token), whatever the entry count
* ``acquire_lease``      1  ``SET key owner NX PX ttl``
* ``release_lease``      1  ``EVALSHA`` (compare-and-delete)
* ``stats``              1  pipeline of ``DBSIZE``, ``INFO memory``, ``INFO stats`` (never on the request path)
* ``ping``               1  ``PING``
* ``verify``             1  ``INFO server`` (on a separate probe connection, off the request path); plus
                            one ``EVAL`` when the server's ``run_id`` is new (start-up, restart, failover)

The first time a server sees a script, ``EVALSHA`` answers ``NOSCRIPT`` and redis-py loads it
(``SCRIPT LOAD`` + ``EVALSHA``): two extra round trips, once per script per server start (on the
pipelined connection, one ``EVAL`` instead). Tokens are
generated in Python (``new_token``) and passed as ARGV, so the scripts are deterministic. Every key a
script touches is passed in KEYS, so the cluster variant can hash-tag them into one slot. No ``KEYS``, no
``SCAN``: a purge is a token replacement, never a deletion.

A miss costs ``MGET``, ``SET NX PX`` (the fill's lease) and one ``EVALSHA`` (store and drop the lease);
plus ``ensure_generations`` when a namespace has no generation yet. The lease, ``ensure_generations`` and
``store_if_current`` go over the hit path's auto-pipelined connection when it is up (far less client CPU
per call than redis-py's pool, which counts where proxy, Redis and backend share a core), otherwise, and
for entries over ``PIPELINED_MAX_VALUE``, through redis-py.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, Awaitable, Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from ..core.errors import StoreUnavailable
from . import replies
from .base import new_token
from .l1 import CHANNEL as L1_CHANNEL
from .pipeline import AutoPipeline, subscribe
from .replies import STORE_FAILURES, as_unavailable, connection_run_id, quote_param, raising_unavailable

log = logging.getLogger("proxy.store")

__all__ = ["RedisStore"]

DEFAULT_TIMEOUT = 0.25
DEFAULT_MAX_CONNECTIONS = 64
# Larger entries are written through redis-py: on the pipelined connection they would delay the hits'
# MGETs queued behind them.
PIPELINED_MAX_VALUE = 64 << 10
_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
_UNKNOWN_MASTER = ("", 0)  # the sentinels' answer before any was had (RedisStore._follow_named_master)
_SCHEMES = ("redis://", "rediss://")

_unavailable = raising_unavailable(STORE_FAILURES, as_unavailable)  # any Redis, socket or timeout failure


class RedisStore:
    name = "redis"

    # KEYS[1..n] - generation keys
    # ARGV[1]    - generation ttl in seconds (applied only to the ones created here)
    # ARGV[1+i]  - a fresh token for KEYS[i], used only if KEYS[i] is missing
    # return the token in force for each of KEYS, in order
    LUA_ENSURE_GENERATIONS = """
        local ttl = ARGV[1]
        local tokens = {}
        for i, key in ipairs(KEYS) do
            local token = redis.call('get', key)
            if not token then
                token = ARGV[i + 1]
                redis.call('set', key, token, 'ex', ttl)
            end
            tokens[i] = token
        end
        return tokens
    """

    # The guarded write, shared by both store scripts below: KEYS[FIRST..] are the generation keys and
    # ARGV[i + 2] the token KEYS[i] held before the origin fetch.
    _GUARDED_WRITE = """
        for i = FIRST, #KEYS do
            local token = redis.call('get', KEYS[i])
            if not token or token ~= ARGV[i + 2] then
                return 0
            end
        end
        local ttl = tonumber(ARGV[2])
        if ttl > 0 then
            redis.call('set', KEYS[1], ARGV[1], 'ex', ttl)
        else
            redis.call('del', KEYS[1])
        end
        for i = FIRST, #KEYS do
            redis.call('expire', KEYS[i], ARGV[3])
        end
        return 1
    """

    # KEYS[1]      - entry key
    # KEYS[1+i]    - generation keys guarding the entry
    # ARGV[1]      - encoded entry
    # ARGV[2]      - entry ttl in seconds (<= 0: the entry is dropped, as if written already expired)
    # ARGV[3]      - generation ttl in seconds
    # ARGV[3+i]    - the token KEYS[1+i] held before the origin fetch
    # return 1 if every generation still holds its token and the entry was written, otherwise 0
    LUA_STORE_IF_CURRENT = _GUARDED_WRITE.replace("FIRST", "2")

    # LUA_STORE_IF_CURRENT that also drops the fill's lease (if ``owner`` still holds it), whatever the
    # outcome: the fill's last round trip.
    # KEYS[1]      - entry key
    # KEYS[2]      - lease key
    # KEYS[2+i]    - generation keys guarding the entry
    # ARGV[1..3]   - as LUA_STORE_IF_CURRENT
    # ARGV[4]      - the lease owner token (one per fill)
    # ARGV[4+i]    - the token KEYS[2+i] held before the origin fetch
    # return 1 if every generation still holds its token and the entry was written, otherwise 0
    LUA_STORE_AND_RELEASE = """
        if redis.call('get', KEYS[2]) == ARGV[4] then
            redis.call('del', KEYS[2])
        end
    """ + _GUARDED_WRITE.replace("FIRST", "3")

    # KEYS[1..n]  - generation keys
    # ARGV[1]     - generation ttl in seconds
    # ARGV[1+i]   - the new token for KEYS[i]
    # ARGV[n+2]   - optional: a channel on which the bumped keys are published (L1 invalidation),
    #               in the same script so that no bump goes unannounced
    # return the number of generations replaced
    LUA_BUMP = """
        local ttl = ARGV[1]
        for i, key in ipairs(KEYS) do
            redis.call('set', key, ARGV[i + 1], 'ex', ttl)
        end
        local channel = ARGV[#KEYS + 2]
        if channel then
            redis.call('publish', channel, table.concat(KEYS, '\\n'))
        end
        return #KEYS
    """

    # KEYS[1] - lease key
    # ARGV[1] - owner token
    # return 1 if the lease was released, otherwise 0 (expired or held by someone else)
    LUA_RELEASE_LEASE = """
        local owner = redis.call('get', KEYS[1])
        if not owner or owner ~= ARGV[1] then
            return 0
        end
        redis.call('del', KEYS[1])
        return 1
    """

    # A lookup that takes the fill's lease in the same round trip if the entry is still the one the
    # caller found unusable: absent (ARGV[3] empty; a request seen for the first time), or the same
    # bytes (ARGV[3] their SHA-1; a fill waiting for another instance's). An entry stored meanwhile is
    # returned instead, so a waiter never fetches again what the lease holder has just stored.
    # KEYS[1]   - entry key
    # KEYS[2]   - lease key
    # KEYS[2+i] - generation keys
    # ARGV[1]   - the lease owner token; ARGV[2] - lease ttl in ms; ARGV[3] - as above
    # return MGET of the entry and the generations, then 1 if the lease was taken here, else 0
    LUA_LOOKUP_OR_LEASE = """
        local values = redis.call('mget', KEYS[1], unpack(KEYS, 3))
        local unchanged
        if values[1] then
            unchanged = ARGV[3] ~= '' and redis.sha1hex(values[1]) == ARGV[3]
        else
            unchanged = ARGV[3] == ''
        end
        local leased = 0
        if unchanged and redis.call('set', KEYS[2], ARGV[1], 'nx', 'px', ARGV[2]) then
            leased = 1
        end
        values[#values + 1] = leased
        return values
    """

    # KEYS[1] - the server marker (a hash, no TTL: it lives and dies with the dataset)
    # KEYS[2] - the global epoch
    # ARGV[1] - the server's run_id; ARGV[2] - a fresh epoch token; ARGV[3] - epoch ttl in seconds
    # return 1 if the epoch was bumped: the marker names another server (a restart that reloaded a
    # snapshot, or a promoted replica: purges may be missing), or it is gone while entries exist
    LUA_MARK_SERVER = """
        local seen = redis.call('hget', KEYS[1], 'run_id')
        if seen == ARGV[1] then
            return 0
        end
        local bumped = 0
        if seen or redis.call('exists', KEYS[2]) == 1 then
            redis.call('set', KEYS[2], ARGV[2], 'ex', ARGV[3])
            bumped = 1
        end
        redis.call('hset', KEYS[1], 'run_id', ARGV[1])
        return bumped
    """

    def __init__(self, client: aioredis.Redis, pipeline: AutoPipeline | None = None,
                 probe: aioredis.Redis | None = None):
        """Take ownership of ``client`` (created with ``decode_responses=False``); ``close`` closes it.
        ``pipeline``, when given, carries the hit path's ``MGET`` (see ``pipeline.py``); ``probe``, a
        small separate client for ``verify`` (default: ``client``).

        Server identity (see ``verify``): once ``verify`` has been called, the store serves only from
        the server it verified. A new pooled connection to another server (``run_id``) is refused, and
        a lost hit-path connection makes ``lookup`` fail fast until ``verify`` runs again; so after a
        restart or failover nothing is read before the proxy has had the chance to bump the epoch.
        """
        self.client = client
        self.pipeline = pipeline
        self.probe = probe or client
        self._armed = False  # verify() was called: check the server on every new connection
        self._verified: str | None = None  # run_id of the server verify() accepted
        self._suspect = False  # the hit path lost its connection: verify before the next lookup
        self._pipeline_was_up = False
        # Sentinel: asks the sentinels which master they name now (set by ``_from_sentinel_url``)
        self.named_master: Callable[[], Awaitable[tuple[str, int]]] | None = None
        self._master_named: tuple[str, int] | None = None
        self._ensure_generations = client.register_script(self.LUA_ENSURE_GENERATIONS)
        self._store_if_current = client.register_script(self.LUA_STORE_IF_CURRENT)
        self._store_and_release = client.register_script(self.LUA_STORE_AND_RELEASE)
        self._bump = client.register_script(self.LUA_BUMP)
        self._release_lease = client.register_script(self.LUA_RELEASE_LEASE)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "RedisStore":
        """Connect lazily to ``url``. Options: ``timeout`` (seconds, for connect, reads and waiting for a
        pooled connection; default 0.25) and ``max_connections`` (default 64); others are ignored."""
        if url.startswith(_CLUSTER_SCHEMES):
            raise ValueError("a Redis Cluster URL: use proxy.store.open_store (RedisClusterStore)")
        if url.startswith(_SENTINEL_SCHEMES):
            return cls._from_sentinel_url(url, **options)
        if not url.startswith(_SCHEMES):
            raise ValueError(f"unsupported Redis URL scheme (expected redis:// or rediss://): {url.split('://')[0]}://")
        from .redisconf import check_tls_files

        check_tls_files(url)  # a bad CA or certificate file fails here, naming the file
        timeout = options.get("timeout")
        timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        max_connections = options.get("max_connections") or DEFAULT_MAX_CONNECTIONS
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=int(max_connections),
            timeout=timeout,  # waiting for a free pooled connection counts as the store being slow
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=False,
            # One immediate retry on a broken connection (e.g. a pooled socket from before a Redis
            # restart); timeouts are not retried, so a hung server costs one ``timeout``, not several.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        probe = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                        decode_responses=False, max_connections=2,
                                        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
        store = cls(aioredis.Redis.from_pool(pool), AutoPipeline(url, connect_timeout=timeout, reply_timeout=timeout),
                    probe=probe)
        pool.connection_kwargs["redis_connect_func"] = store._on_connect  # every new pooled connection
        return store

    @classmethod
    def _from_sentinel_url(cls, url: str, **options: Any) -> "RedisStore":
        """``redis+sentinel://host:port[,host:port]/service[/db]``: the master only, never a replica (a
        replica may still hold a generation a purge already replaced). See ``proxy.redisconf``."""
        from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

        from .redisconf import parse_sentinel_url, tls_context

        parsed = parse_sentinel_url(url)
        timeout = options.get("timeout")
        timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        params = dict(parsed.params)
        tls = {}
        if parsed.ssl:
            tls_context(params)  # fail fast, naming the file
            tls = {"ssl": True, **{k: v for k, v in params.items() if k.startswith("ssl_")}}
            if "ssl_check_hostname" in tls:
                tls["ssl_check_hostname"] = str(tls["ssl_check_hostname"]).lower() in ("1", "true", "yes", "on")
        # No retries against a sentinel (redis-py's default backs off for seconds): fail fast to the backend.
        sentinel_kwargs = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                           "retry": Retry(NoBackoff(), 0), **tls}
        if params.get("sentinel_password"):
            sentinel_kwargs["password"] = params["sentinel_password"]
            sentinel_kwargs["username"] = params.get("sentinel_username") or None
        sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
        common = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "decode_responses": False,
                  "username": parsed.username, "password": parsed.password, "db": parsed.db,
                  "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), **tls}
        max_connections = int(options.get("max_connections") or params.get("max_connections")
                              or DEFAULT_MAX_CONNECTIONS)
        client = sentinel.master_for(parsed.service, redis_class=aioredis.Redis,
                                     connection_pool_class=SentinelConnectionPool,
                                     max_connections=max_connections, **common)
        probe = sentinel.master_for(parsed.service, redis_class=aioredis.Redis, max_connections=2, **common)

        async def master() -> tuple[str, int]:
            return await sentinel.discover_master(parsed.service)

        # The hit path's connection goes to the master the sentinels name at each (re)connect.
        credentials = ""
        if parsed.password is not None:
            from urllib.parse import quote

            credentials = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password, safe='')}@"
        query = "&".join(f"{k}={quote_param(v)}" for k, v in params.items() if k.startswith("ssl_"))
        pipeline_url = (f"{'rediss' if parsed.ssl else 'redis'}://{credentials}sentinel-master/{parsed.db}"
                        + (f"?{query}" if query else ""))
        store = cls(client, AutoPipeline(pipeline_url, connect_timeout=timeout, reply_timeout=timeout,
                                         resolver=master), probe=probe)
        store.sentinel = sentinel
        store.named_master = master
        client.connection_pool.connection_kwargs["redis_connect_func"] = store._on_connect
        return store

    async def _on_connect(self, connection) -> None:
        """A new pooled connection: the usual handshake, then refuse it if the server is not the verified one."""
        await connection.on_connect()
        if not self._armed:
            return
        if await connection_run_id(connection) != self._verified:
            self._suspect = True
            raise RedisConnectionError("the Redis server changed (restart or failover); not used until verified")

    async def verify(self, marker_key: str, epoch_key: str, epoch_ttl: int) -> bool:
        """Check which server answers (``INFO server`` ``run_id``) on the probe connection; for a server
        not seen before, compare it with the marker stored in the dataset and bump ``epoch_key`` if the
        dataset may have lost purges (``LUA_MARK_SERVER``). Returns True if this call bumped the epoch.

        Cost: one ``INFO`` while the server stays the same; plus one ``EVAL`` when it changes (and at
        start-up). Several proxies racing on one change bump once: the marker is compared atomically.
        """
        self._armed = True
        try:
            await self._follow_named_master()
            run_id = await self._server_run_id()
            bumped = False
            if run_id != self._verified:
                bumped = bool(await self.probe.eval(self.LUA_MARK_SERVER, 2, marker_key, epoch_key, run_id,
                                                    new_token(), int(epoch_ttl)))
                self._verified = run_id
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise StoreUnavailable(f"verify: {exc or type(exc).__name__}") from exc
        self._suspect = False
        self._pipeline_was_up = False  # the next hit-path connection goes to the server just verified
        return bumped

    async def _follow_named_master(self) -> None:
        """Sentinel: once the sentinels name another master, drop every connection to the one they named
        before, so that all of them reconnect to the new one. redis-py asks the sentinels only when it
        opens a connection, and an old master that was not demoted (cut off from the sentinels, or not yet
        reconfigured) keeps its clients and takes their writes: purges that the other proxies never see.
        Sentinels out of reach change nothing: the master in use is kept. Sentinels never reached yet leave
        no master to compare with, while connections are made all the same: the first master they name
        then counts as a change."""
        if self.named_master is None:
            return
        try:
            named = await self.named_master()
        except (RedisError, OSError, asyncio.TimeoutError):
            if self._master_named is None:  # connections are made meanwhile, to a master not known here:
                self._master_named = _UNKNOWN_MASTER  # the first one named must count as a change
            return
        if self._master_named is not None and named != self._master_named:
            previous = self._master_named
            log.warning("the sentinels name another master; reconnecting", extra={
                "event": "sentinel_master_changed",
                "previous": f"{previous[0]}:{previous[1]}" if previous != _UNKNOWN_MASTER else "unknown",
                "master": f"{named[0]}:{named[1]}"})
            self._suspect = True  # nothing is read before this verify has checked the new server
            if self.pipeline is not None:
                self.pipeline.close()
                self.pipeline.close_subscriptions()  # the L1's invalidations are published on the new one
            await self.client.connection_pool.disconnect()
            if self.probe is not self.client:
                await self.probe.connection_pool.disconnect()
        self._master_named = named

    async def _server_run_id(self) -> str:
        try:
            return replies.run_id(await self.probe.info("server"))
        except ResponseError:
            return ""

    def _piped(self) -> AutoPipeline | None:
        """The hit path's pipelined connection if it is up and its server verified (see ``lookup``)."""
        pipeline = self.pipeline
        if pipeline is None or pipeline.protocol is None or self._suspect:
            return None
        return pipeline

    async def _script(self, script, keys: list, args: list, piped: bool = True) -> Any:
        """Run a registered script: pipelined when that connection is up (``EVALSHA``, ``EVAL`` once on
        ``NOSCRIPT``), else through redis-py."""
        pipeline = self._piped() if piped else None
        if pipeline is None:
            return await script(keys=keys, args=args)
        try:
            return await pipeline.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await pipeline.execute("EVAL", script.script, len(keys), *keys, *args)

    # -- the contract ------------------------------------------------------------------------------
    @_unavailable
    async def lookup(self, key: str, gen_keys: Sequence[str]) -> tuple[bytes | None, list[str | None]]:
        if self.pipeline is not None:
            if self._armed:
                if self._pipeline_was_up and self.pipeline.protocol is None:
                    self._suspect = True  # lost since the last lookup: the server may have been replaced
                if self._suspect:
                    raise StoreUnavailable("connection to Redis lost; not used until the server is verified")
            values = await self.pipeline.execute("MGET", key, *gen_keys)
            self._pipeline_was_up = True
        else:
            values = await self.client.mget(key, *gen_keys)
        return self.lookup_result(values)

    def lookup_future(self, key: str, gen_keys: Sequence[str]) -> asyncio.Future | None:
        """``lookup``'s MGET as the auto-pipeline's future, with no coroutine or task around it, while
        that connection is up and trusted; None otherwise (then ``lookup`` reconnects or refuses).
        ``lookup_outcome`` gives its result."""
        pipeline = self._piped()
        if pipeline is None:
            return None
        self._pipeline_was_up = True
        return pipeline.submit("MGET", key, *gen_keys)

    def lookup_leasing_future(self, key: str, gen_keys: Sequence[str], lease_key: str, owner: str,
                              ttl_ms: int) -> asyncio.Future | None:
        """``lookup_future`` that also takes the fill's lease for ``owner`` if the entry is absent: a miss
        costs one round trip less. ``EVAL`` (the script text, cached by Redis under its hash), so a
        restarted server needs no reloading. ``lookup_leasing_outcome`` gives its result."""
        pipeline = self._piped()
        if pipeline is None:
            return None
        self._pipeline_was_up = True
        return pipeline.submit(*self._lookup_or_lease_command(key, gen_keys, lease_key, owner, ttl_ms, None))

    @_unavailable
    async def lookup_or_lease(self, key: str, gen_keys: Sequence[str], lease_key: str, owner: str, ttl_ms: int,
                              unusable: bytes | None) -> tuple[bytes | None, list[str | None], bool]:
        """The lookup, and the lease for ``owner`` if the entry is still ``unusable`` (None: absent), in
        one atomic step: what a fill waiting for another instance's asks each time it polls."""
        command = self._lookup_or_lease_command(key, gen_keys, lease_key, owner, ttl_ms, unusable)
        pipeline = self._piped()
        if pipeline is not None:
            values = await pipeline.execute(*command)
        else:
            values = await self.client.eval(*command[1:])
        return self._leased_result(values)

    def _lookup_or_lease_command(self, key: str, gen_keys: Sequence[str], lease_key: str, owner: str, ttl_ms: int,
                                 unusable: bytes | None) -> tuple:
        seen = "" if unusable is None else hashlib.sha1(unusable).hexdigest()
        return ("EVAL", self.LUA_LOOKUP_OR_LEASE, 2 + len(gen_keys), key, lease_key, *gen_keys, owner,
                max(1, int(ttl_ms)), seen)

    def _leased_result(self, values: list) -> tuple[bytes | None, list[str | None], bool]:
        return (*self.lookup_result(values[:-1]), values[-1] == 1)

    def lookup_outcome(self, future: asyncio.Future, key: str = "", gen_keys: Sequence[str] = ()
                       ) -> tuple[bytes | None, list[str | None]]:
        """``lookup``'s result from a done ``lookup_future``, or its StoreUnavailable (the MGET's reply
        holds the tokens in order: ``key`` and ``gen_keys`` are for stores that must place them)."""
        return self.lookup_result(replies.reply(future))

    def lookup_leasing_outcome(self, future: asyncio.Future) -> tuple[bytes | None, list[str | None], bool]:
        """(entry, tokens, whether the lease was taken) from a done ``lookup_leasing_future``."""
        return self._leased_result(replies.reply(future))

    @staticmethod
    def lookup_result(values: list) -> tuple[bytes | None, list[str | None]]:
        return values[0], [replies.text(v) for v in values[1:]]

    @_unavailable
    async def ensure_generations(self, gen_keys: Sequence[str], ttl: int) -> list[str]:
        if not gen_keys:
            return []
        fresh = [new_token() for _ in gen_keys]
        tokens = await self._script(self._ensure_generations, list(gen_keys), [int(ttl), *fresh])
        return [replies.text(t) for t in tokens]

    @_unavailable
    async def store_if_current(self, key: str, value: bytes, ttl: int, gen_keys: Sequence[str],
                               expected: Sequence[str], gen_ttl: int,
                               lease: tuple[str, str] | None = None) -> bool:
        if lease is not None:
            if len(expected) != len(gen_keys):
                expected = ["" for _ in gen_keys]  # a token is never empty: refused, the lease still dropped
            written = await self._script(self._store_and_release, [key, lease[0], *gen_keys],
                                         [value, int(ttl), int(gen_ttl), lease[1], *expected],
                                         len(value) <= PIPELINED_MAX_VALUE)
            return bool(written)
        if len(expected) != len(gen_keys):
            return False
        written = await self._script(self._store_if_current, [key, *gen_keys],
                                     [value, int(ttl), int(gen_ttl), *expected], len(value) <= PIPELINED_MAX_VALUE)
        return bool(written)

    @_unavailable
    async def bump(self, gen_keys: Sequence[str], ttl: int) -> None:
        if not gen_keys:
            return
        await self._script(self._bump, list(gen_keys), [int(ttl), *(new_token() for _ in gen_keys), L1_CHANNEL])

    def invalidations(self):
        """The L1 invalidation channel: ``[]`` once subscribed, then each bump's generation keys."""
        if self.pipeline is None:
            raise StoreUnavailable("no invalidation channel without the pipeline connection")
        return subscribe(self.pipeline, L1_CHANNEL)

    @_unavailable
    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        pipeline = self._piped()
        if pipeline is not None:
            return await pipeline.execute("SET", key, owner, "NX", "PX", max(1, int(ttl_ms))) is not None
        return bool(await self.client.set(key, owner, nx=True, px=max(1, int(ttl_ms))))

    @_unavailable
    async def release_lease(self, key: str, owner: str) -> None:
        await self._script(self._release_lease, [key], [owner])

    @_unavailable
    async def stats(self) -> dict:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.dbsize()
            pipe.info("memory")
            pipe.info("stats")
            entries, memory, stats = await pipe.execute()
        return {"entries": int(entries), "bytes": int(memory.get("used_memory", 0)),
                "evictions": int(stats.get("evicted_keys", 0)),
                "maxmemory": int(memory.get("maxmemory", 0)),
                "maxmemory_policy": replies.text(memory.get("maxmemory_policy"))}

    @_unavailable
    async def ping(self) -> None:
        await self.client.ping()

    @_unavailable
    async def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        if self.probe is not self.client:
            await self.probe.aclose(close_connection_pool=True)
        await self.client.aclose(close_connection_pool=True)
        for sentinel in getattr(getattr(self, "sentinel", None), "sentinels", ()):
            await sentinel.aclose()
