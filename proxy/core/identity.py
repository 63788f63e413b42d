"""Who is asking: verify the bearer JWT and name the user, or say why not.

Only ``Authorization: Bearer`` counts: a token in a query string or a cookie is never an identity here
(the backend does not read those either). Verification is PyJWT with the configured algorithms only
(so ``alg: none`` and HS/RS confusion fail), ``exp`` required, ``sub`` non-empty, leeway 0 by default.
Several keys may be configured at once for rotation. Verified tokens are remembered (keyed by a hash of
the token, until their ``exp``) so the hit path does not pay for a signature check on every request.

A verified token is not the backend's full authorisation: the backend also refuses unknown and
deactivated users. docs/DESIGN.md ("Deactivated users") says what that means for cached entries.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import jwt

from .errors import IdentityError
from .memo import Memo

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")


@dataclass(frozen=True)
class Identity:
    user_id: str
    expires_at: float


@dataclass(frozen=True)
class IdentityConfig:
    secrets: tuple[str, ...] = ()  # HMAC keys
    public_keys: tuple[str, ...] = ()  # PEM, for RS*/ES*/PS*/EdDSA
    algorithms: tuple[str, ...] = ("HS256",)
    leeway: int = 0
    audience: str | None = None
    issuer: str | None = None


class Verifier:
    def __init__(self, config: IdentityConfig, clock: Callable[[], float] = time.time, cache_size: int = 100_000):
        if not config.algorithms:
            raise ValueError("no JWT algorithms configured")
        hmac_algs = [a for a in config.algorithms if a in HMAC_ALGORITHMS]
        other_algs = [a for a in config.algorithms if a not in HMAC_ALGORITHMS]
        if hmac_algs and not config.secrets:
            raise ValueError(f"JWT algorithms {hmac_algs} need JWT_SECRET_KEY")
        if other_algs and not config.public_keys:
            raise ValueError(f"JWT algorithms {other_algs} need JWT_PUBLIC_KEY")
        # Each key is tried only with the algorithms of its own kind: a public key is never an HMAC secret.
        self._keys: list[tuple[object, list[str]]] = [(s.encode(), hmac_algs) for s in config.secrets if hmac_algs]
        self._keys += [(k, other_algs) for k in config.public_keys if other_algs]
        self.config = config
        self.clock = clock
        self._cache = Memo(cache_size)

    def verify(self, token: str) -> Identity:
        if not token.isascii():  # PyJWT would fail to encode it (a byte that is not UTF-8): a bad token
            raise IdentityError("malformed")
        digest = hashlib.blake2b(token.encode("ascii"), digest_size=16).digest()
        cached = self._cache.get(digest)
        now = self.clock()
        if cached is not None:
            if cached.expires_at > now - self.config.leeway:
                return cached
            del self._cache[digest]
            raise IdentityError("expired")
        return self._cache.put(digest, self._decode(token, now))

    def _decode(self, token: str, now: float) -> Identity:
        options = {"require": ["exp", "sub"], "verify_aud": self.config.audience is not None}
        last: Exception | None = None
        for key, algorithms in self._keys:
            try:
                claims = jwt.decode(token, key, algorithms=algorithms, options=options, leeway=self.config.leeway,
                                    audience=self.config.audience, issuer=self.config.issuer)
            except jwt.InvalidSignatureError as exc:
                last = exc  # maybe signed with another configured key: try the next one
                continue
            except jwt.ExpiredSignatureError:
                raise IdentityError("expired") from None
            except jwt.ImmatureSignatureError:
                raise IdentityError("not_yet_valid") from None
            except jwt.MissingRequiredClaimError:
                raise IdentityError("missing_claim") from None
            except jwt.InvalidAlgorithmError:
                last = IdentityError("algorithm")
                continue
            except jwt.InvalidTokenError:
                raise IdentityError("malformed") from None
            sub = claims.get("sub")
            if not isinstance(sub, str) or not sub:
                raise IdentityError("missing_claim")
            if float(claims["exp"]) <= now - self.config.leeway:  # PyJWT checked the wall clock; the cache
                raise IdentityError("expired")  # uses self.clock: so must the first verification
            return Identity(sub, float(claims["exp"]))
        if isinstance(last, IdentityError):
            raise last
        raise IdentityError("bad_signature")


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` spelled exactly as the backend accepts it, or None.

    The backend takes the scheme ``Bearer`` as written and one space (the contract, Identity): a cached
    answer must never be given to ``bearer``, ``BEARER``, two spaces or a tab, which it refuses. The
    token is visible ASCII (a JWT is base64url and dots); anything else, bytes that are not UTF-8
    included, is no token. Whitespace around the field value is not part of it (RFC 9110 §5.5): both
    HTTP parsers in front of this have dropped it already."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization[7:]
    return token if _VISIBLE_ASCII.fullmatch(token) else None


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def config_from_env(environ: dict[str, str]) -> IdentityConfig:
    """JWT settings from ``JWT_SECRET_KEY[_FILE]``, ``JWT_PUBLIC_KEY[_FILE]``, ``JWT_ALGORITHMS``.

    Several secrets or public keys for rotation: ``JWT_SECRET_KEYS`` (comma-separated) or several PEM
    blocks in the public-key file.
    """
    secrets = _values(environ, "JWT_SECRET_KEY")
    secrets += tuple(s for s in environ.get("JWT_SECRET_KEYS", "").split(",") if s)
    public = _values(environ, "JWT_PUBLIC_KEY")
    public = tuple(block for text in public for block in _split_pem(text))
    default_algs = "HS256" if not public else ("HS256," if secrets else "") + "RS256,ES256"
    algorithms = tuple(a.strip() for a in environ.get("JWT_ALGORITHMS", default_algs).split(",") if a.strip())
    leeway = int(environ.get("JWT_LEEWAY", "0"))
    return IdentityConfig(secrets, public, algorithms, leeway, environ.get("JWT_AUDIENCE"), environ.get("JWT_ISSUER"))


def _values(environ: dict[str, str], name: str) -> tuple[str, ...]:
    out = []
    if environ.get(name):
        out.append(environ[name])
    if environ.get(f"{name}_FILE"):
        with open(environ[f"{name}_FILE"], encoding="utf-8") as fh:
            out.append(fh.read().strip())
    return tuple(out)


def _split_pem(text: str) -> Sequence[str]:
    marker = "-----END"
    if text.count(marker) <= 1:
        return [text]
    blocks, current = [], []
    for line in text.splitlines():
        current.append(line)
        if line.startswith(marker):
            blocks.append("\n".join(current))
            current = []
    return blocks


def identify(verifier: Verifier | None, authorization: str | None) -> tuple[Identity | None, str | None]:
    """(identity, None) for a verified bearer token; else (None, why): ``malformed``, ``not-configured``
    or the verifier's reason; (None, None) when there is no Authorization at all."""
    token = bearer_token(authorization)
    if token is None:
        return None, "malformed" if authorization else None
    if verifier is None:
        return None, "not-configured"
    try:
        return verifier.verify(token), None
    except IdentityError as exc:
        return None, exc.reason
