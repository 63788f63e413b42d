"""``cache-proxy`` (also ``python -m proxy``): serve, check, demo, explain, purge, stats, audit.

Exit codes: 0 success, 1 invalid input (rules file, pattern), 2 usage. Nothing is printed on stdout
except what a command is asked for (a summary, the demo's URLs); logs go to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import time

from ..core.errors import KatibaError, RulesError, StoreUnavailable
from .parser import default_rules_path, parse_args
from .remote import admin_token, call, cmd_audit, cmd_purge_url, cmd_stats, detail
from .runner import install_uvloop, serve

log = logging.getLogger("proxy")
# The demo's shared secret (the stand-in backend receives it through JWT_SECRET_KEY). At least 32 bytes:
# PyJWT warns on shorter HMAC keys, and a warning on stderr would break JSON-only logs.
DEMO_SECRET = "demo-secret-change-me-0123456789abcdef"
DEMO_ADMIN_TOKEN = "demo-admin-token"  # printed by the demo, with a purge that uses it


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve":
        if argv is None:  # this process's own command line, not a call from Python (tests)
            from .allocator import run_under_chosen_allocator

            run_under_chosen_allocator()
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
    from ..core.rulesfile import load_rules

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


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.config import config_from
    from .logs import setup_logging
    from ..core.rulesfile import load_rules

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
    install_uvloop()
    try:
        asyncio.run(serve(config, rules))
    except (ValueError, OSError) as exc:
        log.error("cannot start", extra={"event": "start_failed", "error": str(exc)})
        return 1
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_demo(args: argparse.Namespace) -> int:
    """The stand-in backend in a child process, the proxy in this one, until Ctrl-C."""
    import jwt

    from ..serve.config import config_from
    from .logs import setup_logging
    from ..core.rulesfile import load_rules

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
        install_uvloop()
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
    from ..core.rulesfile import load_rules
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
        status, result = call(args.instance, "GET", f"/_cache/explain?{query}", admin_token(args), headers=headers)
        if status != 200:
            print(f"cache-proxy explain: {detail(result, status)}", file=sys.stderr)
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


# ---------------------------------------------------------------------------------------- audit


if __name__ == "__main__":
    sys.exit(main())
