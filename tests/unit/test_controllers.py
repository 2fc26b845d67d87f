"""Issue 19 item 5 on plain data: clusters without the Endpoints controller
or the EndpointSlice mirroring controller (KEP-4974). What nothing
maintains is named, and neither truncation nor the mirroring cap is
claimed from it; a cluster without evidence is not judged."""

from __future__ import annotations

import json

from coverage_exporter import runbooks
from coverage_exporter.exposition.audit import render_json
from coverage_exporter.health import SourceHealth
from coverage_exporter.model.causes import Cause
from coverage_exporter.model.controllers import RUNNING, controllers
from coverage_exporter.model.findings import FindingKind, service_findings
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    EndpointAddress,
    Endpoints,
    EndpointSlice,
    PrometheusSnapshot,
    Service,
    SliceEndpoint,
)
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope
from coverage_exporter.model.stages import service_stages
from tests.unit import clusters
from tests.unit.test_causes import dropped_by_truncation
from tests.unit.test_exposition import merged

NE = ("monitoring", "node-exporter")
KUBELET = ("kube-system", "kubelet")
APP = ("shop", "catalog")
ETCD = ("kube-system", "etcd")


def stages_of(report, key):
    (svc,) = [s for s in report.services if s.key == key]
    return svc, {(st.kind, st.pool): st for st in service_stages(svc)}


def kinds(svc) -> list[FindingKind]:
    return [f.kind for f in service_findings(svc)]


def new_service_without_endpoints() -> ClusterSnapshot:
    """A selector-backed Service created after the Endpoints controller
    stopped: the EndpointSlice controller wrote its slice, nothing wrote
    its Endpoints object."""
    ns, name = APP
    slice_ = EndpointSlice(
        ns, f"{name}-x1", name, "endpointslice-controller.k8s.io", "IPv4",
        (SliceEndpoint("10.9.0.1", "node-0000", "Pod", "catalog-1"),),
    )  # fmt: skip
    return ClusterSnapshot(
        services={APP: Service(ns, name, {"app": "catalog"})},
        endpointslices={APP: [slice_]},
    )


def etcd_not_mirrored() -> ClusterSnapshot:
    """Selector-less Endpoints created after the mirroring controller
    stopped: no mirrored slice at all."""
    ns, name = ETCD
    e = Endpoints(ns, name, (EndpointAddress("10.8.0.1"),), (), (1,))
    return ClusterSnapshot(services={ETCD: Service(ns, name, None)}, endpoints={ETCD: e})


def test_no_evidence_no_claim_empty_truncated_and_capped_clusters_are_running() -> None:
    """A cluster with no such Service, or whose controllers did their job
    (a truncated Endpoints, a capped mirror), has no witness."""
    assert controllers(ClusterSnapshot()) == RUNNING
    assert controllers(clusters.node_exporter(1200)) == RUNNING
    assert controllers(clusters.kubelet(1100)) == RUNNING
    # skip-mirror: nothing is to be mirrored, so no mirrored slice is normal.
    kubelet = clusters.kubelet(1100, skip_mirror=True)
    kubelet.endpointslices = {}
    assert controllers(kubelet) == RUNNING
    # A selector-backed Service with neither slices nor Endpoints says
    # nothing of the Endpoints controller (the slice controller may be off).
    bare = new_service_without_endpoints()
    bare.endpointslices = {}
    assert controllers(bare) == RUNNING


def test_without_the_endpoints_controller_a_frozen_truncation_is_not_claimed() -> None:
    cluster = merged(clusters.node_exporter(1200), new_service_without_endpoints())
    found = controllers(cluster)
    assert found.endpoints_witnesses == (APP,) and not found.mirroring_down
    prom = PrometheusSnapshot(
        "prom",
        [
            *clusters.endpoints_targets(cluster, "ne-endpoints", *NE),
            *clusters.slice_targets(cluster, "ne-slices", *NE),
        ],
    )
    report = build_report(Scope(frozenset({NE})), cluster, [prom])
    assert report.controllers == found
    svc, st = stages_of(report, NE)
    assert svc.endpoints_unmaintained and svc.endpoints is not None
    assert not svc.endpoints.truncated
    cut = dropped_by_truncation(1200)
    for stage in (st[("endpoints", "")], st[("prometheus", "ne-endpoints")]):
        assert stage.causes.counts == {Cause.UNMAINTAINED: 200}
        assert sorted(m.node for m in stage.causes.named[Cause.UNMAINTAINED]) == cut
    assert st[("prometheus", "ne-slices")].causes.counts == {}
    found_kinds = kinds(svc)
    assert FindingKind.ENDPOINTS_UNMAINTAINED in found_kinds
    assert FindingKind.POOL_READS_UNMAINTAINED in found_kinds
    assert FindingKind.ENDPOINTS_TRUNCATED not in found_kinds
    assert FindingKind.POOL_READS_TRUNCATED not in found_kinds


def test_the_witness_itself_is_read_from_nothing_maintained() -> None:
    cluster = clusters.node_exporter(20)
    cluster.endpoints = {}
    prom = PrometheusSnapshot("prom", clusters.slice_targets(cluster, "ne-slices", *NE))
    report = build_report(Scope(frozenset({NE})), cluster, [prom])
    svc, st = stages_of(report, NE)
    assert report.controllers.endpoints_witnesses == (NE,)
    assert svc.endpoints_unmaintained
    assert st[("endpoints", "")].causes.counts == {Cause.UNMAINTAINED: 20}
    assert FindingKind.ENDPOINTS_ABSENT not in kinds(svc)


def test_a_frozen_endpoints_object_that_still_agrees_is_not_named() -> None:
    """Frozen but listing what the slices list: it loses nothing today."""
    cluster = merged(clusters.node_exporter(20), new_service_without_endpoints())
    report = build_report(Scope(frozenset({NE})), cluster, [PrometheusSnapshot("prom", [])])
    assert report.controllers.endpoints_down
    svc, _ = stages_of(report, NE)
    assert not svc.endpoints_unmaintained
    assert FindingKind.ENDPOINTS_UNMAINTAINED not in kinds(svc)


def test_without_the_mirroring_controller_no_cap_is_claimed() -> None:
    """Unmirrored kubelet Endpoints: today's code said the mirroring
    controller left all 1100 out (the cap); it left them out because it
    does not run."""
    cluster = clusters.kubelet(1100)
    cluster.endpointslices = {}
    prom = PrometheusSnapshot("prom", clusters.endpoints_targets(cluster, "kubelet", *KUBELET))
    report = build_report(Scope(frozenset({KUBELET})), cluster, [prom])
    assert report.controllers.mirroring_witnesses == (KUBELET,)
    assert not report.controllers.endpoints_down
    svc, st = stages_of(report, KUBELET)
    assert svc.slices_unmirrored and svc.slices.mirroring_skipped is None
    assert st[("endpointslices", "")].causes.counts == {Cause.UNMAINTAINED: 1100}
    assert FindingKind.SLICES_UNMIRRORED in kinds(svc)
    assert FindingKind.MIRRORING_CAPPED not in kinds(svc)
    # The Operator maintains the kubelet Endpoints: role endpoints is fine.
    assert not svc.endpoints_unmaintained
    assert st[("prometheus", "kubelet")].causes.counts == {}


def test_frozen_capped_mirror_is_unmaintained_not_the_cap() -> None:
    """Mirrored before the controller stopped (capped at 1000); an etcd
    Endpoints created since has no mirror: the 100 left out are read from
    slices nothing maintains."""
    cluster = merged(clusters.kubelet(1100), etcd_not_mirrored())
    prom = PrometheusSnapshot("prom", clusters.slice_targets(cluster, "kubelet-slices", *KUBELET))
    report = build_report(Scope(frozenset({KUBELET})), cluster, [prom])
    assert report.controllers.mirroring_witnesses == (ETCD,)
    svc, st = stages_of(report, KUBELET)
    assert svc.slices.mirroring_skipped is None
    assert st[("endpointslices", "")].causes.counts == {Cause.UNMAINTAINED: 100}
    assert st[("prometheus", "kubelet-slices")].causes.counts == {Cause.UNMAINTAINED: 100}
    found_kinds = kinds(svc)
    assert FindingKind.MIRRORING_CAPPED not in found_kinds
    assert FindingKind.POOL_READS_UNMAINTAINED in found_kinds


def test_a_runbook_section_has_its_own_url() -> None:
    assert runbooks.runbook_url("causes.md#unmaintained").endswith("/causes.md#unmaintained")
    assert runbooks.runbook_url("README").endswith("/README.md")


def test_the_json_names_the_witnesses_and_what_is_unmaintained() -> None:
    cluster = merged(clusters.node_exporter(1200), new_service_without_endpoints())
    prom = PrometheusSnapshot("prom", clusters.endpoints_targets(cluster, "ne", *NE))
    report = build_report(Scope(frozenset({NE})), cluster, [prom])
    doc = json.loads(render_json(report, [SourceHealth("kubernetes", up=True)]))
    assert doc["controllers"] == {
        "endpoints_down": True,
        "endpoints_witnesses": ["shop/catalog"],
        "mirroring_down": False,
        "mirroring_witnesses": [],
    }
    (svc,) = doc["services"]
    assert svc["endpoints_unmaintained"] is True and svc["slices_unmirrored"] is False
    assert svc["endpoints"]["truncated"] is False
    assert svc["endpoints"]["causes"] == {"unmaintained": 200}
    (line,) = [f for f in svc["findings"] if "reads the Endpoints object, which no" in f]
    assert "misses 200 of 1200" in line and "causes.md#unmaintained" in line
    assert not any("truncated" in f.lower() for f in svc["findings"])
