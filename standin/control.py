"""Shared state of one stand-in instance and its test hooks under ``/_standin/`` (no auth).

Owns: the request/query counters, the delay, the gate, injected failures and the rate limiter's
numbers, plus the control endpoints that read and steer them. Tests and benchmarks use these to
count what reached the backend and to force races and failures deterministically:

========================================  ====================================================================
``GET  /_standin/health``                 200 ``{"status": "ok"}``
``GET  /_standin/stats``                  ``{"requests": n, "queries": n, "by_route": {"GET /api/v1/users/profile": n},
                                          "counter": <global version>, "delay_ms": n}``. ``requests``: every
                                          /api/v1 request received (401s, 404s, injected failures, preflights
                                          included); ``queries``: those that touched the DB (token accepted,
                                          handler reached); ``by_route``: matched requests by method + route
                                          template (unmatched paths are not listed).
``POST /_standin/reset-stats``            zero the three counters.
``POST /_standin/users/{id}/deactivate``  the user's tokens get 401 (user created if unknown);
``POST /_standin/users/{id}/activate``    and back.
``GET|POST /_standin/delay``              ``{"delay_ms": n}``: sleep per DB-touching request.
``POST /_standin/gate``                   ``{"method": "GET", "path": "/api/v1/users/profile", "count": 1,
                                          "timeout_s": 30}`` arms the gate: the next ``count`` matching
                                          requests read their data, then wait before answering until
                                          released (or ``timeout_s``). ``path`` is the raw path or the route
                                          template; ``method`` may be ``"*"``.
``GET  /_standin/gate``                   ``{"armed": bool, "waiting": n, "held_total": n}``; poll until
                                          ``waiting`` >= 1 to know the held request has read its data.
``POST /_standin/gate/release``           release every held request and disarm.
``POST /_standin/fail``                   ``{"method", "path", "status": 503, "count": 1, "response_code"?,
                                          "delay_ms"?}``: the next ``count`` matching requests answer
                                          ``status`` with ``{"detail": "Injected failure"}`` without touching
                                          the DB (after ``delay_ms`` if given). With ``response_code`` the
                                          answer is the envelope instead (HTTP ``status``, default 200,
                                          ``header.responseCode`` = response_code), e.g. an app-level 500.
``DELETE /_standin/fail``                 drop all pending injected failures.
========================================  ====================================================================

In-process tests can use ``app[STATE]`` directly: ``state.gate.held`` is an ``asyncio.Event`` set when a
request is being held, ``state.gate.arm(...)`` / ``state.gate.release()``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

from aiohttp import web

from .db import Store


def match_spec(spec_method: str, spec_path: str, method: str, path: str, template: str | None) -> bool:
    return spec_method in ("*", method) and spec_path in (path, template)


class Gate:
    """Holds matching requests after their DB work until released (deterministic race tests)."""

    def __init__(self) -> None:
        self.method, self.path = "", ""
        self.remaining = 0
        self.waiting = 0
        self.held_total = 0
        self.timeout = 30.0
        self.held = asyncio.Event()
        self._release = asyncio.Event()

    @property
    def armed(self) -> bool:
        return self.remaining > 0

    def arm(self, method: str, path: str, count: int = 1, timeout: float = 30.0) -> None:
        self.method, self.path = method.upper(), path
        self.remaining, self.timeout = count, timeout
        self.held.clear()
        self._release = asyncio.Event()

    def matches(self, method: str, path: str, template: str | None) -> bool:
        return self.armed and match_spec(self.method, self.path, method, path, template)

    async def hold(self) -> None:
        self.remaining -= 1
        self.waiting += 1
        self.held_total += 1
        self.held.set()
        release = self._release
        try:
            await asyncio.wait_for(release.wait(), self.timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self.remaining = 0
        self._release.set()
        self._release = asyncio.Event()
        self.held.clear()


class RateLimiter:
    """Fixed one-minute window per caller key (``user:<sub>`` or ``ip:<addr>``)."""

    def __init__(self, limit: int, window: int = 60) -> None:
        self.limit, self.window = limit, window
        self.hits: dict[str, list[int]] = {}

    def hit(self, key: str) -> tuple[bool, int, int]:
        """(allowed, remaining, reset as epoch seconds)."""
        start = int(time.time()) // self.window * self.window
        w = self.hits.get(key)
        if w is None or w[0] != start:
            if len(self.hits) > 100_000:
                self.hits.clear()
            w = self.hits[key] = [start, 0]
        w[1] += 1
        return w[1] <= self.limit, max(0, self.limit - w[1]), start + self.window


class State:
    """Everything mutable of one stand-in app (``app[STATE]``)."""

    def __init__(self, store: Store, secret: str, delay_ms: float, rate_limit: int) -> None:
        self.store = store
        self.secret = secret
        self.delay_ms = delay_ms
        self.limiter = RateLimiter(rate_limit)
        self.gate = Gate()
        self.failures: list[dict[str, Any]] = []
        self.token_cache: dict[str, tuple[str, float]] = {}
        self.requests = 0
        self.queries = 0
        self.by_route: Counter[str] = Counter()

    def take_failure(self, method: str, path: str, template: str | None) -> dict[str, Any] | None:
        for f in self.failures:
            if match_spec(f["method"], f["path"], method, path, template):
                f["count"] -= 1
                if f["count"] <= 0:
                    self.failures.remove(f)
                return f
        return None


STATE = web.AppKey("standin_state", State)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(obj), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        obj = json.loads(await request.read() or b"{}")
    except ValueError as e:
        raise web.HTTPUnprocessableEntity(text=json.dumps({"detail": f"invalid JSON: {e}"}),
                                          content_type="application/json")
    if not isinstance(obj, dict):
        raise web.HTTPUnprocessableEntity(text='{"detail": "expected a JSON object"}',
                                          content_type="application/json")
    return obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    val = obj.get(name, default)
    if val is ... or not isinstance(val, kind) or (isinstance(val, bool) and kind is not bool):
        what = getattr(kind, "__name__", "number")
        raise web.HTTPUnprocessableEntity(text=json.dumps({"detail": f"field {name!r}: expected {what}"}),
                                          content_type="application/json")
    return val


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return _json({"requests": st.requests, "queries": st.queries, "by_route": dict(st.by_route),
                  "counter": st.store.counter(), "delay_ms": st.delay_ms})


async def reset_stats(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.requests = st.queries = 0
    st.by_route.clear()
    return _json({"reset": True})


async def set_active(request: web.Request) -> web.Response:
    uid = request.match_info["user_id"]
    active = request.match_info["action"] == "activate"
    request.app[STATE].store.set_active(uid, active)
    return _json({"user_id": uid, "active": active})


async def delay(request: web.Request) -> web.Response:
    st = request.app[STATE]
    if request.method == "POST":
        ms = _field(await _body(request), "delay_ms", (int, float))
        if ms < 0:
            raise web.HTTPUnprocessableEntity(text='{"detail": "delay_ms must be >= 0"}',
                                              content_type="application/json")
        st.delay_ms = ms
    return _json({"delay_ms": st.delay_ms})


def _gate_view(gate: Gate) -> dict[str, Any]:
    return {"armed": gate.armed, "waiting": gate.waiting, "held_total": gate.held_total,
            "method": gate.method if gate.armed else None, "path": gate.path if gate.armed else None}


async def gate(request: web.Request) -> web.Response:
    g = request.app[STATE].gate
    if request.method == "POST":
        obj = await _body(request)
        g.arm(_field(obj, "method", str), _field(obj, "path", str), _field(obj, "count", int, 1),
              float(_field(obj, "timeout_s", (int, float), 30.0)))
    return _json(_gate_view(g))


async def gate_release(request: web.Request) -> web.Response:
    g = request.app[STATE].gate
    released = g.waiting
    g.release()
    return _json({**_gate_view(g), "released": released})


async def fail(request: web.Request) -> web.Response:
    st = request.app[STATE]
    if request.method == "DELETE":
        st.failures.clear()
        return _json({"failures": []})
    obj = await _body(request)
    rc = obj.get("response_code")
    if rc is not None:
        rc = _field(obj, "response_code", int)
    spec = {"method": _field(obj, "method", str).upper(), "path": _field(obj, "path", str),
            "status": _field(obj, "status", int, 503 if rc is None else 200),
            "count": _field(obj, "count", int, 1), "response_code": rc,
            "delay_ms": _field(obj, "delay_ms", (int, float), 0)}
    if not 100 <= spec["status"] <= 599:
        raise web.HTTPUnprocessableEntity(text='{"detail": "status must be 100..599"}',
                                          content_type="application/json")
    st.failures.append(spec)
    return _json({"failures": st.failures})


def add_control_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_standin/health", health, allow_head=False)
    r.add_get("/_standin/stats", stats, allow_head=False)
    r.add_post("/_standin/reset-stats", reset_stats)
    r.add_post("/_standin/users/{user_id}/{action:activate|deactivate}", set_active)
    r.add_route("GET", "/_standin/delay", delay)
    r.add_post("/_standin/delay", delay)
    r.add_route("GET", "/_standin/gate", gate)
    r.add_post("/_standin/gate", gate)
    r.add_post("/_standin/gate/release", gate_release)
    r.add_post("/_standin/fail", fail)
    r.add_delete("/_standin/fail", fail)
