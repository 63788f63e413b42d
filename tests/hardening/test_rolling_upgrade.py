"""Rolling upgrades: entries carry a format version. An old and a new proxy sharing one Redis during a
deploy (here: this code, and this code with FORMAT_VERSION + 1, as two real processes) never misread
each other's entries: each sees the other's as a miss, never as garbage; a purge made by either reaches
the other's entries (generations are version-independent), so a rollback serves no pre-write data."""
from __future__ import annotations

import asyncio
import signal
import sys
import uuid

import aiohttp

from proxy.core.entry import FORMAT_VERSION, Entry, decode_entry
from proxy.core.policy import guard_keys
from proxy.core.rulesfile import load_rules
from proxy.store.redis import RedisStore
from tests.functional.conftest import auth

from .conftest import ADMIN_TOKEN, RULES_PATH, SECRET, free_port, subprocess_env, wait_ready

PROFILE = "/api/v1/users/profile"
NEWER = f"""
import sys
import proxy.core.entry as entry
version = entry.FORMAT_VERSION + 1  # a future release that changed the stored format
entry.FORMAT_VERSION = version
entry.decode_entry.__defaults__ = (version,)
entry.Entry.encode.__defaults__ = (version,)
from proxy.ops.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_entry_of_another_format_version_decodes_as_absent():
    entry = Entry(200, (("Content-Type", "application/json"),), b'{"a": 1}', 1.0, ("t",), "f", '"e"')
    newer = entry.encode(version=FORMAT_VERSION + 1)
    assert decode_entry(newer) is None  # this proxy reading a newer proxy's entry
    assert decode_entry(entry.encode(), version=FORMAT_VERSION + 1) is None  # a newer proxy reading ours
    assert decode_entry(newer, version=FORMAT_VERSION + 1) == entry
    assert decode_entry(entry.encode()) == entry


async def test_a_newer_entry_under_the_same_key_is_a_miss_then_refilled(make_proxy, redis_url):
    store = RedisStore.from_url(redis_url)
    proxy = await make_proxy(store=store)
    user = str(uuid.uuid4())
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    await proxy.writes_landed()
    rules = load_rules(RULES_PATH)
    rule = rules.by_name("user_profile")
    key = f"{rules.prefix}:user:{{{user}}}:profile"
    gens = list(guard_keys(rules.prefix, f"user:{{{user}}}:profile", rule.guards))
    raw, tokens = await store.lookup(key, gens)
    assert decode_entry(raw) is not None  # the key is the one the proxy uses
    current = decode_entry(raw)
    forged = Entry(200, current.headers, b'{"written": "by a newer proxy"}', current.stored_at, current.generations,
                   current.fingerprint, current.etag)
    await store.store_if_current(key, forged.encode(version=FORMAT_VERSION + 1), 3600, gens, tokens, 7200)
    reply = await proxy.get(PROFILE, user)
    assert reply.x_cache == "MISS" and "written" not in reply.json  # not misread: fetched again
    again = await proxy.get(PROFILE, user)
    assert again.x_cache == "HIT" and again.json == reply.json


async def start(script: list[str], backend_url: str, redis_url: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = subprocess_env(JWT_SECRET_KEY=SECRET, CACHE_ADMIN_TOKEN=ADMIN_TOKEN, STORE_TIMEOUT="1",
                         STORE_RECOVERY_HOLD="0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *script, "serve", "--upstream", backend_url, "--rules", RULES_PATH, "--redis", redis_url,
        "--listen", f"127.0.0.1:{port}", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base + "/readyz")
    return proc, base


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]


async def test_old_and_new_proxies_share_one_redis_and_roll_back(backend, redis_url):
    old, old_url = await start(["-m", "proxy"], backend.url, redis_url)
    new, new_url = await start(["-c", NEWER], backend.url, redis_url)
    user = str(uuid.uuid4())
    headers = auth(user)
    try:
        async with aiohttp.ClientSession() as session:
            async def get(base: str) -> tuple[str, dict]:
                async with session.get(base + PROFILE, headers=headers) as resp:
                    assert resp.status == 200
                    return resp.headers["X-Cache"], await resp.json()  # valid JSON: never garbage

            async def put(base: str, name: str) -> None:
                async with session.put(base + PROFILE, headers=headers, json={"display_name": name, "bio": ""}) as resp:
                    assert resp.status == 200

            assert [(await get(old_url))[0], (await get(old_url))[0]] == ["MISS", "HIT"]
            x_cache, body = await get(new_url)
            assert x_cache == "MISS"  # the old format is a miss for the new proxy, not garbage
            assert (await get(new_url))[0] == "HIT"  # its own entry (it replaced the old one)
            assert (await get(old_url))[0] == "MISS"  # and the new format is a miss for the old proxy
            assert (await get(old_url))[0] == "HIT"

            await put(new_url, "written through the new version")  # purges for both versions
            x_cache, body = await get(old_url)
            assert x_cache == "MISS" and body["body"]["display_name"] == "written through the new version"
            x_cache, body = await get(new_url)
            assert x_cache == "MISS" and body["body"]["display_name"] == "written through the new version"

            await stop(new)  # rollback: only the old version is left, with the new one's entries in Redis
            await put(old_url, "after the rollback")
            x_cache, body = await get(old_url)
            assert x_cache == "MISS" and body["body"]["display_name"] == "after the rollback"
            assert (await get(old_url))[0] == "HIT"
    finally:
        await stop(new)
        await stop(old)
