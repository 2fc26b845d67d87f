"""Scrapers other than Prometheus servers, each an option of the testbed
(``testbed up --scrapers vmagent,agent,thanos``, or
``Cluster.start_scrapers``), discovering the scenario's Services as the
testbed's own Prometheus servers do (docs/scrapers.md):

- ``vmagent``: VictoriaMetrics' vmagent with its default flags
  (``vmagent``), and with the flags victoria-metrics-k8s-stack sets
  (``vmagent-common-flags``: ``-promscrape.dropOriginalLabels``, which
  empties ``discoveredLabels``, ``-promscrape.streamParse``,
  ``-promscrape.config.strictParse=false``). Both run the six scenario
  jobs (roles endpoints and endpointslice); the second also runs
  ``node-exporter-bare``, a job that copies neither namespace nor Service
  into its labels, so that without original labels nothing says which
  Service its targets belong to.
- ``agent``: Prometheus 3.x with ``--agent`` and the six scenario jobs.
- ``thanos``: two Prometheus 3.x replicas of ``monitoring/thanos`` (the
  Operator's external labels), each with a Thanos sidecar, and three
  Thanos Query in front of both sidecars: ``thanos-query`` (defaults, no
  replica label), ``thanos-query-dedup`` (``--query.replica-label=
  prometheus_replica``) and ``thanos-query-unnoticed``, whose endpoint
  checks run once an hour, so that a sidecar that stops stays "healthy"
  to it (a store down before Query notices). The replicas differ on
  purpose: job ``node-exporter`` reads role endpointslice on replica 0
  and role endpoints (the truncated object) on replica 1, so the union of
  both covers every node and replica 1 does not.

Every scrape job keeps the testbed's loopback ``proxy_url``; vmagent
honours it as Prometheus does (``lib/promscrape/config.go`` proxy_url).
Remote writes of vmagent go to a closed loopback port.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed import procs
from testbed import prometheus as promcfg

if TYPE_CHECKING:
    from testbed.cluster import Cluster

KINDS: dict[str, tuple[str, ...]] = {
    "vmagent": ("vmagent", "vmagent-common-flags"),
    "agent": ("prometheus-agent",),
    "thanos": (
        "prometheus-thanos-0",
        "prometheus-thanos-1",
        "thanos-sidecar-0",
        "thanos-sidecar-1",
        "thanos-query",
        "thanos-query-dedup",
        "thanos-query-unnoticed",
    ),
}
COMPONENTS = tuple(c for names in KINDS.values() for c in names)
GRPC = {
    "thanos-sidecar-0": "thanos-sidecar-0-grpc",
    "thanos-sidecar-1": "thanos-sidecar-1-grpc",
    "thanos-query": "thanos-query-grpc",
    "thanos-query-dedup": "thanos-query-dedup-grpc",
    "thanos-query-unnoticed": "thanos-query-unnoticed-grpc",
}
"""Thanos components listen twice: HTTP (the component's port) and gRPC."""
VMAGENT_COMMON_FLAGS = (
    "-promscrape.dropOriginalLabels=true",
    "-promscrape.streamParse=true",
    "-promscrape.config.strictParse=false",
)
BARE_JOB = "node-exporter-bare"
THANOS_SCRAPER = "monitoring/thanos"
THANOS_NODE_EXPORTER_ROLE = {
    "prometheus-thanos-0": "endpointslice",
    "prometheus-thanos-1": "endpoints",
}
CLOSED = "http://127.0.0.1:1"


def kinds_of(spec: str) -> list[str]:
    """``vmagent,agent,thanos`` (or ``all``) -> the kinds, in KINDS order."""
    asked = set(KINDS) if spec.strip() == "all" else {s.strip() for s in spec.split(",") if s}
    unknown = sorted(asked - set(KINDS))
    if unknown:
        raise ValueError(f"unknown scrapers {unknown}: choose from {sorted(KINDS)} or all")
    return [k for k in KINDS if k in asked]


def components(kinds: list[str]) -> list[str]:
    return [c for k in kinds for c in KINDS[k]]


def binary(what: str) -> Path:
    """vmagent or thanos from testbed/build.sh's cache; raises when absent."""
    from testbed.cluster import _versions

    v = _versions()
    cache = Path(
        os.environ.get("COVERAGE_EXPORTER_CACHE") or Path.home() / ".cache/coverage-exporter"
    )
    path = {
        "vmagent": cache / "vmagent" / v["VMAGENT_VERSION"] / "vmagent",
        "thanos": cache / "thanos" / v["THANOS_VERSION"] / "thanos",
    }[what]
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"testbed binary missing (run testbed/build.sh {what}): {path}")
    return path


def replica_labels(name: str) -> dict[str, str]:
    """The external labels the Operator would give pod ``name``."""
    return {"prometheus": THANOS_SCRAPER, "prometheus_replica": name}


def _k8s(c: Cluster) -> dict[str, Any]:
    return {
        "api_server": c.api_url,
        "authorization": {"credentials_file": str(c.token_file)},
        "tls_config": {"ca_file": str(c.ca_file)},
    }


def _scenario_jobs(c: Cluster) -> list[dict[str, Any]]:
    return promcfg.all_scenario_jobs(_k8s(c), c.scrape_proxy, c.target_interval)


def _bare_job(c: Cluster) -> dict[str, Any]:
    """node-exporter by role endpointslice, keeping its port, copying no
    label: its targets carry only instance and job. Its Service rule is an
    alternation without groups, which vmagent writes back as a list in its
    /api/v1/status/config (lib/promrelabel MultiLineRegex)."""
    job = promcfg.scenario_job("node-exporter", "endpointslice", _k8s(c), c.scrape_proxy,
                               c.target_interval)
    job["job_name"] = BARE_JOB
    job["relabel_configs"] = job["relabel_configs"][:2]
    job["relabel_configs"][0]["regex"] = "monitoring;node-exporter|monitoring;node-exporter-legacy"
    return job


def _thanos_jobs(c: Cluster, name: str) -> list[dict[str, Any]]:
    k8s, proxy, interval = _k8s(c), c.scrape_proxy, c.target_interval
    node_exporter = promcfg.scenario_job(
        "node-exporter", THANOS_NODE_EXPORTER_ROLE[name], k8s, proxy, interval)
    node_exporter["job_name"] = "node-exporter"
    return [
        node_exporter,
        promcfg.scenario_job("kubelet", "endpoints", k8s, proxy, interval),
        promcfg.scenario_job("kubelet", "endpointslice", k8s, proxy, interval),
    ]


def config_path(c: Cluster, name: str) -> Path:
    return c.state_dir / name / "scrape.yml"


def write_configs(c: Cluster, names: list[str]) -> None:
    for name in names:
        if name in ("vmagent", "vmagent-common-flags", "prometheus-agent"):
            jobs = _scenario_jobs(c)
            if name == "vmagent-common-flags":
                jobs.append(_bare_job(c))
            cfg: dict[str, Any] = {"global": {"scrape_interval": c.target_interval},
                                   "scrape_configs": jobs}
        elif name.startswith("prometheus-thanos-"):
            cfg = {
                "global": {"scrape_interval": c.target_interval,
                           "external_labels": replica_labels(name)},
                "scrape_configs": _thanos_jobs(c, name),
            }
        else:
            continue
        promcfg.write_yaml(config_path(c, name), cfg)


def argv(c: Cluster, name: str, port: dict[str, int]) -> list[str]:
    d = c.state_dir / name
    listen = f"127.0.0.1:{port[name]}"
    if name.startswith("vmagent"):
        extra = list(VMAGENT_COMMON_FLAGS) if name == "vmagent-common-flags" else []
        return [
            str(binary("vmagent")), f"-promscrape.config={config_path(c, name)}",
            f"-httpListenAddr={listen}",
            f"-remoteWrite.url={CLOSED}/api/v1/write",
            f"-remoteWrite.tmpDataPath={d / 'remotewrite'}",
            "-remoteWrite.maxDiskUsagePerURL=16MiB",
            "-loggerLevel=WARN",
            *extra,
        ]
    if name == "prometheus-agent" or name.startswith("prometheus-thanos-"):
        storage = ["--agent", f"--storage.agent.path={d / 'data'}"] if name == "prometheus-agent" \
            else [f"--storage.tsdb.path={d / 'data'}", "--storage.tsdb.retention.time=1d"]
        return [
            str(c.prometheus_binary("3")), f"--config.file={config_path(c, name)}",
            *storage, f"--web.listen-address={listen}",
            f"--web.external-url=http://{listen}", "--web.enable-lifecycle",
        ]
    if name.startswith("thanos-sidecar-"):
        replica = "prometheus-thanos-" + name.rsplit("-", 1)[1]
        return [
            str(binary("thanos")), "sidecar",
            f"--prometheus.url=http://127.0.0.1:{port[replica]}",
            f"--tsdb.path={c.state_dir / replica / 'data'}",
            f"--http-address={listen}", f"--grpc-address=127.0.0.1:{port[GRPC[name]]}",
            "--log.level=warn",
        ]
    if name.startswith("thanos-query"):
        endpoints = [f"--endpoint=127.0.0.1:{port[GRPC[s]]}"
                     for s in ("thanos-sidecar-0", "thanos-sidecar-1")]
        extra = []
        if name == "thanos-query-dedup":
            extra = ["--query.replica-label=prometheus_replica"]
        elif name == "thanos-query-unnoticed":
            # Hidden flag, the period of Query's endpoint checks (and their
            # timeout): checked at start, then not for an hour.
            extra = ["--endpoint.info-timeout=1h"]
        return [
            str(binary("thanos")), "query", f"--http-address={listen}",
            f"--grpc-address=127.0.0.1:{port[GRPC[name]]}", *endpoints, *extra,
            "--log.level=warn",
        ]
    raise KeyError(name)


def ready(name: str, port: int) -> bool:
    if name.startswith("vmagent"):
        return procs.http_get(f"http://127.0.0.1:{port}/health")[0] == 200
    return procs.http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200


def urls(c: Cluster) -> dict[str, str]:
    """Each running scraper's base URL (sidecars have no targets API)."""
    return {
        n: f"http://127.0.0.1:{c.port_of(n)}"
        for n in c.scrapers
        if not n.startswith("thanos-sidecar-")
    }
