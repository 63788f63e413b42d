"""Gradual rollout: per-arm metrics for rules with rollout < 100 (katiba_cache_rollout_requests_total
{rule,arm,status_class} and katiba_cache_rollout_request_duration_seconds{rule,arm}), so operators can
compare latency and error rates of cached and uncached traffic. The arm is a stable hash of the user."""
from __future__ import annotations

from pathlib import Path

from proxy.core.policy import in_rollout

from .conftest import RULES_PATH, metric

PROFILE = "/api/v1/users/profile"
PREFERENCES = "/api/v1/users/preferences"


def half_rollout(tmp_path: Path) -> str:
    text = Path(RULES_PATH).read_text()
    old = 'key: "user:{user_id}:profile"\n'
    assert old in text
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace(old, old + "    rollout: 50%\n", 1))
    return str(path)


async def test_metrics_per_arm(make_proxy, backend, tmp_path):
    proxy = await make_proxy(rules_path=half_rollout(tmp_path))
    users = [f"arm-user-{i}" for i in range(40)]  # fixed ids: the same split on every run
    inside = [u for u in users if in_rollout(u, 50)]
    outside = [u for u in users if not in_rollout(u, 50)]
    assert len(inside) > 5 and len(outside) > 5
    for user in users:
        first, second = await proxy.get(PROFILE, user), await proxy.get(PROFILE, user)
        if user in inside:
            assert (first.x_cache, second.x_cache) == ("MISS", "HIT")
        else:
            assert (first.x_cache, second.x_cache) == ("BYPASS", "BYPASS") and "detail=rollout" in first.cache_status
    # one backend failure in each arm: the error rate is per arm too
    for user in (inside[0], outside[0]):
        await proxy.request("PUT", PROFILE, user, json={"display_name": "x", "bio": ""})  # the next GET is a miss
        await backend.control("POST", "fail", {"method": "GET", "path": PROFILE, "status": 503, "count": 1})
        assert (await proxy.get(PROFILE, user)).status == 503
    assert (await proxy.get(PROFILE)).x_cache == "BYPASS"  # no token: in neither arm
    assert (await proxy.get(PREFERENCES, inside[0])).x_cache == "MISS"  # a rule at 100%: no arm metrics

    text = await proxy.metrics()
    rule = "user_profile"
    assert metric(text, "katiba_cache_rollout_requests_total", rule=rule, arm="cached", status_class="2xx") == 2 * len(inside)
    assert metric(text, "katiba_cache_rollout_requests_total", rule=rule, arm="uncached", status_class="2xx") == 2 * len(outside)
    assert metric(text, "katiba_cache_rollout_requests_total", rule=rule, arm="cached", status_class="5xx") == 1
    assert metric(text, "katiba_cache_rollout_requests_total", rule=rule, arm="uncached", status_class="5xx") == 1
    assert metric(text, "katiba_cache_rollout_request_duration_seconds_count", rule=rule, arm="cached") == 2 * len(inside) + 1
    assert metric(text, "katiba_cache_rollout_request_duration_seconds_count", rule=rule, arm="uncached") == 2 * len(outside) + 1
    assert 'rule="user_preferences"' not in "\n".join(l for l in text.splitlines() if l.startswith("katiba_cache_rollout"))


async def test_an_arm_stays_with_its_user_across_instances(make_proxy, tmp_path):
    rules = half_rollout(tmp_path)
    a, b = await make_proxy(rules_path=rules), await make_proxy(rules_path=rules)
    for i in range(20):
        user = f"stable-{i}"
        ra, rb = await a.get(PROFILE, user), await b.get(PROFILE, user)
        assert ("detail=rollout" in ra.cache_status) == ("detail=rollout" in rb.cache_status) == (not in_rollout(user, 50))
