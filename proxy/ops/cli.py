"""``cache-proxy`` (also ``python -m proxy``): serve, check, demo, explain, purge, stats, audit.

Exit codes: 0 success, 1 invalid input (rules file, pattern), 2 usage. Nothing is printed on stdout
except what a command is asked for (a summary, the demo's URLs); logs go to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata

from ..core.errors import KatibaError, RulesError, StoreUnavailable

log = logging.getLogger("proxy")
# The demo's shared secret (the stand-in backend receives it through JWT_SECRET_KEY). At least 32 bytes:
# PyJWT warns on shorter HMAC keys, and a warning on stderr would break JSON-only logs.
DEMO_SECRET = "demo-secret-change-me-0123456789abcdef"
DEMO_ADMIN_TOKEN = "demo-admin-token"  # printed by the demo, with a purge that uses it


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)  # logs its failures as JSON lines
    try:
        return _run(args)
    except (KatibaError, OSError, ValueError) as exc:  # expected failures: one line, never a traceback
        print(f"cache-proxy {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"store unavailable: {text}" if isinstance(exc, StoreUnavailable) else text


def _run(args: argparse.Namespace) -> int:
    if args.command == "check":
        return cmd_check(args.file or os.environ.get("RULES_PATH") or default_rules_path())
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "purge":
        if args.all and args.pattern:
            print(f"cache-proxy purge: give a PATTERN or --all, not both (--all purges everything; "
                  f"{args.pattern!r} would be ignored)", file=sys.stderr)
            return 2
        if args.url:
            return cmd_purge_url(args)
        return asyncio.run(cmd_purge(args))
    if args.command == "explain":
        return cmd_explain(args)
    if args.command == "stats":
        return cmd_stats(args)
    if args.command == "audit":
        return cmd_audit(args)
    if args.command == "config-reference":
        from .confref import reference

        sys.stdout.write(reference())
        return 0
    return 2


def _rules_or_report(path: str):
    """The compiled rules, or None after printing every problem as ``file:line: field: message``."""
    from ..core.rules import load_rules

    try:
        return load_rules(path)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_check(path: str) -> int:
    rules = _rules_or_report(path)
    if rules is None:
        return 1
    reads = sum(1 for r in rules.rules if r.key is not None)
    writes = len(rules.rules) - reads
    print(f"{path}: ok: {reads} cached routes, {writes} write routes, {len(rules.namespaces)} namespaces, "
          f"prefix {rules.prefix!r}")
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.config import config_from
    from .logs import setup_logging
    from ..core.rules import load_rules

    try:
        config = config_from(args)
    except (ValueError, OSError) as exc:
        print(f"cache-proxy: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "no_watch_rules", False) or os.environ.get("WATCH_RULES", "").lower() in ("0", "false", "no", "off"):
        from dataclasses import replace

        config = replace(config, watch_rules=False)
    setup_logging(config.log_format)
    if not config.upstream.url:
        log.error("no upstream", extra={"event": "config_error", "detail": "give --upstream or UPSTREAM_URL"})
        return 2
    try:
        rules = load_rules(config.rules_path)
    except RulesError as exc:
        log.error("invalid rules file", extra={"event": "rules_invalid", "errors": [str(p) for p in exc.problems]})
        return 1
    from .workers import adopt_pending_files, parse_workers, supervise

    try:
        workers = parse_workers(getattr(args, "workers", None) or os.environ.get("WORKERS"))
    except ValueError as exc:
        log.error("invalid worker count", extra={"event": "config_error", "detail": str(exc)})
        return 2
    if workers > 1:
        if not config.redis_url:
            log.error("--workers > 1 needs a shared store", extra={
                "event": "config_error", "detail": "the memory store lives inside one process: a purge in one "
                "worker would not reach another; give --redis or REDIS_URL, or run one worker"})
            return 2
        return supervise(workers, config, rules, serve)
    adopt_pending_files(config.pending_file, 1)
    _install_uvloop()
    try:
        asyncio.run(serve(config, rules))
    except (ValueError, OSError) as exc:
        log.error("cannot start", extra={"event": "start_failed", "error": str(exc)})
        return 1
    return 0


async def serve(config, rules, started: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``): not ready first, then drain in-flight requests."""
    from ..serve.requestpath import build_app

    # Test-only switches that break a guarantee on purpose (the stale-read checker's mutants).
    unsafe = frozenset(s.strip() for s in os.environ.get("KATIBA_CACHE_UNSAFE_TEST_SWITCHES", "").split(",")
                       if s.strip())
    if unsafe:
        log.warning("unsafe test-only switches are on: this proxy breaks its consistency guarantee on purpose",
                    extra={"event": "unsafe_switches", "switches": sorted(unsafe)})
    from ..serve import tracing

    tracing.configure_from_env()  # OTEL_TRACES_EXPORTER; per process, so after a worker's fork
    try:
        await _serve_app(build_app(config, rules, unsafe=unsafe), config, rules, started, stop)
    finally:
        tracing.stop()  # flushes the spans still batched


async def _serve_app(app, config, rules, started: asyncio.Event | None, stop: asyncio.Event | None) -> None:
    import gc

    from aiohttp import web

    from ..serve.requestpath import PROXY_KEY

    proxy = app[PROXY_KEY]
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_grace)
    await runner.setup()
    host, port = _split_listen(config.listen)
    admin_runner = None
    try:
        await web.TCPSite(runner, host, port, reuse_port=True, backlog=2048).start()
        if config.admin_listen:  # /metrics, /healthz, /readyz, /_cache/* on their own port (proxy/ops/admin.py)
            from .admin import build_admin_app

            admin_runner = web.AppRunner(build_admin_app(proxy), access_log=None, handle_signals=False,
                                         shutdown_timeout=1.0)
            await admin_runner.setup()
            admin_host, admin_port = _split_listen(config.admin_listen)
            await web.TCPSite(admin_runner, admin_host, admin_port, reuse_port=True).start()
    except BaseException:  # a port in use: close the store and the backend session before saying so
        if admin_runner is not None:
            await admin_runner.cleanup()
        await runner.cleanup()
        raise
    log.info("listening", extra={"event": "listening", "listen": config.listen, "admin_listen": config.admin_listen,
                                  "upstream": config.upstream.url,
                                  "store": proxy.store.name, "rules": len(rules.rules), "mode": config.cache_mode})
    gc.collect()
    gc.freeze()  # the start-up objects never die: keep them out of every later collection
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, proxy.reload_rules)
    watcher = loop.create_task(watch_rules(proxy, config.rules_path, stop)) if config.watch_rules else None
    if started is not None:
        started.set()
    await stop.wait()
    proxy.ready = False  # /readyz says no before the listener closes, so balancers stop sending
    log.info("draining", extra={"event": "shutdown", "grace_s": config.shutdown_grace,
                                "delay_s": config.shutdown_delay})
    if config.shutdown_delay > 0:  # still accepting (and answering) while balancers notice the 503
        await asyncio.sleep(config.shutdown_delay)
    if watcher is not None:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    await runner.cleanup()
    if admin_runner is not None:  # last: probes and scrapes see the drain
        await admin_runner.cleanup()
    log.info("stopped", extra={"event": "stopped"})


def _digest(path: str) -> bytes | None:
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.blake2b(fh.read(), digest_size=16).digest()
    except OSError:
        return None


async def watch_rules(proxy, path: str, stop: asyncio.Event | None = None, debounce_ms: int = 300) -> None:
    """Reload the rules whenever the content of ``path`` changes (SIGHUP keeps working besides).

    The file's directory is watched, not the file: editors and Kubernetes ConfigMaps replace a file
    (rename, symlink swap) rather than write into it. A change that leaves the content as it was, or a
    moment where the file is missing mid-replace, reloads nothing. An invalid file is refused by
    ``Proxy.reload_rules`` (file:line errors in the log, ``katiba_cache_reloads_total{result="failure"}``)
    and the rules in force stay.
    """
    from watchfiles import awatch

    from ..core.rulewatch import RulesFileChanges

    changes_of_the_rules = RulesFileChanges(path)  # not the log file or anything else beside it
    last = _digest(path)
    try:
        async for _changes in awatch(changes_of_the_rules.directory, watch_filter=changes_of_the_rules,
                                     debounce=debounce_ms, step=50, stop_event=stop, recursive=False):
            current = _digest(path)
            if current is None or current == last:
                continue
            last = current
            log.info("rules file changed", extra={"event": "rules_changed", "rules_path": path})
            proxy.reload_rules()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - no watcher (inotify limits, odd filesystems): SIGHUP still works
        log.warning("cannot watch the rules file; reload it with SIGHUP",
                    extra={"event": "watch_failed", "rules_path": path, "error": str(exc) or type(exc).__name__})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_demo(args: argparse.Namespace) -> int:
    """The stand-in backend in a child process, the proxy in this one, until Ctrl-C."""
    import jwt

    from ..serve.config import config_from
    from .logs import setup_logging
    from ..core.rules import load_rules

    env = dict(os.environ)
    env.setdefault("JWT_SECRET_KEY", DEMO_SECRET)
    own_admin_token = bool(env.get("CACHE_ADMIN_TOKEN"))
    env.setdefault("CACHE_ADMIN_TOKEN", DEMO_ADMIN_TOKEN)
    backend = subprocess.Popen([sys.executable, "-m", "standin", "--listen", "127.0.0.1:0"], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        line = backend.stdout.readline().strip() if backend.stdout else ""
        if not line.startswith("standin listening on "):
            print(f"cache-proxy demo: the stand-in backend did not start ({line or 'no output'})", file=sys.stderr)
            return 1
        upstream = line.removeprefix("standin listening on ")
        ns = argparse.Namespace(upstream=upstream, rules=None, listen=args.listen, redis=None,
                                log_format=args.log_format)
        config = config_from(ns, env)
        if config.rules_path == "rules.yaml" and not os.path.exists("rules.yaml"):
            config = _with_rules(config, default_rules_path())
        setup_logging(config.log_format)
        rules = load_rules(config.rules_path)
        token = jwt.encode({"sub": "demo-user-1", "exp": int(time.time()) + 86400}, env["JWT_SECRET_KEY"],
                           algorithm="HS256")
        proxy_url = f"http://{args.listen}"
        admin_shown, admin_arg = (("(your CACHE_ADMIN_TOKEN)", '"$CACHE_ADMIN_TOKEN"') if own_admin_token
                                  else (DEMO_ADMIN_TOKEN, DEMO_ADMIN_TOKEN))
        print(f"stand-in backend: {upstream}\nproxy:            {proxy_url}  (store: "
              f"{'redis' if config.redis_url else 'memory'})\nmetrics:          {proxy_url}/metrics\n"
              f"try it (run twice: MISS, then HIT):\n  curl -si -H 'Authorization: Bearer {token}' "
              f"{proxy_url}/api/v1/users/profile\n"
              f"admin token:      {admin_shown}  (/_cache/*: explain, stats, purge)\n"
              f"purge that user's entries (the next GET is a MISS):\n"
              f"  cache-proxy purge 'user:{{demo-user-1}}:*' --url {proxy_url} --admin-token {admin_arg}\n"
              f"Ctrl-C stops both.", flush=True)
        _install_uvloop()
        try:
            asyncio.run(serve(config, rules))
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        backend.terminate()
        try:
            backend.wait(timeout=5)
        except subprocess.TimeoutExpired:
            backend.kill()


def _with_rules(config, path: str):
    from dataclasses import replace

    return replace(config, rules_path=path)


async def cmd_purge(args: argparse.Namespace) -> int:
    from ..core.policy import epoch_key, namespace_gen_key
    from ..core.rules import load_rules
    from ..store import open_store

    url = args.redis or os.environ.get("REDIS_URL")
    if not url:
        print("cache-proxy purge: needs a store (--redis URL or REDIS_URL) or a running proxy (--url "
              "http://proxy:8080, with --admin-token or CACHE_ADMIN_TOKEN: purges through its POST /_cache/purge; "
              "the only way to reach a memory store, which lives inside its proxy)", file=sys.stderr)
        return 2
    try:
        rules = load_rules(args.rules or os.environ.get("RULES_PATH") or default_rules_path())
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.all:
        gen_keys = [epoch_key(rules.prefix)]
        shown = "*"
    else:
        if not args.pattern:
            print("cache-proxy purge: give a PATTERN or --all", file=sys.stderr)
            return 2
        rendered = _render_pattern(args.pattern, rules)
        if rendered is None:
            from ..core.explain import refusal

            print(f"cache-proxy purge: {refusal(args.pattern, rules)}", file=sys.stderr)
            return 1
        gen_keys = [namespace_gen_key(rules.prefix, rendered)]
        shown = args.pattern
    from ..store.redisconf import resolve_redis_url

    store = open_store(resolve_redis_url(url, dict(os.environ)))
    try:
        longest = max((r.ttl + max(r.stale_while_revalidate, r.stale_if_error) for r in rules.rules if r.key),
                      default=3600)
        await store.bump(gen_keys, longest + 3600)
    finally:
        await store.close()
    print(f"purged {shown}")
    return 0


def _render_pattern(pattern: str, rules) -> str | None:
    """A concrete pattern (``user:{42}:*``, ``achievements:global:*``) rendered like stored keys."""
    from ..core.explain import render_pattern

    return render_pattern(pattern, rules)


# ------------------------------------------------------------------------ against a running proxy


def _admin_token(args: argparse.Namespace) -> str | None:
    from ..serve.config import admin_token_from_env

    return getattr(args, "admin_token", None) or admin_token_from_env(dict(os.environ))


def _call(base: str, method: str, path: str, admin_token: str | None, body: dict | None = None,
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


def _detail(document: object, status: int = 0) -> str:
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
    status, document = _call(args.url, "POST", "/_cache/purge", _admin_token(args), body)
    if status != 200:
        print(f"cache-proxy purge: {_detail(document, status)}", file=sys.stderr)
        if isinstance(document, dict) and document.get("namespaces"):
            print("declared namespaces: " + ", ".join(document["namespaces"]), file=sys.stderr)
        return 1
    if not document.get("applied", True):
        print(f"purge of {document.get('purged')} is pending: the proxy's store did not accept it yet "
              "(it retries; reads of the namespace bypass the cache meanwhile)", file=sys.stderr)
    print(f"purged {document.get('purged')}")
    return 0


# -------------------------------------------------------------------------------------- explain


def _identity_from_token(token: str | None):
    """(identity or error reason or None, unverified) for ``--token``: verified when a key is configured,
    else decoded without trusting it."""
    import jwt

    from ..core.errors import IdentityError
    from ..core.identity import Identity, Verifier, config_from_env

    if not token:
        return None, False
    identity_config = config_from_env(dict(os.environ))
    if identity_config.secrets or identity_config.public_keys:
        try:
            return Verifier(identity_config).verify(token), False
        except IdentityError as exc:
            return exc.reason, False
        except ValueError as exc:
            print(f"cache-proxy explain: {exc}", file=sys.stderr)
            return "not-configured", False
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.InvalidTokenError:
        return "malformed", False
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        return "missing_claim", False
    return Identity(sub, float(claims.get("exp") or 0)), True


def cmd_explain(args: argparse.Namespace) -> int:
    import json

    from ..core.explain import explain, format_text

    if args.instance:
        from urllib.parse import urlencode

        headers = {"X-Explain-Token": args.token} if args.token else {}
        query = urlencode({"method": args.method.upper(), "url": args.url})
        status, result = _call(args.instance, "GET", f"/_cache/explain?{query}", _admin_token(args), headers=headers)
        if status != 200:
            print(f"cache-proxy explain: {_detail(result, status)}", file=sys.stderr)
            return 1
    else:
        path = args.rules or os.environ.get("RULES_PATH") or default_rules_path()
        rules = _rules_or_report(path)
        if rules is None:
            return 1
        identity, unverified = _identity_from_token(args.token)
        result = explain(rules, args.method, args.url, identity, is_admin=False, unverified=unverified,
                         mode=(os.environ.get("CACHE_MODE") or "on").lower())
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_text(result))
    return 0


# ---------------------------------------------------------------------------------------- stats


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
        status, stats = _call(args.url, "GET", "/_cache/stats", _admin_token(args))
        if status != 200:
            print(f"cache-proxy stats: {_detail(stats, status)}", file=sys.stderr)
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


# ---------------------------------------------------------------------------------------- audit


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

    status, report = _call(args.url, "GET", "/_cache/audit", _admin_token(args))
    if status != 200:
        print(f"cache-proxy audit: {_detail(report)}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
