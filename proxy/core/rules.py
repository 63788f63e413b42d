"""The compiled rules: frozen objects a request's policy reads (``Rules``, ``Rule``, their conditions).

A read rule (GET) has a ``key``; a write rule (POST/PUT/PATCH/DELETE) has ``purge`` patterns and a
``purge_when`` (``PurgeWhen``: which answers count as a refusal that purges nothing). The top-level
``unmatched_writes`` (``UnmatchedWrites``) names what a verified user's write that no rule matches
purges: only the writer's own namespaces ({user_id} patterns). Each read
rule knows, at load time, which namespaces guard its entries (``guards``): its own exact key, every
declared namespace that covers it, and the global epoch. Its ``fingerprint`` hashes the key template, the
guards and the entry format, so a reload that changes any of them never serves old entries.
Reading and checking rules.yaml into these is ``rulesfile.py``'s job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .keys import Template, TemplateError, parse_template
from .memo import SizedMemo

# Shares of the memo budget (memo.set_budget) for the read decisions and the routes by raw path that
# each Rules object remembers, and what one of each holds (measured with tracemalloc: a Lookup with its
# key strings; a rule and its parameters).
DECISIONS_SHARE, ROUTES_SHARE = 0.12, 0.08


def _decision_size(key: tuple, decision: object) -> int:
    return 640 + len(key[0]) + len(key[1])


def _route_size(raw_path: str, route: object) -> int:
    return 256 + len(raw_path)


FORMAT_VERSION = 1
READ_METHODS = frozenset({"GET"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Namespaces the manual invalidation endpoints purge (conventions.md); declared when some key needs them.
MANUAL_NAMESPACES = ("user:{user_id}", "achievements:{user_id}", "achievements:global")
CLIENT_CACHE_CONTROL = ("ignore", "revalidate")


# --------------------------------------------------------------------------- compiled objects


@dataclass(frozen=True)
class JsonCondition:
    path: tuple[str, ...]
    between: tuple[int, int] | None = None
    one_of: tuple[Any, ...] | None = None

    def holds(self, document: Any) -> bool:
        value = document
        for part in self.path:
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
        if self.between is not None:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and (
                self.between[0] <= value <= self.between[1]
            )
        return self.one_of is not None and value in self.one_of


@dataclass(frozen=True)
class CacheWhen:
    statuses: frozenset[int]
    json: JsonCondition | None = None


@dataclass(frozen=True)
class PurgeWhen:
    """When a write's purges are applied (``purge_when``): unless the backend refused the write.

    Refused: an HTTP status in ``refused`` (default: every 4xx), or a 2xx answer whose JSON integer at
    ``envelope`` (default ``header.responseCode``) is 400-499. Anything else purges: success, a
    redirect, an HTTP 5xx, an envelope 5xx, no answer (timeout, connection lost), an answer whose
    envelope could not be read: the write may have committed.
    """

    refused: frozenset[int] = frozenset(range(400, 500))
    envelope: tuple[str, ...] | None = ("header", "responseCode")


PURGE_ALWAYS = PurgeWhen(frozenset(), None)
PURGE_WHEN_CHOICES = ("success_or_unknown", "always")


@dataclass(frozen=True)
class UnmatchedWrites:
    """``unmatched_writes:``: what an unsafe request no write rule matches purges, for a verified caller."""

    purge: tuple[Template, ...] = ()
    purge_exact: tuple[bool, ...] = ()  # parallel to purge, as on Rule
    purge_when: PurgeWhen = PurgeWhen()
    line: int = 0  # where it is declared (0: absent, nothing is purged)


@dataclass(frozen=True)
class Rule:
    name: str
    line: int
    method: str
    route: str
    route_segments: tuple[str | None, ...]  # literal, or None for a {param}
    params: tuple[str, ...]  # names of the {param} segments, in order
    key: Template | None = None
    ttl: int = 3600
    vary_query: tuple[str, ...] = ()
    auth: str = "required"
    cache_when: CacheWhen = CacheWhen(frozenset({200}))
    purge: tuple[Template, ...] = ()
    purge_exact: tuple[bool, ...] = ()  # parallel to purge: True for an exact key, False for ``ns:*``
    stale_while_revalidate: int = 0
    stale_if_error: int = 0
    warm: bool = False
    enabled: bool = True
    drop_headers: frozenset[str] = frozenset()
    volatile: tuple[str, ...] = ()
    rollout: float = 100.0
    repurge_after: int = 0
    client_cache_control: str = "ignore"
    max_body_bytes: int = 1 << 20
    error_when: CacheWhen | None = None  # backend answers that count as failures for stale_if_error
    l1_ttl: int = 0  # seconds an entry may be answered from the in-process L1 (0: off); see l1.py
    purge_when: PurgeWhen = PurgeWhen()  # write rules: which answers purge (see PurgeWhen)
    honor_cdn_cache_control: bool = False  # RFC 9213: the backend's targeted field may shorten ttl, forbid storing
    cdn_fields: tuple[str, ...] = ()  # the target list (http_cache.targeted_fields) when honoured
    compress_from: int = 0  # bodies of at least this many bytes are stored zstd-compressed (0: never); entry.py
    refresh_after_purge: bool = False  # a write by the entry's owner that purges it refetches it (demand.py)
    demand_window: int = 600  # seconds a read counts as recent for refresh_after_purge
    guards: tuple[int, ...] = ()  # key-segment prefix lengths whose generations guard an entry
    fingerprint: str = ""

    @property
    def is_read(self) -> bool:
        return self.method in READ_METHODS

    @property
    def identity_scoped(self) -> bool:
        return self.key is not None and self.key.needs_identity


@dataclass(frozen=True)
class HttpCacheConfig:
    """``http_cache:``: the RFC 9111 shared cache for routes no rule matches (proxy/serve/httpserve.py)."""

    enabled: bool = False
    max_bytes: int = 64 << 20  # memory store: bytes of HTTP entries (their own LRU within the total)
    heuristic: bool = False  # §4.2.2 heuristic freshness (10% of Date - Last-Modified); off: not stored
    max_body_bytes: int = 1 << 20  # larger responses are streamed, not stored
    max_ttl: int = 86400  # longest an HTTP entry is kept in the store, stale windows included
    # RFC 9213 target list, most specific first: the first valid one replaces Cache-Control (and Expires)
    targeted_fields: tuple[str, ...] = ("CDN-Cache-Control",)


@dataclass(frozen=True)
class AuditConfig:
    """``audit:``: the staleness auditor (proxy/serve/auditor.py). ``sample``: the share of cache hits fetched
    again from the backend and compared (0: off; env ``CACHE_AUDIT_SAMPLE`` wins over the file);
    ``max_per_second``: the most audit fetches one instance sends per second (a token bucket)."""

    sample: float = 0.01
    max_per_second: float = 5.0


def purge_covers(purges: "Rule | UnmatchedWrites", read: Rule) -> bool:
    """``purges`` (a write rule, or ``unmatched_writes``) empties ``read``'s entries: one of its patterns is
    ``read``'s key (an exact purge) or a namespace of it. Compared by shape, placeholders unresolved."""
    return read.key is not None and any(t.shape == read.key.shape if exact else t.covers(read.key)
                                        for t, exact in zip(purges.purge, purges.purge_exact))


@dataclass(frozen=True)
class Rules:
    source: str
    prefix: str
    rules: tuple[Rule, ...]
    namespaces: tuple[Template, ...]
    http_cache: HttpCacheConfig = HttpCacheConfig()
    unmatched: UnmatchedWrites = UnmatchedWrites()
    audit: AuditConfig = AuditConfig()
    _index: dict = field(default_factory=dict, compare=False, repr=False)
    # Read decisions that depend only on (path, query, identity, Origin), for this rules object only:
    # a reload builds a new Rules, so nothing decided under old rules survives it.
    memo: SizedMemo = field(default_factory=lambda: SizedMemo("decisions", DECISIONS_SHARE, _decision_size),
                            compare=False, repr=False)
    routes: SizedMemo = field(default_factory=lambda: SizedMemo("routes", ROUTES_SHARE, _route_size),
                              compare=False, repr=False)  # policy._route's

    def __post_init__(self) -> None:
        for rule in self.rules:
            self._index.setdefault((rule.method, len(rule.route_segments)), []).append(rule)
        for candidates in self._index.values():  # most literal segments first: /achievements/summary
            candidates.sort(key=lambda r: tuple(s is None for s in r.route_segments))  # beats /{id}

    def match(self, method: str, segments: tuple[str, ...]) -> tuple[Rule, dict[str, str]] | None:
        for rule in self._index.get((method, len(segments)), ()):
            params = {}
            for want, got in zip(rule.route_segments, segments):
                if want is None:
                    params[rule.params[len(params)]] = got
                elif want != got:
                    break
            else:
                return rule, params
        return None

    def by_name(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def namespace(self, pattern: str) -> Template | None:
        """The declared namespace (or exact key template) a manual ``purge`` pattern names."""
        text = pattern[:-2] if pattern.endswith(":*") else pattern
        try:
            wanted = parse_template(text, None, allow_body=True).shape
        except TemplateError:
            return None
        pool = self.namespaces if pattern.endswith(":*") else tuple(r.key for r in self.rules if r.key)
        return next((t for t in pool if t.shape == wanted), None)


