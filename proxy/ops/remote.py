"""The commands that talk to a running proxy's admin API (``purge --url``, ``stats``, ``audit``) and print
what it answers: the HTTP call with the admin credential, and the human forms of stats and audit reports.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys


def admin_token(args: argparse.Namespace) -> str | None:
    from ..serve.config import admin_token_from_env

    return getattr(args, "admin_token", None) or admin_token_from_env(dict(os.environ))


def call(base: str, method: str, path: str, admin_token: str | None, body: dict | None = None,
          headers: dict | None = None) -> tuple[int, object]:
    """(status, decoded JSON body) of one request to a running proxy; status 0 when it cannot be reached."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    if admin_token:
        request.add_header("Authorization", f"Bearer {admin_token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, {"detail": f"cannot reach {base}: {getattr(exc, 'reason', exc)}"}
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, {"detail": raw[:200].decode("utf-8", "replace")}


def detail(document: object, status: int = 0) -> str:
    text = document.get("detail", str(document)) if isinstance(document, dict) else str(document)
    if status == 401:  # nothing was sent: say where the credential comes from
        text += " (no admin credential: give --admin-token or set CACHE_ADMIN_TOKEN)"
    return text


def cmd_purge_url(args: argparse.Namespace) -> int:
    if args.all:
        body = {"all": True}
    elif args.pattern:
        body = {"pattern": args.pattern}
    else:
        print("cache-proxy purge: give a PATTERN or --all", file=sys.stderr)
        return 2
    status, document = call(args.url, "POST", "/_cache/purge", admin_token(args), body)
    if status != 200:
        print(f"cache-proxy purge: {detail(document, status)}", file=sys.stderr)
        if isinstance(document, dict) and document.get("namespaces"):
            print("declared namespaces: " + ", ".join(document["namespaces"]), file=sys.stderr)
        return 1
    if not document.get("applied", True):
        print(f"purge of {document.get('purged')} is pending: the proxy's store did not accept it yet "
              "(it retries; reads of the namespace bypass the cache meanwhile)", file=sys.stderr)
    print(f"purged {document.get('purged')}")
    return 0


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_stats(stats: dict) -> str:
    lines = []
    rules = stats.get("rules")
    if rules is not None:
        width = max([len("rule")] + [len(name) for name in rules])
        lines.append(f"{'rule':<{width}}  {'requests':>8}  {'hit':>7}  {'stale':>7}  {'miss':>7}  {'bypass':>7}  hit rate")
        for name, row in sorted(rules.items(), key=lambda item: (-item[1]["requests"], item[0])):
            rate = "-" if row["hit_rate"] is None else f"{row['hit_rate'] * 100:.1f}%"
            lines.append(f"{name:<{width}}  {row['requests']:>8}  {row['hit']:>7}  {row['stale']:>7}  "
                         f"{row['miss']:>7}  {row['bypass']:>7}  {rate}")
        purges = stats.get("purges") or {}
        lines.append("purges: " + (", ".join(f"{k} {v}" for k, v in sorted(purges.items())) or "none")
                     + f"; pending {stats.get('pending_purges', 0)}; mode {stats.get('mode', '?')}")
        reloads = stats.get("reloads") or {}
        lines.append(f"reloads: success {reloads.get('success', 0)}, failure {reloads.get('failure', 0)}")
        if stats.get("shadow") or stats.get("mode") == "shadow":
            lines += _shadow_lines(stats.get("shadow") or {}, rules)
    store = stats.get("store", {})
    if "error" in store:
        lines.append(f"store: {store.get('name')}: unavailable ({store['error']})")
    else:
        text = (f"store: {store.get('name')}  entries {store.get('entries', '?')}  memory {_size(store.get('bytes'))}"
                f"  evictions {store.get('evictions', '?')}")
        if store.get("maxmemory"):
            text += f"  maxmemory {_size(store['maxmemory'])} ({store.get('maxmemory_policy')})"
        lines.append(text)
    if rules is None:
        lines.append("hit rate per rule: ask a running proxy (stats --url); the counters live in the proxies")
    return "\n".join(lines)


def _shadow_lines(shadow: dict, rules: dict) -> list[str]:
    """Shadow mode's figures per rule: what the cache would have answered (and whether it matched)."""
    names = sorted(set(shadow) | {name for name, row in rules.items() if row["requests"]},
                   key=lambda name: (-sum(shadow.get(name, {}).values()), name))
    width = max([len("rule")] + [len(name) for name in names])
    lines = ["shadow mode: what the cache would have answered (every answer came from the backend)",
             f"{'rule':<{width}}  {'requests':>8}  {'would-hit':>9}  {'would-stale':>11}  {'mismatch':>8}  "
             f"{'would-miss':>10}  would-hit rate"]
    for name in names:
        row = shadow.get(name, {})
        total = sum(row.values())
        hit = row.get("would-hit-match", 0) + row.get("would-hit-mismatch", 0)
        stale = row.get("would-stale-match", 0) + row.get("would-stale-mismatch", 0)
        mismatch = row.get("would-hit-mismatch", 0) + row.get("would-stale-mismatch", 0)
        rate = f"{(hit + stale) / total * 100:.1f}%" if total else "-"
        lines.append(f"{name:<{width}}  {total:>8}  {hit:>9}  {stale:>11}  {mismatch:>8}  "
                     f"{row.get('would-miss', 0):>10}  {rate}")
    return lines


def cmd_stats(args: argparse.Namespace) -> int:
    import json

    if args.url:
        status, stats = call(args.url, "GET", "/_cache/stats", admin_token(args))
        if status != 200:
            print(f"cache-proxy stats: {detail(stats, status)}", file=sys.stderr)
            return 1
    else:
        url = args.redis or os.environ.get("REDIS_URL")
        if not url:
            print("cache-proxy stats: needs --url (a running proxy) or --redis / REDIS_URL", file=sys.stderr)
            return 2
        stats = asyncio.run(_redis_stats(url))
        store = stats["store"]
        if "error" in store and not args.json:
            print(f"cache-proxy stats: store unavailable: {store['error']}", file=sys.stderr)
            return 1
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0 if "error" not in stats.get("store", {}) else 1


def format_audit(report: dict) -> str:
    from ..core.audit import suggestion_text

    rules = report.get("rules", {})
    width = max([len("rule")] + [len(name) for name in rules])
    lines = [f"{'rule':<{width}}  {'audited':>7}  {'match':>7}  {'mismatch':>8}  {'skipped':>7}  mismatch rate"]
    for name, row in sorted(rules.items(), key=lambda item: (-item[1]["audited"], item[0])):
        rate = "-" if row["mismatch_rate"] is None else f"{row['mismatch_rate'] * 100:.1f}%"
        lines.append(f"{name:<{width}}  {row['audited']:>7}  {row['match']:>7}  {row['mismatch']:>8}  "
                     f"{row['skipped']:>7}  {rate}")
    suggestions = report.get("suggestions", [])
    lines.append("suggestions:" if suggestions else "suggestions: none")
    lines += ["  " + suggestion_text(s) for s in suggestions]
    return "\n".join(lines)


def cmd_audit(args: argparse.Namespace) -> int:
    import json

    status, report = call(args.url, "GET", "/_cache/audit", admin_token(args))
    if status != 200:
        print(f"cache-proxy audit: {detail(report)}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_audit(report))
    return 0


async def _redis_stats(url: str) -> dict:
    from ..core.errors import StoreUnavailable
    from ..store import open_store

    from ..store.redisconf import resolve_redis_url

    store = open_store(resolve_redis_url(url, dict(os.environ)))
    try:
        return {"store": {"name": store.name, **(await store.stats())}}
    except StoreUnavailable as exc:
        return {"store": {"name": store.name, "error": str(exc)}}
    finally:
        try:
            await store.close()
        except StoreUnavailable:
            pass
