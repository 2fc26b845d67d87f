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
from coverage_exporter.model.objects import ROLE_ENDPOINTS
from coverage_exporter.model.stages import Stage, service_stages

# Runbook pages (docs/runbooks/<page>.md), named after the alerts they serve.
RUNBOOK_ENDPOINTS_TRUNCATED = "ScrapeCoverageEndpointsTruncated"
RUNBOOK_MIRRORING_CAPPED = "ScrapeCoverageEndpointSliceMirroringCapped"
RUNBOOK_TARGETS_MISSING = "ScrapeCoverageTargetsMissing"
RUNBOOK_UNKNOWN = "ScrapeCoverageUnknown"
RUNBOOK_SOURCE_DOWN = "ScrapeCoverageSourceDown"
RUNBOOK_MIGRATION = "migrate-to-endpointslice"
RUNBOOK_INDEX = "README"
RUNBOOK_CAUSES = "causes"
"""One section per model.causes.Cause, anchored by its value."""


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


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    namespace: str
    service: str
    stage: Stage
    """Where it was seen; its pool, role, scraper and replica for a pool."""
    count: int
    """How many targets it is about: lost, left out by mirroring, or whose
    coverage is unknown."""
    runbook: str | None = None
    """The runbook page (runbooks.runbook_url makes the link); None: none."""

    @property
    def gap(self) -> bool:
        """It loses expected targets that are read (model.gaps)."""
        return self.stage.gap


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
    if s.endpoints is None:
        if endpoints.read:
            add(FindingKind.ENDPOINTS_ABSENT, endpoints, s.expected)
    elif s.endpoints.truncated:
        add(FindingKind.ENDPOINTS_TRUNCATED, endpoints, endpoints_count)
    elif endpoints_count and s.endpoints.skip_mirror is not None:
        add(FindingKind.ENDPOINTS_STALE, endpoints, endpoints_count)
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
        elif not st.count:
            continue
        elif st.role == ROLE_ENDPOINTS and truncated:
            add(FindingKind.POOL_READS_TRUNCATED, st, st.count, RUNBOOK_ENDPOINTS_TRUNCATED)
        elif st.holds == 0:
            add(FindingKind.POOL_DISCOVERS_NOTHING, st, st.count, RUNBOOK_TARGETS_MISSING)
        else:
            add(FindingKind.POOL_MISSES, st, st.count)
    return out
