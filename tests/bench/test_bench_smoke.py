"""Smoke test of the benchmark harness: the 1k-node size end to end
(fake API, exporter audit and serve, raw replay, naive script), checking
that the JSON has every key with sane values. No timing assertions: CI
machines vary, and bench/RESULTS.md is where the figures live."""

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
)


@pytest.mark.timeout(600)
def test_bench_1k_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
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
    assert set(naive) == {"monitoring/node-exporter", "kube-system/kubelet", "cadvisor/cadvisor"}
    assert all(s["missing_endpoints"] == 0 for s in naive.values())
