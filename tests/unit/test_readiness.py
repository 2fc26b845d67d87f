"""Migration readiness on plain data: each state of the safe path and the
unsafe variants, and the Operator's objects as the API returns them."""

from __future__ import annotations

import json

import pytest

from coverage_exporter.model import readiness as r
from coverage_exporter.model.growth import GrowthTracker
from coverage_exporter.model.objects import ClusterSnapshot, Endpoints
from coverage_exporter.sources.kubernetes.operator import parse_crs, parse_service_monitors
from tests.unit import clusters

KUBELET = ("kube-system", "kubelet")
NE = ("monitoring", "node-exporter")

CRS = json.dumps(
    {
        "items": [
            {
                "metadata": {"name": "k8s", "namespace": "monitoring"},
                "spec": {
                    "serviceMonitorSelector": {},
                    "serviceAccountName": "prometheus-k8s",
                    "shards": 2,
                },
            },
            {
                "metadata": {"name": "new", "namespace": "monitoring"},
                "spec": {"serviceDiscoveryRole": "EndpointSlice"},
            },
        ]
    }
).encode()
SMS = json.dumps(
    {
        "items": [
            {
                "metadata": {"name": "node-exporter", "namespace": "monitoring"},
                "spec": {
                    "selector": {"matchLabels": {"app": "node-exporter"}},
                    "endpoints": [{"port": "metrics"}],
                },
            },
            {
                "metadata": {"name": "kubelet", "namespace": "monitoring"},
                "spec": {
                    "selector": {
                        "matchExpressions": [
                            {
                                "key": "app.kubernetes.io/name",
                                "operator": "In",
                                "values": ["kubelet"],
                            }
                        ]
                    },
                    "namespaceSelector": {"matchNames": ["kube-system"]},
                },
            },
        ]
    }
).encode()


def cluster(nodes: int, kubelet_slices: str) -> ClusterSnapshot:
    ne = clusters.node_exporter(nodes)
    ne.services = {
        NE: type(ne.services[NE])(*NE, {"app": "node-exporter"}, {"app": "node-exporter"})
    }
    kubelet = clusters.kubelet(nodes, skip_mirror=kubelet_slices != "mirrored")
    if kubelet_slices == "frozen":
        e = kubelet.endpoints[KUBELET]
        kubelet.endpoints = {
            KUBELET: Endpoints(*KUBELET, e.ready[:-5], (), (nodes - 5,), None, True, True)
        }
    out = ClusterSnapshot()
    for field in ("nodes", "services", "endpoints", "endpointslices", "pods", "daemonsets"):
        setattr(out, field, {**getattr(ne, field), **getattr(kubelet, field)})
    return out


def growth(c: ClusterSnapshot) -> dict:
    return {k: r.ServiceGrowth(sum(e.subset_sizes), None) for k, e in c.endpoints.items()}


def assess(c: ClusterSnapshot, rbac: bool | None = True, index: int = 0) -> r.Readiness:
    crs = parse_crs(CRS, "Prometheus")
    return r.assess(crs[index], parse_service_monitors(SMS), {}, c, growth(c), rbac)


def test_operator_objects_parse_with_their_defaults() -> None:
    k8s, new = parse_crs(CRS, "Prometheus")
    assert (k8s.service_discovery_role, k8s.service_account) == ("Endpoints", "prometheus-k8s")
    assert new.service_monitor_selector is None and new.service_account == "default"
    ne, kubelet = parse_service_monitors(SMS)
    assert ne.selector.matches({"app": "node-exporter"}) and not ne.selector.matches({})
    assert kubelet.namespaces == ("kube-system",) and not kubelet.any_namespace


def test_before_the_migration_the_next_step_is_dual_write_and_switching_is_unsafe() -> None:
    c = cluster(1200, "mirrored")
    got = assess(c)
    assert got.kubelet_state == r.KUBELET_MIRRORED_CAPPED
    assert got.over_capacity == (KUBELET, NE)
    assert (got.next_step, got.safe_now) == (r.STEP_DUAL_WRITE, False)
    assert "--kubelet-endpointslice=true" in got.action


def test_after_dual_write_without_rbac_the_next_step_is_the_rbac() -> None:
    got = assess(cluster(1200, "operator"), rbac=False)
    assert (got.kubelet_state, got.next_step) == (r.KUBELET_OPERATOR_SLICES, r.STEP_GRANT_RBAC)
    assert "endpointslices" in got.action


def test_after_dual_write_with_rbac_the_next_step_is_the_exact_patch() -> None:
    got = assess(cluster(1200, "operator"))
    assert (got.next_step, got.safe_now) == (r.STEP_SWITCH_ROLE, False)
    assert got.action == (
        "kubectl -n monitoring patch prometheus k8s --type merge "
        '-p \'{"spec":{"serviceDiscoveryRole":"EndpointSlice"}}\''
    )


def test_switched_before_the_operator_writes_slices_is_unsafe() -> None:
    c = cluster(1200, "mirrored")
    cr = parse_crs(CRS, "Prometheus")[0]
    switched = r.PrometheusCR(
        **{**{f: getattr(cr, f) for f in cr.__slots__}, "service_discovery_role": "EndpointSlice"}
    )
    got = r.assess(switched, parse_service_monitors(SMS), {}, c, growth(c), True)
    assert (got.next_step, got.safe_now) == (r.STEP_DUAL_WRITE, False)
    assert got.advice.startswith("switched unsafely")


@pytest.mark.parametrize(
    ("slices", "step"),
    [("operator", r.STEP_ENDPOINTS_OFF), ("frozen", r.STEP_DONE)],
)
def test_after_the_switch_endpoints_off_then_done(slices: str, step: str) -> None:
    c = cluster(1200, slices)
    cr = parse_crs(CRS, "Prometheus")[0]
    switched = r.PrometheusCR(
        **{**{f: getattr(cr, f) for f in cr.__slots__}, "service_discovery_role": "EndpointSlice"}
    )
    got = r.assess(switched, parse_service_monitors(SMS), {}, c, growth(c), True)
    assert (got.next_step, got.safe_now) == (step, True)


def test_growth_forecasts_the_day_an_endpoints_object_reaches_1000() -> None:
    tracker = GrowthTracker(window=6 * 3600, every=300)
    for hour in range(6):
        tracker.observe(hour * 3600.0, {NE: 900 + hour * 2})
    (_, got) = next(iter(tracker.view({NE: 910}).items()))
    # 10 addresses in 5 h: 48 a day, 90 to go: under 2 days.
    assert got.days_to_capacity is not None and 1.5 < got.days_to_capacity < 2.0
    assert r.days_to_capacity([(0, 900), (3600, 900)]) is None
    # Small Endpoints are not tracked at all.
    tracker.observe(0.0, {KUBELET: 10})
    assert tracker.view({KUBELET: 10})[KUBELET].days_to_capacity is None


def test_kubelet_state_without_the_operator_is_none() -> None:
    assert r.kubelet_state(clusters.node_exporter(10)) == (r.KUBELET_NONE, None)


async def test_operator_objects_are_read_at_most_every_refresh_interval() -> None:
    """A steady cycle makes no Kubernetes request: the Operator's objects
    are read again only after refresh_seconds."""
    from coverage_exporter.sources.kubernetes.api import ApiError
    from coverage_exporter.sources.kubernetes.operator import OperatorSource

    class Api:
        calls = 0

        async def get(self, path, params):
            Api.calls += 1
            raise ApiError(404, "the server could not find the requested resource")

    source = OperatorSource(Api(), refresh_seconds=3600)  # type: ignore[arg-type]
    assert await source.collect() is None
    assert await source.collect() is None
    assert Api.calls == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"[]",
        b'"allowed"',
        b"[" * 20_000 + b"]" * 20_000,
        b'{"status": []}',
        b'{"status": {"allowed": "yes"}}',
        b"{",
    ],
    ids=["array", "string", "deep", "status-array", "allowed-string", "truncated"],
)
async def test_a_hostile_subjectaccessreview_answer_is_a_source_error(answer: bytes) -> None:
    """Before: an answer that is not an object escaped as AttributeError, a
    deep one as RecursionError (every cycle failed whole), and
    allowed: "yes" counted as allowed."""
    from coverage_exporter.sources.errors import SourceError
    from coverage_exporter.sources.kubernetes.operator import OperatorSource

    class Api:
        async def post(self, path: str, body: bytes) -> bytes:
            return answer

    source = OperatorSource(Api())  # type: ignore[arg-type]
    with pytest.raises(SourceError, match="subjectaccessreview: undecodable"):
        await source._may_watch_endpointslices("monitoring", "prometheus-k8s")


# ---- per-ServiceMonitor roles (Operator v0.86+, prometheus-operator #7982) ----


def monitors_with_role(name: str, role: str) -> list[r.ServiceMonitor]:
    """The ServiceMonitors of SMS, `name` setting spec.serviceDiscoveryRole
    as the v0.86+ CRD carries it."""
    doc = json.loads(SMS)
    for item in doc["items"]:
        if item["metadata"]["name"] == name:
            item["spec"]["serviceDiscoveryRole"] = role
    return parse_service_monitors(json.dumps(doc).encode())


def switched_cr() -> r.PrometheusCR:
    cr = parse_crs(CRS, "Prometheus")[0]
    return r.PrometheusCR(
        **{**{f: getattr(cr, f) for f in cr.__slots__}, "service_discovery_role": "EndpointSlice"}
    )


def test_a_servicemonitor_role_is_parsed_and_wins_over_the_crs() -> None:
    ne, kubelet = monitors_with_role("node-exporter", "EndpointSlice")
    assert (ne.service_discovery_role, kubelet.service_discovery_role) == ("EndpointSlice", None)
    cr = parse_crs(CRS, "Prometheus")[0]
    assert (r.effective_role(ne, cr), r.effective_role(kubelet, cr)) == (
        "EndpointSlice",
        "Endpoints",
    )
    assert r.effective_role(kubelet, switched_cr()) == "EndpointSlice"


def test_a_service_read_through_endpointslice_by_its_own_monitor_is_not_over_capacity() -> None:
    c = cluster(1200, "operator")
    got = r.assess(
        parse_crs(CRS, "Prometheus")[0],
        monitors_with_role("node-exporter", "EndpointSlice"),
        {},
        c,
        growth(c),
        True,
    )
    assert got.role == "Endpoints"
    assert [(m.name, m.role, m.own) for m in got.monitors] == [
        ("node-exporter", "EndpointSlice", True),
        ("kubelet", "Endpoints", False),
    ]
    # Only the kubelet Service is still read through its truncated Endpoints.
    assert got.over_capacity == (KUBELET,)
    assert (got.next_step, got.safe_now) == (r.STEP_SWITCH_ROLE, False)


def test_a_switched_cr_with_a_monitor_pinning_endpoints_is_not_migrated() -> None:
    c = cluster(1200, "frozen")
    got = r.assess(
        switched_cr(), monitors_with_role("node-exporter", "Endpoints"), {}, c, growth(c), True
    )
    assert got.over_capacity == (NE,)
    assert (got.next_step, got.safe_now) == (r.STEP_SWITCH_ROLE, False)
    assert "monitoring/node-exporter" in got.advice
    assert got.action == (
        "kubectl -n monitoring patch servicemonitor node-exporter --type json "
        '-p \'[{"op":"remove","path":"/spec/serviceDiscoveryRole"}]\''
    )
    # Without it the same CR is done.
    plain = r.assess(switched_cr(), parse_service_monitors(SMS), {}, c, growth(c), True)
    assert (plain.next_step, plain.over_capacity) == (r.STEP_DONE, ())


def test_a_monitor_switched_alone_onto_capped_mirrored_slices_is_unsafe() -> None:
    c = cluster(1200, "mirrored")
    got = r.assess(
        parse_crs(CRS, "Prometheus")[0],
        monitors_with_role("kubelet", "EndpointSlice"),
        {},
        c,
        growth(c),
        True,
    )
    assert (got.next_step, got.safe_now) == (r.STEP_DUAL_WRITE, False)
    assert "monitoring/kubelet" in got.advice and "mirrored slices" in got.advice
    # Its RBAC missing: its jobs discover nothing.
    ok = cluster(1200, "operator")
    got = r.assess(
        parse_crs(CRS, "Prometheus")[0],
        monitors_with_role("kubelet", "EndpointSlice"),
        {},
        ok,
        growth(ok),
        False,
    )
    assert (got.next_step, got.safe_now) == (r.STEP_GRANT_RBAC, False)
