"""Raw API JSON -> slim objects, on fixtures shaped like real API responses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from coverage_exporter.model.objects import (
    MANAGED_BY_MIRRORING,
    EndpointAddress,
    Node,
    Pod,
    SliceEndpoint,
)
from coverage_exporter.sources.kubernetes import parse as k8s_parse
from coverage_exporter.sources.kubernetes.parse import ObjectParser, ParseError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "kubernetes"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_node_keeps_internal_and_external_ip_and_ready() -> None:
    parsed = k8s_parse.NODES.parse(raw("node.json"))
    assert parsed.key == "ip-10-0-12-34.ec2.internal"
    assert parsed.resource_version == "4811022"
    node = parsed.obj
    assert (node.name, node.addresses, node.ready) == (
        "ip-10-0-12-34.ec2.internal",
        ("10.0.12.34", "3.91.22.7"),
        True,
    )
    # Labels for DaemonSet placement; the per-node hostname label is left
    # out of the shared set (model.scheduling reads the name instead).
    assert node.labels["topology.kubernetes.io/zone"] == "us-east-1a"
    assert "kubernetes.io/hostname" not in node.labels


def test_node_many_images_is_small_after_parsing() -> None:
    data = raw("node.json")
    assert len(json.loads(data)["status"]["images"]) == 60
    assert len(data) > 15_000
    node = k8s_parse.NODES.parse(data).obj
    # Nothing but name, addresses, readiness and what placement reads survives.
    assert node.__struct_fields__ == (
        "name",
        "addresses",
        "ready",
        "labels",
        "taints",
        "unschedulable",
    )
    # Nodes with equal labels share one dict, not one copy each.
    twin = json.loads(data)
    twin["metadata"]["name"] = "other"
    twin["metadata"]["labels"]["kubernetes.io/hostname"] = "other"
    assert k8s_parse.NODES.parse(json.dumps(twin).encode()).obj.labels is node.labels


def test_node_not_ready_dual_stack() -> None:
    node = k8s_parse.NODES.parse(raw("node_not_ready_dualstack.json")).obj
    assert node.ready is False  # Ready=Unknown is not ready
    assert node.addresses == ("10.0.12.35", "fd00:10:0:12::35")  # no Hostname/InternalDNS


def test_node_without_status() -> None:
    node = k8s_parse.NODES.parse(b'{"metadata":{"name":"n1"}}').obj
    assert node == Node(name="n1", addresses=(), ready=False)


def test_service_with_selector_and_labels() -> None:
    parsed = k8s_parse.SERVICES.parse(raw("service_node_exporter.json"))
    svc = parsed.obj
    assert parsed.key == ("monitoring", "kube-prometheus-stack-prometheus-node-exporter")
    assert svc.key == parsed.key
    assert svc.selector == {
        "app.kubernetes.io/instance": "kube-prometheus-stack",
        "app.kubernetes.io/name": "prometheus-node-exporter",
    }
    assert svc.labels["jobLabel"] == "node-exporter"


@pytest.mark.parametrize("fixture", ["service_kubelet.json", "service_empty_selector.json"])
def test_service_without_selector_is_none(fixture: str) -> None:
    assert k8s_parse.SERVICES.parse(raw(fixture)).obj.selector is None


def test_service_without_labels() -> None:
    assert k8s_parse.SERVICES.parse(raw("service_empty_selector.json")).obj.labels == {}


def test_truncated_endpoints_carry_annotation() -> None:
    ep = k8s_parse.ENDPOINTS.parse(raw("endpoints_truncated.json")).obj
    assert ep.over_capacity == "truncated"
    assert ep.skip_mirror is False
    assert ep.subset_sizes == (3,)
    assert ep.ready[0] == EndpointAddress(
        ip="10.0.0.10",
        node_name="ip-10-0-0-10.ec2.internal",
        target_kind="Pod",
        target_name="kube-prometheus-stack-prometheus-node-exporter-2xk8v",
    )
    assert ep.not_ready == ()


def test_over_capacity_as_label_is_not_the_annotation() -> None:
    # Prometheus reads the key from labels; Kubernetes writes an annotation.
    obj = json.loads(raw("endpoints_not_ready.json"))
    obj["metadata"]["labels"]["endpoints.kubernetes.io/over-capacity"] = "truncated"
    ep = k8s_parse.ENDPOINTS.parse(json.dumps(obj).encode()).obj
    assert ep.over_capacity is None


def test_kubelet_endpoints_target_node_and_skip_mirror() -> None:
    ep = k8s_parse.ENDPOINTS.parse(raw("endpoints_kubelet.json")).obj
    assert ep.key == ("kube-system", "kube-prometheus-stack-kubelet")
    assert ep.skip_mirror is True
    assert ep.over_capacity is None
    assert [(a.ip, a.node_name, a.target_kind, a.target_name) for a in ep.ready] == [
        ("10.0.12.34", None, "Node", "ip-10-0-12-34.ec2.internal"),
        ("10.0.12.35", None, "Node", "ip-10-0-12-35.ec2.internal"),
    ]


def test_skip_mirror_other_value_is_false() -> None:
    obj = json.loads(raw("endpoints_kubelet.json"))
    obj["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] = "false"
    assert k8s_parse.ENDPOINTS.parse(json.dumps(obj).encode()).obj.skip_mirror is False


def test_endpoints_not_ready_addresses_and_subset_sizes() -> None:
    ep = k8s_parse.ENDPOINTS.parse(raw("endpoints_not_ready.json")).obj
    assert [a.ip for a in ep.ready] == ["10.244.1.17"]
    assert [a.ip for a in ep.not_ready] == ["10.244.2.9", "10.244.3.4", "10.244.3.5"]
    assert ep.subset_sizes == (2, 2)
    # An address without targetRef or nodeName (hand-made) keeps its IP only.
    assert ep.not_ready[-1] == EndpointAddress(ip="10.244.3.5")


def test_endpoints_without_subsets() -> None:
    ep = k8s_parse.ENDPOINTS.parse(raw("endpoints_empty.json")).obj
    assert (ep.ready, ep.not_ready, ep.subset_sizes) == ((), (), ())


def test_endpoints_with_1000_addresses() -> None:
    obj = json.loads(raw("endpoints_truncated.json"))
    template = obj["subsets"][0]["addresses"][0]
    obj["subsets"][0]["addresses"] = [
        {**template, "ip": f"10.0.{i // 250}.{i % 250}", "nodeName": f"node-{i}"}
        for i in range(1000)
    ]
    ep = k8s_parse.ENDPOINTS.parse(json.dumps(obj).encode()).obj
    assert len(ep.ready) == 1000 and ep.subset_sizes == (1000,)


def test_slice_conditions_and_nil_semantics() -> None:
    parsed = k8s_parse.ENDPOINTSLICES.parse(raw("endpointslice_dualstack_ipv4.json"))
    es = parsed.obj
    assert parsed.key == ("shop", "web-8rj2k")
    assert (es.service_name, es.managed_by, es.address_type) == (
        "web",
        "endpointslice-controller.k8s.io",
        "IPv4",
    )
    ready, terminating, not_ready, nil, ready_false = es.endpoints
    assert ready == SliceEndpoint(
        address="10.244.1.21",
        node_name="worker-1",
        target_kind="Pod",
        target_name="web-5d8c7b9f6d-2lq7x",
        ready=True,
        serving=True,
        terminating=False,
    )
    assert (terminating.ready, terminating.serving, terminating.terminating) == (False, True, True)
    assert (not_ready.ready, not_ready.serving, not_ready.terminating) == (False, False, False)
    # conditions {}: ready nil = true, serving nil = ready, terminating nil = false
    assert (nil.ready, nil.serving, nil.terminating) == (True, True, False)
    # serving nil defers to ready=false
    assert (ready_false.ready, ready_false.serving, ready_false.terminating) == (
        False,
        False,
        False,
    )


def test_dual_stack_slices_keep_their_family() -> None:
    v6 = k8s_parse.ENDPOINTSLICES.parse(raw("endpointslice_dualstack_ipv6.json")).obj
    assert v6.address_type == "IPv6" and v6.service_name == "web"
    assert v6.endpoints[0].address == "fd00:10:244:1::15"
    assert v6.endpoints[1].terminating is True


def test_mirrored_slice_of_node_targets() -> None:
    es = k8s_parse.ENDPOINTSLICES.parse(raw("endpointslice_mirrored.json")).obj
    assert es.managed_by == MANAGED_BY_MIRRORING
    assert es.service_name == "kube-prometheus-stack-kubelet"
    assert [(e.target_kind, e.target_name, e.node_name) for e in es.endpoints] == [
        ("Node", "ip-10-0-12-34.ec2.internal", None),
        ("Node", "ip-10-0-12-35.ec2.internal", None),
    ]
    assert all(e.ready and e.serving and not e.terminating for e in es.endpoints)


def test_empty_slice_with_null_endpoints() -> None:
    es = k8s_parse.ENDPOINTSLICES.parse(raw("endpointslice_empty.json")).obj
    assert es.endpoints == () and es.service_name == "idle"


def test_slice_without_service_name_label() -> None:
    obj = json.loads(raw("endpointslice_mirrored.json"))
    del obj["metadata"]["labels"]
    es = k8s_parse.ENDPOINTSLICES.parse(json.dumps(obj).encode()).obj
    assert (es.service_name, es.managed_by) == ("", "")


def test_terminating_pod_with_daemonset_owner() -> None:
    parsed = k8s_parse.PODS.parse(raw("pod_terminating.json"))
    assert parsed.obj == Pod(
        namespace="monitoring",
        name="kube-prometheus-stack-prometheus-node-exporter-2xk8v",
        node_name="ip-10-0-0-10.ec2.internal",
        ip="10.0.0.10",
        owner_kind="DaemonSet",
        owner_name="kube-prometheus-stack-prometheus-node-exporter",
        terminating=True,
        phase="Running",
    )


def test_pending_pod_controller_owner_is_not_the_first_reference() -> None:
    pod = k8s_parse.PODS.parse(raw("pod_pending.json")).obj
    assert (pod.node_name, pod.ip, pod.terminating) == (None, None, False)
    assert (pod.owner_kind, pod.owner_name) == (
        "DaemonSet",
        "kube-prometheus-stack-prometheus-node-exporter",
    )


def test_pod_without_owner() -> None:
    pod = k8s_parse.PODS.parse(b'{"metadata":{"name":"p","namespace":"n"}}').obj
    assert (pod.owner_kind, pod.owner_name) == (None, None)


def test_daemonsets() -> None:
    daemonset = k8s_parse.DAEMONSETS.parse(raw("daemonset.json")).obj
    assert (daemonset.namespace, daemonset.name, daemonset.desired_number_scheduled) == (
        "monitoring",
        "kube-prometheus-stack-prometheus-node-exporter",
        1190,
    )
    assert daemonset.placement is not None and daemonset.placement.host_network
    # A DaemonSet the controller has not reconciled yet has no desired count.
    assert k8s_parse.DAEMONSETS.parse(raw("daemonset_new.json")).obj.desired_number_scheduled == 0


def _malformed() -> list[tuple[ObjectParser[Any, Any], bytes]]:
    parsers = {
        p.kind: p
        for p in (
            k8s_parse.NODES,
            k8s_parse.SERVICES,
            k8s_parse.ENDPOINTS,
            k8s_parse.ENDPOINTSLICES,
            k8s_parse.PODS,
            k8s_parse.DAEMONSETS,
        )
    }
    cases = json.loads(raw("malformed.json"))
    return [
        (parsers[kind], json.dumps(obj).encode())
        for kind, objs in cases.items()
        if kind in parsers
        for obj in objs
    ]


@pytest.mark.parametrize(("parser", "data"), _malformed())
def test_malformed_objects_raise_parse_error_only(
    parser: ObjectParser[Any, Any], data: bytes
) -> None:
    with pytest.raises(ParseError):
        parser.parse(data)
    # identify() never raises: DELETED events and bad objects still yield
    # whatever key and resourceVersion can be read.
    parser.identify(data)


@pytest.mark.parametrize("data", [b"", b"{", b"null", b'{"metadata": null}', b"\xff\xfe"])
def test_garbage_never_crashes(data: bytes) -> None:
    for parser in (k8s_parse.NODES, k8s_parse.ENDPOINTSLICES, k8s_parse.PODS):
        with pytest.raises(ParseError):
            parser.parse(data)
        assert parser.identify(data)[0] is None


def test_identify_reads_key_of_partially_bad_object() -> None:
    data = b'{"metadata":{"name":"e","namespace":"x","resourceVersion":"7"},"subsets":7}'
    with pytest.raises(ParseError):
        k8s_parse.ENDPOINTS.parse(data)
    assert k8s_parse.ENDPOINTS.identify(data) == (("x", "e"), "7")


def test_list_page_items_stay_raw() -> None:
    page = msgspec.json.encode(
        {
            "kind": "NodeList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "99", "continue": "tok", "remainingItemCount": 3},
            "items": [json.loads(raw("node.json")), {"metadata": {"name": 5}}],
        }
    )
    lst = k8s_parse.decode_list(page)
    assert lst.metadata is not None
    assert (lst.metadata.resource_version, lst.metadata.continue_) == ("99", "tok")
    assert lst.items is not None and len(lst.items) == 2
    assert k8s_parse.NODES.parse(lst.items[0]).key == "ip-10-0-12-34.ec2.internal"
    with pytest.raises(ParseError):
        k8s_parse.NODES.parse(lst.items[1])


def test_watch_event_and_status() -> None:
    event = k8s_parse.decode_event(
        b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},'
        b'"status":"Failure","message":"too old resource version: 1 (2)",'
        b'"reason":"Expired","code":410}}'
    )
    assert event.type == "ERROR" and len(event.object)
    status = k8s_parse.decode_status(event.object)
    assert status is not None and (status.code, status.reason) == (410, "Expired")
    with pytest.raises(ParseError):
        k8s_parse.decode_event(b'{"object":{}}')


def node_list(*items: Any) -> bytes:
    return json.dumps(
        {
            "kind": "NodeList",
            "metadata": {"resourceVersion": "42", "continue": "abc"},
            "items": list(items),
        }
    ).encode()


def test_page_decodes_every_item_in_one_typed_pass() -> None:
    node = json.loads((FIXTURES / "node.json").read_text())
    other = {**node, "metadata": {**node["metadata"], "name": "node-b"}}
    page = k8s_parse.NODES.parse_page(node_list(node, other))
    assert [p.key for p in page.items] == [node["metadata"]["name"], "node-b"]
    assert page.metadata is not None and page.metadata.continue_ == "abc"
    assert page.errors == []


def test_page_with_one_ill_typed_item_loses_only_that_item() -> None:
    node = json.loads((FIXTURES / "node.json").read_text())
    bad = {**node, "metadata": {"name": 7}}
    nameless = {**node, "metadata": {}}
    page = k8s_parse.NODES.parse_page(node_list(node, bad, nameless))
    assert [p.key for p in page.items] == [node["metadata"]["name"]]
    assert len(page.errors) == 2
    assert page.metadata is not None and page.metadata.resource_version == "42"


def test_page_strings_that_repeat_across_objects_are_shared() -> None:
    pod = json.loads((FIXTURES / "pod_terminating.json").read_text())
    twin = {**pod, "metadata": {**pod["metadata"], "name": "twin"}}
    body = json.dumps({"items": [pod, twin]}).encode()
    a, b = (p.obj for p in k8s_parse.PODS.parse_page(body).items)
    assert a.node_name == b.node_name and a.node_name is b.node_name
    assert a.namespace is b.namespace


def test_page_that_is_not_json_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="bad list response"):
        k8s_parse.NODES.parse_page(b'{"items": [')


# --- the head of a LIST page (sources/reflector.py asks for the next page early) ---

CAPTURED_LISTS = sorted(
    (Path(__file__).parent.parent / "fixtures/captured/kubernetes").glob("list_*.json")
)


@pytest.mark.parametrize("path", CAPTURED_LISTS, ids=lambda p: p.name)
@pytest.mark.parametrize("encoding", ["", "gzip"])
def test_the_head_of_a_real_list_page_names_its_metadata(path: Path, encoding: str) -> None:
    import gzip

    page = path.read_bytes()
    body = gzip.compress(page) if encoding else page
    assert k8s_parse.peek_list_meta(body, encoding) == k8s_parse.decode_list(page).metadata


def test_a_head_not_as_the_apiserver_writes_it_is_no_hint() -> None:
    import gzip

    page = json.loads((CAPTURED_LISTS[0]).read_bytes())
    spaced = json.dumps(page).encode()  # ", " and ": "
    reordered = json.dumps(
        {"items": page["items"], "metadata": page["metadata"]}, separators=(",", ":")
    ).encode()
    for body in (spaced, reordered, b"", b"{"):
        assert k8s_parse.peek_list_meta(body, "") is None
    assert k8s_parse.peek_list_meta(b"\x1f\x8b\x08\x00broken", "gzip") is None
    assert k8s_parse.peek_list_meta(gzip.compress(CAPTURED_LISTS[0].read_bytes()), "br") is None


def test_service_keeps_its_ip_families_and_policy() -> None:
    svc = k8s_parse.SERVICES.parse(raw("service_kubelet.json")).obj
    assert (svc.ip_family_policy, svc.ip_families) == ("SingleStack", ("IPv4",))
    assert svc.read_family is None  # a single-stack Service: every slice read
    data = json.loads(raw("service_kubelet.json"))
    data["spec"].update(ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"])
    dual = k8s_parse.SERVICES.parse(json.dumps(data).encode()).obj
    assert dual.ip_families == ("IPv6", "IPv4")
    assert dual.read_family == "IPv6"
