"""Load and check ``rules.yaml`` (version 1) into the compiled rules of ``rules.py``.

Owns: the schema (which fields exist, which may be defaulted), drafting each rule from its fields and the
defaults, and linking the drafts (unique names, namespaces, purges against what reads declare), with the
load-time checks that make bad files fail with ``file:line: field: message`` (every problem at once,
never the first only). The YAML with line numbers and the shared typed reads are ``ruleyaml.py``'s; one
parser per field is ``rulefields.py``'s. Leaves out: what to do with a request (``policy.py``) and key
rendering (``keys.py``).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .errors import RuleProblem, RulesError
from .rulefields import FIELD_PARSERS, parse_audit, parse_http_cache, parse_match, parse_purge_when
from .ruleyaml import Checker, LineDict, Loader, line_of
from .keys import Template, TemplateError, parse_template
from .rules import FORMAT_VERSION, MANUAL_NAMESPACES, READ_METHODS, PurgeWhen, Rule, Rules, UnmatchedWrites


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RULE_FIELDS = frozenset({
    "name", "match", "key", "ttl", "vary_query", "auth", "cache_when", "purge", "stale_while_revalidate",
    "stale_if_error", "warm", "enabled", "drop_headers", "volatile", "rollout", "repurge_after",
    "client_cache_control", "max_body_bytes", "error_when", "l1_ttl", "purge_when", "honor_cdn_cache_control",
    "compress", "refresh_after_purge", "demand_window",
})
DEFAULTABLE = RULE_FIELDS - {"name", "match", "key", "purge"}
TOP_FIELDS = frozenset({"version", "prefix", "defaults", "rules", "http_cache", "unmatched_writes", "audit"})


def load_rules(path: str | os.PathLike, environ: dict[str, str] | None = None) -> Rules:
    """Read and compile ``path``; raises RulesError listing every problem."""
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError([RuleProblem(filename, 0, "file", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise RulesError([RuleProblem(filename, 0, "file", "not UTF-8 text")]) from None
    return parse_rules(text, filename, environ)


def parse_rules(text: str, filename: str = "rules.yaml", environ: dict[str, str] | None = None) -> Rules:
    check = Checker(filename, dict(os.environ) if environ is None else environ)
    try:
        doc = yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise RulesError([RuleProblem(filename, line, "yaml", str(getattr(exc, "problem", exc)))]) from None
    if not isinstance(doc, LineDict):
        raise RulesError([RuleProblem(filename, 1, "file", "expected a mapping with version, prefix, rules")])
    check.report_duplicates(doc, "")
    for unknown in sorted(set(doc) - TOP_FIELDS, key=str):
        check.fail(line_of(doc, unknown), str(unknown) or repr(unknown), "unknown field")  # "": 1 -> ''
    if doc.get("version") != 1:
        check.fail(line_of(doc, "version"), "version", f"must be 1, got {doc.get('version')!r}")
    prefix = check.substitute(doc.get("prefix", "katiba360:proxy"), line_of(doc, "prefix"), "prefix")
    if not isinstance(prefix, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_:.-]*$", prefix):
        check.fail(line_of(doc, "prefix"), "prefix", "must be a non-empty string of [A-Za-z0-9_:.-]")
        prefix = "invalid"
    defaults = doc.get("defaults", LineDict())
    if not isinstance(defaults, dict):
        check.fail(line_of(doc, "defaults"), "defaults", "must be a mapping")
        defaults = LineDict()
    check.report_duplicates(defaults, "defaults.")
    for unknown in sorted(set(defaults) - DEFAULTABLE, key=str):
        check.fail(line_of(defaults, unknown), f"defaults.{unknown}", "unknown field (or not allowed in defaults)")
    for empty in sorted((k for k, v in defaults.items() if v is None and k in DEFAULTABLE), key=str):
        check.fail(line_of(defaults, empty), f"defaults.{empty}", "has no value (remove the field)")
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        check.fail(line_of(doc, "rules"), "rules", "must be a non-empty list of rules")
        raw_rules = []
    drafts = [d for i, raw in enumerate(raw_rules) if (d := _draft_rule(check, raw, defaults, i, raw_rules))]
    http_cache = parse_http_cache(check, doc.get("http_cache"), line_of(doc, "http_cache"))
    unmatched, unmatched_drafts = _unmatched_writes(check, doc.get("unmatched_writes"),
                                                    line_of(doc, "unmatched_writes"), defaults)
    audit = parse_audit(check, doc.get("audit"), line_of(doc, "audit"))
    rules, namespaces = _link(check, drafts, prefix, unmatched_drafts)
    if check.problems:
        raise RulesError(list(dict.fromkeys(check.problems)))  # a bad default: once, not once per rule
    rules = tuple(replace(r, cdn_fields=http_cache.targeted_fields) if r.honor_cdn_cache_control else r
                  for r in rules)
    return Rules(filename, prefix, rules, namespaces, http_cache, unmatched, audit)


def _draft_rule(check: Checker, raw: Any, defaults: dict, index: int, container: Any) -> dict | None:
    line = line_of(container, index)
    if not isinstance(raw, dict):
        check.fail(line, f"rules[{index}]", "each rule must be a mapping")
        return None
    name = raw.get("name")
    label = name if isinstance(name, str) else f"rules[{index}]"
    check.report_duplicates(raw, f"{label}.")
    for unknown in sorted(set(raw) - RULE_FIELDS, key=str):
        check.fail(line_of(raw, unknown), f"{label}.{unknown}", "unknown field")
    if not isinstance(name, str) or not _NAME.match(name):
        check.fail(line_of(raw, "name"), f"{label}.name", "required: lower_snake_case, unique (the metric label)")
        return None
    draft: dict[str, Any] = {"name": name, "line": line}

    def where(key: str) -> tuple[Any, int, str]:
        if key in raw:
            return raw[key], line_of(raw, key), f"{name}.{key}"
        return defaults.get(key), line_of(defaults, key), f"defaults.{key}"

    draft["field_lines"] = {k: where(k)[1] for k in ("name", "match", "key", "warm")}  # for _link's checks

    match = raw.get("match")
    route = parse_match(check, match, line_of(raw, "match"), f"{name}.match")
    if route is None:
        return None
    draft["method"], draft["route"], draft["route_segments"], draft["params"] = route
    path_params = frozenset(draft["params"])
    is_read = draft["method"] in READ_METHODS
    for key, parse in FIELD_PARSERS.items():
        value, fline, fname = where(key)
        if value is None:
            if key in raw:  # `ttl:` with nothing after it is a mistake, not a request for the default
                check.fail(fline, fname, "has no value (remove the field to use the default)")
            continue
        parsed = parse(check, value, fline, fname)
        if parsed is not None:
            draft[key] = parsed
    if is_read:
        for write_only in ("purge", "purge_when"):
            if write_only in raw:
                check.fail(line_of(raw, write_only), f"{name}.{write_only}",
                           "only write rules (POST/PUT/PATCH/DELETE) purge")
        if "key" not in raw:
            check.fail(line, f"{name}.key", "required on a GET rule")
            return None
        try:
            draft["key"] = parse_template(raw["key"], path_params)
        except TemplateError as exc:
            check.fail(line_of(raw, "key"), f"{name}.key", str(exc))
            return None
        unkeyed = [s.name for s in draft["key"].sources if s.kind == "query" and s.name not in draft.get("vary_query", ())]
        if unkeyed:
            check.fail(line_of(raw, "key"), f"{name}.key",
                       f"placeholder {{query.{unkeyed[0]}}} is not provided by the route: add it to vary_query")
        if draft["key"].segments[0] == "gen" or draft["key"].text == "epoch":
            check.fail(line_of(raw, "key"), f"{name}.key", "keys 'gen:...' and 'epoch' are the store's own")
        if draft["key"].needs_identity and draft.get("auth", "required") != "required":
            check.fail(line_of(raw, "key"), f"{name}.key", "uses {user_id}, so the rule needs auth: required")
        if draft.get("refresh_after_purge") and not draft["key"].needs_identity and "refresh_after_purge" not in raw:
            # From defaults, only per-user rules: on a shared rule every writer's purge refetches what anyone
            # read, a cost the operator should choose rule by rule.
            draft["refresh_after_purge"] = False
    else:
        if "key" in raw:
            check.fail(line_of(raw, "key"), f"{name}.key", "write rules have no key; they purge")
        if "refresh_after_purge" in raw:
            check.fail(line_of(raw, "refresh_after_purge"), f"{name}.refresh_after_purge",
                       "read rules only: it says which entries a purge refetches")
        draft.pop("refresh_after_purge", None)
        purges = raw.get("purge")
        if not isinstance(purges, list) or not purges:
            check.fail(line_of(raw, "purge") if "purge" in raw else line, f"{name}.purge",
                       "required on a write rule: a list of patterns (exact key or namespace:*)")
            purges = []
        templates = _parse_purges(check, purges, f"{name}.purge", path_params, allow_body=True,
                                  identity_ok=draft.get("auth", "required") == "required")
        draft["purge_drafts"] = templates
    return draft


def _parse_purges(check: Checker, purges: list, fieldname: str, path_params: frozenset[str], allow_body: bool,
                  identity_ok: bool) -> list[tuple[Template, bool, int, str]]:
    """(template, is_exact, line, field) of each valid pattern: an exact key or a namespace plus ':*'."""
    templates = []
    for i, pattern in enumerate(purges):
        pline, field_i = line_of(purges, i), f"{fieldname}[{i}]"
        if not isinstance(pattern, str):
            check.fail(pline, field_i, "must be a string")
            continue
        is_exact = not pattern.endswith(":*")
        body = pattern if is_exact else pattern[:-2]
        if "*" in body or "?" in body or "[" in body:
            check.fail(pline, field_i, f"{pattern!r}: only an exact key or a namespace followed by ':*' is allowed")
            continue
        try:
            template = parse_template(body, path_params, allow_body=allow_body)
        except TemplateError as exc:
            check.fail(pline, field_i, str(exc))
            continue
        if not is_exact and len(template.segments) < 2:
            check.fail(pline, field_i,
                       f"{pattern!r} would match every key under {body!r}; name a namespace "
                       "such as user:{user_id}:* (use 'cache-proxy purge --all' to purge everything)")
            continue
        if template.needs_identity and not identity_ok:
            check.fail(pline, field_i, "uses {user_id}, so the rule needs auth: required")
        templates.append((template, is_exact, pline, field_i))
    return templates


def _unmatched_writes(check: Checker, raw: Any, line: int, defaults: dict
                      ) -> tuple[UnmatchedWrites, list[tuple[Template, bool, int, str]]]:
    """``unmatched_writes: {purge: [...], purge_when: ...}``; absent: an unmatched write purges nothing."""
    inherited = PurgeWhen()
    if isinstance(defaults.get("purge_when"), (str, dict)):
        inherited = parse_purge_when(check, defaults["purge_when"], line_of(defaults, "purge_when"),
                                      "defaults.purge_when") or inherited
    if raw is None:
        return UnmatchedWrites(purge_when=inherited), []
    if not isinstance(raw, dict):
        check.fail(line, "unmatched_writes", 'must be a mapping, e.g. {purge: ["user:{user_id}:*"]}')
        return UnmatchedWrites(purge_when=inherited), []
    check.report_duplicates(raw, "unmatched_writes.")
    for unknown in sorted(set(raw) - {"purge", "purge_when"}, key=str):
        check.fail(line_of(raw, unknown), f"unmatched_writes.{unknown}", "unknown field")
    purges = raw.get("purge")
    if not isinstance(purges, list):
        check.fail(line_of(raw, "purge") if "purge" in raw else line, "unmatched_writes.purge",
                   "required: a list of patterns (the writer's namespace:* or exact key), or [] for none")
        purges = []
    drafts = []
    for template, is_exact, pline, fieldname in _parse_purges(check, purges, "unmatched_writes.purge", frozenset(),
                                                              allow_body=False, identity_ok=True):
        # No route, so no path values; and only the writer's own entries: a shared namespace purged by any
        # unknown write would let every user flush entries other users read.
        if any(src.kind != "identity" for src in template.sources) or not template.needs_identity:
            check.fail(pline, fieldname, f"{template.text!r}: an unmatched write has no route: a pattern must "
                                         "name the writer's own entries with {user_id} and no other placeholder")
            continue
        drafts.append((template, is_exact, pline, fieldname))
    when = inherited
    if "purge_when" in raw:
        when = parse_purge_when(check, raw["purge_when"], line_of(raw, "purge_when"),
                                 "unmatched_writes.purge_when") or inherited
    return UnmatchedWrites(tuple(t for t, *_ in drafts), tuple(e for _, e, *_ in drafts), when, line), drafts


def _link(check: Checker, drafts: list[dict], prefix: str, unmatched: list | None = None
          ) -> tuple[tuple[Rule, ...], tuple[Template, ...]]:
    """Cross-rule checks, then guards and fingerprints, which need every rule's purges (and
    ``unmatched_writes``' patterns: a namespace only they purge must guard the entries it covers)."""
    seen_names: dict[str, int] = {}
    seen_routes: dict[tuple, dict] = {}
    seen_shapes: dict[tuple, dict] = {}
    for d in drafts:
        if d["name"] in seen_names:
            check.fail(d["field_lines"]["name"], f"{d['name']}.name", f"duplicate rule name (first at line {seen_names[d['name']]})")
        seen_names.setdefault(d["name"], d["line"])
        route_key = (d["method"], d["route_segments"])
        if route_key in seen_routes:
            other = seen_routes[route_key]
            check.fail(d["field_lines"]["match"], f"{d['name']}.match",
                       f"same route as rule {other['name']!r} (line {other['line']})")
        seen_routes.setdefault(route_key, d)
        if d.get("key") is not None:
            shape = d["key"].shape
            if shape in seen_shapes:
                other = seen_shapes[shape]
                check.fail(d["field_lines"]["key"], f"{d['name']}.key",
                           f"renders like rule {other['name']!r}'s key (line {other['line']}): entries would collide")
            seen_shapes.setdefault(shape, d)
    keys = [d["key"] for d in drafts if d.get("key") is not None]
    namespaces: dict[tuple, Template] = {}
    patterns = [p for d in drafts for p in d.get("purge_drafts", ())] + list(unmatched or ())
    for template, is_exact, pline, fieldname in patterns:
        if is_exact:
            if not any(k.shape == template.shape for k in keys):
                check.fail(pline, fieldname, f"{template.text!r} is no rule's key (did you mean {template.text}:*?)")
        elif not any(template.covers(k) for k in keys):
            check.fail(pline, fieldname, f"{template.text}:* covers no rule's key")
        else:
            namespaces.setdefault(template.shape, template)
    for text in MANUAL_NAMESPACES:
        template = parse_template(text)
        if any(template.covers(k) for k in keys):
            namespaces.setdefault(template.shape, template)
    declared = tuple(namespaces.values())
    rules = []
    for d in drafts:
        d = dict(d)
        purge_drafts = d.pop("purge_drafts", ())
        field_lines = d.pop("field_lines")
        d["purge"] = tuple(t for t, *_ in purge_drafts)
        d["purge_exact"] = tuple(e for _, e, *_ in purge_drafts)
        d["compress_from"] = d.pop("compress", 0)
        if d.get("key") is not None:
            key = d["key"]
            lengths = sorted({len(ns.segments) for ns in declared if ns.covers(key)} | {len(key.segments)})
            d["guards"] = tuple(lengths)
            material = repr((FORMAT_VERSION, prefix, key.text, d["guards"], d.get("vary_query", ())))
            d["fingerprint"] = hashlib.blake2b(material.encode(), digest_size=6).hexdigest()
        if d.get("warm") and d.get("key") is not None and d["key"].needs_identity:
            check.fail(field_lines["warm"], f"{d['name']}.warm",
                       "only rules whose key needs no identity can be warmed (the proxy keeps no tokens)")
        rules.append(Rule(**d))
    return tuple(rules), declared
