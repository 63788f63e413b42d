"""The configuration reference (docs/CONFIGURATION.md), generated from the code so it cannot drift.

Sources: the argparse parsers of ``cache-proxy`` (``parser.build_parser``), the table of environment
variables ``settings.SETTINGS`` (``config_from`` takes every default from it), the rules fields
``rules.RULE_FIELDS`` / ``rules.TOP_FIELDS`` with the defaults of ``rules.Rule`` and
``rules.HttpCacheConfig``, and the ``${VAR:-default}`` substitutions of the shipped rules.yaml.
``cache-proxy config-reference`` prints it; tests/hardening/test_confref.py fails when the checked-in
file differs (regenerate with ``cache-proxy config-reference > docs/CONFIGURATION.md``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re

RULE_FIELD_DOCS = {
    "name": "unique lower_snake_case name; the metric label",
    "match": "METHOD and path template, e.g. `GET /api/v1/users/{user_id}`; `{param}` captures one segment",
    "key": "key template of a cached GET (placeholders: `{user_id}` = verified JWT sub, path params, "
           "`{query.x}`); without it the rule is a write rule",
    "ttl": "seconds an entry is fresh (`15m`, `1h`, `${ENV:-default}`); the current value applies to stored entries",
    "vary_query": "query parameters that are part of the key (normalised); any other parameter -> BYPASS",
    "auth": "`required`: served from cache only with a valid token (also for a shared key without `{user_id}`, whose "
            "fill carries the requester's Authorization); `none`: a public route (the fill drops Authorization)",
    "cache_when": "which backend answers are stored: `status` list and a JSON condition "
                  "(`{path, between | one_of}`)",
    "purge": "write rules: namespaces (`user:{user_id}:*`) or exact keys purged before the answer is released; "
             "`{body.x|y}` takes the first value that resolves",
    "stale_while_revalidate": "seconds past the TTL an entry is still served (STALE) while one background "
                              "request refreshes it",
    "stale_if_error": "seconds past the TTL an entry may answer when the backend fails",
    "warm": "refresh the most requested entries before they expire (public keys only)",
    "enabled": "`false`: the route goes straight to the backend (writes still purge)",
    "drop_headers": "response headers never replayed from the cache (e.g. `X-RateLimit-*`)",
    "volatile": "JSON paths shadow mode and the staleness auditor ignore when comparing cached and fresh bodies",
    "rollout": "percentage of users (of keys, for public rules) for which the rule caches; the arm is a "
               "stable hash, per-arm metrics `katiba_cache_rollout_*`",
    "repurge_after": "write rules: seconds after which the purge is repeated (effects applied in the background)",
    "client_cache_control": "`ignore`: a client's no-cache cannot drop shared entries; `revalidate`: it "
                            "fetches and refreshes the entry",
    "max_body_bytes": "larger answers are streamed to the client and not stored",
    "error_when": "backend answers that count as failures for stale_if_error (same shape as cache_when)",
    "l1_ttl": "seconds an entry may also be answered from the in-process L1 in front of Redis (0: off); "
              "invalidated by a message from every purge",
    "purge_when": "write rules: when the purge applies. `success_or_unknown`: unless the backend refused the "
                  "write (HTTP 4xx, or a 2xx whose `header.responseCode` is 400-499; the answer is read up to "
                  "64 KiB to see it); `always`; or `{refused: [\"4xx\" or 4xx statuses], envelope: {path: ...} "
                  "| null}`",
    "honor_cdn_cache_control": "RFC 9213: a valid `CDN-Cache-Control` (or `http_cache.targeted_fields`) from the "
                               "backend may forbid storing (no-store, private, no-cache) or shorten the ttl "
                               "and stale windows; never lengthens them",
    "refresh_after_purge": "read rules: a write that purges an entry read within demand_window refetches it in "
                           "the background with the writer's credentials: with a {user_id} key, the writer's "
                           "own reads only; on a shared key (set on the rule itself, never from defaults), "
                           "anyone's, at most 16 per write, each read paying for one refetch at most",
    "demand_window": "seconds a read counts as recent for refresh_after_purge",
    "compress": "`{min_bytes: N}`: bodies of N bytes or more are stored zstd-compressed (served "
                "uncompressed); `off`: never. Entries stay readable across a rolling upgrade",
}
TOP_FIELD_DOCS = {
    "version": ("1", "format version of the file (1)"),
    "prefix": ("katiba360:proxy", "prefix of every stored key; keep it distinct from the backend's own keys"),
    "defaults": ("{}", "values of any defaultable rule field for every rule"),
    "rules": ("(required)", "the list of rules"),
    "http_cache": ("{enabled: false}", "the RFC 9111 shared cache for routes no rule matches"),
    "unmatched_writes": ("{purge: []}", "the fail-safe: what a POST/PUT/PATCH/DELETE no write rule matches purges "
                         "when its token verifies: `purge` ({user_id} namespaces or keys only; shipped: "
                         "`user:{user_id}:*`, `achievements:{user_id}:*`) and `purge_when` (as on write rules); "
                         "counted as `katiba_cache_purges_total{rule=\"unmatched\"}`"),
    "audit": ("{sample: 0.01, max_per_second: 5}", "the staleness auditor: `sample` = share of cache hits "
              "fetched again and compared (0: off; env `CACHE_AUDIT_SAMPLE` wins), `max_per_second` = most "
              "audit fetches per second per instance; report at `GET /_cache/audit`"),
}
HTTP_CACHE_DOCS = {
    "enabled": "turn the RFC 9111 cache on for GET/HEAD requests no rule matches",
    "max_bytes": "memory store: bytes of HTTP entries (their own LRU inside MEMORY_MAX_BYTES)",
    "heuristic": "RFC 9111 §4.2.2 heuristic freshness (10% of Date - Last-Modified)",
    "max_body_bytes": "larger responses are streamed and not stored",
    "max_ttl": "longest an HTTP entry stays in the store, stale windows included (seconds)",
    "targeted_fields": "RFC 9213 targeted fields obeyed, most specific first (default `[CDN-Cache-Control]`; "
                       "e.g. `[KatibaCache-Cache-Control, CDN-Cache-Control]`; `[]`: none)",
}
_SUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: object) -> str:
    return f"`{text}`" if text not in ("", None) else ""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps them here; documented enough
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def _flag_rows(parser: argparse.ArgumentParser, env_by_flag: dict[str, str]) -> list[str]:
    rows = []
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):  # noqa: SLF001
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0 and not isinstance(action, (argparse._StoreTrueAction, argparse._VersionAction)):  # noqa: SLF001
                name += " " + (action.metavar or action.dest.upper())
        else:
            name = action.metavar or action.dest.upper()
            if action.nargs == "?":
                name = f"[{name}]"
        default = "" if action.default in (None, False, argparse.SUPPRESS) else action.default
        meaning = action.help or ""
        if action.choices:
            meaning += f" (one of: {', '.join(map(str, action.choices))})"
        env = next((env_by_flag[o] for o in action.option_strings if o in env_by_flag), "")
        shown = _code(_cell(default))
        if env and default == "":
            from ..core.settings import SETTINGS_BY_NAME

            setting = SETTINGS_BY_NAME[env]
            shown = _cell(setting.shown_default) if setting.shown_default else _code(_cell(setting.default))
        rows.append(f"| `{_cell(name)}` | {_code(env)} | {shown} | {_cell(meaning)} |")
    return rows


def _rules_yaml_substitutions() -> list[tuple[str, str]]:
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "rules.yaml")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return []
    seen: dict[str, str] = {}
    for name, default in _SUBST.findall(text):
        seen.setdefault(name, default)
    return sorted(seen.items())


def reference() -> str:
    from .parser import build_parser
    from ..core.settings import SETTINGS
    from ..core.rules import HttpCacheConfig, Rule
    from ..core.rulesfile import DEFAULTABLE, RULE_FIELDS, TOP_FIELDS

    missing = (RULE_FIELDS ^ set(RULE_FIELD_DOCS)) | (TOP_FIELDS ^ set(TOP_FIELD_DOCS))
    if missing:
        raise AssertionError(f"rules fields without a one-line doc (or docs of removed fields): {sorted(missing)}")
    http_fields = {f.name: f.default for f in dataclasses.fields(HttpCacheConfig)}
    if set(http_fields) ^ set(HTTP_CACHE_DOCS):
        raise AssertionError(f"http_cache fields out of step with HTTP_CACHE_DOCS: {sorted(set(http_fields) ^ set(HTTP_CACHE_DOCS))}")

    out = ["# Configuration reference", "",
           "Generated from the code by `cache-proxy config-reference` (`proxy/ops/confref.py`): every command-line "
           "flag, environment variable and rules.yaml field, its default and meaning. A test "
           "(`tests/hardening/test_confref.py`) fails when this file and the code disagree; regenerate it with "
           "`cache-proxy config-reference > docs/CONFIGURATION.md`.", "",
           "Flags win over environment variables; an empty variable counts as unset.", "",
           "## Commands and flags", ""]
    env_by_flag = {s.flag: s.name for s in SETTINGS if s.flag}
    parser = build_parser()
    out += ["### `cache-proxy`", "", "| flag | env | default | meaning |", "|---|---|---|---|"]
    out += _flag_rows(parser, {})
    out.append("")
    for name, sub in _subparsers(parser).items():
        out += [f"### `cache-proxy {name}`", "", sub.description or _help_of(parser, name), "",
                "| argument | env | default | meaning |", "|---|---|---|---|"]
        out += _flag_rows(sub, env_by_flag if name == "serve" else {}) or ["| (none) | | | |"]
        out.append("")

    out += ["## Environment variables", "",
            "| variable | default | flag | read by | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        default = s.shown_default if s.shown_default is not None else s.default
        out.append(f"| `{s.name}` | {_cell(default) if s.shown_default else _code(_cell(default))} | "
                   f"{_code(s.flag or '')} | {s.read_by} | {_cell(s.help)} |")
    out.append("")

    out += ["## rules.yaml", "", "### Top level", "", "| field | default | meaning |", "|---|---|---|"]
    for name in sorted(TOP_FIELDS, key=list(TOP_FIELD_DOCS).index):
        default, meaning = TOP_FIELD_DOCS[name]
        out.append(f"| `{name}` | `{_cell(default)}` | {_cell(meaning)} |")
    out += ["", "### Rule fields", "",
            "Unknown fields are errors. Fields marked *defaultable* may also be set under `defaults:`.", "",
            "| field | default | defaultable | meaning |", "|---|---|---|---|"]
    rule_defaults = {f.name: f.default for f in dataclasses.fields(Rule)}
    shown = {"cache_when": "status [200] (the shipped defaults add header.responseCode 200-299)",
             "key": "none (a write rule)", "purge": "[]", "name": "(required)", "match": "(required)",
             "error_when": "none (5xx and unreachable only)", "drop_headers": "[]", "volatile": "[]",
             "vary_query": "[]", "max_body_bytes": str(1 << 20), "rollout": "100",
             "purge_when": "success_or_unknown", "compress": "off"}
    for name in sorted(RULE_FIELDS, key=list(RULE_FIELD_DOCS).index):
        default = shown.get(name, rule_defaults.get(name, ""))
        if isinstance(default, bool):
            default = str(default).lower()
        out.append(f"| `{name}` | `{_cell(default)}` | {'yes' if name in DEFAULTABLE else 'no'} | "
                   f"{_cell(RULE_FIELD_DOCS[name])} |")
    out += ["", "### `http_cache`", "", "| field | default | meaning |", "|---|---|---|"]
    for name, meaning in HTTP_CACHE_DOCS.items():
        default = http_fields[name]
        out.append(f"| `{name}` | `{str(default).lower() if isinstance(default, bool) else default}` | {_cell(meaning)} |")
    subst = _rules_yaml_substitutions()
    if subst:
        out += ["", "### Environment variables used by the shipped rules.yaml", "",
                "`${NAME:-default}` in a rules file is replaced at each load (and reload).", "",
                "| variable | default |", "|---|---|"]
        out += [f"| `{name}` | `{default}` |" for name, default in subst]
    return "\n".join(out) + "\n"


def _help_of(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for choice in action._choices_actions:  # noqa: SLF001
                if choice.dest == name:
                    return (choice.help or "").capitalize() + "."
    return ""
