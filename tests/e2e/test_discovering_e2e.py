"""A Prometheus that has just started, on the real testbed: its service
discovery has not delivered yet, so its pools may be empty or partial.
The exporter must say "still discovering" (coverage unknown), never a gap
and never "full coverage", for as long as the grace period after its start
(defaults.PROMETHEUS_DISCOVERY_GRACE) lasts.

Why this holds regardless of how fast the real server syncs: the window is
the exporter's grace period measured from the server's own start
(process_start_time_seconds on its /metrics), not a race with the server.
Before the fix, the same audit said "gaps found" for the pools that were
still empty, or "full coverage" once they had filled: never unknown.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

from testbed.cluster import Cluster
from tests.e2e.test_cli_e2e import audit_args

SERVER = "prometheus-3"


def _metric_names(url: str) -> set[str]:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line[:1] != "#"}


def test_the_real_servers_expose_their_start_time(testbed: Cluster) -> None:
    """What sources.prometheus reads: process_start_time_seconds, on the
    real Prometheus 2.53 and 3.16 alike."""
    for url in testbed.prometheus_urls.values():
        assert "process_start_time_seconds" in _metric_names(url), url


def test_a_restarted_prometheus_is_still_discovering_never_a_gap(testbed: Cluster) -> None:
    testbed.restart(SERVER)
    done = subprocess.run(audit_args(testbed), capture_output=True, text=True, timeout=180)
    report = json.loads(done.stdout)
    # Exit 1: Kubernetes' own stages still have their gaps (the truncated
    # Endpoints of node-exporter); none of them comes from the fresh server.
    gap_stages = {g["stage"] for s in report["services"] for g in s["gaps"]}
    assert "prometheus" not in gap_stages, done.stdout[-3000:]
    pools = [p for s in report["services"] for p in s["prometheus"]["pools"]]
    assert pools
    for p in pools:
        assert p["known"] is False, p
        assert p["missing_count"] is None, p
        assert set(p["causes"]) <= {"still_discovering"}, p
    assert any(p["causes"].get("still_discovering") for p in pools)
    (replica,) = report["replicas"]
    assert "discovering" in replica["why_unknown"], replica
