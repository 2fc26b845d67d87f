"""The one definition of a gap. The audit's exit code, its table and JSON,
the HTML report, the `scrape_coverage_gap_targets` series and through it
the alert rules all read it, through `Stage.gap` (model.stages).

A loss is a gap when
- a replica's scrape pool misses expected targets (each replica on its
  own: every replica evaluates the alert rules itself), or
- a Kubernetes stage drops expected targets that some scrape pool of the
  role reading that stage reads: the Endpoints object for role
  `endpoints`, the EndpointSlices for role `endpointslice`.

Everything else that looks wrong is a finding (model.findings), shown but
not a gap: a truncated Endpoints object that no pool reads with role
`endpoints` (the state after a safe migration), a frozen or stale
Endpoints object nobody reads, capped mirrored slices that no pool reads.
A pool whose coverage is unknown is neither: the audit says it could not
tell (exit 3, coverage_exporter/exit_codes.py).
"""

from __future__ import annotations

from coverage_exporter.model.objects import ROLE_ENDPOINTS, ROLE_ENDPOINTSLICE

STAGE_ENDPOINTS = "endpoints"
STAGE_ENDPOINTSLICES = "endpointslices"
STAGE_PROMETHEUS = "prometheus"

STAGE_ROLE = {STAGE_ENDPOINTS: ROLE_ENDPOINTS, STAGE_ENDPOINTSLICES: ROLE_ENDPOINTSLICE}
"""The discovery role that reads each Kubernetes stage."""


def judged(kind: str, read: bool, count: int | None) -> bool:
    """Whether a loss at this stage would be a gap, so that its count, 0
    included, is what `scrape_coverage_gap_targets` exports: a Kubernetes
    stage that some pool of its role reads, and a scrape pool whose
    coverage is known."""
    if count is None:
        return False
    return kind == STAGE_PROMETHEUS or read


def is_gap(kind: str, read: bool, count: int | None) -> bool:
    return judged(kind, read, count) and bool(count)
