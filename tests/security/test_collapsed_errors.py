"""Collapsed fills hand waiters only an answer that would be stored (issue 18, item 4).

A deactivated user's cold request for a global entry leads the fill; an innocent user's request for
the same key arrives while the backend is still answering (held by the stand-in's gate) and waits for
it. The leader's 401 is its own: the waiter fetches with its own credentials and gets the leaderboard.
Across instances sharing Redis, the waiter on the other instance polls for the entry and the lease, and
likewise fetches itself once the leader stored nothing. (A tokenless leader made with ``Connection:
Authorization`` is refused earlier: it bypasses, tests/security/test_origin_keying.py.) Every request carries a valid token; the rules
are this module's own. Both request paths, both stores.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.functional.conftest import API, new_user, sample
from tests.security.helpers import board_rules

BOARD = f"{API}/achievements/leaderboard"
RULES = board_rules("sec18c")
PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp-path"])


async def wait_for(predicate, what: str, attempts: int = 1000) -> None:
    for _ in range(attempts):
        if await predicate():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"never happened: {what}")


async def make_cache(make_proxy, tmp_path, fast_path: bool, **overrides):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return await make_proxy(rules_path=path, fast_path=fast_path, **overrides)


async def deactivated_user(backend) -> str:
    user = new_user()
    await backend.control("POST", f"users/{user}/deactivate")
    return user


async def hold_board(backend) -> None:
    await backend.control("POST", "gate", {"method": "GET", "path": BOARD})
    await backend.control("POST", "reset-stats")


async def held(backend) -> None:
    async def waiting() -> bool:
        return (await backend.control("GET", "gate"))["waiting"] >= 1

    await wait_for(waiting, "the leader's request held at the backend")


async def coalesced(cache, n: int = 1) -> bool:
    return sample(await cache.metrics(), "katiba_cache_coalesced_waiters_total", rule="board") >= n


@PATHS
async def test_a_deactivated_users_401_is_not_handed_to_a_collapsed_waiter(make_proxy, backend, tmp_path, fast_path):
    cache = await make_cache(make_proxy, tmp_path, fast_path)
    banned, innocent = await deactivated_user(backend), new_user()
    await hold_board(backend)
    leader = asyncio.create_task(cache.get(BOARD, banned))
    await held(backend)
    waiter = asyncio.create_task(cache.get(BOARD, innocent))
    await wait_for(lambda: coalesced(cache), "the innocent request waits for the leader's fill")
    await backend.control("POST", "gate/release")
    led, waited = await asyncio.gather(leader, waiter)
    assert led.status == 401 and b"deactivated" in led.body, led
    assert waited.status == 200 and waited.code == 200, waited
    assert await backend.route_count("GET", BOARD) == 2  # the waiter fetched with its own token
    assert (await cache.get(BOARD, new_user())).x_cache == "HIT"


@PATHS
async def test_a_storable_answer_is_still_shared_by_collapsed_waiters(make_proxy, backend, tmp_path, fast_path):
    cache = await make_cache(make_proxy, tmp_path, fast_path)
    await hold_board(backend)
    leader = asyncio.create_task(cache.get(BOARD, new_user()))
    await held(backend)
    waiters = [asyncio.create_task(cache.get(BOARD, new_user())) for _ in range(5)]
    await wait_for(lambda: coalesced(cache, 5), "five requests wait for the leader's fill")
    await backend.control("POST", "gate/release")
    replies = await asyncio.gather(leader, *waiters)
    assert {r.status for r in replies} == {200} and len({r.body for r in replies}) == 1
    assert sum("collapsed" in r.cache_status for r in replies) == 5
    assert await backend.route_count("GET", BOARD) == 1


@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
@PATHS
async def test_across_instances_a_waiter_fetches_itself_after_the_leaders_401(make_proxy, backend, tmp_path,
                                                                              fast_path):
    first = await make_cache(make_proxy, tmp_path, fast_path)
    second = await make_cache(make_proxy, tmp_path, fast_path)
    banned, innocent = await deactivated_user(backend), new_user()
    await hold_board(backend)
    leader = asyncio.create_task(first.get(BOARD, banned))
    await held(backend)
    waiter = asyncio.create_task(second.get(BOARD, innocent))
    await wait_for(lambda: _inside(second), "the innocent request is in the second instance")
    await backend.control("POST", "gate/release")
    led, waited = await asyncio.gather(leader, waiter)
    assert led.status == 401, led
    assert waited.status == 200 and waited.code == 200, waited
    assert await backend.route_count("GET", BOARD) == 2


async def _inside(cache) -> bool:
    return cache.proxy.gate.inflight >= 1
