"""The staleness auditor's bookkeeping, pure: no sockets, no store, no clock of its own (callers pass ``now``).

Owns:
* ``fold_path``: an unruled write's label, ``METHOD /path/template`` with id-like segments as ``{id}``;
* ``WriteLog``: which writes each identity passed and when, bounded in time (``horizon``) and memory
  (identities, writes per identity, writes overall); identities are kept as hashes, never as user ids;
* ``Budget``: the token bucket that bounds audit fetches per second;
* ``AuditBook``: audit results per read rule, and for each mismatch the writes that preceded it, from
  which ``report`` draws suggestions: a write that preceded stale reads of rule R and whose purge does
  not cover R's key should purge it.

May import: the compiled rules model (``rules``, ``keys``) only. The background fetches, the store and
the metrics are ``auditor.py``'s.
"""
from __future__ import annotations

import hashlib
import re
from collections import OrderedDict, deque
from typing import Any, Iterable

from .rules import Rule, Rules, purge_covers

RESULTS = ("match", "mismatch", "skipped")
_ID_SEGMENT = re.compile(
    r"^(?:[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,})$")
MAX_SEGMENT = 40  # longer segments are folded too: labels stay few and short whatever clients send
MAX_SEGMENTS = 12


def fold_path(method: str, path_qs: str) -> str:
    """``PUT /api/v1/onboarding/progress``; ``DELETE /api/v1/users/languages/{id}`` for ``.../languages/42``.

    Digits, UUIDs, hex of 16 characters or more, and any segment over ``MAX_SEGMENT`` characters become
    ``{id}``; the query is dropped; empty segments are dropped; past ``MAX_SEGMENTS`` segments, ``...``."""
    path = path_qs.partition("?")[0]
    folded = []
    for segment in path.split("/"):
        if not segment:
            continue
        if len(folded) == MAX_SEGMENTS:
            folded.append("...")
            break
        folded.append("{id}" if len(segment) > MAX_SEGMENT or _ID_SEGMENT.match(segment) else segment)
    return f"{method.upper()} /{'/'.join(folded)}"


def is_unmatched(write: str) -> bool:
    """A label made by ``fold_path`` (a write no rule matched), not a rule name."""
    return " " in write


def who(user_id: str) -> bytes:
    """How ``WriteLog`` knows an identity: a hash, so no user id is kept in memory for the audit."""
    return hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=12).digest()


class WriteLog:
    """The writes each identity passed recently: (time, label), oldest first, bounded (module doc)."""

    def __init__(self, horizon: float = 3600.0, max_identities: int = 10_000, per_identity: int = 64,
                 max_shared: int = 10_000):
        self.horizon = horizon
        self.max_identities = max_identities
        self.per_identity = per_identity
        self.by_identity: OrderedDict[bytes, deque] = OrderedDict()
        self.everyone: deque = deque(maxlen=max_shared)  # every identity's writes, for shared entries

    def note(self, user_id: str, label: str, now: float) -> None:
        key = who(user_id)
        writes = self.by_identity.get(key)
        if writes is None:
            if len(self.by_identity) >= self.max_identities:
                self.by_identity.popitem(last=False)  # the identity that wrote least recently
            writes = self.by_identity[key] = deque(maxlen=self.per_identity)
        else:
            self.by_identity.move_to_end(key)
        writes.append((now, label))
        self.everyone.append((now, label))
        self._forget(writes, now)
        self._forget(self.everyone, now)

    def since(self, user_id: str | None, t: float, now: float) -> set[str]:
        """Labels of the writes made after ``t``: by ``user_id``, or by anyone when it is None."""
        writes = self.everyone if user_id is None else self.by_identity.get(who(user_id), ())
        floor = max(t, now - self.horizon)
        return {label for at, label in writes if at > floor}

    def _forget(self, writes: deque, now: float) -> None:
        while writes and writes[0][0] < now - self.horizon:
            writes.popleft()


class Budget:
    """A token bucket: ``rate`` audits per second, at most ``capacity`` at once (default: one second's
    worth, at least one). ``take`` is False when the bucket is empty: that sample is not taken."""

    def __init__(self, rate: float, capacity: float | None = None):
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AuditBook:
    """Audit results per read rule and the writes that preceded each mismatch (bounded pairs)."""

    def __init__(self, max_pairs: int = 10_000):
        self.results: dict[str, dict[str, int]] = {}
        self.followed: dict[tuple[str, str], int] = {}  # (read rule, write) -> mismatches it preceded
        self.max_pairs = max_pairs

    def record(self, rule: str, result: str, preceding: Iterable[str] = ()) -> None:
        row = self.results.setdefault(rule, dict.fromkeys(RESULTS, 0))
        row[result] += 1
        if result != "mismatch":
            return
        for write in preceding:
            pair = (rule, write)
            if pair in self.followed or len(self.followed) < self.max_pairs:
                self.followed[pair] = self.followed.get(pair, 0) + 1

    def report(self, rules: Rules, per_rule: int = 5) -> dict[str, Any]:
        """The JSON of ``GET /_cache/audit``: counts per read rule (every read rule of ``rules``, zeros
        included) and at most ``per_rule`` suggestions per read rule, most often seen first."""
        out: dict[str, dict[str, Any]] = {}
        names = [r.name for r in rules.rules if r.key is not None]
        for name in names + sorted(set(self.results) - set(names)):
            row = self.results.get(name, dict.fromkeys(RESULTS, 0))
            judged = row["match"] + row["mismatch"]
            out[name] = {"audited": sum(row.values()), **row,
                         "mismatch_rate": round(row["mismatch"] / judged, 4) if judged else None}
        suggestions = []
        for (read_name, write), seen in self.followed.items():
            read = rules.by_name(read_name)
            if read is None or read.key is None or _purge_covers(rules, write, read):
                continue
            suggestions.append({"write": write, "read_rule": read_name, "pattern": purge_pattern(read),
                                "seen": seen, "of": out[read_name]["mismatch"]})
        suggestions.sort(key=lambda s: (s["read_rule"], -s["seen"], s["write"]))
        kept, count = [], {}
        for s in suggestions:
            count[s["read_rule"]] = count.get(s["read_rule"], 0) + 1
            if count[s["read_rule"]] <= per_rule:
                kept.append(s)
        kept.sort(key=lambda s: (-s["seen"] / max(1, s["of"]), -s["seen"], s["read_rule"], s["write"]))
        return {"rules": out, "suggestions": kept}


def _purge_covers(rules: Rules, write: str, read: Rule) -> bool:
    """The write rule named ``write`` purges ``read``'s entries already; an unmatched write purges what
    ``unmatched_writes`` names."""
    purges = rules.unmatched if is_unmatched(write) else rules.by_name(write)
    return purges is not None and purge_covers(purges, read)


def purge_pattern(read: Rule) -> str:
    """The purge pattern to add for ``read``: its key when a write can render it (literals and
    ``{user_id}`` only), else the namespace of its leading such segments
    (``achievements:{user_id}:achievement:*`` for ``achievements:{user_id}:achievement:{achievement_id}``)."""
    parts = read.key.text.split(":")
    renderable = 0
    for segment in read.key.segments:
        if not isinstance(segment, str) and any(a.kind != "identity" for a in segment.alternatives):
            break
        renderable += 1
    if renderable == len(parts):
        return read.key.text
    if renderable >= 2:
        return ":".join(parts[:renderable]) + ":*"
    return read.key.text


def suggestion_text(s: dict[str, Any]) -> str:
    """One suggestion as ``cache-proxy audit`` prints it."""
    why = f"({s['seen']} of {s['of']} stale {s['read_rule']} reads followed it)"
    if is_unmatched(s["write"]):
        return f'add a write rule for {s["write"]} with purge "{s["pattern"]}" {why}'
    return f'add "{s["pattern"]}" to {s["write"]}.purge {why}'
