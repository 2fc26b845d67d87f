"""One collection cycle: read every source concurrently, compare, render.

Sources (Kubernetes caches, each Prometheus) -> coverage model -> exposition.
A failed source is marked down and its last good data is used instead: a
gap never turns into a zero because a source could not be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol

from coverage_exporter import defaults, heap
from coverage_exporter.exposition.metrics import ExporterState, render_coverage, render_exporter
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.health import SourceHealth
from coverage_exporter.logs import fields
from coverage_exporter.model.coverage import ServiceTargets, targets_by_service
from coverage_exporter.model.discovery import (
    DiscoveryFinding,
    FoundServer,
    configuration_lags,
)
from coverage_exporter.model.evidence import NO_EVIDENCE, Evidence
from coverage_exporter.model.fleet import ServerState
from coverage_exporter.model.growth import GrowthTracker
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    PrometheusSnapshot,
    ServerIdentity,
    Service,
    ServiceKey,
    each_server,
)
from coverage_exporter.model.readiness import Readiness, assess
from coverage_exporter.model.report import (
    CoverageReport,
    SelectionMemo,
    build_report,
    services_scraped,
)
from coverage_exporter.model.scope import Scope, services_in_scope
from coverage_exporter.model.topology import Declared, hashmod_shard, identify
from coverage_exporter.servers import Followed, SeveralServers
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes.events import EventSource
from coverage_exporter.sources.kubernetes.operator import OperatorSource
from coverage_exporter.sources.prometheus.config import LoadedConfig

log = logging.getLogger("coverage_exporter.collector")

NO_SERVER_HINT = (
    "discovery finds the Prometheus Operator's servers and pods matching "
    "--prometheus-pod-selector; --prometheus-url and the fleet file name others "
    "(docs/discovery.md)"
)
NO_SERVER = f"no Prometheus server was found or given: nothing was judged. {NO_SERVER_HINT}"


_POOL = attrgetter("scrape_pool", "role")

Discovering = dict[ServiceKey, list[tuple[str, str, str]]]
"""Per Service, the distinct (server, scrape pool, role) of its targets."""


def _grouped_and_pools(
    prometheus: Sequence[PrometheusSnapshot],
) -> tuple[dict[ServiceKey, ServiceTargets], Discovering]:
    """Targets per Service, and the distinct (server, pool, role) among
    them; both in one worker-thread pass over every target."""
    grouped = targets_by_service(prometheus)
    return grouped, {
        key: sorted(
            {(server, pool, role) for server, ts in items for pool, role in set(map(_POOL, ts))}
        )
        for key, items in grouped.items()
    }


def _first(item: tuple[str, object]) -> str:
    return item[0]


def _same_inputs(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """The same grouped targets object (cached while no snapshot changed)
    and equal known servers and configured pools."""
    return a[0] is b[0] and a[1:] == b[1:]


def _mark_down(health: SourceHealth, started: float, message: str) -> None:
    log.warning("cannot read a Prometheus", extra=fields(server=health.prometheus, err=message))
    message = f"prometheus {health.prometheus}: {message}"
    health.record_error(message)
    health.mark(False, time.monotonic() - started, message)


class ClusterSource(Protocol):
    health: SourceHealth

    def snapshot(self) -> ClusterSnapshot: ...

    def set_pod_scope(self, services: Sequence[Service]) -> None: ...

    async def ensure_pods_synced(self, timeout: float) -> None: ...  # noqa: ASYNC109

    def is_synced(self) -> bool: ...

    def scope_ready(self) -> bool: ...


class TargetSource(Protocol):
    health: SourceHealth

    @property
    def declared(self) -> Declared:
        """Where the user declared the server in its fleet (the fleet file)."""
        ...

    @property
    def kind(self) -> str:
        """What answers on the URL (sources.prometheus.server_kind)."""
        ...

    @property
    def pool_active_counts(self) -> Mapping[str, int]: ...

    async def read_config(self) -> LoadedConfig | None: ...

    async def collect(
        self, pools_to_refresh: Collection[str] | None = None, *, one_pool_at_a_time: bool = False
    ) -> PrometheusSnapshot:
        """one_pool_at_a_time: read the pools strictly in turn (re-reads,
        see TargetPoller.poll), else a few at once."""
        ...

    async def pool_target_counts(self) -> dict[str, int] | None: ...

    @property
    def discovery_settled(self) -> bool:
        """Its discovery has delivered to every pool it runs, as its last
        pool counts tell (sources.prometheus.source.discovery_settled)."""
        ...


class TargetPoller:
    """Decides how much of one Prometheus to read this cycle.

    A full target list is the expensive part (hundreds of MB at 100k
    nodes). Each cycle reads the Prometheus's own /metrics, a few hundred
    KB, and re-fetches only the pools whose active-target count changed.
    Equal counts can hide a swapped node, so every pool is re-read on the
    slower `full_refresh_seconds` interval all the same."""

    def __init__(self, source: TargetSource, full_refresh_seconds: float) -> None:
        self.source = source
        self._full_refresh_seconds = full_refresh_seconds
        self._last_full = float("-inf")
        self._last: PrometheusSnapshot | None = None
        self._config: LoadedConfig | None = None

    async def poll(self) -> PrometheusSnapshot:
        """Raises SourceError; the caller keeps the last good snapshot."""
        now = time.monotonic()
        # Read every cycle: a reload (the role switch of the migration) must
        # show in the very next comparison, and the configuration is small
        # next to one target list.
        config = await self.source.read_config()
        reloaded = config != self._config
        self._config = config
        # A re-read reads the pools in turn: the last snapshot serves
        # meanwhile, so its time matters little, while each pool read at
        # the same time is one more answer held whole in the Prometheus's
        # heap (bench/analysis.md, issue #24). Only the first read, which
        # readiness waits for, reads a few pools at once.
        in_turn = self._last is not None
        if self._last is None or reloaded or now - self._last_full >= self._full_refresh_seconds:
            snapshot = await self.source.collect(one_pool_at_a_time=in_turn)
            self._last_full = now
        else:
            changed = await self._changed_pools()
            if changed is not None and not changed:
                # The count check answered, so the source is up; its
                # targets are the ones read last time.
                self.source.health.mark(True, time.monotonic() - now)
                return self._last
            snapshot = await self.source.collect(
                pools_to_refresh=changed, one_pool_at_a_time=in_turn
            )
            if changed is None:
                self._last_full = now
        self._last = snapshot
        return snapshot

    async def _changed_pools(self) -> set[str] | None:
        """Pools whose count moved; None when counts are unavailable (then
        everything is read)."""
        counts = await self.source.pool_target_counts()
        if counts is None:
            return None
        known = self.source.pool_active_counts
        # A pool without targets may be counted 0 or not listed at all (no
        # scrape_pools API: vmagent lists only pools that have targets).
        return {p for p in counts.keys() | known.keys() if counts.get(p, 0) != known.get(p, 0)}


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What a report is computed from, compared by identity: the sources
    hand out the same objects for as long as nothing changed."""

    cluster: ClusterSnapshot | None
    prometheus: tuple[PrometheusSnapshot, ...]
    servers: tuple[ServerState, ...]
    remembered: tuple[tuple[str, int], ...]

    def same_as(self, other: _Inputs) -> bool:
        if self.servers != other.servers or self.remembered != other.remembered:
            return False
        if len(self.prometheus) != len(other.prometheus) or any(
            a is not b for a, b in zip(self.prometheus, other.prometheus, strict=True)
        ):
            return False
        a, b = self.cluster, other.cluster
        if a is None or b is None:
            return a is b
        if any(getattr(a, f) is not getattr(b, f) for f in _CLUSTER_FIELDS):
            return False
        return a.pods.keys() == b.pods.keys() and all(a.pods[k] is b.pods[k] for k in a.pods)


_CLUSTER_FIELDS = ("nodes", "services", "endpoints", "endpointslices", "daemonsets")


@dataclass(slots=True)
class CycleResult:
    report: CoverageReport | None
    exposition: bytes
    complete: bool
    """Every source answered in this cycle."""
    readiness: Sequence[Readiness] = ()
    """Migration readiness per Prometheus Operator CR; empty where the
    Operator is absent."""
    servers: int = 0
    """Prometheus servers given or found (readable or not) in this cycle:
    0 means nothing was judged, never full coverage."""
    findings: Sequence[DiscoveryFinding] = ()
    """What discovery found but cannot use (model.discovery)."""
    unread: Sequence[FoundServer] = ()
    """Servers found that cannot be read now, each with why."""
    urls: Mapping[str, str] = field(default_factory=dict)
    """Each server's URL, given or found."""
    evidence: Evidence = NO_EVIDENCE
    """Kubernetes' events that confirm findings (model.evidence)."""


class CycleRunner:
    """Runs collection cycles (`run_cycle`) over the sources, and keeps what
    one cycle hands to the next: the last good answer of each Prometheus,
    the pools that discovered each Service, the last report while its
    inputs are unchanged. The interval between cycles is app.py's."""

    def __init__(
        self,
        cluster: ClusterSource,
        prometheus: Sequence[TargetSource],
        scope: Scope,
        missing_info_limit: int = defaults.MISSING_TARGET_SERIES_LIMIT,
        pod_sync_timeout: float = parse_seconds(defaults.KUBERNETES_SYNC_TIMEOUT),
        full_refresh_seconds: float = 0.0,
        stale_after_seconds: float = parse_seconds(defaults.PROMETHEUS_STALE_AFTER),
        source_deadline: float = parse_seconds(defaults.SOURCE_DEADLINE),
        discovery_grace_seconds: float = parse_seconds(defaults.PROMETHEUS_DISCOVERY_GRACE),
    ) -> None:
        self._cluster = cluster
        self._given = [TargetPoller(p, full_refresh_seconds) for p in prometheus]
        self._full_refresh_seconds = full_refresh_seconds
        self._followed: Followed[TargetSource] | None = None
        """The servers discovery finds (servers.Followed); None: off."""
        self._found: dict[str, TargetPoller] = {}
        self._discovery_health: SourceHealth | None = None
        self._discovery_listed: Callable[[], Awaitable[object]] | None = None
        self._no_server_said = -1
        """The cycle that last logged NO_SERVER; -1 while servers exist."""
        self._lagging: set[str] = set()
        """Found servers not judged yet: their configuration lags their
        object (a fresh server's empty pools are still_discovering instead)."""
        self._stale_after = stale_after_seconds
        self._discovery_grace = discovery_grace_seconds
        """How long after a server's start its empty pools are not losses
        (defaults.PROMETHEUS_DISCOVERY_GRACE says why)."""
        self._last_success: dict[str, float] = {}
        """Monotonic time of each server's last good answer."""
        self._remembered: dict[str, dict[ServiceKey, dict[str, str]]] = {}
        self._remembered_inputs: tuple[object, ...] | None = None
        self._remembered_version: dict[str, int] = {}
        self._unresolved: set[tuple[str, str, str]] = set()
        self._operator: OperatorSource | None = None
        self._events: EventSource | None = None
        self._growth = GrowthTracker()
        self._selection = SelectionMemo()
        self._readiness: list[Readiness] = []
        self._scope = scope
        self._missing_info_limit = missing_info_limit
        self._pod_sync_timeout = pod_sync_timeout
        self._source_deadline = source_deadline
        """Seconds one source may take per cycle: a slow Prometheus is cut
        off and marked down, and the cycle goes on with the others."""
        self._last_good: dict[str, PrometheusSnapshot] = {}
        self.cycles_total = 0
        self._memo: tuple[_Inputs, CoverageReport | None, bytes] | None = None
        self._grouped: (
            tuple[tuple[PrometheusSnapshot, ...], dict[ServiceKey, ServiceTargets]] | None
        ) = None
        self._discovering: Discovering = {}

    @property
    def _prometheus(self) -> list[TargetPoller]:
        """Every server read this cycle: given ones, then found ones."""
        return [*self._given, *self._found.values()]

    def set_discovery(
        self,
        followed: Followed[TargetSource],
        health: SourceHealth,
        listed: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Judge the servers discovery finds too (servers.Followed); the
        first cycle awaits `listed` (discovery's first lists) before it
        reads any server."""
        self._followed = followed
        self._discovery_health = health
        self._discovery_listed = listed

    async def _follow(self) -> None:
        """The found servers in step with the cluster, before any is read."""
        if self._followed is None:
            return
        close, forget = self._followed.follow()
        for name in forget:
            self._found.pop(name, None)
            self._forget(name)
        for source in close:
            closer = getattr(source, "close", None)
            if closer is not None:
                await closer()
        for name, source in self._followed.sources.items():
            if name not in self._found:
                self._found[name] = TargetPoller(source, self._full_refresh_seconds)

    def _say_lag(self, server: str, lag: str) -> None:
        """Once per server while its configuration lags its object."""
        if lag and server not in self._lagging:
            log.info(
                "server found is not judged yet: its replica's coverage is unknown meanwhile",
                extra=fields(server=server, why=lag),
            )
        if lag:
            self._lagging.add(server)
        else:
            self._lagging.discard(server)

    def _found_by(self, poller: TargetPoller) -> str:
        name = poller.source.health.prometheus
        found = self._followed.found.get(name) if self._followed else None
        if found is not None and name in self._found:
            return found.found_by
        return str(getattr(getattr(poller.source, "endpoint", None), "found_by", ""))

    def _forget(self, server: str) -> None:
        """Nothing a server said counts any more: it is gone, replaced, or
        its URL turned out to front several servers."""
        self._last_good.pop(server, None)
        self._last_success.pop(server, None)
        if self._remembered.pop(server, None) is not None:
            self._remembered_version.pop(server, None)
            self._remembered_inputs = None

    async def _collect_prometheus(self, poller: TargetPoller) -> bool:
        health = poller.source.health
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._source_deadline):
                snapshot = await poller.poll()
        except SeveralServers as err:
            # Never compared as one server: its last answers mixed servers too.
            log.warning("cannot read a Prometheus", extra=fields(server=health.prometheus, err=err))
            health.record_error(str(err))
            health.mark(False, time.monotonic() - started, str(err))
            self._forget(health.prometheus)
            return False
        except SourceError as err:
            # Only the last good data is ours. The source marks its own
            # health in collect(), but not every request of a poll goes
            # through it (the configuration read first): mark it here too,
            # or a dead Prometheus keeps source_up 1.
            log.warning("cannot read a Prometheus", extra=fields(server=health.prometheus, err=err))
            health.mark(False, time.monotonic() - started, str(err))
            return False
        except TimeoutError:
            message = f"not done within the {self._source_deadline:g}s source deadline"
            _mark_down(health, started, message)
            return False
        except Exception as err:
            _mark_down(health, started, f"unexpected {type(err).__name__}: {err}")
            return False
        name = health.prometheus
        self._last_good[name] = snapshot
        self._last_success[name] = time.monotonic()
        return True

    def _server_states(self) -> tuple[ServerState, ...]:
        """Every configured server, known or not, with its place in the
        fleet as its last good answer told it."""
        now = time.monotonic()
        wall = time.time()
        out = []
        for poller in self._prometheus:
            name = poller.source.health.prometheus
            last = self._last_good.get(name)
            # A server that never answered: where the user declared it, else alone.
            identity = (
                last.server_identity
                if last
                else identify(name, {}, (), poller.source.declared, poller.source.kind)
            )
            since = self._last_success.get(name)
            known = since is not None and now - since <= self._stale_after
            if known and last is not None and last.jobs is not None:
                # A new shard's configuration may lag its object: unknown
                # until it matches. A fresh server's empty pools are the
                # other wait, still_discovering, decided per snapshot below.
                lag = configuration_lags(identity, hashmod_shard(tuple(last.jobs)))
                self._say_lag(name, lag)
                known = not lag
            found_by = self._found_by(poller)
            # A Thanos Query stands for the stores behind it, each a server
            # whose own answer may be unusable (sources.prometheus.thanos).
            for snap in last.members if last and last.members else (last,):
                why = snap.unknown_reason if snap else ""
                if snap is not None and snap is not last:
                    name, identity = snap.name, snap.server_identity
                discovering = False
                if (
                    known
                    and not why
                    and snap is not None
                    and snap.started is not None
                    # Thanos stores (members) tell no start; the counts
                    # are the polled server's own.
                    and not (snap is last and poller.source.discovery_settled)
                ):
                    uptime = wall - snap.started
                    if uptime < self._discovery_grace:
                        discovering = True
                        why = (
                            f"still discovering: started {max(0.0, uptime):.0f}s ago, its service "
                            f"discovery may not have delivered every target within "
                            f"{self._discovery_grace:g}s"
                        )
                out.append(
                    ServerState(
                        name,
                        identity,
                        known and not why,
                        why,
                        discovering=discovering,
                        found_by=found_by,
                    )
                )
        for server in self._followed.placeholders if self._followed else ():
            # Found, not readable (no pod yet, not Ready, listenLocal...):
            # a server that never answers, its replica's share unknown.
            identity = server.identity or ServerIdentity.alone(server.name)
            out.append(ServerState(server.name, identity, False, found_by=server.found_by))
        return tuple(out)

    def _remember(
        self,
        grouped: Mapping[ServiceKey, ServiceTargets],
        servers: Sequence[ServerState],
    ) -> None:
        """Which pools discovered which Service, kept while the pool stays
        configured, so that a pool whose targets vanish (a selector typo)
        keeps being compared instead of falling silent."""
        known = {s.name for s in servers if s.known}
        configured = {
            name: _configured_pools(snap) for name, snap in self._last_good.items() if name in known
        }
        # Runs on the event loop every cycle: with the same targets, the
        # same servers known and the same configurations there is nothing
        # new to remember. It reads the distinct (server, pool, role) that
        # _grouped_and_pools found off the loop: going through a million
        # targets here held /metrics for ~100 ms at 100k nodes.
        inputs = (grouped, frozenset(known), tuple(sorted(configured.items(), key=_first)))
        if self._remembered_inputs is not None and _same_inputs(self._remembered_inputs, inputs):
            return
        self._remembered_inputs = inputs
        for key, distinct in self._discovering.items():
            for server, pool, role in distinct:
                if server not in known:
                    continue
                listed = configured.get(server)
                if listed is not None and pool not in listed:
                    continue
                pools = self._remembered.setdefault(server, {}).setdefault(key, {})
                if pools.get(pool) != role:
                    pools[pool] = role
                    self._bump(server)
        for server, services in self._remembered.items():
            listed = configured.get(server)
            if listed is None:
                continue
            for pools in services.values():
                for pool in [p for p in pools if p not in listed]:
                    del pools[pool]
                    self._bump(server)

    def set_operator(self, source: OperatorSource | None) -> None:
        """Turn on migration readiness (sources.operator)."""
        self._operator = source

    def set_events(self, source: EventSource | None) -> None:
        """Read Kubernetes' events as evidence (sources.kubernetes.events)."""
        self._events = source

    async def _evidence(self) -> Evidence:
        # EventSource.collect says how the read went and never raises for
        # what the server answers: evidence never fails a cycle.
        return NO_EVIDENCE if self._events is None else await self._events.collect()

    async def _assess_migration(self, cluster: ClusterSnapshot | None) -> list[Readiness]:
        if self._operator is None or cluster is None:
            return []
        try:
            objects = await self._operator.collect()
        except SourceError as err:
            # Readiness is advice: keep the last, never fail the cycle.
            log.warning("cannot assess migration readiness", extra=fields(err=err))
            return self._readiness
        if objects is None:
            self._readiness = []
            return []
        counts = {k: sum(e.subset_sizes) for k, e in cluster.endpoints.items()}
        self._growth.observe(time.time(), counts)
        growth = self._growth.view(counts)
        self._readiness = [
            assess(
                cr,
                objects.monitors,
                objects.namespace_labels,
                cluster,
                growth,
                objects.endpointslice_rbac.get((cr.namespace, cr.service_account)),
            )
            for cr in objects.crs
        ]
        return self._readiness

    def _log_unresolved(self, report: CoverageReport) -> None:
        """One line when a Service becomes unresolvable (the series
        scrape_coverage_service_unresolved says it every cycle)."""
        now = {(u.namespace, u.service, u.reason) for u in report.unresolved}
        for namespace, service, reason in sorted(now - self._unresolved):
            log.warning(
                "cannot tell what a Service should hold",
                extra=fields(namespace=namespace, service=service, reason=reason),
            )
        self._unresolved = now

    def _bump(self, server: str) -> None:
        self._remembered_version[server] = self._remembered_version.get(server, 0) + 1

    async def _scope_pods_early(self) -> None:
        """First cycle: the pods of the Services known to be in scope
        (truncated Endpoints, flags) are listed as soon as Services and
        Endpoints are, alongside the Nodes rather than after them."""
        # Polled: the source has no event for this, and it is the first
        # second or so of the process only.
        while not self._cluster.scope_ready():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if not self._cluster.is_synced():
            self._scope_pods(self._cluster.snapshot(), ())

    def _scope_pods(self, cluster: ClusterSnapshot, discovered: Iterable[ServiceKey]) -> None:
        self._cluster.set_pod_scope(services_in_scope(self._scope, cluster, discovered))

    async def _targets_by_service(
        self, prometheus: Sequence[PrometheusSnapshot]
    ) -> dict[ServiceKey, ServiceTargets]:
        """Targets grouped per Service, regrouped only when a snapshot changed
        (300k targets at 100k nodes: most of a second of CPU)."""
        key = tuple(prometheus)
        cached = self._grouped
        if (
            cached is None
            or len(cached[0]) != len(key)
            or any(a is not b for a, b in zip(cached[0], key, strict=True))
        ):
            # What was made from the previous snapshots goes first: it holds
            # their Targets, and at 100k nodes a re-read that changed every
            # pool otherwise holds two sets of them through the comparison.
            self._grouped = None
            self._memo = None
            self._remembered_inputs = None
            grouped, discovering = await asyncio.to_thread(_grouped_and_pools, prometheus)
            cached = (key, grouped)
            self._grouped = cached
            self._discovering = discovering
        return cached[1]

    async def _cluster_snapshot(
        self, grouped: Mapping[ServiceKey, object], prometheus: Sequence[PrometheusSnapshot]
    ) -> ClusterSnapshot | None:
        """The cluster as the caches know it, with pods of every in-scope
        Service; None until the first complete list of every resource."""
        if not self._cluster.is_synced():
            return None
        start = time.monotonic()
        cluster = self._cluster.snapshot()
        # The Services that build_report compares: discovered, meant by a
        # job, or remembered (issue #19 item 9).
        scraped = services_scraped(
            cluster, each_server(prometheus), grouped, self._remembered, self._selection
        )
        self._scope_pods(cluster, scraped)
        try:
            await self._cluster.ensure_pods_synced(
                min(self._pod_sync_timeout, self._source_deadline)
            )
        except SourceError as err:
            # Services whose pods are not listed yet are withheld this cycle
            # (the model never guesses an empty expected set); next cycle
            # catches up.
            log.warning("pod scopes not listed yet", extra=fields(err=err))
        self._cluster.health.duration_seconds = time.monotonic() - start
        return self._cluster.snapshot()

    async def _compare(
        self,
        cluster: ClusterSnapshot | None,
        prometheus: list[PrometheusSnapshot],
        grouped: dict[ServiceKey, ServiceTargets],
        servers: tuple[ServerState, ...],
    ) -> tuple[CoverageReport | None, bytes]:
        """The report and its rendered families, reused while no source
        changed: in the steady state of a large cluster most cycles see the
        very same caches and target lists, and comparing 100k nodes again
        would cost seconds of CPU for nothing."""
        remembered = tuple(sorted(self._remembered_version.items()))
        inputs = _Inputs(cluster, tuple(prometheus), servers, remembered)
        if self._memo is not None and self._memo[0].same_as(inputs):
            return self._memo[1], self._memo[2]
        report = None
        if cluster is not None:
            # CPU-bound (up to seconds at 100k nodes): off the event loop so
            # that /metrics and the watches keep flowing.
            memory = {k: {s: dict(p) for s, p in v.items()} for k, v in self._remembered.items()}
            # The lists leave glibc's heap full of freed page buffers, and the
            # comparison's objects come from new pymalloc arenas, not from
            # those holes: trimmed first, its peak no longer stacks on them
            # (100k first cycle: collector peak 359-366 -> 278-283 MB).
            await asyncio.to_thread(heap.trim)
            report = await asyncio.to_thread(
                build_report,
                self._scope,
                cluster,
                prometheus,
                servers,
                grouped,
                memory,
                self._selection,
            )
            self._log_unresolved(report)
        limit = self._missing_info_limit
        coverage = await asyncio.to_thread(
            render_coverage, ExporterState(report, missing_info_limit=limit)
        )
        self._memo = (inputs, report, coverage)
        # malloc_trim walks the whole heap (~100 ms at 100k nodes); ctypes
        # releases the GIL, so in a thread it costs the event loop nothing.
        await asyncio.to_thread(heap.trim)

        return report, coverage

    async def run_cycle(self, cluster_listed: Awaitable[object] | None = None) -> CycleResult:
        """One collection. cluster_listed (the first cycle): what waits for
        the cluster's first lists; Prometheus is read meanwhile rather than
        after them, since at 100k nodes each is seconds of work, and the
        target lists are decoded in another process while this one parses
        the Nodes."""
        start = time.monotonic()
        if self._discovery_listed is not None:
            listed, self._discovery_listed = self._discovery_listed, None
            await listed()
        await self._follow()
        reads = asyncio.gather(*(self._collect_prometheus(p) for p in self._prometheus))
        if cluster_listed is not None:
            early = asyncio.ensure_future(self._scope_pods_early())
            try:
                await cluster_listed
            except BaseException:
                reads.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reads
                raise
            finally:
                early.cancel()
        if self._cluster.is_synced():
            # Start listing the pods of every Service already known to be in
            # scope (truncated Endpoints, flags, last cycle's discoveries)
            # while Prometheus is read, rather than after it: at 100k nodes
            # each is seconds of transfer.
            known = self._grouped[1].keys() if self._grouped else ()
            self._scope_pods(self._cluster.snapshot(), known)
        answered = await reads
        prometheus = list(self._last_good.values())
        grouped = await self._targets_by_service(prometheus)
        servers = self._server_states()
        self._remember(grouped, servers)
        cluster = await self._cluster_snapshot(grouped, prometheus)
        report, coverage = await self._compare(cluster, prometheus, grouped, servers)
        readiness = await self._assess_migration(cluster)
        evidence = await self._evidence() if report is not None else NO_EVIDENCE
        self.cycles_total += 1
        discovery = [self._discovery_health] if self._discovery_health else []
        state = ExporterState(
            report=report,
            sources=self.health(),
            missing_info_limit=self._missing_info_limit,
            cycles_total=self.cycles_total,
            cycle_duration_seconds=time.monotonic() - start,
            last_cycle_timestamp=time.time(),
            readiness=readiness,
        )
        exposition = coverage + render_exporter(state)
        complete = (
            all(answered)
            and self._cluster.health.up
            and all(h.up for h in discovery)
            and report is not None
            and bool(servers)
            and all(s.known for s in servers)
        )
        self._say_no_server(not servers)
        followed = self._followed
        return CycleResult(
            report,
            exposition,
            complete,
            readiness,
            len(servers),
            followed.findings() if followed else (),
            followed.placeholders if followed else (),
            self._urls(),
            evidence,
        )

    def health(self) -> list[SourceHealth]:
        """Every source this cycle reads: Kubernetes, discovery, each server."""
        discovery = [self._discovery_health] if self._discovery_health else []
        return [self._cluster.health, *discovery, *(p.source.health for p in self._prometheus)]

    def _urls(self) -> dict[str, str]:
        out = {}
        for poller in self._prometheus:
            endpoint = getattr(poller.source, "endpoint", None)
            if endpoint is not None:
                out[poller.source.health.prometheus] = endpoint.url
        for server in self._followed.placeholders if self._followed else ():
            if server.url:
                out[server.name] = server.url
        return out

    async def close_sources(self) -> None:
        """Close every server's source, given and found."""
        for poller in self._prometheus:
            closer = getattr(poller.source, "close", None)
            if closer is not None:
                await closer()

    def _say_no_server(self, none: bool) -> None:
        """Once when it starts, then every 60 cycles while it holds."""
        if not none:
            self._no_server_said = -1
        elif self._no_server_said < 0 or self.cycles_total - self._no_server_said >= 60:
            log.warning(
                "no Prometheus server was found or given: nothing was judged",
                extra=fields(hint=NO_SERVER_HINT),
            )
            self._no_server_said = self.cycles_total


def _configured_pools(snap: PrometheusSnapshot) -> set[str] | None:
    """The pools the server runs, when it says so (configuration or the
    scrape_pools API); None for servers that only show pools with targets
    (Thanos Query), where forgetting vanished pools cannot be done safely."""
    if snap.jobs is not None:
        return {j.name for j in snap.jobs}
    return set(snap.pools) if snap.pools_listed else None
