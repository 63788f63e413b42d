"""Wire-level helpers of the stand-in: JSON, the katiba360 envelope, HTTP errors, JWT identity and
FastAPI/pydantic-shaped request validation (422 details). No routes here; see app.py.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import jwt
from aiohttp import web

from .control import State

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover
    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

TOKEN_TTL = 3600


class AppError(Exception):
    """An application error: HTTP 200, header.responseCode = code."""

    def __init__(self, code: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.body = code, message, body or {}


class HTTPFail(Exception):
    """A real HTTP error (401, 422, 429) with a FastAPI-style ``detail``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=dumps(obj), content_type="application/json", headers=headers)


def detail(status: int, msg: Any) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return json_response(status, {"detail": msg}, headers)


def envelope(code: int, message: str, customer: str, body: Any, status: int = 200) -> web.Response:
    header = {"requestRefId": str(uuid.uuid4()), "responseCode": code, "responseMessage": message,
              "customerMessage": customer, "timestamp": datetime.now(timezone.utc).isoformat()}
    return json_response(status, {"header": header, "body": body})


# -- identity ---------------------------------------------------------------------------------
def token_subject(st: State, request: web.Request) -> str:
    """The verified ``sub`` of the request's bearer token (cached on the request), or HTTPFail 401."""
    if "standin_sub" in request:
        sub = request["standin_sub"]
        if isinstance(sub, HTTPFail):
            raise sub
        return sub
    try:
        sub = _verify(st, request.headers.get("Authorization", ""))
    except HTTPFail as e:
        request["standin_sub"] = e
        raise
    request["standin_sub"] = sub
    return sub


def token_subject_of(st: State, authorization: str) -> str:
    """The verified ``sub`` of an ``Authorization`` value, or HTTPFail 401 (no request needed)."""
    return _verify(st, authorization)


def _verify(st: State, auth: str) -> str:
    # As the real backend: the scheme exactly "Bearer" and one space (bearer, BEARER, two spaces: 401).
    scheme, _, token = auth.partition(" ")
    if scheme != "Bearer" or not token or not token.isascii() or any(c.isspace() for c in token) \
            or token != token.strip():
        raise HTTPFail(401, "Not authenticated")
    hit = st.token_cache.get(token)
    if hit is not None:
        if time.time() >= hit[1]:
            raise HTTPFail(401, "Token has expired")
        return hit[0]
    try:
        claims = jwt.decode(token, st.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise HTTPFail(401, "Token has expired") from None
    except jwt.InvalidTokenError:
        raise HTTPFail(401, "Could not validate credentials") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise HTTPFail(401, "Could not validate credentials")
    if len(st.token_cache) > 50_000:
        st.token_cache.clear()
    st.token_cache[token] = (sub, float(claims["exp"]))
    return sub


def issue_token(st: State, uid: str) -> dict[str, Any]:
    now = int(time.time())
    token = jwt.encode({"sub": uid, "iat": now, "exp": now + TOKEN_TTL, "jti": uuid.uuid4().hex},
                       st.secret, algorithm="HS256")
    return {"access_token": token, "token_type": "bearer", "expires_in": TOKEN_TTL, "user_id": uid}


# -- validation (FastAPI/pydantic-shaped 422 details) -------------------------------------------
TYPE_ERRORS = {str: ("string_type", "Input should be a valid string"),
               bool: ("bool_type", "Input should be a valid boolean"),
               int: ("int_type", "Input should be a valid integer"),
               dict: ("dict_type", "Input should be a valid dictionary")}


async def read_body(request: web.Request, spec: dict[str, tuple[type, bool]], errors: list) -> dict:
    raw = await request.read()
    if not raw.strip():
        if any(req for _, req in spec.values()):
            errors.append({"type": "missing", "loc": ["body"], "msg": "Field required", "input": None})
        return {}
    try:
        obj = json.loads(raw)
    except ValueError as e:
        errors.append({"type": "json_invalid", "loc": ["body", getattr(e, "pos", 0)],
                       "msg": "JSON decode error", "input": {}, "ctx": {"error": str(e)}})
        return {}
    if not isinstance(obj, dict):
        errors.append({"type": "model_attributes_type", "loc": ["body"], "input": obj,
                       "msg": "Input should be a valid dictionary or object to extract fields from"})
        return {}
    out = {}
    for name, (kind, required) in spec.items():
        if name not in obj or (obj[name] is None and not required):
            if required:
                errors.append({"type": "missing", "loc": ["body", name], "msg": "Field required", "input": obj})
            continue
        val = obj[name]
        if not isinstance(val, kind) or (isinstance(val, bool) and kind is not bool):
            etype, msg = TYPE_ERRORS[kind]
            errors.append({"type": etype, "loc": ["body", name], "msg": msg, "input": val})
        else:
            out[name] = val
    return out


def read_int(raw: str | None, loc: list, default: int | None, lo: int | None, hi: int | None,
             errors: list) -> int | None:
    if raw is None:
        if default is None:
            errors.append({"type": "missing", "loc": loc, "msg": "Field required", "input": None})
        return default
    try:
        val = int(raw)
    except ValueError:
        errors.append({"type": "int_parsing", "loc": loc, "input": raw,
                       "msg": "Input should be a valid integer, unable to parse string as an integer"})
        return None
    if lo is not None and val < lo:
        errors.append({"type": "greater_than_equal", "loc": loc, "input": raw, "ctx": {"ge": lo},
                       "msg": f"Input should be greater than or equal to {lo}"})
    elif hi is not None and val > hi:
        errors.append({"type": "less_than_equal", "loc": loc, "input": raw, "ctx": {"le": hi},
                       "msg": f"Input should be less than or equal to {hi}"})
    return val


def client_ip(request: web.Request, trusted: frozenset[str]) -> str:
    remote = request.remote or "?"
    xff = request.headers.get("X-Forwarded-For")
    if remote in trusted and xff:
        hops = [h.strip() for h in xff.split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in trusted:
                return hop
        return hops[0] if hops else remote
    return remote
