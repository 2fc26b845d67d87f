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

from coverage_exporter import __version__
from coverage_exporter.model.coverage import (
    STAGE_ENDPOINTS,
    STAGE_ENDPOINTSLICES,
    STAGE_PROMETHEUS,
    MissingTarget,
    ServiceCoverage,
)
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.sources.health import SourceHealth

PREFIX = "scrape_coverage_"

Sample = tuple[Sequence[str], float]


@dataclass(slots=True)
class ExporterState:
    """Everything one rendering needs; built by the collector each cycle."""

    report: CoverageReport | None
    """None until the first cycle with Kubernetes data."""
    sources: Sequence[SourceHealth] = ()
    missing_info_limit: int = 1000
    cycles_total: int = 0
    cycle_duration_seconds: float = 0.0
    last_cycle_timestamp: float = 0.0
    _missing: tuple[list[Sample], int] | None = field(default=None, init=False, repr=False)

    def missing_info(self) -> tuple[list[Sample], int]:
        """The capped missing_node_info series and how many the cap cut;
        computed once, and only when the coverage families are rendered."""
        if self._missing is None:
            report = self.report
            self._missing = capped_missing(report, self.missing_info_limit) if report else ([], 0)
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
        # No Endpoints object at all: every expected target is missing there.
        endpoints_missing = len(s.endpoints.missing) if s.endpoints else s.expected
        yield (s.namespace, s.service, STAGE_ENDPOINTS), endpoints_missing
        yield (s.namespace, s.service, STAGE_ENDPOINTSLICES), len(s.slices.missing)


def _prometheus_targets(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        if not s.prometheus_known:
            continue
        for (prometheus, pool, role, health), count in sorted(s.target_counts.items()):
            yield (s.namespace, s.service, prometheus, pool, role, health), count


def _prometheus_missing(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        if s.prometheus_known:
            for p in s.pools:
                yield (s.namespace, s.service, p.scrape_pool, p.role), len(p.missing)


def _ratio(state: ExporterState) -> Iterator[Sample]:
    for s in _services(state):
        if s.prometheus_known:
            for p in s.pools:
                yield (s.namespace, s.service, p.scrape_pool, p.role), p.ratio


def _nodes(state: ExporterState) -> Iterator[Sample]:
    if state.report is not None:
        yield ("true",), state.report.nodes_ready
        yield ("false",), state.report.nodes_not_ready


def _service_count(state: ExporterState) -> Iterator[Sample]:
    if state.report is not None:
        yield (), len(state.report.services)


def _source(attr: Callable[[SourceHealth], float]) -> Callable[[ExporterState], Iterator[Sample]]:
    def samples(state: ExporterState) -> Iterator[Sample]:
        for h in state.sources:
            yield (h.source, h.prometheus), attr(h)

    return samples


def _constant(
    value: Callable[[ExporterState], float],
) -> Callable[[ExporterState], Iterator[Sample]]:
    def samples(state: ExporterState) -> Iterator[Sample]:
        yield (), value(state)

    return samples


SERVICE = ("namespace", "service")
SOURCE = ("source", "prometheus")

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
        "prometheus_targets",
        "gauge",
        "Active targets one Prometheus discovered from the Service.",
        (*SERVICE, "prometheus", "scrape_pool", "role", "health"),
        _prometheus_targets,
    ),
    MetricSpec(
        "prometheus_missing_targets",
        "gauge",
        "Expected targets that no Prometheus discovered in the scrape pool.",
        (*SERVICE, "scrape_pool", "role"),
        _prometheus_missing,
    ),
    MetricSpec(
        "ratio",
        "gauge",
        "Expected targets discovered by the scrape pool, divided by the expected targets.",
        (*SERVICE, "scrape_pool", "role"),
        _ratio,
    ),
    MetricSpec(
        "missing_node_info",
        "gauge",
        "One series per missing target (capped by --missing-node-info-limit).",
        (*SERVICE, "stage", "scrape_pool", "node", "pod"),
        lambda s: s.missing_info()[0],
    ),
    MetricSpec(
        "nodes", "gauge", "Nodes in the cluster by their Ready condition.", ("ready",), _nodes
    ),
    MetricSpec("services", "gauge", "Services in scope in the last cycle.", (), _service_count),
    MetricSpec(
        "missing_node_info_limit",
        "gauge",
        "Cap on scrape_coverage_missing_node_info series.",
        (),
        _constant(lambda s: s.missing_info_limit),
    ),
    MetricSpec(
        "missing_node_info_omitted",
        "gauge",
        "Missing targets left out of scrape_coverage_missing_node_info by the cap.",
        (),
        _constant(lambda s: s.missing_info()[1]),
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
        "build_info",
        "gauge",
        "Always 1; the version in a label.",
        ("version",),
        lambda s: [((__version__,), 1.0)],
    ),
)

METRICS = COVERAGE_METRICS + EXPORTER_METRICS


def exported_names() -> list[str]:
    """Every series name as it appears in the exposition (counters get _total)."""
    return [PREFIX + m.name + ("_total" if m.kind == "counter" else "") for m in METRICS]


# When the cap cuts, the Prometheus stage goes first: it is the blind spot
# itself; the Kubernetes stages only explain it.
_STAGE_ORDER = {STAGE_PROMETHEUS: 0, STAGE_ENDPOINTS: 1, STAGE_ENDPOINTSLICES: 2}


def _stages(
    report: CoverageReport,
) -> list[tuple[tuple[str, str, str, str], Sequence[MissingTarget]]]:
    """Every stage's missing list with its (namespace, service, stage,
    scrape_pool), the Prometheus stage first, then in a stable order."""
    out: list[tuple[tuple[str, str, str, str], Sequence[MissingTarget]]] = []
    for s in report.services:
        if s.endpoints is not None:
            out.append(((s.namespace, s.service, STAGE_ENDPOINTS, ""), s.endpoints.missing))
        out.append(((s.namespace, s.service, STAGE_ENDPOINTSLICES, ""), s.slices.missing))
        if s.prometheus_known:
            out.extend(
                ((s.namespace, s.service, STAGE_PROMETHEUS, p.scrape_pool), p.missing)
                for p in s.pools
            )
    out.sort(key=lambda item: _STAGE_ORDER[item[0][2]])  # stable: keeps the rest in order
    return out


def capped_missing(report: CoverageReport, limit: int) -> tuple[list[Sample], int]:
    """The first `limit` missing targets as samples, and how many the cap
    cut. Walks the stages' lists without copying them: a cut at 100k nodes
    is hundreds of thousands of missing entries, of which 1000 are shown."""
    samples: list[Sample] = []
    cut = 0
    for key, missing in _stages(report):
        room = max(0, limit - len(samples))
        samples.extend(((*key, m.node, m.pod), 1.0) for m in missing[:room])
        cut += max(0, len(missing) - room)
    return samples, cut


class _StateCollector(Collector):
    def __init__(self, state: ExporterState, specs: Sequence[MetricSpec]) -> None:
        self._state = state
        self._specs = specs

    def collect(self) -> Iterator[Metric]:
        for spec in self._specs:
            family_type = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            family = family_type(PREFIX + spec.name, spec.help, labels=spec.labels)
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
