"""The exporter's parsers on answers captured from the real scrapers of
testbed/scrapers.py (tests/fixtures/captured/scrapers, written by
`tests/fixtures/capture.py --scrapers-only` on a 12-node testbed):
vmagent v1.151.0, Prometheus 3.16 --agent and Thanos Query v0.42.5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coverage_exporter.model.objects import (
    KIND_PROMETHEUS,
    KIND_PROMETHEUS_AGENT,
    KIND_THANOS_QUERY,
    KIND_VMAGENT,
)
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.prometheus.config import parse_config_response
from coverage_exporter.sources.prometheus.server_kind import (
    NOT_SERVED,
    kind_from_flags,
    kind_from_metrics,
    replica_labels,
)
from coverage_exporter.sources.prometheus.source import parse_pool_target_counts, parse_targets
from coverage_exporter.sources.prometheus.thanos import (
    StoreMembers,
    StoreTargetStream,
    label_names,
    parse_stores,
)

CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "captured" / "scrapers"
R0 = (("prometheus", "monitoring/thanos"), ("prometheus_replica", "prometheus-thanos-0"))
R1 = (("prometheus", "monitoring/thanos"), ("prometheus_replica", "prometheus-thanos-1"))


def read(path: str) -> bytes:
    return (CAPTURED / path).read_bytes()


# --- what each one is -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("prometheus-3/status_flags.json", KIND_PROMETHEUS),
        ("prometheus-agent/status_flags.json", KIND_PROMETHEUS_AGENT),
        ("thanos-query/status_flags.json", KIND_THANOS_QUERY),
        ("thanos-query-dedup/status_flags.json", KIND_THANOS_QUERY),
        ("vmagent/status_flags_400.txt", None),
    ],
)
def test_the_flags_answer_tells_prometheus_agent_mode_and_thanos_query(path, kind) -> None:
    assert kind_from_flags(read(path)) == kind


def test_vmagent_is_told_by_its_build_info_metric() -> None:
    assert kind_from_metrics(read("vmagent/metrics.txt").decode()) == KIND_VMAGENT
    assert kind_from_metrics('prometheus_build_info{version="3.16.0"} 1\n') is None


def test_replica_labels_of_thanos_query() -> None:
    assert replica_labels(read("thanos-query/status_flags.json")) == ()
    assert replica_labels(read("thanos-query-dedup/status_flags.json")) == ("prometheus_replica",)


@pytest.mark.parametrize(
    "path",
    [
        "vmagent/scrape_pools_400.txt",
        "vmagent/status_flags_400.txt",
        "thanos-query/scrape_pools_404.txt",
        "thanos-query/status_config_404.txt",
    ],
)
def test_paths_a_scraper_lacks_answer_a_status_taken_as_not_served(path: str) -> None:
    status = int(path.rsplit("_", 1)[1].split(".")[0])
    assert status in NOT_SERVED


def test_prometheus_agent_refuses_only_the_query_api() -> None:
    answer = json.loads(read("prometheus-agent/query_422.json"))
    assert answer["error"] == "unavailable with Prometheus Agent"
    pools = json.loads(read("prometheus-agent/scrape_pools.json"))["data"]["scrapePools"]
    assert "kubelet-endpoints" in pools
    (targets,) = parse_targets(read("prometheus-agent/targets_kubelet-endpoints.json")).values()
    assert {t.role for t in targets.targets} == {"endpoints"}


# --- vmagent ------------------------------------------------------------------------


def test_vmagent_targets_decode_as_prometheus_targets() -> None:
    pools = parse_targets(read("vmagent/targets_node-exporter-endpoints.json"))
    (pool,) = pools.values()
    assert pool.active == len(pool.targets) == 5 and pool.unattributed == 0
    for target in pool.targets:
        assert target.role == "endpoints"
        assert (target.namespace, target.service) == ("monitoring", "node-exporter")
        assert target.node_name and target.node_name.startswith("node-")
        assert target.target_kind == "Pod"


def test_vmagent_without_original_labels_matches_by_final_labels_or_counts_unattributed() -> None:
    (pool,) = parse_targets(
        read("vmagent-common-flags/targets_node-exporter-endpoints.json")
    ).values()
    assert pool.active == len(pool.targets) == 5
    assert {(t.role, t.namespace, t.service) for t in pool.targets} == {
        ("unknown", "monitoring", "node-exporter")
    }
    (bare,) = parse_targets(read("vmagent-common-flags/targets_node-exporter-bare.json")).values()
    assert (bare.active, len(bare.targets), bare.unattributed) == (5, 0, 5)


def test_vmagent_configuration_parses_with_its_own_forms() -> None:
    """vmagent answers its parsed -promscrape.config: defaults left out, and
    the bare job's alternation written back as a list."""
    config = parse_config_response(read("vmagent-common-flags/config.json"))
    jobs = {j.name: j for j in config.jobs}
    assert jobs["node-exporter-endpoints"].role == "endpoints"
    assert jobs["node-exporter-endpointslice"].role == "endpointslice"
    assert jobs["node-exporter-endpoints"].namespaces == ("monitoring",)
    bare = jobs["node-exporter-bare"]
    assert bare.relabel[0].regex == "monitoring;node-exporter|monitoring;node-exporter-legacy"
    assert b"- monitoring;node-exporter\\n" in read("vmagent-common-flags/config.json")


def test_vmagent_pool_counts_add_up_and_down() -> None:
    counts = parse_pool_target_counts(read("vmagent/metrics.txt").decode())
    assert counts is not None and set(counts) >= {"node-exporter-endpoints", "kubelet-endpoints"}
    text = read("vmagent/metrics.txt").decode()
    up_down = [line for line in text.splitlines() if 'scrape_job="kubelet-endpoints"' in line]
    assert len(up_down) == 2
    assert counts["kubelet-endpoints"] == sum(float(x.rsplit(" ", 1)[1]) for x in up_down)


# --- Thanos Query ------------------------------------------------------------------


def _stream(path: str, names: set[str]) -> StoreTargetStream:
    stream = StoreTargetStream(names)
    stream.feed(read(path))
    stream.finish()
    return stream


def test_thanos_stores_and_targets_split_by_replica() -> None:
    stores = parse_stores(read("thanos-query/stores.json"))
    assert sorted(s.labels for s in stores) == [R0, R1]
    assert not any(s.error for s in stores)
    stream = _stream("thanos-query/targets.json", label_names(stores))
    assert set(stream.by_labels) == {R0, R1} and stream.warnings == []
    members = StoreMembers("tq").snapshots(stores, stream.by_labels, stream.warnings, 0.0)
    assert [m.unknown_reason for m in members] == ["", ""]
    assert all(m.targets and m.server_identity.how == "operator" for m in members)


def test_thanos_with_replica_labels_merges_what_no_store_can_claim_alone() -> None:
    stores = parse_stores(read("thanos-query-dedup/stores.json"))
    stream = _stream("thanos-query-dedup/targets.json", label_names(stores))
    assert set(stream.by_labels) == {(("prometheus", "monitoring/thanos"),)}
    members = StoreMembers("tqd").snapshots(stores, stream.by_labels, stream.warnings, 0.0)
    assert len(members) == 2
    assert all("--query.replica-label" in m.unknown_reason for m in members)


def test_a_stopped_sidecar_before_and_after_query_notices() -> None:
    stores = parse_stores(read("thanos-query/stores.json"))
    names = label_names(stores)
    members = StoreMembers("tq")
    members.snapshots(stores, _stream("thanos-query/targets.json", names).by_labels, [], 0.0)
    # Before: Query still asks the stopped sidecar; the answer warns.
    unnoticed = _stream("thanos-sidecar-1-stopped/targets_unnoticed.json", names)
    assert unnoticed.warnings and "code = Unavailable" in unnoticed.warnings[0]
    assert set(unnoticed.by_labels) == {R0}
    r0, r1 = members.snapshots(stores, unnoticed.by_labels, unnoticed.warnings, 1.0)
    assert r0.unknown_reason == "" and "partial" in r1.unknown_reason
    # After: no warning; the stores say why.
    noticed_stores = parse_stores(read("thanos-sidecar-1-stopped/stores_noticed.json"))
    assert [bool(s.error) for s in sorted(noticed_stores, key=lambda s: s.labels)] == [False, True]
    noticed = _stream("thanos-sidecar-1-stopped/targets_noticed.json", names)
    assert noticed.warnings == [] and set(noticed.by_labels) == {R0}
    r0, r1 = members.snapshots(noticed_stores, noticed.by_labels, [], 2.0)
    assert r0.unknown_reason == "" and "leaves this store out" in r1.unknown_reason
    # Its last targets still list its pools.
    assert r1.targets and r1.pools


def test_a_partial_answer_read_as_a_plain_prometheus_is_an_error_not_a_shrunk_list() -> None:
    with pytest.raises(SourceError, match="partial answer"):
        parse_targets(read("thanos-sidecar-1-stopped/targets_unnoticed.json"))


def test_the_hand_written_thanos_fixture_has_the_real_shape() -> None:
    """tests/fixtures/prometheus/thanos_targets.json, used by the source's
    fake server, against the real Query's answer: the same keys."""
    fake = json.loads((CAPTURED.parents[1] / "prometheus" / "thanos_targets.json").read_bytes())
    real = json.loads(read("thanos-query/targets.json"))
    assert set(fake) <= set(real) | {"warnings"}
    fake_keys = {k for t in fake["data"]["activeTargets"] for k in t}
    real_keys = {k for t in real["data"]["activeTargets"] for k in t}
    assert fake_keys == real_keys


# --- the source, on the captured answers replayed ------------------------------------
# A replay, not a fake of behaviour: each path answers the bytes and status the
# real server gave (a proxy that refuses /api/v1/status/flags is the one
# thing added: it cannot run here as the scrapers' own).


def replay(answers: dict[str, tuple[int, bytes]]):
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        status, body = answers.get(request.path, (404, b"404 page not found\n"))
        kind = "application/json" if body[:1] == b"{" else "text/plain"
        return web.Response(status=status, body=body, content_type=kind)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


async def _collect(answers: dict[str, tuple[int, bytes]], name: str):
    from aiohttp.test_utils import TestServer

    from coverage_exporter.sources.prometheus.source import PrometheusEndpoint, PrometheusSource

    async with TestServer(replay(answers), host="127.0.0.1") as srv:
        url = str(srv.make_url("")).rstrip("/")
        async with PrometheusSource(PrometheusEndpoint(url=url, name=name)) as source:
            config = await source.read_config()
            return source.kind, config, await source.collect()


async def test_thanos_query_behind_a_proxy_that_refuses_its_flags_is_still_split() -> None:
    """Read as one server, Query's union would hide replica 1's losses: its
    /api/v1/stores tells it, once /api/v1/status/flags is refused."""
    kind, config, snap = await _collect(
        {
            "/api/v1/status/flags": (403, b"forbidden\n"),
            "/api/v1/stores": (200, read("thanos-query/stores.json")),
            "/api/v1/targets": (200, read("thanos-query/targets.json")),
        },
        "tq",
    )
    assert (kind, config) == (KIND_THANOS_QUERY, None)
    assert snap.targets == () and len(snap.members) == 2
    assert {m.server_identity.replica for m in snap.members} == {
        "prometheus-thanos-0",
        "prometheus-thanos-1",
    }
    assert all(m.server_identity.kind == KIND_THANOS_QUERY for m in snap.members)


async def test_vmagent_is_read_with_its_own_answers() -> None:
    kind, config, snap = await _collect(
        {
            "/api/v1/status/flags": (400, read("vmagent-common-flags/status_flags_400.txt")),
            "/api/v1/scrape_pools": (400, read("vmagent-common-flags/scrape_pools_400.txt")),
            "/api/v1/status/config": (200, read("vmagent-common-flags/config.json")),
            "/metrics": (200, read("vmagent-common-flags/metrics.txt")),
            "/api/v1/targets": (
                200,
                read("vmagent-common-flags/targets_node-exporter-endpoints.json"),
            ),
        },
        "vm",
    )
    assert kind == KIND_VMAGENT and config is not None
    assert snap.server_identity.kind == KIND_VMAGENT and not snap.discovered_labels
    # No discovered labels: the role is the job's, from vmagent's configuration.
    assert {t.role for t in snap.targets} == {"endpoints"}
    assert snap.unjudged_pools == {}
