"""The Redis Cluster store (``redis+cluster://host:port[,host:port...]``, ``rediss+cluster://`` for TLS).

Same contract, Lua scripts and error mapping as ``RedisStore``, on redis-py's asyncio ``RedisCluster``
(it follows ``MOVED`` and ``ASK`` redirections itself). A script's KEYS must live in one slot: stored keys
carry a hash tag (``keys.py``: ``user:{42}:profile``, ``{achievements:global}:types``), so an entry, every
generation guarding it and its fill lease share one slot, and a hit stays one ``MGET`` on one node.

Round trips, each one command on the slot's primary: ``lookup`` 1 ``MGET`` (auto-pipelined per primary,
``pipeline.py``, and offered to the hit path as a future, ``lookup_future``; through redis-py when the
node answers ``MOVED``/``ASK``/``TRYAGAIN``), ``ensure_generations``
and ``store_if_current`` 1 ``EVALSHA`` (with ``lease``, the same script drops the fill lease), ``bump`` 1
``EVALSHA`` per slot named, leases 1 command; ``stats`` and ``ping`` ask every primary. redis-py's cluster
client fails a command rather than wait for a free connection of a node, so every call but the pipelined
lookups waits for one of ``max_connections`` slots first (a wait longer than ``timeout`` is a store failure).

*Global keys* (no hash tag: the epoch ``prefix:epoch``, which every entry records) live in no entry's
slot. Their tokens are cached in this process (globaltokens.py) and refreshed in the background every
``global_refresh`` seconds (default 1), and at once after this process bumps or creates them:

* ``lookup`` puts the cached token in the global key's position without asking Redis;
* ``store_if_current`` compares the expected global tokens with the cached ones and sends only the
  same-slot keys to its script; ``ensure_generations`` reads a cached token instead of creating it;
* ``bump`` writes the global key (in its own slot) and updates the cache.

So a ``purge --all`` (an epoch bump) done elsewhere reaches this process within ``global_refresh``
seconds (plus one round trip); purges of namespaces are as immediate as on one Redis. A cached token
older than three refresh periods (the background refresh failed) is read again before it is used.
Guards in another tagged slot than their entry (never produced by ``keys.py``) still work: they are
read with one ``MGET`` per slot and compared before the entry's script runs, and every lookup compares
them again, so such an entry can never answer after a purge; it only costs more round trips.

Never read from replicas: replication is asynchronous, so a replica may still hold a generation token
a purge has already replaced on its primary, and answering from it would serve purged entries.

Failover and restarts (``verify``): the store remembers the primaries it verified (node id and
``run_id``) and refuses a new connection to any other server (a promoted replica, a restarted
primary that came back empty), as ``RedisStore`` does for one server. A refused connection fails the
call (``StoreUnavailable``: the proxy answers from the backend and re-verifies); the hit path's
pipelined connections are checked the same way before their first command. ``verify`` reads
``CLUSTER NODES`` and each primary's ``INFO server``; when the set of primaries changed it bumps the
epoch once for all proxies (``LUA_MARK_CLUSTER``: a marker in the epoch's slot names the topology
that was last checked), since a promoted replica may lack the last purges of its old primary.
Resharding moves slots between verified primaries without loss and bumps nothing.

``require_full_coverage`` is off: while a failed primary's slots have no owner, calls for those slots
fail fast while the other primaries keep serving; no call is retried (the proxy fails open instead).
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, ReadOnlyError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, TryAgainError

from ..core.errors import LookupRedirected, StoreUnavailable
from ..core.memo import Memo
from .base import new_token
from .globaltokens import GlobalTokens
from .l1 import CHANNEL as L1_CHANNEL
from .pipeline import AutoPipeline, subscribe
from . import replies
from .redis import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT, RedisStore
from .replies import connection_run_id, raising_unavailable

__all__ = ["RedisClusterStore", "CLUSTER_SCHEMES", "parse_cluster_url"]

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
GLOBAL_REFRESH = 1.0
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")

T = TypeVar("T")


def _as_unavailable(exc: BaseException) -> StoreUnavailable:
    error = StoreUnavailable(str(exc) or type(exc).__name__)
    # Answered by a healthy server (e.g. OOM): not a sign of a topology change. Cluster states
    # (CLUSTERDOWN, TRYAGAIN, redirections left over) and READONLY are.
    error.answered = isinstance(exc, ResponseError) and not isinstance(
        exc, (ReadOnlyError, ClusterError, AskError, TryAgainError))
    return error


# Any Redis, cluster, socket or timeout failure. RuntimeError: redis-py closes every connection of the
# client on some cluster errors (CLUSTERDOWN during a failover); a command then in flight on another task
# finds its transport closed under it ("unable to perform operation on <TCPTransport closed=True>").
CLUSTER_FAILURES = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError, RuntimeError)
_unavailable = raising_unavailable(CLUSTER_FAILURES, _as_unavailable)
# A pipelined call's node did not answer: it may be gone (a failover), so the slots are asked again.
_NODE_GONE = (OSError, asyncio.TimeoutError, RedisConnectionError)


def parse_cluster_url(url: str) -> dict[str, Any]:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0][?ssl_ca_certs=...]`` -> seeds,
    credentials, ssl, and the query parameters (redis-py's TLS ones: ``ssl_ca_certs``, ``ssl_certfile``,
    ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``)."""
    if not url.startswith(CLUSTER_SCHEMES):
        raise ValueError("expected redis+cluster:// or rediss+cluster://")
    ssl = url.startswith("rediss+")
    rest, _, query = url.split("://", 1)[1].partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    seeds = []
    for part in hosts.split(","):
        parts = urlsplit(f"//{part.strip()}")
        if not parts.hostname:
            raise ValueError(f"invalid Redis Cluster node {part!r} in the URL")
        seeds.append((parts.hostname, parts.port or 6379))
    db = path.strip("/")
    if db not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0")
    username = password = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username, password = (unquote(user) or None, unquote(secret)) if sep else (None, unquote(user))
    return {"seeds": seeds, "ssl": ssl, "username": username, "password": password,
            "params": dict(parse_qsl(query))}


def _tagged(key: str) -> bool:
    start = key.find("{")
    return start >= 0 and key.find("}", start + 1) > start + 1


def _slot(key: str) -> int:
    return key_slot(key.encode("utf-8", "surrogatepass"))


def _owns(ranges: list, slot: int) -> bool:
    """``ranges`` as parsed from ``CLUSTER NODES`` (``[["0", "5460"], ["9000"]]``) include ``slot``."""
    return any(int(r[0]) <= slot <= int(r[-1]) for r in ranges)


class _NodePipeline(AutoPipeline):
    """The hit path's auto-pipelined connection to one primary (see ``pipeline.py``). Once the store is
    armed (``verify``), a new connection is used only after ``INFO server`` shows a verified primary."""

    def __init__(self, store: "RedisClusterStore", url: str, timeout: float):
        super().__init__(url, connect_timeout=timeout, reply_timeout=timeout)
        self.store = store
        self.checked = False
        self._check_lock: asyncio.Lock | None = None

    async def execute(self, *args: Any) -> Any:
        if not self.checked or self.protocol is None:
            await self._connect_checked()
        return await self._enqueue(args)

    async def _connect_checked(self) -> None:
        if self._check_lock is None:
            self._check_lock = asyncio.Lock()
        async with self._check_lock:  # callers wait here: nothing is sent before the check passed
            if self.checked and self.protocol is not None:
                return
            if self.protocol is None:
                await self._connect()
            if self.store._armed:
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        run_id = replies.run_id(await self._enqueue(("INFO", "server")))
                except ResponseError:
                    run_id = ""
                except BaseException:
                    self.close()
                    raise
                if run_id not in self.store._verified_run_ids:
                    self.close()
                    raise RedisConnectionError("not a verified primary (failover, restart or new node); "
                                               "not used until verified")
            self.checked = True

    def lost(self, protocol, exc) -> None:
        if protocol is None or protocol is self.protocol:
            self.checked = False
        super().lost(protocol, exc)


PLANS_REMEMBERED = 50_000  # lookup plans (slot and guard positions) by (key, guards)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where an entry's key and its guards (``gen_keys``) live: the entry's slot; the positions of the
    guards in that slot, of the global ones (no hash tag: their tokens are cached) and, by slot, of
    tagged guards elsewhere (never produced by keys.py)."""

    slot: int
    local: tuple[int, ...]
    local_keys: tuple[str, ...]
    globals: tuple[int, ...]
    global_keys: tuple[str, ...]
    other: dict[int, list[int]]

    @classmethod
    def of(cls, key: str, gen_keys: Sequence[str]) -> "_Plan":
        slot = _slot(key)
        local, glob, other = [], [], {}
        for i, g in enumerate(gen_keys):
            if not _tagged(g):
                glob.append(i)
                continue
            guard_slot = _slot(g)
            if guard_slot == slot:
                local.append(i)
            else:
                other.setdefault(guard_slot, []).append(i)
        return cls(slot, tuple(local), tuple(gen_keys[i] for i in local), tuple(glob),
                   tuple(gen_keys[i] for i in glob), other)

    def tokens(self, count: int, mget: list, global_tokens: Sequence[str | None] | None) -> list[str | None]:
        """The ``count`` guards' tokens in order: those in the entry's slot from its ``MGET`` reply (after
        the entry), the global ones as given; the positions of other slots left None."""
        tokens: list[str | None] = [None] * count
        for i, value in zip(self.local, mget[1:]):
            tokens[i] = replies.text(value)
        for i, token in zip(self.globals, global_tokens or ()):
            tokens[i] = token
        return tokens


class RedisClusterStore:
    name = "redis-cluster"

    LUA_ENSURE_GENERATIONS = RedisStore.LUA_ENSURE_GENERATIONS
    LUA_STORE_IF_CURRENT = RedisStore.LUA_STORE_IF_CURRENT
    LUA_STORE_AND_RELEASE = RedisStore.LUA_STORE_AND_RELEASE
    LUA_BUMP = RedisStore.LUA_BUMP
    LUA_RELEASE_LEASE = RedisStore.LUA_RELEASE_LEASE

    # KEYS[1] - the topology marker (a hash in the epoch's slot, no TTL)
    # KEYS[2] - the global epoch
    # ARGV[1] - a digest of the primaries (node id and run_id of each); ARGV[2] - a fresh epoch token;
    # ARGV[3] - epoch ttl in seconds
    # return {1 if the epoch was bumped, the epoch token in force (or false)}: bumped when the marker
    # names other primaries (a failover or a restart: purges may be missing), or is gone while the
    # epoch exists
    LUA_MARK_CLUSTER = """
        local seen = redis.call('hget', KEYS[1], 'primaries')
        if seen == ARGV[1] then
            return {0, redis.call('get', KEYS[2])}
        end
        local bumped = 0
        if seen or redis.call('exists', KEYS[2]) == 1 then
            redis.call('set', KEYS[2], ARGV[2], 'ex', ARGV[3])
            bumped = 1
        end
        redis.call('hset', KEYS[1], 'primaries', ARGV[1])
        return {bumped, redis.call('get', KEYS[2])}
    """

    def __init__(self, client: RedisCluster, seeds: Sequence[tuple[str, int]] = (),
                 probe_options: dict[str, Any] | None = None, global_refresh: float = GLOBAL_REFRESH,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS):
        """Take ownership of ``client`` (``decode_responses=False``, no replica reads). ``seeds`` and
        ``probe_options`` (connection options) serve ``verify``'s own small per-node clients."""
        self.client = client
        self.seeds = list(seeds)
        self.probe_options = dict(probe_options or {})
        self.global_refresh = float(global_refresh)
        self._probes: dict[str, Redis] = {}
        self._pipelines: dict[str, _NodePipeline] = {}
        # set by from_url: a node's URL for the hit path's pipelines (without it, lookups use redis-py)
        self._pipeline_url: Callable[[str, int], str] | None = None
        self.timeout = float(self.probe_options.get("socket_timeout") or DEFAULT_TIMEOUT)
        self._routed = False  # the client knows the slots (``initialize``), and no node failed since
        self._reroute = False  # a pipelined call failed to reach its node: refresh the slots first
        # redis-py's cluster client refuses a command (MaxConnectionsError) rather than wait for one of a
        # node's connections: every call but the pipelined lookups takes a slot here first
        self._limit = asyncio.Semaphore(max_connections)
        self.globals = GlobalTokens(lambda key: self._limited(self.client.execute_command("GET", key)),
                                    self.global_refresh,
                                    (RedisError, RedisClusterException, OSError, asyncio.TimeoutError))
        self._plans = Memo(PLANS_REMEMBERED)
        self._armed = False
        self._verified_run_ids: frozenset[str] = frozenset()
        self._verified_digest: str | None = None
        self._ensure_generations = client.register_script(self.LUA_ENSURE_GENERATIONS)
        self._store_if_current = client.register_script(self.LUA_STORE_IF_CURRENT)
        self._store_and_release = client.register_script(self.LUA_STORE_AND_RELEASE)
        self._bump = client.register_script(self.LUA_BUMP)
        self._release_lease = client.register_script(self.LUA_RELEASE_LEASE)
        # every connection the client opens, to any node, goes through _on_connect
        manager = client.nodes_manager
        manager.connection_kwargs["redis_connect_func"] = self._on_connect
        for node in list(manager.startup_nodes.values()) + list(manager.nodes_cache.values()):
            node.connection_kwargs["redis_connect_func"] = self._on_connect

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "RedisClusterStore":
        """Connect lazily. Options: ``timeout`` (seconds, default 0.25), ``max_connections`` (per node,
        default 64), ``global_refresh`` (seconds, default 1); others are ignored."""
        parsed = parse_cluster_url(url)
        timeout = options.get("timeout")
        timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        common = {"username": parsed["username"], "password": parsed["password"], "ssl": parsed["ssl"],
                  "socket_timeout": timeout, "socket_connect_timeout": timeout}
        tls = {k: v for k, v in parsed["params"].items() if k in _TLS_PARAMS} if parsed["ssl"] else {}
        if tls:
            from .redisconf import tls_context

            tls_context(tls)  # a bad CA or certificate file fails here, naming the file
            common.update({k: (v.lower() in ("1", "true", "yes", "on") if k == "ssl_check_hostname" else v)
                           for k, v in tls.items()})
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed["seeds"]],
            require_full_coverage=False,  # a failover window fails only the orphaned slots, fast
            # no read_from_replicas / load_balancing_strategy: never read a replica, it may lag behind a purge
            retry=Retry(NoBackoff(), 0),  # no retries: the proxy fails open to the backend instead
            # a MOVED updates that slot only; never close every connection (other tasks' commands in
            # flight) to reload the whole map, as redis-py does every fifth MOVED by default
            reinitialize_steps=0,
            max_connections=int(options.get("max_connections") or DEFAULT_MAX_CONNECTIONS),
            decode_responses=False,
            **common,
        )
        refresh = options.get("global_refresh")
        store = cls(client, parsed["seeds"], probe_options=common,
                    global_refresh=GLOBAL_REFRESH if refresh is None else float(refresh),
                    max_connections=int(options.get("max_connections") or DEFAULT_MAX_CONNECTIONS))
        credentials = ""
        if parsed["password"] is not None:
            credentials = f"{quote(parsed['username'] or '', safe='')}:{quote(parsed['password'], safe='')}@"
        scheme = "rediss" if parsed["ssl"] else "redis"
        query = "?" + urlencode(tls) if tls else ""
        store._pipeline_url = lambda host, port: f"{scheme}://{credentials}{host}:{port}/0{query}"
        return store

    # -- server identity -------------------------------------------------------------------------------
    async def _on_connect(self, connection) -> None:
        """A new connection: the usual handshake, then refuse it unless it reaches a verified primary."""
        await connection.on_connect()
        if not self._armed:
            return
        if await connection_run_id(connection) not in self._verified_run_ids:
            raise RedisConnectionError("not a verified primary (failover, restart or new node); "
                                       "not used until verified")

    def _probe(self, host: str, port: int) -> Redis:
        name = f"{host}:{port}"
        probe = self._probes.get(name)
        if probe is None:
            probe = self._probes[name] = Redis(host=host, port=port, max_connections=2, decode_responses=False,
                                               retry=Retry(NoBackoff(), 0), **self.probe_options)
        return probe

    async def _primaries(self) -> list[tuple[str, str, int, list]]:
        """(node id, host, port, slot ranges) of every primary that owns slots, as the first answering
        node sees it. A primary suspected down (``fail?``) is listed: probing it fails the check."""
        known = list(self.seeds)
        for node in self.client.nodes_manager.nodes_cache.values():
            if (node.host, node.port) not in known:
                known.append((node.host, node.port))
        error: Exception | None = None
        for host, port in known:
            try:
                nodes = await self._probe(host, port).execute_command("CLUSTER NODES")
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                error = exc
                continue
            primaries = []
            for address, info in nodes.items():
                flags = info.get("flags", "")
                if "master" in flags and "fail" not in flags.replace("fail?", "") and info.get("slots"):
                    h, _, p = address.rpartition(":")
                    primaries.append((info["node_id"], h or host, int(p.split("@")[0]), info["slots"]))
            if primaries:
                return sorted(primaries)
        raise RedisConnectionError(f"no cluster node answered CLUSTER NODES: {error}")

    async def verify(self, marker_key: str, epoch_key: str, epoch_ttl: int) -> bool:
        """Check the primaries (``CLUSTER NODES``, then ``INFO server`` on each); when they changed since
        the last check by any proxy (the marker), bump ``epoch_key`` once. True if this call bumped it.

        The marker is stored under ``{<epoch_key>}:server`` (the epoch's slot, so one script sees both);
        ``marker_key`` names the single-server marker and is not used here. Cost: 1 + primaries commands
        while nothing changes, plus one ``EVAL`` when it does (and at start-up).
        """
        self._armed = True
        try:
            primaries = await self._primaries()
            run_ids = await asyncio.gather(*(self._server_run_id(p[1], p[2]) for p in primaries))
            digest = hashlib.blake2b(repr([(p[0], r) for p, r in zip(primaries, run_ids)]).encode(),
                                     digest_size=12).hexdigest()
            bumped = False
            if digest != self._verified_digest:
                # On the epoch's primary through a probe (new primaries stay refused by the client until
                # the epoch is settled); only then are the new primaries accepted.
                slot = _slot(epoch_key)
                owner = next((p for p in primaries if _owns(p[3], slot)), None)
                if owner is None:
                    raise RedisConnectionError("the epoch's slot has no primary")
                version = self.globals.version(epoch_key)
                result = await self._probe(owner[1], owner[2]).eval(
                    self.LUA_MARK_CLUSTER, 2, "{" + epoch_key + "}:server", epoch_key, digest, new_token(),
                    int(epoch_ttl))
                bumped = bool(result[0])
                self.globals.set(epoch_key, replies.text(result[1]) if result[1] is not None else None, version)
                self._verified_run_ids, self._verified_digest = frozenset(run_ids), digest
        except (RedisError, RedisClusterException, OSError, asyncio.TimeoutError) as exc:
            raise StoreUnavailable(f"verify: {exc or type(exc).__name__}") from exc
        return bumped

    async def _server_run_id(self, host: str, port: int) -> str:
        try:
            return replies.run_id(await self._probe(host, port).info("server"))
        except ResponseError:
            return ""

    async def _limited(self, call: Awaitable[T]) -> T:
        """Await ``call`` (a redis-py coroutine, not started yet) within the store's connection budget,
        once the client knows the cluster. (redis-py routes a command issued while it has no default
        node, i.e. before its first ``initialize`` ends, as a keyless one: to a random node, which
        answers ``MOVED``.)"""
        if self.client.get_default_node() is None:
            await self.client.initialize()
        limit = self._limit
        if limit.locked():
            async with asyncio.timeout(self.timeout):  # waiting for a connection counts as a slow store
                await limit.acquire()
        else:
            await limit.acquire()
        try:
            return await call
        finally:
            limit.release()

    async def _mget(self, slot: int, keys: Sequence[str]) -> list:
        """``MGET`` of same-slot ``keys``: pipelined on the slot's primary; through redis-py (which follows
        ``MOVED`` / ``ASK`` and retries ``TRYAGAIN``) when the node answers with a redirection."""
        if self._pipeline_url is None:
            return await self._limited(self.client.execute_command("MGET", *keys))
        if not self._routed:
            if self._reroute:  # a node failed: ask the cluster which primaries own what
                await self._limited(self.client.nodes_manager.initialize())
            else:  # the first call: nothing if redis-py knows the slots already
                await self._limited(self.client.initialize())
            self._routed, self._reroute = True, False
        node = self.client.nodes_manager.get_node_from_slot(slot)
        pipeline = self._pipelines.get(node.name)
        if pipeline is None:
            pipeline = self._pipelines[node.name] = _NodePipeline(self, self._pipeline_url(node.host, node.port),
                                                                 self.timeout)
        try:
            return await pipeline.execute("MGET", *keys)
        except ResponseError:  # MOVED, ASK, TRYAGAIN, CLUSTERDOWN: let redis-py handle it (and learn the slot)
            return await self._limited(self.client.execute_command("MGET", *keys))
        except _NODE_GONE:
            self._routed, self._reroute = False, True  # ask the cluster which primaries own what, next time
            raise

    # -- the contract ------------------------------------------------------------------------------------
    def _plan(self, key: str, gen_keys: Sequence[str]) -> "_Plan":
        """Where ``key`` and its guards live, worked out once per (key, guards): a hit hashes no slot."""
        memo_key = (key, gen_keys if isinstance(gen_keys, tuple) else tuple(gen_keys))
        plan = self._plans.get(memo_key)
        if plan is None:
            plan = self._plans.put(memo_key, _Plan.of(key, gen_keys))
        return plan

    @_unavailable
    async def lookup(self, key: str, gen_keys: Sequence[str]) -> tuple[bytes | None, list[str | None]]:
        plan = self._plan(key, gen_keys)
        calls = [self._mget(plan.slot, [key, *plan.local_keys])]
        cached = None
        if plan.global_keys:
            self.globals.start_refresher()
            cached = self.globals.cached(plan.global_keys)
            if cached is None:  # first use, or the background refresh has been failing
                calls.append(self.globals.read(plan.global_keys))
        for other_slot, positions in plan.other.items():
            calls.append(self._mget(other_slot, [gen_keys[i] for i in positions]))
        results = await asyncio.gather(*calls) if len(calls) > 1 else [await calls[0]]
        rest = iter(results[1:])
        if plan.global_keys and cached is None:
            cached = next(rest)
        tokens = plan.tokens(len(gen_keys), results[0], cached)
        for positions, values in zip(plan.other.values(), rest):
            for i, value in zip(positions, values):
                tokens[i] = replies.text(value)
        return results[0][0], tokens

    def lookup_future(self, key: str, gen_keys: Sequence[str]) -> asyncio.Future | None:
        """``lookup`` as the future of one node pipeline's ``MGET`` itself (no coroutine, task or second
        future around it), when that is all it takes: the slots are known, the entry's primary has a
        checked connection, every tagged guard is in the entry's slot and the global tokens are cached.
        None otherwise (then ``lookup`` connects, checks, reads what is missing). ``lookup_outcome``
        gives its result."""
        if self._pipeline_url is None or not self._routed:
            return None
        plan = self._plan(key, gen_keys)
        if plan.other or (plan.global_keys and self.globals.cached(plan.global_keys) is None):
            return None
        pipeline = self._pipelines.get(self.client.nodes_manager.get_node_from_slot(plan.slot).name)
        if pipeline is None or not pipeline.checked or pipeline.protocol is None:
            return None
        return pipeline.submit("MGET", key, *plan.local_keys)

    def lookup_outcome(self, looked: asyncio.Future, key: str, gen_keys: Sequence[str]
                       ) -> tuple[bytes | None, list[str | None]]:
        """``lookup``'s result from a done ``lookup_future``; its StoreUnavailable; or LookupRedirected
        when the node answered ``MOVED``, ``ASK`` or ``TRYAGAIN``, or the global tokens aged out of
        their cache meanwhile (``lookup`` follows redirections and reads the tokens)."""
        if looked.cancelled():
            raise StoreUnavailable("lookup cancelled")
        exc = looked.exception()
        if exc is not None:
            if isinstance(exc, ResponseError):
                raise LookupRedirected(str(exc))
            if isinstance(exc, _NODE_GONE):
                self._routed, self._reroute = False, True  # as in _mget
            raise _as_unavailable(exc) if isinstance(exc, CLUSTER_FAILURES) else exc
        plan = self._plan(key, gen_keys)
        cached = None
        if plan.global_keys:
            # read now rather than when the MGET was sent: never older than then, so never less safe
            cached = self.globals.cached(plan.global_keys)
            if cached is None:
                raise LookupRedirected("global tokens to read again")
        values = looked.result()
        return values[0], plan.tokens(len(gen_keys), values, cached)

    @_unavailable
    async def ensure_generations(self, gen_keys: Sequence[str], ttl: int) -> list[str]:
        if not gen_keys:
            return []
        tokens: list[str | None] = [None] * len(gen_keys)
        groups: dict[int, list[int]] = {}
        globals_ = set()
        for i, g in enumerate(gen_keys):
            if not _tagged(g):
                globals_.add(i)
                self.globals.start_refresher()
                cached = self.globals.cached([g])
                if cached is not None:
                    tokens[i] = cached[0]
                    continue
            groups.setdefault(_slot(g), []).append(i)

        async def ensure(positions: list[int]) -> None:
            keys = [gen_keys[i] for i in positions]
            versions = [self.globals.version(k) for k in keys]
            fresh = [new_token() for _ in keys]
            result = await self._limited(self._ensure_generations(keys=keys, args=[int(ttl), *fresh]))
            for i, k, token, version in zip(positions, keys, result, versions):
                tokens[i] = replies.text(token)
                if i in globals_:
                    self.globals.set(k, tokens[i], version)

        await asyncio.gather(*(ensure(p) for p in groups.values()))
        return tokens  # type: ignore[return-value]

    @_unavailable
    async def store_if_current(self, key: str, value: bytes, ttl: int, gen_keys: Sequence[str],
                               expected: Sequence[str], gen_ttl: int,
                               lease: tuple[str, str] | None = None) -> bool:
        plan = self._plan(key, gen_keys)
        slot = plan.slot
        if lease is not None and _slot(lease[0]) != slot:  # never from keys.py: released on its own
            try:
                return await self.store_if_current(key, value, ttl, gen_keys, expected, gen_ttl)
            finally:
                await self._limited(self._release_lease(keys=[lease[0]], args=[lease[1]]))
        refused = len(expected) != len(gen_keys)
        if not refused:
            local, glob, other = plan.local, plan.globals, plan.other
            if glob:
                current = await self.globals.tokens([gen_keys[i] for i in glob])
                refused = any(current[n] is None or current[n] != expected[i] for n, i in enumerate(glob))
            for other_slot, positions in other.items():
                if refused:
                    break
                values = await self._mget(other_slot, [gen_keys[i] for i in positions])
                refused = any(replies.text(v) != expected[i] for i, v in zip(positions, values))
        if refused:
            if lease is not None:
                await self._limited(self._release_lease(keys=[lease[0]], args=[lease[1]]))
            return False
        if lease is not None:  # same slot: the script drops the lease too, one round trip
            written = await self._limited(self._store_and_release(
                keys=[key, lease[0], *(gen_keys[i] for i in local)],
                args=[value, int(ttl), int(gen_ttl), lease[1], *(expected[i] for i in local)]))
        else:
            written = await self._limited(self._store_if_current(
                keys=[key, *(gen_keys[i] for i in local)],
                args=[value, int(ttl), int(gen_ttl), *(expected[i] for i in local)]))
        return bool(written)

    @_unavailable
    async def bump(self, gen_keys: Sequence[str], ttl: int) -> None:
        if not gen_keys:
            return
        groups: dict[int, list[str]] = {}
        for g in dict.fromkeys(gen_keys):
            groups.setdefault(_slot(g), []).append(g)

        async def bump(keys: list[str]) -> None:
            fresh = [new_token() for _ in keys]
            await self._limited(self._bump(keys=keys, args=[int(ttl), *fresh, L1_CHANNEL]))
            for k, token in zip(keys, fresh):
                if not _tagged(k):
                    self.globals.set(k, token, bump=True)

        await asyncio.gather(*(bump(keys) for keys in groups.values()))

    def invalidations(self):
        """The L1 invalidation channel (PUBLISH reaches every node of a cluster: one subscription will do)."""
        if self._pipeline_url is None:
            raise StoreUnavailable("no invalidation channel without node addresses")
        node = self.client.get_default_node() or next(iter(self.client.nodes_manager.startup_nodes.values()))
        return subscribe(AutoPipeline(self._pipeline_url(node.host, node.port), connect_timeout=self.timeout),
                         L1_CHANNEL)

    @_unavailable
    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._limited(self.client.set(key, owner, nx=True, px=max(1, int(ttl_ms)))))

    @_unavailable
    async def release_lease(self, key: str, owner: str) -> None:
        await self._limited(self._release_lease(keys=[key], args=[owner]))

    @_unavailable
    async def stats(self) -> dict:
        primaries = self.client.get_primaries()
        if not primaries:
            await self.client.initialize()
            primaries = self.client.get_primaries()
        sizes = await self.client.execute_command("DBSIZE", target_nodes=primaries)
        memory = await self.client.info("memory", target_nodes=primaries)
        stats = await self.client.info("stats", target_nodes=primaries)
        memory = memory if isinstance(memory, dict) and all(isinstance(v, dict) for v in memory.values()) \
            else {"node": memory}
        stats = stats if isinstance(stats, dict) and all(isinstance(v, dict) for v in stats.values()) \
            else {"node": stats}
        first = next(iter(memory.values()), {})
        return {"entries": int(sizes if isinstance(sizes, int) else sum(sizes.values())),
                "bytes": sum(int(m.get("used_memory", 0)) for m in memory.values()),
                "evictions": sum(int(s.get("evicted_keys", 0)) for s in stats.values()),
                "maxmemory": int(first.get("maxmemory", 0)),
                "maxmemory_policy": replies.text(first.get("maxmemory_policy")),
                "primaries": len(primaries)}

    @_unavailable
    async def ping(self) -> None:
        await self.client.execute_command("PING", target_nodes=RedisCluster.PRIMARIES)

    @_unavailable
    async def close(self) -> None:
        await self.globals.close()
        for pipeline in self._pipelines.values():
            pipeline.close()
        for probe in self._probes.values():
            await probe.aclose(close_connection_pool=True)
        await self.client.aclose()
