"""The one definition of a gap. The audit's exit code, its table and JSON,
the `scrape_coverage_gap_targets` series and through it the alert rules
all come from `service_gaps`.

A loss is a gap when
- a replica's scrape pool misses expected targets (each replica on its
  own: every replica evaluates the alert rules itself), or
- a Kubernetes stage drops expected targets that some scrape pool of the
  role reading that stage reads: the Endpoints object for role
  `endpoints`, the EndpointSlices for role `endpointslice`.

Everything else that looks wrong is a finding, shown but not a gap: a
truncated Endpoints object that no pool reads with role `endpoints` (the
state after a safe migration), a frozen or stale Endpoints object nobody
reads, capped mirrored slices that no pool reads. A pool whose coverage is
unknown is neither: the audit says it could not tell (exit 3, coverage_exporter/exit_codes.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from coverage_exporter.model.coverage import (
    STAGE_ENDPOINTS,
    STAGE_ENDPOINTSLICES,
    STAGE_PROMETHEUS,
    ServiceCoverage,
)
from coverage_exporter.model.objects import ROLE_ENDPOINTS, ROLE_ENDPOINTSLICE

STAGE_ROLE = {STAGE_ENDPOINTS: ROLE_ENDPOINTS, STAGE_ENDPOINTSLICES: ROLE_ENDPOINTSLICE}


@dataclass(frozen=True, slots=True)
class Gap:
    namespace: str
    service: str
    stage: str
    role: str
    """For a Kubernetes stage: the role that reads it."""
    missing: int
    scrape_pool: str = ""
    scraper: str = ""
    replica: str = ""

    @property
    def labels(self) -> tuple[str, str, str, str, str, str, str]:
        return (
            self.namespace,
            self.service,
            self.stage,
            self.scrape_pool,
            self.role,
            self.scraper,
            self.replica,
        )


def stage_losses(s: ServiceCoverage) -> list[Gap]:
    """Every comparison that could be a gap, with its missing count (0 when
    nothing is lost): the Kubernetes stages that some pool reads, and every
    known (replica, pool). What the gap series exports."""
    out = []
    for stage, count in (
        (STAGE_ENDPOINTS, s.endpoints_missing_count()),
        (STAGE_ENDPOINTSLICES, s.slices_missing_count()),
    ):
        role = STAGE_ROLE[stage]
        if s.reads(role):
            out.append(Gap(s.namespace, s.service, stage, role, count))
    for p in s.pools:
        count = p.missing_count
        if count is not None:
            out.append(
                Gap(
                    s.namespace,
                    s.service,
                    STAGE_PROMETHEUS,
                    p.role,
                    count,
                    p.scrape_pool,
                    p.scraper,
                    p.replica,
                )
            )
    return out


def service_gaps(s: ServiceCoverage) -> list[Gap]:
    return [g for g in stage_losses(s) if g.missing > 0]


def unknown_pools(s: ServiceCoverage) -> int:
    return sum(1 for p in s.pools if not p.known)
