"""Run-time settings: one frozen object built from flags and the environment (flags win)."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from .identity import IdentityConfig, config_from_env
from .upstream import UpstreamConfig

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
    coalesce_wait: float = 5.0  # longest a waiter waits for another request's fill
    purge_timeout: float = 0.5  # longest a write's answer waits for its purge
    lease_ms: int = 1000  # cross-instance fill lease: short, so a lease orphaned by a store stall costs little
    max_write_body: int = 1 << 20  # write bodies read for purge placeholders
    admin_rate: float = 5.0  # manual invalidation requests per second per client
    access_log: bool = False
    log_format: str = "json"
    shutdown_grace: float = 10.0
    watch_rules: bool = True
    warm_authorization: str | None = None  # Authorization header for warming requests (a service token)
    # Resilience (README "Guarantees"): after the store was unreachable, reads stay off the cache for
    # ``store_recovery_hold`` seconds once it answers again, so other instances' retried purges land first.
    store_recovery_hold: float = 1.0
    store_check_interval: float = 5.0  # how often a healthy store's identity (restart, failover) is checked
    breaker_failures: int = 5  # consecutive store failures that open the circuit breaker
    breaker_reset: float = 2.0  # seconds before an open breaker lets one request probe the store
    pending_file: str | None = None  # marker left while purges are pending; found at start -> epoch bump
    shutdown_delay: float = 0.0  # after SIGTERM: seconds /readyz says 503 before the listener closes


def env_float(environ: dict[str, str], name: str, default: float) -> float:
    return float(environ[name]) if environ.get(name) else default


def admin_token_from_env(environ: dict[str, str]) -> str | None:
    if environ.get("CACHE_ADMIN_TOKEN"):
        return environ["CACHE_ADMIN_TOKEN"]
    if environ.get("CACHE_ADMIN_TOKEN_FILE"):
        with open(environ["CACHE_ADMIN_TOKEN_FILE"], encoding="utf-8") as fh:
            return fh.read().strip() or None
    return None


def config_from(args, environ: dict[str, str] | None = None) -> Config:
    """From parsed CLI ``args`` (attributes may be None) and ``environ``."""
    env = dict(os.environ if environ is None else environ)
    upstream = UpstreamConfig(
        url=args.upstream or env.get("UPSTREAM_URL") or "",
        connect_timeout=env_float(env, "UPSTREAM_CONNECT_TIMEOUT", 2.0),
        read_timeout=env_float(env, "UPSTREAM_TIMEOUT", 30.0),
        pool_size=int(env.get("UPSTREAM_POOL_SIZE", "512")),
        preserve_host=env.get("PRESERVE_HOST", "").lower() in ("1", "true", "yes"),
        ca_file=env.get("UPSTREAM_CA_FILE") or None,
    )
    mode = (env.get("CACHE_MODE") or "on").lower()
    if mode not in CACHE_MODES:
        raise ValueError(f"CACHE_MODE must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    return Config(
        upstream=upstream,
        rules_path=args.rules or env.get("RULES_PATH") or "rules.yaml",
        listen=args.listen or env.get("LISTEN") or "0.0.0.0:8080",
        redis_url=args.redis or env.get("REDIS_URL") or None,
        identity=config_from_env(env),
        admin_token=admin_token_from_env(env),
        cache_mode=mode,
        store_timeout=env_float(env, "STORE_TIMEOUT", 0.1),
        memory_max_bytes=int(env.get("MEMORY_MAX_BYTES", str(256 << 20))),
        access_log=env.get("ACCESS_LOG", "").lower() in ("1", "true", "yes"),
        log_format=getattr(args, "log_format", None) or env.get("LOG_FORMAT") or "json",
        warm_authorization=env.get("WARM_AUTHORIZATION") or None,
        store_recovery_hold=env_float(env, "STORE_RECOVERY_HOLD", 1.0),
        store_check_interval=env_float(env, "STORE_CHECK_INTERVAL", 5.0),
        breaker_failures=int(env.get("STORE_BREAKER_FAILURES") or 5),
        breaker_reset=env_float(env, "STORE_BREAKER_RESET", 2.0),
        pending_file=pending_file_from(env, args.listen or env.get("LISTEN") or "0.0.0.0:8080"),
        shutdown_grace=env_float(env, "SHUTDOWN_GRACE", 10.0),
        shutdown_delay=env_float(env, "SHUTDOWN_DELAY", 0.0),
    )


def pending_file_from(environ: dict[str, str], listen: str) -> str | None:
    """``PENDING_PURGES_FILE`` (``off`` disables); by default a file in the temp dir named after the
    listening port, so the next process on that port finds it. None for port 0 (nobody succeeds it)."""
    value = environ.get("PENDING_PURGES_FILE", "").strip()
    if value.lower() in ("off", "none", "0"):
        return None
    if value:
        return value
    port = listen.rpartition(":")[2]
    if not port.isdigit() or int(port) == 0:
        return None
    return os.path.join(tempfile.gettempdir(), f"katiba-cache-{port}.pending")
