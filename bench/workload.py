"""The katiba workload (conventions.md, scenario c) in one place: users, tokens, the Zipf law, the mix.

``Workload.write_lua(path)`` writes the data file that ``bench/lua/katiba.lua`` loads (wrk), and
``Workload.draw(rng)`` draws the same requests in Python (the smoke mode's load generator), so both
load generators send the same distribution: 1,000 users ranked by a Zipf law (s = 1.1), reads 90%
(profile 25, auth/me 10, preferences 10, full profile 10, achievements 15, summary 10, leaderboard 15,
recent 5), writes 10% (profile 40, preferences 30, award 20, languages/interests 10) by users drawn from
the same law. Each mix entry is named after the rule of rules.yaml that handles it.

Reads after own write (issue 21, ``refresh_after_purge``): with ``reread`` on, each write is followed, on
the same connection, ``REREAD_THINK_MS`` after its answer (an app rendering), by one read of a per-user
route that write purges (``REREADS``), by the same user. Those reads are counted under their own name,
``reread:<rule>``, with ``-collapsed`` added to their X-Cache when Cache-Status says the read waited for a
fill in flight, so the mix's own figures keep the proportions of conventions.md.
"""
from __future__ import annotations

import bisect
import json
import random
import time
import uuid
from dataclasses import dataclass, field

import jwt

API = "/api/v1"

# name (the rule in rules.yaml), method, path, weight within reads or writes, body kind for writes
READS: tuple[tuple[str, str, str, float, str | None], ...] = (
    ("user_profile", "GET", f"{API}/users/profile", 25, None),
    ("auth_me", "GET", f"{API}/auth/me", 10, None),
    ("user_preferences", "GET", f"{API}/users/preferences", 10, None),
    ("user_full_profile", "GET", f"{API}/users/profile/full", 10, None),
    ("achievements", "GET", f"{API}/achievements", 15, None),
    ("achievements_summary", "GET", f"{API}/achievements/summary", 10, None),
    ("leaderboard", "GET", f"{API}/achievements/leaderboard?limit=10&offset=0", 15, None),
    ("recent_achievements", "GET", f"{API}/achievements/recent?limit=20", 5, None),
)
WRITES: tuple[tuple[str, str, str, float, str | None], ...] = (
    ("update_profile", "PUT", f"{API}/users/profile", 40, "profile"),
    ("update_preferences", "POST", f"{API}/users/preferences", 30, "preferences"),
    ("award_achievement", "POST", f"{API}/achievements/award", 20, "award"),
    ("add_language", "POST", f"{API}/users/languages", 5, "language"),
    ("add_interest", "POST", f"{API}/users/interests", 5, "interest"),
)
WRITE_SHARE = 0.10
READ_HEAVY_WRITE_SHARE = 0.02  # issue 21's second mix: the same proportions, 2% writes
# The read an app makes right after each write of the mix: a per-user route that the write purges.
REREADS: dict[str, str] = {"update_profile": "auth_me", "update_preferences": "user_preferences",
                           "award_achievement": "achievements", "add_language": "auth_me",
                           "add_interest": "user_full_profile"}
REREAD_PREFIX = "reread:"
REREAD_THINK_MS = 30
BADGES = ("bronze", "silver", "gold", "platinum")
LANGUAGES = ("sw", "en", "fr", "ar", "so", "am", "luo", "kik")
INTERESTS = ("bill of rights", "devolution", "land", "elections", "judiciary", "citizenship", "leadership",
             "public finance", "security", "environment")


def zipf_cdf(n: int, s: float) -> list[float]:
    weights = [1.0 / (rank ** s) for rank in range(1, n + 1)]
    total = sum(weights)
    out, acc = [], 0.0
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def mint(user_id: str, secret: str, ttl: int = 86400) -> str:
    return jwt.encode({"sub": user_id, "exp": int(time.time()) + ttl}, secret, algorithm="HS256")


@dataclass
class Request:
    name: str
    method: str
    path: str
    token: str
    body: bytes | None
    write: bool


@dataclass
class Workload:
    secret: str
    users: int = 1000
    zipf_s: float = 1.1
    seed: int = 1
    write_share: float = WRITE_SHARE
    user_ids: list[str] = field(init=False)
    tokens: list[str] = field(init=False)
    cdf: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.user_ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"katiba-bench-user-{self.seed}-{i}"))
                         for i in range(self.users)]
        self.tokens = [mint(uid, self.secret) for uid in self.user_ids]
        self.cdf = zipf_cdf(self.users, self.zipf_s)
        self._read_cdf = _cumulative([r[3] for r in READS])
        self._write_cdf = _cumulative([w[3] for w in WRITES])
        self._n = 0

    @staticmethod
    def route_names() -> list[str]:
        return [r[0] for r in READS] + [w[0] for w in WRITES]

    @staticmethod
    def read_names() -> list[str]:
        return [r[0] for r in READS]

    def reread(self, write: Request) -> Request | None:
        """The read right after ``write`` (same user, same token), or None for a read or an unlisted write."""
        name = REREADS.get(write.name) if write.write else None
        if name is None:
            return None
        return Request(REREAD_PREFIX + name, "GET", _read_path(name), write.token, None, False)

    def write_lua(self, path: str) -> None:
        def entries(rows):
            return ",\n".join(
                f'  {{name = {_lua(n)}, method = {_lua(m)}, path = {_lua(p)}, w = {w}, body = {_lua(b)}}}'
                for n, m, p, w, b in rows)
        lines = [
            "-- generated by bench/workload.py: tokens per user, the Zipf CDF, the mix",
            "return {",
            f"write_share = {self.write_share},",
            "tokens = {" + ",".join(_lua(t) for t in self.tokens) + "},",
            "cdf = {" + ",".join(repr(c) for c in self.cdf) + "},",
            "reads = {\n" + entries(READS) + "},",
            "writes = {\n" + entries(WRITES) + "},",
            "badges = {" + ",".join(_lua(b) for b in BADGES) + "},",
            "languages = {" + ",".join(_lua(b) for b in LANGUAGES) + "},",
            "interests = {" + ",".join(_lua(b) for b in INTERESTS) + "},",
            f"reread_think_ms = {REREAD_THINK_MS},",
            "rereads = {" + ", ".join(f"{w} = {{name = {_lua(REREAD_PREFIX + r)}, path = {_lua(_read_path(r))}}}"
                                      for w, r in REREADS.items()) + "},",
            "}",
        ]
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

    def draw(self, rng: random.Random) -> Request:
        u = bisect.bisect_left(self.cdf, rng.random())
        token = self.tokens[u]
        if rng.random() < self.write_share:
            name, method, path, _, kind = WRITES[bisect.bisect_left(self._write_cdf, rng.random())]
            return Request(name, method, path, token, self._body(kind, u, rng), True)
        name, method, path, _, _ = READS[bisect.bisect_left(self._read_cdf, rng.random())]
        return Request(name, method, path, token, None, False)

    def _body(self, kind: str | None, u: int, rng: random.Random) -> bytes:
        self._n += 1
        doc: dict
        if kind == "profile":
            doc = {"display_name": f"Bench user {u + 1} p{self._n}", "bio": f"Msomaji wa Katiba, toleo {self._n}"}
        elif kind == "preferences":
            doc = {"theme": rng.choice(["light", "dark"]), "notifications_enabled": rng.random() < 0.5}
        elif kind == "award":
            doc = {"badge_type": rng.choice(BADGES)}
        elif kind == "language":
            doc = {"language_code": rng.choice(LANGUAGES)}
        else:
            doc = {"interest": rng.choice(INTERESTS)}
        return json.dumps(doc).encode()


def reread_label(xcache: str, cache_status: str) -> str:
    """How a read after own write is recorded: its X-Cache, plus ``-collapsed`` when it waited for a fill
    already in flight (a background refetch, say), which X-Cache alone shows as a MISS."""
    return xcache + "-collapsed" if "collapsed" in cache_status else xcache


def _read_path(name: str) -> str:
    return next(r[2] for r in READS if r[0] == name)


def _cumulative(weights: list[float]) -> list[float]:
    total, acc, out = sum(weights), 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def _lua(value) -> str:
    if value is None:
        return "nil"
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for ASCII text
