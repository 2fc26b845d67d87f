"""`audit --output json`: a versioned document whose every field is listed
in docs/audit-json.md, and nothing the page lists is missing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from coverage_exporter.exposition.audit import JSON_VERSION, render_json
from coverage_exporter.health import SourceHealth
from coverage_exporter.model.discovery import DiscoveryFinding, FoundServer
from coverage_exporter.model.evidence import EventsRead, Evidence, gather
from coverage_exporter.model.readiness import PrometheusCR, Readiness
from coverage_exporter.model.report import Unresolved
from tests.unit.test_audit_output import UP, truncated_report
from tests.unit.test_evidence import capped, kubelet_report


def capped_evidence() -> Evidence:
    return gather(EventsRead.READ, [capped()])

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "audit-json.md"


def documented() -> dict[str, set[str]]:
    """Section title (the object's name) -> the fields its table lists."""
    out: dict[str, set[str]] = {}
    section = ""
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^#{2,3} (.+)$", line)
        if heading:
            section = heading.group(1).strip()
            out.setdefault(section, set())
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if section and line.startswith("| `"):
            out[section].update(re.findall(r"`([a-z_]+)`", cells[0]))
    return out


def objects(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each kind of object in a rendered document, by its section's name."""
    services = doc["services"]
    return {
        "The document": [doc],
        "source": doc["sources"],
        "replica": doc["replicas"],
        "server": [s for r in doc["replicas"] for s in r["servers"]],
        "service": services,
        "endpoints": [s["endpoints"] for s in services if s["endpoints"]],
        "endpointslices": [s["endpointslices"] for s in services],
        "prometheus": [s["prometheus"] for s in services],
        "pool": [p for s in services for p in s["prometheus"]["pools"]],
        "gap": [g for s in services for g in s["gaps"]],
        "migration": doc["migration"],
        "unresolved": doc["unresolved"],
        "discovery": [doc["discovery"]],
        "finding": doc["discovery"]["findings"],
        "not read": doc["discovery"]["not_read"],
        "events": [doc["events"]],
        "evidence": [e for s in services for e in s["evidence"]],
    }


def readiness() -> Readiness:
    cr = PrometheusCR(
        kind="Prometheus", namespace="monitoring", name="k8s", service_discovery_role="Endpoints",
        service_account="prometheus-k8s", service_monitor_selector=None,
        service_monitor_namespace_selector=None,
    )  # fmt: skip
    return Readiness(
        cr, "Endpoints", (("monitoring", "node-exporter"),), (), True, "mirrored_capped",
        "dual-write", False, "let the Operator write the kubelet slices",
        "--kubelet-endpointslice=true",
    )  # fmt: skip


def test_every_field_is_documented_and_every_documented_field_is_written() -> None:
    report = truncated_report()
    report.unresolved = [Unresolved("apps", "web", "its pods cannot be listed")]
    found = [DiscoveryFinding("Prometheus monitoring/local", "listen_local", "...")]
    unread = [
        FoundServer("monitoring/prometheus-local-0", "Prometheus monitoring/local",
                    unreadable="listenLocal: serves 127.0.0.1 only")
    ]  # fmt: skip
    doc = json.loads(render_json(report, UP, readiness=[readiness()], found=found, unread=unread))
    # And a Service whose finding an event confirms (model.evidence).
    capped = json.loads(render_json(kubelet_report(), UP, evidence=capped_evidence()))
    doc["services"] += capped["services"]
    listed = documented()
    for name, found in objects(doc).items():
        assert found, f"the test renders no {name}"
        keys = set().union(*(o.keys() for o in found))
        extra, absent = keys - listed[name], listed[name] - keys
        assert not extra and not absent, f"{name}: undocumented {extra}, not written {absent}"


def test_the_document_carries_its_version() -> None:
    doc = json.loads(render_json(truncated_report(), UP))
    assert doc["version"] == JSON_VERSION == 1
    down = [SourceHealth("kubernetes", up=False, last_error="connection refused")]
    assert json.loads(render_json(None, down))["version"] == 1
