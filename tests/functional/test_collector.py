"""A serving process paces its young garbage collections (proxy/serve/collector.py) and shows every
collection's pause on /metrics, so an operator can tell a GC pause from a slow store or backend."""
from __future__ import annotations

import re

from proxy.serve.config import config_from

from .conftest import API, new_user

PROFILE = f"{API}/users/profile"


def gc_pauses(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in
            re.finditer(r'katiba_cache_gc_pause_seconds_count\{generation="(\d)"\} ([0-9.e+]+)', text)}


async def test_paced_collections_show_on_metrics_while_the_cache_answers(make_proxy, poll):
    proxy = await make_proxy(gc_pace_interval=0.01)
    user = new_user()

    async def paced() -> bool:
        return gc_pauses(await proxy.metrics()).get("1", 0) >= 3  # young and middle, each tick

    await poll(paced, "young collections paced and observed")
    replies = [await proxy.get(PROFILE, user) for _ in range(3)]
    assert [r.x_cache for r in replies] == ["MISS", "HIT", "HIT"]
    assert gc_pauses(await proxy.metrics()).get("1", 0) >= 3


def test_the_pace_is_a_setting_read_from_the_environment():
    assert (config_from(None, {}).gc_pace_interval, config_from(None, {}).gc_full_interval) == (0.1, 600.0)
    changed = config_from(None, {"GC_PACE_INTERVAL": "0", "GC_FULL_INTERVAL": "60"})
    assert (changed.gc_pace_interval, changed.gc_full_interval) == (0.0, 60.0)
