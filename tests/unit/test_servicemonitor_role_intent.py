"""A ServiceMonitor's own serviceDiscoveryRole (Operator v0.86+, #7982) in
intent: the generator writes it into that ServiceMonitor's jobs only
(pkg/prometheus/promcfg.go, golden
TestServiceMonitorWithEndpointSliceAndPrometheusEndpoints), so reading each
job's role from the loaded configuration gives each pool its effective
role, beside jobs on the CR's role. Issue 19 item 6."""

from __future__ import annotations

import yaml

from coverage_exporter.model.intent import job_selects
from coverage_exporter.model.objects import Service
from coverage_exporter.sources.prometheus.config import parse_config_yaml

META = "__meta_kubernetes_"


def job(name: str, app: str, role: str) -> dict:
    """A ServiceMonitor job in the golden file's shape (its first rules)."""
    flavour = "endpoint" if role == "endpoints" else "endpointslice"
    return {
        "job_name": f"serviceMonitor/monitoring/{name}/0",
        "honor_labels": False,
        "kubernetes_sd_configs": [{"role": role, "namespaces": {"names": ["monitoring"]}}],
        "relabel_configs": [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            {
                "action": "keep",
                "source_labels": [META + "service_label_app", META + "service_labelpresent_app"],
                "regex": f"({app});true",
            },
            {"action": "keep", "source_labels": [f"{META}{flavour}_port_name"], "regex": "web"},
        ],
    }


def test_each_job_keeps_its_servicemonitors_role_beside_the_crs() -> None:
    text = yaml.safe_dump(
        {
            "global": {"external_labels": {"prometheus": "monitoring/k8s"}},
            "scrape_configs": [
                job("ne", "node-exporter", "endpointslice"),  # the ServiceMonitor's role
                job("api", "api", "endpoints"),  # the CR's
            ],
        }
    )
    ne_job, api_job = parse_config_yaml(text).jobs
    assert (ne_job.role, api_job.role) == ("endpointslice", "endpoints")
    ne = Service(
        "monitoring", "node-exporter", {"app": "ne"}, {"app": "node-exporter"}, {}, ("web",)
    )
    api = Service("monitoring", "api", {"app": "api"}, {"app": "api"}, {}, ("web",))
    assert job_selects(ne_job, ne) and not job_selects(ne_job, api)
    assert job_selects(api_job, api) and not job_selects(api_job, ne)
