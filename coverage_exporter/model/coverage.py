"""The comparison itself: for one Service, which expected targets are
absent from the Endpoints object, from the EndpointSlices and from each
Prometheus scrape pool.

Pure functions on the slim objects of `model.objects`; no I/O, no clock.
Every number the exporter publishes about a Service is computed here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, filterfalse, groupby
from operator import attrgetter

import msgspec

from coverage_exporter.model.causes import StageCauses, service_causes
from coverage_exporter.model.controllers import (
    RUNNING,
    Controllers,
    endpoints_unmaintained,
    slices_unmirrored,
)
from coverage_exporter.model.fleet import Fleet
from coverage_exporter.model.objects import (
    MANAGED_BY_MIRRORING,
    POD_PHASES_DONE,
    ROLE_ENDPOINTS,
    ROLE_ENDPOINTSLICE,
    ROLE_UNKNOWN,
    SOURCE_DAEMONSET,
    SOURCE_LISTED,
    SOURCE_NODES,
    SOURCE_PODS,
    ClusterSnapshot,
    DaemonSet,
    EndpointAddress,
    Endpoints,
    EndpointSlice,
    Pod,
    PrometheusSnapshot,
    ScrapeJob,
    Service,
    ServiceKey,
    SliceEndpoint,
    Target,
    each_server,
)
from coverage_exporter.model.scheduling import eligible_nodes

DISCOVERY_ROLES = (ROLE_ENDPOINTS, ROLE_ENDPOINTSLICE, ROLE_UNKNOWN)


class MissingTarget(msgspec.Struct, frozen=True, order=True, gc=False):
    """An expected target absent from a stage. For node-wide Services `pod`
    is empty; for pod-backed ones `node` is where the pod runs (may be "").

    Made by the hundred thousand when a large Service is cut (396k at 100k
    nodes with 2 replicas): an untracked Struct, because as a NamedTuple
    each was a garbage-collector object, and the collector's full passes
    walked them all (107 ms, a stall of /metrics, against 38 ms without).
    Frozen and ordered: stages sort them and the page takes set unions."""

    node: str
    pod: str = ""


@dataclass(slots=True)
class EndpointsStage:
    ready: int
    not_ready: int
    truncated: bool
    skip_mirror: bool | None
    """None for Services with a selector, where mirroring does not apply."""
    missing: tuple[MissingTarget, ...]


@dataclass(slots=True)
class SlicesStage:
    endpoints: Mapping[tuple[str, bool], int]
    """Distinct endpoints by (managed_by, ready)."""
    terminating: Mapping[str, int]
    """Terminating endpoints by managed_by."""
    mirroring_skipped: int | None
    """Addresses the mirroring controller left out; None where it does not apply."""
    missing: tuple[MissingTarget, ...]
    families: Mapping[str, int] = field(default_factory=dict)
    """Expected-or-not targets named by each address family's slices."""
    unread_family: frozenset[str] = frozenset()
    """Expected targets (identities) that only slices of a family other
    than Service.read_family carry: Prometheus 3.11+ discovers none of them."""


@dataclass(slots=True)
class PoolCoverage:
    """One scrape pool as one replica runs it (the union of its shards)."""

    scrape_pool: str
    role: str
    scraper: str
    replica: str
    discovered: int
    """Expected targets that a known shard of the replica discovered."""
    missing: tuple[MissingTarget, ...] | None
    """None while the replica's coverage is unknown (a shard expired or
    never answered): what it would discover cannot be told apart from
    what it misses."""
    unknown: int = 0
    """Expected targets whose coverage cannot be told (see `missing`)."""
    unnamed: int = 0
    """Expected targets without a name (see Expected.unnamed): missing too."""
    meant: bool = False
    """The server's configuration (or an earlier cycle) says this pool
    should scrape the Service, whether or not it discovers anything."""
    why_unknown: str = ""
    """While unknown: why (a shard not answering, a Thanos Query answer
    that cannot say which replica a target came from, targets without
    the labels that name their Service)."""
    duplicated: tuple[str, ...] = ()
    """Targets (node or pod names) that one server of the replica discovers
    more than once in this pool: scraped twice (prometheus-operator #8682,
    both address families of every node in the kubelet Endpoints)."""
    ghosts: tuple[str, ...] = ()
    """Nodes or pods that the pool discovers targets for and that no longer
    exist: a stale slice or Endpoints object left behind (operator #7678)."""

    @property
    def known(self) -> bool:
        return self.missing is not None

    @property
    def missing_count(self) -> int | None:
        return None if self.missing is None else len(self.missing) + self.unnamed


@dataclass(slots=True)
class ServiceCoverage:
    namespace: str
    service: str
    source: str
    expected: int
    endpoints: EndpointsStage | None
    """None when the Service has no Endpoints object."""
    slices: SlicesStage
    target_counts: Mapping[tuple[str, str, str, str], int] = field(default_factory=dict)
    """Active targets by (server, scrape_pool, role, health)."""
    pools: Sequence[PoolCoverage] = ()
    unnamed: int = 0
    """Expected targets known by count only (see Expected.unnamed)."""
    causes: Sequence[StageCauses] = ()
    """Why each stage misses what it misses (model.causes), in
    model.stages.service_stages' order: Endpoints, slices, then pools."""
    daemonsets: Sequence[DaemonSet] = ()
    """The DaemonSets whose pods back it (SOURCE_DAEMONSET), for
    model.unreached."""
    endpoints_unmaintained: bool = False
    """No controller maintains the Endpoints object (model.controllers):
    it is absent or frozen, and its truncation marker is not believed."""
    slices_unmirrored: bool = False
    """No controller mirrors the selector-less Endpoints (model.controllers):
    the mirrored slices are absent or frozen, and no cap is claimed."""

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.service)

    def endpoints_missing_count(self) -> int:
        """Expected targets absent from the Endpoints object (all of them
        when there is none)."""
        if self.endpoints is None:
            return self.expected
        return len(self.endpoints.missing) + self.unnamed

    def slices_missing_count(self) -> int:
        return len(self.slices.missing) + self.unnamed

    def reads(self, role: str) -> bool:
        """Some scrape pool of that role reads this Service's objects."""
        return any(p.role == role and (p.meant or p.discovered) for p in self.pools)


@dataclass(slots=True)
class Expected:
    source: str
    count: int
    keys: Mapping[str, str]
    """Identity -> node: node name -> itself for node-wide sources, pod
    name -> the pod's node ("" if unscheduled) for SOURCE_PODS, node name
    or bare IP for SOURCE_LISTED. Plain strings: MissingTarget objects are
    made only for what is missing."""
    daemonsets: Sequence[DaemonSet] = ()
    """SOURCE_DAEMONSET: the DaemonSets that own the selected pods."""
    made: dict[str, MissingTarget] = field(default_factory=dict, repr=False, compare=False)
    """The MissingTarget of each identity made so far: the stages and the
    pools of every replica of one Service share one object per target
    (a cut node-exporter is missing from 4 lists or more at 100k nodes)."""

    @property
    def node_wide(self) -> bool:
        return self.source != SOURCE_PODS

    @property
    def unnamed(self) -> int:
        """Expected targets known only by count: nodes a DaemonSet should
        run on (desiredNumberScheduled) that neither a pod nor its
        placement rules name. Missing from every later stage."""
        return max(0, self.count - len(self.keys))


class Resolver:
    """Maps what a stage carries (node names, target refs, bare IPs) to the
    identity used by the expected set. Labels that name a node win; a bare
    IP is matched against the Nodes' (or selected pods') addresses, and for
    listed Endpoints stands for itself."""

    def __init__(
        self, node_by_ip: Mapping[str, str], pods: Sequence[Pod], ip_fallback: bool = False
    ) -> None:
        self._node_by_ip = node_by_ip
        # hostNetwork pods share the node's IP, so an IP cannot name a pod
        # reliably; it is only a last resort for pod-backed Services.
        self._pod_by_ip = {p.ip: p.name for p in pods if p.ip}
        self._ip_fallback = ip_fallback

    def node(
        self, node_name: str | None, kind: str | None, name: str | None, ip: str
    ) -> str | None:
        if node_name:
            return node_name
        if kind == "Node" and name:
            return name
        found = self._node_by_ip.get(ip)
        if found is None and self._ip_fallback:
            return ip
        return found

    def pod(self, pod_name: str | None, kind: str | None, name: str | None, ip: str) -> str | None:
        if pod_name:
            return pod_name
        if kind == "Pod" and name:
            return name
        return self._pod_by_ip.get(ip)

    def identity(
        self,
        node_wide: bool,
        node_name: str | None,
        kind: str | None,
        name: str | None,
        ip: str,
        pod_name: str | None = None,
    ) -> str | None:
        if node_wide:
            return self.node(node_name, kind, name, ip)
        return self.pod(pod_name, kind, name, ip)


def _live(pods: Sequence[Pod]) -> list[Pod]:
    # Evicted and completed pods never run again; the DaemonSet replaces
    # them, and a Service never routes to them.
    return [p for p in pods if p.phase not in POD_PHASES_DONE]


def expected_targets(
    service: Service, snapshot: ClusterSnapshot, endpoints: Endpoints | None
) -> Expected | None:
    """The targets that should exist, or None when nothing says what they
    are (a selector-less Service with no addresses at all, or a Service
    whose pods are not listed yet)."""
    if service.selector is None:
        return _selector_less_expected(service, snapshot, endpoints)

    pods = snapshot.pods.get(service.key)
    if pods is None:
        # Pods not listed yet: an empty expected set would read as "no gap".
        return None
    live = _live(pods)
    daemonsets = _owning_daemonsets(service, pods, snapshot)
    if daemonsets:
        expected = _daemonset_expected(daemonsets, live, snapshot)
        expected.daemonsets = tuple(daemonsets)
        return expected

    # Terminating pods are left out of Endpoints by design; expecting them
    # would report every rollout as a gap.
    keys = {p.name: p.node_name or "" for p in live if not p.terminating}
    return Expected(SOURCE_PODS, len(keys), keys)


def _selector_less_expected(
    service: Service, snapshot: ClusterSnapshot, endpoints: Endpoints | None
) -> Expected | None:
    """Selector-less Services: the Operator's kubelet Service expects every
    Node (its Endpoints may be frozen or gone after `--kubelet-endpoints=
    false`; its slices still say it targets Nodes); hand-made Endpoints
    (etcd, control plane) expect what they list."""
    addresses: list[tuple[str | None, str | None, str | None, str]] = []
    if endpoints is not None:
        addresses.extend(
            (a.node_name, a.target_kind, a.target_name, a.ip)
            for a in endpoints.ready + endpoints.not_ready
        )
    for s in snapshot.endpointslices.get(service.key, ()):
        addresses.extend(
            (e.node_name, e.target_kind, e.target_name, e.address) for e in s.endpoints
        )
    if not addresses:
        return None
    node_targeted = any(kind == "Node" for _, kind, _, _ in addresses)
    operator = service.operator_managed or (endpoints is not None and endpoints.operator_managed)
    if node_targeted and operator:
        keys = {name: name for name in snapshot.nodes}
        return Expected(SOURCE_NODES, len(keys), keys)
    resolver = Resolver(node_index(snapshot), (), ip_fallback=True)
    listed: dict[str, str] = {}
    for node_name, kind, name, ip in addresses:
        ident = resolver.node(node_name, kind, name, ip)
        if ident:
            listed[ident] = ident
    return Expected(SOURCE_LISTED, len(listed), listed)


def _daemonset_expected(
    daemonsets: Sequence[DaemonSet], live: Sequence[Pod], snapshot: ClusterSnapshot
) -> Expected:
    """Every node that runs, or should run, a pod of the DaemonSets (a
    Linux and a Windows node-exporter behind one Service: all of them)."""
    # Sets of 100k names at 100k nodes: built in place, never copied (the
    # copies were most of the comparison's peak memory).
    named_keys: set[str] = set()
    count = 0
    for daemonset in daemonsets:
        named = {
            p.node_name
            for p in live
            if p.node_name and p.owner_kind == "DaemonSet" and p.owner_name == daemonset.name
        }
        eligible = eligible_nodes(daemonset.placement, snapshot.nodes)
        # Trusted only while it agrees with the controller's own count:
        # a placement rule modelled wrong must not invent missing nodes.
        if eligible is not None:
            outside = sum(1 for n in named if n not in eligible)
            if len(eligible) + outside <= daemonset.desired_number_scheduled:
                eligible |= named
                named = eligible
            del eligible
        if named_keys:
            named_keys |= named
        else:
            named_keys = named
        count += max(daemonset.desired_number_scheduled, len(named))
    # In the Nodes' order (the list's, by name), not the sets' hash order:
    # _missing then sorts in one pass.
    keys = {n: n for n in snapshot.nodes if n in named_keys}
    keys.update((n, n) for n in sorted(named_keys - keys.keys()))
    return Expected(SOURCE_DAEMONSET, max(count, len(keys)), keys)


def _owning_daemonsets(
    service: Service, pods: Sequence[Pod], snapshot: ClusterSnapshot
) -> list[DaemonSet]:
    """The DaemonSets that own the selected pods, largest first."""
    owners: dict[str, int] = defaultdict(int)
    for p in pods:
        if p.owner_kind == "DaemonSet" and p.owner_name:
            owners[p.owner_name] += 1
    out = []
    for name in sorted(owners, key=lambda n: (-owners[n], n)):
        daemonset = snapshot.daemonsets.get((service.namespace, name))
        out.append(daemonset or DaemonSet(service.namespace, name, owners[name]))
    return out


def _missing(expected: Expected, present: Iterable[str | None]) -> tuple[MissingTarget, ...]:
    # This runs over every expected target of every stage, 100k at a time,
    # so it is C-level calls only (a generator here was a third of the
    # comparison). The expected keys come in the Nodes' list order (by
    # name), which the filter keeps, so the sort is one pass; a sort of
    # 99k names in hash order was ~70 ms.
    seen = present if isinstance(present, (set, frozenset)) else set(present)
    absent = list(filterfalse(seen.__contains__, expected.keys))
    absent.sort()
    made = expected.made
    new = list(filterfalse(made.__contains__, absent))
    if expected.node_wide:
        made.update(zip(new, map(MissingTarget, new), strict=True))
        return tuple(map(made.__getitem__, absent))
    made.update(zip(new, map(MissingTarget, map(expected.keys.__getitem__, new), new), strict=True))
    missing = list(map(made.__getitem__, absent))
    missing.sort()
    return tuple(missing)


def endpoints_stage(
    service: Service,
    endpoints: Endpoints | None,
    expected: Expected,
    resolver: Resolver,
    unmaintained: bool = False,
) -> EndpointsStage | None:
    """`unmaintained`: no controller updates the object, so its
    over-capacity marker says nothing of today (model.controllers)."""
    if endpoints is None:
        return None
    present = (
        _address_identity(a, expected, resolver) for a in endpoints.ready + endpoints.not_ready
    )
    return EndpointsStage(
        ready=len(endpoints.ready),
        not_ready=len(endpoints.not_ready),
        truncated=endpoints.over_capacity is not None and not unmaintained,
        skip_mirror=endpoints.skip_mirror if service.selector is None else None,
        missing=_missing(expected, present),
    )


def _address_identity(a: EndpointAddress, expected: Expected, resolver: Resolver) -> str | None:
    return resolver.identity(expected.node_wide, a.node_name, a.target_kind, a.target_name, a.ip)


def _slice_endpoint_identity(e: SliceEndpoint) -> tuple[str, str]:
    if e.target_kind and e.target_name:
        return (e.target_kind, e.target_name)
    return ("", e.address)


def slices_stage(
    service: Service,
    slices: Sequence[EndpointSlice],
    endpoints: Endpoints | None,
    expected: Expected,
    resolver: Resolver,
    unmirrored: bool = False,
) -> SlicesStage:
    """`unmirrored`: no controller mirrors the Endpoints, so what the
    slices lack is not the mirroring cap (model.controllers)."""
    # A dual-stack Service has one set of slices per family, each holding
    # every endpoint: count within the family that holds the most.
    by_family: dict[str, list[EndpointSlice]] = defaultdict(list)
    for s in slices:
        by_family[s.address_type].append(s)
    primary = max(by_family.values(), key=_distinct_endpoints, default=[])

    counted: dict[tuple[str, bool], set[tuple[str, str]]] = defaultdict(set)
    terminating: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for s in primary:
        for e in s.endpoints:
            ident = _slice_endpoint_identity(e)
            counted[(s.managed_by, e.ready)].add(ident)
            if e.terminating:
                terminating[s.managed_by].add(ident)

    node_wide = expected.node_wide
    identity = resolver.identity
    present: set[str | None] = set()
    unread: set[str | None] = set()
    families: dict[str, int] = {}
    read = service.read_family
    for family, family_slices in sorted(by_family.items()):
        found = {
            identity(node_wide, e.node_name, e.target_kind, e.target_name, e.address)
            for s in family_slices
            for e in s.endpoints
        }
        found.discard(None)
        families[family] = len(found)
        if present:
            present |= found
        else:
            present = found
        if read is not None and family != read:
            unread |= found
    if unread:
        # Only in a family Prometheus 3.11+ skips (Service.read_family).
        unread -= {
            identity(node_wide, e.node_name, e.target_kind, e.target_name, e.address)
            for s in by_family.get(read or "", ())
            for e in s.endpoints
        }
        unread &= expected.keys.keys()
    return SlicesStage(
        endpoints={k: len(v) for k, v in counted.items()},
        terminating={k: len(v) for k, v in terminating.items()},
        mirroring_skipped=None if unmirrored else _mirroring_skipped(service, endpoints, primary),
        missing=_missing(expected, present),
        families=families,
        unread_family=frozenset(unread),  # type: ignore[arg-type]
    )


def _distinct_endpoints(slices: Sequence[EndpointSlice]) -> int:
    return len({_slice_endpoint_identity(e) for s in slices for e in s.endpoints})


def _mirroring_skipped(
    service: Service, endpoints: Endpoints | None, slices: Sequence[EndpointSlice]
) -> int | None:
    """Addresses of selector-less Endpoints that have no mirrored endpoint.

    The mirroring controller copies at most 1000 addresses per subset and
    drops the rest with only an Event; comparing counts is the only way to
    see it from the API."""
    if service.selector is not None or endpoints is None or endpoints.skip_mirror:
        return None
    mirrored = _distinct_endpoints([s for s in slices if s.managed_by == MANAGED_BY_MIRRORING])
    return max(0, sum(endpoints.subset_sizes) - mirrored)


PoolKey = tuple[str, str]
"""(scrape pool, role)."""


def prometheus_stage(
    targets: ServiceTargets,
    expected: Expected,
    resolver: Resolver,
    fleet: Fleet,
    meant: Mapping[str, Mapping[str, str]] | None = None,
    unjudged: Mapping[str, Mapping[str, str]] | None = None,
    exists: Container[str] | None = None,
) -> tuple[dict[tuple[str, str, str, str], int], list[PoolCoverage]]:
    """Target counts per server and coverage per (replica, scrape pool).

    `targets` are this Service's targets per server; `meant` maps
    a server to the pools (pool -> role) meant to scrape the Service, with
    or without targets; `unjudged` a server to its pools whose targets
    cannot all be attributed to a Service (pool -> why): such a pool's
    coverage is unknown, never covered and never missing. `exists`: the
    names of the nodes (node-wide) or pods that exist, for the ghosts;
    None where a name cannot tell (listed addresses). The shards of
    one replica form a union; each replica is judged on its own, since
    each evaluates the alerts itself."""
    counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    # What each replica's known shards found, per pool: lists of names,
    # made into one set per pool only when that pool is judged. Sets per
    # shard held at once were 40 MB at 100k nodes with 2 x 2 servers.
    found: dict[tuple[tuple[str, str], PoolKey], list[list[str | None]]] = defaultdict(list)
    found_by: dict[tuple[tuple[str, str], PoolKey], list[str]] = defaultdict(list)
    """The server of each list in `found`."""
    by_replica: dict[tuple[str, str], dict[PoolKey, bool]] = defaultdict(dict)
    # This sees every target of the Service (a million at 100k nodes with
    # HA replicas): per run of one (pool, role) the health counts and the
    # node names are C-level map/Counter/set operations; only targets that
    # do not name their node go through the resolver one by one.
    node_wide = expected.node_wide
    identity = resolver.identity
    for server, server_targets in targets:
        replica_key = fleet.replica_of(server).key
        replica_pools = by_replica[replica_key]
        known = fleet.server_known(server)
        replica_known = fleet.replicas[replica_key].known
        for (pool, role), group in groupby(server_targets, _BY_POOL):
            if not known:
                # Its last answer is too old to count or to show as
                # current; the pool is still listed, coverage unknown. In a
                # replica known through its other servers (the same
                # Prometheus seen directly and through Thanos Query) such a
                # pool says nothing that they do not: judged as absent
                # there, it would be a gap that no server shows.
                if not replica_known:
                    replica_pools.setdefault((pool, role), False)
                continue
            replica_pools.setdefault((pool, role), False)
            run = list(group)
            for state, n in Counter(map(_HEALTH, run)).items():
                counts[(server, pool, role, state)] += n
            names = list(map(_NODE_NAME, run)) if node_wide else None
            # Node names as the targets carry them, unless one is missing
            # or the Service is pod-backed: then each through the resolver.
            if names is None or None in names or "" in names:
                names = [
                    identity(
                        node_wide,
                        t.node_name,
                        t.target_kind,
                        t.target_name,
                        t.address_host,
                        t.pod_name,
                    )
                    for t in run
                ]
            found[(replica_key, (pool, role))].append(names)
            found_by[(replica_key, (pool, role))].append(server)
    for server, pools in (meant or {}).items():
        replica = fleet.replica_of(server)
        for pool, role in pools.items():
            by_replica[replica.key][(pool, role)] = True
    # Pool -> why, per replica: one unjudged shard makes the union unjudged.
    blind: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for server, pools in (unjudged or {}).items():
        blind[fleet.replica_of(server).key].update(pools)

    out = []
    unnamed = expected.unnamed
    for replica_key in sorted(by_replica):
        replica = fleet.replicas[replica_key]
        for (pool, role), is_meant in sorted(by_replica[replica_key].items()):
            lists = found.pop((replica_key, (pool, role)), [])
            present = set(chain.from_iterable(lists))
            present.discard(None)
            # One sum per pool; the per-server count only where some name
            # (or None) came twice.
            duplicated = (
                _duplicated(lists, found_by[(replica_key, (pool, role))])
                if sum(map(len, lists)) > len(present)
                else ()
            )
            why = replica.why_unknown
            if not why:
                missing = _missing(expected, present)
                # Targets that name no Service can only add to a pool: what
                # the others cover is covered, the rest may be among them.
                why = blind[replica_key].get(pool, "") if missing or unnamed else ""
            if not why:
                discovered = len(expected.keys) - len(missing)
                ghosts = _ghosts(present, discovered, expected, exists)
                out.append(
                    PoolCoverage(
                        pool,
                        role,
                        *replica_key,
                        discovered,
                        missing,
                        0,
                        unnamed,
                        is_meant,
                        duplicated=duplicated,
                        ghosts=ghosts,
                    )
                )
                continue
            discovered = len(present & expected.keys.keys())
            ghosts = _ghosts(present, discovered, expected, exists)
            out.append(
                PoolCoverage(
                    pool,
                    role,
                    *replica_key,
                    discovered,
                    None,
                    expected.count - discovered,
                    unnamed,
                    is_meant,
                    why,
                    duplicated,
                    ghosts,
                )
            )
    return dict(counts), out


def _duplicated(lists: Sequence[list[str | None]], servers: Sequence[str]) -> tuple[str, ...]:
    """Names that one server lists more than once. Per server: the same
    Prometheus seen directly and through Thanos Query lists each target
    once per route, which is no duplicate."""
    by_server: dict[str, Counter[str | None]] = defaultdict(Counter)
    for server, names in zip(servers, lists, strict=True):
        by_server[server].update(names)
    twice = {n for c in by_server.values() for n, k in c.items() if k > 1 and n is not None}
    return tuple(sorted(twice))


def _ghosts(
    present: set[str | None], discovered: int, expected: Expected, exists: Container[str] | None
) -> tuple[str, ...]:
    """Discovered names, not expected, of nodes or pods that do not exist.
    `discovered`: how many of `present` are expected; when that is all of
    them (nearly always) nothing is walked: the walk was 20 ms per pool of
    100k targets."""
    if exists is None or len(present) == discovered:
        return ()
    unexpected = filterfalse(expected.keys.__contains__, present)
    return tuple(sorted(filterfalse(exists.__contains__, unexpected)))  # type: ignore[arg-type]


ServiceTargets = list[tuple[str, Sequence[Target]]]
"""One Service's targets: (server name, that server's targets of the
Service, in its pools' order). Per server, not per target: at 100k nodes
with HA replicas a (server, target) pair per target was 800k tuples, 51 MB
and a million objects for the garbage collector to walk."""

_BY_SERVICE = attrgetter("namespace", "service", "role")
_BY_POOL = attrgetter("scrape_pool", "role")
_HEALTH = attrgetter("health")
_NODE_NAME = attrgetter("node_name")


def targets_by_service(
    prometheus: Sequence[PrometheusSnapshot],
) -> dict[ServiceKey, ServiceTargets]:
    """Targets per Service; the work is C-level runs (groupby on a pool's
    consecutive targets), not a Python step per target."""
    held: dict[tuple[ServiceKey, str], list[Target]] = {}
    for snap in each_server(prometheus):
        for (namespace, service, role), run in groupby(snap.targets, _BY_SERVICE):
            if role not in DISCOVERY_ROLES or not namespace or not service:
                continue
            held.setdefault(((namespace, service), snap.name), []).extend(run)
    # Tuples: untracked by the garbage collector once its next pass sees
    # they hold only untracked Targets; 800k targets in lists were walked
    # by every full collection (~50 ms of /metrics stall at 100k nodes).
    grouped: dict[ServiceKey, ServiceTargets] = defaultdict(list)
    for (key, server), targets in held.items():
        grouped[key].append((server, tuple(targets)))
    return grouped


def node_index(snapshot: ClusterSnapshot) -> dict[str, str]:
    """Node name by address; built once per cycle, shared by every Service."""
    return {ip: n.name for n in snapshot.nodes.values() for ip in n.addresses}


def _existing(
    service: Service, snapshot: ClusterSnapshot, expected: Expected
) -> Container[str] | None:
    """What a discovered name must be among to exist: the Nodes, or the
    Service's pods. None for listed addresses (an IP names nothing) and
    while no Node is listed (every target would look like a ghost)."""
    if expected.source == SOURCE_LISTED or not snapshot.nodes:
        return None
    if expected.node_wide:
        return snapshot.nodes
    return {p.name for p in snapshot.pods.get(service.key, ())}


def service_coverage(
    service: Service,
    snapshot: ClusterSnapshot,
    targets: ServiceTargets,
    node_by_ip: Mapping[str, str],
    fleet: Fleet | None = None,
    meant: Mapping[str, Mapping[str, str]] | None = None,
    unjudged: Mapping[str, Mapping[str, str]] | None = None,
    jobs: Mapping[str, Mapping[str, ScrapeJob]] | None = None,
    found: Controllers = RUNNING,
) -> ServiceCoverage | None:
    """`jobs`: server -> scrape pool -> its job (the loaded configurations),
    for the causes that name a relabel rule. `found`: what the cluster's
    objects say of the controllers (model.controllers), once per cycle."""
    endpoints = snapshot.endpoints.get(service.key)
    expected = expected_targets(service, snapshot, endpoints)
    if expected is None:
        return None
    pods = _live(snapshot.pods.get(service.key, ()))
    resolver = Resolver(node_by_ip, pods, ip_fallback=expected.source == SOURCE_LISTED)
    fleet = fleet or Fleet.of_names({n for n, _ in targets})
    counts, pools = prometheus_stage(
        targets, expected, resolver, fleet, meant, unjudged, _existing(service, snapshot, expected)
    )
    unmaintained = endpoints_unmaintained(service, snapshot, found)
    unmirrored = slices_unmirrored(service, snapshot, found)
    endpoints_seen = endpoints_stage(service, endpoints, expected, resolver, unmaintained)
    slices = slices_stage(
        service,
        snapshot.endpointslices.get(service.key, ()),
        endpoints,
        expected,
        resolver,
        unmirrored,
    )
    return ServiceCoverage(
        namespace=service.namespace,
        service=service.name,
        source=expected.source,
        expected=expected.count,
        endpoints=endpoints_seen,
        slices=slices,
        target_counts=counts,
        pools=pools,
        unnamed=expected.unnamed,
        daemonsets=expected.daemonsets,
        causes=service_causes(
            service,
            snapshot,
            expected,
            endpoints_seen,
            slices,
            pools,
            fleet,
            jobs or {},
            (unmaintained, unmirrored),
        ),
        endpoints_unmaintained=unmaintained,
        slices_unmirrored=unmirrored,
    )
