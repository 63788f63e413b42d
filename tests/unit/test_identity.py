"""JWT verification: valid and invalid tokens (expiry, nbf, forgery, alg none, HS/RS confusion, missing
claims, garbage), key rotation, the verification cache and its expiry (injected clock), bearer parsing."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.core.errors import IdentityError
from proxy.core.identity import Identity, IdentityConfig, Verifier, bearer_token

SECRET = "unit-test-secret-0123456789abcdef-0123456789abcdef"
OLD_SECRET = "unit-test-old-secret-fedcba9876543210-fedcba98765"
OTHER_SECRET = "not-the-secret-at-all-0123456789abcdef-0123456789"
NOW = int(time.time())


def token(claims: dict | None = None, key: str = SECRET, algorithm: str = "HS256", **extra) -> str:
    payload = {"sub": "user-1", "exp": NOW + 3600} if claims is None else dict(claims)
    payload.update(extra)
    return jwt.encode(payload, key, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict, payload: dict, key: bytes) -> str:
    """An HS256 token made without PyJWT (which refuses PEM keys as HMAC secrets)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def hs_verifier(*secrets: str, clock=time.time) -> Verifier:
    return Verifier(IdentityConfig(secrets=secrets or (SECRET,)), clock=clock)


def reason(verifier: Verifier, tok: str) -> str:
    with pytest.raises(IdentityError) as info:
        verifier.verify(tok)
    return info.value.reason


def test_valid_hs256_token_names_its_user():
    exp = int(time.time()) + 600  # not the module's NOW: the whole suite can take longer than 600 s
    assert hs_verifier().verify(token(exp=exp)) == Identity("user-1", float(exp))


@pytest.mark.parametrize("tok, why", [
    (token(exp=NOW - 10), "expired"),
    (token(nbf=NOW + 3600), "not_yet_valid"),
    (token(key=OTHER_SECRET), "bad_signature"),
    (token({"exp": NOW + 3600}), "missing_claim"),  # no sub
    (token(sub=""), "missing_claim"),
    (token({"sub": "user-1"}), "missing_claim"),  # no exp
    (token(sub=42), "malformed"),
    (token(exp="later"), "malformed"),
    (jwt.encode({"sub": "user-1", "exp": NOW + 3600}, None, algorithm="none"), "algorithm"),
    (token(algorithm="HS512", key=SECRET + SECRET), "algorithm"),  # not a configured algorithm
    ("garbage", "malformed"),
    ("", "malformed"),
    ("a.b.c", "malformed"),
    ("eyJhbGciOiJIUzI1NiJ9.e30", "malformed"),
], ids=["expired", "nbf-future", "forged", "no-sub", "empty-sub", "no-exp", "int-sub", "text-exp", "alg-none",
        "alg-hs512", "garbage", "empty", "dots", "two-parts"])
def test_invalid_tokens_are_refused_with_a_reason(tok, why):
    assert reason(hs_verifier(), tok) == why


def test_tampered_payload_fails_the_signature():
    header, _, signature = token().split(".")
    payload = b64(json.dumps({"sub": "admin", "exp": NOW + 3600}).encode())
    assert reason(hs_verifier(), f"{header}.{payload}.{signature}") == "bad_signature"


def test_alg_none_without_a_signature_is_refused():
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": "u", "exp": NOW + 3600}).encode())
    assert reason(hs_verifier(), f"{header}.{payload}.") == "algorithm"
    assert reason(hs_verifier(), f"{header}.{payload}.c2ln") == "algorithm"


def test_rs256_token_is_accepted_with_the_public_key(rsa_keys):
    private, public = rsa_keys
    verifier = Verifier(IdentityConfig(public_keys=(public,), algorithms=("RS256",)))
    assert verifier.verify(token(key=private, algorithm="RS256")).user_id == "user-1"


def test_hs_rs_confusion_is_refused(rsa_keys):
    """An HS256 token whose HMAC secret is the (public) PEM must not pass an RS256 verifier."""
    _, public = rsa_keys
    forged = hand_signed({"alg": "HS256", "typ": "JWT"}, {"sub": "admin", "exp": NOW + 3600}, public.encode())
    rs_only = Verifier(IdentityConfig(public_keys=(public,), algorithms=("RS256",)))
    assert reason(rs_only, forged) == "algorithm"
    both = Verifier(IdentityConfig(secrets=(SECRET,), public_keys=(public,), algorithms=("HS256", "RS256")))
    assert reason(both, forged) in {"algorithm", "bad_signature"}
    assert both.verify(token()).user_id == "user-1"  # the genuine HS256 token still passes


def test_rs256_token_signed_by_another_key_is_refused(rsa_keys):
    _, public = rsa_keys
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = Verifier(IdentityConfig(public_keys=(public,), algorithms=("RS256",)))
    assert reason(verifier, jwt.encode({"sub": "u", "exp": NOW + 3600}, other, algorithm="RS256")) == "bad_signature"


def test_key_rotation_accepts_tokens_of_every_configured_secret():
    verifier = hs_verifier(SECRET, OLD_SECRET)
    assert verifier.verify(token(sub="new-user")).user_id == "new-user"
    assert verifier.verify(token(sub="old-user", key=OLD_SECRET)).user_id == "old-user"
    assert reason(verifier, token(key=OTHER_SECRET)) == "bad_signature"
    assert reason(verifier, token(key=OLD_SECRET, exp=NOW - 1)) == "expired"


def test_leeway_accepts_a_just_expired_token():
    verifier = Verifier(IdentityConfig(secrets=(SECRET,), leeway=60))
    now = int(time.time())  # not the module's NOW: a slow run must not age the token past the leeway
    assert verifier.verify(token(exp=now - 5)).user_id == "user-1"
    assert reason(verifier, token(exp=now - 3600)) == "expired"


def test_audience_and_issuer_are_checked_when_configured():
    verifier = Verifier(IdentityConfig(secrets=(SECRET,), audience="katiba", issuer="auth"))
    assert verifier.verify(token(aud="katiba", iss="auth")).user_id == "user-1"
    for tok in (token(aud="other", iss="auth"), token(aud="katiba", iss="other"), token()):
        with pytest.raises(IdentityError):
            verifier.verify(tok)


# --------------------------------------------------------------------------- verification cache


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_cache_returns_the_same_identity():
    NOW = int(time.time())  # per test: PyJWT checks exp against the wall clock, not Clock
    verifier = hs_verifier(clock=Clock(NOW))
    tok = token(exp=NOW + 100)
    first = verifier.verify(tok)
    assert verifier.verify(tok) is first
    assert verifier.verify(token(sub="user-2", exp=NOW + 100)) is not first


def test_cached_token_past_exp_is_refused():
    NOW = int(time.time())  # per test: PyJWT checks exp against the wall clock, not Clock
    clock = Clock(NOW)
    verifier = hs_verifier(clock=clock)
    tok = token(exp=NOW + 100)
    assert verifier.verify(tok).user_id == "user-1"
    clock.now = NOW + 99
    assert verifier.verify(tok).user_id == "user-1"
    clock.now = NOW + 100
    assert reason(verifier, tok) == "expired"
    clock.now = NOW + 10_000
    assert reason(verifier, tok) == "expired"


def test_cache_honours_leeway():
    NOW = int(time.time())  # per test: PyJWT checks exp against the wall clock, not Clock
    clock = Clock(NOW)
    verifier = Verifier(IdentityConfig(secrets=(SECRET,), leeway=30), clock=clock)
    tok = token(exp=NOW + 100)
    verifier.verify(tok)
    clock.now = NOW + 120
    assert verifier.verify(tok).user_id == "user-1"
    clock.now = NOW + 130
    assert reason(verifier, tok) == "expired"


def test_refused_tokens_are_not_cached():
    verifier = hs_verifier()
    forged = token(key=OTHER_SECRET)
    for _ in range(3):
        assert reason(verifier, forged) == "bad_signature"


def test_a_full_cache_still_verifies():
    verifier = Verifier(IdentityConfig(secrets=(SECRET,)), cache_size=2)
    tokens = [token(sub=f"u{i}") for i in range(5)]
    for _ in range(2):
        assert [verifier.verify(t).user_id for t in tokens] == [f"u{i}" for i in range(5)]


# --------------------------------------------------------------------------- configuration and header


@pytest.mark.parametrize("config", [
    IdentityConfig(secrets=(SECRET,), algorithms=()),
    IdentityConfig(algorithms=("HS256",)),
    IdentityConfig(secrets=(SECRET,), algorithms=("RS256",)),
])
def test_incomplete_configuration_is_refused(config):
    with pytest.raises(ValueError):
        Verifier(config)


@pytest.mark.parametrize("header, expected", [
    ("Bearer abc.def.ghi", "abc.def.ghi"),
    # only the spelling the backend accepts (the contract: "Bearer", one space)
    ("bearer abc", None),
    ("BEARER abc", None),
    ("Bearer  abc", None),
    ("Bearer\tabc", None),
    ("  Bearer   abc  ", None),
    ("Bearer abc\udcff", None),  # a byte that is not UTF-8, as aiohttp decodes it
    ("Bearer ab\u00e9", None),
    ("Bearer", None),
    ("Bearer ", None),
    ("Basic dXNlcjpwdw==", None),
    ("Bearer a b", None),
    ("abc.def.ghi", None),
    ("", None),
    (None, None),
])
def test_bearer_token(header, expected):
    assert bearer_token(header) == expected


@pytest.mark.parametrize("spoil", [lambda t: t[:10] + "\udcff" + t[10:], lambda t: t + "\u00e9"])
def test_a_token_that_is_not_ascii_is_malformed_not_an_encoding_error(spoil):
    """aiohttp hands a byte that is not UTF-8 on as a surrogate; PyJWT cannot even encode that."""
    with pytest.raises(IdentityError) as raised:
        hs_verifier(SECRET).verify(spoil(token()))
    assert raised.value.reason == "malformed"
