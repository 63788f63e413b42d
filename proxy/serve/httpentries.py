"""Where the HTTP cache (httpserve.py) keeps its entries: the key of a target URI and of its Vary
variants, the generations that guard them, the §4.4 invalidation targets, and the lookup.

``prefix:http:{H}`` (H = hash of the canonical target URI: scheme, Host, path and query) holds the
entry, or, for a response with ``Vary``, a *Vary spec* (the field names) whose variants live at
``prefix:http:{H}|v:<hash of the request's selecting values>``. Every HTTP entry is guarded by
``prefix:gen:http:{H}`` and the global epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from ..core import httpcache as hc
from ..core.entry import Entry, decode_entry
from ..core.policy import epoch_key


LABEL = "http_cache"  # the metrics' rule label for requests the HTTP cache handles
FINGERPRINT = "rfc9111"  # Entry.fingerprint of HTTP entries (never a rule's: those are hex digests)
VARY_SPEC = "rfc9111-vary"  # Entry.fingerprint of the record listing a URI's Vary fields
INVALIDATION = "rfc9111-4.4"  # the purge label of §4.4 invalidations


@dataclass(frozen=True)
class Target:
    uri: str
    key: str  # primary key
    gen_keys: tuple[str, str]  # the URI's generation, the epoch


@dataclass
class Found:
    entry: Entry | None
    tokens: list[str | None]
    key: str  # where this request's entry lives (variant key for a varied URI)
    fields: tuple[str, ...] | None  # Vary fields of the spec under the primary key, if one is there
    miss: str = ""  # uri-miss | vary-miss


def target_of(proxy, request: web.Request) -> Target:
    authority = request.headers.get("Host") or proxy.upstream.host_header
    uri = hc.canonical_uri(request.scheme, authority, request.raw_path)
    prefix = proxy.rules.prefix
    return Target(uri, hc.entry_key(prefix, uri), (hc.generation_key(prefix, uri), epoch_key(prefix)))


def invalidation_keys(proxy, request: web.Request, status: int, headers) -> tuple[str, ...]:
    """§4.4: the generations to bump after ``status`` answered the unsafe ``request``."""
    authority = request.headers.get("Host") or proxy.upstream.host_header
    locations = [v for name in ("Location", "Content-Location") for v in headers.getall(name, ())]
    uris = hc.invalidation_uris(request.method, status, request.scheme, authority, request.raw_path, locations,
                                aliases=(proxy.upstream.host_header,))
    return tuple(hc.generation_key(proxy.rules.prefix, u) for u in uris)


def cache_view(proxy, headers) -> CIMultiDict:
    """The headers as this cache reads them for its decisions (RFC 9213 targeted fields, ``cache_view``)."""
    return CIMultiDict(hc.cache_view(CIMultiDict(headers), proxy.rules.http_cache.targeted_fields))


def current(entry: Entry, tokens: list[str | None]) -> bool:
    return None not in tokens and tuple(tokens) == entry.generations


async def lookup(proxy, target: Target, headers) -> Found:
    raw, tokens = await proxy.store.lookup(target.key, target.gen_keys)
    entry = decode_entry(raw)
    if entry is None or not current(entry, tokens) or entry.fingerprint not in (FINGERPRINT, VARY_SPEC):
        return Found(None, tokens, target.key, None, "uri-miss")
    if entry.fingerprint == FINGERPRINT:
        return Found(entry, tokens, target.key, None)
    fields = tuple(f for f in dict(entry.headers).get("Vary", "").split(",") if f)
    key = hc.variant_key(target.key, hc.vary_digest(fields, headers))  # §4.1
    raw, tokens = await proxy.store.lookup(key, target.gen_keys)
    variant = decode_entry(raw)
    if variant is None or variant.fingerprint != FINGERPRINT or not current(variant, tokens):
        return Found(None, tokens, key, fields, "vary-miss")
    return Found(variant, tokens, key, fields)
