"""What is wrong with one Service, as data: each finding names its kind,
the Service, the stage (and so the pool, role and replica) where it was
seen, whether it loses targets that are read (a gap, model.gaps), and the
runbook page that says what to do. The audit words them, the HTML report
formats them and links their runbook (runbooks.runbook_url).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from coverage_exporter.model.coverage import ServiceCoverage
from coverage_exporter.model.gaps import STAGE_ENDPOINTS, STAGE_ENDPOINTSLICES, STAGE_PROMETHEUS
from coverage_exporter.model.objects import ROLE_ENDPOINTS, ROLE_ENDPOINTSLICE
from coverage_exporter.model.stages import Stage, service_stages

# Runbook pages (docs/runbooks/<page>.md), named after the alerts they serve.
RUNBOOK_ENDPOINTS_TRUNCATED = "ScrapeCoverageEndpointsTruncated"
RUNBOOK_MIRRORING_CAPPED = "ScrapeCoverageEndpointSliceMirroringCapped"
RUNBOOK_TARGETS_MISSING = "ScrapeCoverageTargetsMissing"
RUNBOOK_UNKNOWN = "ScrapeCoverageUnknown"
RUNBOOK_SOURCE_DOWN = "ScrapeCoverageSourceDown"
RUNBOOK_MIGRATION = "migrate-to-endpointslice"
RUNBOOK_TARGETS_EXTRA = "extra-targets"
"""Targets scraped twice, or of nodes and pods gone (no alert of its own
page: the two findings share it)."""
RUNBOOK_INDEX = "README"
RUNBOOK_CAUSES = "causes"
"""One section per model.causes.Cause, anchored by its value."""
RUNBOOK_UNMAINTAINED = "causes.md#unmaintained"
"""The section on objects no controller maintains."""


class FindingKind(StrEnum):
    ENDPOINTS_ABSENT = "endpoints_absent"
    """No Endpoints object, yet a pool reads the Service with role endpoints."""
    ENDPOINTS_TRUNCATED = "endpoints_truncated"
    """The Endpoints object is cut at 1000 addresses (over-capacity)."""
    ENDPOINTS_STALE = "endpoints_stale"
    """Selector-less Endpoints that miss expected targets: their owner no
    longer writes them (e.g. --kubelet-endpoints=false)."""
    MIRRORING_CAPPED = "mirroring_capped"
    """The mirroring controller left addresses out of the slices."""
    COVERAGE_UNKNOWN = "coverage_unknown"
    """A replica's pool cannot be judged: a shard has not answered."""
    POOL_READS_TRUNCATED = "pool_reads_truncated"
    """A pool of role endpoints misses targets of a truncated Endpoints."""
    POOL_DISCOVERS_NOTHING = "pool_discovers_nothing"
    """A pool meant to scrape the Service discovers none of its targets."""
    POOL_MISSES = "pool_misses"
    """A pool misses expected targets."""
    POOL_DUPLICATES = "pool_duplicates"
    """A pool discovers some node's (or pod's) target more than once: it is
    scraped twice (prometheus-operator #8682). Loses nothing."""
    POOL_GHOSTS = "pool_ghosts"
    """A pool discovers targets of nodes or pods that no longer exist: a
    stale slice or Endpoints object (prometheus-operator #7678)."""
    ENDPOINTS_UNMAINTAINED = "endpoints_unmaintained"
    """No Endpoints controller maintains the Service's Endpoints object: it
    is absent or frozen (model.controllers); no truncation is claimed."""
    SLICES_UNMIRRORED = "slices_unmirrored"
    """No mirroring controller mirrors the selector-less Endpoints: the
    mirrored slices are absent or frozen; no mirroring cap is claimed."""
    POOL_READS_UNMAINTAINED = "pool_reads_unmaintained"
    """A pool reads an object no controller updates: role endpoints an
    unmaintained Endpoints object, role endpointslice unmirrored slices."""


EXTRA_TARGETS = frozenset({FindingKind.POOL_DUPLICATES, FindingKind.POOL_GHOSTS})
"""Findings about targets a pool discovers beyond the expected ones: they
lose nothing, so they are never a gap."""


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    namespace: str
    service: str
    stage: Stage
    """Where it was seen; its pool, role, scraper and replica for a pool."""
    count: int
    """How many targets it is about: lost, left out by mirroring, whose
    coverage is unknown, discovered twice, or of nodes or pods gone."""
    runbook: str | None = None
    """The runbook page (runbooks.runbook_url makes the link); None: none."""

    @property
    def gap(self) -> bool:
        """It loses expected targets that are read (model.gaps)."""
        return self.kind not in EXTRA_TARGETS and self.stage.gap


def service_findings(s: ServiceCoverage) -> list[Finding]:
    """Every finding of one Service, in the order the audit shows them:
    the Endpoints object, the slices, then each replica's pools."""
    stages = service_stages(s)
    by_kind = {st.kind: st for st in stages if st.kind != STAGE_PROMETHEUS}
    endpoints, slices = by_kind[STAGE_ENDPOINTS], by_kind[STAGE_ENDPOINTSLICES]
    out: list[Finding] = []

    def add(kind: FindingKind, stage: Stage, count: int, runbook: str | None = None) -> None:
        out.append(Finding(kind, s.namespace, s.service, stage, count, runbook))

    endpoints_count = endpoints.count or 0
    if s.endpoints_unmaintained:
        add(FindingKind.ENDPOINTS_UNMAINTAINED, endpoints, endpoints_count, RUNBOOK_UNMAINTAINED)
    elif s.endpoints is None:
        if endpoints.read:
            add(FindingKind.ENDPOINTS_ABSENT, endpoints, s.expected)
    elif s.endpoints.truncated:
        add(FindingKind.ENDPOINTS_TRUNCATED, endpoints, endpoints_count)
    elif endpoints_count and s.endpoints.skip_mirror is not None:
        add(FindingKind.ENDPOINTS_STALE, endpoints, endpoints_count)
    if s.slices_unmirrored:
        add(FindingKind.SLICES_UNMIRRORED, slices, slices.count or 0, RUNBOOK_UNMAINTAINED)
    if s.slices.mirroring_skipped:
        add(
            FindingKind.MIRRORING_CAPPED,
            slices,
            s.slices.mirroring_skipped,
            RUNBOOK_MIRRORING_CAPPED,
        )
    truncated = s.endpoints is not None and s.endpoints.truncated
    for st in stages:
        if st.kind != STAGE_PROMETHEUS:
            continue
        if st.count is None:
            add(FindingKind.COVERAGE_UNKNOWN, st, st.unknown, RUNBOOK_UNKNOWN)
        elif _reads_unmaintained(s, st):
            # Said even when it misses nothing yet: what it reads will not
            # follow the next change.
            add(FindingKind.POOL_READS_UNMAINTAINED, st, st.count, RUNBOOK_UNMAINTAINED)
        elif not st.count:
            continue
        elif st.role == ROLE_ENDPOINTS and truncated:
            add(FindingKind.POOL_READS_TRUNCATED, st, st.count, RUNBOOK_ENDPOINTS_TRUNCATED)
        elif st.holds == 0:
            add(FindingKind.POOL_DISCOVERS_NOTHING, st, st.count, RUNBOOK_TARGETS_MISSING)
        else:
            add(FindingKind.POOL_MISSES, st, st.count)
    # Per pool, after its missing targets: what it discovers too much of.
    for st in stages:
        if st.duplicated:
            add(FindingKind.POOL_DUPLICATES, st, len(st.duplicated), RUNBOOK_TARGETS_EXTRA)
        if st.ghosts:
            add(FindingKind.POOL_GHOSTS, st, len(st.ghosts), RUNBOOK_TARGETS_EXTRA)
    return out


def _reads_unmaintained(s: ServiceCoverage, st: Stage) -> bool:
    if st.role == ROLE_ENDPOINTS:
        return s.endpoints_unmaintained
    return st.role == ROLE_ENDPOINTSLICE and s.slices_unmirrored
