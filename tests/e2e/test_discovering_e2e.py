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
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from coverage_exporter.sources.prometheus.source import parse_start_time
from testbed import prometheus as promcfg
from testbed.cluster import Cluster
from tests.e2e.test_cli_e2e import BINARY, audit_args
from tests.fixtures import capture_settle

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


# --- a pool its rules keep none of, on the real API server ------------------------------

KEEPS_NONE = "node-exporter-shard-of-none"


def _jobs(testbed: Cluster, silent_api: int | None) -> str:
    """The scenario's six jobs, plus a pool whose rules keep none of what
    its Kubernetes SD delivers (the node-exporter slices, then a keep on a
    Service that does not exist: a ServiceMonitor whose keep matches
    nothing), plus, with `silent_api`, a pool whose API never answers."""
    k8s = {
        "api_server": testbed.api_url,
        "authorization": {"credentials_file": str(testbed.token_file)},
        "tls_config": {"ca_file": str(testbed.ca_file)},
    }
    jobs = promcfg.all_scenario_jobs(k8s, testbed.scrape_proxy, "15s")
    keeps_none = promcfg.scenario_job(
        "node-exporter", "endpointslice", k8s, testbed.scrape_proxy, "15s"
    )
    keeps_none["job_name"] = KEEPS_NONE
    keeps_none["relabel_configs"].insert(
        0, {"source_labels": ["__meta_kubernetes_service_name"], "regex": "none", "action": "keep"}
    )
    jobs.append(keeps_none)
    text = yaml.safe_dump(jobs, sort_keys=False)
    if silent_api is not None:
        text += capture_settle.kubernetes_job("waiting", f"http://127.0.0.1:{silent_api}")
    return text


def _audit(url: str, testbed: Cluster, grace: str) -> tuple[dict, str]:
    args = [
        str(BINARY), "audit", "--kubeconfig", str(testbed.kubeconfig),
        "--prometheus-url", f"fresh={url}", "--output", "json",
        "--prometheus-discovery-grace", grace,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=400)
    return json.loads(done.stdout), done.stderr


def _start_time(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    started = parse_start_time(text)
    assert started is not None
    return started


@pytest.mark.parametrize("version", ["3", "2"])
def test_a_pool_its_rules_keep_none_of_is_judged_long_before_the_grace(
    testbed: Cluster, tmp_path: Path, version: str
) -> None:
    """The real Prometheus 3.16 and 2.53, just started, with the scenario's
    pools and one whose rules keep none of what the real API server
    delivers: audit, with a grace of 10 minutes, gives its verdict as soon
    as the server's discovery settled (discovered above zero before
    relabelling is delivered, sources.prometheus.source.discovery_settled),
    which only a settled server allows before the grace ends. Before, the
    pool's zero kept the server on the whole grace."""
    process, url = capture_settle.start_prometheus(
        tmp_path / "fresh", version, _jobs(testbed, None)
    )
    try:
        report, _ = _audit(url, testbed, "10m")
        judged = time.time()
        started = _start_time(url)
        verdicts = _pool_verdicts(report)
        assert verdicts and all(known for known, _, _ in verdicts.values()), verdicts
        assert judged - started < 600, "judged only once the grace was over"
        print(f"prometheus {version}: judged {judged - started:.1f} s after its start")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_pool_whose_api_never_answers_waits_the_grace(testbed: Cluster, tmp_path: Path) -> None:
    """The same server plus a pool whose API server never answers: nothing
    tells "nothing there" from "not listed yet", so audit waits the grace
    out (45 s here) before it judges."""
    with capture_settle.silent_apiserver() as api:
        process, url = capture_settle.start_prometheus(tmp_path / "fresh", "3", _jobs(testbed, api))
        try:
            report, stderr = _audit(url, testbed, "45s")
            judged = time.time()
            started = _start_time(url)
            assert "waiting for the service discovery" in stderr
            assert judged - started >= 45, "judged before the grace was over"
            assert _pool_verdicts(report)
            print(f"prometheus 3, an API never answering: judged {judged - started:.1f} s in")
        finally:
            process.terminate()
            process.wait(timeout=30)
