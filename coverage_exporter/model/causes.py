"""Why each expected target is missing, at each stage: one closed list of
causes, and the one place that decides them, from what the comparison
already holds (no new read, no clock).

The rule is the funnel's order: a target's cause at a stage is where it
was lost FIRST along the path that stage reads.
1. The target itself: no pod on the node (and why), a pod not scheduled,
   not started or terminating. Kubernetes lists no address for it, so it
   is missing everywhere, for this cause.
2. The stage the target came through: a scrape pool of role `endpoints`
   reads the Endpoints object, one of role `endpointslice` the slices,
   and the mirrored slices of a selector-less Service read its Endpoints.
   A target missing there too keeps that stage's cause (a node cut from a
   truncated Endpoints is missing from the pool because of the cut).
3. The stage's own cause: truncation, the mirroring cap, the pool's relabel
   rules, a pool that discovers nothing, a hashmod share no shard keeps.
4. Otherwise `unexplained`: missing, for no reason the model knows.
A pool whose coverage is unknown has no missing target: its unknown ones
carry `share_unknown` or `still_discovering`.

Adding a cause: one member of `Cause` (its value is the `reason` label,
so the set stays closed), one rule below, one section in
docs/runbooks/causes.md, one line in docs/metrics.md.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import compress
from typing import TYPE_CHECKING

from coverage_exporter.model.fleet import Fleet
from coverage_exporter.model.intent import RuleRef, dropping_rule
from coverage_exporter.model.objects import (
    POD_PHASES_DONE,
    ROLE_ENDPOINTS,
    ROLE_ENDPOINTSLICE,
    SOURCE_DAEMONSET,
    SOURCE_PODS,
    ClusterSnapshot,
    Pod,
    ScrapeJob,
    Service,
)
from coverage_exporter.model.scheduling import KEPT_OFF_BY_TAINT, kept_off
from coverage_exporter.model.topology import (
    ZONE_FROM_NODE,
    ZONE_FROM_POD,
    ZONE_FROM_SLICE,
    ZONE_NODE_LABEL,
    ZoneShare,
    job_shard,
    job_zone,
)

if TYPE_CHECKING:
    from coverage_exporter.model.coverage import (
        EndpointsStage,
        Expected,
        MissingTarget,
        PoolCoverage,
        SlicesStage,
    )


class Cause(StrEnum):
    """Why an expected target is absent from a stage (or cannot be told).
    The values are the `reason` label of scrape_coverage_missing_target
    and the runbook anchors (docs/runbooks/causes.md#<value>)."""

    NO_POD_TAINT = "no_pod_taint"
    """No pod on the node: a taint that the DaemonSet does not tolerate."""
    NO_POD_PLACEMENT = "no_pod_placement"
    """No pod on the node: the DaemonSet's node selector or affinity."""
    POD_NOT_SCHEDULED = "pod_not_scheduled"
    """The DaemonSet should run a pod on the node and none is there yet, or
    the pod is not bound to a node; also the nodes known by count only."""
    POD_NOT_READY = "pod_not_ready"
    """The pod is on its node but has no IP yet (not started): no address."""
    POD_TERMINATING = "pod_terminating"
    """The node's pod is being deleted: the Endpoints object leaves it out."""
    ENDPOINTS_ABSENT = "endpoints_absent"
    """The Service has no Endpoints object."""
    ENDPOINTS_TRUNCATED = "endpoints_truncated"
    """Cut from the Endpoints object at 1000 addresses (over capacity)."""
    MIRRORING_CAPPED = "mirroring_capped"
    """In the Endpoints object, left out of the mirrored slices (the
    mirroring controller copies 1000 addresses per subset)."""
    ADDRESS_FAMILY = "address_family"
    """Only the slices of the Service's secondary address family carry it,
    and Prometheus 3.11+ reads only its primary family's slices of a
    dual-stack Service (prometheus #18192; the Operator's IPv4-only kubelet
    slices on IPv6-primary clusters, operator #8681)."""
    RELABEL_DROPPED = "relabel_dropped"
    """The pool's own relabel rules drop it (StageCauses.rule names which)."""
    POOL_DISCOVERS_NOTHING = "pool_discovers_nothing"
    """The pool discovers none of the Service's targets (its discovery
    fails, or its rules keep nothing for a reason not evaluated here)."""
    NO_SHARD_KEEPS = "no_shard_keeps"
    """The shards' hashmod rule has a share that no shard of the replica
    keeps (StageCauses.rule names the hashmod rule); or, with topology
    sharding (Operator v0.92+), the target has no zone or a zone no shard
    keeps (StageCauses.rule names the zone `keep` rule)."""
    SHARE_UNKNOWN = "share_unknown"
    """Coverage unknown: a shard is down, expired or cannot be judged."""
    STILL_DISCOVERING = "still_discovering"
    """Coverage unknown: a server started moments ago and its discovery has
    not delivered yet (every pool of a fresh replica is empty)."""
    UNEXPLAINED = "unexplained"
    """Missing for no cause the model knows."""
    UNMAINTAINED = "unmaintained"
    """Read from an object no controller maintains: the Endpoints controller
    or the mirroring controller does not run (model.controllers), and the
    Endpoints object or the mirrored slices are absent or frozen."""


_TARGET_STATE = (
    Cause.NO_POD_TAINT,
    Cause.NO_POD_PLACEMENT,
    Cause.POD_NOT_SCHEDULED,
    Cause.POD_NOT_READY,
    Cause.POD_TERMINATING,
)
UNKNOWN_CAUSES = (Cause.SHARE_UNKNOWN, Cause.STILL_DISCOVERING)


@dataclass(frozen=True, slots=True)
class StageCauses:
    """The causes of one stage's missing (or unknown) targets."""

    named: Mapping[Cause, tuple[MissingTarget, ...]] = field(default_factory=dict)
    """The stage's missing targets, partitioned by cause, each in the
    stage's order (one tuple shared with the stage where one cause has all)."""
    counts: Mapping[Cause, int] = field(default_factory=dict)
    """Every absent target by cause, named or known by count only; for an
    unknown pool, its unknown targets. Sums to the stage's count (or its
    unknown count)."""
    rule: RuleRef | None = None
    """For RELABEL_DROPPED and NO_SHARD_KEEPS: the rule (index, action)."""

    def each(self) -> Iterator[tuple[MissingTarget, Cause]]:
        for cause, targets in self.named.items():
            for t in targets:
                yield t, cause

    def of(self, target: MissingTarget) -> Cause | None:
        return next((c for c, ts in self.named.items() if target in ts), None)

    def split(self) -> tuple[Cause, dict[int, Cause]]:
        """(the cause of the largest group, the others' causes by object
        id): for callers that walk the targets in another order (by name,
        or their union over stages) at 100k a time."""
        if not self.named:
            return Cause.UNEXPLAINED, {}
        dominant = max(self.named, key=lambda c: len(self.named[c]))
        others = {id(t): c for c, ts in self.named.items() if c is not dominant for t in ts}
        return dominant, others

    def lookup(self) -> Callable[[MissingTarget], Cause]:
        dominant, others = self.split()
        if not others:
            return lambda _: dominant
        return lambda t: others.get(id(t), dominant)


NO_CAUSES = StageCauses()

_Claims = list[tuple[Cause, "set[int] | frozenset[int]"]]
"""(cause, the ids of the targets it claims). By id: a stage's targets are
the objects that model.coverage made once per Service (Expected.made), and
hashing an id is a fraction of hashing a Struct's fields."""


def _ids(targets: Iterable[MissingTarget]) -> set[int]:
    return set(map(id, targets))


def _partition(
    missing: Sequence[MissingTarget], claims: _Claims, own: Cause
) -> dict[Cause, tuple[MissingTarget, ...]]:
    """Each target to the first claim that holds it, the rest to `own`; in
    the stage's order. C-level only: 99k targets per stage when a large
    Service is cut."""
    out: dict[Cause, tuple[MissingTarget, ...]] = {}
    rest = tuple(missing)
    for cause, held in claims:
        if not rest:
            break
        if not held:
            continue
        inside = list(map(held.__contains__, map(id, rest)))
        hit = tuple(compress(rest, inside))
        if hit:
            out[cause] = out.get(cause, ()) + hit
            rest = tuple(compress(rest, map(operator.not_, inside)))
    if rest:
        out[own] = rest
    return out


def _counted(
    named: Mapping[Cause, tuple[MissingTarget, ...]], extra: Mapping[Cause, int]
) -> dict[Cause, int]:
    counts = {c: len(ts) for c, ts in named.items()}
    for c, n in extra.items():
        if n:
            counts[c] = counts.get(c, 0) + n
    return counts


def target_state(
    service: Service, snapshot: ClusterSnapshot, expected: Expected
) -> dict[Cause, list[MissingTarget]]:
    """The expected targets that Kubernetes lists no address for, by why
    (step 1), among those some stage misses (the objects model.coverage
    made for them). Node-wide Services of the kubelet or hand-made
    Endpoints have no pod to ask about: none."""
    pods = snapshot.pods.get(service.key, ())
    made = expected.made
    out: dict[Cause, list[MissingTarget]] = {}
    if expected.source == SOURCE_PODS:
        for p in pods:
            cause = _pod_state(p)
            target = made.get(p.name)
            if cause is not None and target is not None:
                out.setdefault(cause, []).append(target)
        return out
    if expected.source != SOURCE_DAEMONSET:
        return out
    owners = {d.name for d in expected.daemonsets}
    ours = [
        p
        for p in pods
        if p.node_name and p.owner_kind == "DaemonSet" and p.owner_name in owners
        if p.phase not in POD_PHASES_DONE
    ]
    # One healthy pod is enough for the node (a pod replaced by another).
    healthy = {p.node_name for p in ours if _pod_state(p) is None}
    worst = {p.node_name: _pod_state(p) for p in ours if p.node_name not in healthy}
    for name in made.keys() - healthy:
        cause = worst.get(name) or _no_pod(name, expected, snapshot)
        out.setdefault(cause, []).append(made[name])
    return out


def _pod_state(p: Pod) -> Cause | None:
    if p.terminating:
        return Cause.POD_TERMINATING
    if not p.node_name:
        return Cause.POD_NOT_SCHEDULED
    if not p.ip:
        return Cause.POD_NOT_READY
    return None


def _no_pod(node_name: str, expected: Expected, snapshot: ClusterSnapshot) -> Cause:
    """Why no DaemonSet of the Service has a pod there: if any would run one
    (or its placement is not modelled) the pod is not scheduled yet; else
    a taint where one keeps a DaemonSet off, else its selector/affinity."""
    node = snapshot.nodes.get(node_name)
    reasons = set()
    for d in expected.daemonsets:
        if node is None or d.placement is None or d.placement.terms is None:
            return Cause.POD_NOT_SCHEDULED
        why = kept_off(d.placement, node)
        if why is None:
            return Cause.POD_NOT_SCHEDULED
        reasons.add(why)
    if not reasons:
        return Cause.POD_NOT_SCHEDULED
    return Cause.NO_POD_TAINT if KEPT_OFF_BY_TAINT in reasons else Cause.NO_POD_PLACEMENT


def _state_claims(state: Mapping[Cause, list[MissingTarget]]) -> _Claims:
    return [(c, _ids(state[c])) for c in _TARGET_STATE if c in state]


def _upstream_claims(up: StageCauses) -> _Claims:
    """Built once per Kubernetes stage, shared by every pool reading it."""
    return [(c, _ids(ts)) for c, ts in up.named.items() if c not in _TARGET_STATE]


def service_causes(
    service: Service,
    snapshot: ClusterSnapshot,
    expected: Expected,
    endpoints: EndpointsStage | None,
    slices: SlicesStage,
    pools: Sequence[PoolCoverage],
    fleet: Fleet,
    jobs: Mapping[str, Mapping[str, ScrapeJob]],
    unmaintained: tuple[bool, bool] = (False, False),
) -> tuple[StageCauses, ...]:
    """The causes of each stage, in model.stages.service_stages' order:
    the Endpoints object, the slices, then each replica's pools. `jobs`:
    server -> scrape pool -> its job, from the loaded configurations.
    `unmaintained`: (no controller maintains the Endpoints object, none
    mirrors it), from model.controllers: the stage's own cause is then
    UNMAINTAINED, never truncation nor the cap."""
    ep_unmaintained, unmirrored = unmaintained
    unnamed = expected.unnamed
    any_missing = (
        endpoints is None
        or endpoints.missing
        or slices.missing
        or unnamed
        or any(p.missing or not p.known for p in pools)
    )
    if not any_missing:
        return (NO_CAUSES, NO_CAUSES, *(NO_CAUSES for _ in pools))
    state = target_state(service, snapshot, expected)
    first = _state_claims(state)
    count_only = {Cause.POD_NOT_SCHEDULED: unnamed}

    if endpoints is None:
        # No names: every expected target counted, those Kubernetes has no
        # address for under their own cause.
        by_state = {c: len(ts) for c, ts in state.items()}
        absent = max(0, expected.count - sum(by_state.values()) - unnamed)
        why_absent = Cause.UNMAINTAINED if ep_unmaintained else Cause.ENDPOINTS_ABSENT
        extra = {**by_state, **count_only, why_absent: absent}
        ep = StageCauses({}, _counted({}, extra))
    else:
        own = Cause.ENDPOINTS_TRUNCATED if endpoints.truncated else Cause.UNEXPLAINED
        if ep_unmaintained:
            own = Cause.UNMAINTAINED
        named = _partition(endpoints.missing, first, own)
        ep = StageCauses(named, _counted(named, count_only))

    mirrored = slices.mirroring_skipped is not None
    own = Cause.MIRRORING_CAPPED if slices.mirroring_skipped else Cause.UNEXPLAINED
    if unmirrored:
        own = Cause.UNMAINTAINED
    up = _upstream_claims(ep) if mirrored else []
    if mirrored and endpoints is None:
        up = [(Cause.ENDPOINTS_ABSENT, _ids(slices.missing))]
    named = _partition(slices.missing, first + up, own)
    sl = StageCauses(named, _counted(named, count_only))

    roles = {p.role for p in pools if p.missing}
    upstream: dict[str, _Claims] = {
        role: _upstream_claims(stage)
        for role, stage in ((ROLE_ENDPOINTS, ep), (ROLE_ENDPOINTSLICE, sl))
        if role in roles
    }
    out = [ep, sl]
    no_endpoints: Cause | None = None
    if endpoints is None:
        no_endpoints = Cause.UNMAINTAINED if ep_unmaintained else Cause.ENDPOINTS_ABSENT
    for p in pools:
        pool = _pool_causes(
            service,
            snapshot,
            p,
            first,
            upstream,
            no_endpoints,
            fleet,
            jobs,
            count_only,
            slices.unread_family,
        )
        out.append(pool)
    return tuple(out)


def _pool_causes(
    service: Service,
    snapshot: ClusterSnapshot,
    p: PoolCoverage,
    first: _Claims,
    upstream: Mapping[str, _Claims],
    no_endpoints: Cause | None,
    fleet: Fleet,
    jobs: Mapping[str, Mapping[str, ScrapeJob]],
    count_only: Mapping[Cause, int],
    unread_family: frozenset[str] = frozenset(),
) -> StageCauses:
    replica = fleet.replicas.get((p.scraper, p.replica))
    if p.missing is None:
        cause = Cause.STILL_DISCOVERING if replica and replica.discovering else Cause.SHARE_UNKNOWN
        return StageCauses({}, {cause: p.unknown} if p.unknown else {})
    if not p.missing and not p.unnamed:
        return NO_CAUSES
    servers = [s.name for s in replica.servers if s.known] if replica else []
    own_jobs = [jobs[s][p.scrape_pool] for s in servers if p.scrape_pool in jobs.get(s, {})]
    own, rule = Cause.UNEXPLAINED, None
    zones = _zone_shares(own_jobs)
    if p.discovered == 0:
        rule = next((r for j in own_jobs if (r := dropping_rule(j, service))), None)
        own = Cause.POOL_DISCOVERS_NOTHING if rule is None else Cause.RELABEL_DROPPED
        if rule is not None:
            zones = None  # a rule before the zone's drops the whole Service
    else:
        rule = _unkept_share(own_jobs) if zones is None else _unkept_zone_share(own_jobs)
        if rule is not None:
            own = Cause.NO_SHARD_KEEPS
    up = upstream.get(p.role, [])
    if p.role == ROLE_ENDPOINTS and no_endpoints is not None:
        up = [(no_endpoints, _ids(p.missing))]
    if p.role == ROLE_ENDPOINTSLICE and unread_family:
        up = up + _family_claims(p.missing, unread_family)
    zone_claims: _Claims = []
    if zones is not None:
        dropped = _ids(t for t in p.missing if not _zone_kept(t, zones, p.role, snapshot))
        if dropped:
            rule = (zones[0].rule, "keep")
            if own is not Cause.NO_SHARD_KEEPS:  # else the rest has that cause too
                zone_claims = [(Cause.NO_SHARD_KEEPS, dropped)]
    named = _partition(p.missing, first + up + zone_claims, own)
    return StageCauses(named, _counted(named, count_only), rule)


def _family_claims(missing: Sequence[MissingTarget], unread: frozenset[str]) -> _Claims:
    """ADDRESS_FAMILY for the targets only the skipped family carries, when
    the pool misses exactly all of them: a server that reads every slice
    (Prometheus before 3.11) discovers some, and then the family is not
    why it misses the others."""
    pod_backed = bool(missing) and bool(missing[0].pod)
    names = map(operator.attrgetter("pod" if pod_backed else "node"), missing)
    hit = tuple(compress(missing, map(unread.__contains__, names)))
    if len(hit) != len(unread):
        return []
    return [(Cause.ADDRESS_FAMILY, _ids(hit))]


def _zone_shares(jobs: Sequence[ScrapeJob]) -> list[ZoneShare] | None:
    """The zone each shard keeps, when every known shard of the replica is
    topology-sharded; None otherwise (a mix is not judged by zone)."""
    shares = [job_zone(j.relabel) for j in jobs]
    if not shares or any(z is None for z in shares):
        return None
    return [z for z in shares if z is not None]


def _zone_kept(
    t: MissingTarget, zones: Sequence[ZoneShare], role: str, snapshot: ClusterSnapshot
) -> bool:
    """False when the shards' zone rules drop the target in every shard:
    it has no zone, or one that no shard keeps. Its zone is its node's
    `topology.kubernetes.io/zone`, as each way the rules read it carries
    it: the node's label (attach_metadata node), the pod's (copied from
    its node by PodTopologyLabelsAdmission), the EndpointSlice's endpoint
    zone (set by the EndpointSlice controller from the pod's node; the
    Operator's kubelet slices and mirrored slices set none). True when the
    node is not known: no proof."""
    node = snapshot.nodes.get(t.node)
    if node is None:
        return True
    zone = node.labels.get(ZONE_NODE_LABEL)
    sources = frozenset().union(*(z.sources for z in zones))
    from_pod = ZONE_FROM_POD in sources or (
        ZONE_FROM_SLICE in sources and role == ROLE_ENDPOINTSLICE
    )
    readable = ZONE_FROM_NODE in sources or (bool(t.pod) and from_pod)
    if not zone or not readable:
        return False
    return zone in {z.zone for z in zones}


def _unkept_zone_share(jobs: Sequence[ScrapeJob]) -> RuleRef | None:
    """_unkept_share zone by zone: each zone's shards split its targets by
    the in-zone hashmod."""
    by_zone: dict[str, list[ScrapeJob]] = {}
    for job in jobs:
        z = job_zone(job.relabel)
        if z is not None:
            by_zone.setdefault(z.zone, []).append(job)
    return next((r for js in by_zone.values() if (r := _unkept_share(js))), None)


def _unkept_share(jobs: Sequence[ScrapeJob]) -> RuleRef | None:
    """The hashmod rule, when the shards of one replica (these jobs, one per
    known server) keep fewer shares than its modulus: the targets hashed
    to the others are dropped by every shard."""
    kept: set[int] = set()
    modulus = 0
    for job in jobs:
        found = job_shard(job.relabel)
        if found is None:
            return None
        kept.add(found[0])
        modulus = max(modulus, found[1])
    if not modulus or kept >= set(range(modulus)):
        return None
    index = next(i for i, r in enumerate(jobs[0].relabel) if r.action.lower() == "hashmod")
    return (index, "hashmod")
