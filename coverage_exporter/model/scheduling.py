"""Which Nodes a DaemonSet's pods should run on, from its pod template:
the nodeSelector, the required node affinity and the tolerations against
the Nodes' labels and taints, as the DaemonSet controller decides it
(kubernetes pkg/controller/daemon: `NodeShouldRunDaemonPod`).

Why: a node that should run the exporter but has no pod is missing from
every later stage, yet it is in none of them to be counted. The
controller's desiredNumberScheduled gives the count; this gives the names.
"""

from __future__ import annotations

from collections.abc import Mapping

from coverage_exporter.model.objects import (
    Node,
    NodeSelectorRequirement,
    PodPlacement,
    Taint,
    Toleration,
)

# Tolerations the DaemonSet controller adds to every daemon pod
# (pkg/controller/daemon/util AddOrUpdateDaemonPodTolerations): a daemon
# pod lands on not-ready, unreachable, pressured and cordoned nodes.
_DAEMON_TOLERATED = frozenset(
    {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/pid-pressure",
        "node.kubernetes.io/unschedulable",
    }
)
_HOST_NETWORK_TOLERATED = frozenset({"node.kubernetes.io/network-unavailable"})


HOSTNAME_LABEL = "kubernetes.io/hostname"
_BY_NAME = frozenset({HOSTNAME_LABEL, "metadata.name"})
"""Keys answered by a Node's name (see _label)."""


def _label(labels: Mapping[str, str], key: str, name: str) -> str | None:
    # The hostname label is not kept in the shared label sets (it equals
    # the name on every Node it is set on); matchFields metadata.name is
    # the name itself.
    if key in (HOSTNAME_LABEL, "metadata.name") and key not in labels:
        return name
    return labels.get(key)


def _requirement_matches(r: NodeSelectorRequirement, labels: Mapping[str, str], name: str) -> bool:
    value = _label(labels, r.key, name)
    op = r.operator
    if op == "In":
        return value is not None and value in r.values
    if op == "NotIn":
        return value is None or value not in r.values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(r.values) == 1:
        try:
            have, want = int(value), int(r.values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _tolerates(tolerations: tuple[Toleration, ...], taint: Taint) -> bool:
    key, value, effect = taint
    for t in tolerations:
        if t.effect and t.effect != effect:
            continue
        if t.key is None or t.key == "":
            if t.operator == "Exists":
                return True
            continue
        if t.key != key:
            continue
        if t.operator == "Exists" or (t.value or "") == value:
            return True
    return False


KEPT_OFF_BY_PLACEMENT = "placement"
"""The node selector or the required node affinity leaves the Node out."""
KEPT_OFF_BY_TAINT = "taint"
"""A NoSchedule or NoExecute taint that the pod template does not tolerate."""


def keeping_taint(placement: PodPlacement, node: Node) -> Taint | None:
    """The first NoSchedule or NoExecute taint of the node that the pod
    template does not tolerate (nor the controller for every daemon pod)."""
    for taint in node.taints:
        key, _, effect = taint
        if effect not in ("NoSchedule", "NoExecute"):
            continue
        if key in _DAEMON_TOLERATED or (placement.host_network and key in _HOST_NETWORK_TOLERATED):
            continue
        if not _tolerates(placement.tolerations, taint):
            return taint
    return None


def selects_nodes(placement: PodPlacement) -> bool:
    """The template chooses its Nodes (a node selector, or required node
    affinity, or rules not modelled): not meant for every Node."""
    return bool(placement.node_selector) or placement.terms != ()


def kept_off(placement: PodPlacement, node: Node) -> str | None:
    """Why the DaemonSet controller would place no pod on the node
    (KEPT_OFF_BY_*), or None when it would place one. Placement is asked
    before taints, as the controller's predicates are."""
    labels = node.labels
    if any(_label(labels, k, node.name) != v for k, v in placement.node_selector.items()):
        return KEPT_OFF_BY_PLACEMENT
    terms = placement.terms or ()
    if terms and not any(
        all(_requirement_matches(r, labels, node.name) for r in term) for term in terms
    ):
        return KEPT_OFF_BY_PLACEMENT
    return KEPT_OFF_BY_TAINT if keeping_taint(placement, node) is not None else None


def should_run(placement: PodPlacement, node: Node) -> bool:
    """True when the DaemonSet controller would place a pod on the node."""
    return kept_off(placement, node) is None


def eligible_nodes(placement: PodPlacement | None, nodes: Mapping[str, Node]) -> set[str] | None:
    """Names of the Nodes that should run a pod; None when the template
    uses placement rules not modelled here (then only the count is known)."""
    if placement is None or placement.terms is None:
        return None
    keys = {*placement.node_selector, *(r.key for term in placement.terms for r in term)}
    if keys & _BY_NAME:
        return {name for name, node in nodes.items() if should_run(placement, node)}
    # Otherwise the answer depends on a Node's labels and taints only, and
    # Nodes share those objects by the distinct set (sources.k8s_parse): one
    # answer per pair of them, not per Node (100k Nodes, a handful of sets).
    # By id: every such object is held by `nodes` for the whole call.
    memo: dict[tuple[int, int], bool] = {}
    out = set()
    for name, node in nodes.items():
        key = (id(node.labels), id(node.taints))
        fits = memo.get(key)
        if fits is None:
            fits = memo[key] = should_run(placement, node)
        if fits:
            out.add(name)
    return out
