"""What every scenario shares: the mode's settings, the running services, and small HTTP helpers.

``Settings.for_mode("full" | "quick" | "smoke")`` holds every duration, rate and size a run uses, so the
figures in BENCHMARKS.md can name the parameters they were measured with. ``Bench`` owns the temp
directory and the services (stopped in ``close()``), and offers ``http()`` (urllib, for set-up and
checks, never for load), the stand-in's counters and the proxy's ``/metrics`` counters.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .procs import Service, log

SERVER_CORES = "0"  # the 1-core comparisons: every server process on core 0 ...
CLIENT_CORES = "1"  # ... and the load generator on core 1


@dataclass(frozen=True)
class Settings:
    mode: str
    hit_duration: float = 8
    hit_rounds: int = 3
    hit_connections: int = 50
    sweep_levels: tuple[int, ...] = (1, 4, 16, 50, 128, 256)
    sweep_duration: float = 4
    half_duration: float = 8
    half_keys: tuple[str, ...] = ("per_user", "global")
    workers_rounds: int = 3
    miss_rate: float = 200
    miss_connections: int = 10
    miss_duration: float = 4
    miss_rounds: int = 5
    miss_max_duration: float = 5
    katiba_users: int = 1000
    katiba_zipf: float = 1.1
    katiba_connections: int = 64
    katiba_duration: float = 60
    katiba_probe: float = 5
    katiba_warmup: float = 60  # time bound of the prefill (it ends when every pair was read once)
    katiba_max_run: float = 10
    katiba_load: float = 0.3  # paced runs at this share of the smaller measured capacity (backend, proxy)
    katiba_reread_duration: float = 30  # each of the two read-after-own-write runs (shipped, refresh_after_purge)
    purge_levels: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    purge_bumps: int = 5000
    purge_endpoint_calls: int = 8
    coalesce_requests: int = 100  # concurrent identical GETs of one fresh key
    coalesce_delay_ms: float = 200  # the stand-in's DB delay while they run (restored afterwards)
    coalesce_instances: int = 3  # proxies sharing one Redis in the cross-instance case
    keyspace_levels: tuple[int, ...] = (1_000, 100_000, 1_000_000)  # keys: users x 2 paths (x variants)
    keyspace_max_users: int = 50_000  # beyond users x 2 paths, keys come from ?v= variants per user
    keyspace_connections: int = 50
    keyspace_duration: float = 8
    keyspace_rounds: int = 3
    keyspace_warmup_s: float = 3  # one unmeasured run per target and level
    keyspace_prefill_s: float = 300  # time bound of each prefill walk (nginx, Redis) per level
    # L1_MAX_BYTES of the redis+l1 target: room for the 100k level's entries (about 2.5 KB each as L1 counts
    # them since it counts real memory), about what the default 64 MiB really held when it counted key and
    # body alone (runs up to 2026-12-07 01:23)
    keyspace_l1_max_bytes: int = 256 << 20
    keyspace_redis_benchmark_requests: int = 500_000

    @classmethod
    def for_mode(cls, mode: str) -> "Settings":
        if mode == "quick":
            # (1, 50, 128): the sweep's 8-connection level is left out to make room for the cluster target.
            return cls(mode, hit_duration=2, hit_rounds=2, sweep_levels=(1, 50, 128), sweep_duration=1,
                       half_duration=2, half_keys=("per_user",), workers_rounds=1, miss_duration=2, miss_rounds=2,
                       miss_max_duration=2, katiba_duration=15, katiba_probe=2, katiba_warmup=20, katiba_max_run=2,
                       katiba_reread_duration=8,
                       # (f): 100k keys as 5k users x 2 paths x 10 variants, so most of the prefill is
                       # copies (Redis) and nginx's fill tier, not backend requests.
                       purge_bumps=1000, keyspace_levels=(1_000, 100_000), keyspace_max_users=5_000,
                       keyspace_duration=2,
                       keyspace_rounds=2, keyspace_warmup_s=1, keyspace_prefill_s=60,
                       keyspace_redis_benchmark_requests=200_000)
        if mode == "smoke":
            return cls(mode, miss_rate=0, miss_connections=1, miss_duration=1, miss_rounds=1,
                       katiba_connections=16, katiba_duration=3, katiba_warmup=0,
                       katiba_reread_duration=2, purge_levels=(),
                       keyspace_levels=())
        return cls(mode)


@dataclass
class Bench:
    settings: Settings
    tmp: Path
    out: Path
    secret: str
    admin_token: str
    services: dict[str, Service] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    workers_flag: bool = False

    def close(self) -> None:
        for svc in reversed(list(self.services.values())):
            try:
                svc.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log(f"could not stop {svc.name}: {exc}")

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    # ------------------------------------------------------------------------- HTTP helpers
    @staticmethod
    def http(method: str, url: str, headers: dict[str, str] | None = None, body: bytes | dict | None = None,
             timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        hdrs = dict(headers or {})
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers.items()), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers.items()), e.read()

    def standin_stats(self) -> dict:
        _, _, body = self.http("GET", self["standin"].url + "/_standin/stats")
        return json.loads(body)

    def standin_reset(self) -> None:
        self.http("POST", self["standin"].url + "/_standin/reset-stats")

    def scrape(self, proxy: Service) -> str:
        """The proxy's /metrics text, for several ``metrics``/``gauge`` readings of one moment."""
        return self.http("GET", proxy.url + "/metrics")[2].decode()

    def metrics(self, proxy: Service, family: str = "katiba_cache_requests",
                label: str = "result", text: str | None = None) -> dict[tuple[str, str], float]:
        """A counter of the proxy's /metrics by (rule, ``label``): katiba_cache_requests_total by result
        by default; ``family="katiba_cache_coalesced_waiters", label=""`` gives (rule, ""). ``text``: a
        ``scrape`` already made."""
        out: dict[tuple[str, str], float] = {}
        for fam in text_string_to_metric_families(text if text is not None else self.scrape(proxy)):
            if fam.name != family:
                continue
            for sample in fam.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels.get("rule", ""), sample.labels.get(label, "") if label else "")
                    out[key] = out.get(key, 0.0) + sample.value
        return out


def gauge(text: str, name: str) -> float | None:
    """One unlabelled gauge of a /metrics text (``Bench.scrape``), e.g. ``katiba_cache_l1_entries``; None when
    absent."""
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name:
                return sample.value
    return None


def metric_delta(before: dict, after: dict) -> dict[tuple[str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def stopwatch() -> float:
    return time.monotonic()
