"""Topology changes under traffic, each on a private six-node cluster: resharding the slot that holds a
user's keys (``ASK`` / ``TRYAGAIN`` / ``MOVED`` while it moves), killing a primary until its replica
takes over, the failover that loses a purge (the replica never received it), and a primary restarted
empty: every request is answered, no read is older than a write its client saw acknowledged, and the
cache comes back."""
from __future__ import annotations

import asyncio
from collections import Counter

from redis.crc import key_slot

from proxy.core.errors import LookupRedirected
from tests.cluster.conftest import profile_key, users_on_distinct_primaries

PROFILE = "/api/v1/users/profile"


class Traffic:
    """One client's reads and writes through the proxy until stopped. Every answer must be a 200, and
    no read may show a version older than the last write of that user this client saw acknowledged."""

    def __init__(self, proxy, users: list[str], write_every: int = 7):
        self.proxy, self.users, self.write_every = proxy, users, write_every
        self.ops = 0
        self.failed: list = []
        self.stale: list = []
        self.acked = {u: 0 for u in users}
        self.x_cache: Counter = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            user = self.users[i % len(self.users)]
            if i % self.write_every == self.write_every - 1:
                reply = await self.proxy.request("PUT", PROFILE, user, json={"display_name": f"name {i}"})
                if reply.status != 200 or reply.code != 200:
                    self.failed.append(reply)
                else:
                    self.acked[user] = max(self.acked[user], reply.version)
            else:
                reply = await self.proxy.get(PROFILE, user)
                if reply.status != 200 or reply.code != 200:
                    self.failed.append(reply)
                elif reply.version < self.acked[user]:
                    self.stale.append((user, reply.version, self.acked[user], reply.x_cache))
                self.x_cache[reply.x_cache] += 1
            self.ops += 1
            i += 1

    async def more(self, n: int, poll) -> None:
        """Wait until ``n`` more operations were done (a bounded poll)."""
        target = self.ops + n
        await poll(lambda: _true(self.ops >= target), f"{n} more operations", attempts=3000, interval=0.01)


async def _true(value: bool) -> bool:
    return value


async def _epoch_bumps(proxy) -> float:
    for line in (await proxy.metrics()).splitlines():
        if line.startswith("katiba_cache_epoch_bumps_total "):
            return float(line.split()[1])
    return 0.0


async def test_resharding_a_users_slot_under_traffic(make_proxy, backend, start_cluster, cluster_store, poll,
                                                     caplog):
    cluster = start_cluster()
    proxy = await make_proxy(store=cluster_store(cluster.url))
    user, other = users_on_distinct_primaries(cluster, 2)
    for u in (user, other):
        await backend.seed(u)
        await proxy.get(PROFILE, u)
        assert (await proxy.get(PROFILE, u)).x_cache == "HIT"
    slot = key_slot(profile_key(user).encode())
    dst_port = next(p for p in cluster.primaries() if p != cluster.primary_of(profile_key(user)))

    redirected = []  # fast-path lookups that met ASK / MOVED / TRYAGAIN and went to the awaited lookup
    outcome = proxy.proxy.store.inner.lookup_outcome

    def counted_outcome(looked, *where):
        try:
            return outcome(looked, *where)
        except LookupRedirected:
            redirected.append(looked)
            raise

    proxy.proxy.store.inner.lookup_outcome = counted_outcome
    traffic, stop = Traffic(proxy, [user, other]), asyncio.Event()
    runner = asyncio.get_running_loop().create_task(traffic.run(stop))
    try:
        await traffic.more(20, poll)
        src, dst = await asyncio.to_thread(cluster.begin_migration, slot, dst_port)
        await traffic.more(20, poll)
        moved = await asyncio.to_thread(cluster.migrate_keys, slot, src, dst, 1)  # half-way: ASK, TRYAGAIN
        assert moved
        await traffic.more(20, poll)
        await asyncio.to_thread(cluster.migrate_keys, slot, src, dst)
        await traffic.more(20, poll)
        await asyncio.to_thread(cluster.finish_migration, slot, src, dst)  # MOVED from now on
        assert cluster.primary_of(profile_key(user)) == dst_port
        await traffic.more(40, poll)
    finally:
        stop.set()
        await runner
    assert not traffic.failed, traffic.failed[:3]
    assert not traffic.stale, traffic.stale[:5]
    assert redirected  # the fast path met the move, and the requests were answered all the same ...
    assert not [r for r in caplog.records if getattr(r, "event", "") == "fast_path_error"]  # ... as planned

    async def hit_again() -> bool:
        return (await proxy.get(PROFILE, user)).x_cache == "HIT"

    await poll(hit_again, "hits on the moved slot", attempts=500, interval=0.02)
    written = await proxy.request("PUT", PROFILE, user, json={"display_name": "after the move"})
    read = await proxy.get(PROFILE, user)
    assert read.x_cache == "MISS" and read.version >= written.version
    assert read.json["body"]["display_name"] == "after the move"
    assert await _epoch_bumps(proxy) == 0  # a slot moves without loss: nothing to invalidate


async def test_killing_a_primary_answers_every_request(make_proxy, backend, start_cluster, cluster_store, poll):
    cluster = start_cluster()
    proxy = await make_proxy(store=cluster_store(cluster.url), store_recovery_hold=0.2)
    users = users_on_distinct_primaries(cluster, 3)
    for u in users:
        await backend.seed(u)
        await proxy.get(PROFILE, u)
        assert (await proxy.get(PROFILE, u)).x_cache == "HIT"
    victim = cluster.primary_of(profile_key(users[0]))
    replica = cluster.replica_of(victim)

    traffic, stop = Traffic(proxy, users, write_every=5), asyncio.Event()
    runner = asyncio.get_running_loop().create_task(traffic.run(stop))
    try:
        await traffic.more(20, poll)
        cluster.kill(victim)
        await traffic.more(20, poll)
        await asyncio.to_thread(cluster.wait_ok)  # bounded poll: the replica took over the slots
        assert cluster.primary_of(profile_key(users[0])) == replica
        await traffic.more(60, poll)
    finally:
        stop.set()
        await runner
    assert not traffic.failed, traffic.failed[:3]  # during the window the backend answered
    assert not traffic.stale, traffic.stale[:5]

    async def hit_again() -> bool:
        return (await proxy.get(PROFILE, users[0])).x_cache == "HIT"

    await poll(hit_again, "hits after the failover", attempts=1000, interval=0.02)
    written = await proxy.request("PUT", PROFILE, users[0], json={"display_name": "after failover"})
    read = await proxy.get(PROFILE, users[0])
    assert read.status == 200 and read.version >= written.version, read
    assert read.json["body"]["display_name"] == "after failover"
    assert await _epoch_bumps(proxy) >= 1  # the promoted replica may lack purges: everything re-fetched


async def test_a_purge_lost_in_the_failover_is_not_served_stale(make_proxy, backend, start_cluster,
                                                                  cluster_store, poll):
    """The purge reaches the primary, never its replica; the primary dies; the replica takes over with
    the old generation. The epoch bump on the topology change is what keeps the old entry unserved."""
    cluster = start_cluster()
    proxy = await make_proxy(store=cluster_store(cluster.url), store_recovery_hold=0.2)
    user = users_on_distinct_primaries(cluster, 1)[0]
    await backend.seed(user)
    old = await proxy.get(PROFILE, user)
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"
    victim = cluster.node(cluster.primary_of(profile_key(user)))
    replica = cluster.node(cluster.replica_of(victim.port))
    gen = f"katiba360:proxy:gen:user:{{{user}}}"
    assert victim.admin.execute_command("WAIT", 1, 5000) == 1  # the replica holds the entry and its generation
    before = victim.admin.get(gen)

    replica.pause()  # SIGSTOP, and its replication link closed: what the primary writes next is lost
    try:
        victim.admin.client_kill_filter(_type="replica")
        written = await proxy.request("PUT", PROFILE, user, json={"display_name": "written before the crash"})
        assert written.status == 200 and written.version > old.version
        assert victim.admin.get(gen) != before  # the purge landed on the primary
        cluster.kill(victim.port)
    finally:
        replica.resume()
    await asyncio.to_thread(cluster.wait_ok)
    assert cluster.primary_of(profile_key(user)) == replica.port
    assert replica.admin.get(gen) == before  # the promoted replica never saw the purge

    for _ in range(5):
        read = await proxy.get(PROFILE, user)
        assert read.status == 200, read
        assert read.version >= written.version, (read, "the purged entry was served after the failover")
        assert read.json["body"]["display_name"] == "written before the crash"

    async def hit_again() -> bool:
        return (await proxy.get(PROFILE, user)).x_cache == "HIT"

    await poll(hit_again, "hits after the failover", attempts=1000, interval=0.02)
    assert (await proxy.get(PROFILE, user)).version >= written.version
    assert await _epoch_bumps(proxy) >= 1


async def test_a_primary_restarted_empty_is_checked_before_it_is_read(make_proxy, backend, start_cluster,
                                                                     cluster_store, poll):
    cluster = start_cluster()
    proxy = await make_proxy(store=cluster_store(cluster.url), store_recovery_hold=0.2)
    # not the epoch's primary: restarted empty, that one would lose the epoch itself (every entry a miss
    # as well, but no bump to count)
    epoch_owner = cluster.primary_of("katiba360:proxy:epoch")
    users = [u for u in users_on_distinct_primaries(cluster, 3) if cluster.primary_of(profile_key(u)) != epoch_owner]
    for u in users:
        await backend.seed(u)
        await proxy.get(PROFILE, u)
        assert (await proxy.get(PROFILE, u)).x_cache == "HIT"
    victim = cluster.node(cluster.primary_of(profile_key(users[0])))

    traffic, stop = Traffic(proxy, users, write_every=4), asyncio.Event()
    runner = asyncio.get_running_loop().create_task(traffic.run(stop))
    try:
        await traffic.more(10, poll)
        victim.stop()
        victim.start()  # same port, same node id (nodes.conf), a new run_id and no data
        await asyncio.to_thread(cluster.wait_ok)
        await traffic.more(40, poll)
    finally:
        stop.set()
        await runner
    assert not traffic.failed, traffic.failed[:3]
    assert not traffic.stale, traffic.stale[:5]

    async def hit_again() -> bool:
        return (await proxy.get(PROFILE, users[0])).x_cache == "HIT"

    await poll(hit_again, "hits after the restart", attempts=1000, interval=0.02)
    assert await _epoch_bumps(proxy) >= 1
