"""Many clusters in one Prometheus, as Thanos Ruler or the Mimir ruler see
them: two real exporters on the testbed, scraped by one real Prometheus
that gives each the cluster label its cluster's external label would be.
Their series differ only in `cluster` (same job, same instance label), so
any rule or panel that loses the label merges the two: recording rules
then fail on many-to-many joins or halve nothing, alerts lose the label.

The recording rules and alerts (the fast copy) and every dashboard query
run against that Prometheus."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.generate import render_rules
from alerts.rules import EXPECTED, GAP_RATIO
from dashboards.generate import panel_queries, substitute_variables
from testbed import procs
from testbed.cluster import Cluster
from tests.e2e.extra_prometheus import ExtraPrometheus
from tests.e2e.waiting import eventually

CLUSTERS = ("east", "west")
NE = 'namespace="monitoring", service="node-exporter"'


def query(url: str, expr: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def exporters(testbed: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two `serve` processes on the testbed, reading the Prometheus 3 server."""
    root = tmp_path_factory.mktemp("multicluster")
    url = testbed.prometheus_urls["prometheus-3"]
    binary = Path(sys.executable).parent / "coverage-exporter"
    processes, addresses = [], []
    for name, port in zip(CLUSTERS, procs.free_ports(len(CLUSTERS)), strict=True):
        address = f"127.0.0.1:{port}"
        argv = [
            str(binary), "serve", "--kubeconfig", str(testbed.kubeconfig),
            "--prometheus-url", f"prometheus-3={url}", "--web.listen-address", address,
            "--interval", "3s", "--log.level", "warn",
        ]  # fmt: skip
        with (root / f"{name}.log").open("wb") as log:
            processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        addresses.append(address)
    try:
        for address in addresses:
            eventually(
                lambda a=address: procs.http_get(f"http://{a}/-/ready")[0] == 200,
                f"the exporter on {address} to be ready",
                180,
            )
        yield addresses
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def central(
    exporters: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExtraPrometheus]:
    """One real Prometheus 3 with the fast rules, scraping both exporters in
    one job: their series differ only in `cluster`."""
    prom = ExtraPrometheus(tmp_path_factory.mktemp("central"), "central")
    rules = prom.dir / "coverage-exporter.rules.yml"
    rules.write_text(yaml.safe_dump(render_rules(fast=True), sort_keys=False))
    config = {
        "global": {"scrape_interval": "3s", "evaluation_interval": "3s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "coverage-exporter",
                "honor_labels": True,
                "static_configs": [
                    {"targets": [address], "labels": {"cluster": name, "instance": "ce"}}
                    for name, address in zip(CLUSTERS, exporters, strict=True)
                ],
            }
        ],
    }
    (prom.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom.start()
    try:
        yield prom
    finally:
        prom.remove()


def test_recording_rules_keep_each_cluster_apart(central: ExtraPrometheus) -> None:
    def expected() -> dict[str, float]:
        found = query(central.url, f"{EXPECTED}{{{NE}}}")
        return {s["metric"].get("cluster", ""): float(s["value"][1]) for s in found}

    per_cluster = eventually(lambda: len(expected()) == 2 and expected(), "both clusters", 120)
    assert set(per_cluster) == set(CLUSTERS)
    assert len(set(per_cluster.values())) == 1 and per_cluster["east"] > 1000
    # The ratio joins two recorded series on the Service: without the cluster
    # label in on() it is a many-to-many join and records nothing at all.
    ratios = eventually(
        lambda: query(central.url, f'{GAP_RATIO}{{{NE}, stage="prometheus"}} > 0'),
        "the gap ratio per cluster",
        60,
    )
    assert sorted(s["metric"]["cluster"] for s in ratios) == sorted(CLUSTERS)
    assert all(0 < float(s["value"][1]) < 1 for s in ratios)
    # The exporter's own series were not merged either: two of each.
    assert len(query(central.url, "scrape_coverage_build_info")) == 2


def test_alerts_fire_once_per_cluster(central: ExtraPrometheus) -> None:
    def firing() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{central.url}/api/v1/alerts", timeout=30) as r:
            alerts = json.load(r)["data"]["alerts"]
        return [
            a for a in alerts
            if a["state"] == "firing" and a["labels"]["alertname"] == "ScrapeCoverageTargetsMissing"
            and a["labels"]["severity"] == "critical"
            and a["labels"].get("service") == "node-exporter"
        ]  # fmt: skip

    alerts = eventually(lambda: len({a["labels"].get("cluster") for a in firing()}) == 2
                        and firing(), "the critical alert in both clusters", 120)  # fmt: skip
    assert sorted({a["labels"]["cluster"] for a in alerts}) == sorted(CLUSTERS)
    for alert in alerts:
        # The description's query at alert time reads its own cluster's count.
        assert "(200 of 1200)" in alert["annotations"]["description"], alert


def test_every_dashboard_query_reads_one_cluster(central: ExtraPrometheus) -> None:
    values = json.loads(
        urllib.request.urlopen(
            f"{central.url}/api/v1/label/cluster/values?match[]=scrape_coverage_build_info",
            timeout=30,
        ).read()
    )["data"]
    assert values == sorted(CLUSTERS)  # what the cluster variable offers
    # rate() over the exporters' counters needs a few scrapes.
    eventually(
        lambda: query(central.url, "scrape_coverage_cycles_total offset 15s"), "15 s of samples", 90
    )
    time.sleep(3)
    queries = [(t, e) for t, e in panel_queries() if "_operator_" not in e]
    assert len(queries) > 40
    empty = []
    for title, expr in queries:
        one = substitute_variables(expr.replace("$cluster", "east"))
        result = query(central.url, one)  # a many-to-many join would fail here
        if not result:
            empty.append(title)
        for sample in result:
            assert sample["metric"].get("cluster", "east") == "east", (title, sample["metric"])
    assert empty == []
    # The same expected count as one cluster alone, not the sum of both.
    one = query(central.url, f'sum({EXPECTED}{{cluster="east", {NE}}})')
    both = query(central.url, f"sum({EXPECTED}{{{NE}}})")
    assert float(both[0]["value"][1]) == 2 * float(one[0]["value"][1])
