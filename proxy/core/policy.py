"""Pure decisions: what to do with a request, whether an entry may answer it, whether to store.

No sockets, no store, no clock: callers pass the request's parts, the verified identity (or the
reason there is none), the compiled rules and ``now``. The request path (``proxy/serve/requestpath.py``) carries the decisions out.

Invariants named where they are enforced:
* a rule whose key needs ``{user_id}`` never yields a lookup without a verified identity (``classify``);
* an entry answers only while every generation it recorded is still current (``judge``): a purged
  entry is gone, not stale, and is never served, not even on backend errors;
* only a response every client with the same key would get is stored (``refuse_to_store``);
* a write the backend refused (HTTP 4xx, envelope 4xx) purges nothing; one that succeeded or whose
  outcome is unknown purges (``purges_after``); an unmatched write purges only a verified caller's
  own namespaces (``unmatched_writes``).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import parse_qsl, unquote

import orjson
from multidict import CIMultiDict

from . import httpcache
from .entry import Entry
from .identity import Identity
from .keys import Source, Template, render_origin_suffix, render_query_suffix
from .rules import WRITE_METHODS, PurgeWhen, Rule, Rules


class Reason(str, Enum):
    """Why a request was not answered from cache; feeds Cache-Status detail, explain and metrics."""

    NO_RULE = "no-rule"
    DISABLED = "rule-disabled"
    MODE_OFF = "cache-off"
    ROLLOUT = "rollout"
    METHOD = "method"
    NON_CANONICAL = "non-canonical-path"
    NO_IDENTITY = "no-token"
    INVALID_TOKEN = "invalid-token"
    UNKEYED_QUERY = "unkeyed-query"
    DUPLICATE_QUERY = "duplicate-query"
    MISSING_VALUE = "missing-key-value"
    OVERRIDE_HEADER = "override-header"
    RANGE = "range"
    UPGRADE = "upgrade"
    PENDING_PURGE = "pending-purge"
    STORE_DOWN = "store-unavailable"
    CONNECTION_KEYED = "connection-names-keyed-field"
    REPEATED_ORIGIN = "repeated-origin"


# Headers that could make a backend answer differently than the key says; such requests bypass.
OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override", "x-original-url",
                    "x-rewrite-url")
# Fields a key or an identity is made of. A request whose Connection names one bypasses: forwarding
# drops Connection-listed fields (hop-by-hop), so its fill would not be the request the key describes.
KEYED_FIELDS = frozenset({"origin", "authorization"})


@dataclass(frozen=True)
class RequestView:
    method: str
    raw_path: str  # percent-encoded, as received, without the query
    query: str  # raw query string
    headers: Mapping[str, str]  # case-insensitive mapping (multidict.CIMultiDict in the server)


@dataclass(frozen=True, slots=True)  # slots: held by the decisions and heads memos by the hundred thousand
class Lookup:
    rule: Rule
    key: str
    gen_keys: tuple[str, ...]  # guarding generations, epoch last
    revalidate: bool = False  # the client asked for an origin fetch and the rule allows it
    origin_field: str | None = None  # the Origin field the key holds, exactly as forwarded (a refresh sends it)
    owner: str | None = None  # the verified user whose entry this is (keys with {user_id}), else None


@dataclass(frozen=True)
class Bypass:
    reason: Reason
    rule: Rule | None = None


@dataclass(frozen=True)
class Write:
    rule: Rule | None  # None: RFC 9111 §4.4 invalidation of an unruled unsafe request's own URI
    gen_keys: tuple[str, ...]  # generations to bump once the backend has answered
    needs_body: bool = False  # purge placeholders read the JSON body: resolve with ``resolve_write``
    context: Any = None
    unmatched: tuple[str, ...] = ()  # no rule matched: the verified caller's ``unmatched_writes`` generations


Decision = Lookup | Bypass | Write


# ----------------------------------------------------------------------------------- paths


def split_path(raw_path: str) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(canonical segments or None, segments after conservative normalisation).

    Canonical means: no empty, ``.`` or ``..`` segment, no encoded ``/`` and no trailing slash; each
    segment percent-decoded, so ``%70rofile`` and ``profile`` are one resource (as the backend sees it).
    The normalised form (dot segments resolved, empty ones dropped) is used only to find purges for
    unsafe requests, never to serve from cache.
    """
    raw_segments = raw_path.split("/")[1:] if raw_path.startswith("/") else raw_path.split("/")
    decoded = [unquote(s, errors="surrogateescape") for s in raw_segments]
    canonical = all(s and s not in (".", "..") and "/" not in s for s in decoded) and bool(decoded)
    normalised: list[str] = []
    for s in decoded:
        if s in ("", "."):
            continue
        if s == "..":
            if normalised:
                normalised.pop()
            continue
        normalised.extend(p for p in s.split("/") if p)
    return (tuple(decoded) if canonical else None), tuple(normalised)


def parse_query(query: str) -> tuple[dict[str, str], set[str]] | None:
    """(params, names given more than once), or None when the query does not parse."""
    if not query:
        return {}, set()
    if "%" in query or "+" in query:  # escapes to decode: urllib's parser
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, errors="strict")
        except (ValueError, UnicodeDecodeError):
            return None
    else:  # what parse_qsl gives (tests/unit/test_policy.py), in a fifth of its time: every read new to the memo
        pairs = [piece.split("=", 1) for piece in query.split("&")]
        if any(len(pair) != 2 for pair in pairs):
            return None
    params: dict[str, str] = {}
    repeated = set()
    for name, value in pairs:
        if name in params:
            repeated.add(name)
        params[name] = value
    return params, repeated


# ------------------------------------------------------------------------------- classify


def classify(req: RequestView, rules: Rules, identity: Identity | None, token_error: str | None = None) -> Decision:
    """What to do with ``req``. ``identity`` is the verified token's user, ``token_error`` why it failed."""
    method = req.method
    if method in ("GET", "HEAD"):
        return _classify_read(req, rules, identity, token_error)
    if method in WRITE_METHODS:
        return _classify_write(req, rules, identity)
    return Bypass(Reason.METHOD)


def _classify_read(req: RequestView, rules: Rules, identity: Identity | None, token_error: str | None) -> Decision:
    headers = req.headers
    origin = headers.get("origin")
    # (token_error,) is a tuple: a user whose id is "expired" must never share a bad token's entry
    memo_key = (req.raw_path, req.query, identity.user_id if identity else (token_error,), origin)
    decision = rules.memo.get(memo_key)
    if decision is None:
        decision = rules.memo.put(memo_key, _classify_path(req, rules, identity, token_error, origin))
    if isinstance(decision, Lookup):
        # Per-request headers are not part of the memo: check them every time.
        if "range" in headers:
            return Bypass(Reason.RANGE, decision.rule)
        if any(h in headers for h in OVERRIDE_HEADERS):
            return Bypass(Reason.OVERRIDE_HEADER, decision.rule)
        if "connection" in headers and connection_names(headers, KEYED_FIELDS):
            return Bypass(Reason.CONNECTION_KEYED, decision.rule)
        if origin is not None and len(_getall(headers, "origin")) > 1:  # which one would the backend echo?
            return Bypass(Reason.REPEATED_ORIGIN, decision.rule)
        if decision.rule.client_cache_control == "revalidate" and _client_wants_origin(decision.rule, headers):
            return replace(decision, revalidate=True)
    return decision


def _classify_path(req: RequestView, rules: Rules, identity: Identity | None, token_error: str | None,
                   origin: str | None) -> Decision:
    """The part of a read's decision that depends only on path, query, identity and Origin."""
    found = _route(req.raw_path, rules)
    if found is None or found is _NON_CANONICAL:
        return Bypass(Reason.NO_RULE if found is None else Reason.NON_CANONICAL)
    rule, params = found
    if not rule.enabled:
        return Bypass(Reason.DISABLED, rule)
    if rule.auth == "required" and identity is None:
        return Bypass(Reason.INVALID_TOKEN if token_error else Reason.NO_IDENTITY, rule)
    parsed = parse_query(req.query)
    if parsed is None:
        return Bypass(Reason.UNKEYED_QUERY, rule)
    query, repeated = parsed
    if any(name not in rule.vary_query for name in query):
        return Bypass(Reason.UNKEYED_QUERY, rule)
    if repeated:
        return Bypass(Reason.DUPLICATE_QUERY, rule)
    rendered = rule.key.render(_values(identity, params, query, None))
    if rendered is None:
        return Bypass(Reason.MISSING_VALUE, rule)
    if rule.rollout < 100 and not in_rollout(identity.user_id if identity else rendered, rule.rollout):
        return Bypass(Reason.ROLLOUT, rule)
    key = f"{rules.prefix}:{rendered}{render_query_suffix(rule.vary_query, query)}"
    key += render_origin_suffix(origin)
    owner = identity.user_id if identity is not None and rule.identity_scoped else None
    return Lookup(rule, key, guard_keys(rules.prefix, rendered, rule.guards), origin_field=origin, owner=owner)


_NON_CANONICAL = object()


def _route(raw_path: str, rules: Rules) -> tuple[Rule, Mapping[str, str]] | object | None:
    """The read rule matching ``raw_path`` and its path parameters, None, or ``_NON_CANONICAL``.

    A pure function of the path and the rules, remembered per path on the rules (bounded): a read of a
    known path with a query never seen before (a new page, a new key) skips splitting and matching.
    """
    found = rules.routes.get(raw_path)
    if found is None and raw_path not in rules.routes:
        canonical, _ = split_path(raw_path)
        found = _NON_CANONICAL if canonical is None else rules.match("GET", canonical)
        if found is not None and found is not _NON_CANONICAL:
            found = (found[0], MappingProxyType(found[1]))  # shared by every later caller: read-only
        rules.routes.put(raw_path, found)
    return found


def in_rollout(subject: str, percent: float) -> bool:
    """A stable arm per user (or per key for public rules): the same answer on every instance."""
    digest = hashlib.blake2b(subject.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < percent * 100


def same_content(cached: bytes, fresh: bytes, volatile: tuple[str, ...]) -> bool:
    """Equal bodies once the rule's volatile JSON fields (``header.requestRefId``...) are removed."""
    if cached == fresh:
        return True
    try:
        a, b = orjson.loads(cached), orjson.loads(fresh)
    except orjson.JSONDecodeError:
        return False
    for path in volatile:
        parts = path.split(".")
        for doc in (a, b):
            for part in parts[:-1]:
                doc = doc.get(part) if isinstance(doc, dict) else None
            if isinstance(doc, dict):
                doc.pop(parts[-1], None)
    return a == b


def guard_keys(prefix: str, rendered: str, guards: tuple[int, ...]) -> tuple[str, ...]:
    """The generation keys of the ``guards`` namespaces (key-segment prefix lengths), epoch last.

    Splitting on ``:`` is safe: escaped values contain none. A key whose first two segments are
    literals renders them as one hash tag (``{achievements:global}:types``, see ``keys.assemble``); its
    first part alone (``{achievements``) is closed again, as a one-segment namespace renders.
    """
    segments = rendered.split(":")
    keys = []
    for n in guards:
        ns = ":".join(segments[:n])
        if n == 1 and ns.startswith("{") and not ns.endswith("}"):
            ns += "}"
        keys.append(f"{prefix}:gen:{ns}")
    return tuple(keys) + (epoch_key(prefix),)


def epoch_key(prefix: str) -> str:
    return f"{prefix}:epoch"


def namespace_gen_key(prefix: str, rendered_namespace: str) -> str:
    return f"{prefix}:gen:{rendered_namespace}"


_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|max-age\s*=\s*0+)\s*(?:,|$)", re.I)


def connection_names(headers: Mapping[str, str], fields: frozenset[str]) -> bool:
    """True when a ``Connection`` field of ``headers`` lists one of ``fields`` (lower-case names)."""
    return any(name.strip().lower() in fields for value in _getall(headers, "connection") for name in value.split(","))


def _client_wants_origin(rule: Rule, headers: Mapping[str, str]) -> bool:
    if rule.client_cache_control != "revalidate":
        return False
    cc = headers.get("cache-control") or ""
    pragma = headers.get("pragma") or ""
    return bool(_NO_CACHE.search(cc)) or "no-cache" in pragma.lower()


def _values(identity: Identity | None, params: Mapping[str, str], query: Mapping[str, str], body: Any):
    def lookup(src: Source) -> str | None:
        if src.kind == "identity":
            return identity.user_id if identity else None
        if src.kind == "path":
            return params.get(src.name)
        if src.kind == "query":
            return query.get(src.name)
        value = body
        for part in src.name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
            return None
        return str(value)

    return lookup


@dataclass(frozen=True)
class _WriteContext:
    templates: tuple[Template, ...]
    identity: Identity | None
    params: Mapping[str, str]
    query: Mapping[str, str]
    prefix: str


def _classify_write(req: RequestView, rules: Rules, identity: Identity | None) -> Decision:
    _, segments = split_path(req.raw_path)  # normalised: a write is purged even on an odd path
    parsed = parse_query(req.query) or ({}, set())
    found = rules.match(req.method, segments)
    if found is not None:
        rule, params = found
        if rule.auth == "required" and identity is None:
            # The backend refuses unauthenticated writes (401); purging on them would let anyone wipe
            # shared namespaces such as achievements:global.
            return Write(rule, ())
        ctx = _WriteContext(rule.purge, identity, params, parsed[0], rules.prefix)
        needs_body = any(src.kind == "body" for t in rule.purge for src in t.sources)
        return resolve_write(Write(rule, (), needs_body, ctx), None) if not needs_body else Write(
            rule, (), True, ctx)
    # No rule: the fail-safe purges the verified caller's own namespaces (never anyone else's: without an
    # identity there is no one to name).
    unmatched: tuple[str, ...] = ()
    if identity is not None and rules.unmatched.purge:
        values = _values(identity, {}, {}, None)
        unmatched = tuple(dict.fromkeys(namespace_gen_key(rules.prefix, t.render(values))
                                        for t in rules.unmatched.purge))
    # RFC 9111 §4.4: an unsafe request invalidates its own URI: the GET rule's entry at this path.
    read = rules.match("GET", segments)
    if read is None:
        return Write(None, (), unmatched=unmatched)
    rule, params = read
    rendered = rule.key.render(_values(identity, params, parsed[0], None))
    if rendered is None:
        return Write(None, (), unmatched=unmatched)
    return Write(None, (namespace_gen_key(rules.prefix, rendered),), unmatched=unmatched)


def resolve_write(write: Write, body: Any) -> Write:
    """Render the purge patterns now that the JSON body (or None) is known; unresolved ones drop out."""
    ctx: _WriteContext = write.context
    values = _values(ctx.identity, ctx.params, ctx.query, body)
    keys = []
    for template in ctx.templates:
        rendered = template.render(values)
        if rendered is not None:
            keys.append(namespace_gen_key(ctx.prefix, rendered))
    return Write(write.rule, tuple(dict.fromkeys(keys)), False, None)


def purge_when(write: Write, rules: Rules) -> PurgeWhen:
    """The ``purge_when`` that judges ``write``'s answer: its rule's, or ``unmatched_writes``'."""
    return write.rule.purge_when if write.rule is not None else rules.unmatched.purge_when


def reads_answer(write: Write, rules: Rules, status: int) -> bool:
    """Whether the answer's body must be read before purging: a 2xx whose envelope may say "refused"."""
    return 200 <= status < 300 and (bool(write.gen_keys) if write.rule else bool(write.unmatched)) \
        and purge_when(write, rules).envelope is not None


def refused(when: PurgeWhen, status: int | None, body: bytes | None) -> bool:
    """The backend refused the write, so it changed nothing (upstream-api.md): an HTTP status in
    ``when.refused``, or a 2xx whose envelope status is 400-499. ``status`` None: no answer; ``body``
    None: not read (too large, streamed, failed): both leave the outcome unknown, which is no refusal."""
    if status is None:
        return False
    if status in when.refused:
        return True
    if not 200 <= status < 300 or when.envelope is None or body is None:
        return False
    try:
        value: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    for part in when.envelope:
        value = value.get(part) if isinstance(value, dict) else None
    return isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 499


def purges_after(write: Write, rules: Rules, status: int | None, body: bytes | None) -> tuple[tuple[str, ...], str]:
    """(generations to bump, metric label) once the backend answered ``status`` (None: no answer) with
    ``body`` (None: not read). A ruled write and an unmatched one purge unless ``refused``; RFC 9111
    §4.4's own-URI invalidation applies to non-error answers only."""
    if write.rule is not None:
        return (() if refused(write.rule.purge_when, status, body) else write.gen_keys), write.rule.name
    own_uri = write.gen_keys if status is not None and status < 400 else ()
    if write.unmatched and not refused(rules.unmatched.purge_when, status, body):
        return tuple(dict.fromkeys(write.unmatched + own_uri)), "unmatched"
    return own_uri, "rfc9111-4.4"


# ------------------------------------------------------------------------------ entries


@dataclass(frozen=True)
class Verdict:
    usable: str  # "fresh", "stale" (serve and refresh), "on-error" (only if the backend fails), "no"
    age: int
    reason: str  # for "no": absent, purged, rule-changed, expired


def judge(entry: Entry | None, tokens: list[str | None], rule: Rule, now: float) -> Verdict:
    if entry is None:
        return Verdict("no", 0, "absent")
    if entry.fingerprint != rule.fingerprint:
        return Verdict("no", 0, "rule-changed")
    if None in tokens or tuple(tokens) != entry.generations:
        return Verdict("no", 0, "purged")
    age = max(0, int(now - entry.stored_at))
    ttl, swr, sie = rule.ttl, rule.stale_while_revalidate, rule.stale_if_error
    if rule.cdn_fields:
        ttl, swr, sie = cdn_bounds(rule, entry.headers)
    if age < ttl:
        return Verdict("fresh", age, "")
    if age < ttl + swr:
        return Verdict("stale", age, "")
    if age < ttl + sie:
        return Verdict("on-error", age, "expired")
    return Verdict("no", age, "expired")


def cdn_bounds(rule: Rule, headers) -> tuple[int, int, int]:
    """``honor_cdn_cache_control``: (ttl, stale_while_revalidate, stale_if_error) as the backend's valid
    targeted field (RFC 9213) narrows the rule's: s-maxage or max-age shortens the ttl, the stale-*
    directives shorten the windows, and must-revalidate / proxy-revalidate / s-maxage / no-cache close
    them. It never lengthens what the rules file says."""
    ttl, swr, sie = rule.ttl, rule.stale_while_revalidate, rule.stale_if_error
    cc = httpcache.targeted_directives(CIMultiDict(headers), rule.cdn_fields)
    if cc is None:
        return ttl, swr, sie
    for name in ("s-maxage", "max-age"):
        if name in cc:
            ttl = min(ttl, httpcache.delta_seconds(cc[name]) or 0)
            break
    if any(d in cc for d in ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache")):
        return ttl, 0, 0
    swr = min(swr, httpcache.delta_seconds(cc.get("stale-while-revalidate")) or 0)
    sie = min(sie, httpcache.delta_seconds(cc.get("stale-if-error")) or 0)
    return ttl, swr, sie


def store_ttl(rule: Rule) -> int:
    """How long the store keeps an entry: its TTL plus the longest stale window."""
    return rule.ttl + max(rule.stale_while_revalidate, rule.stale_if_error)


def generation_ttl(rules: Rules) -> int:
    """How long the store keeps a generation: an hour past the longest-kept entry it may guard."""
    longest = max((store_ttl(r) for r in rules.rules if r.key is not None), default=3600)
    if rules.http_cache.enabled:
        longest = max(longest, rules.http_cache.max_ttl)
    return longest + 3600


_TOKEN_SPLIT = re.compile(r"\s*,\s*")


def cache_control(headers: Mapping[str, str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for value in _getall(headers, "cache-control"):
        for part in _TOKEN_SPLIT.split(value.strip()):
            if not part:
                continue
            name, _, arg = part.partition("=")
            out.setdefault(name.strip().lower(), arg.strip().strip('"') if arg else None)
    return out


def _getall(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [value] if value is not None else []


def refuse_to_store(rule: Rule, status: int, headers: Mapping[str, str], body: bytes) -> str | None:
    """Why this response must not be stored, or None when it may be."""
    if status not in rule.cache_when.statuses:
        return "status"
    if _getall(headers, "set-cookie"):
        return "set-cookie"
    directives = cache_control(headers)
    if rule.cdn_fields:  # RFC 9213, opted in: a valid targeted field replaces Cache-Control here
        targeted = httpcache.targeted_directives(headers, rule.cdn_fields)
        if targeted is not None:
            directives = targeted
            if "no-cache" in directives:
                return "no-cache"  # a rule's entries are never revalidated: each use needs the backend
    if "no-store" in directives:
        return "no-store"
    if "private" in directives and not rule.identity_scoped:
        return "private"
    for value in _getall(headers, "vary"):
        for name in _TOKEN_SPLIT.split(value.strip().lower()):
            # Origin is part of every key (classify); fills ask for identity encoding, so a body
            # stored under Vary: Accept-Encoding suits every client.
            if name and name not in ("origin", "accept-encoding"):
                return "vary"
    encoding = headers.get("content-encoding")
    if encoding and encoding.strip().lower() != "identity":
        return "content-encoding"
    if len(body) > rule.max_body_bytes:
        return "too-large"
    if rule.cache_when.json is not None:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "not-json"
        if not rule.cache_when.json.holds(document):
            return "envelope"
    return None

