"""Nodes that a node-level DaemonSet never reaches (issue #19 item 2).

A DaemonSet that selects no Nodes (no nodeSelector, no required node
affinity) is meant for every Node; a taint it does not tolerate still keeps
its pods off. node-exporter's chart tolerates `NoSchedule` only, so a pool
of Nodes tainted `NoExecute` runs no exporter at all, and since the
DaemonSet controller does not count those Nodes (desiredNumberScheduled),
no stage of the comparison expects them: nothing else says so.

Decision: a finding of its own, not part of the expected set. Joining the
expected set would make each such Node missing from every stage, for
cause no_pod_taint, and page through ScrapeCoverageTargetsMissing; but
taints are also how clusters keep workloads off on purpose (a dedicated
control plane, a tenant's pool, nodes being drained for good), and a page
for every one of those would teach users to silence the gap alerts that
matter. As a finding it has its own metric and warning alert, with the
taint as labels: a user routes or silences it per DaemonSet and per taint,
and the gap alerts keep meaning "a target that should be scraped is not".

A DaemonSet that selects Nodes on purpose (a GPU exporter with a
nodeSelector for GPU Nodes) is not reported: the Nodes it does not select
are not meant for it, and telling that apart from a mistake would need
intent the cluster does not hold. Its taint misses on the Nodes it does
select are already the expected set's (cause no_pod_taint).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from coverage_exporter.model.objects import DaemonSet, Node, Taint
from coverage_exporter.model.scheduling import keeping_taint, selects_nodes

RUNBOOK_UNREACHED = "ScrapeCoverageDaemonSetUnreachedNodes"


@dataclass(frozen=True, slots=True)
class Unreached:
    """One DaemonSet's Nodes kept off by a taint, by taint."""

    namespace: str
    daemonset: str
    by_taint: Mapping[Taint, tuple[str, ...]]
    """The taint that keeps it off (the Node's first it does not tolerate)
    -> the Nodes, by name."""

    @property
    def count(self) -> int:
        return sum(map(len, self.by_taint.values()))

    @property
    def nodes(self) -> list[str]:
        return sorted(n for names in self.by_taint.values() for n in names)


def unreached_nodes(
    daemonsets: Iterable[DaemonSet],
    nodes: Mapping[str, Node],
    running: Mapping[tuple[str, str], Collection[str]] | None = None,
) -> list[Unreached]:
    """For each distinct node-level DaemonSet (selects no Nodes, placement
    known), the Nodes a taint keeps it off; those with none are left out.
    `running`: (namespace, DaemonSet) -> the Nodes that hold one of its
    pods, left out: a NoSchedule taint set after the pod was placed keeps
    no pod away (the controller evicts for NoExecute only)."""
    running = running or {}
    out: list[Unreached] = []
    seen: set[tuple[str, str]] = set()
    for d in daemonsets:
        key = (d.namespace, d.name)
        placement = d.placement
        if key in seen or placement is None or selects_nodes(placement):
            continue
        seen.add(key)
        there = running.get(key, ())
        # Nodes share their taints tuple by distinct set (sources.k8s_parse):
        # one answer per set, not per Node (100k Nodes, a handful of sets).
        memo: dict[int, Taint | None] = {}
        by_taint: dict[Taint, list[str]] = {}
        for name, node in nodes.items():
            if not node.taints:
                continue
            at = id(node.taints)
            if at not in memo:
                memo[at] = keeping_taint(placement, node)
            taint = memo[at]
            if taint is not None and name not in there:
                by_taint.setdefault(taint, []).append(name)
        if by_taint:
            out.append(
                Unreached(
                    d.namespace,
                    d.name,
                    {t: tuple(sorted(ns)) for t, ns in sorted(by_taint.items())},
                )
            )
    return out
