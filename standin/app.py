"""The stand-in's HTTP face: the katiba360 /api/v1 routes, auth, envelope, validation, middleware.

Owns ``build_app()`` and the behaviour of the upstream contract (upstream-api.md, katiba360):
identity from ``Authorization: Bearer <HS256 JWT>`` (``sub`` + ``exp`` required; users created on first
sight; missing/malformed/expired/forged token or deactivated user -> HTTP 401 ``{"detail": ...}``);
the envelope ``{"header": {requestRefId, responseCode, responseMessage, customerMessage, timestamp},
"body": {...}}`` with application errors as HTTP 200 + ``header.responseCode`` 400/404; unknown route
-> 404 ``{"detail": "Not Found"}``; bad JSON / wrong field types / bad query ints -> 422 ``{"detail":
[...]}`` (FastAPI-shaped); per-caller ``X-RateLimit-*`` (``user:<sub>``, or client IP for anonymous and
``/auth/*`` traffic; over the limit -> 429); CORS echo + ``Vary: Origin`` when ``Origin`` is sent; a
trailing slash on a known route -> 307 with an absolute ``Location`` from the request's Host; no
Cache-Control/ETag/Last-Modified ever. Auth decision: every /api/v1 route needs a valid token except
``GET /achievements/types`` (public) and ``POST /auth/login`` (issues one); the global reads
(leaderboard, recent) do require one. Each request that touched the DB sleeps ``delay_ms`` once
after its DB work (and after the gate, see control.py).

Versions (``body.version``; one global counter that only grows, see db.py). After a write answered
with ``body.version`` = V, every GET that write affects shows ``body.version`` >= V:

==========================================  ==========================================================
GET route                                   body.version = ...           changed by (caller U, or target)
==========================================  ==========================================================
/users/profile, /auth/me                    profile(U)                   PUT /users/profile
/users/preferences                          preferences(U)               POST /users/preferences
/users/languages                            languages(U)                 POST/DELETE /users/languages
/users/interests                            interests(U)                 POST/DELETE /users/interests
/users/accessibility                        accessibility(U)             POST /users/accessibility
/users/stats, /achievements,                achievements(U)              POST /achievements (U),
/achievements/summary, /achievements/stats,                              POST /achievements/award (target)
/achievements/type/{t}, /achievements/{id}
  (found: that badge's own version)
/users/profile/full                         max of the six above         any of the writes above
/achievements/leaderboard, /recent          max(last award to anyone,    any award; a profile update of a
                                            profile(u) of rows shown)    user shown on that page
/achievements/types                         0 (static)                   nothing
==========================================  ==========================================================

Successful writes answer ``body.version`` = the new counter value; login/refresh answer the caller's
profile version. Users created on first sight start at version 0. Each leaderboard/recent row has
its own ``version`` too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from . import DEFAULT_RATE_LIMIT, DEFAULT_SECRET
from .control import STATE, State, add_control_routes
from .db import BADGE_TYPES, FONT_SIZES, THEMES, UI_LANGUAGES, Conflict, NotFound, Store
from .wire import (AppError, HTTPFail, detail, envelope, issue_token, read_body, read_int,
                   token_subject, client_ip)

log = logging.getLogger("standin")
API = "/api/v1"


# -- endpoint plumbing ------------------------------------------------------------------------
@dataclass
class Ctx:
    st: State
    store: Store
    uid: str | None
    match: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)


Reply = tuple[str, str, dict[str, Any]]  # responseMessage, customerMessage, body (responseCode 200)


def endpoint(fn: Callable[[Ctx], Reply], *, auth: bool = True, body: dict | None = None,
             query: dict | None = None, path_int: tuple[str, ...] = ()) -> Callable:
    """Wrap a synchronous DB function ``fn(ctx) -> Reply`` into an aiohttp handler."""

    async def handler(request: web.Request) -> web.Response:
        st = request.app[STATE]
        try:
            uid = token_subject(st, request) if auth else None
        except HTTPFail as e:
            return detail(e.status, e.detail)
        errors: list = []
        ctx = Ctx(st, st.store, uid, dict(request.match_info))
        for name in path_int:
            ctx.match[name] = read_int(ctx.match[name], ["path", name], None, None, None, errors)
        for name, (default, lo, hi) in (query or {}).items():
            ctx.query[name] = read_int(request.query.get(name), ["query", name], default, lo, hi, errors)
        if body is not None:
            ctx.body = await read_body(request, body, errors)
        st.queries += 1
        try:
            if uid is not None and not st.store.ensure_user(uid)["active"]:
                raise HTTPFail(401, "User account is deactivated")
            if errors:
                raise HTTPFail(422, errors)
            message, customer, out = fn(ctx)
            resp = envelope(200, message, customer, out)
        except HTTPFail as e:
            resp = detail(e.status, e.detail)
        except AppError as e:
            resp = envelope(e.code, e.message, e.message, e.body)
        template = request.match_info.route.resource.canonical
        if st.gate.matches(request.method, request.path, template):
            await st.gate.hold()
        if st.delay_ms:
            await asyncio.sleep(st.delay_ms / 1000)
        return resp

    return handler


def reader(method: str, message: str, customer: str) -> Callable[[Ctx], Reply]:
    return lambda c: (message, customer, getattr(c.store, method)(c.uid))


def _text(c: Ctx, name: str, lo: int, hi: int) -> str | None:
    val = c.body.get(name)
    if val is None:
        return None
    val = val.strip()
    if not lo <= len(val) <= hi:
        raise AppError(400, f"{name} must be {lo} to {hi} characters long")
    return val


def _choice(c: Ctx, name: str, allowed: tuple[str, ...] | dict) -> str | None:
    val = c.body.get(name)
    if val is not None and val not in allowed:
        raise AppError(400, f"Invalid {name} {val!r}; expected one of {', '.join(allowed)}")
    return val


# -- route handlers (sync DB work) --------------------------------------------------------------
def get_achievement(c: Ctx) -> Reply:
    try:
        out = c.store.achievement(c.uid, c.match["achievement_id"])
    except NotFound as e:
        raise AppError(404, "Achievement not found",
                       {"achievement_id": c.match["achievement_id"], "version": e.args[0]}) from None
    return "Achievement retrieved successfully", "Your achievement has been retrieved", out


def get_by_type(c: Ctx) -> Reply:
    bt = c.match["badge_type"]
    out = c.store.achievements_by_type(c.uid, bt)
    if bt not in BADGE_TYPES:
        raise AppError(400, f"Invalid badge type {bt!r}",
                       {"badge_type": bt, "valid_badge_types": list(BADGE_TYPES), "version": out["version"]})
    return f"User {bt} badges retrieved successfully", f"Your {bt} badges have been retrieved", out


def leaderboard(c: Ctx) -> Reply:
    return ("Achievement leaderboard retrieved successfully", "The achievement leaderboard has been retrieved",
            c.store.leaderboard(c.query["limit"], c.query["offset"]))


def recent(c: Ctx) -> Reply:
    return ("Recent achievements retrieved successfully", "Recent achievements have been retrieved",
            c.store.recent(c.query["limit"]))


def put_profile(c: Ctx) -> Reply:
    fields = {"display_name": _text(c, "display_name", 1, 100), "bio": _text(c, "bio", 0, 500)}
    out = c.store.update_profile(c.uid, {k: v for k, v in fields.items() if v is not None})
    return "Profile updated successfully", "Your profile has been updated", out


def post_preferences(c: Ctx) -> Reply:
    fields = {"theme": _choice(c, "theme", THEMES), "language": _choice(c, "language", UI_LANGUAGES),
              "notifications_enabled": c.body.get("notifications_enabled")}
    out = c.store.update_preferences(c.uid, {k: v for k, v in fields.items() if v is not None})
    return "Preferences updated successfully", "Your preferences have been saved", out


def post_accessibility(c: Ctx) -> Reply:
    fields = {"font_size": _choice(c, "font_size", FONT_SIZES), "high_contrast": c.body.get("high_contrast")}
    out = c.store.update_accessibility(c.uid, {k: v for k, v in fields.items() if v is not None})
    return "Accessibility settings updated successfully", "Your accessibility settings have been saved", out


def add_item(table: str, name: str, lo: int, hi: int) -> Callable[[Ctx], Reply]:
    what = table[:-1]

    def fn(c: Ctx) -> Reply:
        try:
            out = c.store.add_item(table, c.uid, _text(c, name, lo, hi))
        except Conflict:
            raise AppError(400, f"{what.capitalize()} already added") from None
        return f"{what.capitalize()} added successfully", f"Your {what} has been added", out
    return fn


def delete_item(table: str) -> Callable[[Ctx], Reply]:
    what = table[:-1]

    def fn(c: Ctx) -> Reply:
        try:
            out = c.store.delete_item(table, c.uid, c.match["id"])
        except NotFound:
            raise AppError(404, f"{what.capitalize()} not found", {"id": c.match["id"]}) from None
        return f"{what.capitalize()} removed successfully", f"Your {what} has been removed", out
    return fn


def award(c: Ctx) -> Reply:
    target = c.body.get("user_id", c.uid)
    if not target:
        raise AppError(400, "user_id must not be empty")
    bt = _choice(c, "badge_type", BADGE_TYPES)
    out = c.store.award(target, bt, c.body.get("achievement_data") or {})
    return "Achievement awarded successfully", "Congratulations! You've earned a new achievement", out


def create_achievement(c: Ctx) -> Reply:
    c.body["user_id"] = c.uid  # POST /achievements: always the caller
    return award(c)


def login(c: Ctx) -> Reply:
    uid = c.body["user_id"]
    if not 1 <= len(uid) <= 256:
        raise AppError(400, "user_id must be 1 to 256 characters long")
    if not c.store.ensure_user(uid)["active"]:
        raise HTTPFail(401, "User account is deactivated")
    out = {**issue_token(c.st, uid), "version": c.store.profile(uid)["version"]}
    return "Login successful", "Welcome back", out


def refresh(c: Ctx) -> Reply:
    out = {**issue_token(c.st, c.uid), "version": c.store.profile(c.uid)["version"]}
    return "Token refreshed successfully", "Your session has been extended", out


S, B, D = str, bool, dict
ROUTES: list[tuple[str, str, Callable]] = [
    ("GET", "/users/profile", endpoint(reader("profile", "User profile retrieved successfully",
                                              "Your profile has been retrieved"))),
    ("GET", "/users/profile/full", endpoint(reader("full_profile", "Full user profile retrieved successfully",
                                                   "Your full profile has been retrieved"))),
    ("GET", "/users/preferences", endpoint(reader("preferences", "User preferences retrieved successfully",
                                                  "Your preferences have been retrieved"))),
    ("GET", "/users/languages", endpoint(reader("languages", "User languages retrieved successfully",
                                                "Your languages have been retrieved"))),
    ("GET", "/users/accessibility", endpoint(reader("accessibility", "Accessibility settings retrieved "
                                                    "successfully", "Your accessibility settings have been "
                                                    "retrieved"))),
    ("GET", "/users/interests", endpoint(reader("interests", "User interests retrieved successfully",
                                                "Your interests have been retrieved"))),
    ("GET", "/users/stats", endpoint(reader("user_stats", "User statistics retrieved successfully",
                                            "Your statistics have been retrieved"))),
    ("GET", "/auth/me", endpoint(reader("me", "Current user retrieved successfully", "Welcome back"))),
    ("GET", "/achievements", endpoint(reader("achievements", "User achievements retrieved successfully",
                                             "Your achievements have been retrieved"))),
    ("GET", "/achievements/summary", endpoint(reader("achievement_summary", "User achievement summary "
                                                     "retrieved successfully", "Your achievement summary has "
                                                     "been retrieved"))),
    ("GET", "/achievements/stats", endpoint(reader("achievement_stats", "User achievement statistics "
                                                   "retrieved successfully", "Your achievement statistics "
                                                   "have been retrieved"))),
    ("GET", "/achievements/types", endpoint(lambda c: ("Badge types retrieved successfully",
                                                       "Badge types have been retrieved",
                                                       Store.badge_types()), auth=False)),
    ("GET", "/achievements/leaderboard", endpoint(leaderboard, query={"limit": (10, 1, 100),
                                                                      "offset": (0, 0, None)})),
    ("GET", "/achievements/recent", endpoint(recent, query={"limit": (20, 1, 50)})),
    ("GET", "/achievements/type/{badge_type}", endpoint(get_by_type)),
    ("GET", "/achievements/{achievement_id}", endpoint(get_achievement)),
    ("PUT", "/users/profile", endpoint(put_profile, body={"display_name": (S, False), "bio": (S, False)})),
    ("POST", "/users/preferences", endpoint(post_preferences, body={
        "theme": (S, False), "language": (S, False), "notifications_enabled": (B, False)})),
    ("POST", "/users/languages", endpoint(add_item("languages", "language_code", 2, 10),
                                          body={"language_code": (S, True)})),
    ("DELETE", "/users/languages/{id}", endpoint(delete_item("languages"), path_int=("id",))),
    ("POST", "/users/interests", endpoint(add_item("interests", "interest", 1, 100),
                                          body={"interest": (S, True)})),
    ("DELETE", "/users/interests/{id}", endpoint(delete_item("interests"), path_int=("id",))),
    ("POST", "/users/accessibility", endpoint(post_accessibility, body={
        "font_size": (S, False), "high_contrast": (B, False)})),
    ("POST", "/achievements", endpoint(create_achievement, body={"badge_type": (S, True),
                                                                  "achievement_data": (D, False)})),
    ("POST", "/achievements/award", endpoint(award, body={
        "user_id": (S, False), "badge_type": (S, True), "achievement_data": (D, False)})),
    ("POST", "/auth/login", endpoint(login, auth=False, body={"user_id": (S, True)})),
    ("POST", "/auth/refresh", endpoint(refresh)),
]


# -- middleware -------------------------------------------------------------------------------
@web.middleware
async def middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    st = request.app[STATE]
    origin = request.headers.get("Origin")
    is_api = request.path == API or request.path.startswith(API + "/")
    if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
        st.requests += is_api
        resp: web.StreamResponse = web.Response(text="OK", headers={
            "Access-Control-Allow-Methods": "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT",
            "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
            "Access-Control-Max-Age": "600"})
    elif is_api:
        resp = await api_request(request, handler, st)
    else:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            resp = (web.Response(status=e.status, text=e.text, content_type=e.content_type)
                    if e.content_type == "application/json" else detail(e.status, e.reason))
    if origin:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Credentials"] = "true"
        vary = resp.headers.get("Vary")
        resp.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
    return resp


async def api_request(request: web.Request, handler: Callable, st: State) -> web.StreamResponse:
    st.requests += 1
    method, path = request.method, request.path
    route = request.match_info.route
    template = route.resource.canonical if request.match_info.http_exception is None else None
    if template is not None:
        st.by_route[f"{method} {template}"] += 1
    elif (moved := await _slash_redirect(request)) is not None:
        return moved
    failure = st.take_failure(method, path, template)
    if failure is not None:
        if failure["delay_ms"]:
            await asyncio.sleep(failure["delay_ms"] / 1000)
        if failure["response_code"] is not None:
            return envelope(failure["response_code"], "Injected failure", "Something went wrong", {},
                            status=failure["status"])
        return detail(failure["status"], "Injected failure")
    sub = None
    if not path.startswith(API + "/auth/") and "Authorization" in request.headers:
        try:
            sub = token_subject(st, request)
        except HTTPFail:
            pass
    key = f"user:{sub}" if sub is not None else f"ip:{client_ip(request, request.app[TRUSTED])}"
    allowed, remaining, reset = st.limiter.hit(key)
    if not allowed:
        resp: web.StreamResponse = detail(429, "Rate limit exceeded")
        resp.headers["Retry-After"] = str(max(1, reset - int(time.time())))
    else:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            resp = detail(e.status, e.reason)
        except Exception:  # never a traceback page
            log.exception("unhandled error on %s %s", method, path)
            resp = detail(500, "Internal Server Error")
    resp.headers["X-RateLimit-Limit"] = str(st.limiter.limit)
    resp.headers["X-RateLimit-Remaining"] = str(remaining)
    resp.headers["X-RateLimit-Reset"] = str(reset)
    return resp


async def _slash_redirect(request: web.Request) -> web.Response | None:
    """FastAPI's ``redirect_slashes``: a path that matches a route once its trailing slash is dropped
    answers 307 with an absolute Location built from the request's own Host, as the real backend does."""
    path = request.path
    if not path.endswith("/") or path == API + "/":
        return None
    target = request.rel_url.with_path(path.rstrip("/")).with_query(request.rel_url.query)
    match = await request.app.router.resolve(request.clone(rel_url=target))
    if match.http_exception is not None:
        return None
    return web.Response(status=307, headers={"Location": f"{request.scheme}://{request.host}{target}"})


TRUSTED = web.AppKey("standin_trusted_proxies", frozenset)


def _secret_from_env() -> str:
    path = os.environ.get("JWT_SECRET_KEY_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get("JWT_SECRET_KEY") or DEFAULT_SECRET


def build_app(delay_ms: float = 20, secret: str | None = None, db_path: str = ":memory:",
              rate_limit: int | None = None,
              trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")) -> web.Application:
    """The stand-in as an aiohttp app. ``secret``: else env JWT_SECRET_KEY(_FILE), else DEFAULT_SECRET;
    ``rate_limit`` requests per caller per minute: else env STANDIN_RATE_LIMIT, else DEFAULT_RATE_LIMIT."""
    if rate_limit is None:
        rate_limit = int(os.environ.get("STANDIN_RATE_LIMIT", DEFAULT_RATE_LIMIT))
    store = Store(db_path)
    app = web.Application(middlewares=[middleware])
    app[STATE] = State(store, secret or _secret_from_env(), delay_ms, rate_limit)
    app[TRUSTED] = frozenset(trusted_proxies)
    for method, path, handler in ROUTES:
        if method == "GET":
            app.router.add_get(API + path, handler, allow_head=False)
        else:
            app.router.add_route(method, API + path, handler)
    add_control_routes(app)

    async def close(app: web.Application) -> None:
        app[STATE].gate.release()
        store.close()

    app.on_cleanup.append(close)
    return app
