"""Identity: for every identity-scoped rule of rules.yaml, two real users (a victim whose data the backend
holds, and another) and every kind of bad credential (none, malformed, expired, not yet valid, forged or
swapped signature, alg none, an algorithm not configured, HS/RS confusion with the public key as HMAC
secret, missing/empty/numeric sub, no exp, a token in a query string or a cookie, another user's valid
token with spoofed id headers): never served the victim's entry, never storing one under the victim's key
(the victim's next request is a MISS with their own data), never purging the victim's entries.

The verifier's own cases (leeway, rotation, the verification cache) are in tests/unit/test_identity.py;
the no-token/invalid-token BYPASS of every auth-required rule (global ones too) in
tests/functional/test_rules_routes.py."""
from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from proxy.core.identity import IdentityConfig
from proxy.core.rulesfile import load_rules
from tests.functional.conftest import SECRET, auth, mint, new_user
from tests.functional.test_rules_routes import READ_URLS
from tests.security.helpers import bad_tokens, claims, hand_signed, unsigned

RULES = load_rules(Path(__file__).resolve().parents[2] / "rules.yaml", environ={})
IDENTITY_SCOPED = sorted(r.name for r in RULES.rules if r.identity_scoped)
# one concrete URL per identity-scoped GET rule (the functional suite's table, checked against rules.yaml
# there); {achievement_id} is one of the victim's
URLS = {name: url for name, url in READ_URLS.items() if name in IDENTITY_SCOPED}


def test_every_identity_scoped_rule_is_attacked():
    assert IDENTITY_SCOPED and set(IDENTITY_SCOPED) == set(URLS), "add a URL for each identity-scoped rule"


def attacks(victim: str, other: str) -> list[tuple[str, str, dict[str, str]]]:
    """(kind, query to append, headers): requests that must never count as the victim."""
    victim_token = mint(victim)
    out: list[tuple[str, str, dict[str, str]]] = [("no-credential", "", {})]
    out += [(kind, "", {"Authorization": f"Bearer {tok}"}) for kind, tok in bad_tokens(victim, mint(other)).items()]
    out += [
        ("empty-bearer", "", {"Authorization": "Bearer "}),
        ("basic-scheme", "", {"Authorization": "Basic dmljdGltOnBhc3N3b3Jk"}),
        ("token-without-scheme", "", {"Authorization": victim_token}),
        ("two-tokens", "", {"Authorization": f"Bearer {victim_token} {victim_token}"}),
        ("query-token", f"token={victim_token}", {}),
        ("query-access-token", f"access_token={victim_token}", {}),
        ("cookie-access-token", "", {"Cookie": f"access_token={victim_token}"}),
        ("cookie-token", "", {"Cookie": f"token={victim_token}; session={victim_token}"}),
        ("query-and-bad-bearer", f"access_token={victim_token}",
         {"Authorization": f"Bearer {mint(victim, secret='x' * 40)}"}),
    ]
    return out


def with_query(url: str, query: str) -> str:
    return url if not query else url + ("&" if "?" in url else "?") + query


def assert_refused(reply, kind: str, victim_body: bytes | None) -> None:
    assert reply.status == 401, (kind, reply)  # the backend's own refusal, relayed
    assert reply.x_cache == "BYPASS", (kind, reply)
    assert any(f"detail={d}" in reply.cache_status for d in ("no-token", "invalid-token")), (kind, reply)
    assert "Age" not in reply.headers, (kind, reply)
    if victim_body is not None:
        assert reply.body != victim_body, kind


@pytest.mark.parametrize("name", IDENTITY_SCOPED)
async def test_bad_credentials_never_read_or_fill_the_victims_entry(name, proxy, backend):
    victim, other = new_user(), new_user()
    ids = await backend.seed(victim)
    url, route = URLS[name].format(**ids), RULES.by_name(name).route
    hostile = attacks(victim, other)
    before = await backend.route_count("GET", route)

    for kind, query, headers in hostile:  # cold: whatever they send, nothing lands under the victim's key
        assert_refused(await proxy.get(with_query(url, query), headers=headers), kind, None)
    assert await backend.route_count("GET", route) - before == len(hostile)

    first = await proxy.get(url, victim)
    assert first.x_cache == "MISS" and first.status == 200 and first.code == 200, first
    assert first.version > 0, first  # the victim's own (seeded) data
    assert (await proxy.get(url, victim)).x_cache == "HIT"

    for kind, query, headers in hostile:  # warm: still nobody but the victim gets the entry
        assert_refused(await proxy.get(with_query(url, query), headers=headers), kind, first.body)

    theirs = await proxy.get(url, other)  # a real user with a valid token gets their own data
    assert theirs.x_cache == "MISS" and theirs.status == 200, theirs
    assert theirs.body != first.body and theirs.version == 0, theirs
    assert theirs.code == (404 if name == "achievement" else 200), theirs  # not their achievement

    spoofed = await proxy.get(url, other, headers={"X-User-Id": victim, "X-Forwarded-User": victim,
                                                   "X-Auth-Request-User": victim, "X-Remote-User": victim})
    assert spoofed.body != first.body and spoofed.version == 0, spoofed
    chosen = await proxy.get(with_query(url, f"user_id={victim}"), other)  # the user is never in the URL
    assert chosen.x_cache == "BYPASS" and "detail=unkeyed-query" in chosen.cache_status, chosen
    assert chosen.version == 0 and chosen.body != first.body, chosen

    again = await proxy.get(url, victim)
    assert again.x_cache == "HIT" and again.body == first.body, again  # nobody replaced the victim's entry
    other_stored = name != "achievement"  # a 404 envelope is not stored: the spoofed request asked again
    expected = 2 * len(hostile) + 1 + 1 + 1 + (0 if other_stored else 1)
    assert await backend.route_count("GET", route) - before == expected


async def test_bad_credentials_never_purge_the_victims_entries(proxy, backend):
    victim, other = new_user(), new_user()
    ids = await backend.seed(victim)
    urls = [URLS["user_profile"], URLS["user_full_profile"], URLS["achievements"],
            URLS["achievement"].format(**ids), "/api/v1/achievements/leaderboard"]
    warm = {}
    for url in urls:
        warm[url] = await proxy.get(url, victim)
        assert (await proxy.get(url, victim)).x_cache == "HIT", url
    writes = [("PUT", "/api/v1/users/profile", {"display_name": "Mallory"}),
              ("POST", "/api/v1/users/preferences", {"theme": "light"}),
              ("POST", "/api/v1/achievements", {"badge_type": "gold"}),
              ("POST", "/api/v1/achievements/award", {"user_id": victim, "badge_type": "gold"})]
    before = await backend.requests()
    hostile = attacks(victim, other)
    for kind, query, headers in hostile:
        for method, path, body in writes:
            reply = await proxy.request(method, with_query(path, query), json=body, headers=headers)
            assert reply.status == 401 and reply.x_cache == "BYPASS", (kind, method, path, reply)
    assert await backend.requests() - before == len(hostile) * len(writes)  # forwarded, refused there
    for url in urls:
        reply = await proxy.get(url, victim)
        assert reply.x_cache == "HIT" and reply.body == warm[url].body, (url, reply)

    mine = await proxy.request("PUT", "/api/v1/users/profile", other, json={"display_name": "Other"})
    assert mine.status == 200 and mine.code == 200, mine  # another user's own write purges their keys only
    for url in urls[:-1]:
        assert (await proxy.get(url, victim)).x_cache == "HIT", url


async def test_hs_rs_confusion_and_foreign_keys_with_a_public_key_configured(make_configured_proxy, backend,
                                                                               rsa_keys):
    """With an RS256 public key configured next to the HS256 secret, the public key is never an HMAC
    secret, RS256 tokens of another key fail, and alg none still fails."""
    _, public = rsa_keys
    proxy = await make_configured_proxy(identity=IdentityConfig(secrets=(SECRET,), public_keys=(public,),
                                                                algorithms=("HS256", "RS256")))
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    victim = new_user()
    await backend.seed(victim)
    url = URLS["user_profile"]
    confused = {
        "hs256-public-key-as-secret": hand_signed(claims(victim), public.encode()),
        "hs256-public-key-stripped": hand_signed(claims(victim), public.strip().encode()),
        "hs512-public-key-as-secret": hand_signed(claims(victim), public.encode(), "HS512"),
        "rs256-foreign-key": jwt.encode(claims(victim), stranger, algorithm="RS256"),
        "rs256-header-hmac-signature": hand_signed(claims(victim), public.encode(),
                                                   header={"alg": "RS256", "typ": "JWT"}),
        "alg-none": unsigned(claims(victim)),
    }
    for kind, token in confused.items():
        assert_refused(await proxy.get(url, token=token), kind, None)
    first = await proxy.get(url, victim)
    assert first.x_cache == "MISS" and first.version > 0, first  # nothing was stored by the attempts
    assert (await proxy.get(url, victim)).x_cache == "HIT"
    for kind, token in confused.items():
        assert_refused(await proxy.get(url, token=token), kind, first.body)
    assert (await proxy.get(url, headers=auth(victim))).body == first.body
