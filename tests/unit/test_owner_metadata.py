"""Owners that the pod name does not show (issue #19 item 8), on plain
data: which pods' metadata is read, how what it says is applied, and what
the model then expects of a Service whose DaemonSet pods have names its
controller did not make."""

from __future__ import annotations

import msgspec

from coverage_exporter.model.coverage import expected_targets
from coverage_exporter.model.objects import (
    SOURCE_DAEMONSET,
    SOURCE_PODS,
    ClusterSnapshot,
    DaemonSet,
    Pod,
    PodPlacement,
    Service,
)
from coverage_exporter.model.owners import (
    apply_owner_facts,
    daemonset_prefixes,
    infer_daemonset_owners,
    owners_to_confirm,
)
from coverage_exporter.sources.kubernetes.pod_table import owner_of
from tests.unit import clusters

NS = "mon"
LABELS = {"app": "agent"}
NODES = 10


def agent(desired: int = NODES) -> DaemonSet:
    return DaemonSet(NS, "agent", desired, PodPlacement(), template_labels=LABELS)


def pod(name: str, i: int, kind: str | None = None, owner: str | None = None) -> Pod:
    return Pod(NS, name, clusters.node_name(i), clusters.node_ip(i), kind, owner)


def renamed(count: int) -> list[Pod]:
    """Table rows: no owner, names that are not `agent-` + 5 characters."""
    return [pod(f"agent-on-{clusters.node_name(i)}", i) for i in range(count)]


def snapshot(pods: list[Pod], daemonsets: list[DaemonSet]) -> tuple[Service, ClusterSnapshot]:
    service = Service(NS, "agent", LABELS, port_names=("metrics",))
    return service, ClusterSnapshot(
        nodes=clusters.nodes(NODES),
        services={service.key: service},
        endpoints={},
        endpointslices={},
        pods={service.key: tuple(pods)},
        daemonsets={(d.namespace, d.name): d for d in daemonsets},
    )


def test_without_their_owners_renamed_pods_hide_the_nodes_without_one() -> None:
    """The defect: 4 pods on 10 nodes, named by no DaemonSet pattern, are
    'the selected pods' and the 6 nodes without a pod are not expected."""
    prefixes = daemonset_prefixes({(NS, "agent"): agent()})
    pods = infer_daemonset_owners(renamed(4), NS, LABELS, prefixes)
    service, snap = snapshot(list(pods), [agent()])
    expected = expected_targets(service, snap, None)
    assert expected is not None and (expected.source, expected.count) == (SOURCE_PODS, 4)


def test_with_their_owners_from_metadata_every_node_is_expected() -> None:
    prefixes = daemonset_prefixes({(NS, "agent"): agent()})
    pods = infer_daemonset_owners(renamed(4), NS, LABELS, prefixes)
    names = owners_to_confirm(pods, NS, LABELS, prefixes, {})
    assert names == sorted(p.name for p in renamed(4))
    facts = {(NS, n): ("DaemonSet", "agent") for n in names}
    pods = apply_owner_facts(pods, NS, facts)
    assert {(p.owner_kind, p.owner_name) for p in pods} == {("DaemonSet", "agent")}
    assert owners_to_confirm(pods, NS, LABELS, prefixes, facts) == []
    service, snap = snapshot(list(pods), [agent()])
    expected = expected_targets(service, snap, None)
    assert expected is not None
    assert (expected.source, expected.count) == (SOURCE_DAEMONSET, NODES)
    assert set(expected.keys) == set(clusters.nodes(NODES))


def test_pods_the_names_explain_are_not_read() -> None:
    prefixes = daemonset_prefixes({(NS, "agent"): agent()})
    pods = infer_daemonset_owners(
        [pod("agent-b2c4d", 0), pod("agent-on-node-0001", 1)], NS, LABELS, prefixes
    )
    assert owners_to_confirm(pods, NS, LABELS, prefixes, {}) == ["agent-on-node-0001"]
    # Full objects carry their owner: nothing to read.
    full = [pod("x", 0, "DaemonSet", "agent"), pod("y", 1, "ReplicaSet", "web-5d")]
    assert owners_to_confirm(full, NS, LABELS, prefixes, {}) == []


def test_without_a_daemonset_in_sight_one_pod_is_probed_first() -> None:
    """An OpenKruise Advanced DaemonSet (not an apps/v1 DaemonSet) or a
    Deployment look alike by name: one pod's metadata tells which."""
    no_prefixes = daemonset_prefixes({})
    pods = renamed(5)
    assert owners_to_confirm(pods, NS, LABELS, no_prefixes, {}) == [pods[0].name]
    # A Deployment's: nothing more is read.
    facts = {(NS, pods[0].name): ("ReplicaSet", "web-5d")}
    assert owners_to_confirm(pods, NS, LABELS, no_prefixes, facts) == []
    # A DaemonSet's (kind DaemonSet, whatever its API group): the rest too.
    facts = {(NS, pods[0].name): ("DaemonSet", "kruise-agent")}
    rest = owners_to_confirm(pods, NS, LABELS, no_prefixes, facts)
    assert rest == sorted(p.name for p in pods[1:])
    # A scope where some pod has an owner is not probed.
    owned = [pod("a", 0, "ReplicaSet", "web-5d"), *renamed(2)]
    assert owners_to_confirm(owned, NS, LABELS, no_prefixes, {}) == []


def test_metadata_wins_over_the_names_inference() -> None:
    pods = [pod("agent-b2c4d", 0, "DaemonSet", "agent")]
    facts = {(NS, "agent-b2c4d"): (None, None)}
    (p,) = apply_owner_facts(pods, NS, facts)
    assert (p.owner_kind, p.owner_name) == (None, None)
    assert apply_owner_facts(pods, NS, {}) == tuple(pods)


def table_answer(name: str, refs: list[dict[str, object]] | None) -> bytes:
    """The shape kube-apiserver answers a pod LIST in Table form with
    includeObject=Metadata (meta.k8s.io/v1 Table, PartialObjectMetadata)."""
    meta: dict[str, object] = {"name": name, "namespace": NS, "uid": "u", "labels": LABELS}
    if refs is not None:
        meta["ownerReferences"] = refs
    return msgspec.json.encode(
        {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "42"},
            "columnDefinitions": [{"name": "Name", "type": "string"}],
            "rows": [
                {
                    "cells": [name],
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta,
                    },
                }
            ],
        }
    )


def test_owner_of_reads_the_controller_reference() -> None:
    refs: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Node", "name": "node-0001", "uid": "n"},
        {"apiVersion": "apps.kruise.io/v1alpha1", "kind": "DaemonSet", "name": "agent",
         "uid": "d", "controller": True, "blockOwnerDeletion": True},
    ]  # fmt: skip
    assert owner_of(table_answer("p", refs), "p") == ("DaemonSet", "agent")
    assert owner_of(table_answer("p", None), "p") == (None, None)
    assert owner_of(table_answer("p", refs[:1]), "p") == (None, None)
    # Not the pod asked for, or gone: no answer rather than a wrong one.
    assert owner_of(table_answer("other", refs), "p") is None
    empty = msgspec.json.encode({"kind": "Table", "rows": []})
    assert owner_of(empty, "p") is None
    # A server that ignores as=Table: a PodList's items carry the same.
    podlist = msgspec.json.encode({"kind": "PodList", "items": [{"metadata": {
        "name": "p", "ownerReferences": refs}}]})  # fmt: skip
    assert owner_of(podlist, "p") == ("DaemonSet", "agent")
