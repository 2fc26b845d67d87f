"""Smoke test of the server-cost harness (bench/server_cost.py) on the real
testbed at 300 nodes with short windows: every window is measured, the
Prometheus under test discovers the kube-prometheus pools, the audit log
names the exporter's and Prometheus's requests, and the exporter relies on
its watches in steady state. No timing assertion: the figures live in
bench/RESULTS.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.server_cost_goals import WATCHED

REPO = Path(__file__).resolve().parents[2]
WINDOWS = (
    "idle",
    "prometheus_discovery",
    "exporter_initial_sync",
    "prometheus_discovery_warm",
    "steady_with_exporter",
    "steady_without_exporter",
    "full_rereads",
)


@pytest.mark.timeout(900)
def test_server_cost_300_nodes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.server_cost",
            "--nodes",
            "300",
            "--idle",
            "3s",
            "--tail",
            "3s",
            "--steady",
            "25s",
            "--reread-interval",
            "5s",
            "--max-minutes",
            "12",
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert out["nodes"] == 300 and "error" not in out
    assert tuple(out["windows"]) == WINDOWS
    w = out["windows"]
    for name in WINDOWS:
        api = w[name]["apiserver"]
        assert api["cpu_s"] >= 0 and api["rss_mb_start"] > 0, (name, api)
        assert w[name]["audit"] is not None, name
    # the Prometheus under test found every pool's targets
    for name in ("prometheus_discovery", "prometheus_discovery_warm"):
        assert w[name]["pool_targets"] == {
            **{f"serviceMonitor/monitoring/kubelet/{i}": 300 for i in range(4)},
            "serviceMonitor/monitoring/node-exporter/0": 300,
        }
        assert any(
            k.startswith("list ") or k.startswith("watch ")
            for k in w[name]["audit"]["by_client"]["Prometheus"]
        ), w[name]["audit"]
    # the exporter's initial sync is its own: it lists Nodes, Prometheus never does
    sync = w["exporter_initial_sync"]["audit"]["by_client"]["coverage-exporter"]
    assert sync.get("list nodes", 0) >= 1, sync
    assert w["exporter_initial_sync"]["apiserver"]["cpu_s"] > 0
    # steady state: watches only, no LIST from the exporter
    steady = w["steady_with_exporter"]["audit"]["by_client"].get("coverage-exporter", {})
    relists = [k for k in steady if k.startswith("list ") and k.split()[1] in WATCHED]
    assert not relists, steady
    assert out["goals"]["steady_exporter_relists"] == 0
    # the exporter read the Prometheus under test only when it ran
    reads = {n: w[n]["prometheus"]["http_requests"] for n in WINDOWS if "prometheus" in w[n]}
    assert "/api/v1/targets" not in reads["steady_without_exporter"], reads
    assert reads["full_rereads"].get("/api/v1/targets", 0) >= 5, reads
    assert w["steady_with_exporter"]["exporter_cycles"] >= 0
    full = out["goals"]["prometheus_full_reread"]
    assert full["full_rereads"] >= 1 and full["steady_heap_mb"] > 0, full
