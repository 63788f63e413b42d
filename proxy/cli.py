"""``cache-proxy`` (also ``python -m proxy``): serve, check, demo, explain, purge, stats.

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

from .errors import RulesError

log = logging.getLogger("proxy")
# The demo's shared secret (the stand-in backend receives it through JWT_SECRET_KEY). At least 32 bytes:
# PyJWT warns on shorter HMAC keys, and a warning on stderr would break JSON-only logs.
DEMO_SECRET = "demo-secret-change-me-0123456789abcdef"


def version() -> str:
    try:
        return metadata.version("katiba-cache")
    except metadata.PackageNotFoundError:
        return "0.1.0+source"


def default_rules_path() -> str:
    """``rules.yaml`` in the working directory, else the copy shipped inside the package."""
    if os.path.exists("rules.yaml"):
        return "rules.yaml"
    return os.path.join(os.path.dirname(__file__), "rules.yaml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cache-proxy", description="Caching reverse proxy for the katiba360 API")
    parser.add_argument("--version", action="version", version=f"cache-proxy {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--upstream", help="backend base URL (env UPSTREAM_URL)")
    serve.add_argument("--rules", help="rules file (env RULES_PATH, default rules.yaml)")
    serve.add_argument("--listen", help="HOST:PORT (env LISTEN, default 0.0.0.0:8080)")
    serve.add_argument("--redis", help="redis:// URL (env REDIS_URL); none: in-memory store")
    serve.add_argument("--log-format", choices=("json", "text"), help="env LOG_FORMAT, default json")

    check = sub.add_parser("check", help="validate a rules file")
    check.add_argument("file", nargs="?", help="default: rules.yaml")

    demo = sub.add_parser("demo", help="the stand-in backend with the proxy in front of it")
    demo.add_argument("--listen", default="127.0.0.1:8080")
    demo.add_argument("--log-format", choices=("json", "text"), default="text")

    purge = sub.add_parser("purge", help="purge a namespace (user:{user_id}:*) or exact key in a store")
    purge.add_argument("pattern", nargs="?", help="e.g. 'user:{0f1e...}:*' or 'achievements:global:*'")
    purge.add_argument("--all", action="store_true", help="bump the global epoch: every entry goes")
    purge.add_argument("--redis", help="the store (env REDIS_URL)")
    purge.add_argument("--rules", help="rules file (env RULES_PATH)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "check":
        return cmd_check(args.file or os.environ.get("RULES_PATH") or "rules.yaml")
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "purge":
        return asyncio.run(cmd_purge(args))
    return 2


def cmd_check(path: str) -> int:
    from .rules import load_rules

    try:
        rules = load_rules(path)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
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
    from .config import config_from
    from .logs import setup_logging
    from .rules import load_rules

    try:
        config = config_from(args)
    except (ValueError, OSError) as exc:
        print(f"cache-proxy: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format)
    if not config.upstream.url:
        log.error("no upstream", extra={"event": "config_error", "detail": "give --upstream or UPSTREAM_URL"})
        return 2
    try:
        rules = load_rules(config.rules_path)
    except RulesError as exc:
        log.error("invalid rules file", extra={"event": "rules_invalid", "errors": [str(p) for p in exc.problems]})
        return 1
    _install_uvloop()
    try:
        asyncio.run(serve(config, rules))
    except (ValueError, OSError) as exc:
        log.error("cannot start", extra={"event": "start_failed", "error": str(exc)})
        return 1
    return 0


async def serve(config, rules, started: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``): not ready first, then drain in-flight requests."""
    import gc

    from aiohttp import web

    from .server import PROXY_KEY, build_app

    # Test-only switches that break a guarantee on purpose (the stale-read checker's mutants).
    unsafe = frozenset(s.strip() for s in os.environ.get("KATIBA_CACHE_UNSAFE_TEST_SWITCHES", "").split(",")
                       if s.strip())
    if unsafe:
        log.warning("unsafe test-only switches are on: this proxy breaks its consistency guarantee on purpose",
                    extra={"event": "unsafe_switches", "switches": sorted(unsafe)})
    app = build_app(config, rules, unsafe=unsafe)
    proxy = app[PROXY_KEY]
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=config.shutdown_grace)
    await runner.setup()
    host, port = _split_listen(config.listen)
    site = web.TCPSite(runner, host, port, reuse_port=True, backlog=2048)
    await site.start()
    log.info("listening", extra={"event": "listening", "listen": config.listen, "upstream": config.upstream.url,
                                  "store": proxy.store.name, "rules": len(rules.rules), "mode": config.cache_mode})
    gc.collect()
    gc.freeze()  # the start-up objects never die: keep them out of every later collection
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, proxy.reload_rules)
    if started is not None:
        started.set()
    await stop.wait()
    proxy.ready = False  # /readyz says no before the listener closes, so balancers stop sending
    log.info("draining", extra={"event": "shutdown", "grace_s": config.shutdown_grace})
    await runner.cleanup()
    log.info("stopped", extra={"event": "stopped"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_demo(args: argparse.Namespace) -> int:
    """The stand-in backend in a child process, the proxy in this one, until Ctrl-C."""
    import jwt

    from .config import config_from
    from .logs import setup_logging
    from .rules import load_rules

    env = dict(os.environ)
    env.setdefault("JWT_SECRET_KEY", DEMO_SECRET)
    env.setdefault("CACHE_ADMIN_TOKEN", "demo-admin-token")
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
        print(f"stand-in backend: {upstream}\nproxy:            {proxy_url}  (store: "
              f"{'redis' if config.redis_url else 'memory'})\nmetrics:          {proxy_url}/metrics\n"
              f"try it (run twice: MISS, then HIT):\n  curl -si -H 'Authorization: Bearer {token}' "
              f"{proxy_url}/api/v1/users/profile\nCtrl-C stops both.", flush=True)
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
    from .policy import epoch_key, namespace_gen_key
    from .rules import load_rules
    from .store import open_store

    url = args.redis or os.environ.get("REDIS_URL")
    if not url:
        print("cache-proxy purge: needs --redis or REDIS_URL (the memory store lives inside its proxy; "
              "use the manual invalidation endpoints there)", file=sys.stderr)
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
            declared = ", ".join(t.text + ":*" for t in rules.namespaces)
            print(f"cache-proxy purge: {args.pattern!r} is neither a declared namespace followed by ':*' "
                  f"({declared}) nor an exact key of a rule", file=sys.stderr)
            return 1
        gen_keys = [namespace_gen_key(rules.prefix, rendered)]
        shown = args.pattern
    store = open_store(url)
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
    from .keys import escape_value

    body = pattern[:-2] if pattern.endswith(":*") else pattern
    segments = body.split(":")
    shape, rendered = [], []
    for seg in segments:
        if seg.startswith("{") and seg.endswith("}") and len(seg) > 2:
            shape.append(None)
            rendered.append("{" + escape_value(seg[1:-1]) + "}")
        elif seg and "{" not in seg and "}" not in seg and "*" not in seg:
            shape.append(seg)
            rendered.append(seg)
        else:
            return None
    pool = rules.namespaces if pattern.endswith(":*") else tuple(r.key for r in rules.rules if r.key)
    if not any(t.shape == tuple(shape) for t in pool):
        return None
    return ":".join(rendered)


if __name__ == "__main__":
    sys.exit(main())
