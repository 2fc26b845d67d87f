"""The verdict on one cycle, decided once: the audit's exit code (app.py),
its last line (exposition/audit.py) and the HTML report's colour
(exposition/html.py) all read `decide`.
"""

from __future__ import annotations

from enum import StrEnum

from coverage_exporter.model.coverage import ServiceCoverage
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.model.stages import service_stages


class Verdict(StrEnum):
    NOT_COLLECTED = "not_collected"
    """Kubernetes could not be read: nothing was compared."""
    GAPS = "gaps"
    """Some gap (model.gaps) in what did answer: a gap seen is real, even
    while another source is down."""
    NOTHING_COMPARED = "nothing_compared"
    """No Service in scope: nothing to judge."""
    NO_SERVER = "no_server"
    """No Prometheus server found or given: nothing that scrapes was
    judged, whatever the Kubernetes stages show (model.discovery)."""
    UNKNOWN = "unknown"
    """No gap in what answered, but something could not be judged: a
    source down in this cycle, or a replica's coverage unknown."""
    FULL_COVERAGE = "full_coverage"
    """Every expected target of every compared Service is found."""


def decide(report: CoverageReport | None, complete: bool) -> Verdict:
    """`complete`: every source answered in this cycle."""
    if report is None:
        return Verdict.NOT_COLLECTED
    if report.has_gaps:
        return Verdict.GAPS
    if not report.services:
        return Verdict.NOTHING_COMPARED
    if not report.fleet.replicas:
        return Verdict.NO_SERVER
    if report.unknown_pools or not complete:
        return Verdict.UNKNOWN
    return Verdict.FULL_COVERAGE


def service_verdict(s: ServiceCoverage) -> Verdict:
    """One Service: GAPS, UNKNOWN (a stage that cannot be judged) or
    FULL_COVERAGE. Findings that lose nothing read do not change it."""
    stages = service_stages(s)
    if any(st.gap for st in stages):
        return Verdict.GAPS
    if any(not st.known for st in stages):
        return Verdict.UNKNOWN
    return Verdict.FULL_COVERAGE
