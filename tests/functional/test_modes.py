"""Rollout modes ([6/7], [9/9]): CACHE_MODE off and shadow, per-rule enabled: false and rollout: N%."""
from __future__ import annotations

from pathlib import Path

from .conftest import API, RULES_PATH, new_user

PROFILE = f"{API}/users/profile"


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.split()[-1])
    return 0.0


async def test_shadow_mode_answers_from_the_backend_and_counts_would_be_hits(make_proxy, backend):
    proxy = await make_proxy(cache_mode="shadow")
    user = new_user()
    replies = [await proxy.get(PROFILE, user) for _ in range(3)]
    assert {r.x_cache for r in replies} == {"BYPASS"}
    assert all("detail=shadow" in r.cache_status for r in replies)
    assert await backend.route_count("GET", PROFILE) == 3  # every request reached the backend
    # requestRefId and timestamp differ on every answer; the rule lists them as volatile.
    assert len({r.json["header"]["requestRefId"] for r in replies}) == 3
    text = await proxy.metrics()
    assert metric(text, "katiba_cache_shadow_total", rule="user_profile", outcome="would-miss") == 1
    assert metric(text, "katiba_cache_shadow_total", rule="user_profile", outcome="would-hit-match") == 2
    await backend.call("PUT", PROFILE, user, {"display_name": "Changed behind the proxy", "bio": ""})
    changed = await proxy.get(PROFILE, user)
    assert changed.json["body"]["display_name"] == "Changed behind the proxy"  # shadow never serves cache
    text = await proxy.metrics()
    assert metric(text, "katiba_cache_shadow_total", rule="user_profile", outcome="would-hit-mismatch") == 1


async def test_cache_off_sends_reads_to_the_backend_but_writes_still_purge(make_proxy, backend, make_store):
    store = make_store()
    on = await make_proxy(store=store)
    user = new_user()
    assert (await on.get(PROFILE, user)).x_cache == "MISS"
    off = await make_proxy(store=store, cache_mode="off")  # the same store: a rollback and back
    assert (await off.get(PROFILE, user)).x_cache == "BYPASS"
    assert (await off.request("PUT", PROFILE, user, json={"display_name": "Off", "bio": ""})).status == 200
    back_on = await on.get(PROFILE, user)
    assert back_on.x_cache == "MISS" and back_on.json["body"]["display_name"] == "Off"


def edited_rules(tmp_path: Path, old: str, new: str) -> str:
    text = Path(RULES_PATH).read_text()
    assert old in text
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace(old, new, 1))
    return str(path)


async def test_a_disabled_rule_bypasses(make_proxy, backend, tmp_path):
    rules = edited_rules(tmp_path, 'key: "user:{user_id}:profile"\n', 'key: "user:{user_id}:profile"\n    enabled: false\n')
    proxy = await make_proxy(rules_path=rules)
    user = new_user()
    replies = [await proxy.get(PROFILE, user) for _ in range(2)]
    assert [r.x_cache for r in replies] == ["BYPASS", "BYPASS"]
    assert "detail=rule-disabled" in replies[0].cache_status
    assert await backend.route_count("GET", PROFILE) == 2


async def test_rollout_caches_for_a_stable_share_of_users(make_proxy, backend, tmp_path):
    rules = edited_rules(tmp_path, 'key: "user:{user_id}:profile"\n', 'key: "user:{user_id}:profile"\n    rollout: 50%\n')
    proxy = await make_proxy(rules_path=rules)
    cached, uncached = 0, 0
    for i in range(40):
        user = f"rollout-user-{i}"  # fixed ids: the split is the same on every run
        first, second = await proxy.get(PROFILE, user), await proxy.get(PROFILE, user)
        if first.x_cache == "BYPASS":
            assert second.x_cache == "BYPASS" and "detail=rollout" in first.cache_status  # stable arm
            uncached += 1
        else:
            assert (first.x_cache, second.x_cache) == ("MISS", "HIT")
            cached += 1
    assert cached > 5 and uncached > 5  # both arms exist (a 50% split of 40 users)
    text = await proxy.metrics()
    assert metric(text, "katiba_cache_bypass_total", rule="user_profile", reason="rollout") == 2 * uncached
