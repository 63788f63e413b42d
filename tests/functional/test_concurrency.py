"""Correct under concurrency ([2/7]): coalescing, leases across instances, stale-while-revalidate and
stale-if-error, each driven by the stand-in's gate (a held backend answer), never by sleeps."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .conftest import API, RULES_PATH, mint, new_user

PROFILE = f"{API}/users/profile"
PROFILE_ROUTE = ("GET", f"{API}/users/profile")


async def wait_for(predicate, what: str, attempts: int = 1000) -> None:
    """Poll until ``predicate()`` is true; a bounded loop, not a timed assertion."""
    for _ in range(attempts):
        if await predicate():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"never happened: {what}")


class Clock:
    """A wall clock the test moves by hand (entries' ages use it)."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


async def hold(backend, path: str = PROFILE) -> None:
    await backend.control("POST", "gate", {"method": "GET", "path": path})


async def held(backend, count: int = 1) -> None:
    async def waiting() -> bool:
        return (await backend.control("GET", "gate"))["waiting"] >= count

    await wait_for(waiting, f"{count} request(s) held at the backend")


async def release(backend) -> None:
    await backend.control("POST", "gate/release")


async def test_coalesced_waiters_receive_the_same_body(proxy, backend):
    user = new_user()
    await hold(backend)
    tasks = [asyncio.create_task(proxy.get(PROFILE, user)) for _ in range(30)]
    await held(backend)
    await wait_for(lambda: _coalesced_at_least(proxy, 29), "29 waiters parked behind the leader")
    await release(backend)
    replies = await asyncio.gather(*tasks)
    assert {r.status for r in replies} == {200}
    assert len({r.body for r in replies}) == 1
    assert {r.x_cache for r in replies} == {"MISS"}
    assert sum("collapsed" in r.cache_status for r in replies) == 29
    assert await backend.route_count(*PROFILE_ROUTE) == 1
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"


async def _coalesced_at_least(proxy, n: int) -> bool:
    text = await proxy.metrics()
    for line in text.splitlines():
        if line.startswith('katiba_cache_coalesced_waiters_total{rule="user_profile"}'):
            return float(line.split()[-1]) >= n
    return False


async def test_purge_while_a_coalesced_fill_is_in_flight(proxy, backend):
    user = new_user()
    await hold(backend)
    readers = [asyncio.create_task(proxy.get(PROFILE, user)) for _ in range(10)]
    await held(backend)
    write = await proxy.request("PUT", PROFILE, user, json={"display_name": "After", "bio": "new"})
    assert write.status == 200 and write.json["body"]["display_name"] == "After"
    await release(backend)
    old = await asyncio.gather(*readers)
    assert {r.json["body"]["display_name"] for r in old} != {"After"}  # they began before the write
    fresh = await proxy.get(PROFILE, user)
    assert fresh.x_cache == "MISS" and fresh.json["body"]["display_name"] == "After"
    assert fresh.version >= write.json["body"]["version"]


def swr_rules(tmp_path: Path) -> str:
    text = Path(RULES_PATH).read_text()
    text = text.replace("  stale_while_revalidate: 60\n", "  stale_while_revalidate: 600\n")
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


async def test_stale_while_revalidate_refreshes_once_in_the_background(make_proxy, backend, tmp_path):
    proxy = await make_proxy(rules_path=swr_rules(tmp_path))
    clock = proxy.proxy.clock = Clock(1_000_000.0)
    user = new_user()
    first = await proxy.get(PROFILE, user)
    assert first.x_cache == "MISS"
    await backend.call("PUT", PROFILE, user, {"display_name": "Behind the proxy's back", "bio": ""})
    clock.now += 3600 + 1  # past the TTL, within stale-while-revalidate
    await hold(backend)
    stale = [await proxy.get(PROFILE, user) for _ in range(5)]
    assert {r.x_cache for r in stale} == {"STALE"} and {r.body for r in stale} == {first.body}
    await held(backend)
    await release(backend)
    await wait_for(lambda: _refreshed(proxy, user), "the background refresh stored the new profile")
    assert await backend.route_count(*PROFILE_ROUTE) == 2  # one fill, exactly one refresh


async def _refreshed(proxy, user: str) -> bool:
    reply = await proxy.get(PROFILE, user)
    return reply.x_cache == "HIT" and reply.json["body"]["display_name"] == "Behind the proxy's back"


async def test_swr_refresh_raced_by_a_write_is_not_stored(make_proxy, backend, tmp_path):
    proxy = await make_proxy(rules_path=swr_rules(tmp_path))
    clock = proxy.proxy.clock = Clock(1_000_000.0)
    user = new_user()
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    clock.now += 3600 + 1
    await hold(backend)
    assert (await proxy.get(PROFILE, user)).x_cache == "STALE"  # starts the refresh, held after its read
    await held(backend)
    write = await proxy.request("PUT", PROFILE, user, json={"display_name": "Written", "bio": ""})
    assert write.status == 200
    await release(backend)
    await wait_for(lambda: _refresh_done(proxy), "the refresh finished")
    after = await proxy.get(PROFILE, user)
    assert after.x_cache == "MISS" and after.json["body"]["display_name"] == "Written"


async def _refresh_done(proxy) -> bool:
    return not proxy.proxy.warmer.refreshing


async def test_stale_if_error_serves_the_entry_when_the_backend_fails(make_proxy, backend):
    proxy = await make_proxy()
    clock = proxy.proxy.clock = Clock(1_000_000.0)
    user = new_user()
    first = await proxy.get(PROFILE, user)
    clock.now += 3600 + 120  # past TTL + stale-while-revalidate, inside stale-if-error (600 s)
    await backend.control("POST", "fail", {"method": "GET", "path": PROFILE, "status": 503, "count": 1})
    served = await proxy.get(PROFILE, user)
    assert served.status == 200 and served.x_cache == "STALE" and served.body == first.body
    assert "stale-if-error" in served.cache_status and "fwd-status=503" in served.cache_status
    await backend.control("POST", "fail", {"method": "GET", "path": PROFILE, "status": 200, "count": 1,
                                           "response_code": 500})
    envelope_error = await proxy.get(PROFILE, user)  # error_when: header.responseCode 5xx
    assert envelope_error.x_cache == "STALE" and envelope_error.body == first.body


async def test_stale_if_error_never_serves_a_purged_entry(make_proxy, backend):
    proxy = await make_proxy()
    clock = proxy.proxy.clock = Clock(1_000_000.0)
    user = new_user()
    await proxy.get(PROFILE, user)
    assert (await proxy.request("PUT", PROFILE, user, json={"display_name": "x", "bio": ""})).status == 200
    clock.now += 3600 + 120
    await backend.control("POST", "fail", {"method": "GET", "path": PROFILE, "status": 503, "count": 1})
    reply = await proxy.get(PROFILE, user)
    assert reply.status == 503 and reply.x_cache == "MISS"


@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
async def test_instances_sharing_redis_make_one_fetch(make_proxy, backend):
    first, second = await make_proxy(), await make_proxy()
    user = new_user()
    await hold(backend)
    tasks = [asyncio.create_task(p.get(PROFILE, user)) for p in (first, second) for _ in range(20)]
    await held(backend)
    await release(backend)
    replies = await asyncio.gather(*tasks)
    assert len({r.body for r in replies}) == 1
    assert await backend.route_count(*PROFILE_ROUTE) == 1


@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
async def test_a_crashed_lease_owner_does_not_block_requests(make_proxy, backend, redis_server):
    proxy = await make_proxy(lease_ms=300)
    user = new_user()
    prime = await proxy.get(f"{API}/users/stats", user)  # learn nothing; just create the user's generations
    assert prime.status == 200
    decision_key = _profile_key(proxy, user)
    redis_server.admin.set(decision_key + "|lease", "crashed-instance", px=300)
    reply = await proxy.get(PROFILE, user)
    assert reply.status == 200 and reply.x_cache == "MISS"
    assert await backend.route_count(*PROFILE_ROUTE) == 1


def _data_commands(redis_server) -> dict[str, int]:
    return {k: v for k, v in redis_server.command_counts().items() if k not in ("info", "config|resetstat")}


@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
async def test_a_miss_costs_two_redis_round_trips_three_for_a_request_seen_before(proxy, backend, redis_server):
    """A request seen for the first time (mostly a miss): one EVAL that looks up and, the entry being
    absent, takes the fill's lease; one EVALSHA that stores under the guard and drops the lease. The
    same bytes again (mostly a hit, so a plain MGET) missing: MGET, SET NX PX (the lease), the EVALSHA."""
    user = new_user()
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"  # creates the generations
    await proxy.writes_landed()
    redis_server.admin.delete(_profile_key(proxy, user))  # evicted
    token = mint(user, ttl=7200)  # a request not seen before
    redis_server.reset_stats()
    first = await proxy.get(PROFILE, token=token)
    assert first.status == 200 and first.x_cache == "MISS"
    await proxy.writes_landed()  # the answer left before its store write
    counts = _data_commands(redis_server)
    # inside the scripts: MGET and SET NX of the lease; GET and DEL of the lease, GET and EXPIRE of
    # each guarding generation, SET of the entry
    gens = counts.get("expire", 0)
    assert gens >= 1
    assert counts == {"eval": 1, "mget": 1, "set": 2, "evalsha": 1, "get": 1 + gens, "del": 1, "expire": gens}

    redis_server.admin.delete(_profile_key(proxy, user))  # evicted
    redis_server.reset_stats()
    again = await proxy.get(PROFILE, token=token)  # byte for byte the request above
    assert again.status == 200 and again.x_cache == "MISS"
    await proxy.writes_landed()
    assert _data_commands(redis_server) == {"mget": 1, "set": 2, "evalsha": 1, "get": 1 + gens, "del": 1,
                                            "expire": gens}
    assert await backend.route_count(*PROFILE_ROUTE) == 3
    assert redis_server.admin.keys("*|lease") == []  # dropped by the store script


def _profile_key(proxy, user: str) -> str:
    from proxy.core.keys import escape_value

    return f"{proxy.proxy.rules.prefix}:user:{{{escape_value(user)}}}:profile"


@pytest.mark.parametrize("warm_authorization", [True, False], ids=["service-token", "none"])
async def test_warming_refreshes_hot_shared_entries_before_they_expire(make_proxy, backend, warm_authorization):
    """The shared types entry is warmed with WARM_AUTHORIZATION (the backend wants a token on every
    route); without one configured nothing is warmed: the refresh would only get a 401."""
    service = f"Bearer {mint('warming-service')}"
    proxy = await make_proxy(warm_authorization=service if warm_authorization else None)
    clock = proxy.proxy.clock = Clock(1_000_000.0)
    types = f"{API}/achievements/types"
    assert (await proxy.get(types, "reader-1")).x_cache == "MISS"
    assert (await proxy.get(types, "reader-2")).x_cache == "HIT"
    assert await proxy.proxy.warmer.warm_once(horizon=30) == 0  # far from expiry: nothing to do
    clock.now += 86400 - 10  # ten seconds before the 24 h TTL ends
    assert (await proxy.get(types, "reader-1")).headers["Age"] == str(86400 - 10)
    if not warm_authorization:
        assert await proxy.proxy.warmer.warm_once(horizon=30) == 0
        assert await backend.route_count("GET", types) == 1
        return
    assert await proxy.proxy.warmer.warm_once(horizon=30) == 1
    assert await backend.route_count("GET", types) == 2
    clock.now += 20  # the original entry would have expired by now
    again = await proxy.get(types, "reader-3")
    assert again.x_cache == "HIT" and int(again.headers["Age"]) == 20 and again.code == 200
    assert 'katiba_cache_background_refreshes_total{kind="warm",rule="achievement_types"} 1.0' in await proxy.metrics()
