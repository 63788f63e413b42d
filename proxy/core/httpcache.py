"""RFC 9111 shared-cache decisions for routes without a rule (``http_cache: {enabled: true}``).

Pure: no sockets, no store, no clock. Callers pass headers (case-insensitive mappings, ``getall`` where a
field may repeat), statuses and times (``now``, ``request_time``, ``response_time``: unix seconds on the
proxy's clock). ``httpserve.py`` carries the decisions out. RFC sections are named where enforced.

Stored form: a response is stored as ``proxy.entry.Entry`` whose headers always carry ``Date`` (added from
``response_time`` when the origin sent none, RFC 9110 §6.6.1) and whose ``stored_at`` is the response's
*birth time* on our clock, ``response_time - corrected_initial_age`` (§4.2.3), so that its current age is
simply ``now - stored_at`` on every instance.
"""
from __future__ import annotations

import calendar
import hashlib
import re
from dataclasses import dataclass
from email.utils import formatdate, parsedate_tz
from typing import Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import http_sf
from multidict import CIMultiDict

DELTA_MAX = 2147483648  # §1.2.2: delta-seconds beyond what we represent
HEURISTIC_FRACTION = 0.1  # §4.2.2: "a typical setting of this fraction might be 10%"
HEURISTIC_CAP = 86400  # longest heuristic lifetime we assign
# §4.2.2 / RFC 9110 §15.1: statuses heuristically cacheable (206 omitted: we never store partial content)
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# §5.2.2.3 must-understand: the statuses whose caching requirements this cache implements
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES | frozenset({302, 303, 307})
# RFC 9110 §9.2.1 (and WebDAV/QUERY): safe methods; any other method is unsafe for §4.4, known or not
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "REPORT", "SEARCH", "QUERY"})
ERROR_STATUSES = frozenset({500, 502, 503, 504})  # RFC 5861 §4: what counts as an error
# Never stored or replayed: hop-by-hop (RFC 9110 §7.6.1, stripped on receipt), what the proxy computes
# per answer, and Set-Cookie (a response carrying it is not stored at all, see ``refuse_to_store``).
NOT_STORED = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization", "content-length", "age",
                        "x-cache", "cache-status", "x-request-id", "set-cookie"})
# §3.2: fields a 304 does not update (Content-Length is the body's; Age is folded into the birth time)
NOT_UPDATED = NOT_STORED


# ------------------------------------------------------------------------------- parsing


def _values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [value] if value is not None else []


def parse_directives(values: Iterable[str]) -> dict[str, str | None]:
    """Cache-Control (§5.2) lines -> {directive: argument or None}. Names are case-insensitive; quoted
    arguments are unquoted (a comma inside quotes does not split); the first occurrence of a directive
    wins (§4.2.1); unknown directives are kept and ignored by the callers (§5.2.3); a directive with
    whitespace around its "=" does not follow the grammar and is dropped (``max-age =60``)."""
    out: dict[str, str | None] = {}
    for value in values:
        i, n = 0, len(value)
        while i < n:
            while i < n and value[i] in " \t,":
                i += 1
            start = i
            while i < n and value[i] not in "=, \t":
                i += 1
            name = value[start:i].lower()
            spaced = i < n and value[i] in " \t"
            while i < n and value[i] in " \t":
                i += 1
            arg: str | None = None
            if i < n and value[i] == "=":
                i += 1
                if spaced or (i < n and value[i] in " \t"):
                    name = ""  # token "=" value has no whitespace around "=" (§5.2): not a directive
                if i < n and value[i] == '"':
                    i += 1
                    chars = []
                    while i < n and value[i] != '"':
                        if value[i] == "\\" and i + 1 < n:
                            i += 1
                        chars.append(value[i])
                        i += 1
                    i += 1
                    arg = "".join(chars)
                else:
                    start = i
                    while i < n and value[i] not in ", \t":
                        i += 1
                    arg = value[start:i]
            while i < n and value[i] != ",":  # junk after a directive: skip to the next one
                i += 1
            if name and name not in out:
                out[name] = arg
    return out


def cache_control(headers: Mapping[str, str]) -> dict[str, str | None]:
    return parse_directives(_values(headers, "cache-control"))


def delta_seconds(arg: str | None) -> int | None:
    """§1.2.2: a non-negative integer, capped at DELTA_MAX; None when absent or invalid."""
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    return min(int(arg), DELTA_MAX) if len(arg) <= _DELTA_DIGITS else DELTA_MAX  # int() refuses 4300+ digits


_DELTA_DIGITS = len(str(DELTA_MAX))


_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"\d{2}:\d{2}:\d{2}"
_HTTP_DATE = re.compile(  # RFC 9110 §5.6.7 formats, matched in any case (RFC 9111 §4.2 asks caches to)
    rf"^(?:{_DAY}, \d{{2}} {_MONTH} \d{{4}} {_TIME} GMT"
    rf"|(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), \d{{2}}-{_MONTH}-\d{{2}} {_TIME} GMT"
    rf"|{_DAY} {_MONTH} (?: \d|\d{{2}}) {_TIME} \d{{4}})$", re.IGNORECASE | re.ASCII)


def parse_http_date(value: str | None) -> float | None:
    """RFC 9110 §5.6.7: IMF-fixdate, RFC 850 or asctime, always UTC; None when invalid."""
    if not value or not _HTTP_DATE.match(value.strip()):
        return None
    parsed = parsedate_tz(value)
    if parsed is None:
        return None
    return float(calendar.timegm(parsed[:9]))  # the zone is GMT by definition (§5.6.7)


def format_http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def field_names(arg: str | None) -> tuple[str, ...]:
    """The field names of a qualified ``no-cache="a, b"`` / ``private="a"`` (lowercased)."""
    if not arg:
        return ()
    return tuple(n.strip().lower() for n in arg.split(",") if n.strip())


def _first_date(headers: Mapping[str, str], name: str) -> tuple[bool, float | None]:
    values = _values(headers, name)
    if not values:
        return False, None
    return True, parse_http_date(values[0])


# ----------------------------------------------------------------------------- freshness


def freshness_lifetime(status: int, headers: Mapping[str, str], heuristic: bool) -> float:
    """§4.2.1: s-maxage (shared caches), else max-age, else Expires - Date; an invalid value makes the
    response stale (§4.2.1, §5.3: invalid Expires such as "0" is in the past). Only without any of them
    a heuristic (§4.2.2), if ``heuristic`` is on, for heuristically cacheable statuses or ``public``:
    10% of Date - Last-Modified, at most HEURISTIC_CAP."""
    cc = cache_control(headers)
    for name in ("s-maxage", "max-age"):
        if name in cc:
            value = delta_seconds(cc[name])
            return float(value) if value is not None else 0.0
    has_expires, expires = _first_date(headers, "expires")
    _, date = _first_date(headers, "date")
    if has_expires:
        if expires is None or date is None:
            return 0.0
        return max(0.0, expires - date)
    if not heuristic or (status not in HEURISTIC_STATUSES and "public" not in cc):
        return 0.0
    _, last_modified = _first_date(headers, "last-modified")
    if last_modified is None or date is None or last_modified >= date:
        return 0.0
    return min(HEURISTIC_CAP, HEURISTIC_FRACTION * (date - last_modified))


def has_explicit_freshness(headers: Mapping[str, str]) -> bool:
    cc = cache_control(headers)
    return "s-maxage" in cc or "max-age" in cc or bool(_values(headers, "expires"))


def age_value_of(headers: Mapping[str, str]) -> int | None:
    """§5.1 ``Age`` as received, read as the HTTP caching conformance suite requires (cache-tests'
    age-parse cases): the first member of the first field line counts, so ``Age: 7200, 0`` (or the lines
    ``7200`` then ``0``) is 7200 and ``0, 7200`` is 0; parameters after it (``7200;foo=bar``) are dropped.
    Empty members do not count (RFC 9110 §5.6.1). A first member that is not a delta-seconds (``abc``,
    ``-1``, ``1.5``) is ignored, as is a missing Age: None (§4.2.3 then reads age_value as 0)."""
    member = next((m for v in _values(headers, "age") for m in v.split(",") if m.strip()), None)
    if member is None:
        return None
    first = _AGE_MEMBER.match(member)
    return delta_seconds(first.group(1)) if first else None


_AGE_MEMBER = re.compile(r"[ \t]*([0-9]+)[ \t]*(?:;|$)")


def corrected_initial_age(headers: Mapping[str, str], request_time: float, response_time: float) -> float:
    """§4.2.3: max(apparent_age, corrected_age_value) from Date, Age, request and response times."""
    _, date = _first_date(headers, "date")
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    age_value = age_value_of(headers)
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = (age_value or 0) + response_delay
    return min(float(DELTA_MAX), max(apparent_age, corrected_age_value))


def age_header(age: float) -> str:
    """§5.1: whole seconds, never above DELTA_MAX."""
    return str(min(DELTA_MAX, max(0, int(age))))


# ------------------------------------------------------------------ RFC 9213 targeted fields

TARGETED_DEFAULT = ("CDN-Cache-Control",)
_DELTA_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})


def targeted_directives(headers: Mapping[str, str], fields: Iterable[str]) -> dict[str, str | None] | None:
    """RFC 9213 §2.2: the directives of the first field of ``fields`` (the target list, most specific
    first) whose value is a valid, non-empty Structured Fields Dictionary (RFC 8941 §3.2), in the shape
    ``parse_directives`` gives; None when there is none (Cache-Control and Expires then apply). A field
    whose delta-seconds directive (``max-age``, ``s-maxage``, ``stale-*``) is not an Integer
    (``max-age="60"``, ``1.5``, no value) is invalid as a whole (cache-tests' cdn-cc-invalid-sh-type-wrong).
    Another member whose value is not an Integer, String or Token keeps an argument no directive accepts;
    ``?0`` (false) leaves the directive out."""
    for name in fields:
        values = _values(headers, name)
        if not values:
            continue
        try:
            parsed = http_sf.parse(", ".join(values).encode("latin-1"), tltype="dictionary")
        except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError):
            continue  # §2.2: an invalid field is ignored
        if not parsed or any(type(parsed[d][0]) is not int for d in _DELTA_DIRECTIVES.intersection(parsed)):
            continue
        out: dict[str, str | None] = {}
        for key, (value, _params) in parsed.items():
            if value is True:
                out[key] = None
            elif value is False:
                continue
            elif isinstance(value, int):
                out[key] = str(value)
            elif isinstance(value, str):  # String and Token (a str subclass)
                out[key] = str(value)
            else:
                out[key] = "invalid"
        return out
    return None


def cache_view(headers: Mapping[str, str], fields: Iterable[str]) -> Mapping[str, str]:
    """The response's headers as this cache reads them for its own decisions: with a valid targeted
    field (RFC 9213 §2.2), its directives in place of Cache-Control, and Expires ignored; else the
    headers themselves. What is stored and sent on stays the origin's fields, the targeted one included."""
    directives = targeted_directives(headers, fields) if fields else None
    if directives is None:
        return headers
    view = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in ("cache-control", "expires"))
    rendered = [name if arg is None else f'{name}="{arg}"' if not _TOKEN.match(arg) else f"{name}={arg}"
                for name, arg in directives.items()]
    if rendered:
        view["Cache-Control"] = ", ".join(rendered)
    return view


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


# ------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class RequestDirectives:
    """§5.2.1 (and RFC 5861 §4 stale-if-error); Pragma: no-cache only without Cache-Control (§5.4)."""

    no_cache: bool = False
    no_store: bool = False
    max_age: int | None = None
    max_stale: int | None = None  # DELTA_MAX for a bare max-stale: any staleness
    min_fresh: int | None = None
    only_if_cached: bool = False
    stale_if_error: int | None = None


def request_directives(headers: Mapping[str, str]) -> RequestDirectives:
    values = _values(headers, "cache-control")
    cc = parse_directives(values)
    no_cache = "no-cache" in cc
    if not values:
        no_cache = any("no-cache" in parse_directives([p]) for p in _values(headers, "pragma"))
    max_stale = None
    if "max-stale" in cc:
        max_stale = DELTA_MAX if cc["max-stale"] is None else delta_seconds(cc["max-stale"])
    return RequestDirectives(
        no_cache=no_cache,
        no_store="no-store" in cc,
        max_age=delta_seconds(cc.get("max-age")),
        max_stale=max_stale,
        min_fresh=delta_seconds(cc.get("min-fresh")),
        only_if_cached="only-if-cached" in cc,
        stale_if_error=delta_seconds(cc.get("stale-if-error")),
    )


# ------------------------------------------------------------------------------ storing


def refuse_to_store(method: str, status: int, request_headers: Mapping[str, str],
                    headers: Mapping[str, str], heuristic: bool) -> str | None:
    """§3 for a shared cache: why this response must not be stored, or None when it may be."""
    if method != "GET":
        return "method"  # HEAD answers are never stored; GET entries answer HEAD
    if status < 200 or status in (206, 304):
        return "status"  # final statuses only; partial content and 304 are not stored as such
    cc = cache_control(headers)
    if "must-understand" in cc:  # §5.2.2.3: overrides no-store for statuses we understand
        if status not in UNDERSTOOD_STATUSES:
            return "must-understand"
    elif "no-store" in cc:
        return "no-store"  # §5.2.2.5
    if request_directives(request_headers).no_store:
        return "no-store-request"  # §5.2.1.5
    if "private" in cc and not field_names(cc["private"]):
        return "private"  # §5.2.2.7: a shared cache never stores it
    if _values(request_headers, "authorization") and not (
            "public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return "authorization"  # §3.5
    if _values(headers, "set-cookie"):
        return "set-cookie"  # §3 allows storing it; replaying another client's cookie never is wanted
    fields = vary_fields(headers)
    if fields is None:
        return "vary-star"  # §4.1: Vary: * never matches, storing it is useless
    explicit = has_explicit_freshness(headers)
    if not (explicit or "public" in cc or (status in HEURISTIC_STATUSES and (heuristic or "no-cache" in cc))):
        return "no-freshness"  # §3: nothing says it may be stored (heuristics off: nothing at all)
    return None


def has_validator(headers: Mapping[str, str]) -> bool:
    return bool(_values(headers, "etag") or _values(headers, "last-modified"))


def stored_headers(headers: Mapping[str, str], response_time: float,
                   policy: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """The fields kept with an entry: §3.1 (minus hop-by-hop and per-answer ones), minus the field names
    of a qualified no-cache (§5.2.2.4: not sent without revalidation, so simply not kept) or private
    (§5.2.2.7: a shared cache must not store them); Date added when missing (RFC 9110 §6.6.1).
    ``policy``: the headers the directives are read from (``cache_view``), when not ``headers``."""
    cc = cache_control(headers if policy is None else policy)
    dropped = set(NOT_STORED) | set(field_names(cc.get("no-cache"))) | set(field_names(cc.get("private")))
    connection = {t.strip().lower() for v in _values(headers, "connection") for t in v.split(",")}
    kept = [(k, v) for k, v in headers.items() if k.lower() not in dropped and k.lower() not in connection]
    if not any(k.lower() == "date" for k, _ in kept) or parse_http_date(_get(kept, "date")) is None:
        kept = [(k, v) for k, v in kept if k.lower() != "date"] + [("Date", format_http_date(response_time))]
    return tuple(kept)


def _get(pairs: Iterable[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in pairs if k.lower() == name), None)


def store_seconds(headers: Mapping[str, str], status: int, age: float, heuristic: bool, max_ttl: int,
                  revalidate_grace: int = 3600) -> int:
    """How long the store keeps an entry (0: not worth storing): its remaining freshness plus the stale
    windows it allows, plus ``revalidate_grace`` when it has a validator (a 304 can renew it); at most
    ``max_ttl``. Eviction earlier than that is always allowed to a cache."""
    cc = cache_control(headers)
    remaining = max(0.0, freshness_lifetime(status, headers, heuristic) - age)
    windows = max(delta_seconds(cc.get("stale-while-revalidate")) or 0, delta_seconds(cc.get("stale-if-error")) or 0)
    if has_validator(headers):
        windows = max(windows, revalidate_grace)
    total = remaining + windows
    return int(min(max_ttl, total)) if total >= 1 else 0


# ------------------------------------------------------------------------------ reusing


@dataclass(frozen=True)
class Reuse:
    """What to do with a stored response for this request (§4, §4.2.4, RFC 5861)."""

    action: str  # "fresh", "stale" (may be served as is), "swr" (serve, revalidate behind), "validate"
    age: float
    lifetime: float
    reason: str = ""  # for "validate": "no-cache" (the response's), "request" (the client's), "stale"
    stale_if_error: bool = False  # if validation fails with an error, the stored response may answer
    no_stale: bool = False  # must-revalidate & co.: once stale, never served without validation

    @property
    def ttl(self) -> int:
        return int(self.lifetime - self.age)


def evaluate(status: int, headers: Mapping[str, str], stored_at: float, now: float, req: RequestDirectives,
             heuristic: bool) -> Reuse:
    cc = cache_control(headers)
    age = max(0.0, now - stored_at)  # §4.2.3 current_age (stored_at is the birth time, see module doc)
    lifetime = freshness_lifetime(status, headers, heuristic)
    staleness = age - lifetime
    # §4.2.4: no stale answers when must-revalidate (§5.2.2.2), proxy-revalidate (§5.2.2.8), s-maxage
    # (§5.2.2.10) or no-cache (§5.2.2.4) forbid it; "the most restrictive directive" wins over RFC 5861.
    no_stale = any(d in cc for d in ("must-revalidate", "proxy-revalidate", "s-maxage")) or (
        "no-cache" in cc and not field_names(cc["no-cache"]))
    sie = max(delta_seconds(cc.get("stale-if-error")) or 0, req.stale_if_error or 0)
    on_error = not no_stale and staleness <= sie
    if "no-cache" in cc and not field_names(cc["no-cache"]):
        return Reuse("validate", age, lifetime, "no-cache", on_error, no_stale)  # §5.2.2.4: always validate
    # The client asked for validation: what the cache holds answers it only once validated, never on error.
    if req.no_cache or req.max_age == 0 or (req.max_age is not None and age > req.max_age):
        return Reuse("validate", age, lifetime, "request", False, no_stale)  # §5.2.1.4, §5.2.1.1
    if staleness < 0:
        if req.min_fresh is not None and lifetime - age < req.min_fresh:
            return Reuse("validate", age, lifetime, "request", False, no_stale)  # §5.2.1.3
        return Reuse("fresh", age, lifetime)
    if not no_stale:
        if req.max_stale is not None and staleness <= req.max_stale:
            return Reuse("stale", age, lifetime)  # §5.2.1.2: the client accepts it
        swr = delta_seconds(cc.get("stale-while-revalidate"))
        if swr is not None and staleness <= swr:
            return Reuse("swr", age, lifetime)  # RFC 5861 §3
    return Reuse("validate", age, lifetime, "stale", on_error, no_stale)


# --------------------------------------------------------------------------- validation


def conditional_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """§4.3.1: If-None-Match from the stored ETag, If-Modified-Since from its Last-Modified."""
    out = {}
    etags = _values(headers, "etag")
    if etags:
        out["If-None-Match"] = etags[0]
    modified = _values(headers, "last-modified")
    if modified:
        out["If-Modified-Since"] = modified[0]
    return out


def _opaque(tag: str) -> tuple[bool, str]:
    tag = tag.strip()
    return tag.startswith("W/"), tag.removeprefix("W/")


def selects(stored: Mapping[str, str], fresh: Mapping[str, str]) -> bool:
    """§4.3.4: does a 304 with headers ``fresh`` identify the stored response for update? A strong ETag
    must equal the stored one; a weak one must match weakly; else Last-Modified must agree if both
    have one; a 304 without validators selects our only stored response."""
    new_etags, old_etags = _values(fresh, "etag"), _values(stored, "etag")
    if new_etags:
        if not old_etags:
            return False
        weak_new, new = _opaque(new_etags[0])
        weak_old, old = _opaque(old_etags[0])
        return new == old and (weak_new or not weak_old)
    new_lm, old_lm = _values(fresh, "last-modified"), _values(stored, "last-modified")
    if new_lm and old_lm:
        return parse_http_date(new_lm[0]) == parse_http_date(old_lm[0])
    return True


def updated_headers(stored: Iterable[tuple[str, str]], fresh: Mapping[str, str],
                    response_time: float) -> tuple[tuple[str, str], ...]:
    """§4.3.4 / §3.2: every field of the 304 replaces all stored instances of that field, except
    Content-Length and the fields never stored; Date is the 304's, or its arrival time."""
    fresh_pairs = [(k, v) for k, v in fresh.items() if k.lower() not in NOT_UPDATED]
    replaced = {k.lower() for k, _ in fresh_pairs}
    if "date" not in replaced or parse_http_date(_get(fresh_pairs, "date")) is None:
        fresh_pairs = [(k, v) for k, v in fresh_pairs if k.lower() != "date"]
        fresh_pairs.append(("Date", format_http_date(response_time)))
        replaced.add("date")
    merged = [(k, v) for k, v in stored if k.lower() not in replaced] + fresh_pairs
    cc = parse_directives([v for k, v in merged if k.lower() == "cache-control"])
    dropped = set(field_names(cc.get("no-cache"))) | set(field_names(cc.get("private")))
    return tuple((k, v) for k, v in merged if k.lower() not in dropped)


# RFC 9110 §15.4.5: the fields a 304 carries when the 200 would have (and no other representation
# metadata, except Last-Modified when there is no ETag: it helps the client update its cache).
NOT_MODIFIED_FIELDS = frozenset({"content-location", "date", "etag", "vary", "cache-control", "expires"})


def not_modified_fields(headers: Iterable[tuple[str, str]], also: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The fields of a 200 (``headers``) that its 304 keeps, compared case-insensitively (an origin may
    write ``Etag``); ``also``: lowercased names the caller adds (its own per-answer fields)."""
    pairs = list(headers)
    keep = set(NOT_MODIFIED_FIELDS) | {n.lower() for n in also}
    if not any(k.lower() == "etag" for k, _ in pairs):
        keep.add("last-modified")
    return [(k, v) for k, v in pairs if k.lower() in keep]


# --------------------------------------------------------------------------------- Vary


def vary_fields(headers: Mapping[str, str]) -> tuple[str, ...] | None:
    """§4.1: the lowercased, sorted field names a response varies on; None for ``*`` (never matches)."""
    names = set()
    for value in _values(headers, "vary"):
        for name in value.split(","):
            name = name.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


_LIST_SPACE = re.compile(r"[ \t]*,[ \t]*")
_SPACE = re.compile(r"[ \t]+")


def vary_digest(fields: tuple[str, ...], request_headers: Mapping[str, str]) -> str:
    """§4.1: the selecting header values of a request, normalised (lines combined, whitespace around
    commas and runs of spaces removed; an absent field differs from an empty one), hashed."""
    parts = []
    for name in fields:
        values = _values(request_headers, name)
        if not values:
            parts.append(f"{name}\x00")
        else:
            joined = _SPACE.sub(" ", _LIST_SPACE.sub(",", ",".join(v.strip() for v in values)))
            parts.append(f"{name}\x01{joined}")
    return hashlib.blake2b("\x02".join(parts).encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


# --------------------------------------------------------------------------- URIs, keys


_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _pct(match: re.Match) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def normalise_authority(authority: str, scheme: str) -> str:
    """Lowercase host, default port removed (RFC 9110 §4.2.3)."""
    authority = authority.strip().lower().rpartition("@")[2]
    host, sep, port = authority.rpartition(":")
    if sep and "]" not in port and port.isdigit():
        if port == _DEFAULT_PORTS.get(scheme):
            return host
        return f"{host}:{int(port)}"
    return authority.rstrip(":")


def canonical_uri(scheme: str, authority: str, path_qs: str) -> str:
    """The cache key's URI (§4, RFC 9110 §4.2.3): scheme and host lowercased, default port dropped,
    percent-encodings of unreserved characters decoded and the others uppercased. Nothing else is
    rewritten (no dot-segment removal): the backend receives exactly ``path_qs``."""
    scheme = scheme.lower()
    path_qs = path_qs.partition("#")[0] or "/"
    return f"{scheme}://{normalise_authority(authority, scheme)}{_PCT.sub(_pct, path_qs)}"


def uri_hash(uri: str) -> str:
    return hashlib.blake2b(uri.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def entry_key(prefix: str, uri: str) -> str:
    """The primary key: the entry, or the Vary spec of its variants. ``{...}`` is the Cluster hash tag
    shared with its generation and variants."""
    return f"{prefix}:http:{{{uri_hash(uri)}}}"


def variant_key(primary: str, digest: str) -> str:
    return f"{primary}|v:{digest}"


def generation_key(prefix: str, uri: str) -> str:
    """One generation per URI: a §4.4 invalidation is one bump covering every variant."""
    return f"{prefix}:gen:http:{{{uri_hash(uri)}}}"


def invalidation_uris(method: str, status: int, scheme: str, authority: str, path_qs: str,
                      locations: Iterable[str], aliases: Iterable[str] = ()) -> list[str]:
    """§4.4: after a non-error (2xx/3xx) answer to an unsafe method (any method not known to be safe),
    the target URI, and the URIs in Location and Content-Location when they are same-origin (same
    scheme, host and port as the target, or as one of ``aliases``: authorities the proxy forwards to
    the same backend). Relative references are resolved against the target URI."""
    if method.upper() in SAFE_METHODS or not 200 <= status < 400:
        return []
    target = canonical_uri(scheme, authority, path_qs)
    uris = [target]
    own = normalise_authority(authority, scheme)
    same = {own} | {normalise_authority(a, scheme) for a in aliases if a}
    for location in locations:
        try:
            resolved = urlsplit(urljoin(target, location.strip()))
        except ValueError:
            continue
        if resolved.scheme.lower() != scheme.lower() or normalise_authority(resolved.netloc, scheme) not in same:
            continue
        path_qs2 = (resolved.path or "/") + (f"?{resolved.query}" if resolved.query else "")
        uri = canonical_uri(scheme, own, path_qs2)
        if uri not in uris:
            uris.append(uri)
    return uris
