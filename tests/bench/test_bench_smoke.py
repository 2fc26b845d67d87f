"""Smoke test of the benchmark harness: the 1k-node size end to end
(fake API, exporter audit and serve, raw replay, naive script), with the
Operator fleet forced to 2 shards x 2 replicas, checking that the JSON has
every key with sane values and that the exporter recognised the fleet. No
timing assertions: CI machines vary, and bench/RESULTS.md is where the
figures live."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

REQUIRED = (
    "nodes",
    "exporter_first_cycle_s",
    "exporter_steady_cycle_s",
    "exporter_peak_rss_mb",
    "raw_s",
    "naive_s",
    "naive_peak_rss_mb",
    "k8s_requests_per_steady_cycle",
    "prometheus_bytes_per_steady_cycle",
    "metrics_response_ms",
    "k8s_lists_after_startup",
    "shards",
    "replicas",
    "prometheus_servers",
    "scrape_pools",
    "targets_total",
)

POOLS = [f"serviceMonitor/monitoring/kubelet/{i}" for i in range(4)] + [
    "serviceMonitor/monitoring/node-exporter/0"
]


@pytest.mark.timeout(600)
def test_bench_1k_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--nodes",
            "1000",
            "--json",
            "--interval",
            "2",
            "--steady-cycles",
            "2",
            "--metrics-samples",
            "5",
            "--naive-timeout",
            "300",
            "--workdir",
            str(tmp_path),
            "--shards",
            "2",
            "--replicas",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in REQUIRED:
        assert key in out, key
    assert out["nodes"] == 1000
    assert (out["shards"], out["replicas"], out["prometheus_servers"]) == (2, 2, 4)
    assert out["scrape_pools"] == 5 and out["role"] == "endpoints"
    per_server = out["targets_per_server"]
    assert set(per_server) == {"k8s-0-0", "k8s-0-1", "k8s-1-0", "k8s-1-1"}
    # replicas of a shard agree; the two shards split 4 kubelet pools of
    # 1000 and node-exporter's 1000 between them
    assert per_server["k8s-0-0"] == per_server["k8s-0-1"]
    assert per_server["k8s-1-0"] == per_server["k8s-1-1"]
    assert per_server["k8s-0-0"] + per_server["k8s-1-0"] == 5000
    assert out["targets_total"] == 10000
    for key in (
        "exporter_first_cycle_s",
        "exporter_steady_cycle_s",
        "exporter_peak_rss_mb",
        "raw_s",
        "naive_s",
        "naive_peak_rss_mb",
        "metrics_response_ms",
    ):
        assert isinstance(out[key], (int, float)) and out[key] > 0, (key, out[key])
    assert out["naive_status"] == "ok"
    assert out["exporter_peak_rss_mb"] < 4096
    # the raw replay downloaded what the exporter downloaded in its first
    # cycle: every request but the watches (which carry at most bookmarks)
    assert (
        out["raw_requests"] == out["k8s_lists_first_cycle"] + out["prometheus_requests_first_cycle"]
    )
    exporter_bytes = out["k8s_body_bytes_first_cycle"] + out["prometheus_body_bytes_first_cycle"]
    assert 0.99 * exporter_bytes <= out["raw_body_bytes"] <= exporter_bytes
    assert out["k8s_requests_first_cycle"] > 0 and out["prometheus_requests_first_cycle"] > 0
    # steady state: the exporter relies on its watches
    assert out["k8s_lists_after_startup"] == 0
    assert out["k8s_requests_per_steady_cycle"] >= 0
    assert out["prometheus_bytes_per_steady_cycle"] >= 0
    # every exporter and naive agree there is nothing missing at 1000 nodes
    naive = {f"{s['namespace']}/{s['service']}": s for s in out["naive_result"]}
    assert set(naive) == {"monitoring/node-exporter", "kube-system/kubelet"}
    assert all(s["missing_endpoints"] == 0 for s in naive.values())
    assert all(v == 0 for s in naive.values() for v in s["pools"].values())
    # the exporter recognised the Operator fleet: replicas of scraper
    # monitoring/k8s, each made of shards 0 and 1, every one known
    replicas = {r["replica"]: r for r in out["audit_replicas"]}
    assert set(replicas) == {"prometheus-k8s-0", "prometheus-k8s-1"}
    for name, r in replicas.items():
        assert r["scraper"] == "monitoring/k8s" and r["shards"] == 2 and r["known"], r
        r_idx = name[-1]
        assert r["servers"] == {
            f"k8s-0-{r_idx}": {"shard": 0, "topology": "operator"},
            f"k8s-1-{r_idx}": {"shard": 1, "topology": "operator"},
        }, r
    # ... and the pools as meant for their Services, with no gap
    services = out["audit_services"]
    assert services["kube-system/kubelet"]["pools_meant"] == POOLS[:4]
    assert services["monitoring/node-exporter"]["pools_meant"] == POOLS[4:]
    assert all(not s["gaps"] for s in services.values()), services
    topo = out["exporter_topology_metrics"]
    for r_idx in "01":
        key = (
            'scrape_coverage_replica_coverage_known{scraper="monitoring/k8s",'
            f'scraper_replica="prometheus-k8s-{r_idx}"}}'
        )
        assert topo.get(key) == 1, (key, topo)
    info = [k for k in topo if k.startswith("scrape_coverage_server_info")]
    assert len(info) == 4, topo
