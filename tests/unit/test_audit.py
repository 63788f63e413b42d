"""The staleness auditor's pure parts (proxy/core/audit.py): path folding, the bounded write log, the token
bucket, results and suggestions; and the ``audit:`` section of rules.yaml (proxy/core/rules.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from proxy.core.audit import AuditBook, Budget, WriteLog, fold_path, purge_pattern, suggestion_text
from proxy.core.errors import RulesError
from proxy.core.rules import AuditConfig
from proxy.core.rulesfile import load_rules, parse_rules

ROOT = Path(__file__).resolve().parents[2]

RULES = """\
version: 1
prefix: "t"
rules:
  - name: auth_me
    match: GET /auth/me
    key: "user:{user_id}:me"
  - name: profile
    match: GET /users/profile
    key: "user:{user_id}:profile"
  - name: achievement
    match: GET /achievements/{achievement_id}
    key: "achievements:{user_id}:achievement:{achievement_id}"
  - name: leaderboard
    match: GET /achievements/leaderboard
    key: "achievements:global:leaderboard"
    vary_query: [limit]
  - name: update_language
    match: POST /users/languages
    purge: ["user:{user_id}:profile"]
  - name: update_profile
    match: PUT /users/profile
    purge: ["user:{user_id}:*"]
  - name: award
    match: POST /achievements/award
    purge: ["achievements:{body.user_id|user_id}:*"]
"""


@pytest.mark.parametrize("method, path, folded", [
    ("put", "/api/v1/onboarding/progress", "PUT /api/v1/onboarding/progress"),
    ("DELETE", "/api/v1/users/languages/42", "DELETE /api/v1/users/languages/{id}"),
    ("POST", "/api/v1/users/3f1c9a7e-5b2d-4e8f-9a61-00c0ffee4242/badges?x=1",
     "POST /api/v1/users/{id}/badges"),
    ("PATCH", "/api/v1/items/5f2b8c0d9e1a7b3c4d5e6f70", "PATCH /api/v1/items/{id}"),
    ("POST", "/api/v1/items/cafe", "POST /api/v1/items/cafe"),  # short hex is a word
    ("POST", "/api/v1//a//b/", "POST /api/v1/a/b"),
    ("POST", "/" + "x" * 41, "POST /{id}"),
    ("POST", "/a" * 20, "POST /" + "/".join(["a"] * 12) + "/..."),
])
def test_fold_path(method, path, folded):
    assert fold_path(method, path) == folded


def test_write_log_finds_an_identitys_writes_since_a_time_and_anyones_for_shared_entries():
    log = WriteLog(horizon=100)
    log.note("alice", "add_language", now=10)
    log.note("bob", "update_profile", now=20)
    log.note("alice", "PUT /api/v1/onboarding/progress", now=30)
    assert log.since("alice", 5, now=40) == {"add_language", "PUT /api/v1/onboarding/progress"}
    assert log.since("alice", 10, now=40) == {"PUT /api/v1/onboarding/progress"}  # strictly after t
    assert log.since("carol", 0, now=40) == set()
    assert log.since(None, 15, now=40) == {"update_profile", "PUT /api/v1/onboarding/progress"}
    assert log.since("alice", 0, now=115) == {"PUT /api/v1/onboarding/progress"}  # older than the horizon
    assert all(isinstance(k, bytes) for k in log.by_identity)  # hashes, no user ids kept


def test_write_log_is_bounded_in_identities_and_writes():
    log = WriteLog(horizon=1e9, max_identities=2, per_identity=3, max_shared=4)
    for i in range(5):
        log.note("alice", f"w{i}", now=i)
    assert log.since("alice", -1, now=10) == {"w2", "w3", "w4"}
    log.note("bob", "b", now=11)
    log.note("alice", "w5", now=12)  # alice wrote last: bob is the one to go
    log.note("carol", "c", now=13)
    assert len(log.by_identity) == 2 and log.since("bob", -1, now=20) == set()
    assert log.since("alice", -1, now=20) == {"w3", "w4", "w5"}
    assert len(log.everyone) == 4


def test_budget_is_a_token_bucket():
    budget = Budget(rate=2)  # capacity: one second's worth
    assert [budget.take(now=0) for _ in range(3)] == [True, True, False]
    assert budget.take(now=0.25) is False  # half a token
    assert budget.take(now=0.5) is True
    assert [budget.take(now=100) for _ in range(3)] == [True, True, False]  # never more than the capacity
    slow = Budget(rate=0.001)
    assert slow.capacity == 1 and slow.take(now=0) and not slow.take(now=500) and slow.take(now=1000)


def test_suggestions_name_the_uncovered_write_and_the_read_rules_key():
    rules = parse_rules(RULES, "t.yaml", {})
    book = AuditBook()
    for _ in range(12):
        book.record("auth_me", "mismatch", {"update_language", "update_profile"})
    book.record("auth_me", "mismatch", {"PUT /api/v1/onboarding/progress"})
    book.record("auth_me", "match")
    book.record("auth_me", "skipped", {"update_language"})  # a skipped audit attributes nothing
    book.record("achievement", "mismatch", {"update_language"})
    book.record("leaderboard", "mismatch", {"update_profile"})
    report = book.report(rules)
    assert report["rules"]["auth_me"] == {"audited": 15, "match": 1, "mismatch": 13, "skipped": 1,
                                          "mismatch_rate": round(13 / 14, 4)}
    assert report["rules"]["profile"] == {"audited": 0, "match": 0, "mismatch": 0, "skipped": 0,
                                          "mismatch_rate": None}
    assert report["suggestions"] == [
        # update_profile purges user:{user_id}:* already: it is no suggestion, though it preceded them too
        {"write": "update_language", "read_rule": "achievement", "pattern": "achievements:{user_id}:achievement:*",
         "seen": 1, "of": 1},
        {"write": "update_profile", "read_rule": "leaderboard", "pattern": "achievements:global:leaderboard",
         "seen": 1, "of": 1},
        {"write": "update_language", "read_rule": "auth_me", "pattern": "user:{user_id}:me", "seen": 12, "of": 13},
        {"write": "PUT /api/v1/onboarding/progress", "read_rule": "auth_me", "pattern": "user:{user_id}:me",
         "seen": 1, "of": 13},
    ]
    texts = [suggestion_text(s) for s in report["suggestions"]]
    assert texts[2] == 'add "user:{user_id}:me" to update_language.purge (12 of 13 stale auth_me reads followed it)'
    assert texts[3] == ('add a write rule for PUT /api/v1/onboarding/progress with purge "user:{user_id}:me" '
                        '(1 of 13 stale auth_me reads followed it)')


def test_report_bounds_suggestions_per_read_rule_and_pairs_overall():
    rules = parse_rules(RULES, "t.yaml", {})
    book = AuditBook(max_pairs=3)
    book.record("auth_me", "mismatch", [f"POST /x{i}" for i in range(10)])
    assert len(book.followed) == 3
    assert len(book.report(rules, per_rule=2)["suggestions"]) == 2
    assert book.report(rules)["rules"]["auth_me"]["mismatch"] == 1


def test_purge_pattern():
    rules = parse_rules(RULES, "t.yaml", {})
    assert purge_pattern(rules.by_name("auth_me")) == "user:{user_id}:me"
    # a key with a path parameter: the namespace of its leading literals and {user_id}
    assert purge_pattern(rules.by_name("achievement")) == "achievements:{user_id}:achievement:*"
    assert purge_pattern(rules.by_name("leaderboard")) == "achievements:global:leaderboard"


# ------------------------------------------------------------------------------------- rules.yaml

def test_shipped_rules_audit_at_the_documented_values():
    for path in (ROOT / "rules.yaml", ROOT / "proxy" / "rules.yaml"):
        assert load_rules(path, environ={}).audit == AuditConfig(sample=0.01, max_per_second=5)


def test_audit_defaults_and_environment_override():
    assert parse_rules(RULES, "t.yaml", {}).audit == AuditConfig(0.01, 5.0)
    text = RULES + "audit: {sample: 0.5, max_per_second: 0.25}\n"
    assert parse_rules(text, "t.yaml", {}).audit == AuditConfig(0.5, 0.25)
    assert parse_rules(text, "t.yaml", {"CACHE_AUDIT_SAMPLE": "0"}).audit == AuditConfig(0.0, 0.25)
    assert parse_rules(RULES + "audit: {sample: 0}\n", "t.yaml", {}).audit.sample == 0  # off


@pytest.mark.parametrize("audit, environ, expected", [
    ("audit: {sample: 2}", {}, "t.yaml:26: audit.sample: must be a number from 0 to 1, got 2"),
    ("audit: {sample: -0.1}", {}, "t.yaml:26: audit.sample: must be a number from 0 to 1, got -0.1"),
    ("audit: {sample: lots}", {}, "t.yaml:26: audit.sample: must be a number from 0 to 1, got 'lots'"),
    ("audit: {sample: true}", {}, "t.yaml:26: audit.sample: must be a number from 0 to 1, got True"),
    ("audit: {max_per_second: 0}", {},
     "t.yaml:26: audit.max_per_second: must be a number above 0, at most 1e+06, got 0"),
    ("audit: {samples: 0.1}", {}, "t.yaml:26: audit.samples: unknown field"),
    ("audit: [0.1]", {}, "t.yaml:26: audit: must be a mapping, e.g. {sample: 0.01, max_per_second: 5}"),
    ("audit: {sample: 0.1}", {"CACHE_AUDIT_SAMPLE": "often"},
     "t.yaml:26: audit.sample (from CACHE_AUDIT_SAMPLE): must be a number from 0 to 1, got 'often'"),
])
def test_audit_refusals_name_file_and_line(audit, environ, expected):
    with pytest.raises(RulesError) as info:
        parse_rules(RULES + audit + "\n", "t.yaml", environ)
    assert [str(p) for p in info.value.problems] == [expected]


def test_an_unmatched_write_whose_fail_safe_covers_the_read_is_no_suggestion():
    rules = parse_rules(RULES + 'unmatched_writes: {purge: ["user:{user_id}:*"]}\n', "t.yaml", {})
    book = AuditBook()
    book.record("auth_me", "mismatch", {"PUT /api/v1/onboarding/progress"})
    book.record("achievement", "mismatch", {"PUT /api/v1/onboarding/progress"})
    assert [(s["write"], s["read_rule"]) for s in book.report(rules)["suggestions"]] == [
        ("PUT /api/v1/onboarding/progress", "achievement")]  # user:{user_id}:* covers auth_me already
