"""HTTP caching conformance: the cache-tests suite (https://github.com/http-tests/cache-tests, the suite
behind cache-tests.fyi; not bundled, give a checkout of it) against the proxy's RFC 9111 cache, on the
memory store and on Redis, summarised by the suite's kinds (required, optimal, check).

    python -m bench.conformance --cache-tests ~/src/cache-tests [--stores memory,redis] [--out DIR]

The proxy runs the shipped rules.yaml with ``http_cache: {enabled: true}`` (``--heuristic`` adds
``heuristic: true``) in front of the suite's own origin (``test-engine/server/server.mjs``, node 18 or
newer), and the suite's client (``test-engine/cli.mjs``) talks to the proxy. Results: one JSON per store
in ``--out``, as the suite writes them. Exit status 1 when a required case fails that this project does
not decline by design (``DECLINED``, README.md's Standards section says why); browser-only cases are not
run by the suite's command-line client.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .procs import ROOT, Service, free_port, log, start_proxy, start_redis, wait_http

DECLINED = {
    "headers-store-Set-Cookie": "responses with Set-Cookie are not stored",
    "partial-use-headers": "206 responses are not stored",
    "partial-use-stored-headers": "206 responses are not stored",
}
SHIPPED_HTTP_CACHE = "http_cache: {enabled: false}"


def test_kinds(suite: Path) -> dict[str, str]:
    """Each test id's kind as the suite declares it (``required`` when it names none)."""
    script = ("import(process.argv[1]).then(m => { const out = {};"
              " for (const s of m.default) for (const t of s.tests)"
              " if (!t.browser_only) out[t.id] = t.kind || 'required';"
              " console.log(JSON.stringify(out)) })")
    index = (suite / "tests" / "index.mjs").as_uri()
    done = subprocess.run(["node", "-e", script, index], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        sys.exit(f"node could not load {index}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def start_origin(suite: Path, tmp: Path) -> Service:
    port = free_port()
    env = dict(os.environ, npm_config_port=str(port), npm_config_protocol="http",
               npm_config_pidfile=str(tmp / "origin.pid"))
    log_path = tmp / "origin.log"
    proc = subprocess.Popen(["node", "test-engine/server/server.mjs"], cwd=suite, env=env, stdin=subprocess.DEVNULL,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    origin = Service("cache-tests-origin", proc, f"http://127.0.0.1:{port}", log_path)
    wait_http(origin.url + "/test/none", service=origin, ok=(409,))  # "Requests not found": it answers
    return origin


def rules_with_http_cache(tmp: Path, heuristic: bool) -> Path:
    text = (ROOT / "rules.yaml").read_text()
    if SHIPPED_HTTP_CACHE not in text:
        sys.exit(f"rules.yaml no longer says {SHIPPED_HTTP_CACHE!r}; update bench/conformance.py")
    enabled = "http_cache: {enabled: true, heuristic: true}" if heuristic else "http_cache: {enabled: true}"
    path = tmp / "rules.yaml"
    path.write_text(text.replace(SHIPPED_HTTP_CACHE, enabled))
    return path


def run_client(suite: Path, base: str) -> dict:
    env = dict(os.environ, npm_config_base=base, npm_package_config_id="")
    done = subprocess.run(["node", "test-engine/cli.mjs"], cwd=suite, env=env, capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0 or not done.stdout.strip().startswith("{"):
        sys.exit(f"cache-tests client failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def summarise(store: str, kinds: dict[str, str], results: dict) -> list[str]:
    """Prints passes and failures per kind (failures in a case's setup, which cache-tests.fyi shows apart,
    are counted as failures and said); returns the required failures not declined."""
    counts: dict[str, list[int]] = {}
    unexpected = []
    for test_id, kind in kinds.items():
        outcome = results.get(test_id)
        if outcome is None:
            continue  # not run: a dependency failed, or the client skips it
        passed = outcome is True
        in_setup = isinstance(outcome, list) and outcome[:1] == ["Setup"]
        tally = counts.setdefault(kind, [0, 0, 0])
        tally[0 if passed else 1] += 1
        tally[2] += in_setup
        if not passed and kind == "required":
            reason = DECLINED.get(test_id)
            log(f"{store}: required {test_id}: {outcome[1] if isinstance(outcome, list) else outcome}"
                + (f" (declined: {reason})" if reason else ""))
            if reason is None:
                unexpected.append(test_id)
    for kind, (passed, failed, in_setup) in sorted(counts.items()):
        log(f"{store}: {kind}: {passed} passed, {failed} failed ({in_setup} of them in setup)")
    return unexpected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-tests", required=True, type=Path, help="a checkout of http-tests/cache-tests")
    parser.add_argument("--stores", default="memory,redis", help="comma-separated: memory, redis")
    parser.add_argument("--heuristic", action="store_true", help="http_cache.heuristic: true")
    parser.add_argument("--out", type=Path, default=Path("conformance-results"))
    args = parser.parse_args()
    suite = args.cache_tests.resolve()
    if not (suite / "test-engine" / "cli.mjs").exists():
        sys.exit(f"{suite} is not a cache-tests checkout (no test-engine/cli.mjs)")
    args.out.mkdir(parents=True, exist_ok=True)
    if shutil.which("node") is None:
        sys.exit("node (18 or newer) is needed to run cache-tests")
    kinds = test_kinds(suite)
    unexpected: list[str] = []
    with tempfile.TemporaryDirectory(prefix="conformance-") as name:
        tmp = Path(name)
        services: list[Service] = []
        try:
            origin = start_origin(suite, tmp)
            services.append(origin)
            rules = rules_with_http_cache(tmp, args.heuristic)
            for store in args.stores.split(","):
                redis_url = None
                if store == "redis":
                    services.append(start_redis(tmp))
                    redis_url = services[-1].url
                proxy = start_proxy(tmp, store, origin.url, "conformance-secret", "conformance-admin",
                                    redis_url=redis_url, rules=rules)
                services.append(proxy)
                log(f"{store}: running cache-tests against {proxy.url}")
                results = run_client(suite, proxy.url)
                (args.out / f"{store}.json").write_text(json.dumps(results, indent=2))
                unexpected += [f"{store}:{test_id}" for test_id in summarise(store, kinds, results)]
        finally:
            for service in reversed(services):
                service.stop()
    if unexpected:
        log(f"required cases failing that are not declined: {', '.join(unexpected)}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
