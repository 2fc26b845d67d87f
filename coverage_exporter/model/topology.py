"""Which Prometheus servers are shards of one replica, and which are
replicas of one another.

Why it matters: every HA replica evaluates the alert rules itself, so a
replica that misses targets is blind in its own alerts whatever the other
replica sees. Only the shards of one replica split the targets between
them. Judging a union of replicas hides a diverged one; judging shards one
by one reports each as missing the other shards' share.

Recognised, in this order (the first that applies wins, field by field):
1. declared: `scraper`, `replica`, `shard`, `shards` in the fleet file;
2. the Prometheus Operator's external labels `prometheus: <ns>/<name>` and
   `prometheus_replica: <pod>`, where the pod name carries the shard:
   `prometheus-<name>-<r>` for shard 0, `prometheus-<name>-shard-<i>-<r>`;
3. Thanos and Mimir replica labels `replica` / `__replica__` (the other
   external labels name the scraper);
4. the hashmod `keep` rule in the loaded configuration (shard and shard
   count; the Operator writes it into every job);
5. otherwise the server is judged on its own.

Topology-aware sharding (Operator v0.92+, `shardingStrategy.mode:
Topology`): each shard keeps one zone (a `keep` of the zone the rules
copied from the target's meta labels, `<zone>;|.+;.+` once the reloader
has filled in $(TOPOLOGY_ZONE)), then its in-zone share of the hashmod
($(INZONE_SHARD), modulus shards/zones). Shard i keeps zone i mod Z and
in-zone share i div Z (pkg/prometheus/promcfg.go, TopologyZoneForShard and
InzoneShardForShard). The hashmod rule then gives the in-zone share, not
the shard: the shard comes from the Operator's pod name, and the shard
count from the highest shard seen (or the fleet file). Topology shards
without the Operator's external labels are not told apart (the Operator
always writes those labels).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from coverage_exporter.model.objects import KIND_UNKNOWN, RelabelRule, ScrapeJob, ServerIdentity

OPERATOR_NAME_LABEL = "prometheus"
OPERATOR_REPLICA_LABEL = "prometheus_replica"
REPLICA_LABELS = ("replica", "__replica__")


@dataclass(frozen=True, slots=True)
class Declared:
    """What the user said about a server in the fleet file; None: not said."""

    scraper: str | None = None
    replica: str | None = None
    shard: int | None = None
    shards: int | None = None
    kind: str | None = None
    """What answers on the URL (objects.KIND_*), when its answers cannot
    tell (an API proxy that lets only the targets through)."""
    how: str = "declared"
    """ServerIdentity.how when scraper or replica is declared: "declared"
    (the fleet file), "discovered" (placed by its Operator object)."""


def hashmod_shard(jobs: list[ScrapeJob] | tuple[ScrapeJob, ...]) -> tuple[int, int] | None:
    """(shard, shards) from the sharding rules of the first job that has them:
    a `hashmod` into a label, then a `keep` of that label equal to a number
    (the Operator's `$(SHARD);|.+;.+` once the reloader has filled it in)."""
    for job in jobs:
        found = job_shard(job.relabel)
        if found is not None:
            return found
    return None


def job_shard(rules: tuple[RelabelRule, ...]) -> tuple[int, int] | None:
    """(the share this job keeps, the hashmod modulus), or None."""
    moduli: dict[str, int] = {}
    for rule in rules:
        action = rule.action.lower()
        if action == "hashmod" and rule.modulus > 0:
            moduli[rule.target_label] = rule.modulus
        elif action == "keep" and rule.source_labels and rule.source_labels[0] in moduli:
            m = re.match(r"^\(?(\d+)\)?(?:;|$)", rule.regex)
            if m:
                return int(m.group(1)), moduli[rule.source_labels[0]]
    return None


ZONE_NODE_LABEL = "topology.kubernetes.io/zone"

ZONE_FROM_SLICE = "endpointslice"
ZONE_FROM_NODE = "node"
ZONE_FROM_POD = "pod"
_ZONE_META = {
    "__meta_kubernetes_endpointslice_endpoint_zone": ZONE_FROM_SLICE,
    "__meta_kubernetes_node_label_topology_kubernetes_io_zone": ZONE_FROM_NODE,
    "__meta_kubernetes_pod_label_topology_kubernetes_io_zone": ZONE_FROM_POD,
}
# `<zone>;` alone, or the Operator's `<zone>;|.+;.+` (the second branch
# lets through the targets whose __tmp_disable_sharding is set). A regex
# with the unexpanded $(TOPOLOGY_ZONE) is not a zone: the parentheses are
# refused.
_ZONE_KEEP = re.compile(r"\(?([^;|()\\]+)\)?;(?:\|.*)?")


@dataclass(frozen=True, slots=True)
class ZoneShare:
    """What a topology-sharded job keeps: one zone."""

    zone: str
    rule: int
    """The index of the zone `keep` rule in relabel_configs."""
    sources: frozenset[str]
    """Where the rules read a target's zone from (ZONE_FROM_*); a target
    none of them gives a zone to has none, and no shard keeps it."""


def job_zone(rules: tuple[RelabelRule, ...]) -> ZoneShare | None:
    """The zone this job keeps: a `keep` whose first source label the
    rules before it wrote from the zone meta labels (the Operator's
    __tmp_topology), with a regex naming one zone. None otherwise."""
    written: dict[str, set[str]] = {}
    for index, rule in enumerate(rules):
        action = rule.action.lower()
        if action == "replace" and rule.target_label:
            found = {_ZONE_META[s] for s in rule.source_labels if s in _ZONE_META}
            if found:
                written.setdefault(rule.target_label, set()).update(found)
        elif action == "keep" and rule.source_labels and rule.source_labels[0] in written:
            m = _ZONE_KEEP.fullmatch(rule.regex)
            if m:
                return ZoneShare(m.group(1), index, frozenset(written[rule.source_labels[0]]))
    return None


def zone_share(jobs: list[ScrapeJob] | tuple[ScrapeJob, ...]) -> ZoneShare | None:
    """The zone of the first job that keeps one."""
    for job in jobs:
        found = job_zone(job.relabel)
        if found is not None:
            return found
    return None


def identify(
    name: str,
    external_labels: Mapping[str, str],
    jobs: list[ScrapeJob] | tuple[ScrapeJob, ...] = (),
    declared: Declared | None = None,
    kind: str = KIND_UNKNOWN,
) -> ServerIdentity:
    """kind: as recognised from the server's answers; a declared kind wins."""
    declared = declared or Declared()
    alone = ServerIdentity.alone(name)
    scraper, replica, how = alone.scraper, alone.replica, alone.how
    shard_info = hashmod_shard(jobs)
    shard, shards = shard_info if shard_info else (0, 1)
    if shard_info:
        how = "hashmod"
    # Topology shards: the hashmod share is the in-zone share, not the shard.
    zoned = shard_info is not None and zone_share(jobs) is not None
    operator = external_labels.get(OPERATOR_NAME_LABEL)
    pod = external_labels.get(OPERATOR_REPLICA_LABEL)
    thanos = next((external_labels[k] for k in REPLICA_LABELS if k in external_labels), None)
    if operator and pod:
        scraper, how = operator, "operator"
        cr_name = operator.rpartition("/")[2]
        m = re.fullmatch(rf"prometheus-{re.escape(cr_name)}(?:-shard-(\d+))?-(\d+)", pod)
        if m:
            replica = f"prometheus-{cr_name}-{m.group(2)}"
            if not shard_info or zoned:
                shard = int(m.group(1) or 0)
            if zoned:
                shards = max(shards, shard + 1)
        else:
            replica = pod
    elif thanos is not None:
        others = {k: v for k, v in external_labels.items() if k not in REPLICA_LABELS}
        scraper = ",".join(f"{k}={v}" for k, v in sorted(others.items())) or name
        replica, how = thanos, "external_labels"
    elif shard_info:
        # Shards without labels: the shards of one replica share the job set.
        scraper = "jobs:" + ",".join(sorted(j.name for j in jobs))
        replica = scraper
    if declared.scraper is not None or declared.replica is not None:
        how = declared.how
    return ServerIdentity(
        scraper=declared.scraper if declared.scraper is not None else scraper,
        replica=declared.replica if declared.replica is not None else replica,
        shard=declared.shard if declared.shard is not None else shard,
        shards=declared.shards if declared.shards is not None else shards,
        how=how,
        kind=declared.kind or kind,
    )
