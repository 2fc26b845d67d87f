"""Scrapers other than a Prometheus server, each run for real beside the
1200-node testbed (issue #20, testbed/scrapers.py, docs/scrapers.md):

- vmagent v1.151.0 with its default flags and with the flags
  victoria-metrics-k8s-stack sets (no original labels), both roles;
- Prometheus 3.16 with --agent;
- Thanos Query v0.42.5 over two sidecars in front of two Prometheus 3.16
  replicas that differ, with and without --query.replica-label, and with a
  sidecar stopped mid-test (before and after Query notices).

The truth is the scenario's (testbed.scenarios: which nodes the truncated
Endpoints and the capped mirror leave out) and what each scraper itself
answers, never the exporter's code.
"""

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

from testbed import procs
from testbed import scenarios as s
from testbed import scrapers as scr
from testbed.cluster import Cluster
from tests.e2e.waiting import eventually

N = s.DEFAULT_NODES
NE = "monitoring/node-exporter"
KUBELET = "kube-system/kubelet"
SKIP_MIRROR = "kube-system/kubelet-skip-mirror"
BINARY = Path(sys.executable).parent / "coverage-exporter"
ENDPOINTS_CUT = s.endpoints_dropped_nodes(N)
MIRROR_CUT = s.mirroring_dropped_nodes(N)
# What each scenario job misses at 1200 nodes: the truncated Endpoints of
# node-exporter, the capped mirror of the kubelet's Endpoints.
SCENARIO_MISSES = {
    (NE, "node-exporter-endpoints"): ENDPOINTS_CUT,
    (NE, "node-exporter-endpointslice"): set(),
    (KUBELET, "kubelet-endpoints"): set(),
    (KUBELET, "kubelet-endpointslice"): MIRROR_CUT,
    (SKIP_MIRROR, "kubelet-skip-mirror-endpoints"): set(),
    (SKIP_MIRROR, "kubelet-skip-mirror-endpointslice"): set(),
}
ACTIVE = {  # active targets of each scenario job (testbed/README.md)
    "node-exporter-endpoints": 1000,
    "node-exporter-endpointslice": N,
    "kubelet-endpoints": N,
    "kubelet-endpointslice": 1000,
    "kubelet-skip-mirror-endpoints": N,
    "kubelet-skip-mirror-endpointslice": N,
}
R0, R1 = "prometheus-thanos-0", "prometheus-thanos-1"


def get(url: str) -> tuple[int, bytes]:
    return procs.http_get(url, timeout=30)


def active(url: str, pool: str | None = None) -> list[dict[str, Any]]:
    query = {"state": "active", **({"scrapePool": pool} if pool else {})}
    status, body = get(f"{url}/api/v1/targets?{urllib.parse.urlencode(query)}")
    assert status == 200, body[:300]
    return json.loads(body)["data"]["activeTargets"]


def counts(targets: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in targets:
        out[t["scrapePool"]] = out.get(t["scrapePool"], 0) + 1
    return out


@pytest.fixture(scope="module")
def scrapers(testbed: Cluster) -> Iterator[dict[str, str]]:
    """Every scraper of testbed/scrapers.py up beside the session testbed,
    each settled on what the scenario implies; stopped at the end."""
    start = time.monotonic()
    testbed.start_scrapers(list(scr.KINDS))
    urls = scr.urls(testbed)
    try:
        for name in ("vmagent", "vmagent-common-flags", "prometheus-agent"):
            eventually(
                lambda n=name: all(
                    counts(active(urls[n])).get(pool) == want for pool, want in ACTIVE.items()
                ),
                f"{name} to discover every scenario job",
                180,
                2,
            )
        for replica, role in scr.THANOS_NODE_EXPORTER_ROLE.items():
            want = {
                "node-exporter": N if role == "endpointslice" else 1000,
                "kubelet-endpoints": N,
                "kubelet-endpointslice": 1000,
            }
            eventually(
                lambda r=replica, w=want: counts(active(urls[r])) == w, f"{replica} to settle", 180
            )
        print(f"\nscrapers up and settled in {time.monotonic() - start:.1f} s")
        yield urls
    finally:
        testbed.stop_scrapers()


def audit(testbed: Cluster, *args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [
            str(BINARY),
            "audit",
            "--kubeconfig",
            str(testbed.kubeconfig),
            "--log.level",
            "warn",
            "--output",
            "json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode in (0, 1, 3), out.stderr  # 3: could not judge (exit_codes.py)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


def pools(doc: dict[str, Any], key: str) -> dict[tuple[str, str], dict[str, Any]]:
    ns, name = key.split("/")
    (svc,) = [x for x in doc["services"] if (x["namespace"], x["service"]) == (ns, name)]
    return {(p["replica"], p["scrape_pool"]): p for p in svc["prometheus"]["pools"]}


def names(missing: list[dict[str, str]] | None) -> set[str]:
    assert missing is not None
    return {m["node"] for m in missing}


def summary(label: str, doc: dict[str, Any]) -> None:
    """One line per pool, for the log of the run (figures, not assertions)."""
    print(f"\n{label}: exit verdict {doc['verdict']!r}")
    for svc in doc["services"]:
        for p in svc["prometheus"]["pools"]:
            if p["known"]:
                cut = sorted(names(p["missing"]))
                shown = ", ".join(cut[:3]) + (f" and {len(cut) - 3} more" if len(cut) > 3 else "")
                what = f"misses {len(cut)} of {N}" + (f": {shown}" if cut else "")
            else:
                what = f"unknown ({p['unknown']}): {p['why_unknown'][:70]}"
            print(
                f"  {svc['service']:<20} {p['replica'][:24]:<24} {p['scrape_pool']:<34} "
                f"{p['role']:<13} {what}"
            )


def servers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {sv["server"]: sv for r in doc["replicas"] for sv in r["servers"]}


def assert_scenario_verdicts(doc: dict[str, Any], replica: str, roles: dict[str, str]) -> None:
    """Every scenario pool of `replica`: its role and exactly the nodes the
    scenario says it misses."""
    for (service, pool), cut in SCENARIO_MISSES.items():
        p = pools(doc, service)[(replica, pool)]
        assert p["known"], (pool, p["why_unknown"])
        assert p["role"] == roles[pool], pool
        assert names(p["missing"]) == cut, pool
        assert p["discovered"] == N - len(cut), pool


SCENARIO_ROLES = {pool: pool.rsplit("-", 1)[1] for _, pool in SCENARIO_MISSES}


# --- vmagent ---------------------------------------------------------------------


def test_vmagent_with_default_flags_gets_the_verdicts_of_prometheus(
    testbed: Cluster, scrapers: dict[str, str], prometheus_urls: dict[str, str]
) -> None:
    url = scrapers["vmagent"]
    # What vmagent serves and what it refuses (app/vmagent/main.go).
    assert get(f"{url}/api/v1/scrape_pools")[0] == 400
    assert get(f"{url}/api/v1/status/flags")[0] == 400
    assert get(f"{url}/api/v1/status/config")[0] == 200
    code, doc = audit(testbed, "--prometheus-url", f"vmagent={url}")
    summary("vmagent, default flags", doc)
    assert code == 1 and doc["complete"], doc["sources"]
    assert servers(doc)["vmagent"]["kind"] == "vmagent"
    assert_scenario_verdicts(doc, "vmagent", SCENARIO_ROLES)
    # The same pools, roles and missing nodes as the Prometheus 3.16 server
    # running the same jobs.
    _, prom = audit(testbed, "--prometheus-url", f"p3={prometheus_urls['prometheus-3']}")
    for service, _pool in SCENARIO_MISSES:
        mine = {k[1]: (p["role"], p["missing"]) for k, p in pools(doc, service).items()}
        theirs = {k[1]: (p["role"], p["missing"]) for k, p in pools(prom, service).items()}
        assert mine == theirs, service


def test_vmagent_without_original_labels_is_judged_or_says_why_not(
    testbed: Cluster, scrapers: dict[str, str]
) -> None:
    """-promscrape.dropOriginalLabels: discoveredLabels are empty. The scenario
    jobs copy namespace, service, node and pod into the labels: judged, the
    role taken from vmagent's own configuration. node-exporter-bare copies
    nothing: its pool cannot be judged, and says why; never a gap."""
    url = scrapers["vmagent-common-flags"]
    sample = active(url, "node-exporter-endpointslice")[0]
    assert sample["discoveredLabels"] == {}
    assert {"namespace", "service", "node"} <= set(sample["labels"])
    code, doc = audit(testbed, "--prometheus-url", f"vm={url}")
    summary("vmagent, k8s-stack flags", doc)
    assert code == 1, doc["verdict"]
    assert servers(doc)["vm"]["kind"] == "vmagent"
    assert_scenario_verdicts(doc, "vm", SCENARIO_ROLES)
    bare = pools(doc, NE)[("vm", scr.BARE_JOB)]
    assert (bare["known"], bare["missing"], bare["unknown"]) == (False, None, N)
    assert bare["role"] == "endpointslice" and bare["meant"]
    assert "dropOriginalLabels" in bare["why_unknown"]
    gaps = [g for sv in doc["services"] for g in sv["gaps"]]
    assert all(g["scrape_pool"] != scr.BARE_JOB for g in gaps)


def test_vmagent_scrapes_only_through_the_loopback_proxy(
    testbed: Cluster, scrapers: dict[str, str]
) -> None:
    for name in ("vmagent", "vmagent-common-flags"):
        targets = eventually(
            lambda n=name: [t for t in active(scrapers[n]) if t["lastError"]] or None,
            f"{name} to try its targets",
        )
        assert all("127.0.0.1:1" in t["lastError"] for t in targets), targets[0]["lastError"]
    peers = testbed.non_loopback_peers()
    assert not {n: p for n, p in peers.items() if n in scr.COMPONENTS}, peers


# --- Prometheus in agent mode -----------------------------------------------------


def test_prometheus_agent_gets_the_verdicts_of_a_server(
    testbed: Cluster, scrapers: dict[str, str], prometheus_urls: dict[str, str]
) -> None:
    url = scrapers["prometheus-agent"]
    status, body = get(f"{url}/api/v1/query?query=up")
    assert status == 422 and b"unavailable with Prometheus Agent" in body
    code, doc = audit(testbed, "--prometheus-url", f"agent={url}")
    summary("Prometheus --agent", doc)
    assert code == 1 and doc["complete"]
    assert servers(doc)["agent"]["kind"] == "prometheus_agent"
    assert_scenario_verdicts(doc, "agent", SCENARIO_ROLES)
    _, prom = audit(testbed, "--prometheus-url", f"agent={prometheus_urls['prometheus-3']}")
    for service, _pool in SCENARIO_MISSES:
        assert pools(doc, service) == pools(prom, service), service


# --- Thanos Query -----------------------------------------------------------------

THANOS_MISSES = {
    # Replica 0 reads node-exporter's slices, replica 1 its truncated Endpoints.
    (R0, NE, "node-exporter"): ("endpointslice", set()),
    (R1, NE, "node-exporter"): ("endpoints", ENDPOINTS_CUT),
    (R0, KUBELET, "kubelet-endpointslice"): ("endpointslice", MIRROR_CUT),
    (R1, KUBELET, "kubelet-endpointslice"): ("endpointslice", MIRROR_CUT),
    (R0, KUBELET, "kubelet-endpoints"): ("endpoints", set()),
    (R1, KUBELET, "kubelet-endpoints"): ("endpoints", set()),
}


def assert_thanos_verdicts(doc: dict[str, Any], replicas: tuple[str, ...] = (R0, R1)) -> None:
    for (replica, service, pool), (role, cut) in THANOS_MISSES.items():
        if replica not in replicas:
            continue
        p = pools(doc, service)[(replica, pool)]
        assert p["known"] and p["role"] == role, (replica, pool, p["why_unknown"])
        assert names(p["missing"]) == cut, (replica, pool)


def test_thanos_query_judges_each_replica_behind_it_on_its_own(
    testbed: Cluster, scrapers: dict[str, str]
) -> None:
    """Query's answer is the union of both replicas (every node-exporter
    address is in it); replica 1 still misses the 200 its Endpoints lose."""
    url = scrapers["thanos-query"]
    union = {
        t["discoveredLabels"]["__address__"]
        for t in active(url)
        if t["scrapePool"] == "node-exporter"
    }
    assert len(union) == N
    code, doc = audit(testbed, "--prometheus-url", f"tq={url}")
    summary("Thanos Query", doc)
    assert code == 1 and doc["complete"], doc["verdict"]
    kinds = {name: sv["kind"] for name, sv in servers(doc).items()}
    assert sorted(kinds) == [
        f"tq/prometheus=monitoring/thanos,prometheus_replica={r}" for r in (R0, R1)
    ]
    assert set(kinds.values()) == {"thanos_query"}
    assert_thanos_verdicts(doc)
    # The same as pointing the exporter at the two Prometheus servers.
    _, direct = audit(
        testbed, *(a for r in (R0, R1) for a in ("--prometheus-url", f"{r}={scrapers[r]}"))
    )
    assert_thanos_verdicts(direct)


def test_thanos_query_with_replica_labels_makes_each_replica_unknown(
    testbed: Cluster, scrapers: dict[str, str]
) -> None:
    """--query.replica-label=prometheus_replica: Query removes the label and
    merges equal targets, so its answer cannot say which replica a target
    came from. Unknown for each replica, never covered, never a gap."""
    url = scrapers["thanos-query-dedup"]
    assert all("prometheus_replica" not in t["labels"] for t in active(url))
    code, doc = audit(testbed, "--prometheus-url", f"tqd={url}")
    summary("Thanos Query --query.replica-label", doc)
    assert code == 3, doc["verdict"]  # could not judge (coverage_exporter/exit_codes.py)
    assert [r["replica"] for r in doc["replicas"]] == [R0, R1]
    assert not any(r["known"] for r in doc["replicas"])
    for service in (NE, KUBELET):
        for (replica, _pool), p in pools(doc, service).items():
            assert replica in (R0, R1)
            assert p["missing"] is None and p["unknown"] > 0
            assert "--query.replica-label" in p["why_unknown"]
    assert not [g for sv in doc["services"] for g in sv["gaps"] if g["stage"] == "prometheus"]


def _replica(doc: dict[str, Any], replica: str) -> dict[str, Any]:
    (r,) = [r for r in doc["replicas"] if r["replica"] == replica]
    return r


def test_a_sidecar_stopped_mid_test_makes_its_replica_unknown_never_missing(
    testbed: Cluster, scrapers: dict[str, str], tmp_path: Path
) -> None:
    """thanos-sidecar-1 stops. thanos-query-unnoticed never checks its
    stores again: the fan-out fails and its answer warns (a store down
    before Query notices). thanos-query notices within 5 s and leaves the
    store out without a word; /api/v1/stores says so. Either way replica 1
    is unknown and replica 0 still judged; then the sidecar comes back."""
    serve_url, exporter, log = _serve(testbed, scrapers["thanos-query"], tmp_path)
    try:
        eventually(lambda: _thanos_series(serve_url)[R1] == ("known", 200), "both judged", 120)
        stopped = time.time()
        testbed.stop("thanos-sidecar-1")
        # Before Query notices: the answer warns, and names no store.
        code, doc = audit(testbed, "--prometheus-url", f"tqu={scrapers['thanos-query-unnoticed']}")
        summary(f"sidecar 1 stopped, Query not noticing ({time.time() - stopped:.1f} s)", doc)
        r1 = _replica(doc, R1)
        assert not r1["known"] and "partial" in r1["why_unknown"], r1
        assert code == 1  # replica 0's own gaps
        assert_thanos_verdicts(doc, (R0,))
        for service in (NE, KUBELET):
            for (replica, _pool), p in pools(doc, service).items():
                if replica == R1:
                    assert p["missing"] is None, p
        # After: Query marks the store unhealthy and asks it no more.
        eventually(lambda: _store_errors(scrapers["thanos-query"]), "Query to notice", 30)
        noticed = time.time() - stopped
        code, doc = audit(testbed, "--prometheus-url", f"tq={scrapers['thanos-query']}")
        summary(f"sidecar 1 stopped, Query noticed after {noticed:.1f} s", doc)
        r1 = _replica(doc, R1)
        assert not r1["known"] and "leaves this store out" in r1["why_unknown"], r1
        assert_thanos_verdicts(doc, (R0,))
        # The serving exporter: from the first cycle that began after the stop,
        # replica 1 is unknown; never a figure of missing targets.
        seen = eventually(
            lambda: (v := _thanos_series(serve_url, since=stopped))[R1] == ("unknown", None) and v,
            "serve to see replica 1 unknown",
            60,
        )
        assert seen[R0] == ("known", 0)
        print(f"\nserve: replica 1 unknown {time.time() - stopped:.1f} s after the stop")
    finally:
        restarted = time.time()
        testbed.start("thanos-sidecar-1")
    eventually(lambda: _thanos_series(serve_url)[R1] == ("known", 200), "replica 1 back", 120)
    print(f"serve: replica 1 judged again {time.time() - restarted:.1f} s after the restart")
    exporter.terminate()
    exporter.wait(timeout=30)
    assert "Traceback" not in log.read_text()


def _store_errors(url: str) -> list[str]:
    stores = json.loads(get(f"{url}/api/v1/stores")[1])["data"]["sidecar"]
    return [st["lastError"] for st in stores if st["lastError"]]


def _serve(testbed: Cluster, url: str, tmp_path: Path) -> tuple[str, subprocess.Popen, Path]:
    port = procs.free_ports(1)[0]
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        exporter = subprocess.Popen(
            [
                str(BINARY),
                "serve",
                "--kubeconfig",
                str(testbed.kubeconfig),
                "--prometheus-url",
                f"tq={url}",
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--interval",
                "2",
                "--prometheus-timeout",
                "10",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return f"http://127.0.0.1:{port}", exporter, log


def _thanos_series(url: str, since: float | None = None) -> dict[str, tuple[str, float | None]]:
    """Per replica: known or not, and node-exporter's missing targets. With
    `since`, only from a cycle that began after that time (else {})."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    if since is not None:
        (end,) = families["scrape_coverage_last_cycle_timestamp_seconds"].samples
        (took,) = families["scrape_coverage_cycle_duration_seconds"].samples
        if end.value - took.value <= since:
            return {R0: ("stale", None), R1: ("stale", None)}
    out: dict[str, tuple[str, float | None]] = {}
    for sample in families["scrape_coverage_replica_coverage_known"].samples:
        replica = sample.labels["scraper_replica"]
        missing = [
            m.value
            for m in families["scrape_coverage_prometheus_missing_targets"].samples
            if m.labels["scraper_replica"] == replica and m.labels["service"] == "node-exporter"
        ]
        out[replica] = ("known" if sample.value else "unknown", missing[0] if missing else None)
    return out
