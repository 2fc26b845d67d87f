"""Discovery on the real Prometheus Operator v0.85.0 (issue #18): the exporter
given no server finds every shard and replica of CR monitoring/k8s from the
CR and its pods, reads each at its pod IP, and follows the CR as it changes.

The shared ``operator_testbed`` (conftest.py: 1200 nodes, 2 shards x 2
replicas, real StatefulSet pods at loopback pod IPs, testbed/pods.py). The
truth comes from the objects and the servers, never from the exporter: the
explicit run names the four pods' URLs as the testbed runs them. Each test
leaves the CR at 2 x 2 and every pod Ready for the next module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coverage_exporter import exit_codes
from testbed import migration as mg
from testbed import operator as op
from testbed.cluster import Cluster
from testbed.kube import Kube
from testbed.procs import free_ports
from tests.e2e.roundrobin import round_robin
from tests.e2e.waiting import eventually

EXPORTER = Path(sys.executable).parent / "coverage-exporter"
SCRAPER = f"{op.MONITORING}/{op.NAME}"
FOUND_BY = f"Prometheus {SCRAPER}"


def run_audit(cluster: Cluster, *flags: str) -> tuple[int, dict[str, Any], str]:
    out = subprocess.run(
        [
            str(EXPORTER),
            "audit",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--log.level",
            "warning",
            "--output",
            "json",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode in (exit_codes.FULL_COVERAGE, exit_codes.GAPS, exit_codes.CANNOT_JUDGE), (
        out.stderr
    )
    return out.returncode, json.loads(out.stdout), out.stderr


def explicit_flags(cluster: Cluster) -> list[str]:
    """The four pods as a user would list them, named as discovery names them."""
    flags = ["--prometheus-discovery", "off"]
    for pod in cluster.operator_pods():
        flags += ["--prometheus-url", f"{pod.namespace}/{pod.name}={pod.url}"]
    return flags


def servers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        sv["server"]: {**sv, "replica": r["replica"], "shards": r["shards"]}
        for r in doc["replicas"]
        for sv in r["servers"]
    }


def judged(doc: dict[str, Any]) -> dict[str, Any]:
    """What the audit judged, without how the servers were found. Target
    counts are summed over health: each target's health moves from unknown
    to down as its scrapes (through the closed proxy) happen, between runs."""
    out = {k: doc[k] for k in ("verdict", "gaps", "nodes", "unresolved")}
    out["services"] = [_health_free(s) for s in doc["services"]]
    out["replicas"] = [
        {
            **r,
            "servers": [
                {k: v for k, v in sv.items() if k not in ("topology", "discovery")}
                for sv in r["servers"]
            ],
        }
        for r in doc["replicas"]
    ]
    return out


def _health_free(service: dict[str, Any]) -> dict[str, Any]:
    counts: dict[tuple[str, str, str], int] = {}
    for t in service["prometheus"]["targets"]:
        key = (t["server"], t["scrape_pool"], t["role"])
        counts[key] = counts.get(key, 0) + t["count"]
    return {**service, "prometheus": {**service["prometheus"], "targets": sorted(counts.items())}}


INTERVAL = 3
GRACE = 45


class Serve:
    """`serve` with no server flag, every 3 s, sources cut off after 10 s."""

    def __init__(self, cluster: Cluster, log: Path) -> None:
        self.address = f"127.0.0.1:{free_ports(1)[0]}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(EXPORTER),
                    "serve",
                    "--kubeconfig",
                    str(cluster.kubeconfig),
                    "--web.listen-address",
                    self.address,
                    "--interval",
                    str(INTERVAL),
                    "--prometheus-full-refresh-interval",
                    "0",
                    "--log.level",
                    "info",
                    # A hung Prometheus holds a cycle up to the deadline (120 s
                    # by default): short here, so the tests see the next cycle.
                    "--source-deadline",
                    "10",
                    "--prometheus-timeout",
                    "10",
                    # A fresh server is "still discovering" until every pool it
                    # runs is counted above zero, or for the grace (2m by
                    # default). A shard whose hashmod keeps none of a small
                    # pool waits the grace out: shorter here, so a replaced
                    # pod or a new shard is judged within the test's waits.
                    "--prometheus-discovery-grace",
                    f"{GRACE}s",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def samples(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def server_info(self) -> dict[str, dict[str, str]]:
        return {
            dict(k)["server"]: dict(k)
            for k in self.samples().get("scrape_coverage_server_info", {})
        }

    def cycles(self) -> int:
        return int(next(iter(self.samples()["scrape_coverage_cycles_total"].values())))


@pytest.fixture(scope="module")
def okube(operator_testbed: Cluster) -> Iterator[Kube]:
    k = Kube(operator_testbed.kubeconfig)
    yield k
    k.close()


@pytest.fixture(scope="module")
def serve(operator_testbed: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    started = time.monotonic()
    s = Serve(operator_testbed, tmp_path_factory.mktemp("discovery-serve") / "exporter.log")
    try:
        eventually(lambda: len(s.server_info()) == 4, "the exporter to find four servers", 180)
        print(f"\nserve: four servers found {time.monotonic() - started:.1f} s after start")
        yield s
    finally:
        s.process.terminate()
        s.process.wait(timeout=30)


def test_no_server_flag_finds_the_four_pods_and_audits_as_the_explicit_run(
    operator_testbed: Cluster, okube: Kube
) -> None:
    c = operator_testbed
    mg.settle(c, okube)
    pods = {f"{p.namespace}/{p.name}": p for p in c.operator_pods()}
    assert len(pods) == 4
    started = time.monotonic()
    rc_explicit, explicit, _ = run_audit(c, *explicit_flags(c))
    explicit_s = time.monotonic() - started
    started = time.monotonic()
    rc_found, found, _ = run_audit(c)
    found_s = time.monotonic() - started
    # Figures for the issue (printed, never asserted: a loaded machine).
    print(
        f"\nservers found: {len(servers(found))}; audit by discovery: rc={rc_found} "
        f"{found_s:.1f} s, with the four URLs: rc={rc_explicit} {explicit_s:.1f} s"
    )
    assert rc_explicit == rc_found == exit_codes.GAPS  # node-exporter's Endpoints is truncated
    assert judged(found) == judged(explicit)
    assert found["complete"] and explicit["complete"]
    # Each server found at its pod IP, placed by the CR and its pod.
    got = servers(found)
    assert set(got) == set(pods)
    for name, pod in pods.items():
        sv = got[name]
        assert (sv["shard"], sv["replica"], sv["shards"]) == (
            pod.shard,
            f"prometheus-{op.NAME}-{pod.replica}",
            2,
        )
        assert (sv["topology"], sv["discovery"]) == ("discovered", FOUND_BY)
    assert {sv["discovery"] for sv in servers(explicit).values()} == {"--prometheus-url"}
    by_source = {(s["source"], s["server"]): s for s in found["sources"]}
    assert by_source[("discovery", "")]["up"]
    assert {(s, n) for s, n in by_source if s == "prometheus"} == {("prometheus", n) for n in pods}


def test_a_new_shard_is_judged_once_its_discovery_settles_and_leaves_without_a_trace(
    operator_testbed: Cluster, okube: Kube, serve: Serve
) -> None:
    c = operator_testbed
    # The baseline once every replica is judged: servers of a testbed just
    # started are still discovering (unknown, no gap series) for a while.
    eventually(
        lambda: set(serve.samples()["scrape_coverage_replica_coverage_known"].values()) == {1.0},
        "every replica judged",
        GRACE + 60,
        every=0.5,
    )
    gaps_before = serve.samples()["scrape_coverage_gap_targets"]
    watch = Watch(serve)
    try:
        op.patch_cr(okube, {"shards": 3})
        new = [f"prometheus-{op.NAME}-shard-2-{r}" for r in range(op.REPLICAS)]
        # The cycle count when both new pods are Ready (the API says so),
        # when both new servers have had their first targets from service
        # discovery (Prometheus applies them every 5 s: until then their pools
        # look empty, and judging them would be a false gap), and when the
        # exporter judges them as shard 2: the figure.
        ready_at = eventually(
            lambda: serve.cycles() if _ready(okube) >= set(new) else None,
            "shard 2's pods Ready",
            180,
            every=0.2,
        )
        discovered_at = eventually(
            lambda: serve.cycles() if all(_synced(c, n) for n in new) else None,
            "shard 2's first targets",
            120,
            every=0.2,
        )
        judged_at = eventually(
            lambda: serve.cycles() if _judged(serve, new) else None,
            "shard 2 judged",
            120,
            every=0.2,
        )
        print(
            f"\ncycles from shard 2 Ready to judged: {judged_at - ready_at}, "
            f"from its first targets: {judged_at - discovered_at}"
        )
        # Judged once every pool it runs counts targets, steady for 10 s
        # (sources.prometheus.source.discovery_settled), else when the grace
        # ends: never later than the grace after Ready, plus the cycle
        # running and the next.
        assert judged_at - ready_at <= GRACE // INTERVAL + 2
        mg.settle(c, okube)
    finally:
        mg.set_shards(c, okube, 2)
    eventually(
        lambda: set(serve.server_info()) == {f"{p.namespace}/{p.name}" for p in c.operator_pods()},
        "shard 2 gone",
        120,
        every=0.5,
    )
    watch.stop()
    # At no moment of either change a false gap (a gap series above what it
    # was, or a new one), nor a server reported down: while a shard's
    # configuration lags its CR, or its discovery has not delivered, its
    # replica is unknown, not missing.
    false_gaps = [
        {
            dict(k).get("scrape_pool") or dict(k).get("stage"): v
            for k, v in seen.items()
            if v > gaps_before.get(k, 0)
        }
        for seen in watch.gaps_seen
    ]
    assert not [g for g in false_gaps if g], false_gaps
    assert watch.down_seen == set(), watch.down_seen
    samples = serve.samples()
    assert set(samples["scrape_coverage_replica_coverage_known"].values()) == {1.0}
    up = samples["scrape_coverage_source_up"]
    assert not [k for k, v in up.items() if v != 1.0], up
    assert not [k for k in up if "shard-2" in dict(k).get("server", "")]
    assert samples["scrape_coverage_gap_targets"] == gaps_before


class Watch:
    """Samples the exporter every 0.3 s in a thread: every distinct set of
    gap series, and every server ever reported down."""

    def __init__(self, serve: Serve) -> None:
        self.gaps_seen: list[dict[tuple[tuple[str, str], ...], float]] = []
        self.down_seen: set[str] = set()
        self._stop = threading.Event()
        self._serve = serve
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                samples = self._serve.samples()
            except OSError:
                continue
            gaps = samples.get("scrape_coverage_gap_targets", {})
            if not self.gaps_seen or self.gaps_seen[-1] != gaps:
                self.gaps_seen.append(gaps)
            self.down_seen |= {
                dict(k).get("server", "")
                for k, v in samples.get("scrape_coverage_source_up", {}).items()
                if v != 1.0
            }

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _synced(c: Cluster, name: str) -> bool:
    """Every pool of the pod's Prometheus has had targets from discovery."""
    pod = next((p for p in c.operator_pods() if p.name == name), None)
    if pod is None:
        return False
    with urllib.request.urlopen(f"{pod.url}/metrics", timeout=5) as r:
        text = r.read().decode()
    synced = {
        line.split('"')[1]
        for line in text.splitlines()
        if line.startswith("prometheus_target_scrape_pool_sync_total{")
    }
    return set(op.POOLS) <= synced


def _ready(kube: Kube) -> set[str]:
    pods = kube.list(
        f"/api/v1/namespaces/{op.MONITORING}/pods",
        labelSelector=f"operator.prometheus.io/name={op.NAME}",
    )
    return {
        p["metadata"]["name"]
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions") or []
        )
    }


def _judged(serve: Serve, new: list[str]) -> bool:
    """Both new servers placed as shard 2 of 3 of their replicas, every
    replica known (each of its three shards answered)."""
    info = serve.server_info()
    known = serve.samples()["scrape_coverage_replica_coverage_known"]
    return all(
        (sv := info.get(f"{op.MONITORING}/{name}")) is not None
        and (sv["shard"], sv["shards"], sv["discovery"]) == ("2", "3", FOUND_BY)
        and sv["scraper_replica"] == f"prometheus-{op.NAME}-{name[-1]}"
        for name in new
    ) and set(known.values()) == {1.0}


def test_a_pod_not_ready_makes_its_replica_unknown_and_a_replaced_pod_is_read_anew(
    operator_testbed: Cluster, okube: Kube, serve: Serve
) -> None:
    c = operator_testbed
    pod = next(p for p in c.operator_pods() if p.name == f"prometheus-{op.NAME}-shard-1-1")
    known = "scrape_coverage_replica_coverage_known"
    replica = {"scraper": SCRAPER, "scraper_replica": f"prometheus-{op.NAME}-1"}
    other = {"scraper": SCRAPER, "scraper_replica": f"prometheus-{op.NAME}-0"}

    def state(labels: dict[str, str]) -> float | None:
        return serve.samples()[known].get(tuple(sorted(labels.items())))

    # Its Prometheus hangs: the readiness probe fails, the pod goes not Ready.
    os.kill(pod.pid, signal.SIGSTOP)
    try:
        eventually(lambda: state(replica) == 0.0, "replica 1 unknown", 60, every=0.5)
        assert state(other) == 1.0
        assert "scrape_coverage_prometheus_missing_targets" not in {
            n
            for n, v in serve.samples().items()
            for k in v
            if dict(k).get("scraper_replica") == replica["scraper_replica"]
        }
    finally:
        os.kill(pod.pid, signal.SIGCONT)
    eventually(lambda: state(replica) == 1.0, "replica 1 known again", 60, every=0.5)

    # Replaced: deleted, the statefulset controller makes a new pod (new UID).
    okube.delete(f"/api/v1/namespaces/{op.MONITORING}/pods/{pod.name}", grace=0)
    eventually(
        lambda: any(p.name == pod.name and p.uid != pod.uid and p.ready for p in c.operator_pods()),
        "the new pod running",
        120,
    )
    new = next(p for p in c.operator_pods() if p.name == pod.name)
    print(f"\nreplaced pod: {pod.ip} -> {new.ip}")
    eventually(
        lambda: (
            state(replica) == 1.0
            and any(
                "replaced: read anew" in line and f"server={pod.namespace}/{pod.name} " in line
                for line in serve.log.read_text().splitlines()
            )
        ),
        "the new pod read",
        GRACE + 60,
        every=0.5,
    )
    mg.settle(c, okube)


def test_one_url_in_front_of_two_replicas_is_not_judged(operator_testbed: Cluster) -> None:
    """The chart's old default: prometheus-operated, each connection to another
    pod. A round-robin proxy on loopback stands in for the Service."""
    c = operator_testbed
    pods = {p.name: p for p in c.operator_pods()}
    for pair in (
        [f"prometheus-{op.NAME}-0", f"prometheus-{op.NAME}-1"],  # two replicas
        [f"prometheus-{op.NAME}-0", f"prometheus-{op.NAME}-shard-1-0"],
    ):  # two shards
        backends = [pods[n].url.removeprefix("http://") for n in pair]
        with round_robin(backends) as url:
            rc, doc, stderr = run_audit(
                c, "--prometheus-discovery", "off", "--prometheus-url", f"operated={url}"
            )
        assert rc == exit_codes.CANNOT_JUDGE, (pair, doc["verdict"])
        (src,) = [s for s in doc["sources"] if s["server"] == "operated"]
        assert not src["up"]
        assert "different servers" in src["error"] and "discovery" in src["error"]
        assert "different servers" in stderr
        assert not doc["complete"]
        # Never compared as one server: no pool of it is judged.
        assert not [
            p for s in doc["services"] for p in s["prometheus"]["pools"] if p.get("known")
        ], pair


def test_nothing_found_nor_given_is_not_green(operator_testbed: Cluster) -> None:
    rc, doc, stderr = run_audit(operator_testbed, "--prometheus-discovery", "off")
    assert rc == exit_codes.CANNOT_JUDGE
    assert not doc["complete"] and doc["replicas"] == []
    assert "no Prometheus server" in stderr + json.dumps(doc)
