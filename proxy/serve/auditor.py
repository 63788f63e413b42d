"""The staleness auditor at run time: re-fetches sampled cache hits in the background and judges them.

Owns: the sample rate the hit paths read (``sample``: each hit path draws one random number against it,
nothing more when not sampled), ``offer`` (a sampled hit becomes a background audit if the budget and
the in-flight bound allow; over-budget samples are simply not taken and not counted), the audit itself
(``_audit``), shadow mode's comparisons (``shadow_compared``), the write hook (``note_write``) and the
report of ``GET /_cache/audit`` (``report``).

An audit fetches the request again exactly as a fill would (the client's ``Authorization`` and keyed
headers: the answer is that user's own), then reads the guarding generations again: if any changed
since the entry's, a purge raced the fetch and the audit is ``skipped``, as it is when the backend's
answer is not one the rule would store. Otherwise the bodies are compared without the rule's
``volatile`` fields: ``match``, or ``mismatch``: the entry is replaced with the fresh answer under the
fill guard (the tokens the entry carried), one ``event=stale_entry`` line is logged, and the writes its
identity (anyone's, for a shared entry) passed since the entry was stored are recorded as the
mismatch's candidates (``audit.AuditBook``).

Reaches the store and the backend only through what the request path (``requestpath.RequestPath``) hands
it (``lookup``, ``fetch``, ``replace``, ``spawn``, ``identify``). May import: core (audit, policy, rules,
entry, errors), never the request path.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace as with_fields
from typing import Any, Awaitable, Callable

from multidict import CIMultiDict

from ..core import policy
from ..core.audit import AuditBook, Budget, WriteLog, fold_path
from ..core.entry import Entry
from ..core.errors import StoreUnavailable
from ..core.policy import Lookup
from ..core.rules import Rule, Rules

log = logging.getLogger("proxy")


class Auditor:
    def __init__(self, metrics, clock: Callable[[], float], *, lookup: Callable[..., Awaitable],
                 fetch: Callable[..., Awaitable], replace: Callable[..., Awaitable], spawn: Callable,
                 identify: Callable, share: float = 1.0, monotonic: Callable[[], float] = time.monotonic):
        self.metrics, self.clock, self.monotonic = metrics, clock, monotonic
        self.share = share  # of the per-instance budget: 1 / workers under ``--workers N``
        self.lookup, self.fetch, self.replace, self.spawn, self.identify = lookup, fetch, replace, spawn, identify
        self.sample = 0.0
        self.budget = Budget(1.0)
        self.writes = WriteLog()
        self.book = AuditBook()
        self.auditing: set[str] = set()  # keys with an audit in flight: one at a time per key
        # Writes forwarded and not yet purged, by verified writer; None counts every write. An audit whose
        # fetch ends while a write of its entry's owner (of anyone, for a shared entry) is out cannot tell
        # a missing purge from one not applied yet: it is skipped. A write that ended during the fetch
        # has purged already, which ``_unpurged`` sees, unless its rule misses the entry: the case to find.
        self.writes_out: Counter = Counter()
        self.rules: Rules | None = None

    def configure(self, rules: Rules) -> None:
        """The rules' ``audit:`` settings and the write memory's horizon (the longest an entry lives)."""
        self.rules = rules
        self.sample = rules.audit.sample
        rate = rules.audit.max_per_second * self.share
        if self.budget.rate != rate:
            self.budget = Budget(rate)
        self.writes.horizon = max((policy.store_ttl(r) for r in rules.rules if r.key is not None), default=3600)

    # ----------------------------------------------------------------------------------- hits

    def offer(self, d: Lookup, entry: Entry, origin: Any) -> None:
        """A sampled fresh hit of ``d`` answered with ``entry`` (``origin``: server.Origin of the request)."""
        if d.key in self.auditing or len(self.auditing) >= self.budget.capacity * 2:
            return
        if not self.budget.take(self.monotonic()):
            return
        self.auditing.add(d.key)
        detached = with_fields(origin, headers=CIMultiDict(origin.headers))
        self.spawn(self._audit(d, entry, detached))

    async def _audit(self, d: Lookup, entry: Entry, origin: Any) -> None:
        rule = d.rule
        tokens = list(entry.generations)
        try:
            fetched = await self.fetch(d, tokens, origin)
            if fetched.stream is not None:
                fetched.stream[1].release()
            if not _judgeable(fetched) or self.writes_out.get(d.owner):
                self._count(rule, "skipped")
                return
            if not await self._unpurged(d, tokens):
                self._count(rule, "skipped")
                return
            if policy.same_content(entry.body, fetched.body, rule.volatile):
                self._count(rule, "match")
                return
            await self._stale(d, entry, tokens, fetched, origin)
        except StoreUnavailable:
            self._count(rule, "skipped")
        except Exception:  # noqa: BLE001 - an audit must never take anything else down
            log.exception("audit failed", extra={"event": "audit_error", "rule": rule.name})
        finally:
            self.auditing.discard(d.key)

    # --------------------------------------------------------------------------------- shadow

    def shadow_compared(self, d: Lookup, entry: Entry, tokens: list, fetched: Any, same: bool, origin: Any) -> None:
        """Shadow mode compared a would-be hit (``entry``, fresh under ``tokens``) with the backend's
        answer: a match counts now; a difference is judged in the background like an audit's (a purge
        racing the fetch: skipped; else a mismatch, replaced and attributed). Only differences cost a
        store round trip: shadow mode compares every would-be hit."""
        if not _judgeable(fetched):
            self._count(d.rule, "skipped")
        elif same:
            self._count(d.rule, "match")
        else:
            detached = with_fields(origin, headers=CIMultiDict(origin.headers))
            self.spawn(self._shadow_mismatch(d, entry, list(tokens), fetched, detached))

    async def _shadow_mismatch(self, d: Lookup, entry: Entry, tokens: list, fetched: Any, origin: Any) -> None:
        try:
            if await self._unpurged(d, tokens):
                await self._stale(d, entry, tokens, fetched, origin)
            else:
                self._count(d.rule, "skipped")
        except StoreUnavailable:
            self._count(d.rule, "skipped")
        except Exception:  # noqa: BLE001
            log.exception("audit failed", extra={"event": "audit_error", "rule": d.rule.name})

    # ------------------------------------------------------------------------------- verdicts

    async def _unpurged(self, d: Lookup, tokens: list) -> bool:
        _, current = await self.lookup(d.key, d.gen_keys)
        return list(current) == list(tokens)

    async def _stale(self, d: Lookup, entry: Entry, tokens: list, fetched: Any, origin: Any) -> None:
        rule = d.rule
        await self.replace(d, tokens, fetched)
        now = self.clock()
        log.warning("cached entry differs from the backend's answer; replaced",
                    extra={"event": "stale_entry", "rule": rule.name, "age_s": round(now - entry.stored_at, 1)})
        user_id = None
        if rule.identity_scoped:
            identity, _ = self.identify(origin.headers.get("Authorization"))
            if identity is None:  # expired since the hit: the writes it made cannot be looked up
                self._count(rule, "mismatch")
                return
            user_id = identity.user_id
        self._count(rule, "mismatch", self.writes.since(user_id, entry.stored_at, now))

    def _count(self, rule: Rule, result: str, preceding: set[str] = frozenset()) -> None:
        self.metrics.audits.labels(rule.name, result).inc()
        self.book.record(rule.name, result, preceding)

    # --------------------------------------------------------------------------------- writes

    def write_begins(self, user_id: str | None) -> None:
        """A write is about to be forwarded (``user_id``: its verified writer, if any)."""
        for who in {user_id, None}:
            self.writes_out[who] += 1

    def write_ends(self, user_id: str | None) -> None:
        """That write's purge is applied (or it failed): what the backend committed is now visible."""
        for who in {user_id, None}:
            self.writes_out[who] -= 1
            if self.writes_out[who] <= 0:
                del self.writes_out[who]

    def note_write(self, identity, method: str, path_qs: str, rule: Rule | None, status: int) -> None:
        """A write the backend accepted (< 400) for a verified identity: remembered for attribution."""
        if identity is None or status >= 400:
            return
        self.writes.note(identity.user_id, rule.name if rule is not None else fold_path(method, path_qs),
                         self.clock())

    def report(self) -> dict[str, Any]:
        return self.book.report(self.rules)


def _judgeable(fetched: Any) -> bool:
    """The backend's answer is one the rule would store (so comparable with an entry): anything else
    (an error, a refusal such as a 401 or an envelope 404, a streamed body) is not judged."""
    return fetched.error is None and fetched.stream is None and fetched.outcome in ("", "not-stored")
