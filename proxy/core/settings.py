"""The settings catalogue: every environment variable the proxy reads, its default and what it means.

docs/CONFIGURATION.md is generated from ``SETTINGS`` (``cache-proxy config-reference``); the run-time
``Config`` (proxy/serve/config.py), the Redis connection settings (proxy/store/redisconf.py) and the CLI
read their values through ``setting`` and its typed forms, so nothing is read that is not documented.
"""
from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, the value used when it is unset (as text, "" = unset), what it
    means, the ``serve`` flag that wins over it, and who reads it. docs/CONFIGURATION.md is generated from
    ``SETTINGS`` (``cache-proxy config-reference``); ``config_from`` takes every default from here."""

    name: str
    default: str
    help: str
    flag: str | None = None
    read_by: str = "config"  # config (config_from), identity (JWT), cli, workers, metrics
    shown_default: str | None = None  # for the docs, when the default is computed


SETTINGS: tuple[Setting, ...] = (
    # -- where things are
    Setting("UPSTREAM_URL", "", "backend base URL, http(s)://host[:port] (required)", "--upstream"),
    Setting("RULES_PATH", "", "rules file", "--rules",
            shown_default="rules.yaml in the working directory, else the copy inside the package"),
    Setting("LISTEN", "0.0.0.0:8080", "HOST:PORT of the public listener", "--listen"),
    Setting("ADMIN_LISTEN", "", "HOST:PORT of a separate admin listener for /metrics, /healthz, /readyz and "
            "/_cache/*; when set, those paths on the public port go to the backend like any other path",
            "--admin-listen"),
    Setting("REDIS_URL", "", "redis://, rediss:// (TLS), redis+sentinel://host:port[,host:port]/service[/db], "
            "redis+cluster://host:port[,host:port]; unset: the in-process memory store", "--redis"),
    Setting("WORKERS", "1", "processes sharing the port (SO_REUSEPORT): N or 'auto'; N > 1 needs Redis",
            "--workers", read_by="cli"),
    Setting("LOG_FORMAT", "json", "json (JSON lines on stderr) or text", "--log-format"),
    Setting("WATCH_RULES", "1", "0: reload the rules on SIGHUP only, not when the file changes",
            "--no-watch-rules", read_by="cli"),
    # -- identity and admin
    Setting("JWT_SECRET_KEY", "", "HS256 secret of the backend's tokens", read_by="identity"),
    Setting("JWT_SECRET_KEY_FILE", "", "file holding the HS256 secret", read_by="identity"),
    Setting("JWT_SECRET_KEYS", "", "several HS256 secrets, comma-separated (rotation)", read_by="identity"),
    Setting("JWT_PUBLIC_KEY", "", "PEM public key(s) for RS256/ES256", read_by="identity"),
    Setting("JWT_PUBLIC_KEY_FILE", "", "file holding PEM public key(s)", read_by="identity"),
    Setting("JWT_ALGORITHMS", "", "accepted algorithms, comma-separated", read_by="identity",
            shown_default="HS256; RS256,ES256 with a public key"),
    Setting("JWT_LEEWAY", "0", "seconds of clock leeway for exp", read_by="identity"),
    Setting("JWT_AUDIENCE", "", "required aud claim, if set", read_by="identity"),
    Setting("JWT_ISSUER", "", "required iss claim, if set", read_by="identity"),
    Setting("CACHE_ADMIN_TOKEN", "", "admin credential (Authorization: Bearer) of /_cache/* and the manual "
            "invalidation endpoints; unset: admin endpoints are off"),
    Setting("CACHE_ADMIN_TOKEN_FILE", "", "file holding the admin credential"),
    Setting("ADMIN_RATE_LIMIT", "5", "requests per second per client address on /_cache/* and the manual "
            "invalidation endpoints (burst: twice as many); the admin credential is exempt"),
    # -- cache behaviour
    Setting("CACHE_MODE", "on", "on, off (every read goes to the backend; writes still purge) or shadow "
            "(the backend answers, the cache is filled and compared)"),
    Setting("MEMORY_MAX_BYTES", str(256 << 20), "byte budget of the memory store (LRU eviction)"),
    Setting("L1_MAX_BYTES", str(64 << 20), "byte budget of the in-process L1 in front of Redis (rules with "
            "l1_ttl), counting what each entry keeps alive in the process: about 2.5 KB for a 600-byte JSON body"),
    Setting("MEMO_MAX_BYTES", str(256 << 20), "byte budget, per process, of the memos of per-request work (framed "
            "request heads, read decisions, decoded entries): with many keys a larger one keeps more hits off "
            "the parsing path"),
    Setting("GC_PACE_INTERVAL", "0.1", "seconds between the collections of the young generations the server "
            "runs itself, so that each pause stays short with many keys (proxy/serve/collector.py); 0: Python's "
            "own schedule"),
    Setting("GC_FULL_INTERVAL", "600", "seconds between the full garbage collections the server runs itself "
            "(with GC_PACE_INTERVAL > 0, Python starts none of its own): each walks every long-lived object, about "
            "a second at 100k keys"),
    Setting("CACHE_AUDIT_SAMPLE", "", "share of cache hits the staleness auditor fetches again and compares "
            "(0 to 1; 0: off); replaces rules.yaml's audit.sample, read at each rules load",
            shown_default="rules.yaml audit.sample (shipped: 0.01)", read_by="rules"),
    Setting("WARM_AUTHORIZATION", "", "Authorization header sent with warming requests (a service token)"),
    Setting("ACCESS_LOG", "0", "1: one log line per request"),
    Setting("FAST_PATH", "1", "0: answer cached reads through aiohttp's full request path too (proxy/serve/fastpath.py "
            "answers plain GETs of cached routes, hit or miss, straight off the socket)"),
    Setting("PENDING_PURGES_FILE", "", "exists while purges are pending; found at start-up it makes the proxy "
            "bump the global epoch; off disables", shown_default="$TMPDIR/katiba-cache-<port>.pending"),
    # -- the store
    Setting("STORE_TIMEOUT", "0.1", "seconds per store call before failing open to the backend"),
    Setting("STORE_BREAKER_FAILURES", "5", "consecutive store failures that open the circuit breaker"),
    Setting("STORE_BREAKER_RESET", "2", "seconds before an open breaker lets one request probe the store"),
    Setting("STORE_RECOVERY_HOLD", "1", "seconds the cache stays off after the store answers again"),
    Setting("STORE_CHECK_INTERVAL", "5", "seconds between checks of a healthy store for a restart or failover"),
    Setting("REDIS_USERNAME", "", "Redis ACL user (the URL's user wins)"),
    Setting("REDIS_PASSWORD", "", "Redis password (the URL's password wins)"),
    Setting("REDIS_PASSWORD_FILE", "", "file holding the Redis password"),
    Setting("REDIS_CA_FILE", "", "CA bundle that signed the Redis server's certificate (rediss://)"),
    Setting("REDIS_CLIENT_CERT", "", "client certificate (PEM) for Redis TLS with tls-auth-clients"),
    Setting("REDIS_CLIENT_KEY", "", "its private key (PEM); default: inside REDIS_CLIENT_CERT"),
    Setting("REDIS_MAX_CONNECTIONS", "64", "connection pool limit per Redis server (per process); waiting for "
            "a pooled connection counts against STORE_TIMEOUT"),
    # -- the backend
    Setting("UPSTREAM_TIMEOUT", "30", "seconds the backend may stay silent while answering (between reads)"),
    Setting("UPSTREAM_CONNECT_TIMEOUT", "2", "seconds to connect to the backend"),
    Setting("UPSTREAM_POOL_SIZE", "512", "connections kept to the backend"),
    Setting("UPSTREAM_CA_FILE", "", "CA bundle for an https:// backend with a private CA"),
    Setting("UPSTREAM_CLIENT_CERT", "", "client certificate (PEM) presented to an https:// backend"),
    Setting("UPSTREAM_CLIENT_KEY", "", "its private key (PEM); default: inside UPSTREAM_CLIENT_CERT"),
    Setting("REQUIRE_UPSTREAM_AT_START", "0", "1: /readyz says not ready until the backend has answered once "
            "(otherwise an unreachable backend at start is a warning only)"),
    Setting("PRESERVE_HOST", "0", "1: forward the client's Host instead of the backend's"),
    # -- overload
    Setting("MAX_INFLIGHT", "4096", "requests handled at once; above it: 503 with Retry-After (0: no limit). "
            "/healthz, /readyz, /metrics and /_cache/* are never refused"),
    Setting("MAX_UPSTREAM", "512", "requests sent to the backend at once (streams included; 0: no limit)"),
    Setting("UPSTREAM_QUEUE_TIMEOUT", "1", "seconds a request may wait for a free backend slot before 503 "
            "with Retry-After"),
    # -- shutdown
    Setting("SHUTDOWN_DELAY", "0", "after SIGTERM: seconds /readyz answers 503 while still serving"),
    Setting("SHUTDOWN_GRACE", "10", "then: seconds in-flight requests get to finish"),
    # -- process-level
    Setting("PROMETHEUS_MULTIPROC_DIR", "", "set by --workers (a fresh temporary directory): one scrape sees "
            "every worker", read_by="metrics"),
    Setting("HUGE_PAGES", "1", "1: serve re-executes itself once at start with PYTHONMALLOC=malloc and "
            "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc 2.35 or newer; not when PYTHONMALLOC is set): with many "
            "keys a hit waits less on memory (proxy/ops/allocator.py); 0: Python's own allocator", read_by="cli"),
    Setting("PYTHONMALLOC", "", "Python's allocator, read by Python at start; when set, serve keeps it and "
            "HUGE_PAGES changes nothing", read_by="cli"),
    Setting("GLIBC_TUNABLES", "", "glibc's tunables, read by glibc at start; with HUGE_PAGES=1 serve adds "
            "glibc.malloc.hugetlb=1 to them", read_by="cli"),
    Setting("KATIBA_CACHE_UNSAFE_TEST_SWITCHES", "", "test-only switches that break a guarantee on purpose; "
            "never set in production", read_by="cli"),
    # -- traces (proxy/serve/tracing.py; the other OTEL_* variables are read by the OpenTelemetry SDK itself)
    Setting("OTEL_TRACES_EXPORTER", "", "span exporters, e.g. otlp or console: OpenTelemetry spans per request "
            "(needs the otel extra; otlp needs opentelemetry-exporter-otlp); unset or none: no tracing",
            read_by="tracing"),
    Setting("OTEL_SDK_DISABLED", "", "true: no tracing whatever OTEL_TRACES_EXPORTER says", read_by="tracing"),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def setting(environ: dict[str, str], name: str) -> str:
    """The text of setting ``name`` from ``environ``, else its documented default. A name missing from
    ``SETTINGS`` raises KeyError: nothing is read that the reference does not document."""
    value = environ.get(name)
    return value if value not in (None, "") else SETTINGS_BY_NAME[name].default


def setting_float(environ: dict[str, str], name: str) -> float:
    return float(setting(environ, name))


def setting_int(environ: dict[str, str], name: str) -> int:
    return int(setting(environ, name))


def setting_bool(environ: dict[str, str], name: str) -> bool:
    return setting(environ, name).strip().lower() in ("1", "true", "yes", "on")


def env_float(environ: dict[str, str], name: str, default: float) -> float:
    return float(environ[name]) if environ.get(name) else default

