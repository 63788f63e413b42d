"""Path and query normalisation: ``//``, ``/./``, ``/../``, encoded slashes and dots, trailing slashes,
the case of the percent-encoding, parameter order and duplicates. Each spelling either gets the one
canonical key of the resource (a HIT on the entry the plain spelling filled) or BYPASS (passed through,
never stored), and never the key of a different route: end to end on the stand-in, and as a hypothesis
property of ``policy.classify`` over generated raw targets. Unit cases: tests/unit/test_policy.py."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.core.identity import Identity
from proxy.core.policy import Bypass, Lookup, RequestView, classify
from proxy.core.rulesfile import load_rules
from tests.functional.conftest import mint, new_user
from tests.security.helpers import base_url, send

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules.yaml", environ={})
PROFILE, SUMMARY = "/api/v1/users/profile", "/api/v1/achievements/summary"
BOARD = "/api/v1/achievements/leaderboard?limit=10&offset=0"

EQUIVALENT = {  # the same resource as the plain spelling: served from its entry
    PROFILE: ["/api/v1/users/%70rofile", "/api/v1/users/%70%72%6F%66%69%6C%65", "/api/v1/users/%70%72%6f%66%69%6c%65",
              "/api/v1/%75sers/profile", "/%61pi/v1/users/profile", "/api/v1/users/profile?"],
    SUMMARY: ["/api/v1/achievements/%73ummary", "/api/v1/achievements/summar%79"],
    BOARD: ["/api/v1/achievements/leaderboard?offset=0&limit=10", "/api/v1/achievements/leaderboard?limit=%31%30&offset=%30",
            "/api/v1/achievements/leaderboard?limit=1%30&offset=0"],
}
NOT_CACHED = [  # non-canonical spellings, or another (unruled) resource: BYPASS
    "//api/v1/users/profile", "/api/v1//users/profile", "/api/v1/users//profile", "/api/v1/users/./profile",
    "/api/v1/./users/profile", "/api/v1/users/../users/profile", "/api/v1/achievements/../users/profile",
    "/api/v1/users/profile/", "/api/v1/users/profile/.", "/api/v1/users%2Fprofile", "/api/v1/users%2fprofile",
    "/api/v1/users/profile%2F", "/api/v1/users/%2E/profile", "/api/v1/users/%2e%2e/users/profile",
    "/api/v1/achievements/%2e%2e", "/api/v1/achievements/..", "/api/v1/achievements/.", "/api/v1/achievements/%2E",
    "/api/v1/achievements/..%2Fusers%2Fprofile", "/api/v1/achievements/summary/", "/api/v1/achievements/type/gold/",
    "/API/v1/users/profile", "/api/v1/users/Profile", "/api/v1/users/profile;x=1", "/api/v1/users/profile%00",
    "/api/v1/users/profile%20", "/api/v1/users/profile?x=1", "/api/v1/users/profile?user_id=someone",
    "/api/v1/achievements/leaderboard?limit=10&offset=0&limit=10", "/api/v1/achievements/leaderboard?LIMIT=10",
    "/api/v1/achievements/leaderboard?limit=10&offset=0&x=1", "/api/v1/achievements/leaderboard?limit=10&offset",
]


async def test_spellings_share_the_canonical_entry_or_bypass(proxy, backend):
    user = new_user()
    await backend.seed(user)
    auth = {"Authorization": f"Bearer {mint(user)}"}
    url = base_url(proxy.client)
    plain = {}
    for target in EQUIVALENT:
        first = await send(url, "GET", target, auth)
        assert first.x_cache == "MISS" and first.code == 200, (target, first)
        plain[target] = await send(url, "GET", target, auth)
        assert plain[target].x_cache == "HIT", (target, plain[target])
    before = await backend.requests()
    for target, spellings in EQUIVALENT.items():
        for spelling in spellings:
            reply = await send(url, "GET", spelling, auth)
            assert reply.x_cache == "HIT" and reply.body == plain[target].body, (spelling, reply)
    assert await backend.requests() == before  # one key per resource: no extra fetch
    for spelling in NOT_CACHED:
        for _ in range(2):
            reply = await send(url, "GET", spelling, auth)
            assert reply.x_cache == "BYPASS", (spelling, reply)
            assert reply.body not in plain.values(), spelling
    for target in EQUIVALENT:
        assert (await send(url, "GET", target, auth)).body == plain[target].body, target


# ------------------------------------------------------------------------------------- property

ALICE = Identity("alice", 2e9)
LITERALS = sorted({s for r in RULES.rules for s in r.route_segments if s} | {"x", "gold", "a:b", "A", "é"})
ODD = ["", ".", "..", "/", "%", "%2F", "%2f", "%2e", "%2E%2e", "%00", "%FF", "?", "*", "{x}", "a%3Ab", "+"]


def spell(segment: str, flags: list[bool]) -> str:
    """``segment`` with some characters percent-encoded, some escapes in lower-case hex (``flags``)."""
    out = []
    for i, ch in enumerate(segment):
        enc = quote(ch, safe="")
        if enc == ch and flags and flags[i % len(flags)]:
            enc = "%{:02X}".format(ord(ch))
        if flags and not flags[(i + 1) % len(flags)]:
            enc = enc.lower() if enc.startswith("%") else enc
        out.append(enc)
    return "".join(out)


GET_ROUTES = [r.route_segments for r in RULES.rules if r.method == "GET"]
param_values = st.sampled_from(LITERALS + ODD + ["%2A", "a b", "x%2Fy", "%7Buser_id%7D"])


@st.composite
def raw_paths(draw) -> str:
    """A GET rule's route with hostile parameter values, odd segments inserted, and random spellings."""
    segs = [s if s is not None else draw(param_values) for s in draw(st.sampled_from(GET_ROUTES))]
    for _ in range(draw(st.integers(0, 2))):
        segs.insert(draw(st.integers(0, len(segs))), draw(st.sampled_from(ODD + LITERALS)))
    spelled = [s if s in ODD or "%" in s else spell(s, draw(st.lists(st.booleans(), max_size=4))) for s in segs]
    return "/" + "/".join(spelled)


queries = st.one_of(st.just(""), st.lists(st.tuples(st.sampled_from(["limit", "offset", "LIMIT", "x", "limit%3D"]),
                             st.sampled_from(["10", "%31%30", "0", "", "a%26b", "%FF"])), max_size=3).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)))


def decide(raw_path: str, query: str):
    return classify(RequestView("GET", raw_path, query, CIMultiDict()), RULES, ALICE)


def decoded(raw_path: str) -> tuple[str, ...]:
    return tuple(unquote(s, errors="surrogateescape") for s in raw_path.split("/")[1:])


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(raw_paths(), queries)
def test_a_lookup_is_always_the_backends_route_and_its_canonical_key(raw_path, query):
    decision = decide(raw_path, query)
    assert isinstance(decision, (Lookup, Bypass))
    if not isinstance(decision, Lookup):
        return
    parts = decoded(raw_path)
    assert all(p and p not in (".", "..") and "/" not in p for p in parts), raw_path
    found = RULES.match("GET", parts)  # the route the backend sees once it decodes the path
    assert found is not None and found[0].name == decision.rule.name, (raw_path, decision.rule.name)
    canonical = "/" + "/".join(quote(p, safe="", errors="surrogateescape") for p in parts)
    again = decide(canonical, query)
    assert isinstance(again, Lookup) and again.key == decision.key, (raw_path, canonical)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(raw_paths(), queries, raw_paths(), queries)
def test_equal_keys_only_for_the_same_decoded_request(path_a, query_a, path_b, query_b):
    a, b = decide(path_a, query_a), decide(path_b, query_b)
    if isinstance(a, Lookup) and isinstance(b, Lookup) and a.key == b.key:
        assert decoded(path_a) == decoded(path_b), (path_a, path_b)
        assert sorted(parse_qsl(query_a)) == sorted(parse_qsl(query_b))
