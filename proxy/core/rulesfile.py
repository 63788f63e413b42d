"""Load and check ``rules.yaml`` (version 1) into the compiled rules of ``rules.py``.

Owns: the schema (every field, its type and default), ``${VAR:-default}`` substitution, route matching
and the load-time checks that make bad files fail with ``file:line: field: message`` (every problem at
once, never the first only), with the YAML loader that remembers each node's line. Leaves out: what to
do with a request (``policy.py``) and key rendering (``keys.py``).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

import yaml

from .errors import RuleProblem, RulesError
from .keys import Template, TemplateError, parse_template
from .rules import (
    CLIENT_CACHE_CONTROL, FORMAT_VERSION, MANUAL_NAMESPACES, PURGE_ALWAYS, PURGE_WHEN_CHOICES, READ_METHODS,
    WRITE_METHODS, AuditConfig, CacheWhen, HttpCacheConfig, JsonCondition, PurgeWhen, Rule, Rules,
    UnmatchedWrites,
)


# --------------------------------------------------------------------------- YAML with line numbers


class _LineDict(dict):
    line = 1
    lines: dict
    duplicates: list


class _LineList(list):
    line = 1
    lines: list


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    out = _LineDict()
    out.line, out.lines, out.duplicates = node.start_mark.line + 1, {}, []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if getattr(key, "__hash__", None) is None:  # `? [a]: b`; SafeLoader refuses these too
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    "found unhashable key", key_node.start_mark)
        line = key_node.start_mark.line + 1
        if key in out:
            out.duplicates.append((key, line))
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> _LineList:
    out = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line, out.lines = node.start_mark.line + 1, [c.start_mark.line + 1 for c in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _line_of(container: Any, key: Any = None) -> int:
    if key is not None and isinstance(container, _LineDict):
        return getattr(container, "lines", {}).get(key, container.line)  # a default _LineDict() has no lines
    if key is not None and isinstance(container, _LineList) and isinstance(key, int):
        return container.lines[key] if key < len(container.lines) else container.line
    return getattr(container, "line", 1)


# --------------------------------------------------------------------------- loading


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
MAX_SECONDS = 365 * 86400  # longer would overflow store expiries (Redis refuses them: every fill would fail)
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
RULE_FIELDS = frozenset({
    "name", "match", "key", "ttl", "vary_query", "auth", "cache_when", "purge", "stale_while_revalidate",
    "stale_if_error", "warm", "enabled", "drop_headers", "volatile", "rollout", "repurge_after",
    "client_cache_control", "max_body_bytes", "error_when", "l1_ttl", "purge_when", "honor_cdn_cache_control",
    "compress", "refresh_after_purge", "demand_window",
})
DEFAULTABLE = RULE_FIELDS - {"name", "match", "key", "purge"}
TOP_FIELDS = frozenset({"version", "prefix", "defaults", "rules", "http_cache", "unmatched_writes", "audit"})


class _Checker:
    """Collects problems against one file; each ``want_*`` returns a typed value or None."""

    def __init__(self, filename: str, environ: dict[str, str]):
        self.filename, self.environ, self.problems = filename, environ, []

    def fail(self, line: int, fieldname: str, message: str) -> None:
        problem = RuleProblem(self.filename, line, fieldname, message)
        if problem not in self.problems:  # a bad default is parsed once per rule: report it once
            self.problems.append(problem)

    def substitute(self, value: Any, line: int, fieldname: str) -> Any:
        if not isinstance(value, str) or "${" not in value:
            return value

        def repl(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is None:
                self.fail(line, fieldname, f"environment variable {name} is not set and has no default")
                return ""
            return default

        return _ENV.sub(repl, value)

    def seconds(self, value: Any, line: int, fieldname: str, allow_zero: bool) -> int | None:
        value = self.substitute(value, line, fieldname)
        if isinstance(value, bool):
            value = None
        if isinstance(value, int):
            seconds = value
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            n, unit = int(m.group(1)), m.group(2)
            seconds = n // 1000 if unit == "ms" else n * _UNITS[unit]
        else:
            self.fail(line, fieldname, f"expected seconds (an integer or e.g. '15m'), got {value!r}")
            return None
        if seconds < 0 or (seconds == 0 and not allow_zero):
            self.fail(line, fieldname, f"must be {'>= 0' if allow_zero else '> 0'}, got {seconds}")
            return None
        if seconds > MAX_SECONDS:
            self.fail(line, fieldname, f"must be at most {MAX_SECONDS} (365 days), got {seconds}")
            return None
        return seconds

    def boolean(self, value: Any, line: int, fieldname: str) -> bool | None:
        value = self.substitute(value, line, fieldname)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, bool):
            return value
        self.fail(line, fieldname, f"expected true or false, got {value!r}")
        return None

    def string_list(self, value: Any, line: int, fieldname: str) -> tuple[str, ...] | None:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(line, fieldname, "expected a list of non-empty strings")
            return None
        return tuple(self.substitute(v, line, fieldname) for v in value)


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
    check = _Checker(filename, dict(os.environ) if environ is None else environ)
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise RulesError([RuleProblem(filename, line, "yaml", str(getattr(exc, "problem", exc)))]) from None
    if not isinstance(doc, _LineDict):
        raise RulesError([RuleProblem(filename, 1, "file", "expected a mapping with version, prefix, rules")])
    _report_duplicates(check, doc, "")
    for unknown in sorted(set(doc) - TOP_FIELDS, key=str):
        check.fail(_line_of(doc, unknown), str(unknown) or repr(unknown), "unknown field")  # "": 1 -> ''
    if doc.get("version") != 1:
        check.fail(_line_of(doc, "version"), "version", f"must be 1, got {doc.get('version')!r}")
    prefix = check.substitute(doc.get("prefix", "katiba360:proxy"), _line_of(doc, "prefix"), "prefix")
    if not isinstance(prefix, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_:.-]*$", prefix):
        check.fail(_line_of(doc, "prefix"), "prefix", "must be a non-empty string of [A-Za-z0-9_:.-]")
        prefix = "invalid"
    defaults = doc.get("defaults", _LineDict())
    if not isinstance(defaults, dict):
        check.fail(_line_of(doc, "defaults"), "defaults", "must be a mapping")
        defaults = _LineDict()
    _report_duplicates(check, defaults, "defaults.")
    for unknown in sorted(set(defaults) - DEFAULTABLE, key=str):
        check.fail(_line_of(defaults, unknown), f"defaults.{unknown}", "unknown field (or not allowed in defaults)")
    for empty in sorted((k for k, v in defaults.items() if v is None and k in DEFAULTABLE), key=str):
        check.fail(_line_of(defaults, empty), f"defaults.{empty}", "has no value (remove the field)")
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        check.fail(_line_of(doc, "rules"), "rules", "must be a non-empty list of rules")
        raw_rules = []
    drafts = [d for i, raw in enumerate(raw_rules) if (d := _draft_rule(check, raw, defaults, i, raw_rules))]
    http_cache = _http_cache(check, doc.get("http_cache"), _line_of(doc, "http_cache"))
    unmatched, unmatched_drafts = _unmatched_writes(check, doc.get("unmatched_writes"),
                                                    _line_of(doc, "unmatched_writes"), defaults)
    audit = _audit(check, doc.get("audit"), _line_of(doc, "audit"))
    rules, namespaces = _link(check, drafts, prefix, unmatched_drafts)
    if check.problems:
        raise RulesError(list(dict.fromkeys(check.problems)))  # a bad default: once, not once per rule
    rules = tuple(replace(r, cdn_fields=http_cache.targeted_fields) if r.honor_cdn_cache_control else r
                  for r in rules)
    return Rules(filename, prefix, rules, namespaces, http_cache, unmatched, audit)


def _report_duplicates(check: _Checker, mapping: Any, where: str) -> None:
    for key, line in getattr(mapping, "duplicates", ()):
        check.fail(line, f"{where}{key}", "duplicate field")


def _draft_rule(check: _Checker, raw: Any, defaults: dict, index: int, container: Any) -> dict | None:
    line = _line_of(container, index)
    if not isinstance(raw, dict):
        check.fail(line, f"rules[{index}]", "each rule must be a mapping")
        return None
    name = raw.get("name")
    label = name if isinstance(name, str) else f"rules[{index}]"
    _report_duplicates(check, raw, f"{label}.")
    for unknown in sorted(set(raw) - RULE_FIELDS, key=str):
        check.fail(_line_of(raw, unknown), f"{label}.{unknown}", "unknown field")
    if not isinstance(name, str) or not _NAME.match(name):
        check.fail(_line_of(raw, "name"), f"{label}.name", "required: lower_snake_case, unique (the metric label)")
        return None
    draft: dict[str, Any] = {"name": name, "line": line}

    def where(key: str) -> tuple[Any, int, str]:
        if key in raw:
            return raw[key], _line_of(raw, key), f"{name}.{key}"
        return defaults.get(key), _line_of(defaults, key), f"defaults.{key}"

    draft["field_lines"] = {k: where(k)[1] for k in ("name", "match", "key", "warm")}  # for _link's checks

    match = raw.get("match")
    route = _parse_match(check, match, _line_of(raw, "match"), f"{name}.match")
    if route is None:
        return None
    draft["method"], draft["route"], draft["route_segments"], draft["params"] = route
    path_params = frozenset(draft["params"])
    is_read = draft["method"] in READ_METHODS
    for key, parse in _FIELD_PARSERS.items():
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
                check.fail(_line_of(raw, write_only), f"{name}.{write_only}",
                           "only write rules (POST/PUT/PATCH/DELETE) purge")
        if "key" not in raw:
            check.fail(line, f"{name}.key", "required on a GET rule")
            return None
        try:
            draft["key"] = parse_template(raw["key"], path_params)
        except TemplateError as exc:
            check.fail(_line_of(raw, "key"), f"{name}.key", str(exc))
            return None
        unkeyed = [s.name for s in draft["key"].sources if s.kind == "query" and s.name not in draft.get("vary_query", ())]
        if unkeyed:
            check.fail(_line_of(raw, "key"), f"{name}.key",
                       f"placeholder {{query.{unkeyed[0]}}} is not provided by the route: add it to vary_query")
        if draft["key"].segments[0] == "gen" or draft["key"].text == "epoch":
            check.fail(_line_of(raw, "key"), f"{name}.key", "keys 'gen:...' and 'epoch' are the store's own")
        if draft["key"].needs_identity and draft.get("auth", "required") != "required":
            check.fail(_line_of(raw, "key"), f"{name}.key", "uses {user_id}, so the rule needs auth: required")
        if draft.get("refresh_after_purge") and not draft["key"].needs_identity:
            if "refresh_after_purge" in raw:
                check.fail(_line_of(raw, "refresh_after_purge"), f"{name}.refresh_after_purge",
                           "needs a key with {user_id}: the refetch uses the writer's own credentials")
            draft["refresh_after_purge"] = False  # from defaults: only the rules it can apply to
    else:
        if "key" in raw:
            check.fail(_line_of(raw, "key"), f"{name}.key", "write rules have no key; they purge")
        if "refresh_after_purge" in raw:
            check.fail(_line_of(raw, "refresh_after_purge"), f"{name}.refresh_after_purge",
                       "read rules only: it says which entries a purge refetches")
        draft.pop("refresh_after_purge", None)
        purges = raw.get("purge")
        if not isinstance(purges, list) or not purges:
            check.fail(_line_of(raw, "purge") if "purge" in raw else line, f"{name}.purge",
                       "required on a write rule: a list of patterns (exact key or namespace:*)")
            purges = []
        templates = _parse_purges(check, purges, f"{name}.purge", path_params, allow_body=True,
                                  identity_ok=draft.get("auth", "required") == "required")
        draft["purge_drafts"] = templates
    return draft


def _parse_purges(check: _Checker, purges: list, fieldname: str, path_params: frozenset[str], allow_body: bool,
                  identity_ok: bool) -> list[tuple[Template, bool, int, str]]:
    """(template, is_exact, line, field) of each valid pattern: an exact key or a namespace plus ':*'."""
    templates = []
    for i, pattern in enumerate(purges):
        pline, field_i = _line_of(purges, i), f"{fieldname}[{i}]"
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


def _unmatched_writes(check: _Checker, raw: Any, line: int, defaults: dict
                      ) -> tuple[UnmatchedWrites, list[tuple[Template, bool, int, str]]]:
    """``unmatched_writes: {purge: [...], purge_when: ...}``; absent: an unmatched write purges nothing."""
    inherited = PurgeWhen()
    if isinstance(defaults.get("purge_when"), (str, dict)):
        inherited = _parse_purge_when(check, defaults["purge_when"], _line_of(defaults, "purge_when"),
                                      "defaults.purge_when") or inherited
    if raw is None:
        return UnmatchedWrites(purge_when=inherited), []
    if not isinstance(raw, dict):
        check.fail(line, "unmatched_writes", 'must be a mapping, e.g. {purge: ["user:{user_id}:*"]}')
        return UnmatchedWrites(purge_when=inherited), []
    _report_duplicates(check, raw, "unmatched_writes.")
    for unknown in sorted(set(raw) - {"purge", "purge_when"}, key=str):
        check.fail(_line_of(raw, unknown), f"unmatched_writes.{unknown}", "unknown field")
    purges = raw.get("purge")
    if not isinstance(purges, list):
        check.fail(_line_of(raw, "purge") if "purge" in raw else line, "unmatched_writes.purge",
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
        when = _parse_purge_when(check, raw["purge_when"], _line_of(raw, "purge_when"),
                                 "unmatched_writes.purge_when") or inherited
    return UnmatchedWrites(tuple(t for t, *_ in drafts), tuple(e for _, e, *_ in drafts), when, line), drafts


def _parse_purge_when(check: _Checker, value: Any, line: int, fieldname: str) -> PurgeWhen | None:
    """``success_or_unknown`` (the default), ``always``, or ``{refused: [4xx statuses or "4xx"],
    envelope: {path: header.responseCode} | null}``."""
    if isinstance(value, str):
        if value not in PURGE_WHEN_CHOICES:
            check.fail(line, fieldname, f"must be one of {', '.join(PURGE_WHEN_CHOICES)} or a mapping with "
                                        f"refused and envelope, got {value!r}")
            return None
        return PURGE_ALWAYS if value == "always" else PurgeWhen()
    if not isinstance(value, dict):
        check.fail(line, fieldname, "must be success_or_unknown, always, or a mapping with refused and envelope")
        return None
    for unknown in sorted(set(value) - {"refused", "envelope"}, key=str):
        check.fail(_line_of(value, unknown), f"{fieldname}.{unknown}", "unknown field")
    default = PurgeWhen()
    refused = default.refused
    if "refused" in value:
        items = value["refused"]
        rline = _line_of(value, "refused")
        if not isinstance(items, list):
            check.fail(rline, f"{fieldname}.refused", 'must be a list of 4xx statuses or "4xx"')
            return None
        codes: set[int] = set()
        for item in items:
            if item == "4xx":
                codes.update(range(400, 500))
            elif isinstance(item, int) and not isinstance(item, bool) and 400 <= item <= 499:
                codes.add(item)
            else:
                # a 5xx or no answer leaves the outcome unknown (the write may have committed): never a refusal
                check.fail(rline, f"{fieldname}.refused", f'{item!r}: only 4xx statuses (400-499) or "4xx" '
                                                         "mean the backend refused the write")
                return None
        refused = frozenset(codes)
    envelope = default.envelope
    if "envelope" in value:
        raw = value["envelope"]
        eline = _line_of(value, "envelope")
        if raw is None:
            envelope = None
        elif isinstance(raw, dict) and isinstance(raw.get("path"), str) and raw["path"] and set(raw) == {"path"}:
            envelope = tuple(raw["path"].split("."))
        else:
            check.fail(eline, f"{fieldname}.envelope", "must be {path: header.responseCode} or null (no envelope)")
            return None
    return PurgeWhen(refused, envelope)


def _parse_match(check: _Checker, match: Any, line: int, fieldname: str):
    if not isinstance(match, str) or len(match.split()) != 2:
        check.fail(line, fieldname, "required: 'METHOD /path/{param}', e.g. 'GET /api/v1/users/profile'")
        return None
    method, path = match.split()
    method = method.upper()
    if method not in READ_METHODS | WRITE_METHODS:
        check.fail(line, fieldname, f"method {method!r} is not one of GET, POST, PUT, PATCH, DELETE "
                                    "(HEAD is served from GET rules)")
        return None
    if not path.startswith("/") or path == "/" or path.endswith("/") or "//" in path:
        check.fail(line, fieldname, f"path {path!r} must start with '/', have no empty segment or trailing '/'")
        return None
    segments: list[str | None] = []
    params: list[str] = []
    for seg in path[1:].split("/"):
        if m := _PARAM.match(seg):
            if m.group(1) in params or m.group(1) == "user_id":
                check.fail(line, fieldname, f"path parameter {m.group(1)!r} is repeated or reserved")
                return None
            params.append(m.group(1))
            segments.append(None)
        elif "{" in seg or "}" in seg or seg in (".", ".."):
            check.fail(line, fieldname, f"segment {seg!r}: a {{param}} must be a whole segment")
            return None
        else:
            segments.append(unquote(seg))
    return method, path, tuple(segments), tuple(params)


def _parse_auth(check: _Checker, value: Any, line: int, fieldname: str) -> str | None:
    if value not in ("required", "none"):
        check.fail(line, fieldname, f"must be 'required' or 'none', got {value!r}")
        return None
    return value


def _parse_cache_when(check: _Checker, value: Any, line: int, fieldname: str) -> CacheWhen | None:
    if not isinstance(value, dict):
        check.fail(line, fieldname, "must be a mapping with status and optionally json")
        return None
    for unknown in set(value) - {"status", "json"}:
        check.fail(_line_of(value, unknown), f"{fieldname}.{unknown}", "unknown field")
    statuses = value.get("status", [200])
    if not isinstance(statuses, list) or not statuses or not all(
        isinstance(s, int) and not isinstance(s, bool) and 200 <= s <= 599 for s in statuses
    ):
        check.fail(_line_of(value, "status"), f"{fieldname}.status", "must be a list of HTTP statuses (200-599)")
        return None
    cond = None
    if "json" in value:
        raw = value["json"]
        jline = _line_of(value, "json")
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str) or not raw["path"]:
            check.fail(jline, f"{fieldname}.json", "must be a mapping with path and between (or in)")
            return None
        for unknown in set(raw) - {"path", "between", "in"}:
            check.fail(_line_of(raw, unknown), f"{fieldname}.json.{unknown}", "unknown field")
        between = raw.get("between")
        one_of = raw.get("in")
        if (between is None) == (one_of is None):
            check.fail(jline, f"{fieldname}.json", "give exactly one of between: [low, high] or in: [values]")
            return None
        if between is not None and not (
            isinstance(between, list) and len(between) == 2 and all(isinstance(b, int) for b in between)
            and between[0] <= between[1]
        ):
            check.fail(_line_of(raw, "between"), f"{fieldname}.json.between", "must be [low, high] integers")
            return None
        if one_of is not None and not isinstance(one_of, list):
            check.fail(_line_of(raw, "in"), f"{fieldname}.json.in", "must be a list")
            return None
        cond = JsonCondition(tuple(raw["path"].split(".")), tuple(between) if between else None,
                             tuple(one_of) if one_of is not None else None)
    return CacheWhen(frozenset(statuses), cond)


def _parse_rollout(check: _Checker, value: Any, line: int, fieldname: str) -> float | None:
    value = check.substitute(value, line, fieldname)
    text = str(value).strip().rstrip("%")
    try:
        pct = float(text)
    except ValueError:
        pct = -1.0
    if not 0 <= pct <= 100:
        check.fail(line, fieldname, f"must be a percentage from 0 to 100, got {value!r}")
        return None
    return pct


def _parse_choice(choices: tuple[str, ...]) -> Callable:
    def parse(check: _Checker, value: Any, line: int, fieldname: str) -> str | None:
        if value not in choices:
            check.fail(line, fieldname, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value
    return parse


def _parse_positive_int(check: _Checker, value: Any, line: int, fieldname: str) -> int | None:
    value = check.substitute(value, line, fieldname)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():  # int("²") raises
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        check.fail(line, fieldname, f"must be a positive integer, got {value!r}")
        return None
    return value


MAX_L1_TTL = 300


def _parse_l1_ttl(check: _Checker, value: Any, line: int, fieldname: str) -> int | None:
    seconds = check.seconds(value, line, fieldname, allow_zero=True)
    if seconds is not None and seconds > MAX_L1_TTL:
        check.fail(line, fieldname, f"at most {MAX_L1_TTL} s: it bounds how long another instance's purge "
                                    f"may go unseen here, got {seconds}")
        return None
    return seconds


def _lower_set(check: _Checker, value: Any, line: int, fieldname: str) -> frozenset[str] | None:
    items = check.string_list(value, line, fieldname)
    return None if items is None else frozenset(i.lower() for i in items)


def _sorted_names(check: _Checker, value: Any, line: int, fieldname: str) -> tuple[str, ...] | None:
    items = check.string_list(value, line, fieldname)
    if items is not None and len(set(items)) != len(items):
        check.fail(line, fieldname, "lists a name twice")
        return None
    return None if items is None else tuple(sorted(items))


def _parse_compress(check: _Checker, value: Any, line: int, fieldname: str) -> int | None:
    """``compress: {min_bytes: N}`` stores bodies of N bytes or more compressed; ``compress: off``, never."""
    if not isinstance(value, dict):
        if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "false", "no")):
            return 0
        check.fail(line, fieldname, f"must be {{min_bytes: N}} or off, got {value!r}")
        return None
    for unknown in sorted(set(value) - {"min_bytes"}, key=str):
        check.fail(_line_of(value, unknown), f"{fieldname}.{unknown}", "unknown field")
    if "min_bytes" not in value:
        check.fail(line, f"{fieldname}.min_bytes", "required: the smallest body (bytes) worth compressing")
        return None
    return _parse_positive_int(check, value["min_bytes"], _line_of(value, "min_bytes"), f"{fieldname}.min_bytes")


_FIELD_PARSERS: dict[str, Callable] = {
    "ttl": lambda c, v, l, f: c.seconds(v, l, f, allow_zero=False),
    "stale_while_revalidate": lambda c, v, l, f: c.seconds(v, l, f, allow_zero=True),
    "stale_if_error": lambda c, v, l, f: c.seconds(v, l, f, allow_zero=True),
    "repurge_after": lambda c, v, l, f: c.seconds(v, l, f, allow_zero=True),
    "vary_query": _sorted_names,
    "auth": _parse_auth,
    "cache_when": _parse_cache_when,
    "warm": lambda c, v, l, f: c.boolean(v, l, f),
    "enabled": lambda c, v, l, f: c.boolean(v, l, f),
    "drop_headers": _lower_set,
    "volatile": lambda c, v, l, f: c.string_list(v, l, f),
    "rollout": _parse_rollout,
    "client_cache_control": _parse_choice(CLIENT_CACHE_CONTROL),
    "max_body_bytes": _parse_positive_int,
    "l1_ttl": lambda c, v, l, f: _parse_l1_ttl(c, v, l, f),
    "error_when": _parse_cache_when,
    "purge_when": _parse_purge_when,
    "honor_cdn_cache_control": lambda c, v, l, f: c.boolean(v, l, f),
    "compress": _parse_compress,
    "refresh_after_purge": lambda c, v, l, f: c.boolean(v, l, f),
    "demand_window": lambda c, v, l, f: c.seconds(v, l, f, allow_zero=False),
}


def _http_cache(check: _Checker, raw: Any, line: int) -> HttpCacheConfig:
    if raw is None:
        return HttpCacheConfig()
    if not isinstance(raw, dict):
        check.fail(line, "http_cache", "must be a mapping, e.g. {enabled: false}")
        return HttpCacheConfig()
    for unknown in set(raw) - {"enabled", "max_bytes", "heuristic", "max_body_bytes", "max_ttl", "targeted_fields"}:
        check.fail(_line_of(raw, unknown), f"http_cache.{unknown}", "unknown field")
    enabled = check.boolean(raw.get("enabled", False), _line_of(raw, "enabled"), "http_cache.enabled")
    heuristic = check.boolean(raw.get("heuristic", False), _line_of(raw, "heuristic"), "http_cache.heuristic")
    max_bytes = _parse_positive_int(check, raw.get("max_bytes", 64 << 20), _line_of(raw, "max_bytes"),
                                    "http_cache.max_bytes")
    max_body = _parse_positive_int(check, raw.get("max_body_bytes", 1 << 20), _line_of(raw, "max_body_bytes"),
                                   "http_cache.max_body_bytes")
    max_ttl = check.seconds(raw.get("max_ttl", 86400), _line_of(raw, "max_ttl"), "http_cache.max_ttl", False)
    targeted = HttpCacheConfig.targeted_fields
    if "targeted_fields" in raw:
        line_t = _line_of(raw, "targeted_fields")
        names = check.string_list(raw["targeted_fields"], line_t, "http_cache.targeted_fields") \
            if raw["targeted_fields"] != [] else ()
        bad = [n for n in names or () if not _FIELD_NAME.match(n) or n.lower() == "cache-control"]
        if bad:
            check.fail(line_t, "http_cache.targeted_fields", f"not a field name (or Cache-Control itself): {bad[0]!r}")
        elif names is not None:
            targeted = tuple(names)
    return HttpCacheConfig(bool(enabled), max_bytes or (64 << 20), bool(heuristic), max_body or (1 << 20),
                           max_ttl or 86400, targeted)


_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _audit(check: _Checker, raw: Any, line: int) -> AuditConfig:
    """``audit: {sample, max_per_second}``; ``CACHE_AUDIT_SAMPLE`` (when set) replaces ``sample``."""
    if raw is None:
        raw = _LineDict()
    if not isinstance(raw, dict):
        check.fail(line, "audit", "must be a mapping, e.g. {sample: 0.01, max_per_second: 5}")
        raw = _LineDict()
    _report_duplicates(check, raw, "audit.")
    for unknown in sorted(set(raw) - {"sample", "max_per_second"}, key=str):
        check.fail(_line_of(raw, unknown), f"audit.{unknown}", "unknown field")
    default = AuditConfig()
    env_sample = check.environ.get("CACHE_AUDIT_SAMPLE", "")
    if env_sample:
        sample = _number(check, env_sample, _line_of(raw, "sample") if "sample" in raw else line,
                         "audit.sample (from CACHE_AUDIT_SAMPLE)", 0.0, 1.0, allow_low=True)
    else:
        sample = _number(check, raw.get("sample", default.sample), _line_of(raw, "sample"), "audit.sample",
                         0.0, 1.0, allow_low=True)
    rate = _number(check, raw.get("max_per_second", default.max_per_second), _line_of(raw, "max_per_second"),
                   "audit.max_per_second", 0.0, 1e6, allow_low=False)
    return AuditConfig(default.sample if sample is None else sample,
                       default.max_per_second if rate is None else rate)


def _number(check: _Checker, value: Any, line: int, fieldname: str, low: float, high: float,
            allow_low: bool) -> float | None:
    value = check.substitute(value, line, fieldname)
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number != number or not (low <= number <= high) or (number == low and not allow_low):
        bounds = f"from {low:g} to {high:g}" if allow_low else f"above {low:g}, at most {high:g}"
        check.fail(line, fieldname, f"must be a number {bounds}, got {value!r}")
        return None
    return number


def _link(check: _Checker, drafts: list[dict], prefix: str, unmatched: list | None = None
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
