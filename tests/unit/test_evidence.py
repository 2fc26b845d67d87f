"""Kubernetes' events as evidence for the findings (issue #19 item 7), on
plain data: which event confirms which finding, the words and JSON that
show it, and what is said when events cannot be read."""

from __future__ import annotations

import json

import msgspec

from coverage_exporter.exposition.audit import findings, render_json, render_table
from coverage_exporter.exposition.html import PageInfo, render_page
from coverage_exporter.health import SOURCE_KUBERNETES, SourceHealth
from coverage_exporter.model.evidence import (
    EVENTS_PER_OBJECT,
    ControllerEvent,
    EventsRead,
    Evidence,
    finding_evidence,
    gather,
)
from coverage_exporter.model.findings import FindingKind, service_findings
from coverage_exporter.model.objects import PrometheusSnapshot
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope
from coverage_exporter.sources.kubernetes.events import parse_event
from tests.unit import clusters

KUBELET = ("kube-system", "kubelet")
CAP_MESSAGE = (
    "A max of 1000 addresses can be mirrored to EndpointSlices per Endpoints subset. "
    "200 addresses were skipped"
)


def capped(
    name: str = "kubelet", last: str = "2026-12-08T00:10:00Z", message: str = CAP_MESSAGE
) -> ControllerEvent:
    return ControllerEvent(
        "kube-system",
        name,
        "TooManyAddressesToMirror",
        message,
        3,
        last,
        "endpoint-slice-mirroring-controller",
    )


def kubelet_report():  # type: ignore[no-untyped-def]
    cluster = clusters.kubelet(1200)
    return build_report(Scope(frozenset({KUBELET})), cluster, [PrometheusSnapshot("p", [])])


def test_the_cap_event_confirms_the_mirroring_finding_only() -> None:
    (s,) = kubelet_report().services
    evidence = gather(EventsRead.READ, [capped(), capped("other")])
    by_kind = {f.kind: finding_evidence(f, evidence) for f in service_findings(s)}
    assert by_kind[FindingKind.MIRRORING_CAPPED] == (capped(),)
    assert all(not es for k, es in by_kind.items() if k is not FindingKind.MIRRORING_CAPPED)
    assert capped().skipped == 200
    assert capped(message="changed words").skipped is None


def test_audit_words_and_json_show_the_event_with_the_finding() -> None:
    report = kubelet_report()
    (s,) = report.services
    evidence = gather(EventsRead.READ, [capped()])
    (line,) = [x for x in findings(s, evidence) if "mirroring controller left" in x]
    assert line.endswith(
        "Kubernetes says so: Warning TooManyAddressesToMirror from "
        "endpoint-slice-mirroring-controller x3, last 2026-12-08T00:10:00Z: "
        f'"{CAP_MESSAGE}".'
    )
    doc = json.loads(render_json(report, [], True, (), evidence))
    assert doc["events"] == {"read": "read", "detail": None}
    (svc,) = doc["services"]
    assert svc["evidence"] == [
        {
            "finding": "mirroring_capped",
            "reason": "TooManyAddressesToMirror",
            "component": "endpoint-slice-mirroring-controller",
            "message": CAP_MESSAGE,
            "count": 3,
            "last_seen": "2026-12-08T00:10:00Z",
            "skipped": 200,
        }
    ]


def test_without_events_the_finding_stands_alone() -> None:
    report = kubelet_report()
    (s,) = report.services
    plain = findings(s)
    assert findings(s, gather(EventsRead.READ, [])) == plain
    assert any("mirroring controller left 200 addresses" in x for x in plain)
    assert not any("Kubernetes" in x for x in plain)


def test_without_rbac_for_events_the_audit_says_so_and_still_judges() -> None:
    report = kubelet_report()
    (s,) = report.services
    detail = "no permission to list events (RBAC: list on events, optional)"
    forbidden = Evidence(EventsRead.FORBIDDEN, {}, detail)
    (line,) = [x for x in findings(s, forbidden) if "mirroring controller left" in x]
    assert line.endswith(f"(Kubernetes events not read: {detail})")
    health = [SourceHealth(source=SOURCE_KUBERNETES, up=True)]
    text = render_table(report, health, True, (), forbidden)
    assert f"Kubernetes events: not read ({detail})" in text
    # The verdict is the objects' alone: the same with events or without.
    plain = render_table(report, health, True, ())
    assert text.splitlines()[-1] == plain.splitlines()[-1] == "full coverage"
    doc = json.loads(render_json(report, health, True, (), forbidden))
    assert doc["events"] == {"read": "forbidden", "detail": detail}
    assert doc["services"][0]["evidence"] == []
    assert doc["verdict"] == json.loads(render_json(report, health, True, ()))["verdict"]


def test_the_html_report_shows_the_event_escaped() -> None:
    report = kubelet_report()
    evidence = gather(EventsRead.READ, [capped(message="<b>200 addresses were skipped</b>")])
    page = render_page(report, PageInfo("c", 0.0, evidence=evidence)).decode()
    assert '<span class="evidence">Kubernetes says so: Warning TooManyAddressesToMirror' in page
    assert "&lt;b&gt;200 addresses were skipped&lt;/b&gt;" in page
    assert "<b>200 addresses" not in page


def test_newest_events_first_and_capped_per_object() -> None:
    events = [capped(last=f"2026-12-08T00:0{i}:00Z") for i in range(6)]
    kept = gather(EventsRead.READ, events).by_object[KUBELET]
    assert len(kept) == EVENTS_PER_OBJECT
    assert [e.last_seen for e in kept] == [f"2026-12-08T00:0{i}:00Z" for i in (5, 4, 3)]


def core_event(**over: object) -> bytes:
    """A core/v1 Event as kube-controller-manager's recorder writes it."""
    body: dict[str, object] = {
        "metadata": {"name": "kubelet.18f0", "namespace": "kube-system"},
        "involvedObject": {
            "kind": "Endpoints",
            "namespace": "kube-system",
            "name": "kubelet",
            "apiVersion": "v1",
        },
        "reason": "TooManyAddressesToMirror",
        "message": CAP_MESSAGE,
        "source": {"component": "endpoint-slice-mirroring-controller"},
        "firstTimestamp": "2026-12-08T00:00:00Z",
        "lastTimestamp": "2026-12-08T00:10:00Z",
        "count": 3,
        "type": "Warning",
        "reportingComponent": "endpoint-slice-mirroring-controller",
    }
    body.update(over)
    return msgspec.json.encode(body)


def test_parse_core_and_events_v1_shapes() -> None:
    assert parse_event(core_event()) == capped()
    series = parse_event(
        core_event(
            count=None,
            lastTimestamp=None,
            source=None,
            series={"count": 7, "lastObservedTime": "2026-12-08T00:20:00.000000Z"},
        )
    )
    assert series is not None
    assert (series.count, series.last_seen, series.component) == (
        7,
        "2026-12-08T00:20:00.000000Z",
        "endpoint-slice-mirroring-controller",
    )


def test_parse_refuses_what_is_not_evidence_and_escapes_the_rest() -> None:
    assert parse_event(core_event(type="Normal")) is None
    assert parse_event(core_event(reason="FailedToUpdateEndpointSlices")) is None
    assert parse_event(core_event(involvedObject={"kind": "Service", "name": "x"})) is None
    assert parse_event(b"[[[[") is None
    assert parse_event(core_event(count="many")) is None
    hostile = parse_event(core_event(message="\x1b[31mred\x1b[0m " + "x" * 5000))
    assert hostile is not None
    assert "\x1b" not in hostile.message and len(hostile.message) < 320
