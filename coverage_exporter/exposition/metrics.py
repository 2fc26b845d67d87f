"""Renders one cycle's state as Prometheus exposition text.

The METRICS table is the metric contract in code (docs/metrics.md is the
same contract in words; a test keeps them equal). Rendering happens once
per cycle; `/metrics` serves the stored bytes, so a scrape costs nothing
against Kubernetes or Prometheus and answers in microseconds at any scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coverage_exporter import build, defaults
from coverage_exporter.health import SOURCE_KUBERNETES, SourceHealth
from coverage_exporter.model.coverage import ServiceCoverage
from coverage_exporter.model.gaps import STAGE_PROMETHEUS
from coverage_exporter.model.readiness import Readiness
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.model.stages import Stage, judged_stages, service_stages

PREFIX = "scrape_coverage_"

Sample = tuple[Sequence[str], float]

# Every family is rendered at the end of a collection cycle, never at scrape
# time; the HELP text says so, since a scrape more often than --interval
# returns the same values.
HELP_SUFFIX = " Computed once per collection cycle (--interval), not at scrape time."


@dataclass(slots=True)
class ExporterState:
    """Everything one rendering needs; built by the collector each cycle."""

    report: CoverageReport | None
    """None until the first cycle with Kubernetes data."""
    sources: Sequence[SourceHealth] = ()
    missing_info_limit: int = defaults.MISSING_TARGET_SERIES_LIMIT
    cycles_total: int = 0
    cycle_duration_seconds: float = 0.0
    last_cycle_timestamp: float = 0.0
    readiness: Sequence[Readiness] = ()
    _missing: tuple[list[Sample], list[Sample]] | None = field(default=None, init=False, repr=False)

    def missing_series(self) -> tuple[list[Sample], list[Sample]]:
        """The capped missing_target series and the omitted count per group;
        computed once, and only when the coverage families are rendered."""
        if self._missing is None:
            report = self.report
            self._missing = capped_missing(report, self.missing_info_limit) if report else ([], [])
        return self._missing


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: str
    """"gauge" or "counter"."""
    help: str
    labels: tuple[str, ...]
    samples: Callable[[ExporterState], Iterable[Sample]]


def _services(state: ExporterState) -> Sequence[ServiceCoverage]:
    return state.report.services if state.report else ()


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _expected(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        yield (s.namespace, s.service, s.source), s.expected


def _endpoints_addresses(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        if s.endpoints is not None:
            yield (s.namespace, s.service, "true"), s.endpoints.ready
            yield (s.namespace, s.service, "false"), s.endpoints.not_ready


def _endpoints_truncated(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        if s.endpoints is not None:
            yield (s.namespace, s.service), float(s.endpoints.truncated)


def _skip_mirror(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        if s.endpoints is not None and s.endpoints.skip_mirror is not None:
            yield (s.namespace, s.service), float(s.endpoints.skip_mirror)


def _slice_endpoints(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        for (managed_by, ready), count in sorted(s.slices.endpoints.items()):
            yield (s.namespace, s.service, managed_by, _bool(ready)), count


def _slice_terminating(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        for managed_by, count in sorted(s.slices.terminating.items()):
            yield (s.namespace, s.service, managed_by), count


def _mirroring_skipped(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        if s.slices.mirroring_skipped is not None:
            yield (s.namespace, s.service), s.slices.mirroring_skipped


def _missing_targets(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        for st in service_stages(s):
            if st.kind != STAGE_PROMETHEUS:
                yield (s.namespace, s.service, st.kind), st.count or 0


def _expected_unnamed(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        yield (s.namespace, s.service), s.unnamed


def _prometheus_targets(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        for (server, pool, role, health), count in sorted(s.target_counts.items()):
            yield (s.namespace, s.service, server, pool, role, health), count


def _pools(state: ExporterState) -> Iterator[tuple[ServiceCoverage, Stage]]:
    for s in _services(state):
        for st in service_stages(s):
            if st.kind == STAGE_PROMETHEUS:
                yield s, st


def _pool_labels(s: ServiceCoverage, st: Stage) -> tuple[str, ...]:
    return (s.namespace, s.service, st.pool, st.role, st.scraper, st.replica)


def _prometheus_missing(state: ExporterState) -> Iterator[Sample]:
    for s, st in _pools(state):
        if st.count is not None:
            yield _pool_labels(s, st), st.count


def _prometheus_duplicates(state: ExporterState) -> Iterator[Sample]:
    for s, st in _pools(state):
        yield _pool_labels(s, st), len(st.duplicated)


def _prometheus_ghosts(state: ExporterState) -> Iterator[Sample]:
    for s, st in _pools(state):
        yield _pool_labels(s, st), len(st.ghosts)


def _prometheus_unknown(state: ExporterState) -> Iterator[Sample]:
    for s, st in _pools(state):
        if not st.known:
            yield _pool_labels(s, st), st.unknown


def _gap_targets(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        for st in judged_stages(s):
            labels = (s.namespace, s.service, st.kind, st.pool, st.role, st.scraper, st.replica)
            yield labels, st.count or 0


def _unresolved(state: ExporterState) -> Iterator[Sample]:
    if state.report is not None:
        for u in state.report.unresolved:
            yield (u.namespace, u.service, u.reason), 1


def _unreached(state: ExporterState) -> Iterator[Sample]:
    """Per DaemonSet and taint key and effect (the value is left out: a
    tenant's name in it would multiply the series)."""
    if state.report is not None:
        for u in state.report.unreached:
            counts: dict[tuple[str, str], int] = {}
            for (key, _, effect), names in u.by_taint.items():
                counts[(key, effect)] = counts.get((key, effect), 0) + len(names)
            for (key, effect), n in sorted(counts.items()):
                yield (u.namespace, u.daemonset, key, effect), n


def _replica_known(state: ExporterState) -> Iterator[Sample]:
    if state.report is not None:
        for key, replica in sorted(state.report.fleet.replicas.items()):
            yield key, float(replica.known)


def _server_info(state: ExporterState) -> Iterator[Sample]:
    if state.report is not None:
        for replica in state.report.fleet.replicas.values():
            for server in replica.servers:
                ident = server.identity
                labels = (
                    server.name,
                    replica.scraper,
                    replica.replica,
                    str(ident.shard),
                    str(replica.shards),
                    ident.how,
                    ident.kind,
                    server.found_by,
                )
                yield labels, 1


def _servers(state: ExporterState) -> Iterator[Sample]:
    if state.report is not None:
        yield (), sum(len(r.servers) for r in state.report.fleet.replicas.values())


def _nodes(state: ExporterState) -> Iterator[Sample]:
    if state.report is not None:
        yield ("true",), state.report.nodes_ready
        yield ("false",), state.report.nodes_not_ready


def _service_count(state: ExporterState) -> Iterator[Sample]:
    if state.report is not None:
        yield (), len(state.report.services)


def _cr(r: Readiness) -> tuple[str, str, str]:
    return (r.cr.namespace, r.cr.name, r.cr.kind)


def _migration_info(state: ExporterState) -> Iterator[Sample]:
    for r in state.readiness:
        yield (*_cr(r), r.role, r.kubelet_state, r.next_step), 1


def _migration_safe(state: ExporterState) -> Iterator[Sample]:
    for r in state.readiness:
        yield _cr(r), float(r.safe_now)


def _over_capacity(state: ExporterState) -> Iterator[Sample]:
    for r in state.readiness:
        yield (*_cr(r), "reached"), len(r.over_capacity)
        yield (*_cr(r), "forecast"), len(r.soon_over_capacity)


def _rbac(state: ExporterState) -> Iterator[Sample]:
    for r in state.readiness:
        if r.endpointslice_rbac is not None:
            yield _cr(r), float(r.endpointslice_rbac)


def _source(attr: Callable[[SourceHealth], float]) -> Callable[[ExporterState], Iterator[Sample]]:
    def samples(state: ExporterState) -> Iterator[Sample]:
        for h in state.sources:
            yield (h.source, h.prometheus), attr(h)

    return samples


def _kubernetes(
    attr: Callable[[SourceHealth], float],
) -> Callable[[ExporterState], Iterator[Sample]]:
    def samples(state: ExporterState) -> Iterator[Sample]:
        for h in state.sources:
            if h.source == SOURCE_KUBERNETES:
                yield (), attr(h)

    return samples


def _constant(
    value: Callable[[ExporterState], float],
) -> Callable[[ExporterState], Iterator[Sample]]:
    def samples(state: ExporterState) -> Iterator[Sample]:
        yield (), value(state)

    return samples


SERVICE = ("namespace", "service")
SOURCE = ("source", "server")
POOL = (*SERVICE, "scrape_pool", "role", "scraper", "scraper_replica")
CR = ("namespace", "name", "kind")

COVERAGE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "expected_targets",
        "gauge",
        "Targets that should exist for the Service, by where the expectation comes from.",
        (*SERVICE, "source"),
        _expected,
    ),
    MetricSpec(
        "endpoints_addresses",
        "gauge",
        "Addresses in the Service's Endpoints object.",
        (*SERVICE, "ready"),
        _endpoints_addresses,
    ),
    MetricSpec(
        "endpoints_truncated",
        "gauge",
        "1 when the Endpoints object carries the endpoints.kubernetes.io/over-capacity annotation.",
        SERVICE,
        _endpoints_truncated,
    ),
    MetricSpec(
        "endpoints_skip_mirror",
        "gauge",
        "1 when selector-less Endpoints are labelled endpointslice.kubernetes.io/skip-mirror=true.",
        SERVICE,
        _skip_mirror,
    ),
    MetricSpec(
        "endpointslice_endpoints",
        "gauge",
        "Distinct endpoints over the Service's EndpointSlices.",
        (*SERVICE, "managed_by", "ready"),
        _slice_endpoints,
    ),
    MetricSpec(
        "endpointslice_terminating_endpoints",
        "gauge",
        "EndpointSlice endpoints with the terminating condition.",
        (*SERVICE, "managed_by"),
        _slice_terminating,
    ),
    MetricSpec(
        "endpointslice_mirroring_skipped",
        "gauge",
        "Addresses of selector-less Endpoints left out of the mirrored EndpointSlices.",
        SERVICE,
        _mirroring_skipped,
    ),
    MetricSpec(
        "missing_targets",
        "gauge",
        "Expected targets absent from the Endpoints object or the EndpointSlices.",
        (*SERVICE, "stage"),
        _missing_targets,
    ),
    MetricSpec(
        "expected_unnamed_targets",
        "gauge",
        "Expected targets known only by count (a DaemonSet's nodes without a pod that its "
        "placement rules do not name); missing at every stage.",
        SERVICE,
        _expected_unnamed,
    ),
    MetricSpec(
        "prometheus_targets",
        "gauge",
        "Active targets one Prometheus server discovered from the Service.",
        (*SERVICE, "server", "scrape_pool", "role", "health"),
        _prometheus_targets,
    ),
    MetricSpec(
        "prometheus_missing_targets",
        "gauge",
        "Expected targets that one replica's scrape pool (the union of its shards) does not "
        "discover; absent while the replica's coverage is unknown.",
        POOL,
        _prometheus_missing,
    ),
    MetricSpec(
        "prometheus_unknown_targets",
        "gauge",
        "Expected targets whose coverage by the replica's scrape pool cannot be told: a shard "
        "has not answered within --prometheus-stale-after, or never.",
        POOL,
        _prometheus_unknown,
    ),
    MetricSpec(
        "prometheus_duplicate_targets",
        "gauge",
        "Nodes (or pods) whose target one server of the replica discovers more than once in "
        "the scrape pool: scraped twice. The audit names them.",
        POOL,
        _prometheus_duplicates,
    ),
    MetricSpec(
        "prometheus_ghost_targets",
        "gauge",
        "Nodes (or pods) that no longer exist and that the replica's scrape pool still "
        "discovers targets for (a stale EndpointSlice or Endpoints). The audit names them.",
        POOL,
        _prometheus_ghosts,
    ),
    MetricSpec(
        "gap_targets",
        "gauge",
        "Expected targets lost where it counts: by a replica's scrape pool, or by the "
        "Kubernetes stage (Endpoints, EndpointSlices) that a pool of the matching role reads. "
        "0 where nothing is lost.",
        (*SERVICE, "stage", "scrape_pool", "role", "scraper", "scraper_replica"),
        _gap_targets,
    ),
    MetricSpec(
        "missing_target",
        "gauge",
        "1 per missing target, with why it is missing (reason, a closed set: "
        "docs/runbooks/causes.md), capped by --missing-target-series-limit shared fairly "
        "between Services, stages and pools.",
        (*SERVICE, "stage", "scrape_pool", "scraper", "scraper_replica", "node", "pod", "reason"),
        lambda s: s.missing_series()[0],
    ),
    MetricSpec(
        "missing_target_series_omitted",
        "gauge",
        "Missing targets of the Service, stage and pool left out of "
        "scrape_coverage_missing_target by the cap.",
        (*SERVICE, "stage", "scrape_pool", "scraper", "scraper_replica"),
        lambda s: s.missing_series()[1],
    ),
    MetricSpec(
        "service_unresolved",
        "gauge",
        "1 for an in-scope Service whose expected targets cannot be determined.",
        (*SERVICE, "reason"),
        _unresolved,
    ),
    MetricSpec(
        "daemonset_unreached_nodes",
        "gauge",
        "Nodes that a DaemonSet behind a compared Service, selecting no Nodes, never "
        "reaches: kept off by a taint it does not tolerate.",
        ("namespace", "daemonset", "taint_key", "taint_effect"),
        _unreached,
    ),
    MetricSpec(
        "replica_coverage_known",
        "gauge",
        "1 when every shard of the Prometheus replica answered within --prometheus-stale-after.",
        ("scraper", "scraper_replica"),
        _replica_known,
    ),
    MetricSpec(
        "server_info",
        "gauge",
        "1 per Prometheus server given or found, with where it stands in its fleet, what it "
        "is and how the exporter knows of it.",
        (
            "server",
            "scraper",
            "scraper_replica",
            "shard",
            "shards",
            "topology",
            "kind",
            "discovery",
        ),
        _server_info,
    ),
    MetricSpec(
        "servers",
        "gauge",
        "Prometheus servers given or found, readable or not; 0: nothing was judged.",
        (),
        _servers,
    ),
    MetricSpec(
        "nodes", "gauge", "Nodes in the cluster by their Ready condition.", ("ready",), _nodes
    ),
    MetricSpec("services", "gauge", "Services in scope in the last cycle.", (), _service_count),
    MetricSpec(
        "missing_target_series_limit",
        "gauge",
        "Cap on scrape_coverage_missing_target series.",
        (),
        _constant(lambda s: s.missing_info_limit),
    ),
)

# Families that depend on the sources' state and the cycle, rendered every
# cycle; the ones above depend only on the report and are rendered when it
# changes.
EXPORTER_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "source_up",
        "gauge",
        "1 when the source's last collection succeeded.",
        SOURCE,
        _source(lambda h: float(h.up)),
    ),
    MetricSpec(
        "source_duration_seconds",
        "gauge",
        "Time the source's last collection took.",
        SOURCE,
        _source(lambda h: h.duration_seconds),
    ),
    MetricSpec(
        "source_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the source's last successful collection.",
        SOURCE,
        _source(lambda h: h.last_success_timestamp),
    ),
    MetricSpec(
        "source_errors",
        "counter",
        "Failed requests to the source.",
        SOURCE,
        _source(lambda h: h.errors_total),
    ),
    MetricSpec(
        "source_requests",
        "counter",
        "Requests sent to the source.",
        SOURCE,
        _source(lambda h: h.requests_total),
    ),
    MetricSpec(
        "source_response_bytes",
        "counter",
        "Response body bytes read from the source.",
        SOURCE,
        _source(lambda h: h.response_bytes_total),
    ),
    MetricSpec(
        "kubernetes_pod_watches",
        "gauge",
        "Pod watches running: one per namespace and Service selector in scope.",
        (),
        _kubernetes(lambda h: h.pod_watches),
    ),
    MetricSpec(
        "kubernetes_pod_scopes_unwatched",
        "gauge",
        "Pod scopes left unwatched by --kubernetes-max-pod-watches; their Services are "
        "not compared.",
        (),
        _kubernetes(lambda h: h.pod_scopes_unwatched),
    ),
    MetricSpec(
        "cycle_duration_seconds",
        "gauge",
        "Time the last collection cycle took.",
        (),
        _constant(lambda s: s.cycle_duration_seconds),
    ),
    MetricSpec(
        "cycles", "counter", "Collection cycles completed.", (), _constant(lambda s: s.cycles_total)
    ),
    MetricSpec(
        "last_cycle_timestamp_seconds",
        "gauge",
        "Unix time the last cycle completed.",
        (),
        _constant(lambda s: s.last_cycle_timestamp),
    ),
    MetricSpec(
        "operator_migration_info",
        "gauge",
        "1 per Prometheus Operator Prometheus/PrometheusAgent: its discovery role, the state "
        "of the kubelet Service, and the next safe migration step.",
        (*CR, "service_discovery_role", "kubelet_state", "next_step"),
        _migration_info,
    ),
    MetricSpec(
        "operator_migration_safe",
        "gauge",
        "0 when the CR's discovery role loses targets (switched unsafely) or switching now "
        "would (unsafe to switch); 1 otherwise.",
        CR,
        _migration_safe,
    ),
    MetricSpec(
        "operator_services_over_capacity",
        "gauge",
        "Services of the CR's ServiceMonitors whose Endpoints reached 1000 addresses "
        '(capacity="reached") or will within 4 days at their recent growth ("forecast").',
        (*CR, "capacity"),
        _over_capacity,
    ),
    MetricSpec(
        "operator_endpointslice_rbac",
        "gauge",
        "1 when the CR's ServiceAccount may list and watch discovery.k8s.io EndpointSlices "
        "(SubjectAccessReview); absent when it cannot be checked.",
        CR,
        _rbac,
    ),
    MetricSpec(
        "build_info",
        "gauge",
        "Always 1; the version, git revision and Python version in labels.",
        ("version", "revision", "python_version"),
        lambda s: [(build.labels(), 1.0)],
    ),
)

METRICS = COVERAGE_METRICS + EXPORTER_METRICS


def exported_names() -> list[str]:
    """Every series name as it appears in the exposition (counters get _total)."""
    return [PREFIX + m.name + ("_total" if m.kind == "counter" else "") for m in METRICS]


MissingGroup = tuple[tuple[str, str, str, str, str, str], Stage]
"""(namespace, service, stage, scrape_pool, scraper, replica) and the stage."""


def _missing_groups(report: CoverageReport) -> list[MissingGroup]:
    return [
        ((s.namespace, s.service, st.kind, st.pool, st.scraper, st.replica), st)
        for s in report.services
        for st in service_stages(s)
        if st.missing
    ]


def fair_shares(sizes: Sequence[int], limit: int) -> list[int]:
    """How many of each group's items fit in `limit`, shared fairly: every
    group gets an equal share, and what a small group leaves goes to the
    others (water-filling). One 5,000-node kubelet pool cannot take every
    series from the other Services."""
    shares = [0] * len(sizes)
    remaining = limit
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for n, i in enumerate(order):
        fair = remaining // (len(order) - n)
        shares[i] = min(sizes[i], fair)
        remaining -= shares[i]
    return shares


def capped_missing(report: CoverageReport, limit: int) -> tuple[list[Sample], list[Sample]]:
    """The missing-target series within the cap, and per group how many the
    cap left out. Walks the stages' lists without copying them: a cut at
    100k nodes is hundreds of thousands of missing entries."""
    groups = _missing_groups(report)
    shares = fair_shares([len(st.missing or ()) for _, st in groups], limit)
    samples: list[Sample] = []
    omitted: list[Sample] = []
    for (key, st), share in zip(groups, shares, strict=True):
        missing = st.missing or ()
        cause = st.causes.lookup()
        samples.extend(((*key, m.node, m.pod, cause(m).value), 1.0) for m in missing[:share])
        omitted.append((key, len(missing) - share))
    return samples, omitted


class _StateCollector(Collector):
    def __init__(self, state: ExporterState, specs: Sequence[MetricSpec]) -> None:
        self._state = state
        self._specs = specs

    def collect(self) -> Iterator[Metric]:
        for spec in self._specs:
            family_type = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            help_text = spec.help + HELP_SUFFIX
            family = family_type(PREFIX + spec.name, help_text, labels=spec.labels)
            for labels, value in spec.samples(self._state):
                family.add_metric(list(labels), float(value))
            yield family


def _render(state: ExporterState, specs: Sequence[MetricSpec]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StateCollector(state, specs))
    return generate_latest(registry)


def render_coverage(state: ExporterState) -> bytes:
    """The families computed from the report alone (and the series cap)."""
    return _render(state, COVERAGE_METRICS)


def render_exporter(state: ExporterState) -> bytes:
    """The families about the sources and the cycle."""
    return _render(state, EXPORTER_METRICS)


def render(state: ExporterState) -> bytes:
    """The whole exposition text of one state, in the classic text format."""
    return render_coverage(state) + render_exporter(state)
