"""The staleness auditor (issue 17, item 5): sampled hits fetched again and compared, stale entries
replaced, mismatches attributed to the writes that preceded them, reported at ``GET /_cache/audit`` and
by ``cache-proxy audit --url``. Real stand-in, real proxy; the rules are copies of the shipped file."""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import jwt
import pytest
import yaml
from aiohttp import web

import standin
from proxy.ops.cli import main

from .conftest import API, RULES_PATH, Backend, new_user

FULL = f"{API}/users/profile/full"
PROFILE = f"{API}/users/profile"
LANGUAGES = f"{API}/users/languages"
PREFERENCES = f"{API}/users/preferences"
REMOVED = "user:{user_id}:full_profile"


@pytest.fixture(params=[True, False], ids=["fast-path", "aiohttp-path"])
def fast_path(request) -> bool:
    """Both hit paths sample: proxy/serve/fastpath.py's and aiohttp's ``RequestPath.read``."""
    return request.param


def audit_rules(tmp_path: Path, *, sample: float = 1, max_per_second: float = 1000,
                drop_from_add_language: str | None = None) -> str:
    """A copy of the shipped rules.yaml with ``audit:`` set, and optionally one purge pattern removed
    from ``add_language`` (the rule mistake the auditor must name)."""
    doc = yaml.safe_load(Path(RULES_PATH).read_text())
    doc["audit"] = {"sample": sample, "max_per_second": max_per_second}
    if drop_from_add_language is not None:
        rule = next(r for r in doc["rules"] if r["name"] == "add_language")
        assert drop_from_add_language in rule["purge"], rule
        rule["purge"].remove(drop_from_add_language)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


async def report(proxy) -> dict:
    reply = await proxy.get("/_cache/audit", headers={"Authorization": f"Bearer {proxy.admin_token}"})
    assert reply.status == 200, reply
    return reply.json


async def audited(proxy, poll, rule: str, **want: int) -> dict:
    """Wait until the report's row of ``rule`` shows ``want`` (e.g. match=1), and return the report."""
    async def reached() -> bool:
        row = (await report(proxy))["rules"][rule]
        return all(row[k] == v for k, v in want.items())
    await poll(reached, f"audit of {rule} reaching {want}")
    return await report(proxy)


async def test_the_auditor_names_a_removed_purge_and_replaces_the_stale_entry(
        make_proxy, backend, poll, tmp_path, monkeypatch, capsys, caplog, fast_path):
    """THE DONE-WHEN TEST: add_language's purge lacks "user:{user_id}:full_profile"; the stand-in's full
    profile shows languages, so each language added leaves the cached full profile stale."""
    monkeypatch.delenv("CACHE_AUDIT_SAMPLE")  # the file's sample: 1 applies
    caplog.set_level(logging.WARNING, logger="proxy")
    rules = audit_rules(tmp_path, drop_from_add_language=REMOVED)
    proxy = await make_proxy(rules_path=rules, fast_path=fast_path)
    user = new_user()
    assert (await proxy.get(FULL, user)).x_cache == "MISS"
    await proxy.writes_landed()
    for i, code in enumerate(("sw", "en", "fr"), start=1):
        added = await proxy.request("POST", LANGUAGES, user, json={"language_code": code})
        assert added.status == 200 and added.code == 200, added
        stale = await proxy.get(FULL, user)
        assert stale.x_cache == "HIT"  # the rule mistake: served without the new language
        assert code not in [lang["language_code"] for lang in stale.json["body"]["languages"]["languages"]]
        await audited(proxy, poll, "user_full_profile", mismatch=i)
        await proxy.writes_landed()
        fresh = await proxy.get(FULL, user)  # the audit replaced the entry with the backend's answer
        assert fresh.x_cache == "HIT", fresh
        assert code in [lang["language_code"] for lang in fresh.json["body"]["languages"]["languages"]]
        await audited(proxy, poll, "user_full_profile", match=i)  # that hit was audited too: up to date
    result = await report(proxy)
    row = result["rules"]["user_full_profile"]
    assert row == {"audited": 6, "match": 3, "mismatch": 3, "skipped": 0, "mismatch_rate": 0.5}
    assert result["suggestions"] == [{"write": "add_language", "read_rule": "user_full_profile",
                                      "pattern": REMOVED, "seen": 3, "of": 3}]
    assert await proxy.metric("katiba_cache_audit_total", rule="user_full_profile", result="mismatch") == 3
    stale_lines = [r for r in caplog.records if getattr(r, "event", None) == "stale_entry"]
    assert len(stale_lines) == 3 and all(r.levelno == logging.WARNING for r in stale_lines)
    assert all(r.rule == "user_full_profile" and r.age_s >= 0 for r in stale_lines)
    assert all(user not in str(vars(r)) for r in stale_lines)  # no user id, and so no key, in the line

    # (6) the same report from the command line, as text and as JSON
    base = str(proxy.client.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["audit", "--url", base, "--token", proxy.admin_token]) == 0
    out = capsys.readouterr().out
    assert ('add "user:{user_id}:full_profile" to add_language.purge (3 of 3 stale user_full_profile reads '
            "followed it)") in out
    assert any(line.split()[:5] == ["user_full_profile", "6", "3", "3", "0"] for line in out.splitlines()), out
    assert await asyncio.to_thread(main, ["audit", "--url", base, "--token", proxy.admin_token, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == result
    assert await asyncio.to_thread(main, ["audit", "--url", base, "--token", "not-the-admin-token"]) == 1
    assert "admin credential refused" in capsys.readouterr().err


async def test_an_up_to_date_entry_is_counted_as_a_match(make_proxy, backend, poll, tmp_path, monkeypatch,
                                                          fast_path):
    monkeypatch.setenv("CACHE_AUDIT_SAMPLE", "1")
    proxy = await make_proxy(rules_path=audit_rules(tmp_path, sample=0), fast_path=fast_path)  # env wins
    user = new_user()
    await backend.seed(user)
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    await proxy.writes_landed()
    before = await backend.route_count("GET", PROFILE)
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"
    result = await audited(proxy, poll, "user_profile", match=1)
    assert result["rules"]["user_profile"] == {"audited": 1, "match": 1, "mismatch": 0, "skipped": 0,
                                               "mismatch_rate": 0.0}
    assert result["suggestions"] == []
    assert await backend.route_count("GET", PROFILE) == before + 1  # the audit's one fetch


async def test_a_purge_racing_the_audit_fetch_is_skipped(make_proxy, backend, poll, tmp_path, monkeypatch):
    monkeypatch.setenv("CACHE_AUDIT_SAMPLE", "1")
    proxy = await make_proxy(rules_path=audit_rules(tmp_path))
    user = new_user()
    assert (await proxy.get(FULL, user)).x_cache == "MISS"
    await proxy.writes_landed()
    await backend.control("POST", "gate", {"method": "GET", "path": FULL, "count": 1})
    assert (await proxy.get(FULL, user)).x_cache == "HIT"

    async def audit_fetch_held() -> bool:
        return (await backend.control("GET", "gate"))["waiting"] >= 1
    await poll(audit_fetch_held, "the audit's fetch held by the stand-in after reading its data")
    # A write whose rule purges the full profile lands while the audit's fetch is out.
    written = await proxy.request("POST", PREFERENCES, user, json={"theme": "dark"})
    assert written.status == 200 and written.code == 200, written
    await backend.control("POST", "gate/release")
    result = await audited(proxy, poll, "user_full_profile", skipped=1)
    assert result["rules"]["user_full_profile"]["match"] == result["rules"]["user_full_profile"]["mismatch"] == 0
    await proxy.writes_landed()
    assert (await proxy.get(FULL, user)).x_cache == "MISS"  # purged, and the audit stored nothing


async def test_an_audit_during_the_owners_write_in_flight_is_skipped(make_proxy, backend, poll, tmp_path,
                                                                    monkeypatch):
    """The backend has committed a write but not answered it yet, so the proxy has not purged: an audit
    fetch then sees data newer than the entry through no fault of the rules. Not a mismatch (it would
    blame the rules, and name earlier writes): skipped, and nothing replaced."""
    monkeypatch.setenv("CACHE_AUDIT_SAMPLE", "1")
    proxy = await make_proxy(rules_path=audit_rules(tmp_path))
    user = new_user()
    assert (await proxy.get(FULL, user)).x_cache == "MISS"
    await proxy.writes_landed()
    await backend.control("POST", "gate", {"method": "POST", "path": PREFERENCES, "count": 1})
    write = asyncio.ensure_future(proxy.request("POST", PREFERENCES, user, json={"theme": "dark"}))

    async def write_committed() -> bool:
        return (await backend.control("GET", "gate"))["waiting"] >= 1
    await poll(write_committed, "the write committed at the backend and held before its answer")
    assert (await proxy.get(FULL, user)).x_cache == "HIT"  # sampled: audited while the write is out
    result = await audited(proxy, poll, "user_full_profile", audited=1)
    assert result["rules"]["user_full_profile"]["skipped"] == 1, result
    assert result["suggestions"] == []
    await backend.control("POST", "gate/release")
    written = await write
    assert written.status == 200 and written.code == 200, written
    await proxy.writes_landed()
    fresh = await proxy.get(FULL, user)
    assert fresh.x_cache == "MISS" and fresh.json["body"]["preferences"]["theme"] == "dark"


async def test_the_rate_budget_bounds_audit_fetches(make_proxy, backend, poll, tmp_path, monkeypatch, fast_path):
    """max_per_second 0.001: a bucket of one audit that refills in 1000 s. A burst of sampled hits on
    five keys costs the backend one audit fetch; the other samples are not taken (and not counted)."""
    monkeypatch.setenv("CACHE_AUDIT_SAMPLE", "1")
    proxy = await make_proxy(rules_path=audit_rules(tmp_path, max_per_second=0.001), fast_path=fast_path)
    users = [new_user() for _ in range(5)]
    for user in users:
        assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    await proxy.writes_landed()
    before = await backend.route_count("GET", PROFILE)
    for _ in range(4):
        for user in users:
            assert (await proxy.get(PROFILE, user)).x_cache == "HIT"
    await audited(proxy, poll, "user_profile", audited=1)
    await asyncio.sleep(0)
    assert await backend.route_count("GET", PROFILE) - before == 1  # <= the bucket's size, 1
    assert await proxy.metric("katiba_cache_audit_total", rule="user_profile", result="match") == 1


async def test_each_worker_gets_its_share_of_the_instances_budget(make_proxy, tmp_path, monkeypatch):
    """--workers N hands each worker audit_share = 1/N (proxy/ops/workers.py): the budget stays per instance."""
    monkeypatch.setenv("CACHE_AUDIT_SAMPLE", "1")
    proxy = await make_proxy(rules_path=audit_rules(tmp_path, max_per_second=8), audit_share=1 / 4)
    assert proxy.proxy.auditor.budget.rate == 2.0
    assert proxy.proxy.auditor.budget.capacity == 2.0


async def test_shadow_mode_comparisons_feed_the_report(make_proxy, backend, poll, tmp_path, monkeypatch):
    monkeypatch.setenv("CACHE_AUDIT_SAMPLE", "0")  # no sampling: the report comes from shadow's comparisons
    proxy = await make_proxy(rules_path=audit_rules(tmp_path, drop_from_add_language=REMOVED), cache_mode="shadow")
    user = new_user()
    assert (await proxy.get(FULL, user)).x_cache == "BYPASS"  # would-miss: filled
    await proxy.writes_landed()
    assert (await proxy.get(FULL, user)).x_cache == "BYPASS"  # would-hit, same content
    await audited(proxy, poll, "user_full_profile", match=1)
    assert (await proxy.request("POST", LANGUAGES, user, json={"language_code": "sw"})).status == 200
    answered = await proxy.get(FULL, user)  # would-hit, but the entry lacks the language
    assert "sw" in [lang["language_code"] for lang in answered.json["body"]["languages"]["languages"]]
    result = await audited(proxy, poll, "user_full_profile", mismatch=1)
    assert result["rules"]["user_full_profile"]["audited"] == 2
    assert result["suggestions"] == [{"write": "add_language", "read_rule": "user_full_profile",
                                      "pattern": REMOVED, "seen": 1, "of": 1}]
    await proxy.writes_landed()
    assert (await proxy.get(FULL, user)).x_cache == "BYPASS"  # the entry was replaced: a match now
    await audited(proxy, poll, "user_full_profile", match=2, mismatch=1)


async def test_an_unmatched_write_is_named_by_its_folded_route(make_proxy, backend, poll, tmp_path, monkeypatch):
    """A write no rule matches, with an id in its path, shows up as METHOD /path/{id}; the suggestion is
    a new write rule. The stand-in's DELETE /users/languages/{id} is made unruled for this."""
    monkeypatch.setenv("CACHE_AUDIT_SAMPLE", "1")
    doc = yaml.safe_load(Path(audit_rules(tmp_path)).read_text())
    doc["rules"] = [r for r in doc["rules"] if r["name"] != "delete_language"]
    if "unmatched_writes" in doc:  # the fail-safe would purge the writer's namespaces: nothing stale left
        doc["unmatched_writes"] = {"purge": []}
    rules = tmp_path / "unruled.yaml"
    rules.write_text(yaml.safe_dump(doc, sort_keys=False))
    proxy = await make_proxy(rules_path=str(rules))
    user = new_user()
    language_id = (await backend.seed(user))["language_id"]
    assert (await proxy.get(FULL, user)).x_cache == "MISS"
    await proxy.writes_landed()
    assert (await proxy.request("DELETE", f"{LANGUAGES}/{language_id}", user)).status == 200
    assert (await proxy.get(FULL, user)).x_cache == "HIT"  # stale: nothing purged it
    result = await audited(proxy, poll, "user_full_profile", mismatch=1)
    assert result["suggestions"] == [{"write": "DELETE /api/v1/users/languages/{id}",
                                      "read_rule": "user_full_profile", "pattern": REMOVED, "seen": 1, "of": 1}]


@pytest.fixture
async def recording_backend(aiohttp_client):
    """The stand-in, with the subject of the token of every GET it received recorded (in order)."""
    seen: list[tuple[str, str | None]] = []

    @web.middleware
    async def record(request: web.Request, handler):
        if request.method == "GET" and request.path.startswith(API):
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            sub = jwt.decode(token, options={"verify_signature": False})["sub"] if token else None
            seen.append((request.path, sub))
        return await handler(request)

    app = standin.build_app(delay_ms=0)
    app.middlewares.append(record)
    backend = Backend(await aiohttp_client(app))
    backend.seen = seen
    return backend


async def test_an_audit_fetches_with_the_sampled_requests_own_token(make_proxy, recording_backend, poll, tmp_path,
                                                                    monkeypatch, fast_path):
    monkeypatch.setenv("CACHE_AUDIT_SAMPLE", "1")
    proxy = await make_proxy(upstream_url=recording_backend.url, rules_path=audit_rules(tmp_path),
                             fast_path=fast_path)
    alice, bob = new_user(), new_user()
    for user in (alice, bob):
        assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    await proxy.writes_landed()
    del recording_backend.seen[:]
    for user in (alice, bob, alice):
        assert (await proxy.get(PROFILE, user)).x_cache == "HIT"
        await audited(proxy, poll, "user_profile", audited=len(recording_backend.seen) + 1)
    assert recording_backend.seen == [(PROFILE, alice), (PROFILE, bob), (PROFILE, alice)]
    assert (await report(proxy))["rules"]["user_profile"]["match"] == 3  # each got their own data back


@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
async def test_an_l1_hit_is_audited_and_a_replaced_entry_leaves_l1(make_proxy, backend, poll, tmp_path,
                                                                    monkeypatch, fast_path):
    monkeypatch.setenv("CACHE_AUDIT_SAMPLE", "1")
    doc = yaml.safe_load(Path(audit_rules(tmp_path)).read_text())
    next(r for r in doc["rules"] if r["name"] == "user_profile")["l1_ttl"] = 60
    rules = tmp_path / "l1.yaml"
    rules.write_text(yaml.safe_dump(doc, sort_keys=False))
    proxy = await make_proxy(rules_path=str(rules), fast_path=fast_path)

    async def subscribed() -> bool:
        return proxy.proxy.l1 is not None and proxy.proxy.l1.healthy
    await poll(subscribed, "L1 invalidation channel subscribed")
    user = new_user()
    assert (await proxy.get(PROFILE, user)).x_cache == "MISS"
    await proxy.writes_landed()
    assert (await proxy.get(PROFILE, user)).x_cache == "HIT"  # from Redis, now also in L1
    await audited(proxy, poll, "user_profile", match=1)
    await backend.call("PUT", PROFILE, user, {"display_name": "Changed behind the proxy", "bio": ""})
    from_l1 = await proxy.get(PROFILE, user)
    assert "detail=l1" in from_l1.cache_status and from_l1.json["body"]["display_name"] != "Changed behind the proxy"
    await audited(proxy, poll, "user_profile", mismatch=1)
    await proxy.writes_landed()
    fresh = await proxy.get(PROFILE, user)
    assert fresh.x_cache == "HIT" and fresh.json["body"]["display_name"] == "Changed behind the proxy", fresh


async def test_the_audit_report_needs_the_admin_credential(proxy):
    assert (await proxy.get("/_cache/audit")).status == 401
    assert (await proxy.get("/_cache/audit", headers={"Authorization": "Bearer nope"})).status == 403
    reply = await proxy.request("POST", "/_cache/audit", headers={"Authorization": f"Bearer {proxy.admin_token}"})
    assert reply.status == 405
