"""The fill race, made deterministic with the stand-in's gate: a GET reads the old profile, a PUT lands
and purges while that GET is held, then the GET's fill completes. The fill guard must refuse to store
the old body; without it (``unsafe={"no-fill-guard"}``) the old body is served as a HIT afterwards."""
from __future__ import annotations

import asyncio
import uuid

PROFILE = "/api/v1/users/profile"


async def race(proxy, backend, poll, user: str):
    """Run the interleaving; returns (held GET's reply, the write's reply, the old version)."""
    old = await backend.call("GET", PROFILE, user)
    assert old.status == 200 and old.code == 200
    await backend.control("POST", "gate", {"method": "GET", "path": PROFILE})

    held = asyncio.create_task(proxy.get(PROFILE, user))
    try:
        async def waiting() -> bool:
            return (await backend.control("GET", "gate"))["waiting"] == 1
        await poll(waiting, "the proxy's GET is held by the backend after reading its data")

        written = await proxy.request("PUT", PROFILE, user, json={"display_name": "After The Write"})
        assert written.status == 200 and written.code == 200, written
        assert written.version > old.version
        assert not held.done()  # the GET really started before the write and is still in flight
    finally:
        await backend.control("POST", "gate/release")
    first = await held
    return first, written, old.version


async def test_fill_guard_refuses_the_old_body(proxy, backend, poll):
    user = str(uuid.uuid4())
    before = await backend.route_count("GET", PROFILE)
    first, written, old_version = await race(proxy, backend, poll, user)

    # It began before the write: old data is a correct answer for it; storing it is not.
    assert first.status == 200 and first.x_cache == "MISS", first
    assert first.version == old_version and b"After The Write" not in first.body
    await proxy.writes_landed()  # the answer left before its write; the guard's verdict comes after
    assert await proxy.metric("katiba_cache_stores_total", rule="user_profile", outcome="generation-changed") == 1

    after = await proxy.get(PROFILE, user)
    assert after.x_cache == "MISS", after  # never a HIT of the old body
    assert after.version == written.version and after.json["body"]["display_name"] == "After The Write"
    again = await proxy.get(PROFILE, user)
    assert again.x_cache == "HIT" and again.body == after.body, again
    # the set-up's direct read, the held GET, the refetch; the last GET was answered from cache
    assert await backend.route_count("GET", PROFILE) - before == 3


async def test_without_the_fill_guard_the_old_body_is_served(make_proxy, backend, poll):
    """Proves the test above bites: with the guard switched off the same sequence serves stale data."""
    proxy = await make_proxy(unsafe=frozenset({"no-fill-guard"}))
    user = str(uuid.uuid4())
    first, written, old_version = await race(proxy, backend, poll, user)
    assert first.x_cache == "MISS" and first.version == old_version

    after = await proxy.get(PROFILE, user)
    assert after.x_cache == "HIT", after
    assert after.version == old_version < written.version  # the pre-write profile, after the write
    assert after.body == first.body
