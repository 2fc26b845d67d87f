"""Golden-file tests: plain data in, the exact exposition text out, so a
change in output shows as a readable diff. UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coverage_exporter.exposition.metrics import METRICS, ExporterState, exported_names, render
from coverage_exporter.health import SourceHealth
from coverage_exporter.model.objects import ClusterSnapshot, PrometheusSnapshot
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope
from tests.unit import clusters
from tools.contract import METRICS_DOC, documented_metrics

GOLDEN = Path(__file__).parent.parent / "golden"
NE = ("monitoring", "node-exporter")
KUBELET = ("kube-system", "kubelet")


def merged(*snapshots: ClusterSnapshot) -> ClusterSnapshot:
    out = ClusterSnapshot()
    for field in ("nodes", "services", "endpoints", "endpointslices", "pods", "daemonsets"):
        setattr(out, field, {k: v for s in snapshots for k, v in getattr(s, field).items()})
    return out


def sources(prometheus_up: bool) -> list[SourceHealth]:
    kube = SourceHealth("kubernetes", "", True, "", 0.25, 1764130000.0, 0, 12, 345678)
    prom = SourceHealth(
        "prometheus",
        "prom-a",
        prometheus_up,
        "" if prometheus_up else "HTTP 503",
        1.5,
        1764129000.0,
        0 if prometheus_up else 3,
        7,
        123456,
    )
    return [kube, prom]


def check_golden(name: str, text: str) -> None:
    # build_info's Python version and revision differ between machines and builds.
    text = re.sub(r'python_version="[^"]*"', 'python_version="X.Y.Z"', text)
    text = re.sub(r'revision="[^"]*"', 'revision="REVISION"', text)
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; UPDATE_GOLDEN=1 to accept"


def truncated_cluster_state(limit: int) -> ExporterState:
    ne = clusters.node_exporter(1003)
    kubelet = clusters.kubelet(1003)
    cluster = merged(ne, kubelet)
    prom = PrometheusSnapshot(
        "prom-a",
        [
            *clusters.endpoints_targets(ne, "serviceMonitor/monitoring/node-exporter/0", *NE),
            *clusters.slice_targets(kubelet, "serviceMonitor/monitoring/kubelet/0", *KUBELET),
        ],
    )
    report = build_report(Scope(), cluster, [prom])
    return ExporterState(
        report,
        sources(True),
        missing_info_limit=limit,
        cycles_total=3,
        cycle_duration_seconds=0.5,
        last_cycle_timestamp=1764130001.0,
    )


def test_truncated_cluster_exposition_matches_golden() -> None:
    check_golden("truncated_cluster.txt", render(truncated_cluster_state(limit=4)).decode())


def test_before_kubernetes_answers_only_exporter_metrics_are_published() -> None:
    text = render(ExporterState(None, sources(False))).decode()
    check_golden("no_kubernetes_yet.txt", text)
    assert "scrape_coverage_missing_targets{" not in text
    assert 'scrape_coverage_source_up{server="prom-a",source="prometheus"} 0.0' in text


def test_missing_target_cap_is_shared_fairly_and_counts_what_it_cut() -> None:
    state = truncated_cluster_state(limit=4)
    families = {f.name: f for f in text_string_to_metric_families(render(state).decode())}
    series = families["scrape_coverage_missing_target"].samples
    assert len(series) == 4
    # 4 groups of 3 missing each (node-exporter pool and Endpoints, kubelet
    # mirrored slices and pool): one series each, never 4 from one group.
    groups = {(s.labels["service"], s.labels["stage"], s.labels["scrape_pool"]) for s in series}
    assert len(groups) == 4
    omitted = families["scrape_coverage_missing_target_series_omitted"].samples
    assert sorted(s.value for s in omitted) == [2.0, 2.0, 2.0, 2.0]


def test_fair_shares_give_small_groups_all_and_split_the_rest() -> None:
    from coverage_exporter.exposition.metrics import fair_shares

    assert fair_shares([4000, 4000, 4000, 4000, 3], 1000) == [249, 249, 249, 250, 3]
    assert fair_shares([10, 20], 1000) == [10, 20]
    assert fair_shares([5, 5], 0) == [0, 0]
    assert sum(fair_shares([7, 900, 40, 1], 100)) == 100


def test_exposition_parses_and_every_family_is_declared() -> None:
    text = render(truncated_cluster_state(limit=1000)).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    declared = {n.removesuffix("_total") for n in exported_names()}
    assert names == declared


def test_metrics_doc_lists_exactly_what_the_code_exports() -> None:
    # The contract's one reader (tools/contract.py), which the rule and
    # dashboard tests use too.
    assert documented_metrics()["exporter"] == set(exported_names())


@pytest.mark.parametrize("spec", METRICS, ids=lambda m: m.name)
def test_metric_labels_are_documented(spec) -> None:
    text = METRICS_DOC.read_text()
    name = "scrape_coverage_" + spec.name + ("_total" if spec.kind == "counter" else "")
    (row,) = [line for line in text.splitlines() if line.startswith(f"| `{name}` |")]
    documented = re.findall(r"`([a-z_]+)`", row.split("|")[3])
    assert documented == list(spec.labels)
