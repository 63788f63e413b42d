"""Issue 20: every ``fwd=`` value of ``Cache-Status`` is documented, and the documented list is exactly what
the proxy emits. ``proxy.serve.wire.FWD`` is the list: ``CacheStatus`` refuses any other value (an assertion,
so every test that reaches an undocumented one fails), the operator's docs must hold the same table,
and each documented value is produced here by a request that an operator could make."""
from __future__ import annotations

import re
import time
from pathlib import Path

from proxy.serve.wire import FWD

from .conftest import PROFILE, auth

DOCS = Path(__file__).resolve().parents[2] / "docs"
HEADING = "What `fwd=` means in Cache-Status"

RULES = """version: 1
prefix: "ops-fwd"
defaults: {auth: required, cache_when: {status: [200], json: {path: header.responseCode, between: [200, 299]}}}
rules:
  - name: user_profile
    match: GET /api/v1/users/profile
    key: "user:{user_id}:profile"
    ttl: 60
    client_cache_control: revalidate
  - name: update_profile
    match: PUT /api/v1/users/profile
    purge: ["user:{user_id}:*"]
"""


def documented_fwd_values() -> list[str]:
    """The `fwd=` values of the table under HEADING, in the one doc that has it."""
    holders = [p for p in sorted(DOCS.glob("*.md")) if HEADING in p.read_text()]
    assert len(holders) == 1, f"exactly one doc under docs/ must have the table {HEADING!r}: {holders}"
    text = holders[0].read_text().split(HEADING, 1)[1]
    section = re.split(r"\n#+ ", text, maxsplit=1)[0]
    return re.findall(r"^\|\s*`fwd=([a-z-]+)`\s*\|", section, flags=re.M)


def fwd_of(headers) -> str:
    m = re.search(r"(?:^|; )fwd=([a-z-]+)", headers["Cache-Status"])
    assert m, headers["Cache-Status"]
    return m.group(1)


def test_the_documented_table_is_the_list_the_code_uses():
    documented = documented_fwd_values()
    assert len(documented) == len(set(documented)), documented
    assert set(documented) == set(FWD)


async def test_each_documented_value_is_what_an_operator_sees(make_proxy, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    ops = await make_proxy(rules)
    user = auth("fwd-user")
    seen: dict[str, str] = {}

    async def get(why: str, headers: dict, method: str = "GET") -> None:
        status, response_headers, _ = await ops.request(method, PROFILE, headers=headers)
        assert status < 500, (why, status)
        seen[why] = fwd_of(response_headers)

    await get("first read", user)
    for _ in range(200):  # the fill's store write goes out behind the answer
        status, headers, _ = await ops.get(PROFILE, headers=user)
        if headers["X-Cache"] == "HIT":
            break
    assert headers["X-Cache"] == "HIT"
    real_clock = ops.proxy.clock
    ops.proxy.clock = lambda: real_clock() + 120  # past the 60 s TTL
    await get("expired entry", user)
    ops.proxy.clock = real_clock
    status, _, _ = await ops.request("PUT", PROFILE, headers=user, json={"display_name": "fwd"})
    assert status == 200
    await get("read after a purge", user)
    await get("client no-cache", user | {"Cache-Control": "no-cache"})
    await get("no token", {})
    await get("other method", user, "OPTIONS")
    assert seen == {"first read": "uri-miss", "expired entry": "stale", "read after a purge": "miss",
                    "client no-cache": "request", "no token": "bypass", "other method": "method"}, seen
    # vary-miss belongs to the RFC 9111 cache of unruled routes: shown by
    # tests/rfc9111/test_storing.py::test_4_1_vary_selects_the_matching_variant
    assert set(seen.values()) | {"vary-miss"} == set(FWD)
