"""The audit command's output for people and for programs."""

from __future__ import annotations

import json

from coverage_exporter.exposition.audit import render_json, render_table
from coverage_exporter.health import SourceHealth
from coverage_exporter.model.objects import PrometheusSnapshot
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope
from tests.unit import clusters

NE = ("monitoring", "node-exporter")
UP = [SourceHealth("kubernetes", up=True), SourceHealth("prometheus", "p", up=True)]


def truncated_report():
    cluster = clusters.node_exporter(1200)
    prom = PrometheusSnapshot("p", clusters.endpoints_targets(cluster, "ne", *NE))
    return build_report(Scope(), cluster, [prom])


def test_json_names_every_missing_node_and_the_finding() -> None:
    doc = json.loads(render_json(truncated_report(), UP))
    assert doc["complete"] is True and doc["gaps"] is True
    (svc,) = doc["services"]
    assert svc["endpoints"]["truncated"] is True
    (pool,) = svc["prometheus"]["pools"]
    assert (pool["scrape_pool"], pool["role"], pool["discovered"]) == ("ne", "endpoints", 1000)
    assert len(pool["missing"]) == 200
    assert pool["missing"][0] == {"node": "node-1000", "cause": "endpoints_truncated"}
    assert pool["causes"] == {"endpoints_truncated": 200} and pool["cause_rule"] is None
    assert svc["endpoints"]["causes"] == {"endpoints_truncated": 200}
    (line,) = [f for f in svc["findings"] if "migrate this job to role endpointslice" in f]
    assert "why: 200 cut from the truncated Endpoints [endpoints_truncated]" in line


def test_json_without_kubernetes_says_nothing_was_compared() -> None:
    down = [SourceHealth("kubernetes", up=False, last_error="connection refused")]
    doc = json.loads(render_json(None, down))
    assert doc == {
        "version": 1,
        "sources": [
            {"source": "kubernetes", "server": "", "up": False, "error": "connection refused"}
        ],
        "replicas": [],
        "verdict": "no coverage: Kubernetes could not be read",
        "migration": [],
        "events": None,
        "discovery": {"findings": [], "not_read": []},
        "complete": False,
        "gaps": None,
        "nodes": None,
        "services": [],
        "controllers": None,
        "unresolved": [],
        "unreached": [],
    }


def test_table_shows_the_truncation_in_words() -> None:
    text = render_table(truncated_report(), UP)
    assert "monitoring/node-exporter" in text and "1000 TRUNCATED" in text
    assert "scrape pool 'ne' (role endpoints) misses 200 of 1200: node-1000" in text
    assert text.rstrip().endswith("gaps found")


def test_table_without_kubernetes() -> None:
    down = [SourceHealth("kubernetes", up=False, last_error="x509: unknown authority")]
    text = render_table(None, down)
    assert "DOWN (x509: unknown authority)" in text
    assert "no coverage: Kubernetes could not be read" in text
