"""A Prometheus that has just started, on the real testbed: its service
discovery has not delivered yet, so its pools may be empty or partial.
The exporter must say "still discovering" (coverage unknown), never a gap
and never "full coverage", until its discovery settles or the grace period
after its start (defaults.PROMETHEUS_DISCOVERY_GRACE) is over; audit, a
one-shot command, waits for that and then gives the verdict.

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


def _pool_verdicts(report: dict) -> dict[tuple[str, str, str], tuple]:
    return {
        (s["namespace"], s["service"], p["scrape_pool"]): (
            p["known"],
            p["missing_count"],
            tuple(sorted(p["causes"].items())),
        )
        for s in report["services"]
        for p in s["prometheus"]["pools"]
    }


def test_a_restarted_prometheus_is_still_discovering_never_a_gap(testbed: Cluster) -> None:
    """Audited at once after a restart, the server is still discovering:
    audit waits for its discovery to settle (app.after_discovery) and then
    says what it said of the server before the restart, pool for pool.
    Before still_discovering, the same audit judged the fresh server's
    empty or partial pools: a Prometheus-stage gap the server did not
    have."""
    before = json.loads(
        subprocess.run(audit_args(testbed), capture_output=True, text=True, timeout=180).stdout
    )
    testbed.restart(SERVER)
    done = subprocess.run(audit_args(testbed), capture_output=True, text=True, timeout=400)
    report = json.loads(done.stdout)
    assert "waiting for the service discovery of servers that have just started" in done.stderr
    after = _pool_verdicts(report)
    assert after and all(known for known, _, _ in after.values()), after
    assert after == _pool_verdicts(before)
