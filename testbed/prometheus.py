"""Prometheus and Alertmanager configuration for the testbed.

Every simulated target has a non-loopback address that belongs to nobody, so
each job for simulated targets scrapes through ``proxy_url`` on a closed
loopback port: the scrape fails locally with a proxy error while targets,
labels and scrapeUrl stay what a real cluster would show. The config uses only
fields both Prometheus 2.53 and 3.x accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Job:
    service: str  # "namespace/name"
    port_name: str
    scheme: str = "http"

    @property
    def namespace(self) -> str:
        return self.service.split("/")[0]

    @property
    def name(self) -> str:
        return self.service.split("/")[1]


# Job name prefix -> Service. Each gives "<prefix>-endpoints" and
# "<prefix>-endpointslice".
JOBS: dict[str, Job] = {
    "node-exporter": Job("monitoring/node-exporter", "metrics"),
    "kubelet": Job("kube-system/kubelet", "https-metrics", "https"),
    "kubelet-skip-mirror": Job("kube-system/kubelet-skip-mirror", "https-metrics", "https"),
}
ROLES = ("endpoints", "endpointslice")


def job_name(prefix: str, role: str) -> str:
    return f"{prefix}-{role}"


def scrape_pools() -> list[str]:
    return [job_name(p, r) for p in JOBS for r in ROLES]


def _sd_job(
    prefix: str, job: Job, role: str, k8s: dict[str, Any], proxy_url: str, interval: str,
) -> dict:
    meta = "endpoint" if role == "endpoints" else "endpointslice"
    node_label = (
        "__meta_kubernetes_endpoint_node_name" if role == "endpoints"
        else "__meta_kubernetes_endpointslice_endpoint_node_name"
    )
    cfg: dict[str, Any] = {
        "job_name": job_name(prefix, role),
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "scheme": job.scheme,
        "proxy_url": proxy_url,
        "kubernetes_sd_configs": [
            {**k8s, "role": role, "namespaces": {"names": [job.namespace]}}
        ],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_namespace", "__meta_kubernetes_service_name"],
                "regex": f"{job.namespace};{job.name}",
                "action": "keep",
            },
            {
                "source_labels": [f"__meta_kubernetes_{meta}_port_name"],
                "regex": job.port_name,
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": [node_label], "target_label": "node"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }
    if job.scheme == "https":
        cfg["tls_config"] = {"insecure_skip_verify": True}
    return cfg


def scenario_job(
    prefix: str, role: str, k8s: dict[str, Any], proxy_url: str, interval: str,
) -> dict:
    """One scenario job (``<prefix>-<role>``) for another scraper's config."""
    return _sd_job(prefix, JOBS[prefix], role, k8s, proxy_url, interval)


def all_scenario_jobs(k8s: dict[str, Any], proxy_url: str, interval: str) -> list[dict]:
    """The scenario's six jobs, as the testbed's Prometheus servers run them."""
    return [_sd_job(p, j, r, k8s, proxy_url, interval) for p, j in JOBS.items() for r in ROLES]


def render_prometheus(
    *,
    api_server: str,
    token_file: Path,
    ca_file: Path,
    alertmanager: str,
    exporter_address: str,
    rule_files: Sequence[Path | str] = (),
    proxy_url: str,
    interval: str = "5s",
    target_interval: str = "15s",
    scenario_jobs: bool = True,
) -> dict[str, Any]:
    """interval: the exporter's scrape and rule evaluation. target_interval:
    the 6600 simulated targets per Prometheus, which can only fail (measured
    per Prometheus: ~30% of a core at 10 s, ~14% at 30 s). scenario_jobs
    False: only the exporter's job (the operator scenario, where the
    Operator's Prometheus servers discover the targets)."""
    k8s = {
        "api_server": api_server,
        "authorization": {"credentials_file": str(token_file)},
        "tls_config": {"ca_file": str(ca_file)},
    }
    jobs = all_scenario_jobs(k8s, proxy_url, target_interval) if scenario_jobs else []
    jobs.append({
        "job_name": "coverage-exporter",
        "static_configs": [{"targets": [exporter_address]}],
    })
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "alerting": {"alertmanagers": [
            {"api_version": "v2", "static_configs": [{"targets": [alertmanager]}]}
        ]},
        "scrape_configs": jobs,
    }


def render_alertmanager(webhook_url: str) -> dict[str, Any]:
    # group_by "..." sends each alert on its own, so tests can match one
    # notification per alert; short waits keep e2e tests fast.
    return {
        "route": {
            "receiver": "webhook",
            "group_by": ["..."],
            "group_wait": "1s",
            "group_interval": "5s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
        ],
    }


class _Dumper(yaml.SafeDumper):
    # Shared sub-dicts would otherwise be written as &id001 anchors.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.dump(data, Dumper=_Dumper, sort_keys=False))
    tmp.replace(path)


def active_targets(url: str, pool: str) -> list[dict[str, Any]]:
    """Active targets of one scrape pool (state/scrapePool need v2.42+)."""
    import json
    from urllib.parse import urlencode

    from testbed.procs import http_get

    q = urlencode({"state": "active", "scrapePool": pool})
    status, body = http_get(f"{url}/api/v1/targets?{q}", timeout=30)
    if status != 200:
        raise RuntimeError(f"{url} targets: HTTP {status}")
    return json.loads(body)["data"]["activeTargets"]
