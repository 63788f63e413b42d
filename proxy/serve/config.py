"""Run-time settings: one frozen object built from flags and the environment (flags win)."""
from __future__ import annotations

import os
from importlib import resources
import tempfile
from dataclasses import dataclass, field

from ..core.identity import IdentityConfig, config_from_env
from ..core.settings import setting, setting_bool, setting_float, setting_int
from ..upstream.client import UpstreamConfig

CACHE_MODES = ("on", "off", "shadow")


@dataclass(frozen=True)
class Config:
    upstream: UpstreamConfig
    rules_path: str = "rules.yaml"
    listen: str = "0.0.0.0:8080"
    redis_url: str | None = None
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    admin_token: str | None = None
    cache_mode: str = "on"
    store_timeout: float = 0.1
    memory_max_bytes: int = 256 << 20
    l1_max_bytes: int = 64 << 20
    memo_max_bytes: int = 256 << 20  # core.memo.set_budget
    gc_pace_interval: float = 0.1  # serve/collector.py; 0: Python's own schedule
    gc_full_interval: float = 600.0
    coalesce_wait: float = 5.0  # longest a waiter waits for another request's fill
    purge_timeout: float = 0.5  # longest a write's answer waits for its purge
    lease_ms: int = 1000  # cross-instance fill lease: short, so a lease orphaned by a store stall costs little
    max_write_body: int = 1 << 20  # write bodies read for purge placeholders
    admin_rate: float = 5.0  # manual invalidation requests per second per client
    access_log: bool = False
    fast_path: bool = True  # fresh hits answered by proxy/serve/fastpath.py
    log_format: str = "json"
    shutdown_grace: float = 10.0
    watch_rules: bool = True
    warm_authorization: str | None = None  # Authorization header for warming requests (a service token)
    # Resilience (docs/DESIGN.md, "Guarantees and their limits"): after the store was unreachable, reads
    # stay off the cache for ``store_recovery_hold`` seconds once it answers again, so other instances'
    # retried purges land first.
    store_recovery_hold: float = 1.0
    store_check_interval: float = 5.0  # how often a healthy store's identity (restart, failover) is checked
    breaker_failures: int = 5  # consecutive store failures that open the circuit breaker
    breaker_reset: float = 2.0  # seconds before an open breaker lets one request probe the store
    pending_file: str | None = None  # marker left while purges are pending; found at start -> epoch bump
    shutdown_delay: float = 0.0  # after SIGTERM: seconds /readyz says 503 before the listener closes
    admin_listen: str | None = None  # a separate admin listener; admin paths on the public port go upstream
    max_inflight: int = 0  # requests handled at once, above it 503 + Retry-After (0: no limit)
    redis_max_connections: int = 64
    audit_share: float = 1.0  # this process's share of audit.max_per_second (1 / workers: per instance)



def admin_token_from_env(environ: dict[str, str]) -> str | None:
    if setting(environ, "CACHE_ADMIN_TOKEN"):
        return setting(environ, "CACHE_ADMIN_TOKEN")
    if setting(environ, "CACHE_ADMIN_TOKEN_FILE"):
        with open(setting(environ, "CACHE_ADMIN_TOKEN_FILE"), encoding="utf-8") as fh:
            return fh.read().strip() or None
    return None


def config_from(args, environ: dict[str, str] | None = None) -> Config:
    """From parsed CLI ``args`` (attributes may be None) and ``environ``; defaults from ``SETTINGS``."""
    from ..store.redisconf import resolve_redis_url

    env = dict(os.environ if environ is None else environ)
    upstream = UpstreamConfig(
        url=getattr(args, "upstream", None) or setting(env, "UPSTREAM_URL"),
        connect_timeout=setting_float(env, "UPSTREAM_CONNECT_TIMEOUT"),
        read_timeout=setting_float(env, "UPSTREAM_TIMEOUT"),
        pool_size=setting_int(env, "UPSTREAM_POOL_SIZE"),
        preserve_host=setting_bool(env, "PRESERVE_HOST"),
        ca_file=setting(env, "UPSTREAM_CA_FILE") or None,
        client_cert=setting(env, "UPSTREAM_CLIENT_CERT") or None,
        client_key=setting(env, "UPSTREAM_CLIENT_KEY") or None,
        max_concurrent=setting_int(env, "MAX_UPSTREAM"),
        queue_timeout=setting_float(env, "UPSTREAM_QUEUE_TIMEOUT"),
        require_at_start=setting_bool(env, "REQUIRE_UPSTREAM_AT_START"),
    )
    mode = setting(env, "CACHE_MODE").lower()
    if mode not in CACHE_MODES:
        raise ValueError(f"CACHE_MODE must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    listen = getattr(args, "listen", None) or setting(env, "LISTEN")
    return Config(
        upstream=upstream,
        rules_path=getattr(args, "rules", None) or setting(env, "RULES_PATH") or default_rules_path(),
        listen=listen,
        redis_url=resolve_redis_url(getattr(args, "redis", None) or setting(env, "REDIS_URL") or None, env),
        identity=config_from_env(env),
        admin_token=admin_token_from_env(env),
        admin_rate=setting_float(env, "ADMIN_RATE_LIMIT"),
        cache_mode=mode,
        store_timeout=setting_float(env, "STORE_TIMEOUT"),
        memory_max_bytes=setting_int(env, "MEMORY_MAX_BYTES"),
        l1_max_bytes=setting_int(env, "L1_MAX_BYTES"),
        memo_max_bytes=setting_int(env, "MEMO_MAX_BYTES"),
        gc_pace_interval=setting_float(env, "GC_PACE_INTERVAL"),
        gc_full_interval=setting_float(env, "GC_FULL_INTERVAL"),
        access_log=setting_bool(env, "ACCESS_LOG"),
        fast_path=setting_bool(env, "FAST_PATH"),
        log_format=getattr(args, "log_format", None) or setting(env, "LOG_FORMAT"),
        warm_authorization=setting(env, "WARM_AUTHORIZATION") or None,
        store_recovery_hold=setting_float(env, "STORE_RECOVERY_HOLD"),
        store_check_interval=setting_float(env, "STORE_CHECK_INTERVAL"),
        breaker_failures=setting_int(env, "STORE_BREAKER_FAILURES"),
        breaker_reset=setting_float(env, "STORE_BREAKER_RESET"),
        pending_file=pending_file_from(env, listen),
        shutdown_grace=setting_float(env, "SHUTDOWN_GRACE"),
        shutdown_delay=setting_float(env, "SHUTDOWN_DELAY"),
        admin_listen=getattr(args, "admin_listen", None) or setting(env, "ADMIN_LISTEN") or None,
        max_inflight=setting_int(env, "MAX_INFLIGHT"),
        redis_max_connections=setting_int(env, "REDIS_MAX_CONNECTIONS"),
    )


def default_rules_path() -> str:
    """``rules.yaml`` in the working directory, else the copy shipped inside the package (pipx, wheels)."""
    if os.path.exists("rules.yaml"):
        return "rules.yaml"
    return str(resources.files("proxy") / "rules.yaml")


def pending_file_from(environ: dict[str, str], listen: str) -> str | None:
    """``PENDING_PURGES_FILE`` (``off`` disables); by default a file in the temp dir named after the
    listening port, so the next process on that port finds it. None for port 0 (nobody succeeds it)."""
    value = setting(environ, "PENDING_PURGES_FILE").strip()
    if value.lower() in ("off", "none", "0"):
        return None
    if value:
        return value
    port = listen.rpartition(":")[2]
    if not port.isdigit() or int(port) == 0:
        return None
    return os.path.join(tempfile.gettempdir(), f"katiba-cache-{port}.pending")
