"""The ``cache-proxy`` command line: every command and flag, and the version it reports.

Its own module because two readers need it: the CLI (cli.py) parses with it, and the configuration
reference (confref.py) documents every flag from it; neither has to import the other.
"""
from __future__ import annotations

import argparse
from importlib import metadata


def version() -> str:
    try:
        return metadata.version("katiba-cache")
    except metadata.PackageNotFoundError:
        return "0.1.0+source"


def default_rules_path() -> str:
    """``rules.yaml`` in the working directory, else the copy shipped inside the package."""
    from ..serve.config import default_rules_path as default

    return default()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag (docs/CONFIGURATION.md is generated from it: ``proxy/ops/confref.py``)."""
    parser = argparse.ArgumentParser(prog="cache-proxy", description="Caching reverse proxy for the katiba360 API")
    parser.add_argument("--version", action="version", version=f"cache-proxy {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--upstream", help="backend base URL (env UPSTREAM_URL)")
    serve.add_argument("--rules", help="rules file (env RULES_PATH, default rules.yaml)")
    serve.add_argument("--listen", help="HOST:PORT (env LISTEN, default 0.0.0.0:8080)")
    serve.add_argument("--admin-listen", help="HOST:PORT of a separate listener for /metrics, /healthz, /readyz "
                                              "and /_cache/* (env ADMIN_LISTEN); when set, those paths on the "
                                              "public port go to the backend")
    serve.add_argument("--redis", help="redis://, rediss://, redis+sentinel://host:port[,host:port]/service or "
                                        "redis+cluster://host:port[,host:port] URL (env REDIS_URL); none: "
                                        "in-memory store")
    serve.add_argument("--workers", help="processes sharing the port (SO_REUSEPORT): N or 'auto' (one per "
                                         "CPU); N > 1 needs Redis (env WORKERS, default 1)")
    serve.add_argument("--log-format", choices=("json", "text"), help="env LOG_FORMAT, default json")
    serve.add_argument("--no-watch-rules", action="store_true",
                       help="reload the rules on SIGHUP only, not when the file changes (env WATCH_RULES=0)")

    check = sub.add_parser("check", help="validate a rules file")
    check.add_argument("file", nargs="?", help="default: rules.yaml")

    demo = sub.add_parser("demo", help="the stand-in backend with the proxy in front of it")
    demo.add_argument("--listen", default="127.0.0.1:8080")
    demo.add_argument("--log-format", choices=("json", "text"), default="text")

    purge = sub.add_parser("purge", help="purge a namespace (user:{user_id}:*) or exact key in a store")
    purge.add_argument("pattern", nargs="?", help="e.g. 'user:{0f1e...}:*' or 'achievements:global:*'")
    purge.add_argument("--all", action="store_true", help="bump the global epoch: every entry goes")
    where = purge.add_mutually_exclusive_group()
    where.add_argument("--redis", help="the store (env REDIS_URL)")
    where.add_argument("--url", help="a running proxy, e.g. http://proxy:8080 (POST /_cache/purge)")
    purge.add_argument("--rules", help="rules file (env RULES_PATH); with --redis")
    purge.add_argument("--admin-token", help="with --url (env CACHE_ADMIN_TOKEN)")

    explain = sub.add_parser("explain", help="why METHOD URL would be HIT, MISS, STALE or BYPASS")
    explain.add_argument("method", help="GET, PUT, ...")
    explain.add_argument("url", help="path with query, e.g. '/api/v1/achievements/leaderboard?limit=10'")
    explain.add_argument("--token", help="the caller's JWT (verified with JWT_SECRET_KEY if set)")
    origin = explain.add_mutually_exclusive_group()
    origin.add_argument("--rules", help="rules file, offline (env RULES_PATH, default rules.yaml)")
    origin.add_argument("--url", dest="instance", metavar="URL",
                        help="ask a running proxy (GET /_cache/explain): adds the entry's state")
    explain.add_argument("--admin-token", help="with --url (env CACHE_ADMIN_TOKEN)")
    explain.add_argument("--json", action="store_true", help="print JSON")

    stats = sub.add_parser("stats", help="hit rate per rule, entries, memory")
    where = stats.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running proxy (GET /_cache/stats): per-rule counters and the store")
    where.add_argument("--redis", help="a Redis store (env REDIS_URL): entries and memory only")
    stats.add_argument("--admin-token", help="with --url (env CACHE_ADMIN_TOKEN)")
    stats.add_argument("--json", action="store_true", help="print JSON")

    audit = sub.add_parser("audit", help="the staleness auditor's report: stale entries per read rule and the "
                                         "purges the write rules seem to miss")
    audit.add_argument("--url", required=True, help="a running proxy (GET /_cache/audit)")
    audit.add_argument("--token", "--admin-token", dest="admin_token", metavar="ADMIN",
                       help="the admin credential (env CACHE_ADMIN_TOKEN)")
    audit.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("config-reference", help="print the configuration reference (docs/CONFIGURATION.md): every "
                                            "flag, environment variable and rules field")
    return parser
