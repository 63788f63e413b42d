"""Redis in production: rediss:// with a private CA and client certificates, ACL user and password (also
from a file), Redis Sentinel (master only, never a replica), connection pool limits.

Every test runs the whole proxy on the store it builds (MISS, HIT, a write's purge), so the hit path's
auto-pipelined connection is covered as well as redis-py's pool."""
from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from proxy.serve.config import config_from
from proxy.core.errors import StoreUnavailable
from proxy.store import open_store
from proxy.store.l1 import CHANNEL as L1_CHANNEL
from proxy.store.redis import RedisStore

from tests.functional.conftest import RULES_PATH

from .redisprocs import redis_procs  # noqa: F401 - fixture

PROFILE = "/api/v1/users/profile"
NO_ARGS = SimpleNamespace(upstream="http://127.0.0.1:1", rules=None, listen=None, redis=None, log_format=None)


def store_from_env(url: str, **env: str):
    """The store ``cache-proxy serve`` would open for ``REDIS_URL=url`` plus ``env``."""
    config = config_from(NO_ARGS, {"REDIS_URL": url, **env})
    return open_store(config.redis_url, timeout=1.0, max_connections=config.redis_max_connections), config


async def read_write_read(proxy) -> None:
    user = str(uuid.uuid4())
    first, second = await proxy.get(PROFILE, user), await proxy.get(PROFILE, user)
    assert (first.x_cache, second.x_cache) == ("MISS", "HIT"), (first, second)
    write = await proxy.request("PUT", PROFILE, user, json={"display_name": "After", "bio": ""})
    assert write.status == 200
    third = await proxy.get(PROFILE, user)
    assert third.x_cache == "MISS" and third.json["body"]["display_name"] == "After", third


async def test_tls_with_a_private_ca_and_a_client_certificate(make_proxy, redis_procs, certs):
    server = redis_procs.tls(certs, auth_clients=True)
    store, config = store_from_env(f"rediss://127.0.0.1:{server.port}/0", REDIS_CA_FILE=certs.ca,
                                   REDIS_CLIENT_CERT=certs.client_cert, REDIS_CLIENT_KEY=certs.client_key)
    assert "ssl_ca_certs=" in config.redis_url and "ssl_certfile=" in config.redis_url
    proxy = await make_proxy(store=store)
    server.client().config_resetstat()
    await read_write_read(proxy)
    stats = server.client().info("commandstats")
    assert stats["cmdstat_mget"]["calls"] >= 3  # the hit path's pipeline spoke TLS too
    assert stats["cmdstat_evalsha"]["calls"] >= 2  # fills and the purge went through redis-py's TLS pool


async def test_tls_refuses_an_unknown_ca_and_a_missing_client_certificate(make_proxy, redis_procs, certs):
    server = redis_procs.tls(certs, auth_clients=True)
    url = f"rediss://127.0.0.1:{server.port}/0"
    wrong_ca, _ = store_from_env(url, REDIS_CA_FILE=certs.other_ca, REDIS_CLIENT_CERT=certs.client_cert,
                                 REDIS_CLIENT_KEY=certs.client_key)
    no_cert, _ = store_from_env(url, REDIS_CA_FILE=certs.ca)
    for store in (wrong_ca, no_cert):
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.lookup("katiba360:proxy:x", [])  # the pipeline refuses it too
        await store.close()
    # A proxy on such a store still answers every request from the backend.
    store, _ = store_from_env(url, REDIS_CA_FILE=certs.other_ca)
    proxy = await make_proxy(store=store)
    reply = await proxy.get(PROFILE, str(uuid.uuid4()))
    assert reply.status == 200 and reply.x_cache == "BYPASS" and "store-unavailable" in reply.cache_status


def test_a_bad_ca_file_fails_at_start_naming_the_file(tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for path in (missing, garbage):
        with pytest.raises(ValueError, match=str(path)):
            store_from_env("rediss://127.0.0.1:1/0", REDIS_CA_FILE=str(path))


async def test_acl_user_and_password_from_a_file(make_proxy, redis_procs, tmp_path):
    server = redis_procs.acl("katiba", "s3cret:with@odd/chars")
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret:with@odd/chars\n")
    store, config = store_from_env(f"redis://127.0.0.1:{server.port}/0", REDIS_USERNAME="katiba",
                                   REDIS_PASSWORD_FILE=str(secret))
    proxy = await make_proxy(store=store)
    await read_write_read(proxy)
    assert server.client().info("commandstats")["cmdstat_mget"]["calls"] >= 3

    wrong, _ = store_from_env(f"redis://127.0.0.1:{server.port}/0", REDIS_USERNAME="katiba", REDIS_PASSWORD="nope")
    with pytest.raises(StoreUnavailable):
        await wrong.ping()
    with pytest.raises(StoreUnavailable):
        await wrong.lookup("katiba360:proxy:x", [])
    await wrong.close()
    with pytest.raises(ValueError, match="REDIS_PASSWORD_FILE"):
        store_from_env("redis://127.0.0.1:1/0", REDIS_PASSWORD_FILE=str(tmp_path / "missing"))


async def test_the_url_credentials_win_over_the_environment(redis_procs):
    server = redis_procs.acl("alice", "right")
    store, _ = store_from_env(f"redis://alice:right@127.0.0.1:{server.port}/0", REDIS_PASSWORD="wrong")
    try:
        await store.ping()
    finally:
        await store.close()


async def test_the_connection_pool_is_bounded(make_proxy, redis_procs):
    server = redis_procs.plain()
    store, config = store_from_env(f"redis://127.0.0.1:{server.port}/0", REDIS_MAX_CONNECTIONS="2")
    assert config.redis_max_connections == 2
    proxy = await make_proxy(store=store)
    import asyncio

    users = [str(uuid.uuid4()) for _ in range(40)]
    replies = await asyncio.gather(*(proxy.get(PROFILE, u) for u in users))  # 40 concurrent fills
    assert {r.status for r in replies} == {200} and {r.x_cache for r in replies} == {"MISS"}
    replies = await asyncio.gather(*(proxy.get(PROFILE, u) for u in users))
    assert {r.x_cache for r in replies} == {"HIT"}
    clients = server.client().client_list()
    # the pool (2) + the probe connection (at most 2) + the hit path's pipeline (1) + this client (1)
    assert len(clients) <= 6, clients


async def test_sentinel_reads_the_master_only_never_a_replica(make_proxy, redis_procs, poll):
    master = redis_procs.plain()
    replica = redis_procs.plain("--replicaof", "127.0.0.1", str(master.port))

    async def synced() -> bool:
        return replica.client().info("replication").get("master_link_status") == "up"

    await poll(synced, "the replica is in sync")
    sentinel = redis_procs.sentinel("katiba", master.port)
    store = RedisStore.from_url(f"redis+sentinel://127.0.0.1:{sentinel.port}/katiba/0", timeout=1.0)
    proxy = await make_proxy(store=store)
    replica.client().config_resetstat()
    master.client().config_resetstat()
    for _ in range(3):
        await read_write_read(proxy)
    on_master = master.client().info("commandstats")
    on_replica = replica.client().info("commandstats")
    assert on_master["cmdstat_mget"]["calls"] >= 9 and on_master["cmdstat_evalsha"]["calls"] >= 6
    assert "cmdstat_mget" not in on_replica and "cmdstat_get" not in on_replica  # never read from a replica
    assert (await proxy.get("/readyz")).json["store"] == "redis"


def test_sentinel_urls_are_parsed_and_checked():
    from proxy.store.redisconf import parse_sentinel_url

    parsed = parse_sentinel_url("rediss+sentinel://u:p%40ss@10.0.0.1:26379,10.0.0.2:26380/cache/2?sentinel_password=x")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (parsed.service, parsed.db, parsed.username, parsed.password, parsed.ssl) == ("cache", 2, "u", "p@ss", True)
    for bad in ("redis+sentinel://h:1", "redis+sentinel://h/svc", "redis+sentinel://h:1/svc/x"):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)


async def test_sentinel_failover_moves_to_the_new_master_and_bumps_the_epoch(make_proxy, redis_procs, poll):
    master, replica, sentinel = await _master_replica_sentinel(redis_procs, poll)
    await poll(lambda: _knows_replica(sentinel, replica.port), "the sentinel found the replica", attempts=2000)
    store = RedisStore.from_url(_sentinel_url(sentinel), timeout=1.0)
    proxy = await make_proxy(store=store, store_check_interval=0.1, store_recovery_hold=0.0)
    user = str(uuid.uuid4())
    assert [(await proxy.get(PROFILE, user)).x_cache for _ in range(2)] == ["MISS", "HIT"]

    async def failover_started() -> bool:  # NOGOODSLAVE until the sentinel has heard from the replica
        try:
            sentinel.client().execute_command("SENTINEL", "FAILOVER", "katiba")
        except redis.ResponseError as exc:
            if "NOGOODSLAVE" in str(exc):
                return False
            raise
        return True

    await poll(lambda: _caught_up(master, replica), "the replica holds what the proxy wrote")
    await poll(failover_started, "the sentinel accepted the failover", attempts=3000)

    async def promoted() -> bool:
        return sentinel.client().sentinel_get_master_addr_by_name("katiba")[1] == replica.port

    await poll(promoted, "the sentinel promoted the replica", attempts=2000)
    last = []  # the latest reply, for the message if a poll gives up
    await _poll_telling(poll, _epoch_bumped(proxy, user, last), "the proxy verified the new master", last,
                        master, replica)
    replica.client().config_resetstat()

    async def hits_again() -> bool:
        last[:] = [await proxy.get(PROFILE, user)]
        assert last[0].status == 200, last[0]
        return last[0].x_cache == "HIT"

    await _poll_telling(poll, hits_again, "the cache serves again from the new master", last, master, replica)
    assert replica.client().info("commandstats")["cmdstat_mget"]["calls"] >= 1  # read from the new master
    assert metric_value(await proxy.metrics(), "katiba_cache_epoch_bumps_total") == 1
    await read_write_read(proxy)  # and writes purge on the new master


async def test_a_master_the_sentinels_no_longer_name_is_left_even_while_it_still_takes_writes(make_proxy,
                                                                                              redis_procs, poll):
    """Split brain: the sentinels name a new master while the old one is alive, reachable and still a
    master (not demoted, e.g. cut off from the sentinels only). A proxy that stays on it would purge
    where the other proxies no longer read. It must move when the sentinels say so, not when (or if) the
    old master is demoted and drops its clients."""
    old, new, sentinel = await _master_replica_sentinel(redis_procs, poll)
    store = RedisStore.from_url(_sentinel_url(sentinel), timeout=1.0)
    proxy = await make_proxy(store=store, store_check_interval=0.1, store_recovery_hold=0.0)
    user = str(uuid.uuid4())
    assert [(await proxy.get(PROFILE, user)).x_cache for _ in range(2)] == ["MISS", "HIT"]

    await _named_master_by_hand(poll, sentinel, old, new)
    last = []
    await _poll_telling(poll, _epoch_bumped(proxy, user, last), "the proxy moved to the master the sentinels name",
                        last, old, new)
    assert old.client().info("replication")["role"] == "master"  # nobody demoted it: the proxy moved by itself
    new.client().config_resetstat()
    old.client().config_resetstat()
    await read_write_read(proxy)  # reads and purges on the new master only
    assert new.client().info("commandstats")["cmdstat_mget"]["calls"] >= 1
    assert "cmdstat_mget" not in old.client().info("commandstats")
    assert not any(name.startswith("cmdstat_eval") for name in old.client().info("commandstats"))


async def test_a_new_master_is_followed_even_when_the_sentinels_could_not_be_asked_before_it(make_proxy,
                                                                                              redis_procs, poll):
    """The same split brain, but every query of the sentinels failed until the change (timed out, say),
    while the hit path's connections were made to the old master all the same. The first master the
    sentinels name is then no baseline to compare later answers with: the connections in use may point
    elsewhere, so they are dropped and the server verified, as for a change."""
    old, new, sentinel = await _master_replica_sentinel(redis_procs, poll)
    store = RedisStore.from_url(_sentinel_url(sentinel), timeout=1.0)
    ask_sentinels = store.named_master

    async def unanswered() -> tuple[str, int]:
        raise OSError("sentinels out of reach")

    store.named_master = unanswered
    proxy = await make_proxy(store=store, store_check_interval=0.1, store_recovery_hold=0.0)
    user = str(uuid.uuid4())
    assert [(await proxy.get(PROFILE, user)).x_cache for _ in range(2)] == ["MISS", "HIT"]
    assert "cmdstat_mget" in old.client().info("commandstats")  # the hit path reads the old master

    await _named_master_by_hand(poll, sentinel, old, new)
    store.named_master = ask_sentinels
    last = []
    await _poll_telling(poll, _epoch_bumped(proxy, user, last), "the proxy moved to the master the sentinels name",
                        last, old, new)
    new.client().config_resetstat()
    old.client().config_resetstat()
    await read_write_read(proxy)
    assert new.client().info("commandstats")["cmdstat_mget"]["calls"] >= 1
    assert "cmdstat_mget" not in old.client().info("commandstats")


async def test_after_the_sentinels_name_a_new_master_l1_invalidations_come_from_it(make_proxy, redis_procs, poll,
                                                                                    tmp_path):
    """The same split brain with the in-process L1: each proxy's invalidation subscription moves to the
    new master too (a purge there publishes there), so another proxy's purge still evicts its L1 copy."""
    old, new, sentinel = await _master_replica_sentinel(redis_procs, poll)
    rules = tmp_path / "rules.yaml"
    rules.write_text(Path(RULES_PATH).read_text().replace('key: "user:{user_id}:profile"\n',
                                                          'key: "user:{user_id}:profile"\n    l1_ttl: 60\n', 1))
    reader, writer = [await make_proxy(store=RedisStore.from_url(_sentinel_url(sentinel), timeout=1.0),
                                       rules_path=rules, store_check_interval=0.1, store_recovery_hold=0.0)
                      for _ in range(2)]
    await poll(lambda: _subscribers(old, 2), "both proxies follow the invalidations on the old master")

    await _named_master_by_hand(poll, sentinel, old, new)
    await poll(lambda: _subscribers(new, 2), "both subscriptions moved to the new master", attempts=2000)
    assert old.client().pubsub_numsub(L1_CHANNEL)[0][1] == 0

    user = str(uuid.uuid4())

    async def from_l1() -> bool:
        return "detail=l1" in (await reader.get(PROFILE, user)).cache_status

    await poll(from_l1, "the reader answers from its L1")
    key = f"{reader.proxy.rules.prefix}:user:{{{user}}}:profile"  # the user id as a cluster hash tag
    assert reader.proxy.l1.get(key) is not None
    write = await writer.request("PUT", PROFILE, user, json={"display_name": "Moved", "bio": ""})
    assert write.status == 200

    async def evicted() -> bool:
        return reader.proxy.l1.get(key) is None and reader.proxy.l1.invalidated >= 1

    await poll(evicted, "the writer's purge evicted the reader's L1 copy")
    reply = await reader.get(PROFILE, user)
    assert reply.x_cache == "MISS" and reply.json["body"]["display_name"] == "Moved", reply


async def _master_replica_sentinel(redis_procs, poll):
    """(master, its replica in sync, a sentinel watching the master as service ``katiba``)."""
    master = redis_procs.plain()
    replica = redis_procs.plain("--replicaof", "127.0.0.1", str(master.port))
    await poll(lambda: _linked(replica), "the replica is in sync")
    return master, replica, redis_procs.sentinel("katiba", master.port)


def _sentinel_url(sentinel) -> str:
    return f"redis+sentinel://127.0.0.1:{sentinel.port}/katiba/0"


async def _named_master_by_hand(poll, sentinel, master, replica) -> None:
    """Split brain: ``replica`` promoted by hand and named by the sentinel, while the old master is neither
    demoted nor told, so it keeps its clients and its writes."""
    await poll(lambda: _caught_up(master, replica), "the replica holds what the proxy wrote")
    replica.client().execute_command("REPLICAOF", "NO", "ONE")
    admin = sentinel.client()
    admin.execute_command("SENTINEL", "REMOVE", "katiba")
    admin.execute_command("SENTINEL", "MONITOR", "katiba", "127.0.0.1", str(replica.port), "1")
    assert admin.sentinel_get_master_addr_by_name("katiba")[1] == replica.port


def _epoch_bumped(proxy, user: str, last: list):
    """A poll predicate: every read is answered meanwhile, and true once the proxy bumped the epoch (once),
    having verified a new master, and reads use the store again. A pooled connection opened to the new
    master while its verification was in flight (a metrics scrape's ``stats``, say) is refused by design
    (``RedisStore._on_connect``): the store is then off until the next check, a tenth of a second later.
    ``last`` keeps the latest reply and figures for the failure message."""
    async def check() -> bool:
        last[:] = [await proxy.get(PROFILE, user)]
        assert last[0].status == 200, last[0]
        metrics = await proxy.metrics()
        last.append(f"epoch bumps {metric_value(metrics, 'katiba_cache_epoch_bumps_total')}, "
                    f"store usable {metric_value(metrics, 'katiba_cache_store_usable')}")
        return last[-1] == "epoch bumps 1.0, store usable 1.0"
    return check


def _subscribers(server, count: int):
    async def check() -> bool:
        return server.client().pubsub_numsub(L1_CHANNEL)[0][1] == count
    return check()


async def _poll_telling(poll, predicate, what: str, last: list, *servers) -> None:
    """``poll``, failing with the latest reply and each server's role (what a rare CI failure needs)."""
    try:
        await poll(predicate, what, attempts=2000)
    except pytest.fail.Exception:
        roles = [(s.port, s.client().info("replication").get("role")) for s in servers]
        pytest.fail(f"condition never became true: {what}; last seen {last!r}; "
                    f"roles {roles}")


def _caught_up(master, replica) -> bool:
    """A replica promoted before the proxy's writes reached it starts from an empty dataset, with nothing
    stale to serve and so no epoch to bump: these tests promote one that holds them (its offset)."""
    async def check() -> bool:
        written = master.client().info("replication")["master_repl_offset"]
        return 0 < written <= replica.client().info("replication")["slave_repl_offset"]
    return check()


def _linked(replica) -> bool:
    async def check() -> bool:
        return replica.client().info("replication").get("master_link_status") == "up"
    return check()


def _knows_replica(sentinel, port: int):
    async def check() -> bool:
        return any(int(r["port"]) == port for r in sentinel.client().sentinel_slaves("katiba"))
    return check()


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
