"""The exporter against the real testbed: its numbers equal the truth
computed independently from the scenario, it follows the cluster, its
alert reaches Alertmanager, it survives the apiserver, and a fresh user's
`pip install .` finds the truncation.

Tests run in file order and share one exporter process; the last ones
scale the cluster down and the module's fixture restores it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from alerts.generate import render_rules
from dashboards.generate import panel_queries
from testbed import scenarios as s
from testbed.cluster import REPO, Cluster
from testbed.kube import Kube
from testbed.prometheus import active_targets
from tests.e2e.waiting import eventually

N = s.DEFAULT_NODES
SCALED = 900
INTERVAL = "3"
NE = ("monitoring", "node-exporter")

# What each scrape pool of the scenario discovers with N nodes, as the real
# controllers leave it: role endpoints reads the truncated Endpoints,
# role endpointslice the capped mirrored slices of the kubelet.
POOLS = {
    ("monitoring", "node-exporter", "node-exporter-endpoints"): s.endpoints_dropped_nodes,
    ("monitoring", "node-exporter", "node-exporter-endpointslice"): lambda n: set(),
    ("kube-system", "kubelet", "kubelet-endpoints"): lambda n: set(),
    ("kube-system", "kubelet", "kubelet-endpointslice"): s.mirroring_dropped_nodes,
    ("kube-system", "kubelet-skip-mirror", "kubelet-skip-mirror-endpoints"): lambda n: set(),
    ("kube-system", "kubelet-skip-mirror", "kubelet-skip-mirror-endpointslice"): lambda n: set(),
}

CAUSES = {
    ("monitoring", "node-exporter", "node-exporter-endpoints"): "endpoints_truncated",
    ("kube-system", "kubelet", "kubelet-endpointslice"): "mirroring_capped",
}
"""Why each pool of POOLS misses what it misses (model.causes)."""


def prometheus_sees(url: str, nodes: int) -> bool:
    """Prometheus discovered what the controllers now hold for `nodes`."""
    want = {pool: nodes - len(drop(nodes)) for (_, _, pool), drop in POOLS.items()}
    return all(len(active_targets(url, pool)) == count for pool, count in want.items())


def exporter_args(testbed: Cluster, *urls: str) -> list[str]:
    args = ["--kubeconfig", str(testbed.kubeconfig), "--log.level", "warn"]
    for url in urls:
        args += ["--prometheus-url", url]
    return args


def audit(binary: str | Path, testbed: Cluster, url: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [str(binary), "audit", *exporter_args(testbed, url), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def service(doc: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
    (svc,) = [x for x in doc["services"] if (x["namespace"], x["service"]) == (namespace, name)]
    return svc


def names(missing: list[dict[str, str]]) -> set[str]:
    return {m["node"] for m in missing}


@pytest.mark.parametrize("version", ["prometheus-3", "prometheus-2"])
def test_audit_equals_the_truth(testbed: Cluster, version: str) -> None:
    url = testbed.prometheus_urls[version]
    eventually(lambda: prometheus_sees(url, N), f"{version} to discover the scenario")
    rc, doc = audit(Path(sys.executable).parent / "coverage-exporter", testbed, url)
    assert rc == 1 and doc["complete"] and doc["gaps"]

    ne = service(doc, *NE)
    assert (ne["source"], ne["expected"]) == ("daemonset", N)
    assert ne["endpoints"]["ready"] == 1000 and ne["endpoints"]["truncated"] is True
    assert names(ne["endpoints"]["missing"]) == s.endpoints_dropped_nodes(N)
    cut = len(s.endpoints_dropped_nodes(N))
    assert ne["endpoints"]["causes"] == {"endpoints_truncated": cut}
    assert {m["cause"] for m in ne["endpoints"]["missing"]} == {"endpoints_truncated"}
    assert sum(e["count"] for e in ne["endpointslices"]["endpoints"]) == N
    assert ne["endpointslices"]["missing"] == []

    kubelet = service(doc, "kube-system", "kubelet")
    assert (kubelet["source"], kubelet["expected"]) == ("nodes", N)
    assert kubelet["endpointslices"]["mirroring_skipped"] == N - 1000
    assert names(kubelet["endpointslices"]["missing"]) == s.mirroring_dropped_nodes(N)
    capped = len(s.mirroring_dropped_nodes(N))
    assert kubelet["endpointslices"]["causes"] == {"mirroring_capped": capped}

    skip = service(doc, "kube-system", "kubelet-skip-mirror")
    assert skip["endpoints"]["skip_mirror"] is True
    assert skip["endpointslices"]["mirroring_skipped"] is None
    assert skip["endpointslices"]["endpoints"] == [
        {"managed_by": "prometheus-operator", "ready": True, "count": N}
    ]

    for (ns, name, pool), dropped in POOLS.items():
        (p,) = [
            p for p in service(doc, ns, name)["prometheus"]["pools"] if p["scrape_pool"] == pool
        ]
        assert names(p["missing"]) == dropped(N), pool
        # The pool's cause is the stage it reads (issue #19): the cut for
        # role endpoints, the mirroring cap for the kubelet's slices.
        cause = CAUSES.get((ns, name, pool))
        assert p["causes"] == ({cause: len(dropped(N))} if dropped(N) else {}), pool
        assert {m["cause"] for m in p["missing"]} == ({cause} if dropped(N) else set()), pool
        assert p["discovered"] == N - len(dropped(N)), pool
        assert p["role"] == ("endpoints" if pool.endswith("-endpoints") else "endpointslice")


def test_fresh_install_audit_prints_the_finding(testbed: Cluster, tmp_path: Path) -> None:
    """As a new user would: a new venv, `pip install .`, `coverage-exporter audit`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(REPO)],
        check=True,
        timeout=600,
    )
    url = testbed.prometheus_urls["prometheus-3"]
    out = subprocess.run(
        [str(venv / "bin" / "coverage-exporter"), "audit", *exporter_args(testbed, url)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 1, out.stderr
    assert "monitoring/node-exporter: Endpoints truncated to 1000 of 1200" in out.stdout
    assert "scrape pool 'node-exporter-endpoints' (role endpoints) misses 200" in out.stdout
    assert out.stdout.rstrip().endswith("gaps found")


# --- the long-running exporter ---------------------------------------------------


class Exporter:
    def __init__(self, address: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = f"http://{address}"
        self.process = process
        self.log = log

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def samples(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        status, text = self.get("/metrics")
        assert status == 200
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get(name, {}).get(tuple(sorted(labels.items())))

    def cycles(self) -> float:
        return self.value("scrape_coverage_cycles_total") or 0.0


@pytest.fixture(scope="module")
def fast_rules(testbed: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shipped rules with short `for:`, loaded into both Prometheus."""
    path = tmp_path_factory.mktemp("rules") / "coverage-exporter-fast.rules.yml"
    path.write_text(yaml.safe_dump(render_rules(fast=True), sort_keys=False))
    testbed.reload_prometheus(rule_files=[path])
    yield path


@pytest.fixture(scope="module")
def exporter(
    testbed: Cluster, kube: Kube, fast_rules: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Exporter]:
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    binary = Path(sys.executable).parent / "coverage-exporter"
    urls = [f"{name}={url}" for name, url in testbed.prometheus_urls.items()]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "serve",
                *exporter_args(testbed, *urls),
                "--web.listen-address",
                testbed.exporter_address,
                "--interval",
                INTERVAL,
                "--prometheus-full-refresh-interval",
                "0",
                # Room for every missing target of the scenario: 6 groups of
                # 200 (two servers); the fair cap itself is unit-tested.
                "--missing-target-series-limit",
                "2000",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    exp = Exporter(testbed.exporter_address, process, log)
    try:
        eventually(lambda: exp.get("/-/ready")[0] == 200, "the exporter to be ready", 180)
        yield exp
    finally:
        process.terminate()
        process.wait(timeout=30)
        # Leave the scenario as the session found it for other modules.
        if len(kube.list("/api/v1/nodes")) != N:
            s.scale_nodes(kube, N)
            s.wait_converged(kube, N)


def key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_serve_publishes_the_truth(testbed: Cluster, exporter: Exporter) -> None:
    # Until both servers have discovered every pool, a pool still starting
    # reports every target missing (it is meant to scrape the Service):
    # compare once discovery has settled, a cycle later.
    for url in testbed.prometheus_urls.values():
        eventually(lambda url=url: prometheus_sees(url, N), "Prometheus to discover the scenario")
    settled = exporter.cycles()
    eventually(lambda: exporter.cycles() >= settled + 2, "a full cycle after discovery settled")
    # Two independent servers: each is its own replica, judged on its own.
    for name in testbed.prometheus_urls:
        eventually(
            lambda name=name: (
                exporter.value(
                    "scrape_coverage_prometheus_missing_targets",
                    namespace="monitoring",
                    service="node-exporter",
                    scrape_pool="node-exporter-endpoints",
                    role="endpoints",
                    scraper=name,
                    scraper_replica=name,
                )
                == 200
            ),
            f"the node-exporter gap of {name}",
        )
    m = exporter.samples()
    ne = {"namespace": "monitoring", "service": "node-exporter"}
    assert m["scrape_coverage_expected_targets"][key(**ne, source="daemonset")] == N
    assert m["scrape_coverage_endpoints_truncated"][key(**ne)] == 1
    assert m["scrape_coverage_missing_targets"][key(**ne, stage="endpoints")] == N - 1000
    assert m["scrape_coverage_missing_targets"][key(**ne, stage="endpointslices")] == 0
    kubelet = key(namespace="kube-system", service="kubelet")
    assert m["scrape_coverage_endpointslice_mirroring_skipped"][kubelet] == N - 1000
    for name in ("prometheus-3", "prometheus-2"):
        targets = key(
            **ne,
            health="down",
            server=name,
            role="endpoints",
            scrape_pool="node-exporter-endpoints",
        )
        assert m["scrape_coverage_prometheus_targets"][targets] == 1000
    info = [dict(k) for k in m["scrape_coverage_missing_target"]]
    for name in testbed.prometheus_urls:
        prometheus_stage = {
            i["node"]
            for i in info
            if i["stage"] == "prometheus"
            and i["scrape_pool"] == "node-exporter-endpoints"
            and i["scraper_replica"] == name
        }
        assert prometheus_stage == s.endpoints_dropped_nodes(N), name
    assert set(m["scrape_coverage_missing_target_series_omitted"].values()) == {0}
    gap = key(
        namespace="monitoring",
        service="node-exporter",
        stage="endpoints",
        scrape_pool="",
        role="endpoints",
        scraper="",
        scraper_replica="",
    )
    assert m["scrape_coverage_gap_targets"][gap] == N - 1000
    assert m["scrape_coverage_nodes"][key(ready="true")] == N


def test_no_scrape_of_simulated_targets_leaves_loopback(testbed: Cluster) -> None:
    for url in testbed.prometheus_urls.values():
        for pool in ("node-exporter-endpoints", "kubelet-endpointslice"):
            errors = {t["lastError"] for t in active_targets(url, pool) if t["lastError"]}
            assert errors, pool
            assert all("127.0.0.1:1" in e and "proxyconnect" in e for e in errors), errors
    assert testbed.non_loopback_peers() == {}


def prometheus_query(url: str, expr: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_dashboard_queries_return_data(testbed: Cluster, exporter: Exporter) -> None:
    url = testbed.prometheus_urls["prometheus-3"]
    # rate() over the exporter's counters needs a few scrapes first.
    eventually(
        lambda: prometheus_query(url, "scrape_coverage_cycles_total offset 30s"),
        "30 s of exporter samples in Prometheus",
        120,
    )
    # The migration row reads the Operator's objects, which this scenario
    # has none of (the exporter then exports no scrape_coverage_operator_*).
    queries = [(t, e) for t, e in panel_queries(substitute=True) if "_operator_" not in e]
    empty = [(title, expr) for title, expr in queries if not prometheus_query(url, expr)]
    assert empty == []


def webhook_alerts(testbed: Cluster, alertname: str) -> list[dict[str, Any]]:
    path = Path(testbed.webhook_log)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        for alert in json.loads(line).get("alerts", []):
            if alert["labels"].get("alertname") == alertname:
                out.append(alert)
    return out


def test_truncation_alert_reaches_alertmanager(testbed: Cluster, exporter: Exporter) -> None:
    def firing() -> list[dict[str, Any]]:
        return [
            a
            for a in webhook_alerts(testbed, "ScrapeCoverageEndpointsTruncated")
            if a["status"] == "firing"
        ]

    alerts = eventually(firing, "ScrapeCoverageEndpointsTruncated at the webhook", 180)
    labels = alerts[-1]["labels"]
    assert labels["namespace"] == "monitoring"
    assert labels["service"] == "node-exporter"
    assert labels["stage"] == "endpoints" and labels["role"] == "endpoints"
    assert labels["severity"] == "warning"
    assert "runbook_url" in alerts[-1]["annotations"]
    assert "ScrapeCoverageEndpointsTruncated.md" in alerts[-1]["annotations"]["runbook_url"]


def test_apiserver_outage_is_reported_never_as_zero(testbed: Cluster, exporter: Exporter) -> None:
    gap = {"namespace": "monitoring", "service": "node-exporter", "stage": "endpoints"}
    kube_up = {"source": "kubernetes", "server": ""}
    assert exporter.value("scrape_coverage_missing_targets", **gap) == N - 1000
    testbed.stop("kube-apiserver", force=True)
    try:
        eventually(
            lambda: exporter.value("scrape_coverage_source_up", **kube_up) == 0,
            "source_up 0 for kubernetes",
            120,
        )
        start = exporter.cycles()
        eventually(lambda: exporter.cycles() >= start + 2, "two cycles during the outage", 60)
        # The last known gap stays published: never a false zero.
        assert exporter.value("scrape_coverage_missing_targets", **gap) == N - 1000
        assert (
            exporter.value(
                "scrape_coverage_endpoints_truncated",
                namespace="monitoring",
                service="node-exporter",
            )
            == 1
        )
        assert exporter.get("/-/healthy")[0] == 200
    finally:
        testbed.start("kube-apiserver")
    eventually(
        lambda: exporter.value("scrape_coverage_source_up", **kube_up) == 1,
        "the exporter to recover by itself",
        180,
    )
    assert exporter.value("scrape_coverage_missing_targets", **gap) == N - 1000
    assert exporter.process.poll() is None


def test_fix_by_scaling_down_closes_every_gap_within_a_cycle(
    testbed: Cluster, kube: Kube, exporter: Exporter
) -> None:
    s.scale_nodes(kube, SCALED)
    s.wait_converged(kube, SCALED)
    ep = s.get_endpoints(kube, *NE)
    assert not s.is_truncated(ep)
    for url in testbed.prometheus_urls.values():
        eventually(lambda url=url: prometheus_sees(url, SCALED), "Prometheus to see 900 nodes")
    # Every source now holds the fixed state; the next full cycle must show it.
    converged = exporter.cycles()
    eventually(lambda: exporter.cycles() >= converged + 2, "one full cycle after convergence", 60)
    m = exporter.samples()
    missing = m["scrape_coverage_prometheus_missing_targets"]
    assert missing and set(missing.values()) == {0}
    assert set(m["scrape_coverage_missing_targets"].values()) == {0}
    assert set(m["scrape_coverage_endpoints_truncated"].values()) == {0}
    assert set(m["scrape_coverage_endpointslice_mirroring_skipped"].values()) == {0}
    assert "scrape_coverage_missing_target" not in m
    assert set(m["scrape_coverage_gap_targets"].values()) == {0}
    ne = key(namespace="monitoring", service="node-exporter", source="daemonset")
    assert m["scrape_coverage_expected_targets"][ne] == SCALED

    def resolved() -> bool:
        latest: dict[tuple[tuple[str, str], ...], str] = {}
        for alert in webhook_alerts(testbed, "ScrapeCoverageEndpointsTruncated"):
            latest[tuple(sorted(alert["labels"].items()))] = alert["status"]
        return bool(latest) and set(latest.values()) == {"resolved"}

    eventually(resolved, "the truncation alert to resolve", 180)


def test_exporter_log_has_no_tracebacks(exporter: Exporter) -> None:
    assert "Traceback" not in exporter.log.read_text()
    assert os.path.getsize(exporter.log) < 1_000_000


def test_pods_are_read_in_table_form_from_the_real_apiserver(testbed: Cluster) -> None:
    """Issue #12: the audit lists the node-exporter pods as Tables (no
    fallback), and still finds their DaemonSet from the pod names."""
    url = testbed.prometheus_urls["prometheus-3"]
    binary = Path(sys.executable).parent / "coverage-exporter"
    args = [*exporter_args(testbed, url), "--log.level", "info", "--output", "json"]
    out = subprocess.run(
        [str(binary), "audit", *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode in (0, 1), out.stderr
    listed = [
        line for line in out.stderr.splitlines()
        if 'resource="pods monitoring' in line and " msg=listed " in line
    ]  # fmt: skip
    assert listed and all(" form=table" in line for line in listed), out.stderr[-3000:]
    assert "falling back" not in out.stderr
    # Earlier tests may have scaled the scenario: compare with what was listed.
    (count,) = {int(line.split(" objects=")[1].split()[0]) for line in listed}
    ne = service(json.loads(out.stdout), *NE)
    assert (ne["source"], ne["expected"]) == ("daemonset", count) and count > 0


def test_a_table_watch_follows_a_pod_from_creation_to_deletion(testbed: Cluster) -> None:
    """Against the real apiserver, in process: a pod scope of its own (a
    label no other test uses), one pod added, seen through the Table watch
    with its node and IP, then deleted and gone (the DELETED row named by
    its Name cell)."""
    import asyncio

    from coverage_exporter.model.objects import Service
    from coverage_exporter.sources.kubernetes import pod_table
    from coverage_exporter.sources.kubernetes.source import KubernetesSource

    labels = {"e2e": "pod-table"}
    kube = Kube(testbed.kubeconfig)
    pods_path = f"/api/v1/namespaces/{NE[0]}/pods"

    async def run() -> None:
        source = KubernetesSource(kubeconfig=str(testbed.kubeconfig), watch_timeout_seconds=60)
        await source.start()
        try:
            assert await source.wait_synced(120)
            source.set_pod_scope([Service(NE[0], "e2e-pod-table", labels)])
            await source.ensure_pods_synced(60)
            (reflector,) = [r for r in source.reflectors() if r.name.startswith("pods ")]
            assert isinstance(reflector.parser, pod_table.PodTableParser)  # no fallback
            assert source.snapshot().pods[(NE[0], "e2e-pod-table")] == ()
            body = {
                "metadata": {"generateName": "e2e-pod-table-", "labels": labels},
                "spec": {
                    "nodeName": s.node_name(1),
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "c", "image": "example.invalid/none:1"}],
                },
            }
            name = (await asyncio.to_thread(kube.create, pods_path, body))["metadata"]["name"]

            async def until(check: Any, what: str) -> None:
                for _ in range(600):
                    if check():
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"not seen through the Table watch: {what}")

            def pods() -> Any:
                return source.snapshot().pods[(NE[0], "e2e-pod-table")]

            await until(lambda: [p.name for p in pods()] == [name], "the new pod")
            assert pods()[0].node_name == s.node_name(1)
            await asyncio.to_thread(kube.delete, f"{pods_path}/{name}", grace=0)
            await until(lambda: pods() == (), "the deletion")
            assert isinstance(reflector.parser, pod_table.PodTableParser)
            assert reflector.lists_total == 1  # followed by the watch, not relists
        finally:
            await source.stop()

    try:
        asyncio.run(run())
    finally:
        kube.close()
