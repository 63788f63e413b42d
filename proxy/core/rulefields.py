"""The rules file's fields, one parser each: a rule's ``match``, ``cache_when``/``error_when``,
``purge_when``, ``rollout``, ``compress`` and the rest (``FIELD_PARSERS``, by field name), and the top-level
``http_cache`` and ``audit`` sections. Each reads a value at its line and returns the typed value, or None
after telling the ``Checker`` what is wrong with it.
"""
from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import unquote

from .rules import (
    CLIENT_CACHE_CONTROL, PURGE_ALWAYS, PURGE_WHEN_CHOICES, READ_METHODS, WRITE_METHODS, AuditConfig, CacheWhen,
    HttpCacheConfig, JsonCondition, PurgeWhen,
)
from .ruleyaml import Checker, LineDict, line_of

MAX_L1_TTL = 300  # seconds: bounds how long another instance may serve an entry this one purged
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def parse_purge_when(check: Checker, value: Any, line: int, fieldname: str) -> PurgeWhen | None:
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
        check.fail(line_of(value, unknown), f"{fieldname}.{unknown}", "unknown field")
    default = PurgeWhen()
    refused = default.refused
    if "refused" in value:
        items = value["refused"]
        rline = line_of(value, "refused")
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
        eline = line_of(value, "envelope")
        if raw is None:
            envelope = None
        elif isinstance(raw, dict) and isinstance(raw.get("path"), str) and raw["path"] and set(raw) == {"path"}:
            envelope = tuple(raw["path"].split("."))
        else:
            check.fail(eline, f"{fieldname}.envelope", "must be {path: header.responseCode} or null (no envelope)")
            return None
    return PurgeWhen(refused, envelope)


def parse_match(check: Checker, match: Any, line: int, fieldname: str):
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


def _parse_auth(check: Checker, value: Any, line: int, fieldname: str) -> str | None:
    if value not in ("required", "none"):
        check.fail(line, fieldname, f"must be 'required' or 'none', got {value!r}")
        return None
    return value


def _parse_cache_when(check: Checker, value: Any, line: int, fieldname: str) -> CacheWhen | None:
    if not isinstance(value, dict):
        check.fail(line, fieldname, "must be a mapping with status and optionally json")
        return None
    for unknown in set(value) - {"status", "json"}:
        check.fail(line_of(value, unknown), f"{fieldname}.{unknown}", "unknown field")
    statuses = value.get("status", [200])
    if not isinstance(statuses, list) or not statuses or not all(
        isinstance(s, int) and not isinstance(s, bool) and 200 <= s <= 599 for s in statuses
    ):
        check.fail(line_of(value, "status"), f"{fieldname}.status", "must be a list of HTTP statuses (200-599)")
        return None
    cond = None
    if "json" in value:
        raw = value["json"]
        jline = line_of(value, "json")
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str) or not raw["path"]:
            check.fail(jline, f"{fieldname}.json", "must be a mapping with path and between (or in)")
            return None
        for unknown in set(raw) - {"path", "between", "in"}:
            check.fail(line_of(raw, unknown), f"{fieldname}.json.{unknown}", "unknown field")
        between = raw.get("between")
        one_of = raw.get("in")
        if (between is None) == (one_of is None):
            check.fail(jline, f"{fieldname}.json", "give exactly one of between: [low, high] or in: [values]")
            return None
        if between is not None and not (
            isinstance(between, list) and len(between) == 2 and all(isinstance(b, int) for b in between)
            and between[0] <= between[1]
        ):
            check.fail(line_of(raw, "between"), f"{fieldname}.json.between", "must be [low, high] integers")
            return None
        if one_of is not None and not isinstance(one_of, list):
            check.fail(line_of(raw, "in"), f"{fieldname}.json.in", "must be a list")
            return None
        cond = JsonCondition(tuple(raw["path"].split(".")), tuple(between) if between else None,
                             tuple(one_of) if one_of is not None else None)
    return CacheWhen(frozenset(statuses), cond)


def _parse_rollout(check: Checker, value: Any, line: int, fieldname: str) -> float | None:
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
    def parse(check: Checker, value: Any, line: int, fieldname: str) -> str | None:
        if value not in choices:
            check.fail(line, fieldname, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value
    return parse


def _parse_positive_int(check: Checker, value: Any, line: int, fieldname: str) -> int | None:
    value = check.substitute(value, line, fieldname)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():  # int("²") raises
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        check.fail(line, fieldname, f"must be a positive integer, got {value!r}")
        return None
    return value


def _parse_l1_ttl(check: Checker, value: Any, line: int, fieldname: str) -> int | None:
    seconds = check.seconds(value, line, fieldname, allow_zero=True)
    if seconds is not None and seconds > MAX_L1_TTL:
        check.fail(line, fieldname, f"at most {MAX_L1_TTL} s: it bounds how long another instance's purge "
                                    f"may go unseen here, got {seconds}")
        return None
    return seconds


def _lower_set(check: Checker, value: Any, line: int, fieldname: str) -> frozenset[str] | None:
    items = check.string_list(value, line, fieldname)
    return None if items is None else frozenset(i.lower() for i in items)


def _sorted_names(check: Checker, value: Any, line: int, fieldname: str) -> tuple[str, ...] | None:
    items = check.string_list(value, line, fieldname)
    if items is not None and len(set(items)) != len(items):
        check.fail(line, fieldname, "lists a name twice")
        return None
    return None if items is None else tuple(sorted(items))


def _parse_compress(check: Checker, value: Any, line: int, fieldname: str) -> int | None:
    """``compress: {min_bytes: N}`` stores bodies of N bytes or more compressed; ``compress: off``, never."""
    if not isinstance(value, dict):
        if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "false", "no")):
            return 0
        check.fail(line, fieldname, f"must be {{min_bytes: N}} or off, got {value!r}")
        return None
    for unknown in sorted(set(value) - {"min_bytes"}, key=str):
        check.fail(line_of(value, unknown), f"{fieldname}.{unknown}", "unknown field")
    if "min_bytes" not in value:
        check.fail(line, f"{fieldname}.min_bytes", "required: the smallest body (bytes) worth compressing")
        return None
    return _parse_positive_int(check, value["min_bytes"], line_of(value, "min_bytes"), f"{fieldname}.min_bytes")


FIELD_PARSERS: dict[str, Callable] = {
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
    "purge_when": parse_purge_when,
    "honor_cdn_cache_control": lambda c, v, l, f: c.boolean(v, l, f),
    "compress": _parse_compress,
    "refresh_after_purge": lambda c, v, l, f: c.boolean(v, l, f),
    "demand_window": lambda c, v, l, f: c.seconds(v, l, f, allow_zero=False),
}


def parse_http_cache(check: Checker, raw: Any, line: int) -> HttpCacheConfig:
    if raw is None:
        return HttpCacheConfig()
    if not isinstance(raw, dict):
        check.fail(line, "http_cache", "must be a mapping, e.g. {enabled: false}")
        return HttpCacheConfig()
    for unknown in set(raw) - {"enabled", "max_bytes", "heuristic", "max_body_bytes", "max_ttl", "targeted_fields"}:
        check.fail(line_of(raw, unknown), f"http_cache.{unknown}", "unknown field")
    enabled = check.boolean(raw.get("enabled", False), line_of(raw, "enabled"), "http_cache.enabled")
    heuristic = check.boolean(raw.get("heuristic", False), line_of(raw, "heuristic"), "http_cache.heuristic")
    max_bytes = _parse_positive_int(check, raw.get("max_bytes", 64 << 20), line_of(raw, "max_bytes"),
                                    "http_cache.max_bytes")
    max_body = _parse_positive_int(check, raw.get("max_body_bytes", 1 << 20), line_of(raw, "max_body_bytes"),
                                   "http_cache.max_body_bytes")
    max_ttl = check.seconds(raw.get("max_ttl", 86400), line_of(raw, "max_ttl"), "http_cache.max_ttl", False)
    targeted = HttpCacheConfig.targeted_fields
    if "targeted_fields" in raw:
        line_t = line_of(raw, "targeted_fields")
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


def parse_audit(check: Checker, raw: Any, line: int) -> AuditConfig:
    """``audit: {sample, max_per_second}``; ``CACHE_AUDIT_SAMPLE`` (when set) replaces ``sample``."""
    if raw is None:
        raw = LineDict()
    if not isinstance(raw, dict):
        check.fail(line, "audit", "must be a mapping, e.g. {sample: 0.01, max_per_second: 5}")
        raw = LineDict()
    check.report_duplicates(raw, "audit.")
    for unknown in sorted(set(raw) - {"sample", "max_per_second"}, key=str):
        check.fail(line_of(raw, unknown), f"audit.{unknown}", "unknown field")
    default = AuditConfig()
    env_sample = check.environ.get("CACHE_AUDIT_SAMPLE", "")
    if env_sample:
        sample = _number(check, env_sample, line_of(raw, "sample") if "sample" in raw else line,
                         "audit.sample (from CACHE_AUDIT_SAMPLE)", 0.0, 1.0, allow_low=True)
    else:
        sample = _number(check, raw.get("sample", default.sample), line_of(raw, "sample"), "audit.sample",
                         0.0, 1.0, allow_low=True)
    rate = _number(check, raw.get("max_per_second", default.max_per_second), line_of(raw, "max_per_second"),
                   "audit.max_per_second", 0.0, 1e6, allow_low=False)
    return AuditConfig(default.sample if sample is None else sample,
                       default.max_per_second if rate is None else rate)


def _number(check: Checker, value: Any, line: int, fieldname: str, low: float, high: float,
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
