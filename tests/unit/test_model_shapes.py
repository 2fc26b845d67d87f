"""The model's shapes that every output reads: the verdict, the stages and
the findings (model/verdict.py, model/stages.py, model/findings.py), on
plain data. The outputs' words for them: test_audit_output.py,
test_verdicts.py, test_html_report.py."""

from __future__ import annotations

import pytest

from coverage_exporter import app
from coverage_exporter.exposition import audit, html
from coverage_exporter.model.findings import FindingKind, service_findings
from coverage_exporter.model.fleet import ServerState
from coverage_exporter.model.objects import PrometheusSnapshot, ServerIdentity
from coverage_exporter.model.report import CoverageReport, build_report
from coverage_exporter.model.scope import Scope
from coverage_exporter.model.stages import service_gaps, service_stages
from coverage_exporter.model.verdict import Verdict, decide, service_verdict
from tests.unit import clusters

NE = ("monitoring", "node-exporter")
KUBELET = ("kube-system", "kubelet")


def truncated(role: str = "endpoints") -> CoverageReport:
    cluster = clusters.node_exporter(1200)
    targets = (clusters.endpoints_targets if role == "endpoints" else clusters.slice_targets)(
        cluster, "ne", *NE
    )
    return build_report(Scope(), cluster, [PrometheusSnapshot("p", targets)])


def unknown() -> CoverageReport:
    """A replica whose one server never answered: its pool is unknown."""
    cluster = clusters.node_exporter(1200)
    snap = PrometheusSnapshot("p", clusters.slice_targets(cluster, "ne", *NE))
    servers = [ServerState("p", ServerIdentity("p", "p"), False)]
    return build_report(Scope(), cluster, [snap], servers)


@pytest.mark.parametrize(
    ("report", "complete", "expected"),
    [
        (None, True, Verdict.NOT_COLLECTED),
        (truncated(), True, Verdict.GAPS),
        (truncated(), False, Verdict.GAPS),  # a gap seen in what answered is real
        (CoverageReport(), True, Verdict.NOTHING_COMPARED),
        (unknown(), True, Verdict.UNKNOWN),
        (truncated("endpointslice"), False, Verdict.UNKNOWN),
        (truncated("endpointslice"), True, Verdict.FULL_COVERAGE),
    ],
)
def test_one_verdict_read_by_exit_code_words_and_colour(
    report: CoverageReport | None, complete: bool, expected: Verdict
) -> None:
    assert decide(report, complete) is expected
    assert app.exit_code(report, complete) == app.EXIT_CODES[expected]
    assert audit.verdict(report, complete) == audit.VERDICT_WORDS[expected]
    assert html.report_verdict(report, complete) == (
        html.VERDICT_CSS[expected],
        audit.VERDICT_WORDS[expected],
    )


def test_every_verdict_has_an_exit_code_words_and_a_colour() -> None:
    for verdict in Verdict:
        assert verdict in app.EXIT_CODES and verdict in audit.VERDICT_WORDS
        assert verdict in html.VERDICT_CSS
    assert {v for v, code in app.EXIT_CODES.items() if code == 0} == {Verdict.FULL_COVERAGE}
    assert {v for v, code in app.EXIT_CODES.items() if code == 1} == {Verdict.GAPS}


def test_stages_of_a_truncated_service_read_with_role_endpoints() -> None:
    (s,) = truncated().services
    endpoints, slices, pool = service_stages(s)
    assert (endpoints.kind, endpoints.role, endpoints.holds, endpoints.count) == (
        "endpoints",
        "endpoints",
        1000,
        200,
    )
    assert endpoints.read and endpoints.gap and len(endpoints.missing or ()) == 200
    assert (slices.count, slices.read, slices.gap) == (0, False, False)
    assert (pool.kind, pool.pool, pool.role, pool.scraper, pool.replica) == (
        "prometheus",
        "ne",
        "endpoints",
        "p",
        "p",
    )
    assert (pool.holds, pool.count, pool.known, pool.gap) == (1000, 200, True, True)
    assert service_gaps(s) == [endpoints, pool]
    assert service_verdict(s) is Verdict.GAPS


def test_findings_carry_kind_stage_and_runbook() -> None:
    (s,) = truncated().services
    found = service_findings(s)
    assert [(f.kind, f.stage.kind, f.count, f.gap, f.runbook) for f in found] == [
        (FindingKind.ENDPOINTS_TRUNCATED, "endpoints", 200, True, None),
        (
            FindingKind.POOL_READS_TRUNCATED,
            "prometheus",
            200,
            True,
            "ScrapeCoverageEndpointsTruncated",
        ),
    ]
    assert all((f.namespace, f.service) == NE for f in found)


def test_after_the_migration_truncation_is_a_finding_not_a_gap() -> None:
    (s,) = truncated("endpointslice").services
    (finding,) = service_findings(s)
    assert finding.kind is FindingKind.ENDPOINTS_TRUNCATED and not finding.gap
    assert service_gaps(s) == [] and service_verdict(s) is Verdict.FULL_COVERAGE


def test_an_unknown_pool_is_a_finding_with_its_runbook() -> None:
    (s,) = unknown().services
    kinds = [(f.kind, f.runbook, f.gap) for f in service_findings(s)]
    assert (FindingKind.COVERAGE_UNKNOWN, "ScrapeCoverageUnknown", False) in kinds
    assert service_verdict(s) is Verdict.UNKNOWN


def test_capped_mirroring_names_its_runbook() -> None:
    cluster = clusters.kubelet(1200)
    report = build_report(Scope(frozenset({KUBELET})), cluster, [PrometheusSnapshot("p", [])])
    (s,) = report.services
    (finding,) = [f for f in service_findings(s) if f.kind is FindingKind.MIRRORING_CAPPED]
    assert (finding.count, finding.runbook) == (200, "ScrapeCoverageEndpointSliceMirroringCapped")
