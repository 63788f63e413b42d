"""``refresh_after_purge: true`` (read rules, opt-in): a write by user U that purges U's entries of such a
rule, which U read within ``demand_window``, refetches them in the background with U's credentials,
under the fill guard, a bounded number at a time; never another user's entries. On a rule whose entries
are shared (no ``{user_id}`` in its key: the leaderboard, on in the shipped rules), any verified writer's
purge refetches the entries anyone read, each read paying for one refetch at most."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import API, RULES_PATH, new_user

PROFILE, ME = f"{API}/users/profile", f"{API}/auth/me"
ACHIEVEMENTS, AWARD = f"{API}/achievements", f"{API}/achievements/award"
LEADERBOARD = f"{API}/achievements/leaderboard"
BOARD = f"{LEADERBOARD}?limit=10&offset=0"


@pytest.fixture
def refresh_rules(tmp_path) -> Path:
    """The shipped rules with ``refresh_after_purge: true`` in the defaults: every per-user read rule."""
    text = Path(RULES_PATH).read_text()
    text, n = re.subn(r"^defaults:\n", "defaults:\n  refresh_after_purge: true\n", text, flags=re.M)
    assert n == 1
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


async def refreshed(proxy, rule: str) -> float:
    return await proxy.metric("katiba_cache_background_refreshes_total", rule=rule, kind="after-purge")


async def test_a_read_right_after_the_users_own_write_is_a_hit_with_the_new_data(make_proxy, backend,
                                                                                   refresh_rules, poll):
    proxy = await make_proxy(rules_path=refresh_rules)
    user = new_user()
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    write = await proxy.request("PUT", PROFILE, user, json={"display_name": "After the write", "bio": ""})
    assert write.status == 200

    async def refetched() -> bool:
        return await refreshed(proxy, "user_profile") == 1 and not proxy.proxy.warmer.refresh_slots.locked()
    await poll(refetched, "the profile refetched after the purge")
    await proxy.writes_landed()
    reply = await proxy.get(PROFILE, user)
    assert reply.x_cache == "HIT" and reply.json["body"]["display_name"] == "After the write"
    assert await backend.route_count("GET", PROFILE) == 2  # the first read and the refetch
    assert await refreshed(proxy, "auth_me") == 0  # never read by this user: not fetched


async def test_without_the_option_the_read_after_a_write_is_a_miss(proxy, backend):
    user = new_user()
    await proxy.get(PROFILE, user)
    await proxy.request("PUT", PROFILE, user, json={"display_name": "x", "bio": ""})
    reply = await proxy.get(PROFILE, user)
    assert reply.x_cache == "MISS" and reply.json["body"]["display_name"] == "x"
    assert await backend.route_count("GET", PROFILE) == 2


async def test_a_write_that_purges_another_users_entries_never_refetches_them(make_proxy, backend,
                                                                             refresh_rules, poll):
    proxy = await make_proxy(rules_path=refresh_rules)
    writer, other = new_user(), new_user()
    await proxy.get(ACHIEVEMENTS, other)  # the other user's recent read
    await proxy.get(ACHIEVEMENTS, writer)
    reply = await proxy.request("POST", AWARD, writer, json={"user_id": other, "badge_type": "gold"})
    assert reply.status == 200 and reply.code == 200, reply
    await proxy.background_fills()
    assert await refreshed(proxy, "achievements") == 0
    assert await backend.route_count("GET", ACHIEVEMENTS) == 2  # no refetch with the writer's token
    theirs = await proxy.get(ACHIEVEMENTS, other)
    assert theirs.x_cache == "MISS" and theirs.json["body"]["total_achievements"] == 1  # their own, fresh


async def test_a_refused_write_refetches_nothing(make_proxy, backend, refresh_rules):
    proxy = await make_proxy(rules_path=refresh_rules)
    user = new_user()
    await proxy.get(PROFILE, user)
    await backend.control("POST", "fail", {"method": "PUT", "path": PROFILE, "status": 422})
    assert (await proxy.request("PUT", PROFILE, user, json={"display_name": "y", "bio": ""})).status == 422
    await proxy.background_fills()
    assert await refreshed(proxy, "user_profile") == 0


async def test_refetches_run_a_bounded_number_at_a_time(make_proxy, backend, refresh_rules, poll):
    proxy = await make_proxy(rules_path=refresh_rules)
    limit = proxy.proxy.warmer.refresh_slots._value  # noqa: SLF001 - the bound under test
    users = [new_user() for _ in range(limit + 4)]
    for user in users:
        assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    await backend.control("POST", "gate", {"method": "GET", "path": PROFILE, "count": 100})
    for user in users:  # each write purges only its writer's namespace: one refetch each
        await proxy.request("PUT", PROFILE, user, json={"display_name": "z", "bio": ""})

    async def held(n: int) -> bool:
        return (await backend.control("GET", "gate"))["waiting"] == n
    await poll(lambda: held(limit), f"{limit} refetches held at the backend")
    for _ in range(20):  # the rest wait for a slot, not at the backend
        assert (await backend.control("GET", "gate"))["waiting"] == limit
    await backend.control("POST", "gate/release")
    await poll(lambda: _eq(refreshed(proxy, "user_profile"), len(users)), "every refetch started")


async def _eq(value, expected) -> bool:
    return await value == expected


# ------------------------------------------------------------------- shared entries (the leaderboard)

async def test_a_shared_page_a_write_purged_is_refetched_and_the_next_reader_hits(proxy, backend):
    reader, writer, later = new_user(), new_user(), new_user()
    assert (await proxy.get(BOARD, reader)).x_cache == "MISS"
    award = await proxy.request("POST", AWARD, writer, json={"badge_type": "gold"})
    assert award.status == 200 and award.code == 200, award
    await proxy.background_fills()  # spawned before the award's answer was released
    await proxy.writes_landed()
    assert await refreshed(proxy, "leaderboard") == 1
    reply = await proxy.get(BOARD, later)
    assert reply.x_cache == "HIT"
    assert writer in [row["user_id"] for row in reply.json["body"]["leaderboard"]]  # after the award
    assert await backend.route_count("GET", LEADERBOARD) == 2  # the first read and the refetch


async def test_each_read_of_a_shared_page_pays_for_one_refetch_at_most(proxy, backend):
    await proxy.get(BOARD, new_user())
    writer = new_user()
    for badge in ("gold", "silver"):  # two purges, no read between them
        assert (await proxy.request("POST", AWARD, writer, json={"badge_type": badge})).status == 200
        await proxy.background_fills()
    assert await refreshed(proxy, "leaderboard") == 1
    assert await backend.route_count("GET", LEADERBOARD) == 2
    reply = await proxy.get(BOARD, new_user())
    assert reply.x_cache == "MISS"  # the second award emptied the refetched page; nobody had read it since
    assert writer in [row["user_id"] for row in reply.json["body"]["leaderboard"]]


async def test_one_write_refetches_a_bounded_number_of_shared_pages(proxy, backend):
    bound = proxy.proxy.warmer.recent_reads.max_shared_per_purge
    pages = bound + 3
    for offset in range(pages):
        assert (await proxy.get(f"{LEADERBOARD}?limit=10&offset={offset}", new_user())).x_cache == "MISS"
    assert (await proxy.request("POST", AWARD, new_user(), json={"badge_type": "gold"})).status == 200
    await proxy.background_fills()
    assert await refreshed(proxy, "leaderboard") == bound
    assert await backend.route_count("GET", LEADERBOARD) == pages + bound
    latest = await proxy.get(f"{LEADERBOARD}?limit=10&offset={pages - 1}", new_user())
    assert latest.x_cache == "HIT"  # the pages read last are the ones refetched
    assert (await proxy.get(BOARD, new_user())).x_cache == "MISS"


async def test_a_refused_write_refetches_no_shared_page(proxy, backend):
    await proxy.get(BOARD, new_user())
    refused = await proxy.request("POST", AWARD, new_user(), json={"badge_type": "no-such-badge"})
    assert refused.status == 400 or refused.code == 400, refused
    await proxy.background_fills()
    assert await refreshed(proxy, "leaderboard") == 0
    assert (await proxy.get(BOARD, new_user())).x_cache == "HIT"  # a refused write purges nothing either
