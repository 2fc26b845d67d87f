"""One shape per stage of a Service's funnel: its Endpoints object, its
EndpointSlices, and each scrape pool as each replica runs it. Built here,
once, from the comparison (model.coverage); the metrics, the audit and the
HTML report only word and format it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coverage_exporter.model import gaps
from coverage_exporter.model.causes import NO_CAUSES, StageCauses
from coverage_exporter.model.coverage import MissingTarget, ServiceCoverage
from coverage_exporter.model.gaps import (
    STAGE_ENDPOINTS,
    STAGE_ENDPOINTSLICES,
    STAGE_PROMETHEUS,
    STAGE_ROLE,
)


@dataclass(frozen=True, slots=True)
class Stage:
    """Where the expected targets of one Service are looked for."""

    kind: str
    """STAGE_ENDPOINTS, STAGE_ENDPOINTSLICES or STAGE_PROMETHEUS."""
    role: str
    """The discovery role that reads this stage: for a Kubernetes stage the
    role of the pools that would read it, for a scrape pool its own."""
    holds: int
    """What the stage holds: addresses, distinct endpoints, or the expected
    targets that the replica's pool discovered."""
    missing: Sequence[MissingTarget] | None
    """The expected targets absent here, by name; None while the replica's
    coverage is unknown."""
    count: int | None
    """How many expected targets are absent: `missing` and those known by
    count only (unnamed, or every one when there is no Endpoints object);
    None while unknown."""
    read: bool
    """A Kubernetes stage: some scrape pool of its role reads this Service.
    A scrape pool: always (it discovered targets of the Service or is meant
    to scrape it)."""
    unknown: int = 0
    """Expected targets whose coverage cannot be told (a shard not answering)."""
    pool: str = ""
    """The scrape pool (STAGE_PROMETHEUS only), and where it runs:"""
    scraper: str = ""
    replica: str = ""
    why_unknown: str = ""
    """Why the coverage is unknown, where something more precise than "a
    shard has not answered" is known (model.fleet)."""
    meant: bool = False
    """The server's configuration (or an earlier cycle) says this pool
    should scrape the Service, whether or not it discovers anything."""
    causes: StageCauses = NO_CAUSES
    """Why each target is missing here, or why the unknown ones cannot be
    told (model.causes)."""
    duplicated: tuple[str, ...] = ()
    """A scrape pool: names it discovers more than once (PoolCoverage)."""
    ghosts: tuple[str, ...] = ()
    """A scrape pool: nodes or pods it discovers that no longer exist."""

    @property
    def known(self) -> bool:
        return self.count is not None

    @property
    def judged(self) -> bool:
        """Its count is a gap count, 0 included (model.gaps)."""
        return gaps.judged(self.kind, self.read, self.count)

    @property
    def gap(self) -> bool:
        """The loss here is a gap (model.gaps); else, if any, a finding."""
        return gaps.is_gap(self.kind, self.read, self.count)


def service_stages(s: ServiceCoverage) -> tuple[Stage, ...]:
    """Endpoints, EndpointSlices, then each (replica, scrape pool) in the
    comparison's order."""
    endpoints = s.endpoints
    causes = s.causes or (NO_CAUSES,) * (2 + len(s.pools))
    out = [
        Stage(
            STAGE_ENDPOINTS,
            STAGE_ROLE[STAGE_ENDPOINTS],
            0 if endpoints is None else endpoints.ready + endpoints.not_ready,
            () if endpoints is None else endpoints.missing,
            s.endpoints_missing_count(),
            s.reads(STAGE_ROLE[STAGE_ENDPOINTS]),
            causes=causes[0],
        ),
        Stage(
            STAGE_ENDPOINTSLICES,
            STAGE_ROLE[STAGE_ENDPOINTSLICES],
            sum(s.slices.endpoints.values()),
            s.slices.missing,
            s.slices_missing_count(),
            s.reads(STAGE_ROLE[STAGE_ENDPOINTSLICES]),
            causes=causes[1],
        ),
    ]
    out.extend(
        Stage(
            STAGE_PROMETHEUS,
            p.role,
            p.discovered,
            p.missing,
            p.missing_count,
            True,
            unknown=p.unknown,
            pool=p.scrape_pool,
            scraper=p.scraper,
            replica=p.replica,
            meant=p.meant,
            why_unknown=p.why_unknown,
            causes=c,
            duplicated=p.duplicated,
            ghosts=p.ghosts,
        )
        for p, c in zip(s.pools, causes[2:], strict=True)
    )
    return tuple(out)


def judged_stages(s: ServiceCoverage) -> list[Stage]:
    """The stages whose loss would be a gap, with their count (0 when
    nothing is lost): what the gap series exports."""
    return [st for st in service_stages(s) if st.judged]


def service_gaps(s: ServiceCoverage) -> list[Stage]:
    return [st for st in service_stages(s) if st.gap]
