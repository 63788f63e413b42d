"""Bad configuration is refused with file:line errors, by ``cache-proxy check`` and at start-up.

tests/unit/test_rules.py already refuses, one file each: unknown fields (top, defaults, rule), wrong types
(ttl, enabled, vary_query, auth, max_body_bytes), duplicate names and routes, key and purge placeholders
the route does not provide, match-everything purges (``*``, ``user:*``, globs), TTL 0 and negative, and
``check`` exiting 1 with each problem on stderr. Added here: the wrong types and values it does not list
(empty fields, absurd TTLs that would break the store, stale windows, rollout, cache_when, prefixes,
reserved keys, query placeholders outside vary_query, more purge shapes), invalid values arriving
through environment overrides of the shipped file, and the refusal as real processes: ``check`` and
``serve`` exit 1 with every problem's file:line on stderr, and ``build_app`` raises before serving."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.serve.config import Config
from proxy.core.errors import RulesError
from proxy.core.rulesfile import load_rules, parse_rules
from proxy.serve.app import build_app
from proxy.upstream.client import UpstreamConfig

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "rules.yaml"
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
"""  # lines 1-9


def read_rule(extra: str) -> str:
    """BASE plus a GET rule ``x`` (lines 10-12) and ``extra`` from line 13."""
    return BASE + '  - name: x\n    match: GET /x\n    key: "x:{user_id}"\n' + textwrap.indent(extra, "    ")


def other_rule(match: str, key: str) -> str:
    """BASE plus a rule ``y`` whose match is on line 11 and key on line 12."""
    return BASE + f"  - name: y\n    match: {match}\n    key: {key}\n"


def write_rule(*patterns: str) -> str:
    """BASE plus a write rule ``w`` (lines 10-12) whose purge patterns start at line 13."""
    return BASE + "  - name: w\n    match: POST /w\n    purge:\n" + "".join(f'      - "{p}"\n' for p in patterns)


BAD = [
    ("ttl-empty", read_rule("ttl:\n"), 13, "x.ttl", "has no value"),
    ("ttl-null", read_rule("ttl: null\n"), 13, "x.ttl", "has no value"),
    ("defaults-ttl-empty", BASE + "defaults:\n  ttl:\n", 11, "defaults.ttl", "has no value"),
    ("ttl-float", read_rule("ttl: 1.5\n"), 13, "x.ttl", "expected seconds"),
    ("ttl-bool", read_rule("ttl: true\n"), 13, "x.ttl", "expected seconds"),
    ("ttl-list", read_rule("ttl: [60]\n"), 13, "x.ttl", "expected seconds"),
    ("ttl-under-a-second", read_rule('ttl: "500ms"\n'), 13, "x.ttl", "must be > 0"),
    ("ttl-absurd", read_rule("ttl: 99999999999999999999\n"), 13, "x.ttl", "at most"),
    ("ttl-400-days", read_rule('ttl: "400d"\n'), 13, "x.ttl", "at most"),
    ("ttl-env-zero", read_rule('ttl: "${KC_SEC_UNSET:-0}"\n'), 13, "x.ttl", "must be > 0"),
    ("ttl-env-negative", read_rule('ttl: "${KC_SEC_UNSET:--5}"\n'), 13, "x.ttl", "expected seconds"),
    ("swr-negative", read_rule("stale_while_revalidate: -1\n"), 13, "x.stale_while_revalidate", ">= 0"),
    ("sie-words", read_rule('stale_if_error: "soon"\n'), 13, "x.stale_if_error", "expected seconds"),
    ("sie-absurd", read_rule("stale_if_error: 99999999999\n"), 13, "x.stale_if_error", "at most"),
    ("repurge-negative", read_rule("repurge_after: -1\n"), 13, "x.repurge_after", ">= 0"),
    ("rollout-150", read_rule("rollout: 150\n"), 13, "x.rollout", "0 to 100"),
    ("rollout-negative", read_rule("rollout: -1\n"), 13, "x.rollout", "0 to 100"),
    ("client-cache-control", read_rule("client_cache_control: sometimes\n"), 13, "x.client_cache_control",
     "ignore, revalidate"),
    ("cache-when-string", read_rule('cache_when: "200"\n'), 13, "x.cache_when", "mapping"),
    ("cache-when-status-999", read_rule("cache_when: {status: [999]}\n"), 13, "x.cache_when.status", "200-599"),
    ("cache-when-unknown", read_rule("cache_when: {status: [200], when: 1}\n"), 13, "x.cache_when.when",
     "unknown field"),
    ("max-body-zero", read_rule("max_body_bytes: 0\n"), 13, "x.max_body_bytes", "positive integer"),
    ("drop-headers-int", read_rule("drop_headers: 5\n"), 13, "x.drop_headers", "list of non-empty strings"),
    ("warm-maybe", read_rule('warm: "maybe"\n'), 13, "x.warm", "true or false"),
    ("match-int", other_rule("5", '"y"'), 11, "y.match", "METHOD /path"),
    ("match-method-only", other_rule("GET", '"y"'), 11, "y.match", "METHOD /path"),
    ("match-unknown-method", other_rule("FETCH /y", '"y"'), 11, "y.match", "not one of"),
    ("match-dot-segment", other_rule("GET /y/../z", '"y"'), 11, "y.match", "whole segment"),
    ("key-star", other_rule("GET /y", '"y:*"'), 12, "y.key", "lower-case literal"),
    ("key-empty-segment", other_rule("GET /y", '"y::z"'), 12, "y.key", "lower-case literal"),
    ("key-int", other_rule("GET /y", "5"), 12, "y.key", "non-empty string"),
    ("key-query-not-varied", other_rule("GET /y", '"y:{query.q}"'), 12, "y.key", "add it to vary_query"),
    ("key-reserved-gen", other_rule("GET /y", '"gen:y"'), 12, "y.key", "store's own"),
    ("key-reserved-epoch", other_rule("GET /y", '"epoch"'), 12, "y.key", "store's own"),
    ("purge-not-a-list", BASE + '  - name: w\n    match: POST /w\n    purge: "user:{user_id}:*"\n', 12, "w.purge",
     "a list of patterns"),
    ("purge-int", BASE + "  - name: w\n    match: POST /w\n    purge: [5]\n", 12, "w.purge[0]", "string"),
    ("purge-empty", write_rule(""), 13, "w.purge[0]", "non-empty"),
    ("purge-colon-star", write_rule(":*"), 13, "w.purge[0]", "non-empty"),
    ("purge-user-only", write_rule("{user_id}:*"), 13, "w.purge[0]", "would match every key"),
    ("purge-double-star", write_rule("**"), 13, "w.purge[0]", "only an exact key"),
    ("purge-star-star", write_rule("*:*"), 13, "w.purge[0]", "only an exact key"),
    ("purge-star-suffix", write_rule("user:{user_id}*"), 13, "w.purge[0]", "only an exact key"),
    ("purge-star-placeholder", write_rule("user:{*}:*"), 13, "w.purge[0]", "only an exact key"),
    ("purge-encoded-star", write_rule("user:%2A:*"), 13, "w.purge[0]", "lower-case literal"),
    ("rules-mapping", "version: 1\nprefix: t\nrules: {a: 1}\n", 3, "rules", "non-empty list"),
    ("rules-empty", "version: 1\nprefix: t\nrules: []\n", 3, "rules", "non-empty list"),
    ("rule-not-mapping", BASE + "  - just a string\n", 10, "rules[2]", "mapping"),
    ("name-missing", BASE + '  - match: GET /y\n    key: "y"\n', 10, "rules[2].name", "required"),
    ("prefix-star", BASE.replace('prefix: "t"', 'prefix: "*"'), 2, "prefix", "non-empty string"),
    ("prefix-empty", BASE.replace('prefix: "t"', 'prefix: ""'), 2, "prefix", "non-empty string"),
    ("prefix-braces", BASE.replace('prefix: "t"', 'prefix: "a{b}"'), 2, "prefix", "non-empty string"),
    ("defaults-list", BASE + "defaults: []\n", 10, "defaults", "mapping"),
    ("http-cache-unknown", BASE + "http_cache: {foo: 1}\n", 10, "http_cache.foo", "unknown field"),
    ("python-tag", BASE + "foo: !!python/object/apply:os.system ['true']\n", 10, "yaml", "constructor"),
    ("empty-file", "", 1, "file", "expected a mapping"),
]


@pytest.mark.parametrize("text, line, field, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_file_is_refused_at_the_right_line(text, line, field, message):
    with pytest.raises(RulesError) as info:
        parse_rules(text, "t.yaml", {})
    found = info.value.problems
    assert [(p.file, p.line, p.field) for p in found] == [("t.yaml", line, field)], found
    assert message in found[0].message and str(found[0]).startswith(f"t.yaml:{line}: {field}: ")


def shipped_lines(variable: str) -> list[int]:
    return [i for i, text in enumerate(SHIPPED.read_text().splitlines(), 1) if "${" + variable in text]


@pytest.mark.parametrize("value", ["0", "-60", "0s", "abc", "400d", ""])
def test_an_override_of_the_shipped_file_is_checked_like_the_file(value):
    lines = shipped_lines("CACHE_USER_TTL")
    assert len(lines) == 8
    with pytest.raises(RulesError) as info:
        load_rules(SHIPPED, environ={"CACHE_USER_TTL": value})
    assert sorted(p.line for p in info.value.problems) == lines
    assert all(p.file == str(SHIPPED) and p.field.endswith(".ttl") for p in info.value.problems)


MANY = read_rule("ttl: 0\nrollout: 150\n") + '  - name: y\n    match: GET /users/profile\n    key: "gen:{user_id}"\n' \
    + '  - name: w\n    match: POST /w\n    purge: ["*", "user:{user_id}:*"]\n' + "colour: blue\n"
MANY_EXPECTED = {(13, "x.ttl"), (14, "x.rollout"), (16, "y.match"), (17, "y.key"), (20, "w.purge[0]"), (21, "colour")}
PROBLEM = re.compile(r"(?P<file>/[^:'\"]+\.yaml):(?P<line>\d+): (?P<field>[^:]+): ")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_", "RULES_PATH", "REDIS_URL"))}
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**environ, **(env or {})})


def located(stderr: str, path: Path) -> set[tuple[int, str]]:
    return {(int(m["line"]), m["field"]) for m in PROBLEM.finditer(stderr) if m["file"] == str(path)}


def test_check_and_serve_refuse_a_bad_file_as_processes(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(MANY)
    check = run_cli("check", str(path))
    assert check.returncode == 1 and check.stdout == "", check
    assert located(check.stderr, path) == MANY_EXPECTED and len(check.stderr.splitlines()) == len(MANY_EXPECTED)
    for log_format in ("json", "text"):
        serve = run_cli("serve", "--rules", str(path), "--upstream", "http://127.0.0.1:9", "--listen",
                        "127.0.0.1:0", "--log-format", log_format, "--no-watch-rules")
        assert serve.returncode == 1, serve
        assert located(serve.stderr, path) == MANY_EXPECTED, serve.stderr
        assert "listening" not in serve.stderr and serve.stdout == ""


def test_serve_refuses_an_environment_that_makes_the_shipped_file_invalid():
    serve = run_cli("serve", "--rules", str(SHIPPED), "--upstream", "http://127.0.0.1:9", "--listen",
                    "127.0.0.1:0", "--no-watch-rules", env={"CACHE_USER_TTL": "0"})
    assert serve.returncode == 1, serve
    assert {line for line, _ in located(serve.stderr, SHIPPED)} == set(shipped_lines("CACHE_USER_TTL"))


def test_the_app_is_never_built_on_a_bad_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(MANY)
    with pytest.raises(RulesError) as info:
        build_app(Config(upstream=UpstreamConfig(url="http://127.0.0.1:9"), rules_path=str(path)))
    assert {(p.line, p.field) for p in info.value.problems} == MANY_EXPECTED
