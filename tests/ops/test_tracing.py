"""Issue 20, item 6: W3C trace context reaches the backend, and OpenTelemetry spans when tracing is on.

Off (the default): ``traceparent`` and ``tracestate`` reach the backend unchanged on a miss, a write and a
pass-through; warming fetches carry a new trace. On (``proxy.serve.tracing.start`` with the SDK's
InMemorySpanExporter, as ``OTEL_TRACES_EXPORTER`` does with a real exporter): one SERVER span per request
with the cache outcome, rule and timings, CLIENT child spans for the store and the backend, the backend
seeing the client's trace id, and no user id or key in any attribute.
"""
from __future__ import annotations

import logging

import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import standin
from proxy.serve import tracing

from .conftest import Backend, PROFILE, auth

USER = "trace-user-0f1e2d3c4b5a"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TRACESTATE = "vendor1=opaque1,katiba=t61rcWkgMzE"
TYPES = "/api/v1/achievements/types"  # global, warmed (rules.yaml) with WARM_AUTHORIZATION
WARMER = auth("trace-warming-service")["Authorization"]
UNRULED = "/api/v1/auth/me-not-a-route"


class Recorder:
    """What the backend received: (method, path, traceparent, tracestate) per request, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, str | None]] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        self.seen.append((request.method, request.path, request.headers.get("traceparent"),
                          request.headers.get("tracestate")))
        return await handler(request)

    def last(self, method: str, path: str) -> tuple[str | None, str | None]:
        return next((tp, ts) for m, p, tp, ts in reversed(self.seen) if (m, p) == (method, path))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def backend(aiohttp_client, recorder) -> Backend:
    """The stand-in backend (a real server), recording the trace headers it receives."""
    app = standin.build_app(delay_ms=0)
    app.middlewares.append(recorder.middleware)
    return Backend(await aiohttp_client(app))


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    tracing.start(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.stop()


TRACE = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}


# ----------------------------------------------------------------------------- tracing off


async def test_off_trace_context_reaches_the_backend_unchanged(make_proxy, recorder):
    assert not tracing.ENABLED
    ops = await make_proxy()
    user = auth(USER)
    status, headers, _ = await ops.get(PROFILE, headers=user | TRACE)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert recorder.last("GET", PROFILE) == (TRACEPARENT, TRACESTATE)  # the fill: the filler's
    status, _, _ = await ops.request("PUT", PROFILE, headers=user | TRACE, json={"display_name": "traced"})
    assert status == 200
    assert recorder.last("PUT", PROFILE) == (TRACEPARENT, TRACESTATE)  # the write
    status, headers, _ = await ops.get(UNRULED, headers=user | TRACE)
    assert headers["X-Cache"] == "BYPASS"
    assert recorder.last("GET", UNRULED) == (TRACEPARENT, TRACESTATE)  # a pass-through


async def test_off_warming_starts_a_new_trace(make_proxy, recorder):
    ops = await make_proxy(warm_authorization=WARMER)
    real = ops.proxy.clock
    status, headers, _ = await ops.get(TYPES, headers=auth(USER) | TRACE)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert recorder.last("GET", TYPES) == (TRACEPARENT, TRACESTATE)
    ops.proxy.clock = lambda: real() + 86400 - 10  # ten seconds before the 24 h TTL ends
    assert await ops.proxy.warmer.warm_once(horizon=30) == 1
    traceparent, tracestate = recorder.last("GET", TYPES)
    assert traceparent is not None and tracestate is None
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert (version, len(trace_id), len(parent_id), flags) == ("00", 32, 16, "01")
    assert trace_id != TRACE_ID and int(trace_id, 16) != 0


# ------------------------------------------------------------------------------ tracing on


def _by_trace(exporter: InMemorySpanExporter, trace_id: int):
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def _no_identity_anywhere(exporter: InMemorySpanExporter, *secrets: str) -> None:
    for span in exporter.get_finished_spans():
        for value in [span.name, *map(str, span.attributes.values()), *span.attributes.keys()]:
            for secret in secrets:
                assert secret not in value, (span.name, dict(span.attributes))
        assert "katiba360:proxy" not in str(dict(span.attributes)), dict(span.attributes)  # no key


async def test_on_a_miss_then_a_hit_then_a_write(make_proxy, recorder, spans):
    ops = await make_proxy()
    user = auth(USER)
    trace_id = int(TRACE_ID, 16)

    status, headers, _ = await ops.get(PROFILE, headers=user | TRACE)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    traceparent, tracestate = recorder.last("GET", PROFILE)
    assert traceparent.split("-")[1] == TRACE_ID  # the backend sees the client's trace
    assert tracestate == TRACESTATE
    miss = _by_trace(spans, trace_id)
    server = [s for s in miss if s.kind == SpanKind.SERVER]
    assert len(server) == 1
    request = server[0]
    assert request.name == "GET user_profile"
    assert request.parent is not None and request.parent.span_id == int("00f067aa0ba902b7", 16)
    attributes = dict(request.attributes)
    assert attributes["katiba_cache.result"] == "miss" and attributes["katiba_cache.rule"] == "user_profile"
    assert attributes["http.route"] == PROFILE and attributes["http.response.status_code"] == 200
    assert "fwd=uri-miss" in attributes["katiba_cache.cache_status"]
    assert attributes["katiba_cache.store.calls"] >= 1 and attributes["katiba_cache.upstream.calls"] == 1
    assert attributes["katiba_cache.upstream.duration_ms"] > 0 and attributes["katiba_cache.store.duration_ms"] > 0
    children = [s for s in miss if s.parent is not None and s.parent.span_id == request.context.span_id]
    names = sorted(s.name for s in children)
    assert "store lookup" in names and "GET" in names, names
    upstream = next(s for s in children if s.name == "GET")
    assert upstream.kind == SpanKind.CLIENT and upstream.attributes["http.response.status_code"] == 200
    assert int(traceparent.split("-")[2], 16) == upstream.context.span_id  # the backend's parent: that span

    spans.clear()
    for _ in range(200):  # the fill's store write goes out behind the answer
        status, headers, _ = await ops.get(PROFILE, headers=user | TRACE)
        if headers["X-Cache"] == "HIT":
            break
    assert headers["X-Cache"] == "HIT"
    hit = [s for s in _by_trace(spans, trace_id) if s.kind == SpanKind.SERVER][-1]
    assert hit.attributes["katiba_cache.result"] == "hit" and hit.attributes["katiba_cache.upstream.calls"] == 0
    assert hit.attributes["katiba_cache.store.calls"] == 1

    spans.clear()
    status, _, _ = await ops.request("PUT", PROFILE, headers=user | TRACE, json={"display_name": "traced"})
    assert status == 200
    assert recorder.last("PUT", PROFILE)[0].split("-")[1] == TRACE_ID
    write = _by_trace(spans, trace_id)
    request = next(s for s in write if s.kind == SpanKind.SERVER)
    assert request.name == "PUT update_profile" and request.attributes["katiba_cache.result"] == "bypass"
    children = {s.name for s in write if s.parent is not None and s.parent.span_id == request.context.span_id}
    assert {"PUT", "store bump"} <= children, children
    _no_identity_anywhere(spans, USER)


async def test_on_a_pass_through_keeps_the_trace_and_warming_starts_a_new_one(make_proxy, recorder, spans):
    ops = await make_proxy(warm_authorization=WARMER)
    status, headers, _ = await ops.get(UNRULED, headers=auth(USER) | TRACE)
    assert headers["X-Cache"] == "BYPASS"
    assert recorder.last("GET", UNRULED)[0].split("-")[1] == TRACE_ID
    status, headers, _ = await ops.get(TYPES, headers=auth(USER) | TRACE)
    assert headers["X-Cache"] == "MISS"
    real = ops.proxy.clock
    ops.proxy.clock = lambda: real() + 86400 - 10
    assert await ops.proxy.warmer.warm_once(horizon=30) == 1
    warmed = recorder.last("GET", TYPES)[0].split("-")[1]
    assert warmed != TRACE_ID
    assert any(s.kind == SpanKind.CLIENT and s.context.trace_id == int(warmed, 16) for s in spans.get_finished_spans())
    _no_identity_anywhere(spans, USER)


async def test_on_the_fast_path_steps_aside(make_proxy, spans):
    """Decision: traced, every request takes aiohttp's path (the fast path is not installed), so a hit the
    fast path would have answered still gets its span."""
    ops = await make_proxy()
    user = auth(USER)
    for _ in range(3):
        await ops.get(PROFILE, headers=user)
    assert await ops.metric("katiba_cache_fast_path_total", outcome="answered") == 0
    results = [s.attributes["katiba_cache.result"] for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER
               and s.attributes.get("katiba_cache.rule") == "user_profile"]
    assert len(results) == 3 and results[0] == "miss", results


def test_configuration_from_the_environment(caplog):
    assert tracing.configure_from_env({}) is False and not tracing.ENABLED  # off by default
    assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "none"}) is False
    assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) is False
    with caplog.at_level(logging.ERROR, logger="proxy"):
        assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "no-such-exporter"}) is False
    assert not tracing.ENABLED
    record = next(r for r in caplog.records if getattr(r, "event", "") == "tracing_unavailable")
    assert "no-such-exporter" in record.getMessage() and "pip install" in record.detail
    try:
        assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "console"}) is True
        assert tracing.ENABLED
    finally:
        tracing.stop()
    assert not tracing.ENABLED


async def test_off_nothing_on_the_request_path_changes(make_proxy):
    """Zero cost when off, by construction: the route handler is ``RequestPath.handle`` itself, the fast path is
    installed, and neither the store, the backend client nor ``record`` is wrapped."""
    assert not tracing.ENABLED
    ops = await make_proxy()
    proxy, app = ops.proxy, ops.client.app
    handlers = [route.handler for route in app.router.routes()]
    assert handlers == [proxy.handle]
    assert "_make_handler" in vars(app)  # fastpath.install replaced the app's connection factory
    for obj, names in ((proxy.store, tracing.STORE_CALLS), (proxy.upstream, tracing.UPSTREAM_CALLS),
                       (proxy, ("record",))):
        assert not set(names) & set(vars(obj)), names
    user = auth(USER)
    for _ in range(3):
        await ops.get(PROFILE, headers=user)
    assert await ops.metric("katiba_cache_fast_path_total", outcome="answered") >= 1
