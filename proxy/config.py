"""Run-time settings: one frozen object built from flags and the environment (flags win)."""
from __future__ import annotations

import os
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
    lease_ms: int = 3000  # cross-instance fill lease
    max_write_body: int = 1 << 20  # write bodies read for purge placeholders
    admin_rate: float = 5.0  # manual invalidation requests per second per client
    access_log: bool = False
    log_format: str = "json"
    shutdown_grace: float = 10.0
    watch_rules: bool = True
    warm_authorization: str | None = None  # Authorization header for warming requests (a service token)


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
    )
