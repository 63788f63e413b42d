"""Pure decisions on the shipped rules: classify (paths, queries, identity, headers, methods, writes and
their purge keys), judge (freshness windows, purges, fingerprints), refuse_to_store, and a hypothesis
property of the rule parser (any document loads or fails with located problems, nothing else)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.core.entry import Entry
from proxy.core.errors import RulesError
from proxy.core.identity import Identity
from proxy.core.policy import (
    Bypass, Lookup, Reason, RequestView, Write, classify, judge, parse_query, purges_after, reads_answer,
    refuse_to_store, resolve_write,
)
from proxy.core.rules import Rules
from proxy.core.rulesfile import RULE_FIELDS, load_rules, parse_rules

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules.yaml", environ={})
P = "katiba360:proxy"
ALICE, BOB = Identity("alice", 2e9), Identity("bob", 2e9)


def decide(method: str, target: str, identity: Identity | None = ALICE, token_error: str | None = None,
           headers: dict | None = None):
    path, _, query = target.partition("?")
    return classify(RequestView(method, path, query, CIMultiDict(headers or {})), RULES, identity, token_error)


def lookup(target: str, identity: Identity | None = ALICE, **headers) -> Lookup:
    decision = decide("GET", target, identity, headers=headers)
    assert isinstance(decision, Lookup), decision
    return decision


# --------------------------------------------------------------------------- reads

@pytest.mark.parametrize("target, identity, rule, key, gens", [
    ("/api/v1/users/profile", ALICE, "user_profile", "user:{alice}:profile",
     ("user:{alice}", "user:{alice}:profile")),
    ("/api/v1/auth/me", BOB, "auth_me", "user:{bob}:me", ("user:{bob}", "user:{bob}:me")),
    ("/api/v1/achievements/abc", ALICE, "achievement", "achievements:{alice}:achievement:{abc}",
     ("achievements:{alice}", "achievements:{alice}:achievement:{abc}")),
    ("/api/v1/achievements/a%3Ab", ALICE, "achievement", "achievements:{alice}:achievement:{a%3Ab}",
     ("achievements:{alice}", "achievements:{alice}:achievement:{a%3Ab}")),
    ("/api/v1/achievements/summary", ALICE, "achievements_summary", "achievements:{alice}:summary",
     ("achievements:{alice}", "achievements:{alice}:summary")),
    # literal first segments are braced: the Redis Cluster hash tag of the entry and its guards
    ("/api/v1/achievements/types", BOB, "achievement_types", "{achievements:global}:types",
     ("{achievements:global}", "{achievements:global}:types")),
    ("/api/v1/achievements/leaderboard?limit=10&offset=0", ALICE, "leaderboard",
     "{achievements:global}:leaderboard|q:limit=10&offset=0",
     ("{achievements:global}", "{achievements:global}:leaderboard")),
])
def test_canonical_reads_look_up_their_key(target, identity, rule, key, gens):
    for method in ("GET", "HEAD"):
        decision = decide(method, target, identity)
        owner = identity.user_id if RULES.by_name(rule).identity_scoped else None  # whose entry it is
        assert decision == Lookup(RULES.by_name(rule), f"{P}:{key}",
                                  tuple(f"{P}:gen:{g}" for g in gens) + (f"{P}:epoch",), owner=owner)


@pytest.mark.parametrize("target", [
    "//api/v1/users/profile", "/api/v1//users/profile", "/api/v1/./users/profile", "/api/v1/users/../users/profile",
    "/api/v1/users/%2e%2e/users/profile", "/api/v1/users%2Fprofile", "/api/v1/users%2fprofile",
    "/api/v1/users/profile/", "/api/v1/users/profile//",
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_non_canonical_paths_bypass(method, target):
    assert decide(method, target) == Bypass(Reason.NON_CANONICAL)


@pytest.mark.parametrize("path", [
    "/api/v1/achievements/leaderboard", "/api/v1/achievements/a%3ab", "/api/v1/users/../users/profile",
    "/api/v1/nothing/here", "/api/v1/users%2Fprofile",
])
def test_a_remembered_route_decides_as_a_fresh_one_whatever_the_query(path):
    """Splitting and matching a path are remembered per path (``policy._route``): later queries on the
    same path decide exactly as under rules that never saw it."""
    for query in ("", "limit=10&offset=0", "limit=10&offset=7", "zz=1", "limit=%2a"):
        target = f"{path}?{query}" if query else path
        fresh = load_rules(RULES.source, environ={})
        expected = classify(RequestView("GET", path, query, CIMultiDict()), fresh, ALICE, None)
        assert decide("GET", target) == expected, target
        assert decide("GET", target) == expected, target  # the second time, from the memo


@pytest.mark.parametrize("a, b", [
    ("/api/v1/users/%70rofile", "/api/v1/users/profile"),
    ("/api/v1/achievements/a%3ab", "/api/v1/achievements/a%3Ab"),
    ("/api/v1/achievements/%7E", "/api/v1/achievements/~"),
    ("/api/v1/achievements/leaderboard?offset=0&limit=10", "/api/v1/achievements/leaderboard?limit=10&offset=0"),
    ("/api/v1/achievements/leaderboard?limit=%2a", "/api/v1/achievements/leaderboard?limit=%2A"),
    ("/api/v1/achievements/leaderboard?limit=a+b", "/api/v1/achievements/leaderboard?limit=a%20b"),
    ("/api/v1/achievements/leaderboard?%6Cimit=5", "/api/v1/achievements/leaderboard?limit=5"),
])
def test_equivalent_requests_share_a_key(a, b):
    assert lookup(a).key == lookup(b).key


@pytest.mark.parametrize("a, b", [
    (("/api/v1/users/profile", ALICE, {}), ("/api/v1/users/profile", BOB, {})),
    (("/api/v1/users/profile", ALICE, {}), ("/api/v1/users/profile", ALICE, {"Origin": "https://a.example"})),
    (("/api/v1/users/profile", ALICE, {"Origin": "https://a.example"}),
     ("/api/v1/users/profile", ALICE, {"Origin": "https://b.example"})),
    (("/api/v1/achievements/types", ALICE, {}), ("/api/v1/achievements/types", ALICE, {"origin": "https://a.example"})),
    (("/api/v1/achievements/leaderboard?limit=10", ALICE, {}), ("/api/v1/achievements/leaderboard?limit=20", ALICE, {})),
    (("/api/v1/achievements/leaderboard?limit=", ALICE, {}), ("/api/v1/achievements/leaderboard", ALICE, {})),
    (("/api/v1/achievements/leaderboard?limit=1%26offset%3D2", ALICE, {}),
     ("/api/v1/achievements/leaderboard?limit=1&offset=2", ALICE, {})),
    (("/api/v1/achievements/a%25", ALICE, {}), ("/api/v1/achievements/a%2525", ALICE, {})),
])
def test_different_requests_get_different_keys(a, b):
    ka, kb = lookup(a[0], a[1], **a[2]).key, lookup(b[0], b[1], **b[2]).key
    assert ka != kb


def test_global_rules_share_one_key_across_users():
    assert lookup("/api/v1/achievements/leaderboard", ALICE).key == lookup("/api/v1/achievements/leaderboard", BOB).key
    assert lookup("/api/v1/achievements/types", BOB).key == lookup("/api/v1/achievements/types", ALICE).key


@pytest.mark.parametrize("method, target, identity, token_error, headers, reason", [
    ("GET", "/api/v1/users/profile?foo=1", ALICE, None, {}, Reason.UNKEYED_QUERY),
    ("GET", "/api/v1/achievements/leaderboard?limit=1&page=2", ALICE, None, {}, Reason.UNKEYED_QUERY),
    ("GET", "/api/v1/achievements/leaderboard?limit", ALICE, None, {}, Reason.UNKEYED_QUERY),
    ("GET", "/api/v1/achievements/leaderboard?limit=%FF", ALICE, None, {}, Reason.UNKEYED_QUERY),
    ("GET", "/api/v1/achievements/leaderboard?limit=1&limit=2", ALICE, None, {}, Reason.DUPLICATE_QUERY),
    ("GET", "/api/v1/achievements/leaderboard?limit=1&%6cimit=1", ALICE, None, {}, Reason.DUPLICATE_QUERY),
    ("GET", "/api/v1/users/profile", None, None, {}, Reason.NO_IDENTITY),
    ("HEAD", "/api/v1/achievements/leaderboard", None, None, {}, Reason.NO_IDENTITY),
    ("GET", "/api/v1/users/profile", None, "expired", {}, Reason.INVALID_TOKEN),
    ("GET", "/api/v1/users/profile", None, "bad_signature", {}, Reason.INVALID_TOKEN),
    ("GET", "/api/v1/users/profile", ALICE, None, {"Range": "bytes=0-10"}, Reason.RANGE),
    ("GET", "/api/v1/achievements/types", ALICE, None, {"range": "bytes=0-1"}, Reason.RANGE),
    ("GET", "/api/v1/achievements/types", None, None, {}, Reason.NO_IDENTITY),  # shared, but only for a token
    ("GET", "/api/v1/achievements/recent", None, "expired", {}, Reason.INVALID_TOKEN),
    ("GET", "/api/v1/users/profile", ALICE, None, {"X-HTTP-Method-Override": "DELETE"}, Reason.OVERRIDE_HEADER),
    ("GET", "/api/v1/users/profile", ALICE, None, {"X-Original-URL": "/admin"}, Reason.OVERRIDE_HEADER),
    ("GET", "/api/v1/users/profile", ALICE, None, {"x-rewrite-url": "/x"}, Reason.OVERRIDE_HEADER),
    ("GET", "/api/v1/nothing", ALICE, None, {}, Reason.NO_RULE),
    ("GET", "/api/v1/auth/login", ALICE, None, {}, Reason.NO_RULE),
    ("OPTIONS", "/api/v1/users/profile", ALICE, None, {}, Reason.METHOD),
    ("TRACE", "/api/v1/users/profile", ALICE, None, {}, Reason.METHOD),
    ("PROPFIND", "/api/v1/users/profile", ALICE, None, {}, Reason.METHOD),
    ("CONNECT", "/api/v1/users/profile", ALICE, None, {}, Reason.METHOD),
    ("get", "/api/v1/users/profile", ALICE, None, {}, Reason.METHOD),
])
def test_bypass_reasons(method, target, identity, token_error, headers, reason):
    decision = decide(method, target, identity, token_error, headers)
    assert isinstance(decision, Bypass) and decision.reason == reason


@pytest.mark.parametrize("user_first", [True, False])
@pytest.mark.parametrize("reason", ["expired", "malformed", "bad_signature"])
def test_a_bad_token_never_shares_a_decision_with_a_user_named_like_its_error(reason, user_first):
    """A user whose id equals a token-error reason must not lend their lookup to a request with a bad token."""
    rules = load_rules(RULES.source, environ={})  # fresh: classify may remember earlier decisions
    view = RequestView("GET", "/api/v1/users/profile", "", CIMultiDict())
    calls = [lambda: classify(view, rules, Identity(reason, 2e9)), lambda: classify(view, rules, None, reason)]
    for call in calls if user_first else calls[::-1]:
        call()
    assert classify(view, rules, Identity(reason, 2e9)).key == f"{P}:user:{{{reason}}}:profile"
    assert classify(view, rules, None, reason) == Bypass(Reason.INVALID_TOKEN, rules.by_name("user_profile"))
    assert classify(view, rules, None, None) == Bypass(Reason.NO_IDENTITY, rules.by_name("user_profile"))


def test_headers_are_checked_on_every_request():
    assert isinstance(decide("GET", "/api/v1/users/profile"), Lookup)
    assert decide("GET", "/api/v1/users/profile", headers={"Range": "bytes=0-1"}).reason == Reason.RANGE
    assert isinstance(decide("GET", "/api/v1/users/profile"), Lookup)


# --------------------------------------------------------------------------- writes

def gens(*namespaces: str) -> tuple[str, ...]:
    return tuple(f"{P}:gen:{ns}" for ns in namespaces)


@pytest.mark.parametrize("method, target, identity, rule, keys", [
    ("PUT", "/api/v1/users/profile", ALICE, "update_profile", gens("user:{alice}")),
    ("PUT", "/api/v1/users/./profile", ALICE, "update_profile", gens("user:{alice}")),
    ("PUT", "/api/v1//users/profile", BOB, "update_profile", gens("user:{bob}")),
    ("POST", "/api/v1/users/preferences", ALICE, "update_preferences",
     gens("user:{alice}:preferences", "user:{alice}:full_profile", "user:{alice}:me")),
    ("DELETE", "/api/v1/users/languages/7", ALICE, "delete_language",
     gens("user:{alice}:languages", "user:{alice}:full_profile", "user:{alice}:me")),
    ("POST", "/api/v1/achievements", ALICE, "create_achievement",
     gens("achievements:{alice}", "user:{alice}:stats", "user:{alice}:full_profile", "user:{alice}:me",
          "{achievements:global}")),
    ("PUT", "/api/v1/users/profile", None, "update_profile", ()),  # unauthenticated: the backend refuses
    ("POST", "/api/v1/achievements", None, "create_achievement", ()),
    ("POST", "/api/v1/achievements/award", None, "award_achievement", ()),
])
def test_ruled_writes_purge_their_namespaces(method, target, identity, rule, keys):
    assert decide(method, target, identity) == Write(RULES.by_name(rule), keys)


AWARD_KEYS = ("achievements:{%s}", "user:{%s}:stats", "user:{%s}:full_profile", "user:{%s}:me")


@pytest.mark.parametrize("body, user", [
    ({"user_id": "bob"}, "bob"),
    ({"user_id": 42}, "42"),
    ({"user_id": "a:*"}, "a%3A%2A"),
    (None, "alice"),
    ({}, "alice"),
    ({"user_id": ""}, "alice"),
    ({"user_id": None}, "alice"),
    ({"user_id": True}, "alice"),
    ({"user_id": ["bob"]}, "alice"),
    (["bob"], "alice"),
])
def test_award_resolves_the_body_user_and_falls_back_to_the_caller(body, user):
    pending = decide("POST", "/api/v1/achievements/award", ALICE)
    assert isinstance(pending, Write) and pending.needs_body and pending.gen_keys == ()
    resolved = resolve_write(pending, body)
    assert resolved == Write(RULES.by_name("award_achievement"),
                             gens(*(k % user for k in AWARD_KEYS), "{achievements:global}"))


@pytest.mark.parametrize("method, target, identity, keys", [
    ("DELETE", "/api/v1/achievements/types", None, gens("{achievements:global}:types")),
    ("DELETE", "/api/v1/users/profile", ALICE, gens("user:{alice}:profile")),
    ("PATCH", "/api/v1/users/profile/full", BOB, gens("user:{bob}:full_profile")),
    ("POST", "/api/v1/achievements/leaderboard?limit=10", ALICE, gens("{achievements:global}:leaderboard")),
    ("DELETE", "/api/v1/achievements/x1", ALICE, gens("achievements:{alice}:achievement:{x1}")),
    ("DELETE", "/api/v1/users/profile", None, ()),  # no identity: the key cannot be named
    ("PATCH", "/api/v1/nothing", ALICE, ()),
])
def test_unruled_writes_purge_their_own_uri(method, target, identity, keys):
    """RFC 9111 §4.4: the exact key of the GET rule at that path (every page of a varied rule); with a
    verified caller, also the caller's unmatched_writes namespaces."""
    decision = decide(method, target, identity)
    assert (decision.rule, decision.gen_keys) == (None, keys)
    mine = () if identity is None else gens(f"user:{{{identity.user_id}}}", f"achievements:{{{identity.user_id}}}")
    assert decision.unmatched == mine


REFUSALS = [(422, b'{"detail": []}'), (401, b""), (404, b"{}"), (429, b""),
            (200, b'{"header": {"responseCode": 400}, "body": {}}'),
            (200, b'{"header": {"responseCode": 404}, "body": {}}'),
            (201, b'{"header": {"responseCode": 499}}')]
PURGING = [(None, None),  # no answer: timeout, connection lost
           (200, b'{"header": {"responseCode": 200}, "body": {}}'),
           (200, b'{"header": {"responseCode": 500}, "body": {}}'),
           (200, None),  # the envelope was not read (too large, streamed): unknown
           (200, b"not json"), (200, b'{"header": {"responseCode": "400"}}'), (200, b'{"header": null}'),
           (204, b""), (307, b""), (500, b'{"detail": "x"}'), (502, b""), (503, b""),
           (301, b'{"header": {"responseCode": 400}}')]  # an envelope is judged on a 2xx only


@pytest.mark.parametrize("status, body", REFUSALS)
def test_a_refused_write_purges_nothing(status, body):
    ruled = decide("POST", "/api/v1/achievements", ALICE)
    assert purges_after(ruled, RULES, status, body) == ((), "create_achievement")
    unmatched = decide("PUT", "/api/v1/onboarding/progress", ALICE)
    assert purges_after(unmatched, RULES, status, body) == ((), "rfc9111-4.4")


@pytest.mark.parametrize("status, body", PURGING)
def test_a_successful_or_unknown_write_purges(status, body):
    ruled = decide("POST", "/api/v1/achievements", ALICE)
    assert purges_after(ruled, RULES, status, body) == (ruled.gen_keys, "create_achievement")
    unmatched = decide("PUT", "/api/v1/onboarding/progress", ALICE)
    assert purges_after(unmatched, RULES, status, body) == (unmatched.unmatched, "unmatched")


def test_an_unmatched_write_on_a_cached_uri_purges_both_and_only_on_non_errors():
    write = decide("DELETE", "/api/v1/users/profile", ALICE)
    both = write.unmatched + gens("user:{alice}:profile")
    assert purges_after(write, RULES, 200, b"{}") == (both, "unmatched")
    assert purges_after(write, RULES, 503, b"") == (write.unmatched, "unmatched")  # §4.4: not on errors
    anonymous = decide("DELETE", "/api/v1/users/profile", None)
    assert purges_after(anonymous, RULES, 200, b"{}") == ((), "rfc9111-4.4")


def test_purge_when_variants():
    always = parse_rules(_with_defaults("  purge_when: always\n"), "t.yaml", {})
    always_write = classify(RequestView("POST", "/w", "", CIMultiDict()), always, ALICE)
    assert purges_after(always_write, always, 422, b"") == (always_write.gen_keys, "w") and always_write.gen_keys
    assert purges_after(always_write, always, 200, b'{"header": {"responseCode": 400}}')[0]
    custom = parse_rules(_with_defaults('  purge_when: {refused: [409], envelope: {path: status.code}}\n'),
                         "t.yaml", {})
    write = classify(RequestView("POST", "/w", "", CIMultiDict()), custom, ALICE)
    assert purges_after(write, custom, 409, b"")[0] == ()
    assert purges_after(write, custom, 422, b"")[0] == write.gen_keys  # not listed: purges
    assert purges_after(write, custom, 200, b'{"status": {"code": 404}}')[0] == ()
    assert purges_after(write, custom, 200, b'{"header": {"responseCode": 404}}')[0] == write.gen_keys
    assert reads_answer(write, custom, 200) and not reads_answer(write, custom, 500)
    assert not reads_answer(always_write, always, 200)  # nothing in the body can change the decision


def _with_defaults(extra: str) -> str:
    return ("version: 1\ndefaults:\n" + extra + "rules:\n"
            '  - {name: r, match: GET /r, key: "user:{user_id}:r"}\n'
            '  - {name: w, match: POST /w, purge: ["user:{user_id}:*"]}\n')


def test_purge_keys_are_among_the_guards_of_the_entries_they_invalidate():
    user_reads = [r for r in RULES.rules if r.key is not None and r.key.text.startswith("user:")]
    profile_purge = set(decide("PUT", "/api/v1/users/profile", ALICE).gen_keys)
    for rule in user_reads:
        assert profile_purge & set(lookup(rule.route, ALICE).gen_keys), rule.name
        assert not profile_purge & set(lookup(rule.route, BOB).gen_keys), rule.name
    exact = decide("DELETE", "/api/v1/users/profile", ALICE).gen_keys
    assert set(exact) <= set(lookup("/api/v1/users/profile").gen_keys)
    page = set(decide("DELETE", "/api/v1/achievements/leaderboard").gen_keys)
    assert page <= set(lookup("/api/v1/achievements/leaderboard?limit=5&offset=10").gen_keys)


# --------------------------------------------------------------------------- judge

RULE = replace(RULES.by_name("user_profile"), ttl=60, stale_while_revalidate=30, stale_if_error=120)
TOKENS = ["1", "7", "3"]
ENTRY = Entry(200, (), b"{}", 1000.0, tuple(TOKENS), RULE.fingerprint, "etag")


@pytest.mark.parametrize("age, usable, shown, reason", [
    (0, "fresh", 0, ""), (59.9, "fresh", 59, ""), (-30, "fresh", 0, ""),
    (60, "stale", 60, ""), (89, "stale", 89, ""),
    (90, "on-error", 90, "expired"), (179, "on-error", 179, "expired"),
    (180, "no", 180, "expired"), (10_000, "no", 10_000, "expired"),
])
def test_judge_windows(age, usable, shown, reason):
    verdict = judge(ENTRY, list(TOKENS), RULE, now=ENTRY.stored_at + age)
    assert (verdict.usable, verdict.age, verdict.reason) == (usable, shown, reason)


def test_judge_without_stale_windows_expires_at_ttl():
    plain = replace(RULE, stale_while_revalidate=0, stale_if_error=0)
    assert judge(ENTRY, TOKENS, plain, ENTRY.stored_at + 59).usable == "fresh"
    assert judge(ENTRY, TOKENS, plain, ENTRY.stored_at + 60).usable == "no"


@pytest.mark.parametrize("tokens, rule, reason", [
    (["1", "8", "3"], RULE, "purged"),  # a namespace was bumped since the fill
    (["1", "7", "4"], RULE, "purged"),  # the epoch was bumped
    (["1", None, "3"], RULE, "purged"),  # a generation is missing (evicted or store restarted)
    (["1", "7"], RULE, "purged"),
    (TOKENS, replace(RULE, fingerprint="changed"), "rule-changed"),
])
@pytest.mark.parametrize("age", [0, 70, 150])  # fresh, stale and on-error windows: a purge wins in all
def test_judge_refuses_purged_and_foreign_entries(tokens, rule, reason, age):
    verdict = judge(ENTRY, tokens, rule, ENTRY.stored_at + age)
    assert (verdict.usable, verdict.reason) == ("no", reason)


def test_judge_absent():
    assert (judge(None, TOKENS, RULE, 0).usable, judge(None, TOKENS, RULE, 0).reason) == ("no", "absent")


# --------------------------------------------------------------------------- refuse_to_store

USER, GLOBAL = RULES.by_name("user_profile"), RULES.by_name("leaderboard")


def envelope(code) -> bytes:
    return orjson.dumps({"header": {"responseCode": code, "requestRefId": "r1"}, "body": {"name": "A"}})


OK = envelope(200)


@pytest.mark.parametrize("rule, status, headers, body, why", [
    (USER, 200, [], OK, None),
    (GLOBAL, 200, [], OK, None),
    (USER, 404, [], OK, "status"),
    (USER, 500, [], OK, "status"),
    (USER, 203, [], OK, "status"),
    (USER, 200, [("Set-Cookie", "s=1")], OK, "set-cookie"),
    (USER, 200, [("Cache-Control", "no-store")], OK, "no-store"),
    (USER, 200, [("cache-control", "public, No-Store")], OK, "no-store"),
    (USER, 200, [("Cache-Control", "max-age=60"), ("Cache-Control", "no-store")], OK, "no-store"),
    (USER, 200, [("Cache-Control", "private")], OK, None),  # identity-scoped: keyed per user
    (GLOBAL, 200, [("Cache-Control", "private")], OK, "private"),
    (GLOBAL, 200, [("Cache-Control", "private, max-age=60")], OK, "private"),
    (USER, 200, [("Vary", "Origin")], OK, None),
    (USER, 200, [("Vary", "Accept-Encoding, Origin")], OK, None),
    (USER, 200, [("Vary", "Cookie")], OK, "vary"),
    (USER, 200, [("Vary", "*")], OK, "vary"),
    (GLOBAL, 200, [("Vary", "Origin"), ("Vary", "Authorization")], OK, "vary"),
    (USER, 200, [("Content-Encoding", "gzip")], OK, "content-encoding"),
    (USER, 200, [("Content-Encoding", "br")], OK, "content-encoding"),
    (USER, 200, [("Content-Encoding", "identity")], OK, None),
    (replace(USER, max_body_bytes=len(OK) - 1), 200, [], OK, "too-large"),
    (replace(USER, max_body_bytes=len(OK)), 200, [], OK, None),
    (USER, 200, [], b"<html>oops</html>", "not-json"),
    (USER, 200, [], b"", "not-json"),
    (USER, 200, [], envelope(404), "envelope"),
    (USER, 200, [], envelope(500), "envelope"),
    (USER, 200, [], envelope(299), None),
    (USER, 200, [], envelope(300), "envelope"),
    (USER, 200, [], envelope("200"), "envelope"),
    (USER, 200, [], orjson.dumps({"body": {}}), "envelope"),
    (USER, 200, [], orjson.dumps([1, 2]), "envelope"),
])
def test_refuse_to_store(rule, status, headers, body, why):
    assert refuse_to_store(rule, status, CIMultiDict(headers), body) == why


# --------------------------------------------------------------------------- rule parser property

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=5,
)


def mostly(plausible: st.SearchStrategy) -> st.SearchStrategy:
    """Plausible values three times out of four, anything JSON-like otherwise."""
    return st.integers(0, 3).flatmap(lambda n: json_values if n == 0 else plausible)


PATHS = ["/a", "/b", "/a/{x}", "/b/{x}", "/users/profile", "/a/summary", "/a/{user_id}", "/a/", "//a", "/a/{x}/{x}",
         "/a/b{c}", "a", "/a/%2F", "/a/."]
PLAUSIBLE = {
    "name": st.sampled_from(["a", "b", "c", "d", "Bad", "", "a-b"]),
    "match": st.builds("{} {}".format, st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE", "HEAD", "get", "FOO"]),
                       st.sampled_from(PATHS)),
    "key": st.sampled_from(["a", "b:{x}", "user:{user_id}:a", "user:{user_id}:b", "a:{body.x}", "a:{query.q}", "A",
                            "a:*", "", "a:{x|user_id}", "achievements:global:a", "user:{user_id}:profile"]),
    "purge": st.lists(st.sampled_from(["user:{user_id}:*", "a:*", "*", "a", "b:{x}", "user:{body.id|user_id}:*",
                                       "achievements:global:*", "user:{user_id}:a", "x:[a]:*", "user:*"]),
                      min_size=1, max_size=3),
    "ttl": st.sampled_from([60, 0, -1, "15m", "${X:-5}", "${UNSET_VAR_KC}", "abc", "10ms", True, "²", 1.5]),
    "auth": st.sampled_from(["required", "none", "maybe"]),
    "cache_when": st.fixed_dictionaries({}, optional={
        "status": st.lists(st.integers(100, 700) | st.booleans(), max_size=3),
        "json": st.fixed_dictionaries({}, optional={"path": st.sampled_from(["header.responseCode", ""]),
                                                    "between": st.sampled_from([[200, 299], [3, 1], [1]]),
                                                    "in": st.sampled_from([[200], 5])}),
    }),
    "vary_query": st.lists(st.sampled_from(["limit", "offset", ""]), max_size=3),
    "warm": st.sampled_from([True, False, "yes", "maybe"]),
    "rollout": st.sampled_from([0, 50, "25%", 101, "x", float("nan")]),
    "max_body_bytes": st.sampled_from([1, 0, "10", "²", "٣", -5]),
    "error_when": st.just({"status": [500]}),
}
FIELDS = sorted(RULE_FIELDS | {"colour"})
rule_dicts = st.fixed_dictionaries(
    {"name": mostly(PLAUSIBLE["name"]), "match": mostly(PLAUSIBLE["match"])},
    optional={f: mostly(PLAUSIBLE.get(f, json_values)) for f in FIELDS if f not in ("name", "match")},
)
# Rules that load: a GET rule keyed on its route, or a write purging the user namespace.
sane_rules = st.builds(
    lambda name, path, write: ({"name": name, "match": f"POST {path}", "purge": ["user:{user_id}:*"]} if write
                               else {"name": name, "match": f"GET {path}",
                                     "key": f"user:{{user_id}}:{name}" + (":{x}" if "{x}" in path else "")}),
    st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["/a", "/b", "/a/{x}", "/users/profile"]), st.booleans(),
)
documents = st.builds(
    lambda doc, extra: {**extra, **doc},  # unknown top-level fields (even "") come first
    st.fixed_dictionaries(
    {"version": mostly(st.just(1)),
     "rules": mostly(st.lists(st.one_of(sane_rules, sane_rules, rule_dicts), min_size=1, max_size=4))},
    optional={"prefix": mostly(st.sampled_from(["p", "bad prefix", "${X}"])),
              "defaults": mostly(st.fixed_dictionaries({}, optional={f: mostly(PLAUSIBLE[f]) for f in
                                                                     ("ttl", "auth", "warm", "cache_when")})),
              "http_cache": json_values}),
    st.dictionaries(st.text(max_size=6), json_values, max_size=1),
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_rules_document_loads_or_fails_with_located_problems(doc):
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    try:
        rules = parse_rules(text, "h.yaml", {"X": "7"})
    except RulesError as exc:
        assert exc.problems
        last_line = len(text.splitlines()) + 1
        for problem in exc.problems:
            assert problem.file == "h.yaml"
            assert 1 <= problem.line <= last_line, (problem, text)
            assert isinstance(problem.field, str) and problem.field, problem
            assert problem.message
        return
    assert isinstance(rules, Rules) and rules.rules
    for rule in rules.rules:
        if rule.is_read:
            assert rule.key is not None and rule.fingerprint and rule.guards and not rule.purge
        else:
            assert rule.key is None and rule.purge


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab=&%2+;é0F ", max_size=14))
def test_a_query_parses_as_urllibs_strict_parser_reads_it(query):
    """``parse_query`` splits plain queries itself (every read new to the decisions memo asks): what it
    gives must be what ``parse_qsl`` in strict mode gives, a refusal included."""
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, errors="strict") if query else []
    except (ValueError, UnicodeDecodeError):
        assert parse_query(query) is None
        return
    params = dict(pairs)
    repeated = {name for name in params if sum(1 for n, _ in pairs if n == name) > 1}
    assert parse_query(query) == (params, repeated)
