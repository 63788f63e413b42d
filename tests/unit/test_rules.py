"""rules.yaml loading: the shipped file, env overrides, every refusal with its exact file:line: field,
all problems reported at once, ``cache-proxy check`` exit codes and output, route matching, guards and
fingerprints."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from proxy.ops.cli import main
from proxy.core.errors import RulesError
from proxy.core.rules import PURGE_ALWAYS, PurgeWhen
from proxy.core.rulesfile import load_rules, parse_rules

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [ROOT / "rules.yaml", ROOT / "proxy" / "rules.yaml"]
USER_RULES = ("user_profile", "user_full_profile", "user_preferences", "user_languages",
              "user_accessibility", "user_interests", "user_stats", "auth_me")
PROBLEM_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<field>[^:]+): (?P<message>.+)$")

# Lines 1-9; every case below appends from line 10 on.
BASE = """\
version: 1
prefix: "t"
rules:
  - name: profile
    match: GET /users/profile
    key: "user:{user_id}:profile"
  - name: update_profile
    match: PUT /users/profile
    purge: ["user:{user_id}:*"]
"""


def problems(text: str, environ: dict[str, str] | None = None) -> list:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "t.yaml", {} if environ is None else environ)
    return info.value.problems


def read_rule(extra: str) -> str:
    """BASE plus one GET rule ``x`` (lines 10-12) and ``extra`` from line 13."""
    return BASE + '  - name: x\n    match: GET /x\n    key: "x:{user_id}"\n' + textwrap.indent(extra, "    ")


def write_rule(*patterns: str) -> str:
    """BASE plus a write rule ``w`` (lines 10-12) whose purge patterns start at line 13."""
    return BASE + "  - name: w\n    match: POST /w\n    purge:\n" + "".join(f'      - "{p}"\n' for p in patterns)


# --------------------------------------------------------------------------- the shipped file


@pytest.mark.parametrize("path", SHIPPED, ids=["root", "package"])
def test_shipped_rules_check_prints_one_summary_line(path, capsys):
    rules = load_rules(path, environ={})
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("\n") == 1
    reads = sum(1 for r in rules.rules if r.key is not None)
    assert out == (f"{path}: ok: {reads} cached routes, {len(rules.rules) - reads} write routes, "
                   f"{len(rules.namespaces)} namespaces, prefix 'katiba360:proxy'\n")
    assert reads == 16 and len(rules.rules) - reads == 9


def test_shipped_copies_are_identical():
    assert SHIPPED[0].read_text() == SHIPPED[1].read_text()


def test_env_override_changes_only_the_rules_that_use_it(monkeypatch):
    monkeypatch.setenv("CACHE_USER_TTL", "60")
    monkeypatch.delenv("CACHE_ACHIEVEMENT_TTL", raising=False)
    rules = load_rules(SHIPPED[0])
    assert {r.name: r.ttl for r in rules.rules if r.name in USER_RULES} == dict.fromkeys(USER_RULES, 60)
    assert rules.by_name("achievements").ttl == 1800
    assert rules.by_name("achievement_types").ttl == 86400
    defaults = load_rules(SHIPPED[0], environ={})
    assert all(defaults.by_name(n).ttl == 3600 for n in USER_RULES)


def test_env_override_accepts_durations():
    rules = load_rules(SHIPPED[0], environ={"CACHE_USER_TTL": "15m", "CACHE_LEADERBOARD_TTL": "2h"})
    assert rules.by_name("user_profile").ttl == 900
    assert rules.by_name("leaderboard").ttl == 7200


def test_unset_variable_without_default_is_an_error():
    found = problems(read_rule('ttl: "${KC_TEST_UNSET_TTL}"\n'))
    assert {(p.line, p.field) for p in found} == {(13, "x.ttl")}  # the empty value is also "not seconds"
    assert "environment variable KC_TEST_UNSET_TTL is not set and has no default" in found[0].message
    rules = parse_rules(read_rule('ttl: "${KC_TEST_UNSET_TTL}"\n'), "t.yaml", {"KC_TEST_UNSET_TTL": "5"})
    assert rules.by_name("x").ttl == 5


def test_a_file_without_defaults_loads():
    rules = parse_rules(BASE, "t.yaml", {})
    assert rules.by_name("profile").ttl == 3600 and rules.by_name("profile").auth == "required"


# --------------------------------------------------------------------------- refusals, one per file

BAD = [
    ("yaml-syntax", BASE + "  - name: y\n    match: GET /y: z\n", 11, "yaml", "mapping values are not allowed"),
    ("yaml-indent", BASE + "  - name: y\n   match: GET /y\n", 11, "yaml", "expected <block end>"),
    ("yaml-unhashable-key", BASE + "  - name: y\n    ? [a]\n    : b\n", 11, "yaml", "unhashable key"),
    ("unknown-top-field", BASE.replace('prefix: "t"', "prefx: t"), 2, "prefx", "unknown field"),
    ("unknown-empty-top-field", BASE + '"": 1\n', 10, "''", "unknown field"),
    ("unknown-defaults-field", BASE + "defaults:\n  key: \"a\"\n", 11, "defaults.key", "unknown field"),
    ("unknown-rule-field", read_rule("tll: 60\n"), 13, "x.tll", "unknown field"),
    ("ttl-not-seconds", read_rule('ttl: "abc"\n'), 13, "x.ttl", "expected seconds"),
    ("ttl-zero", read_rule("ttl: 0\n"), 13, "x.ttl", "must be > 0"),
    ("ttl-negative", read_rule("ttl: -5\n"), 13, "x.ttl", "must be > 0"),
    ("ttl-zero-duration", read_rule('ttl: "0m"\n'), 13, "x.ttl", "must be > 0"),
    ("enabled-maybe", read_rule('enabled: "maybe"\n'), 13, "x.enabled", "expected true or false"),
    ("vary-query-int", read_rule("vary_query: 3\n"), 13, "x.vary_query", "list of non-empty strings"),
    ("vary-query-twice", read_rule("vary_query: [a, a]\n"), 13, "x.vary_query", "twice"),
    ("auth-unknown", read_rule("auth: maybe\n"), 13, "x.auth", "'required' or 'none'"),
    ("max-body-superscript", read_rule('max_body_bytes: "²"\n'), 13, "x.max_body_bytes", "positive integer"),
    ("duplicate-rule-name", BASE + '  - name: profile\n    match: GET /other\n    key: "other"\n',
     10, "profile.name", "duplicate rule name (first at line 4)"),
    ("duplicate-route", BASE + '  - name: p2\n    match: GET /users/profile\n    key: "user:{user_id}:p2"\n',
     11, "p2.match", "same route as rule 'profile' (line 4)"),
    ("duplicate-route-param-names",
     BASE + '  - name: a\n    match: GET /a/{x}\n    key: "a:{x}"\n'
            '  - name: b\n    match: GET /a/{y}\n    key: "b:{y}"\n', 14, "b.match", "same route as rule 'a'"),
    ("key-placeholder-not-in-route", BASE + '  - name: item\n    match: GET /items\n    key: "item:{item_id}"\n',
     12, "item.key", "not provided by the route"),
    ("key-body-placeholder", BASE + '  - name: item\n    match: GET /items\n    key: "item:{body.id}"\n',
     12, "item.key", "only in purge patterns"),
    ("purge-star", write_rule("*"), 13, "w.purge[0]", "only an exact key or a namespace"),
    ("purge-top-namespace", write_rule("user:*"), 13, "w.purge[0]", "would match every key under 'user'"),
    ("purge-glob-question", write_rule("user:{user_id}:prof?le"), 13, "w.purge[0]", "only an exact key"),
    ("purge-glob-class", write_rule("user:[ab]:*"), 13, "w.purge[0]", "only an exact key"),
    ("purge-glob-double", write_rule("user:{user_id}:*:*"), 13, "w.purge[0]", "only an exact key"),
    ("purge-namespace-covers-nothing", write_rule("orders:{user_id}:*"), 13, "w.purge[0]", "covers no rule's key"),
    ("purge-exact-no-key", write_rule("user:{user_id}:nothing"), 13, "w.purge[0]", "is no rule's key"),
    ("purge-placeholder-not-in-route", write_rule("user:{item_id}:*"), 13, "w.purge[0]", "not provided"),
    ("auth-none-user-key", BASE + '  - name: x\n    match: GET /x\n    key: "user:{user_id}:x"\n    auth: none\n',
     12, "x.key", "needs auth: required"),
    ("auth-none-user-purge", BASE + '  - name: w\n    match: POST /w\n    auth: none\n    purge:\n'
                                    '      - "user:{user_id}:*"\n', 14, "w.purge[0]", "needs auth: required"),
    ("get-with-purge", read_rule('purge: ["user:{user_id}:*"]\n'), 13, "x.purge", "only write rules"),
    ("get-without-key", BASE + "  - name: x\n    match: GET /x\n", 10, "x.key", "required on a GET rule"),
    ("write-with-key", BASE + '  - name: w\n    match: POST /w\n    key: "w"\n    purge: ["user:{user_id}:*"]\n',
     12, "w.key", "write rules have no key"),
    ("write-without-purge", BASE + "  - name: w\n    match: POST /w\n", 10, "w.purge", "required on a write rule"),
    ("warm-identity-scoped", read_rule("ttl: 60\nwarm: true\n"), 14, "x.warm", "only rules whose key needs no identity"),
    ("keys-render-alike", BASE + '  - name: me\n    match: GET /me\n    key: "user:{user_id}:profile"\n',
     12, "me.key", "renders like rule 'profile'"),
    ("keys-render-alike-params",
     BASE + '  - name: a\n    match: GET /a/{x}\n    key: "k:{x}"\n'
            '  - name: b\n    match: GET /b/{y}\n    key: "k:{y}"\n', 15, "b.key", "renders like rule 'a'"),
    ("duplicate-yaml-key-rule", read_rule("ttl: 60\nttl: 70\n"), 14, "x.ttl", "duplicate field"),
    ("duplicate-yaml-key-top", BASE.replace('prefix: "t"\n', 'prefix: "t"\nversion: 1\n'), 3, "version",
     "duplicate field"),
    ("method-head", BASE + '  - name: h\n    match: HEAD /h\n    key: "h"\n', 11, "h.match", "HEAD is served"),
    ("path-trailing-slash", BASE + '  - name: s\n    match: GET /s/\n    key: "s"\n', 11, "s.match", "trailing"),
    ("param-not-whole-segment", BASE + '  - name: s\n    match: GET /s/x{id}\n    key: "s"\n', 11, "s.match",
     "whole segment"),
    ("name-not-snake", BASE + '  - name: Bad-Name\n    match: GET /s\n    key: "s"\n', 10, "Bad-Name.name",
     "lower_snake_case"),
    ("version-2", BASE.replace("version: 1", "version: 2"), 1, "version", "must be 1"),
    # purge_when (write rules, defaults, unmatched_writes)
    ("purge-when-unknown-word", write_rule("user:{user_id}:*") + "    purge_when: sometimes\n", 14,
     "w.purge_when", "success_or_unknown, always"),
    ("purge-when-5xx-refused", write_rule("user:{user_id}:*") + "    purge_when: {refused: [503]}\n", 14,
     "w.purge_when.refused", "only 4xx statuses"),
    ("purge-when-unknown-field", write_rule("user:{user_id}:*") + "    purge_when:\n      refused: [409]\n"
                                 "      when: later\n", 16, "w.purge_when.when", "unknown field"),
    ("purge-when-bad-envelope", write_rule("user:{user_id}:*") + "    purge_when: {envelope: header.code}\n",
     14, "w.purge_when.envelope", "{path: header.responseCode} or null"),
    ("purge-when-on-a-read", read_rule("purge_when: always\n"), 13, "x.purge_when", "only write rules"),
    ("purge-when-in-defaults", BASE + "defaults:\n  purge_when: 4xx\n", 11, "defaults.purge_when",
     "success_or_unknown, always"),
    # unmatched_writes: validated like write-rule purges, only the writer's own entries
    ("unmatched-not-a-mapping", BASE + "unmatched_writes: [a]\n", 10, "unmatched_writes", "must be a mapping"),
    ("unmatched-unknown-field", BASE + "unmatched_writes:\n  purge: []\n  purges: []\n", 12,
     "unmatched_writes.purges", "unknown field"),
    ("unmatched-without-purge", BASE + "unmatched_writes: {purge_when: always}\n", 10, "unmatched_writes.purge",
     "required"),
    ("unmatched-global", BASE.replace('prefix: "t"', 'prefix: "t"\nunmatched_writes:\n  purge:\n'
                                      '    - "user:{user_id}:*"\n    - "user:global:*"'), 6,
     "unmatched_writes.purge[1]", "must name the writer's own entries with {user_id}"),
    ("unmatched-path-placeholder", BASE + 'unmatched_writes:\n  purge: ["user:{item_id}:*"]\n', 11,
     "unmatched_writes.purge[0]", "not provided by the route"),
    ("unmatched-body-placeholder", BASE + 'unmatched_writes:\n  purge: ["user:{body.user_id}:*"]\n', 11,
     "unmatched_writes.purge[0]", "only in purge patterns"),
    ("unmatched-glob", BASE + 'unmatched_writes:\n  purge: ["user:{user_id}:prof*"]\n', 11,
     "unmatched_writes.purge[0]", "only an exact key or a namespace"),
    ("unmatched-covers-nothing", BASE + 'unmatched_writes:\n  purge: ["orders:{user_id}:*"]\n', 11,
     "unmatched_writes.purge[0]", "covers no rule's key"),
    ("unmatched-exact-no-key", BASE + 'unmatched_writes:\n  purge: ["user:{user_id}:nothing"]\n', 11,
     "unmatched_writes.purge[0]", "is no rule's key"),
    ("unmatched-purge-when", BASE + 'unmatched_writes:\n  purge: []\n  purge_when: {refused: ["5xx"]}\n', 12,
     "unmatched_writes.purge_when.refused", "only 4xx statuses"),
]


@pytest.mark.parametrize("text, line, field, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_file_is_refused_at_the_right_line(text, line, field, message):
    found = problems(text)
    assert [(p.file, p.line, p.field) for p in found] == [("t.yaml", line, field)], found
    assert message in found[0].message
    assert str(found[0]) == f"t.yaml:{line}: {field}: {found[0].message}"


MANY = BASE + """\
  - name: a
    match: GET /a
    key: "a"
    ttl: "abc"
    enabled: "maybe"
    vary_query: 3
    colour: blue
  - name: profile
    match: GET /b
    key: "b"
  - name: w
    match: POST /w
    purge: ["*", "user:*", "orders:{user_id}:*", "user:{user_id}:*"]
unknown: 1
"""
MANY_EXPECTED = {
    (13, "a.ttl"), (14, "a.enabled"), (15, "a.vary_query"), (16, "a.colour"), (17, "profile.name"),
    (22, "w.purge[0]"), (22, "w.purge[1]"), (22, "w.purge[2]"), (23, "unknown"),
}


def test_every_problem_in_a_file_is_reported():
    found = problems(MANY)
    assert len(found) == len(MANY_EXPECTED) == 9
    assert {(p.line, p.field) for p in found} == MANY_EXPECTED


def test_check_on_a_bad_file_exits_1_and_prints_each_problem_on_stderr(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(MANY)
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 9
    parsed = [PROBLEM_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert {m["file"] for m in parsed} == {str(path)}
    assert {(int(m["line"]), m["field"]) for m in parsed} == MANY_EXPECTED


def test_check_on_a_missing_file_exits_1(tmp_path, capsys):
    assert main(["check", str(tmp_path / "absent.yaml")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "cannot read" in err


# --------------------------------------------------------------------------- matching, guards, fingerprints


@pytest.fixture(scope="module")
def shipped():
    return load_rules(SHIPPED[0], environ={})


@pytest.mark.parametrize("path, name, params", [
    ("/api/v1/achievements/summary", "achievements_summary", {}),
    ("/api/v1/achievements/stats", "achievements_stats", {}),
    ("/api/v1/achievements/types", "achievement_types", {}),
    ("/api/v1/achievements/leaderboard", "leaderboard", {}),
    ("/api/v1/achievements/recent", "recent_achievements", {}),
    ("/api/v1/achievements/abc", "achievement", {"achievement_id": "abc"}),
    ("/api/v1/achievements/type/gold", "achievements_by_type", {"badge_type": "gold"}),
    ("/api/v1/achievements", "achievements", {}),
    ("/api/v1/users/profile", "user_profile", {}),
    ("/api/v1/users/profile/full", "user_full_profile", {}),
    ("/api/v1/users/nothing", None, None),
    ("/api/v1/achievements/abc/def", None, None),
])
def test_route_matching_prefers_literal_segments(shipped, path, name, params):
    found = shipped.match("GET", tuple(path[1:].split("/")))
    if name is None:
        assert found is None
    else:
        assert (found[0].name, found[1]) == (name, params)


def test_literal_route_wins_whatever_the_declaration_order():
    text = BASE + ('  - name: by_id\n    match: GET /a/{id}\n    key: "a:{id}"\n'
                   '  - name: summary\n    match: GET /a/summary\n    key: "a:summary"\n')
    rules = parse_rules(text, "t.yaml", {})
    assert rules.match("GET", ("a", "summary"))[0].name == "summary"
    assert rules.match("GET", ("a", "7")) == (rules.by_name("by_id"), {"id": "7"})
    assert rules.match("POST", ("a", "summary")) is None


@pytest.mark.parametrize("name, guards", [
    ("user_profile", (2, 3)),  # user:{user_id} covers user:{user_id}:profile
    ("auth_me", (2, 3)),
    ("achievements_summary", (2, 3)),
    ("achievement", (2, 4)),
    ("leaderboard", (2, 3)),  # achievements:global
    ("achievement_types", (2, 3)),
])
def test_guards_are_the_covering_namespaces_and_the_key(shipped, name, guards):
    assert shipped.by_name(name).guards == guards


def test_a_key_no_namespace_covers_is_guarded_by_itself_only():
    rules = parse_rules(BASE + '  - name: x\n    match: GET /x\n    key: "other:x"\n    auth: none\n', "t.yaml", {})
    assert rules.by_name("x").guards == (2,)
    assert rules.by_name("profile").guards == (2, 3)


def fingerprint(text: str, name: str = "profile") -> str:
    return parse_rules(text, "t.yaml", {}).by_name(name).fingerprint


def test_fingerprint_follows_the_key_template_not_the_ttl():
    base = fingerprint(BASE)
    assert fingerprint(BASE.replace('key: "user:{user_id}:profile"', 'key: "user:{user_id}:profile2"')) != base
    assert fingerprint(BASE.replace('key: "user:{user_id}:profile"\n', 'key: "user:{user_id}:profile"\n'
                                                                       '    ttl: 60\n')) == base
    assert fingerprint(BASE.replace('prefix: "t"', 'prefix: "u"')) != base


def test_fingerprint_follows_the_covering_namespaces():
    exact_only = BASE.replace('purge: ["user:{user_id}:*"]', 'purge: ["user:{user_id}:profile"]')
    assert parse_rules(exact_only, "t.yaml", {}).by_name("profile").guards == (2, 3)  # user:{user_id} is manual
    other = BASE.replace("user:", "acct:")
    rules = parse_rules(other.replace('purge: ["acct:{user_id}:*"]', 'purge: ["acct:{user_id}:profile"]'),
                        "t.yaml", {})
    assert rules.by_name("profile").guards == (3,)
    assert rules.by_name("profile").fingerprint != fingerprint(other)


def test_unmatched_writes_and_purge_when_load():
    rules = parse_rules(BASE + 'unmatched_writes:\n  purge: ["user:{user_id}:*", "user:{user_id}:profile"]\n'
                               '  purge_when: {refused: ["4xx"], envelope: null}\n', "t.yaml", {})
    assert [t.text for t in rules.unmatched.purge] == ["user:{user_id}", "user:{user_id}:profile"]
    assert rules.unmatched.purge_exact == (False, True) and rules.unmatched.line == 10
    assert rules.unmatched.purge_when == PurgeWhen(frozenset(range(400, 500)), None)
    assert parse_rules(BASE, "t.yaml", {}).unmatched.purge == ()  # absent: nothing
    assert parse_rules(BASE + "unmatched_writes: {purge: []}\n", "t.yaml", {}).unmatched.purge == ()
    inherited = parse_rules(BASE + "defaults: {purge_when: always}\nunmatched_writes: {purge: []}\n", "t.yaml", {})
    assert inherited.unmatched.purge_when == PURGE_ALWAYS
    assert inherited.by_name("update_profile").purge_when == PURGE_ALWAYS
    shipped = load_rules(SHIPPED[0], environ={})
    assert [t.text for t in shipped.unmatched.purge] == ["user:{user_id}", "achievements:{user_id}"]
    assert all(r.purge_when == PurgeWhen() for r in shipped.rules if r.method != "GET")


def test_a_namespace_only_unmatched_writes_purges_guards_the_entries_it_covers():
    """Else bumping it would hide nothing: the namespace must be among the entry's guards."""
    text = ("version: 1\nrules:\n  - {name: r, match: GET /r, key: \"orders:{user_id}:r\"}\n"
            "  - {name: w, match: POST /w, purge: [\"orders:{user_id}:r\"]}\n")
    without = parse_rules(text, "t.yaml", {}).by_name("r")
    with_fail_safe = parse_rules(text + 'unmatched_writes: {purge: ["orders:{user_id}:*"]}\n', "t.yaml", {}).by_name("r")
    assert without.guards == (3,) and with_fail_safe.guards == (2, 3)
    assert without.fingerprint != with_fail_safe.fingerprint
