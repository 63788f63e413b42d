"""OpenTelemetry traces, optional and off by default: one span per request, a child span per store call
and per backend request. Owns the tracer, its configuration from ``OTEL_*`` and the wrappers that make
the spans; it decides nothing about caching.

Turned on by ``OTEL_TRACES_EXPORTER`` naming an exporter (``console``, ``otlp``, ...; unset or ``none``:
off; ``OTEL_SDK_DISABLED=true``: off), with the ``otel`` extra installed (``pip install
'katiba-cache[otel]'``: opentelemetry-api and opentelemetry-sdk). Everything else is the SDK's own
environment handling: ``OTEL_SERVICE_NAME`` (default here: katiba-cache), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_PROPAGATORS``, ``OTEL_BSP_*``, and ``OTEL_EXPORTER_OTLP_*`` read by
the OTLP exporter, which is a package of its own (``opentelemetry-exporter-otlp``): when an exporter
named there is not installed, ``configure_from_env`` says so in one log line and the proxy serves without
traces (a tracing typo never stops the cache).

Zero cost when off: ``ENABLED`` is read once, when the application is built (``serve.app.build_app``). Off,
nothing is wrapped: the route handler is ``RequestPath.handle`` itself, the fast path is installed, the store and
the backend client are the plain objects. On, ``instrument`` wraps, on that one proxy object:

* the route handler: a SERVER span per request, child of the client's ``traceparent`` (``tracestate`` and
  baggage too, per ``OTEL_PROPAGATORS``), named ``METHOD rule``;
* ``RequestPath.record`` (called once per request): the span's attributes, below;
* the store's calls (lookup, generations, fill write, purge, leases) and the backend client's ``fetch``
  (fills) and ``send`` (writes, pass-through): a CLIENT child span each. The backend span's context goes
  out in ``traceparent``: the backend sees the client's trace id, with this proxy's span as parent.
  Store calls made outside any request (the store watch's probes) get no span; a warming fetch is the
  root of a new trace.

The fast path (proxy/serve/fastpath.py) answers hits and misses straight off the socket, without aiohttp's
request objects; with tracing on it is not installed, so that every request gets its span the same way.
Tracing on costs what aiohttp's path costs over the fast path, plus the spans; off costs nothing.

Attributes, never a key, a path with values in it, or a user id: ``http.request.method``, ``http.route``
(the rule's match template), ``http.response.status_code``, ``katiba_cache.result`` (hit, stale, miss,
bypass, internal), ``katiba_cache.rule``, ``katiba_cache.cache_status`` (the Cache-Status header, which
holds neither), ``katiba_cache.store.calls`` / ``.duration_ms`` and ``katiba_cache.upstream.calls`` /
``.duration_ms``. A failed call's span gets status ERROR with the exception type only (messages can
carry addresses or keys).

Without tracing, ``traceparent`` and ``tracestate`` go to the backend unchanged with every forwarded
request (``upstream.forward_headers`` keeps them); fills carry the filler's. Warming fetches have no client:
they carry a new trace (``new_traceparent``), sampled, as the backend would start one itself.
"""
from __future__ import annotations

import contextvars
import logging
import os
import secrets
import time
from typing import Any, Callable

log = logging.getLogger("proxy")

ENABLED = False  # read once per application build, never per request
_tracer: Any = None
_provider: Any = None
_totals: contextvars.ContextVar[list | None] = contextvars.ContextVar("katiba_trace_totals", default=None)

STORE_CALLS = ("lookup", "lookup_or_lease", "ensure_generations", "store_if_current", "bump", "acquire_lease",
               "release_lease")
UPSTREAM_CALLS = ("fetch", "send")
EXTRA_HINT = "pip install 'katiba-cache[otel]'"
EXPORTER_HINTS = {"otlp": "opentelemetry-exporter-otlp", "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
                  "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http"}


def new_traceparent() -> str:
    """A W3C traceparent for a request no client made (warming): a new trace id, sampled."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def configure_from_env(env: dict[str, str] | None = None) -> bool:
    """Turn tracing on if ``OTEL_TRACES_EXPORTER`` asks for it and the SDK and exporters are installed.
    True when on. A missing package is one error line naming what to install; the proxy runs untraced."""
    env = dict(os.environ) if env is None else env
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names or names == ["none"] or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    try:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.error("tracing is off: OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed",
                  extra={"event": "tracing_unavailable", "detail": f"{EXTRA_HINT} (opentelemetry-api and -sdk)"})
        return False
    from importlib.metadata import entry_points

    processors = []
    for name in (n for n in names if n != "none"):
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            package = EXPORTER_HINTS.get(name, f"the package that provides the {name!r} exporter")
            log.error(f"tracing is off: no span exporter named {name!r} is installed",
                      extra={"event": "tracing_unavailable", "detail": f"OTEL_TRACES_EXPORTER={name} needs "
                                                                      f"pip install {package}"})
            return False
        try:
            processors.append(BatchSpanProcessor(found[0].load()()))  # the exporter reads its own OTEL_* env
        except Exception as exc:  # noqa: BLE001 - a bad OTEL_EXPORTER_* value: say which, serve untraced
            log.error(f"tracing is off: the {name!r} exporter cannot start",
                      extra={"event": "tracing_unavailable", "detail": f"{type(exc).__name__}: {exc}"})
            return False
    start(*processors)
    log.info("tracing on", extra={"event": "tracing", "exporters": names})
    return True


def start(*processors: Any) -> None:
    """Tracing on, spans to ``processors`` (tests hand in a SimpleSpanProcessor(InMemorySpanExporter()))."""
    global ENABLED, _tracer, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "katiba-cache"}))
    _provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    for processor in processors:
        _provider.add_span_processor(processor)
    _tracer = _provider.get_tracer("katiba-cache")
    ENABLED = True


def stop() -> None:
    """Flush and turn tracing off (at exit; an application built afterwards is untraced)."""
    global ENABLED, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    ENABLED, _tracer, _provider = False, None, None


# ------------------------------------------------------------------------------ instrumentation


def instrument(proxy: Any) -> Callable:
    """Wrap ``proxy``'s record, store and backend client (module doc); return the route handler."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = _tracer
    handle, record = proxy.handle, proxy.record

    async def traced_handle(request):
        totals = [0.0, 0, 0.0, 0]  # store seconds, store calls, upstream seconds, upstream calls
        token = _totals.set(totals)
        try:
            with tracer.start_as_current_span(request.method, context=propagate.extract(request.headers),
                                              kind=SpanKind.SERVER, record_exception=False,
                                              set_status_on_exception=False) as span:
                span.set_attribute("http.request.method", request.method)
                try:
                    return await handle(request)
                finally:
                    span.set_attributes({
                        "katiba_cache.store.calls": totals[1],
                        "katiba_cache.store.duration_ms": round(totals[0] * 1000, 3),
                        "katiba_cache.upstream.calls": totals[3],
                        "katiba_cache.upstream.duration_ms": round(totals[2] * 1000, 3)})
        finally:
            _totals.reset(token)

    def traced_record(method: str, rule_name: str, result: str, status: int, cache_status: str, start: float,
                      rid: str | None = None) -> None:
        record(method, rule_name, result, status, cache_status, start, rid)
        span = trace.get_current_span()
        if not span.is_recording():
            return
        rule = proxy.rules.by_name(rule_name)
        span.update_name(f"{method} {rule_name}")
        attributes = {"katiba_cache.result": result, "katiba_cache.rule": rule_name,
                      "http.response.status_code": status, "katiba_cache.cache_status": cache_status}
        if rule is not None:
            attributes["http.route"] = rule.route
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))

    def store_call(name: str, call: Callable) -> Callable:
        async def traced(*args: Any, **kwargs: Any) -> Any:
            if not trace.get_current_span().get_span_context().is_valid:
                return await call(*args, **kwargs)  # the store watch's probes, warming: no request, no trace
            began = time.perf_counter()
            with tracer.start_as_current_span(f"store {name}", kind=SpanKind.CLIENT, record_exception=False,
                                              set_status_on_exception=False,
                                              attributes={"db.system.name": store_name,
                                                          "db.operation.name": name}) as span:
                try:
                    return await call(*args, **kwargs)
                except BaseException as exc:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
                finally:
                    _add(0, time.perf_counter() - began)
        return traced

    def upstream_call(name: str, call: Callable) -> Callable:
        async def traced(*args: Any, **kwargs: Any) -> Any:
            method = "GET" if name == "fetch" else args[0]
            headers = args[1] if name == "fetch" else args[2]  # fetch(path_qs, headers); send(method, path_qs, headers)
            began = time.perf_counter()
            with tracer.start_as_current_span(method, kind=SpanKind.CLIENT, record_exception=False,
                                              set_status_on_exception=False,
                                              attributes={"http.request.method": method,
                                                          "server.address": upstream_host}) as span:
                propagate.inject(headers)  # traceparent: the client's trace id, this span as parent
                try:
                    response = await call(*args, **kwargs)
                except BaseException as exc:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    status = getattr(exc, "status", None)
                    if isinstance(status, int):
                        span.set_attribute("http.response.status_code", status)
                    raise
                finally:
                    _add(2, time.perf_counter() - began)
                span.set_attribute("http.response.status_code", response.status)
                return response
        return traced

    store, upstream = proxy.store, proxy.upstream
    store_name = store.name
    upstream_host = upstream.host_header
    for name in STORE_CALLS:
        setattr(store, name, store_call(name, getattr(store, name)))
    for name in UPSTREAM_CALLS:
        setattr(upstream, name, upstream_call(name, getattr(upstream, name)))
    proxy.record = traced_record
    return traced_handle


def _add(index: int, seconds: float) -> None:
    totals = _totals.get()
    if totals is not None:
        totals[index] += seconds
        totals[index + 1] += 1
