"""Nodes a node-level DaemonSet never reaches (model.unreached, issue #19
item 2), on plain data."""

from __future__ import annotations

from coverage_exporter.model.objects import (
    DaemonSet,
    Node,
    NodeSelectorRequirement,
    PodPlacement,
    Toleration,
)
from coverage_exporter.model.unreached import unreached_nodes

# The prometheus-node-exporter chart's default tolerations.
NO_SCHEDULE_ONLY = (Toleration(None, "Exists", None, "NoSchedule"),)
INGEST = ("dedicated", "ingest", "NoExecute")
CONTROL_PLANE = ("node-role.kubernetes.io/control-plane", "", "NoSchedule")


def nodes() -> dict[str, Node]:
    ingest = (INGEST,)  # shared, as sources.k8s_parse shares equal taint sets
    out = {f"node-{i}": Node(f"node-{i}", (), True) for i in range(4)}
    out |= {f"ingest-{i}": Node(f"ingest-{i}", (), True, taints=ingest) for i in range(3)}
    out["cp-0"] = Node("cp-0", (), True, taints=(CONTROL_PLANE,))
    out["soft-0"] = Node("soft-0", (), True, taints=(("x", "", "PreferNoSchedule"),))
    # A daemon pod tolerates these itself (the DaemonSet controller adds them).
    out["cordoned"] = Node(
        "cordoned", (), True, taints=(("node.kubernetes.io/unschedulable", "", "NoSchedule"),)
    )
    return out


def ds(placement: PodPlacement | None, name: str = "node-exporter") -> DaemonSet:
    return DaemonSet("monitoring", name, 5, placement)


def test_a_noexecute_pool_is_unreached_by_a_noschedule_only_exporter() -> None:
    (u,) = unreached_nodes([ds(PodPlacement(tolerations=NO_SCHEDULE_ONLY))], nodes())
    assert (u.namespace, u.daemonset, u.count) == ("monitoring", "node-exporter", 3)
    assert u.by_taint == {INGEST: ("ingest-0", "ingest-1", "ingest-2")}
    assert u.nodes == ["ingest-0", "ingest-1", "ingest-2"]


def test_no_toleration_names_each_node_with_its_taint() -> None:
    (u,) = unreached_nodes([ds(PodPlacement())], nodes())
    assert u.by_taint == {
        INGEST: ("ingest-0", "ingest-1", "ingest-2"),
        CONTROL_PLANE: ("cp-0",),
    }
    assert u.count == 4


def test_tolerating_everything_reaches_every_node() -> None:
    every = (Toleration(None, "Exists", None, None),)
    assert unreached_nodes([ds(PodPlacement(tolerations=every))], nodes()) == []


def test_a_daemonset_that_selects_nodes_is_not_reported() -> None:
    """A GPU exporter on GPU nodes: the others are not meant for it."""
    selector = PodPlacement(node_selector={"gpu": "true"})
    affinity = PodPlacement(terms=((NodeSelectorRequirement("gpu", "Exists"),),))
    unmodelled = PodPlacement(terms=None)
    assert unreached_nodes([ds(selector), ds(affinity), ds(unmodelled), ds(None)], nodes()) == []


def test_one_finding_per_daemonset_even_behind_two_services() -> None:
    d = ds(PodPlacement(tolerations=NO_SCHEDULE_ONLY))
    other = ds(PodPlacement(tolerations=NO_SCHEDULE_ONLY), "windows-exporter")
    found = unreached_nodes([d, d, other], nodes())
    assert [(u.daemonset, u.count) for u in found] == [
        ("node-exporter", 3),
        ("windows-exporter", 3),
    ]


def test_a_node_that_holds_a_pod_is_not_unreached() -> None:
    """A NoSchedule taint set after the pod was placed evicts nothing."""
    placement = PodPlacement(tolerations=NO_SCHEDULE_ONLY)
    running = {("monitoring", "node-exporter"): {"ingest-1"}}
    (u,) = unreached_nodes([ds(placement)], nodes(), running)
    assert u.by_taint == {INGEST: ("ingest-0", "ingest-2")}
