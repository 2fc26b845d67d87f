"""Discovery of servers the Prometheus Operator does not run (issue #18 item
4), on the plain testbed: its Prometheus 3.16 and 2.53 run as pods labelled
as the prometheus-community chart labels its server
(scenarios.register_server_pods), found by `--prometheus-pod-selector`
with no server flag, and judged exactly as when their URLs are given.
"""

from __future__ import annotations

from typing import Any

from coverage_exporter import exit_codes
from testbed import scenarios as s
from testbed.cluster import Cluster
from tests.e2e.test_discovery_e2e import run_audit
from tests.e2e.waiting import eventually

SELECTOR = ["--prometheus-pod-selector", s.SERVER_POD_SELECTOR, "--prometheus-pod-port", "web"]


def audit(testbed: Cluster, *flags: str) -> tuple[int, dict[str, Any]]:
    rc, doc, _ = run_audit(testbed, *flags)
    return rc, doc


def judged(doc: dict[str, Any]) -> dict[str, Any]:
    """What the audit judged; target counts summed over health (each
    target's health moves as its scrapes happen, between runs)."""
    out = {k: doc[k] for k in ("verdict", "gaps", "nodes", "unresolved")}
    out["services"] = [_health_free(s) for s in doc["services"]]
    return out


def _health_free(service: dict[str, Any]) -> dict[str, Any]:
    counts: dict[tuple[str, str, str], int] = {}
    for t in service["prometheus"]["targets"]:
        key = (t["server"], t["scrape_pool"], t["role"])
        counts[key] = counts.get(key, 0) + t["count"]
    return {**service, "prometheus": {**service["prometheus"], "targets": sorted(counts.items())}}


def test_pods_found_by_selector_are_judged_as_their_urls(testbed: Cluster) -> None:
    given = []
    for name, url in testbed.prometheus_urls.items():
        given += ["--prometheus-url", f"{s.MONITORING}/{name}-0={url}"]

    def both() -> tuple[int, int, dict[str, Any]] | None:
        # The session's servers may still be discovering the scenario: the
        # two runs are compared once they agree (each server settled).
        rc_given, by_url = audit(testbed, "--prometheus-discovery", "off", *given)
        rc_found, found = audit(testbed, *SELECTOR)
        same = judged(found) == judged(by_url)
        return (rc_given, rc_found, found) if same else None

    rc_given, rc_found, found = eventually(both, "the same audit both ways", 180, 2)
    assert rc_given == rc_found == exit_codes.GAPS  # the scenario's gaps
    servers = {sv["server"]: sv for r in found["replicas"] for sv in r["servers"]}
    assert set(servers) == {f"{s.MONITORING}/prometheus-3-0", f"{s.MONITORING}/prometheus-2-0"}
    assert {sv["discovery"] for sv in servers.values()} == {f"pod selector {s.SERVER_POD_SELECTOR}"}
    # Not an Operator object: placed by its own answers (no external labels: alone).
    assert {sv["topology"] for sv in servers.values()} == {"independent"}


def test_a_missing_port_name_is_said_and_nothing_is_judged(testbed: Cluster) -> None:
    rc, doc = audit(
        testbed, "--prometheus-pod-selector", s.SERVER_POD_SELECTOR, "--prometheus-pod-port", "http"
    )
    assert rc == exit_codes.CANNOT_JUDGE
    reasons = {f["reason"] for f in doc["discovery"]["findings"]}
    assert reasons == {"port_missing"}
    assert not doc["complete"]
