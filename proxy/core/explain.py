"""Why a request would be HIT, MISS, STALE or BYPASS: the pure part of ``explain``.

``explain`` is a pure function over ``policy.classify`` and ``policy.judge``: given the compiled rules, a
method and URL, the caller's identity (or why there is none) and optionally the state of the entry in the
store, it returns a dict naming the matching rule, the decision and its reason, the key (the user id
masked unless ``is_admin``), the TTLs, the guarding namespaces, and, with an entry state, the entry's age,
whether it is fresh, stale, purged or absent and the X-Cache the request would get. ``format_text`` turns
that dict into the lines ``cache-proxy explain`` prints.

Pure: the ``/_cache/*`` endpoints (proxy/serve/endpoints.py) and ``cache-proxy explain`` both call it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict

from . import policy
from .demand import MAX_SHARED_PER_PURGE
from .entry import Entry
from .identity import Identity
from .keys import assemble, escape_value
from .policy import Bypass, Lookup, Reason, RequestView, Write
from .rules import Rules, purge_covers

log = logging.getLogger("proxy")


_REASONS = {
    Reason.NO_RULE: "no rule matches this route: passed through to the backend, never stored",
    Reason.DISABLED: "the rule has enabled: false: passed through to the backend",
    Reason.ROLLOUT: "the request falls outside the rule's rollout percentage",
    Reason.METHOD: "the method is neither a cached read nor a write with purges: passed through",
    Reason.NON_CANONICAL: "the path is not canonical (an empty, '.' or '..' segment, an encoded '/', or a "
                          "trailing slash): passed through, never stored",
    Reason.NO_IDENTITY: "the rule's key needs the verified user id and the request has no bearer token: "
                        "passed through, never stored",
    Reason.INVALID_TOKEN: "the bearer token does not verify",
    Reason.UNKEYED_QUERY: "a query parameter is not part of the key (not in the rule's vary_query), or the "
                          "query does not parse",
    Reason.DUPLICATE_QUERY: "a query parameter is given more than once",
    Reason.MISSING_VALUE: "a placeholder of the key has no value in this request",
    Reason.OVERRIDE_HEADER: "a method/URL override header could make the backend answer another resource",
    Reason.RANGE: "a Range request is passed through",
    Reason.UPGRADE: "a connection upgrade is passed through",
    Reason.PENDING_PURGE: "a purge of a namespace guarding this key has not landed yet: this instance "
                          "bypasses the namespace until it does",
    Reason.STORE_DOWN: "the store is unavailable: requests go to the backend",
}


@dataclass(frozen=True)
class EntryState:
    """What the store holds for a key: the entry (or None) and the current tokens of its guards."""

    entry: Entry | None = None
    tokens: tuple[str | None, ...] = ()
    pending_purge: bool = False  # this instance still owes a purge of one of the guards
    store_error: str | None = None  # the lookup failed


def mask_user(text: str, user_id: str | None) -> str:
    """``text`` with the rendered user id replaced by its last four characters (as the logs show it)."""
    if not user_id:
        return text
    escaped = escape_value(user_id)
    return text.replace("{" + escaped + "}", "{…" + escaped[-4:] + "}" if len(escaped) > 4 else "{…}")


def split_url(url: str) -> tuple[str, str]:
    """(raw path, raw query) of a path or an absolute URL, percent-encoding kept as given."""
    if "://" in url:
        parts = urlsplit(url)
        return parts.path or "/", parts.query
    path, _, query = url.partition("?")
    return path or "/", query


def decide(rules: Rules, method: str, url: str, identity: Identity | None, token_error: str | None = None,
           headers: Mapping[str, str] | None = None) -> policy.Decision:
    raw_path, query = split_url(url)
    view = RequestView(method.upper(), raw_path, query, CIMultiDict(headers or {}))
    return policy.classify(view, rules, identity, token_error)


def explain(rules: Rules, method: str, url: str, identity_or_error: Identity | str | None,
            entry_state: EntryState | None = None, is_admin: bool = False, now: float | None = None, *,
            mode: str = "on", headers: Mapping[str, str] | None = None, unverified: bool = False) -> dict:
    """Explain what the proxy does with ``method url``.

    ``identity_or_error``: the verified ``Identity``, a token error reason (str), or None (no token).
    ``unverified``: the identity was decoded without checking its signature (offline CLI, no secret).
    ``entry_state``: what the store holds for the key; without it the answer says "HIT or MISS".
    """
    now = time.time() if now is None else now
    method = method.upper()
    identity = identity_or_error if isinstance(identity_or_error, Identity) else None
    token_error = identity_or_error if isinstance(identity_or_error, str) else None
    user_id = identity.user_id if identity else None

    def show(text: str) -> str:
        return text if is_admin else mask_user(text, user_id)

    decision = decide(rules, method, url, identity, token_error, headers)
    out: dict[str, Any] = {"method": method, "url": url, "mode": mode}
    if identity is not None:
        out["identity"] = {"user_id": user_id if is_admin else show("{" + escape_value(user_id) + "}")[1:-1],
                           "verified": not unverified}
    else:
        out["identity"] = {"error": token_error or "no-token"}
    rule = decision.rule
    out["rule"] = rule.name if rule else None
    if rule is not None:
        out["match"] = f"{rule.method} {rule.route}"
        out["rule_line"] = f"{rules.source}:{rule.line}"

    if isinstance(decision, Write):
        _write_fields(out, decision, rules, identity, show)
        return out

    if isinstance(decision, Bypass):
        out["decision"] = "bypass"
        out["reason"] = decision.reason.value
        out["x_cache"] = "BYPASS"
        why = _REASONS.get(decision.reason, decision.reason.value)
        if decision.reason == Reason.NO_IDENTITY and rule is not None and not rule.identity_scoped:
            why = "the rule has auth: required (served from cache only to a verified token) and the request " \
                  "has no bearer token: passed through, never stored"
        if decision.reason == Reason.INVALID_TOKEN and token_error:
            why += f" ({token_error}): passed through, never stored"
        if decision.reason == Reason.UNKEYED_QUERY and rule is not None:
            parsed = policy.parse_query(split_url(url)[1])
            extra = sorted(n for n in parsed[0] if n not in rule.vary_query) if parsed else []
            if extra:
                why = (f"query parameter(s) {', '.join(extra)} not in the rule's vary_query "
                       f"{list(rule.vary_query)}: passed through, never stored")
        out["why"] = why
        if rule is not None:
            _rule_fields(out, rule)
        return out

    assert isinstance(decision, Lookup)
    out["decision"] = "lookup"
    out["key"] = show(decision.key)
    out["guards"] = [_guard_text(g, rules, show) for g in decision.gen_keys]
    _rule_fields(out, rule)
    if mode != "on":
        out["x_cache"] = "BYPASS"
        out["reason"] = "shadow" if mode == "shadow" else Reason.MODE_OFF.value
        out["why"] = (f"CACHE_MODE={mode}: " + ("answered by the backend; the cache is filled and compared, "
                                                  "never served" if mode == "shadow" else
                                                  "every read goes to the backend (writes still purge)"))
        if entry_state is None:
            return out
    if entry_state is None:
        out["x_cache"] = "HIT or MISS"
        out["why"] = (f"cacheable: HIT while an unpurged entry under this key is younger than {rule.ttl} s"
                      + (f", STALE for {rule.stale_while_revalidate} s more (refreshed in the background)"
                         if rule.stale_while_revalidate else "")
                      + ", else MISS (fetched, and stored if the answer qualifies)")
        return out
    out["entry"] = _entry_fields(entry_state, decision, rule, now)
    if mode != "on":
        return out
    out.update(_outcome(entry_state, decision, rule, now))
    return out


def _write_fields(out: dict, decision: Write, rules: Rules, identity: Identity | None, show) -> None:
    """A write: which generations it bumps once the backend answers, and when (``purge_when``)."""
    rule = decision.rule
    out["decision"] = "write"
    out["x_cache"] = "BYPASS"
    resolved = policy.resolve_write(decision, None) if decision.needs_body else decision
    when = policy.purge_when(decision, rules)
    if rule is not None:
        out["purge_patterns"] = [t.text + ("" if exact else ":*") for t, exact in zip(rule.purge, rule.purge_exact)]
        out["purges"] = [_guard_text(g, rules, show) for g in resolved.gen_keys]
    else:
        unmatched = rules.unmatched
        out["rule"] = "unmatched" if decision.unmatched else None
        if decision.unmatched:
            out["match"] = "unmatched_writes"
            out["rule_line"] = f"{rules.source}:{unmatched.line}"
        out["purge_patterns"] = [t.text + ("" if exact else ":*")
                                 for t, exact in zip(unmatched.purge, unmatched.purge_exact)]
        out["purges"] = [_guard_text(g, rules, show) for g in decision.unmatched + decision.gen_keys]
    out["purge_when"] = describe_purge_when(when)
    purges = rule if rule is not None else rules.unmatched if decision.unmatched else None
    if purges is not None and identity is not None:  # only a verified writer's purge refetches
        refetched = [r for r in rules.rules if r.is_read and r.refresh_after_purge and purge_covers(purges, r)]
        if refetched:
            out["refetches"] = [{"rule": r.name, "whose_reads": "the writer's" if r.identity_scoped else "anyone",
                                 "demand_window": r.demand_window} for r in refetched]
    after = "once the backend answers, and before the answer is released, unless the backend refused the " \
            "write (purge_when)"
    own_uri = "; RFC 9111 §4.4 also invalidates the cached entry of this URI on a non-error answer" \
        if decision.gen_keys else ""
    if rule is None and decision.unmatched:
        out["why"] = ("no write rule matches: the fail-safe (unmatched_writes) purges the caller's own "
                      f"namespaces {after}{own_uri}")
    elif rule is None:
        reason = ("the request has no verified token, so no one's namespaces can be named"
                  if identity is None and rules.unmatched.purge else "unmatched_writes purges nothing")
        out["why"] = (f"no write rule matches and {reason}: forwarded"
                      + (own_uri.replace(";", ",", 1) if own_uri else ", nothing purged"))
    elif rule.auth == "required" and identity is None:
        out["why"] = "forwarded without purging: the rule needs a verified token (the backend refuses it)"
    else:
        out["why"] = f"forwarded; the rule's purge patterns are applied {after}" + (
            " (placeholders from the JSON body resolve with the request's body)" if decision.needs_body else "")


def _refetch_group(refetches: list[dict]) -> list[str]:
    """``refetches`` in words, rules with the same reach together."""
    groups: dict[tuple[str, int], list[str]] = {}
    for r in refetches:
        groups.setdefault((r["whose_reads"], r["demand_window"]), []).append(r["rule"])
    return [f"{', '.join(names)} (refresh_after_purge: "
            + (f"the pages anyone read in the last {window} s, at most {MAX_SHARED_PER_PURGE} a write)"
               if whose == "anyone" else f"the writer's own reads of the last {window} s)")
            for (whose, window), names in groups.items()]


def describe_purge_when(when) -> str:
    """``purge_when`` in words: what counts as a refusal (no purge)."""
    if not when.refused and when.envelope is None:
        return "always (whatever the backend answers)"
    parts = []
    if when.refused == frozenset(range(400, 500)):
        parts.append("HTTP 4xx")
    elif when.refused:
        parts.append("HTTP " + ", ".join(str(c) for c in sorted(when.refused)))
    if when.envelope is not None:
        parts.append(f"{'.'.join(when.envelope)} 400-499 in a 2xx")
    return "success or unknown outcome; not when refused: " + " or ".join(parts)


def _rule_fields(out: dict, rule) -> None:
    out["ttl"] = rule.ttl
    out["stale_while_revalidate"] = rule.stale_while_revalidate
    out["stale_if_error"] = rule.stale_if_error
    out["auth"] = rule.auth
    out["vary_query"] = list(rule.vary_query)
    out["enabled"] = rule.enabled


def _guard_text(gen_key: str, rules: Rules, show) -> str:
    """``user:{id}:*`` for a namespace's generation, the key itself for an exact key's, ``*`` for the epoch.

    (An exact key and a namespace of the same segments share one generation: the key and its query
    variants.)"""
    if gen_key == policy.epoch_key(rules.prefix):
        return "* (global epoch)"
    namespace = gen_key.removeprefix(f"{rules.prefix}:gen:")
    shape = tuple(None if seg.startswith("{") else seg for seg in namespace.split(":"))
    exact = any(r.key is not None and r.key.shape == shape for r in rules.rules)
    return show(namespace if exact else namespace + ":*")


def _entry_fields(state: EntryState, d: Lookup, rule, now: float) -> dict:
    if state.store_error is not None:
        return {"state": "store-unavailable", "error": state.store_error}
    verdict = policy.judge(state.entry, list(state.tokens), rule, now)
    names = {"fresh": "fresh", "stale": "stale", "on-error": "expired (usable only if the backend fails)"}
    fields: dict[str, Any] = {"state": names.get(verdict.usable, verdict.reason)}
    if state.entry is not None:
        fields.update(age=verdict.age, stored_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.entry.stored_at)),
                      status=state.entry.status, bytes=len(state.entry.body), etag=state.entry.etag)
        if verdict.usable == "fresh":
            fields["ttl_left"] = rule.ttl - verdict.age
    if state.pending_purge:
        fields["pending_purge"] = True
    return fields


def _outcome(state: EntryState, d: Lookup, rule, now: float) -> dict:
    if state.pending_purge:
        return {"x_cache": "BYPASS", "reason": Reason.PENDING_PURGE.value, "why": _REASONS[Reason.PENDING_PURGE]}
    if state.store_error is not None:
        return {"x_cache": "BYPASS", "reason": Reason.STORE_DOWN.value,
                "why": f"{_REASONS[Reason.STORE_DOWN]} ({state.store_error})"}
    verdict = policy.judge(state.entry, list(state.tokens), rule, now)
    if d.revalidate and verdict.usable in ("fresh", "stale"):
        return {"x_cache": "MISS", "why": "the client asked for an origin fetch (no-cache) and the rule's "
                                          "client_cache_control is revalidate"}
    if verdict.usable == "fresh":
        return {"x_cache": "HIT", "why": f"a fresh entry answers it (age {verdict.age} s < ttl {rule.ttl} s)"}
    if verdict.usable == "stale":
        return {"x_cache": "STALE", "why": f"the entry is past its ttl ({verdict.age} s >= {rule.ttl} s) but within "
                                           f"stale_while_revalidate: served while one request refreshes it"}
    reasons = {
        "absent": "no entry under this key: fetched from the backend and stored if the answer qualifies",
        "purged": "a purge bumped a namespace guarding this key since the entry was stored: it is gone, "
                  "never served",
        "rule-changed": "the entry was stored under another key template or other guards (a rules reload "
                        "changed them): never served",
        "expired": f"the entry is older than its ttl ({verdict.age} s >= {rule.ttl} s)",
    }
    why = reasons.get(verdict.reason, verdict.reason)
    if verdict.usable == "on-error":
        why += "; it is still served (STALE) if the backend fails, within stale_if_error"
    return {"x_cache": "MISS", "why": why}


def format_text(result: Mapping[str, Any]) -> str:
    """The readable form ``cache-proxy explain`` prints."""
    lines = [f"{result['method']} {result['url']}"]

    def row(label: str, value: Any) -> None:
        lines.append(f"  {label + ':':<10} {value}")

    identity = result.get("identity", {})
    if "user_id" in identity:
        row("identity", f"user {identity['user_id']} " + ("(verified)" if identity.get("verified") else
                                                         "(NOT verified: no JWT secret configured; the token "
                                                         "was decoded without checking its signature)"))
    else:
        row("identity", "no token" if identity.get("error") == "no-token" else f"invalid token ({identity.get('error')})")
    if result.get("rule"):
        row("rule", f"{result['rule']} ({result.get('match')}, {result.get('rule_line')})")
    else:
        row("rule", "none")
    row("decision", result.get("decision") + (f" ({result['reason']})" if result.get("reason") else ""))
    if "key" in result:
        row("key", result["key"])
        row("guards", ", ".join(result.get("guards", ())))
    if "ttl" in result:
        row("ttl", f"{result['ttl']} s (stale-while-revalidate {result['stale_while_revalidate']} s, "
                   f"stale-if-error {result['stale_if_error']} s)")
    if result.get("purge_patterns") is not None:
        row("purges", ", ".join(result.get("purges") or ()) or "nothing")
        row("patterns", ", ".join(result["purge_patterns"]) or "none")
    if result.get("purge_when"):
        row("when", result["purge_when"])
    if result.get("refetches"):
        row("refetches", "; ".join(_refetch_group(result["refetches"])))
    entry = result.get("entry")
    if entry is not None:
        text = entry["state"]
        if "age" in entry:
            text += f", age {entry['age']} s, stored {entry['stored_at']}, status {entry['status']}, {entry['bytes']} bytes"
        if entry.get("pending_purge"):
            text += ", purge pending on this instance"
        row("entry", text)
    row("X-Cache", result.get("x_cache"))
    row("why", result.get("why", ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ purge patterns


def render_pattern(pattern: str, rules: Rules) -> str | None:
    """A concrete pattern (``user:{42}:*``, ``achievements:global:*``, an exact key) rendered like stored
    keys, or None unless it is a declared namespace followed by ``:*`` or an exact key of a rule."""
    body = pattern[:-2] if pattern.endswith(":*") else pattern
    shape, rendered = [], []
    for seg in body.split(":"):
        if seg.startswith("{") and seg.endswith("}") and len(seg) > 2:
            shape.append(None)
            rendered.append("{" + escape_value(seg[1:-1]) + "}")
        elif seg and "{" not in seg and "}" not in seg and "*" not in seg:
            shape.append(seg)
            rendered.append(seg)
        else:
            return None
    pool = rules.namespaces if pattern.endswith(":*") else tuple(r.key for r in rules.rules if r.key)
    if not any(t.shape == tuple(shape) for t in pool):
        return None
    return assemble(rendered, tuple(shape))  # literal first segments become the hash tag, as in stored keys


def declared_patterns(rules: Rules) -> list[str]:
    return [t.text + ":*" for t in rules.namespaces]


def suggest_pattern(pattern: str, rules: Rules) -> str | None:
    """The pattern to type when ``pattern`` names a declared namespace (or exact key) with its values
    unbraced: ``user:123:*`` -> ``user:{123}:*``. None unless exactly one declared shape fits.

    Unbraced values are not accepted as they are: a segment can be a literal (``achievements:global:*``
    next to ``achievements:{user_id}:*``), so the braces are what tell a value from a name."""
    if render_pattern(pattern, rules) is not None:
        return None  # typed right already
    wildcard = pattern.endswith(":*")
    segments = (pattern[:-2] if wildcard else pattern).split(":")
    pool = rules.namespaces if wildcard else tuple(r.key for r in rules.rules if r.key)
    found = set()
    for template in pool:
        shape = template.shape
        if len(shape) != len(segments):
            continue
        typed = []
        for literal, seg in zip(shape, segments):
            if literal is not None:
                if seg != literal:
                    break
                typed.append(seg)
            elif seg and "*" not in seg and seg.strip("{}") and seg.count("{") <= 1 and seg.count("}") <= 1:
                typed.append("{" + seg.strip("{}") + "}")
            else:
                break
        else:
            found.add(":".join(typed) + (":*" if wildcard else ""))
    found.discard(pattern)
    if len(found) != 1:
        return None
    candidate = found.pop()
    return candidate if render_pattern(candidate, rules) is not None else None


def refusal(pattern: object, rules: Rules) -> str:
    """Why a purge pattern is refused, with the form to type when one declared shape fits."""
    text = (f"{pattern!r} is neither a declared namespace followed by ':*' ({', '.join(declared_patterns(rules))}) "
            f"nor an exact key of a rule")
    hint = suggest_pattern(pattern, rules) if isinstance(pattern, str) else None
    if hint is not None:
        text += f"; values go in braces: did you mean '{hint}'?"
    return text


# ---------------------------------------------------------------------------------- counters


# ---------------------------------------------------------------------------------- endpoints


