"""Stale-read checker: many clients over several proxy processes that share one Redis, one backend.

The guarantee under test (design-notes.md, "Ordering that gives the guarantee"): once a write's answer
has reached its client, no read that *starts* afterwards, on any instance, returns data older than that
write, for every read route the write's rule purges. The stand-in stamps every resource with a version
that only grows (``body.version``, see standin/app.py), so "older" is a number comparison:

    a READ of view v is a violation if its version < the version answered by a WRITE affecting v
    that ended (answer fully read) before the read started (``time.monotonic`` in this one process).

``AFFECTS`` maps each write to the views it affects: the rules.yaml purges intersected with the
stand-in's version table. Effects the rules do not name (a profile update changes the leaderboard's
display names and its version; rules.yaml leaves that to the TTL) are never flagged. A PUT profile
purges every ``user:{id}:*`` key, but only profile, auth/me and the full profile carry its version.
``/auth/me`` and the full profile are the complete profile: every per-user write changes them. The
workload also makes writes no rule matches (``UNRULED``): onboarding progress (which changes
``/auth/me`` and the full profile; only ``unmatched_writes`` purges them) and reading progress
(which changes no cached read). A rules file whose ``unmatched_writes`` purges nothing must be caught.

Use (a pytest test; a bench soak: ``from tests.consistency.checker import ...`` from the repository
root, or ``python -m tests.consistency.checker --redis URL --ops 100000``)::

    with Cluster(redis_url, proxies=3, unsafe=("no-fill-guard",), workdir=tmp) as cluster:
        report = run_check(cluster.urls, Workload(seed=7, operations=3000), cluster.backend_url)
    print(report.line("no-fill-guard")); report.violations

Workload: ``clients`` asyncio tasks share one budget of operations (one operation = one HTTP request,
each to a random instance). Users: a few hot ones take most of the traffic. Each step is one of:
``single-read``, ``single-write``, ``read-write-read`` (warm a view, write, and read it again right
after the answer on another instance: the window the purge-before-release ordering closes),
``race`` (a read of a view concurrent with a write to it, then a read after both: a fill that read
old data and lands after the purge is what the fill guard refuses), ``slow-read`` (the same, made
certain: the stand-in's gate holds the read after it read its data until the write is answered),
and for hits ``browse`` (one view read three times). Per 3,000 operations each mutant showed 12
to 65 stale reads in local runs, most of them from the random steps alone; the product none.

The proxies run with ``STORE_TIMEOUT=1`` (default 0.1 s): on a starved CI machine a store call that
times out leaves its purge pending on one instance only, a documented limit that is not this
checker's subject; ``Cluster.store_errors()`` counts such events from the proxies' logs.
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import jwt
import orjson

import standin

REPO = Path(__file__).resolve().parents[2]
API = "/api/v1"
SECRET = standin.DEFAULT_SECRET
UNSAFE_ENV = "KATIBA_CACHE_UNSAFE_TEST_SWITCHES"
BADGES = ("bronze", "silver", "gold", "platinum")

# Read views: name -> path (per-user views are read with the owner's token; "*" owns the global ones).
USER_VIEWS = {
    "profile": "/users/profile", "me": "/auth/me", "full_profile": "/users/profile/full",
    "preferences": "/users/preferences", "languages": "/users/languages", "interests": "/users/interests",
    "accessibility": "/users/accessibility", "user_stats": "/users/stats", "achievements": "/achievements",
    "achievements_summary": "/achievements/summary", "achievements_stats": "/achievements/stats",
    **{f"achievements_type_{b}": f"/achievements/type/{b}" for b in BADGES},
}
GLOBAL_VIEWS = {"leaderboard": ("/achievements/leaderboard", "/achievements/leaderboard?limit=5"),
                "recent": ("/achievements/recent", "/achievements/recent?limit=5"),
                "types": ("/achievements/types",)}  # static: version 0, no write touches it
# How often a single read picks each view: the pages an app shows most, then the rest.
READ_MIX = {"profile": 4, "me": 3, "full_profile": 4, "preferences": 2, "achievements": 3,
            "achievements_summary": 2, "user_stats": 2, "leaderboard": 3, "recent": 2, "types": 1}
READ_NAMES = (*USER_VIEWS, *GLOBAL_VIEWS)
READ_WEIGHTS = tuple(READ_MIX.get(name, 1) for name in READ_NAMES)
ACHIEVEMENT_VIEWS = ("achievements", "achievements_summary", "achievements_stats", "user_stats",
                     "full_profile", "me", *(f"achievements_type_{b}" for b in BADGES))
COMPLETE_PROFILE = ("full_profile", "me")  # every per-user write changes both (upstream-api.md)
ONBOARDING_STEPS = ("welcome", "profile", "languages", "interests", "accessibility", "finish")
# Writes no rule of rules.yaml matches: purged by unmatched_writes only (the caller's namespaces).
UNRULED = ("onboarding_progress", "onboarding_reset", "reading_progress")
# write -> (views of the affected user, global views): rules.yaml purges ∩ stand-in version table.
AFFECTS = {
    "update_profile": (("profile", *COMPLETE_PROFILE), ()),
    "update_preferences": (("preferences", *COMPLETE_PROFILE), ()),
    "add_language": (("languages", *COMPLETE_PROFILE), ()),
    "delete_language": (("languages", *COMPLETE_PROFILE), ()),
    "add_interest": (("interests", *COMPLETE_PROFILE), ()),
    "delete_interest": (("interests", *COMPLETE_PROFILE), ()),
    "update_accessibility": (("accessibility", *COMPLETE_PROFILE), ()),
    "create_achievement": (ACHIEVEMENT_VIEWS, ("leaderboard", "recent")),
    "award_achievement": (ACHIEVEMENT_VIEWS, ("leaderboard", "recent")),
    "onboarding_progress": (COMPLETE_PROFILE, ()),
    "onboarding_reset": (COMPLETE_PROFILE, ()),
    "reading_progress": ((), ()),  # no cached read shows it
}


@dataclass(frozen=True)
class Workload:
    seed: int = 1
    operations: int = 3000
    clients: int = 24
    users: int = 8
    hot_users: int = 3
    hot_share: float = 0.7
    # step kind -> weight; see the module docstring
    steps: tuple[tuple[str, float], ...] = (("single-read", 0.25), ("browse", 0.25), ("single-write", 0.04),
                                            ("read-write-read", 0.22), ("race", 0.21), ("slow-read", 0.03))
    writes: tuple[tuple[str, float], ...] = (
        ("update_profile", 3), ("update_preferences", 2), ("add_language", 1), ("delete_language", 1),
        ("add_interest", 1), ("delete_interest", 0.5), ("update_accessibility", 1),
        ("create_achievement", 1), ("award_achievement", 1.5),
        ("onboarding_progress", 1), ("onboarding_reset", 0.25), ("reading_progress", 0.25))
    timeout: float = 30.0  # per request


@dataclass(frozen=True)
class Plan:
    """A write to make: ``target`` is the user whose views it affects (the caller, or an award's user)."""

    name: str
    caller: str
    method: str
    path: str
    body: dict | None
    target: str

    def views(self) -> tuple[tuple[str, str], ...]:
        mine, shared = AFFECTS[self.name]
        return tuple((v, self.target) for v in mine) + tuple((v, "*") for v in shared)


@dataclass
class Op:
    client: int
    kind: str  # "read" | "write"
    name: str  # view or write rule name
    user: str  # the caller (token subject)
    instance: int
    start: float
    end: float = 0.0
    status: int = 0  # HTTP status, 0 on a transport error
    code: int | None = None  # header.responseCode
    version: int | None = None
    x_cache: str = ""
    view: tuple[str, str] | None = None  # reads: (view, owner user or "*")
    affects: tuple[tuple[str, str], ...] = ()  # acknowledged writes: the views they affect
    item: int | None = None  # an added language's / interest's id
    step: str = ""  # the workload step it belongs to
    error: str = ""


@dataclass
class Violation:
    read: Op
    required: int
    write: Op

    def __str__(self) -> str:
        r, w = self.read, self.write
        return (f"{r.view[0]} of {r.view[1]}: read on proxy {r.instance} ({r.x_cache}) at +{r.start:.4f}s got "
                f"version {r.version} < {self.required} answered by {w.name} on proxy {w.instance}, "
                f"acknowledged at +{w.end:.4f}s")


@dataclass
class Report:
    operations: int
    reads: int
    writes: int
    hits: int
    errors: int
    violations: list[Violation] = field(default_factory=list)
    elapsed: float = 0.0
    unruled_writes: int = 0  # acknowledged writes no rule matches (UNRULED)

    def line(self, label: str) -> str:
        pct = 100.0 * self.hits / self.reads if self.reads else 0.0
        return (f"stale-read check [{label}]: operations={self.operations} reads={self.reads} "
                f"writes={self.writes} hits={self.hits} ({pct:.0f}% of reads) violations={len(self.violations)} "
                f"errors={self.errors} unruled_writes={self.unruled_writes} elapsed={self.elapsed:.1f}s")


def check(ops: list[Op], elapsed: float = 0.0) -> Report:
    """Every read against the writes to its view acknowledged before it started."""
    acked: dict[tuple[str, str], list[Op]] = {}
    for op in ops:
        for view in op.affects:
            acked.setdefault(view, []).append(op)
    index = {}
    for view, writes in acked.items():
        writes.sort(key=lambda w: w.end)
        best, prefix = None, []
        for w in writes:
            best = w if best is None or w.version > best.version else best
            prefix.append(best)
        index[view] = ([w.end for w in writes], prefix)
    reads = [op for op in ops if op.kind == "read"]
    report = Report(len(ops), len(reads), len(ops) - len(reads), sum(op.x_cache == "HIT" for op in reads),
                    sum(bool(op.error) for op in ops), elapsed=elapsed,
                    unruled_writes=sum(op.name in UNRULED and op.version is not None for op in ops))
    for r in reads:
        if r.version is None or r.view not in index:
            continue
        ends, prefix = index[r.view]
        before = bisect.bisect_left(ends, r.start)  # writes with end < read start
        if before and r.version < prefix[before - 1].version:
            report.violations.append(Violation(r, prefix[before - 1].version, prefix[before - 1]))
    return report


# ------------------------------------------------------------------------------------ workload

class _Run:
    def __init__(self, urls: list[str], wl: Workload, session: aiohttp.ClientSession, backend: str | None):
        self.urls, self.wl, self.session, self.backend = urls, wl, session, backend
        self.gate_lock = asyncio.Lock()
        master = random.Random(wl.seed)
        run_id = os.urandom(3).hex()  # user ids never collide with an earlier run's entries or rows
        self.users = [f"u{wl.seed}-{i}-{run_id}" for i in range(wl.users)]
        exp = int(time.time()) + 86400
        self.tokens = {u: jwt.encode({"sub": u, "exp": exp}, SECRET, algorithm="HS256") for u in self.users}
        self.rngs = [random.Random(master.getrandbits(64)) for _ in range(wl.clients)]
        self.budget = wl.operations
        self.ops: list[Op] = []
        self.items: dict[tuple[str, str], list[int]] = {}  # (user, "languages"|"interests") -> ids
        self.serial = itertools.count()
        self.steps = [""] * wl.clients  # each client's current step, stamped on its operations
        self.t0 = time.monotonic()

    def pick_user(self, rng: random.Random) -> str:
        hot = self.users[:self.wl.hot_users]
        return rng.choice(hot if rng.random() < self.wl.hot_share else self.users[self.wl.hot_users:] or hot)

    def other_instance(self, rng: random.Random, not_this: int) -> int:
        return rng.choice([i for i in range(len(self.urls)) if i != not_this] or [not_this])

    async def send(self, client: int, kind: str, name: str, user: str, instance: int, method: str, path: str,
                   body: dict | None = None, view: tuple[str, str] | None = None) -> Op:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        data = orjson.dumps(body) if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        op = Op(client, kind, name, user, instance, time.monotonic() - self.t0, view=view, step=self.steps[client])
        try:
            async with self.session.request(method, self.urls[instance] + API + path, data=data,
                                            headers=headers) as resp:
                raw = await resp.read()
                op.status, op.x_cache = resp.status, resp.headers.get("X-Cache", "")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            op.error = f"{type(exc).__name__}: {exc}"
        op.end = time.monotonic() - self.t0
        self.ops.append(op)
        if op.status != 200:
            op.error = op.error or f"HTTP {op.status}"
            return op
        try:
            doc = orjson.loads(raw)
            op.code = doc["header"]["responseCode"]
            if 200 <= op.code < 300:
                op.version = doc["body"]["version"]
                op.item = (doc["body"].get("item") or {}).get("id")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            op.error = f"unexpected answer {raw[:200]!r}"
            return op
        if op.version is None and (kind == "read" or op.code != 404):  # a delete may find its item gone
            op.error = f"responseCode {op.code}"
        return op

    async def read(self, client: int, rng: random.Random, view: tuple[str, str], instance: int) -> Op:
        name, owner = view
        if owner == "*":
            return await self.send(client, "read", name, self.pick_user(rng), instance, "GET",
                                   rng.choice(GLOBAL_VIEWS[name]), view=view)
        return await self.send(client, "read", name, owner, instance, "GET", USER_VIEWS[name], view=view)

    def random_view(self, rng: random.Random) -> tuple[str, str]:
        name = rng.choices(READ_NAMES, READ_WEIGHTS)[0]
        return (name, "*") if name in GLOBAL_VIEWS else (name, self.pick_user(rng))

    def plan_write(self, rng: random.Random) -> Plan:
        names, weights = zip(*self.wl.writes)
        name, user = rng.choices(names, weights)[0], self.pick_user(rng)
        n = next(self.serial)
        if name.startswith("delete_"):  # of an item this run added; none yet: add one
            table = name.removeprefix("delete_") + "s"
            ids = self.items.get((user, table))
            if ids:
                return Plan(name, user, "DELETE", f"/users/{table}/{ids.pop(rng.randrange(len(ids)))}", None, user)
            name = "add_" + table[:-1]
        badge = {"badge_type": rng.choice(BADGES), "achievement_data": {"n": n}}
        target = self.pick_user(rng) if name == "award_achievement" else user  # award: usually someone else
        method, path, body = {
            "update_profile": ("PUT", "/users/profile", {"display_name": f"Name {n}", "bio": f"bio {n}"}),
            "update_preferences": ("POST", "/users/preferences", {"theme": rng.choice(("light", "dark")),
                                                                  "notifications_enabled": rng.random() < 0.5}),
            "update_accessibility": ("POST", "/users/accessibility", {
                "font_size": rng.choice(("small", "medium", "large", "x-large")),
                "high_contrast": rng.random() < 0.5}),
            "add_language": ("POST", "/users/languages", {"language_code": f"l{n:x}"}),
            "add_interest": ("POST", "/users/interests", {"interest": f"interest {n}"}),
            "create_achievement": ("POST", "/achievements", badge),
            "award_achievement": ("POST", "/achievements/award", {**badge, "user_id": target}),
            "onboarding_progress": ("PUT", "/onboarding/progress", {"current_step": rng.choice(ONBOARDING_STEPS)}),
            "onboarding_reset": ("POST", "/onboarding/reset", None),
            "reading_progress": ("PUT", "/reading/progress", {"section": f"Article {n}", "percent": n % 101}),
        }[name]
        return Plan(name, user, method, path, body, target)

    async def write(self, client: int, plan: Plan, instance: int) -> Op:
        op = await self.send(client, "write", plan.name, plan.caller, instance, plan.method, plan.path, plan.body)
        if op.version is not None:
            op.affects = plan.views()
            if op.item is not None:
                table = plan.name.removeprefix("add_") + "s"
                self.items.setdefault((plan.caller, table), []).append(op.item)
        return op

    def affected_view(self, rng: random.Random, plan: Plan) -> tuple[str, str]:
        views = plan.views()
        return rng.choice(views) if views else self.random_view(rng)  # a write no cached read shows

    async def slow_read(self, client: int, rng: random.Random) -> None:
        """A read that misses and is held by the stand-in's gate after reading its data (a slow query)
        while a write to the same view is answered on another instance; then a read of that view.

        The gate is global, so these steps run one at a time; if the read was a hit, another client's
        read of the same route may be held instead (released just the same). The hold is observed by
        a bounded poll of ``/_standin/gate``, never assumed after a sleep.
        """
        plan = self.plan_write(rng)
        view, at = self.affected_view(rng, plan), rng.randrange(len(self.urls))
        path = API + (USER_VIEWS[view[0]] if view[1] != "*" else GLOBAL_VIEWS[view[0]][0])
        control = self.backend + "/_standin/gate"
        await self._control("POST", control, {"method": "GET", "path": path, "count": 1, "timeout_s": 5})
        try:
            held = asyncio.ensure_future(self.read(client, rng, view, self.other_instance(rng, at)))
            deadline = time.monotonic() + 5
            while not held.done() and time.monotonic() < deadline:
                if (await self._control("GET", control))["waiting"]:
                    break
                await asyncio.sleep(0.001)  # poll interval
            await self.write(client, plan, at)
        finally:
            await self._control("POST", control + "/release")
        await held
        await self.read(client, rng, view, rng.randrange(len(self.urls)))

    async def _control(self, method: str, url: str, body: dict | None = None) -> dict:
        async with self.session.request(method, url, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def client(self, client: int) -> None:
        rng, n = self.rngs[client], len(self.urls)
        kinds, weights = zip(*self.wl.steps)
        while self.budget > 0:
            step = self.steps[client] = rng.choices(kinds, weights)[0]
            if step == "single-read":
                self.budget -= 1
                await self.read(client, rng, self.random_view(rng), rng.randrange(n))
            elif step == "browse":  # one page viewed again and again, from anywhere
                view = self.random_view(rng)
                for _ in range(3):
                    self.budget -= 1
                    await self.read(client, rng, view, rng.randrange(n))
            elif step == "single-write":
                self.budget -= 1
                await self.write(client, self.plan_write(rng), rng.randrange(n))
            elif step == "read-write-read":
                self.budget -= 3
                plan = self.plan_write(rng)
                view, at = self.affected_view(rng, plan), rng.randrange(n)
                await self.read(client, rng, view, rng.randrange(n))
                await self.write(client, plan, at)
                await self.read(client, rng, view, self.other_instance(rng, at))
            elif step == "slow-read" and self.backend and not self.gate_lock.locked():
                self.budget -= 3
                async with self.gate_lock:
                    await self.slow_read(client, rng)
            else:  # race
                self.budget -= 3
                plan = self.plan_write(rng)
                view, at = self.affected_view(rng, plan), rng.randrange(n)
                await asyncio.gather(self.read(client, rng, view, self.other_instance(rng, at)),
                                     self.write(client, plan, at))
                await self.read(client, rng, view, rng.randrange(n))


async def run_workload(urls: list[str], wl: Workload, backend: str | None = None) -> list[Op]:
    """Run ``wl`` against the proxies at ``urls``; every request made, in completion order.

    ``backend``: the stand-in's URL, for its gate (the ``slow-read`` step); without it, those steps
    are ``race`` steps."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=wl.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        run = _Run(urls, wl, session, backend)
        await asyncio.gather(*(run.client(c) for c in range(wl.clients)))
    return run.ops


def run_check(urls: list[str], wl: Workload, backend: str | None = None) -> Report:
    start = time.monotonic()
    ops = asyncio.run(run_workload(urls, wl, backend))
    return check(ops, time.monotonic() - start)


# ------------------------------------------------------------------------------------- processes

def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """One stand-in backend process and ``proxies`` proxy processes on one Redis; a context manager."""

    def __init__(self, redis_url: str, proxies: int = 3, unsafe: tuple[str, ...] = (), delay_ms: float = 2.0,
                 workdir: Path | str | None = None, startup_timeout: float = 20.0, env: dict | None = None,
                 rules: Path | str | None = None):
        self.redis_url, self.count, self.unsafe, self.delay_ms = redis_url, proxies, tuple(unsafe), delay_ms
        self.rules = Path(rules) if rules is not None else REPO / "rules.yaml"  # a mutant's copy, or the shipped
        self.workdir = Path(workdir or os.environ.get("TMPDIR", "/tmp"))
        self.startup_timeout = startup_timeout
        self.extra_env = dict(env or {})
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.backend_url = ""
        self.urls: list[str] = []

    def __enter__(self) -> "Cluster":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self, name: str, argv: list[str], env: dict, stdout=None) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        self.logs.append(log)
        with open(log, "ab") as fh:
            proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                    stdout=stdout or fh, stderr=fh)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "JWT_SECRET_KEY": SECRET, "LOG_FORMAT": "json", "STORE_TIMEOUT": "1",
               **self.extra_env}
        env.pop(UNSAFE_ENV, None)
        deadline = time.monotonic() + self.startup_timeout
        backend = self._spawn("standin", ["-m", "standin", "--listen", "127.0.0.1:0", "--delay-ms",
                                          str(self.delay_ms)], env, stdout=subprocess.PIPE)
        line = b""
        while not line.endswith(b"\n") and time.monotonic() < deadline and backend.poll() is None:
            ready, _, _ = select.select([backend.stdout], [], [], 0.1)
            if ready:
                line += os.read(backend.stdout.fileno(), 4096)
        if not line.startswith(b"standin listening on "):
            raise RuntimeError(f"the stand-in did not start ({line!r}):\n{self.log_tail()}")
        self.backend_url = line.decode().strip().removeprefix("standin listening on ")
        proxy_env = {**env, UNSAFE_ENV: ",".join(self.unsafe)} if self.unsafe else env
        ports = _free_ports(self.count)
        for i, port in enumerate(ports):
            self._spawn(f"proxy{i}", ["-m", "proxy", "serve", "--upstream", self.backend_url, "--listen",
                                      f"127.0.0.1:{port}", "--redis", self.redis_url, "--rules",
                                      str(self.rules)], proxy_env)
            self.urls.append(f"http://127.0.0.1:{port}")
        for i, url in enumerate(self.urls):
            self._wait_ready(self.procs[i + 1], url, deadline)

    def _wait_ready(self, proc: subprocess.Popen, url: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"proxy {url} exited with {proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=0.5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)  # a bounded poll of /readyz (start-up), not synchronisation of the checker
        raise RuntimeError(f"proxy {url} not ready within {self.startup_timeout}s:\n{self.log_tail()}")

    def close(self, grace: float = 5.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()

    def proxy_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.name.startswith("proxy"))

    def store_errors(self) -> int:
        return self.proxy_logs().count('"event":"store_error"')

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for p in self.logs:
            if p.exists():
                out.append(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.consistency.checker --redis URL [--ops N] [--seed S] [--unsafe a,b]``: one run."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis", required=True, help="a Redis of your own (not flushed; each run uses new user ids)")
    ap.add_argument("--ops", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--proxies", type=int, default=3)
    ap.add_argument("--unsafe", default="")
    args = ap.parse_args(argv)
    unsafe = tuple(s for s in args.unsafe.split(",") if s)
    with tempfile.TemporaryDirectory() as tmp, Cluster(args.redis, args.proxies, unsafe, workdir=tmp) as cluster:
        report = run_check(cluster.urls, Workload(seed=args.seed, operations=args.ops), cluster.backend_url)
    print(report.line(args.unsafe or "product"))
    for v in report.violations[:10]:
        print("  " + str(v))
    return 1 if report.violations or report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
