"""Pieces the security battery shares: hostile tokens, exact request targets, raw HTTP/1.1 on a socket,
and a scripted origin that reflects what it was sent (so a stored body shows which request filled it)."""
from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from yarl import URL

from tests.functional.conftest import SECRET, Reply

OTHER_SECRET = "an-attackers-own-secret-0123456789abcdef"


def board_rules(prefix: str, more: str = "") -> str:
    """A rules file under ``prefix`` whose first rule caches the leaderboard (a global key, keyed by
    ``limit`` and ``offset``), followed by ``more`` rules (YAML list items, indented as these are)."""
    return f"""\
version: 1
prefix: "{prefix}"
defaults:
  auth: required
  cache_when: {{status: [200], json: {{path: header.responseCode, between: [200, 299]}}}}
  drop_headers: [X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset]
rules:
  - name: board
    match: GET /api/v1/achievements/leaderboard
    key: "achievements:global:leaderboard"
    vary_query: [limit, offset]
""" + more


# ----------------------------------------------------------------------------------------- tokens

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(claims: dict, key: bytes, alg: str = "HS256", header: dict | None = None) -> str:
    """An HMAC-signed JWT built by hand: PyJWT refuses some keys (a PEM as HMAC secret) we need to try."""
    head = b64(json.dumps(header or {"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return f"{head}.{body}.{b64(hmac.new(key, f'{head}.{body}'.encode(), digest).digest())}"


def unsigned(claims: dict) -> str:
    """``alg: none``: no signature at all."""
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}."


def claims(sub: Any, ttl: int = 3600, **extra: Any) -> dict:
    out = {"exp": int(time.time()) + ttl, **extra}
    if sub is not None:
        out["sub"] = sub
    return out


def bad_tokens(victim: str, other_token: str) -> dict[str, str]:
    """Every kind of bearer token that must not count as the victim (all name ``victim`` where they can)."""
    good_header, _, good_sig = other_token.split(".")
    return {
        "garbage": "not-a-jwt",
        "three-empty-parts": "..",
        "expired": jwt.encode(claims(victim, ttl=-60), SECRET, algorithm="HS256"),
        "not-yet-valid": jwt.encode(claims(victim, nbf=int(time.time()) + 3600), SECRET, algorithm="HS256"),
        "forged-signature": jwt.encode(claims(victim), OTHER_SECRET, algorithm="HS256"),
        # another user's real token with its payload swapped for the victim's: the signature no longer fits
        "swapped-payload": f"{good_header}.{b64(json.dumps(claims(victim)).encode())}.{good_sig}",
        "alg-none": unsigned(claims(victim)),
        "alg-none-with-signature": unsigned(claims(victim)) + good_sig,
        "hs512-not-configured": hand_signed(claims(victim), SECRET.encode(), "HS512"),
        "missing-sub": jwt.encode(claims(None), SECRET, algorithm="HS256"),
        "empty-sub": jwt.encode(claims(""), SECRET, algorithm="HS256"),
        "numeric-sub": hand_signed(claims(12345), SECRET.encode()),
        "missing-exp": jwt.encode({"sub": victim}, SECRET, algorithm="HS256"),
    }


# ------------------------------------------------------------------------------ exact request targets

async def send(base_url: str, method: str, target: str, headers: dict | None = None, data: Any = None,
               json_body: Any = None) -> Reply:
    """``method target`` exactly as written (no dot-segment removal, no re-quoting), on a new session."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.request(method, URL(base_url + target, encoded=True), headers=headers or {},
                                   data=data, json=json_body, allow_redirects=False) as resp:
            return Reply(resp.status, resp.headers, await resp.read())


def base_url(client) -> str:
    """The http://host:port of an aiohttp TestClient (the proxy's or an origin's)."""
    return f"http://{client.server.host}:{client.server.port}"


# -------------------------------------------------------------------------------------- raw HTTP

class RawReply:
    def __init__(self, data: bytes):
        self.data = data
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2) if lines and lines[0] else [b""]
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")

    def __repr__(self) -> str:
        return f"<RawReply {self.status} {self.data[:400]!r}>"


async def raw_exchange(host: str, port: int, chunks: list[bytes], limit: float = 10.0,
                       pause_between: float = 0.0) -> RawReply:
    """Write ``chunks`` (``pause_between`` seconds apart: a slow client), then read until the server
    closes the connection; ``limit`` bounds the whole exchange (a hang fails the test, it never waits)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async def go() -> bytes:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                if pause_between:
                    await asyncio.sleep(pause_between)
            return await reader.read(-1)
        return RawReply(await asyncio.wait_for(go(), limit))
    finally:
        writer.close()


async def raw_request(host: str, port: int, data: bytes, limit: float = 10.0) -> RawReply:
    """Write ``data`` on a new keep-alive connection and read one answer: its head, then as many bytes as
    its Content-Length says (or up to the close). Keep-alive requests can take the fast path, which
    requests with ``Connection: close`` never do. ``limit`` bounds the exchange (a hang fails)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async def go() -> bytes:
            writer.write(data)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = RawReply(head).headers.get("content-length")
            if length is None:
                return head + await reader.read(-1)
            return head + await reader.readexactly(int(length))
        return RawReply(await asyncio.wait_for(go(), limit))
    finally:
        writer.close()


# ------------------------------------------------------------------------------ the scripted origin

REFLECTED = ("host", "x-forwarded-host", "forwarded", "x-forwarded-proto", "x-forwarded-port", "x-forwarded-prefix",
             "x-forwarded-server", "x-host", "x-original-host", "x-original-url", "x-rewrite-url",
             "x-http-method-override", "accept-encoding", "cookie", "authorization", "content-length",
             "content-type", "expect", "if-none-match", "range")
OVERRIDES = ("x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url")


def subject(request: web.Request) -> str | None:
    """The ``sub`` of the bearer token, unverified (the proxy verified it; this origin only reflects it)."""
    token = request.headers.get("Authorization", "").partition(" ")[2]
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.InvalidTokenError:
        return None


class Reflector:
    """A real aiohttp origin on loopback. Counts requests per raw target (``hits``) and per target that
    came through the proxy (``via_proxy``: requests carrying ``X-Test-Via: proxy``).

    /reflect/*         JSON of the request line, the headers in REFLECTED and a per-target counter ``n``
    /override          like /reflect but answers an "admin page" when a method/URL override header is sent
    /negotiate         gzip when Accept-Encoding allows it, identity otherwise; ``Vary: Accept-Encoding``
    /always-gzip       gzip whatever was asked (a backend that ignores ``Accept-Encoding: identity``)
    /vary/{what}       ``Vary: <what>`` (``%2C`` separates several) and the request's Cookie in the body
    /cookie            a fresh ``Set-Cookie`` per answer
    /body              the length of the request body it read
    /items/{item}      deterministic: the decoded path value and the token's sub (no counter)
    /search            deterministic: the decoded query pairs, sorted (no counter)
    """

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.via_proxy: Counter[str] = Counter()
        self.app = web.Application()
        r = self.app.router
        r.add_route("*", "/items/{item:[^/]+}", self.items)  # braces too
        r.add_route("*", "/search", self.search)
        r.add_route("*", "/vary/{what}", self.vary)
        r.add_route("*", "/{tail:.*}", self.reflect)
        self.url = ""

    def _count(self, request: web.Request) -> int:
        self.hits[request.raw_path] += 1
        if request.headers.get("X-Test-Via") == "proxy":
            self.via_proxy[request.raw_path] += 1
        return self.hits[request.raw_path]

    def _seen(self, request: web.Request, n: int) -> dict:
        return {"n": n, "method": request.method, "path": request.path, "raw": request.raw_path,
                "headers": {h: request.headers.get(h) for h in REFLECTED if h in request.headers}}

    async def reflect(self, request: web.Request) -> web.StreamResponse:
        n = self._count(request)
        seen = self._seen(request, n)
        path = request.path
        headers: dict[str, str] = {"Content-Type": "application/json"}
        if path == "/override" and any(h in request.headers for h in OVERRIDES):
            seen["page"] = "ADMIN"
        if path == "/cookie":
            headers["Set-Cookie"] = f"session=s{n}-{uuid.uuid4().hex}; Path=/; HttpOnly"
        if path == "/body":
            seen["body_length"] = len(await request.read())
        body = json.dumps(seen).encode()
        if path == "/negotiate":
            headers["Vary"] = "Accept-Encoding"
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        if path == "/always-gzip":
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        return web.Response(body=body, headers=headers)

    async def vary(self, request: web.Request) -> web.Response:
        seen = self._seen(request, self._count(request))
        return web.json_response(seen, headers={"Vary": request.match_info["what"].replace("%2C", ",")})

    async def items(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.json_response({"item": request.match_info["item"], "sub": subject(request)})

    async def search(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.json_response({"query": sorted(request.query.items()), "sub": subject(request)})
