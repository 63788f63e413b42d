"""The deployment files: compose.yaml (``docker compose config -q`` when Docker Compose is installed, and
always a structural check), the Dockerfile (multi-stage, non-root, HEALTHCHECK), Prometheus' config and
alert rules, and the Grafana provisioning: the dashboard parses, has the panels the operators asked for,
and every metric name in its PromQL (and in the alerts) is one the proxy exports."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from proxy.core.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/katiba-cache.json"
ALERTS = ROOT / "deploy/alerts.yml"
SERVICES = {"proxy", "redis", "backend", "prometheus", "grafana"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan"}


def exported_metric_names() -> set[str]:
    """Every series name a scrape of the proxy can show: each metric of ``Metrics`` exercised once, then
    the sample names collected from its registry (``_total``, ``_bucket``, ``_sum``, ``_count``...)."""
    metrics = Metrics()
    for metric in vars(metrics).values():
        if not isinstance(metric, (Counter, Gauge, Histogram)):
            continue
        names = getattr(metric, "_labelnames", ())
        child = metric.labels(*["x"] * len(names)) if names else metric
        if isinstance(metric, Counter):
            child.inc()
        elif isinstance(metric, Gauge):
            child.set(1)
        else:
            child.observe(0.01)
    names = {sample.name for family in metrics.registry.collect() for sample in family.samples}
    assert "katiba_cache_requests_total" in names and "katiba_cache_request_duration_seconds_bucket" in names
    return names


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: identifiers that are not functions, keywords, label names in
    ``{...}`` / ``by (...)``, durations in ``[...]`` or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue
        found.add(m.group(0))
    return found


def test_metric_name_extraction():
    assert metric_names('sum by (rule) (rate(a_total{rule=~"x|y"}[5m])) / on(rule) b or vector(0)') == {"a_total", "b"}
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(c_bucket[$__rate_interval])))') == {"c_bucket"}


# ------------------------------------------------------------------------------------ compose


def load_compose() -> dict:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


def test_compose_is_valid():
    compose = load_compose()
    services = compose["services"]
    assert SERVICES <= set(services), sorted(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", ()):
            assert dependency in services, (name, dependency)
        health = service.get("healthcheck")
        if health is not None:
            assert health["test"][0] in ("CMD", "CMD-SHELL"), name
        for volume in service.get("volumes", ()):
            host = volume.split(":", 1)[0]
            if host.startswith("."):
                assert (ROOT / host).exists(), (name, volume)
    docker = shutil.which("docker")
    has_compose = docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True,
                                                        timeout=60).returncode == 0
    if has_compose:
        result = subprocess.run([docker, "compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr


def test_compose_wires_the_stack():
    services = load_compose()["services"]
    proxy, backend, redis = services["proxy"], services["backend"], services["redis"]
    assert proxy["build"] in (".", {"context": "."}) and "healthcheck" in proxy
    assert proxy["environment"]["UPSTREAM_URL"] == "http://backend:8000"
    assert proxy["environment"]["REDIS_URL"].startswith("redis://redis:6379")
    assert proxy["environment"]["JWT_SECRET_KEY"] == backend["environment"]["JWT_SECRET_KEY"]
    assert {"redis", "backend"} <= set(proxy["depends_on"])
    assert backend.get("image") == proxy.get("image")  # the same image, another command
    assert " ".join(backend["entrypoint"] + backend["command"]) == "python -m standin --listen 0.0.0.0:8000"
    assert "healthcheck" in backend and "healthcheck" in redis
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru" and "--maxmemory" in command
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets == ["proxy:8080"]
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert set(prometheus["rule_files"]) <= mounted and "/etc/prometheus/prometheus.yml" in mounted


def test_grafana_provisioning_points_at_the_dashboard():
    grafana = load_compose()["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    provisioning = ROOT / [h for h, c in mounts.items() if c == "/etc/grafana/provisioning"][0]
    providers = yaml.safe_load((provisioning / "dashboards/katiba-cache.yml").read_text())["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    host_dir = [h for h, c in mounts.items() if c == dashboards_dir][0]
    assert (ROOT / host_dir / "katiba-cache.json").resolve() == DASHBOARD.resolve()
    datasources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, panel["title"]


# ------------------------------------------------------------------------------------ dashboard


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    for variable in dashboard.get("templating", {}).get("list", ()):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query or "")
        assert m, query
        exprs.append(m.group(1))
    return exprs


def test_dashboard_uses_only_exported_metrics():
    exported = exported_metric_names()
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, exprs
    assert used <= exported, sorted(used - exported)


def test_dashboard_has_the_panels_the_operators_asked_for():
    exprs = dashboard_exprs()
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"]}

    def panel_uses(title_part: str, metric: str) -> bool:
        return any(title_part.lower() in p["title"].lower() and any(metric in t["expr"] for t in p.get("targets", ()))
                   for p in dashboard["panels"])

    assert panel_uses("hit ratio per rule", "katiba_cache_requests_total")
    assert panel_uses("p50 / p99", "katiba_cache_request_duration_seconds_bucket")
    assert any("0.5," in e and "result" in e for e in exprs) and any("0.99," in e and "result" in e for e in exprs)
    assert panel_uses("saved", "katiba_cache_requests_total")
    assert panel_uses("purges", "katiba_cache_purges_total")
    assert panel_uses("store errors", "katiba_cache_store_errors_total")
    assert panel_uses("evictions", "katiba_cache_evictions")
    assert panel_uses("redis memory", "katiba_cache_store_bytes")
    assert len(titles) == len([p for p in dashboard["panels"]]), "panel titles are unique"


def test_alert_rules_use_exported_metrics():
    exported = exported_metric_names() | {"up"}  # up: Prometheus' own series for the scrape target
    rules = [r for group in yaml.safe_load(ALERTS.read_text())["groups"] for r in group["rules"]]
    assert {"KatibaCachePurgesPending", "KatibaCacheCircuitOpen", "KatibaCacheReloadFailed"} <= {r["alert"] for r in rules}
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used and used <= exported, (rule["alert"], sorted(used - exported))


# ------------------------------------------------------------------------------------ Dockerfile


def dockerfile_stages() -> list[list[str]]:
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_non_root_with_healthcheck():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build wheels apart from the runtime image"
    final = stages[-1]
    assert any(line.upper().startswith("COPY --FROM=") for line in final)
    users = [line.split(None, 1)[1].strip() for line in final if line.upper().startswith("USER ")]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    health = [line for line in final if line.upper().startswith("HEALTHCHECK ")]
    assert len(health) == 1 and " CMD " in f" {health[0]} " and "/healthz" in health[0]


@pytest.mark.parametrize("path", ["compose.yaml", "deploy/prometheus.yml", "deploy/alerts.yml",
                                  "deploy/grafana/provisioning/datasources/prometheus.yml",
                                  "deploy/grafana/provisioning/dashboards/katiba-cache.yml"])
def test_deploy_yaml_parses(path):
    assert isinstance(yaml.safe_load((ROOT / path).read_text()), dict)
