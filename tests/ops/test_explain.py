"""``cache-proxy explain`` (offline from the rules file, and ``--url`` against a running proxy), the pure
``proxy.core.explain.explain`` over entry states, and the admin-only ``GET /_cache/explain`` endpoint."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from proxy.ops.cli import main
from proxy.core.entry import Entry
from proxy.core.explain import EntryState, decide, explain
from proxy.core.identity import Identity
from proxy.core.rulesfile import load_rules

from .conftest import ADMIN, PROFILE, RULES_PATH, SECRET, auth, mint

USER = "3f1c9a7e-5b2d-4e8f-9a61-00c0ffee4242"


@pytest.fixture
def offline(monkeypatch, capsys):
    """Run ``cache-proxy explain ...`` in process; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("JWT_SECRET_KEY", SECRET)
    monkeypatch.delenv("CACHE_MODE", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["explain", *argv, "--rules", RULES_PATH])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_no_token_is_bypass(offline):
    code, out, _ = offline("GET", PROFILE)
    assert code == 0
    assert "user_profile" in out and "X-Cache:   BYPASS" in out and "no-token" in out


def test_verified_token_is_a_lookup_with_the_user_id_masked(offline):
    code, out, _ = offline("GET", PROFILE, "--token", mint(USER))
    assert code == 0
    assert "X-Cache:   HIT or MISS" in out and "(verified)" in out
    assert "katiba360:proxy:user:{…4242}:profile" in out
    assert USER not in out  # shown only to an admin
    code, out, _ = offline("GET", PROFILE, "--token", mint(USER), "--json")
    result = json.loads(out)
    assert result["decision"] == "lookup" and result["rule"] == "user_profile" and result["ttl"] == 3600
    assert result["identity"] == {"user_id": "…4242", "verified": True}
    assert USER not in out


def test_unknown_query_parameter_is_bypass_and_named(offline):
    code, out, _ = offline("GET", "/api/v1/achievements/leaderboard?limit=10&sort=asc", "--token", mint(USER), "--json")
    result = json.loads(out)
    assert (result["rule"], result["x_cache"], result["reason"]) == ("leaderboard", "BYPASS", "unkeyed-query")
    assert "sort" in result["why"] and "limit" not in result["why"].split("vary_query")[0]
    code, out, _ = offline("GET", "/api/v1/achievements/leaderboard?offset=20&limit=10", "--token", mint(USER), "--json")
    result = json.loads(out)
    assert result["x_cache"] == "HIT or MISS"
    assert result["key"] == "katiba360:proxy:{achievements:global}:leaderboard|q:limit=10&offset=20"


def test_unknown_route_and_non_canonical_path_are_bypass(offline):
    code, out, _ = offline("GET", "/api/v1/not/a/route", "--token", mint(USER), "--json")
    result = json.loads(out)
    assert (result["rule"], result["x_cache"], result["reason"]) == (None, "BYPASS", "no-rule")
    code, out, _ = offline("GET", "/api/v1/users/./profile", "--token", mint(USER), "--json")
    assert json.loads(out)["reason"] == "non-canonical-path"


def test_forged_token_is_bypass(offline):
    code, out, _ = offline("GET", PROFILE, "--token", mint(USER, secret="another-secret-0123456789abcdef0123"))
    assert "invalid token (bad_signature)" in out and "X-Cache:   BYPASS" in out


def test_write_names_its_purges(offline):
    code, out, _ = offline("PUT", PROFILE, "--token", mint(USER), "--json")
    result = json.loads(out)
    assert (result["decision"], result["x_cache"], result["purges"]) == ("write", "BYPASS", ["user:{…4242}:*"])


def test_write_names_what_its_purge_refetches(offline):
    code, out, _ = offline("POST", "/api/v1/achievements/award", "--token", mint(USER))
    assert code == 0
    assert ("refetches: leaderboard, recent_achievements (refresh_after_purge: the pages anyone read in the "
            "last 600 s, at most 16 a write)") in out
    result = json.loads(offline("POST", "/api/v1/achievements/award", "--token", mint(USER), "--json")[1])
    assert [r["rule"] for r in result["refetches"]] == ["leaderboard", "recent_achievements"]
    assert {r["whose_reads"] for r in result["refetches"]} == {"anyone"}
    # A profile update empties no page of theirs; and without a verified token nothing is refetched.
    assert "refetches" not in json.loads(offline("PUT", PROFILE, "--token", mint(USER), "--json")[1])
    assert "refetches" not in json.loads(offline("POST", "/api/v1/achievements/award", "--json")[1])


def test_an_unmatched_write_shows_the_fail_safe_and_when_it_purges(offline):
    code, out, _ = offline("POST", "/api/v1/onboarding/progress", "--token", mint(USER))
    assert code == 0
    assert "rule:      unmatched (unmatched_writes, " in out
    assert "purges:    user:{…4242}:*, achievements:{…4242}:*" in out
    assert "HTTP 4xx or header.responseCode 400-499" in out and USER not in out
    code, out, _ = offline("PUT", "/api/v1/onboarding/progress", "--json")  # no token: no one to name
    result = json.loads(out)
    assert (result["rule"], result["purges"]) == (None, []) and "no verified token" in result["why"]
    code, out, _ = offline("POST", "/api/v1/users/preferences", "--token", mint(USER), "--json")
    result = json.loads(out)
    assert result["rule"] == "update_preferences" and "user:{…4242}:me" in result["purges"]
    assert result["purge_when"].startswith("success or unknown outcome")


def test_without_a_secret_the_token_is_decoded_but_flagged(offline, monkeypatch):
    monkeypatch.delenv("JWT_SECRET_KEY")
    monkeypatch.delenv("JWT_SECRET_KEY_FILE", raising=False)
    code, out, _ = offline("GET", PROFILE, "--token", mint(USER, secret="whatever-secret-0123456789abcdef01"))
    assert code == 0 and "NOT verified" in out and "{…4242}" in out
    code, out, _ = offline("GET", PROFILE, "--token", mint(USER), "--json")
    assert json.loads(out)["identity"]["verified"] is False


def test_invalid_rules_file_exits_1_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "rules.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    match: GET /a\n    key: 'a:b'\n    ttl: never\n")
    assert main(["explain", "GET", "/a", "--rules", str(bad)]) == 1
    assert f"{bad}:6: " in capsys.readouterr().err


# ------------------------------------------------------------------------ the pure function


def _entry_for(rules, user: str, age: float, now: float, tokens=None, fingerprint=None) -> tuple:
    d = decide(rules, "GET", PROFILE, Identity(user, now + 3600))
    tokens = tokens or tuple(f"t{i}" for i in range(len(d.gen_keys)))
    entry = Entry(200, (), b"{}", now - age, tokens, fingerprint or d.rule.fingerprint, '"e"')
    return EntryState(entry, tokens)


@pytest.mark.parametrize("age,expected,state", [(10, "HIT", "fresh"), (3630, "STALE", "stale"),
                                                 (4000, "MISS", "expired (usable only if the backend fails)"),
                                                 (5000, "MISS", "expired")])
def test_entry_age_decides(age, expected, state):
    rules, now = load_rules(RULES_PATH), time.time()
    result = explain(rules, "GET", PROFILE, Identity(USER, now + 60), _entry_for(rules, USER, age, now), now=now)
    assert (result["x_cache"], result["entry"]["state"], result["entry"]["age"]) == (expected, state, age)
    assert USER not in json.dumps(result, ensure_ascii=False)


def test_purged_changed_pending_and_store_down():
    rules, now = load_rules(RULES_PATH), time.time()
    identity = Identity(USER, now + 60)
    state = _entry_for(rules, USER, 10, now)
    purged = EntryState(state.entry, ("other",) + state.tokens[1:])
    assert explain(rules, "GET", PROFILE, identity, purged, now=now)["entry"]["state"] == "purged"
    changed = _entry_for(rules, USER, 10, now, fingerprint="0ld")
    assert explain(rules, "GET", PROFILE, identity, changed, now=now)["entry"]["state"] == "rule-changed"
    pending = EntryState(state.entry, state.tokens, pending_purge=True)
    assert explain(rules, "GET", PROFILE, identity, pending, now=now)["reason"] == "pending-purge"
    down = explain(rules, "GET", PROFILE, identity, EntryState(store_error="timeout"), now=now)
    assert (down["x_cache"], down["reason"]) == ("BYPASS", "store-unavailable")
    admin = explain(rules, "GET", PROFILE, identity, state, is_admin=True, now=now)
    assert admin["key"] == f"katiba360:proxy:user:{{{USER}}}:profile" and admin["x_cache"] == "HIT"
    off = explain(rules, "GET", PROFILE, identity, state, now=now, mode="off")
    assert (off["x_cache"], off["reason"]) == ("BYPASS", "cache-off")


# ------------------------------------------------------------------------------- the endpoint


async def test_endpoint_needs_the_admin_credential(make_proxy):
    ops = await make_proxy()
    url = f"/_cache/explain?method=GET&url={PROFILE}"
    status, headers, body = await ops.get(url)
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer", body
    status, _, body = await ops.get(url, headers=auth(USER))  # a user's JWT is not the admin credential
    assert status == 403, body
    status, _, body = await ops.get(url, headers={"Authorization": "Bearer wrong-admin-token"})
    assert status == 403, body
    status, _, body = await ops.request("POST", url, headers=ops.admin())
    assert status == 405


async def test_endpoint_shows_the_key_and_the_entry_state(make_proxy, backend):
    ops = await make_proxy()
    url = f"/_cache/explain?method=GET&url={PROFILE}"
    token = {"X-Explain-Token": mint(USER)}
    status, _, before = await ops.get(url, headers=ops.admin() | token)
    assert status == 200, before
    assert before["key"] == "katiba360:proxy:user:{…4242}:profile"  # masked, as offline
    assert (before["entry"]["state"], before["x_cache"]) == ("absent", "MISS")
    assert await ops.x_cache(PROFILE, USER) == "MISS"  # warms the entry
    commands = ops.store.commands
    status, _, after = await ops.get(url, headers=ops.admin() | token)
    assert ops.store.commands - commands == 1  # one store lookup
    assert after["entry"]["state"] == "fresh" and after["x_cache"] == "HIT" and after["identity"]["user_id"] == "…4242"
    assert after["entry"]["ttl_left"] <= 3600 and after["entry"]["status"] == 200
    assert await ops.x_cache(PROFILE, USER) == "HIT"  # explain said so
    status, _, _ = await ops.request("PUT", PROFILE, USER, json={"display_name": "New Name"})
    assert status == 200
    status, _, purged = await ops.get(f"{url}&user_id={USER}", headers=ops.admin())
    assert (purged["entry"]["state"], purged["x_cache"]) == ("purged", "MISS")
    assert await ops.x_cache(PROFILE, USER) == "MISS"
    assert await backend.count(PROFILE) == 2


async def test_cli_asks_a_running_proxy(make_proxy, capsys):
    ops = await make_proxy()
    assert await ops.x_cache(PROFILE, USER) == "MISS"
    argv = ["explain", "GET", PROFILE, "--url", ops.base, "--admin-token", ADMIN, "--token", mint(USER), "--json"]
    assert await asyncio.to_thread(main, argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["x_cache"] == "HIT" and result["entry"]["state"] == "fresh" and USER not in json.dumps(result)
    argv = ["explain", "GET", PROFILE, "--url", ops.base, "--admin-token", "not-the-token"]
    assert await asyncio.to_thread(main, argv) == 1
    assert "admin credential refused" in capsys.readouterr().err
