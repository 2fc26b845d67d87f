"""PrometheusSource against the fake Prometheus (fakes/prometheus.py) on
127.0.0.1, serving the answers recorded from Prometheus 3.x, 2.53 and
Thanos Query."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from coverage_exporter import logs
from coverage_exporter.model.objects import Target
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.prometheus import source as prometheus
from coverage_exporter.sources.prometheus import target_decoder, targets_json
from coverage_exporter.sources.prometheus.source import (
    PrometheusEndpoint,
    PrometheusSource,
    TargetStream,
    address_host,
    default_name,
    parse_pool_target_counts,
    parse_prometheus_url,
    parse_start_time,
    parse_targets,
)
from fakes.prometheus import (
    AM_POOL,
    FIXTURES,
    KSM_POOL,
    KUBELET_POOL,
    NE_POOL,
    POD_POOL,
    V3_POOL_FILES,
    FakePrometheus,
    Handler,
    fixture_bytes,
    json_response,
)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakePrometheus, str]]:
    server = FakePrometheus()
    async with TestServer(server.app, host="127.0.0.1") as srv:
        yield server, str(srv.make_url("")).rstrip("/")


async def serve(flavour: str) -> tuple[FakePrometheus, TestServer]:
    server = FakePrometheus(flavour)
    srv = TestServer(server.app, host="127.0.0.1")
    await srv.start_server()
    return server, srv


DECODER: list[target_decoder.TargetDecoder | None] = [None]


@pytest.fixture(autouse=True, params=["thread", "process"])
def decoding(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on both decoding paths: in this process's threads,
    and in the worker process (the default of serve)."""
    DECODER[0] = target_decoder.SHARED if request.param == "process" else None
    yield request.param
    DECODER[0] = None


def source_for(url: str, **kwargs: object) -> PrometheusSource:
    concurrency = kwargs.pop("concurrency", 4)
    return PrometheusSource(
        PrometheusEndpoint(url=url, **kwargs), concurrency=concurrency, decoder=DECODER[0]
    )


def by_address(targets: list[Target] | tuple[Target, ...]) -> dict[tuple[str, str], Target]:
    return {(t.scrape_pool, t.address_host): t for t in targets}


# --- configuration -------------------------------------------------------------


def test_parse_prometheus_url_with_and_without_name() -> None:
    assert parse_prometheus_url("main=http://prom.monitoring.svc:9090") == (
        "main",
        "http://prom.monitoring.svc:9090",
    )
    assert parse_prometheus_url("https://thanos.example/") == (
        "thanos.example:443",
        "https://thanos.example",
    )
    # '=' inside the URL's query is not a name separator.
    assert parse_prometheus_url("http://p:9090/prom?x=y") == ("p:9090", "http://p:9090/prom?x=y")
    assert parse_prometheus_url("http://[fd00::1]:9090") == (
        "[fd00::1]:9090",
        "http://[fd00::1]:9090",
    )


@pytest.mark.parametrize("spec", ["", "prom:9090", "=http://p:9090", "n=ftp://p", "n=http://"])
def test_parse_prometheus_url_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_prometheus_url(spec)


def test_endpoint_defaults_and_validation(tmp_path: Path) -> None:
    ep = PrometheusEndpoint(url="http://prom:9090/")
    assert (ep.name, ep.url, ep.insecure_skip_verify) == ("prom:9090", "http://prom:9090", False)
    assert default_name("http://prom") == "prom:80"
    with pytest.raises(ValueError, match="mutually exclusive"):
        PrometheusEndpoint(url="http://p:1", bearer_token_file="/t", basic_auth_user="u")
    with pytest.raises(ValueError):
        PrometheusEndpoint(url="http://p:1", timeout_seconds=0)


def test_tls_verification_is_on_by_default() -> None:
    assert httpclient.ssl_context().verify_mode == ssl.CERT_REQUIRED
    insecure = httpclient.ssl_context(insecure_skip_verify=True)
    assert (insecure.verify_mode, insecure.check_hostname) == (ssl.CERT_NONE, False)
    with pytest.raises(SourceError, match="TLS"):
        httpclient.ssl_context(ca_file="/nonexistent/ca.crt")


# --- Prometheus 3.x: per-pool requests ------------------------------------------


async def test_collect_asks_scrape_pools_then_each_pool_filtered(fake) -> None:
    server, url = fake
    async with source_for(url, name="main") as source:
        snapshot = await source.collect()

    # /metrics first: a full read notes when the server started (its
    # process_start_time_seconds), then the pools.
    assert server.paths[:2] == ["/metrics", "/api/v1/scrape_pools"]
    assert sorted(q["scrapePool"] for q in server.target_requests()) == sorted(V3_POOL_FILES)
    assert all(q["state"] == "active" for q in server.target_requests())
    assert len(server.requests) == 2 + len(V3_POOL_FILES)
    assert snapshot.name == "main"
    # The fluent-bit pod-role target has no Service and is left out.
    assert len(snapshot.targets) == 3 + 2 + 1


async def test_endpoints_role_target_fields(fake) -> None:
    _, url = fake
    async with source_for(url) as source:
        targets = by_address((await source.collect()).targets)
    assert targets[(NE_POOL, "10.0.3.17")] == Target(
        scrape_pool=NE_POOL,
        health="up",
        role="endpoints",
        namespace="monitoring",
        service="node-exporter",
        node_name="ip-10-0-3-17.ec2.internal",
        target_kind="Pod",
        target_name="node-exporter-7xkq2",
        pod_name="node-exporter-7xkq2",
        address_host="10.0.3.17",
    )
    ipv6 = targets[(NE_POOL, "fd00:10:0:6::15")]
    assert (ipv6.health, ipv6.node_name) == ("down", "ip-10-0-6-15.ec2.internal")


async def test_endpointslice_role_target_fields(fake) -> None:
    _, url = fake
    async with source_for(url) as source:
        targets = by_address((await source.collect()).targets)
    assert targets[(KUBELET_POOL, "10.0.4.201")] == Target(
        scrape_pool=KUBELET_POOL,
        health="up",
        role="endpointslice",
        namespace="kube-system",
        service="kubelet",
        node_name="ip-10-0-4-201.ec2.internal",
        target_kind="Node",
        target_name="ip-10-0-4-201.ec2.internal",
        pod_name=None,
        address_host="10.0.4.201",
    )
    # No slice node name on this endpoint: the pod's node is used.
    ksm = targets[(KSM_POOL, "10.244.7.31")]
    assert (ksm.role, ksm.node_name, ksm.target_kind, ksm.pod_name) == (
        "endpointslice",
        "ip-10-0-5-102.ec2.internal",
        "Pod",
        "kube-state-metrics-5f7c9d8b6-x2m4q",
    )


async def test_pool_active_counts_include_dropped_and_empty_pools(fake) -> None:
    _, url = fake
    async with source_for(url) as source:
        await source.collect()
        assert source.pool_active_counts == {
            NE_POOL: 3,
            KUBELET_POOL: 2,
            KSM_POOL: 1,
            AM_POOL: 0,
            POD_POOL: 1,
        }


async def test_pool_requests_are_bounded(fake) -> None:
    server, url = fake
    in_flight = peak = 0

    async def slow_targets(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return json_response(fixture_bytes(V3_POOL_FILES[request.query["scrapePool"]]))

    server.overrides["/api/v1/targets"] = slow_targets
    async with source_for(url, concurrency=2) as source:
        await source.collect()
    assert peak == 2


async def test_a_read_one_pool_at_a_time_never_overlaps_two_pools(fake) -> None:
    """Re-reads (cycle.TargetPoller) read one pool at a time: each pool read
    at once is one more whole answer in the Prometheus's heap (issue #24)."""
    server, url = fake
    in_flight = peak = 0
    asked: list[str] = []

    async def slow_targets(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        asked.append(request.query["scrapePool"])
        await asyncio.sleep(0.05)
        in_flight -= 1
        return json_response(fixture_bytes(V3_POOL_FILES[request.query["scrapePool"]]))

    server.overrides["/api/v1/targets"] = slow_targets
    async with source_for(url) as source:
        await source.collect()
        assert peak == 4  # the first read: DEFAULT_CONCURRENCY at once
        peak = 0
        asked.clear()
        snapshot = await source.collect(one_pool_at_a_time=True)
        assert peak == 1
        assert asked == list(V3_POOL_FILES)  # every pool, in scrape_pools' order
        peak = 0
        await source.collect(pools_to_refresh={NE_POOL, KUBELET_POOL}, one_pool_at_a_time=True)
        assert peak == 1
    assert {t.scrape_pool for t in snapshot.targets} <= set(V3_POOL_FILES)
    assert len(snapshot.targets) > 0


async def test_small_api_answers_are_asked_plain_and_target_lists_gzipped(fake) -> None:
    """Prometheus gzips an API answer with a compressor made for it (~1 MB
    of its heap, bench/analysis.md): worth it for a target list only."""
    server, url = fake
    async with source_for(url) as source:
        await source.read_config()
        await source.collect()
    asked = {r.path: r.accept_encoding for r in server.requests}
    assert asked["/api/v1/status/config"] == "identity"
    assert asked["/api/v1/scrape_pools"] == "identity"
    assert "gzip" in asked["/metrics"]
    assert "gzip" in asked["/api/v1/targets"]


async def test_health_counters_after_success(fake) -> None:
    _, url = fake
    async with source_for(url, name="main") as source:
        await source.collect()
        health = source.health
    expected_bytes = len(
        json.dumps({"status": "success", "data": {"scrapePools": list(V3_POOL_FILES)}})
    ) + sum(len(fixture_bytes(f)) for f in V3_POOL_FILES.values())
    expected_bytes += len(fixture_bytes("v3_metrics.txt"))  # its start time, first
    assert (health.source, health.prometheus) == ("prometheus", "main")
    assert (health.requests_total, health.errors_total) == (7, 0)
    assert health.response_bytes_total == expected_bytes
    assert health.up and health.last_success_timestamp > 0


async def test_strings_are_interned(fake) -> None:
    _, url = fake
    async with source_for(url) as source:
        targets = by_address((await source.collect()).targets)
    ne_a, ne_b = targets[(NE_POOL, "10.0.3.17")], targets[(NE_POOL, "10.0.4.201")]
    kubelet = targets[(KUBELET_POOL, "10.0.3.17")]
    assert ne_a.scrape_pool is ne_b.scrape_pool
    assert ne_a.namespace is ne_b.namespace and ne_a.service is ne_b.service
    # Decoded from different responses, still one object.
    assert ne_a.node_name is kubelet.node_name
    assert ne_a.address_host is kubelet.address_host


async def test_refresh_only_some_pools_reuses_the_others(fake) -> None:
    server, url = fake
    async with source_for(url) as source:
        first = await source.collect()
        server.requests.clear()
        second = await source.collect(pools_to_refresh={KUBELET_POOL})
        assert [q["scrapePool"] for q in server.target_requests()] == [KUBELET_POOL]
        assert sorted(second.targets, key=repr) == sorted(first.targets, key=repr)

        # A new pool is fetched although not asked for; a vanished pool goes.
        del server.answers.pool_files[NE_POOL]
        new_pool = "serviceMonitor/monitoring/new/0"
        server.answers.pool_files[new_pool] = "v3_targets_alertmanager_empty.json"
        server.requests.clear()
        third = await source.collect(pools_to_refresh=())
        assert [q["scrapePool"] for q in server.target_requests()] == [
            "serviceMonitor/monitoring/new/0"
        ]
        assert NE_POOL not in {t.scrape_pool for t in third.targets}
        assert "serviceMonitor/monitoring/new/0" in source.pool_active_counts


async def test_a_full_read_that_changed_nothing_is_the_same_snapshot(fake, decoding) -> None:
    """Decoded in the worker, an unchanged re-read hands out the very same
    snapshot, so the collector neither regroups nor compares; a pool that
    changed gives a new one."""
    server, url = fake
    async with source_for(url) as source:
        first = await source.collect()
        again = await source.collect()
        assert sorted(again.targets, key=repr) == sorted(first.targets, key=repr)
        assert (again is first) == (decoding == "process")
        del server.answers.pool_files[NE_POOL]
        changed = await source.collect()
        assert changed is not first
        assert NE_POOL not in {t.scrape_pool for t in changed.targets}


async def test_a_re_read_with_one_target_changed_keeps_the_other_targets(fake, decoding) -> None:
    """One target changed health between two full reads. Decoded in the
    worker, every other target of the re-read is the very object of the
    first read, so a full re-read does not hold its pools twice."""
    server, url = fake
    flip = [False]

    async def targets(request: web.Request) -> web.StreamResponse:
        pool = request.query["scrapePool"]
        body = fixture_bytes(server.answers.pool_files[pool])
        if flip[0] and pool == KUBELET_POOL:
            document = json.loads(body)
            target = document["data"]["activeTargets"][0]
            target["health"] = "down" if target["health"] == "up" else "up"
            body = json.dumps(document).encode()
        return json_response(body)

    server.overrides["/api/v1/targets"] = targets
    async with source_for(url) as source:
        first = await source.collect()
        flip[0] = True
        second = await source.collect()
    before, after = by_address(first.targets), by_address(second.targets)
    assert before.keys() == after.keys()
    differ = [key for key in before if before[key] != after[key]]
    assert len(differ) == 1 and differ[0][0] == KUBELET_POOL
    if decoding == "process":
        kept = {id(t) for t in first.targets}
        assert [t for t in second.targets if id(t) not in kept] == [after[differ[0]]]


async def test_server_ignoring_scrape_pool_filter_does_not_duplicate(fake) -> None:
    server, url = fake
    everything = fixture_bytes("thanos_targets.json")  # kubelet + node-exporter targets

    async def whole_list(request: web.Request) -> web.StreamResponse:
        return json_response(everything)

    server.overrides["/api/v1/targets"] = whole_list
    async with source_for(url) as source:
        snapshot = await source.collect()
    pools = [t.scrape_pool for t in snapshot.targets]
    # thanos_targets.json holds 3 node-exporter and 2 kubelet targets.
    assert (pools.count(NE_POOL), pools.count(KUBELET_POOL)) == (3, 2)


# --- Prometheus 2.53 and Thanos ------------------------------------------------


async def test_prometheus_2_53_shape_with_dropped_targets() -> None:
    server, srv = await serve("v2.53")
    try:
        async with source_for(str(srv.make_url("")).rstrip("/")) as source:
            snapshot = await source.collect()
    finally:
        await srv.close()
    # droppedTargets (without scrapePool) and droppedTargetCounts are ignored.
    assert len(snapshot.targets) == 2
    kubelet = by_address(snapshot.targets)[(KUBELET_POOL, "10.0.3.17")]
    assert (kubelet.role, kubelet.node_name, kubelet.target_kind, kubelet.target_name) == (
        "endpoints",
        None,
        "Node",
        "ip-10-0-3-17.ec2.internal",
    )
    assert server.target_requests() == [{"state": "active", "scrapePool": KUBELET_POOL}]


async def test_thanos_falls_back_to_state_active_only(caplog) -> None:
    server, srv = await serve("thanos")
    caplog.set_level(logging.INFO, logger=prometheus.__name__)
    try:
        async with source_for(str(srv.make_url("")).rstrip("/"), name="thanos") as source:
            first = await source.collect()
            second = await source.collect(pools_to_refresh=())
            counts = await source.pool_target_counts()
            assert source.uses_fallback
            assert source.health.errors_total == 0
    finally:
        await srv.close()
    # Only state: Query reads nothing else (thanos v0.42.5 NewTargetsHandler;
    # partial responses are its --target.partial-response flag's).
    asked = {"state": "active"}
    assert server.target_requests() == [asked, asked]
    # Replicas repeat targets: all kept, dedupe is the model's job.
    assert len(first.targets) == len(second.targets) == 5
    ne = [t for t in first.targets if t.scrape_pool == NE_POOL]
    assert sorted(t.address_host for t in ne) == ["10.0.3.17", "10.0.3.17", "10.0.4.201"]
    lines = [logs.LogfmtFormatter().format(r) for r in caplog.records]
    assert sum("no scrape pools API" in line and "status=404" in line for line in lines) == 1
    assert counts is None


# --- authentication -----------------------------------------------------------


async def test_bearer_token_is_sent_and_reread(fake, tmp_path: Path) -> None:
    server, url = fake
    token = tmp_path / "token"
    token.write_text("first-token\n")
    async with source_for(url, bearer_token_file=str(token)) as source:
        await source.collect()
        token.write_text("rotated-token\n")
        await source.collect()
    headers = [r.authorization for r in server.requests]
    assert headers[0] == "Bearer first-token"
    assert headers[-1] == "Bearer rotated-token"
    assert set(headers) == {"Bearer first-token", "Bearer rotated-token"}


async def test_basic_auth_header(fake, tmp_path: Path) -> None:
    server, url = fake
    password = tmp_path / "password"
    password.write_text("s3cr\u00e9t\n")
    async with source_for(
        url, basic_auth_user="scraper", basic_auth_password_file=str(password)
    ) as source:
        await source.collect()
    expected = "Basic " + base64.b64encode("scraper:s3cr\u00e9t".encode()).decode()
    assert {r.authorization for r in server.requests} == {expected}


async def test_unreadable_token_file_is_a_source_error(fake, tmp_path: Path) -> None:
    _, url = fake
    async with source_for(url, bearer_token_file=str(tmp_path / "missing")) as source:
        with pytest.raises(SourceError, match="missing"):
            await source.collect()
        assert not source.health.up


# --- failures -------------------------------------------------------------------


def respond(status: int, body: bytes, content_type: str = "application/json") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


async def expect_failure(server: FakePrometheus, url: str, match: str) -> PrometheusSource:
    source = source_for(url, name="main", timeout_seconds=0.5)
    with pytest.raises(SourceError, match=match) as info:
        await source.collect()
    await source.close()
    assert "prometheus main" in str(info.value)
    assert source.health.errors_total == 1
    assert not source.health.up and source.health.last_error == str(info.value)
    return source


async def test_403_names_the_status(fake) -> None:
    server, url = fake
    server.overrides["/api/v1/scrape_pools"] = respond(403, b"Forbidden\n", "text/plain")
    await expect_failure(server, url, r"HTTP 403: Forbidden")


async def test_500_on_one_pool_fails_the_collection(fake) -> None:
    server, url = fake
    async with source_for(url) as source:
        await source.collect()
        before = source.pool_active_counts
        server.overrides["/api/v1/targets"] = respond(500, fixture_bytes("error_internal.json"))
        with pytest.raises(SourceError, match="HTTP 500: internal: scrape manager not ready"):
            await source.collect()
        # The kept per-pool results are untouched by a failed collection.
        assert source.pool_active_counts == before


async def test_timeout(fake) -> None:
    server, url = fake

    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response()

    server.overrides["/api/v1/scrape_pools"] = hang
    source = await expect_failure(server, url, r"timed out after 0.5s")
    assert source.health.requests_total == 2  # /metrics, then the one that hung


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = source_for(f"http://127.0.0.1:{port}")
    # In words, as kubectl says it; never aiohttp's repr of its SSL context.
    refused = rf"cannot connect to 127.0.0.1:{port}: connection refused$"
    with pytest.raises(SourceError, match=refused):
        await source.collect()
    await source.close()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{not json", "undecodable"),
        (b"<html>login</html>", "undecodable"),
        (fixture_bytes("v3_targets_node_exporter.json")[:5000], "undecodable.*truncated"),
        (b'{"status":"success","data":{}}', "activeTargets"),
        (b'{"status":"success"}', "without data"),
        (b'{"status":"success","data":{"activeTargets":[{"health":5}]}}', r"activeTargets\[0\]"),
        (fixture_bytes("error_internal.json"), "status 'error': internal: scrape manager"),
    ],
)
async def test_broken_target_answers(fake, body: bytes, match: str) -> None:
    server, url = fake
    server.overrides["/api/v1/targets"] = respond(200, body)
    await expect_failure(server, url, match)


async def test_broken_scrape_pools_answer(fake) -> None:
    server, url = fake
    server.overrides["/api/v1/scrape_pools"] = respond(200, b'{"status":"success","data":[]}')
    await expect_failure(server, url, "scrape_pools.*undecodable")


async def test_body_cut_before_content_length(fake) -> None:
    server, url = fake

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 10_000
        await resp.prepare(request)
        await resp.write(fixture_bytes("v3_targets_kubelet.json")[:1000])
        assert request.transport is not None
        request.transport.close()
        return resp

    server.overrides["/api/v1/targets"] = cut
    await expect_failure(server, url, "connection lost mid-response")


async def test_empty_success_is_a_valid_empty_result(fake) -> None:
    server, url = fake
    server.answers.pool_files = {AM_POOL: "v3_targets_alertmanager_empty.json"}
    async with source_for(url) as source:
        snapshot = await source.collect()
        assert snapshot.targets == ()
        assert source.health.up and source.pool_active_counts == {AM_POOL: 0}


# --- parsing without a server -----------------------------------------------------


def answer(*targets: dict) -> bytes:
    return json.dumps({"status": "success", "data": {"activeTargets": list(targets)}}).encode()


def raw_target(pool: str = "p", **labels: str) -> dict:
    discovered = {"__address__": "10.0.0.1:80", "__meta_kubernetes_namespace": "ns"} | labels
    return {"discoveredLabels": discovered, "scrapePool": pool, "health": "up"}


def test_null_active_targets_is_empty() -> None:
    assert parse_targets(b'{"status":"success","data":{"activeTargets":null}}') == {}


def test_malformed_targets_are_skipped_unless_all_are(caplog) -> None:
    good = raw_target(__meta_kubernetes_service_name="svc")
    pools = parse_targets(
        answer({"discoveredLabels": None, "scrapePool": "p"}, {"scrapePool": "p"}, good)
    )
    assert [t.service for t in pools["p"].targets] == ["svc"]
    lines = [logs.LogfmtFormatter().format(r) for r in caplog.records]
    assert any("skipped malformed active targets" in ln and "skipped=2 targets=3" in ln
               for ln in lines)  # fmt: skip
    with pytest.raises(SourceError, match="all 2 active targets malformed"):
        parse_targets(answer({"discoveredLabels": {}, "scrapePool": "p"}, {"health": "up"}))


@pytest.mark.parametrize(
    ("labels", "role"),
    [
        (
            {"__meta_kubernetes_endpointslice_name": "s", "__meta_kubernetes_pod_name": "x"},
            "endpointslice",
        ),
        (
            {"__meta_kubernetes_endpoints_name": "e", "__meta_kubernetes_node_name": "n"},
            "endpoints",
        ),
        ({"__meta_kubernetes_pod_name": "x", "__meta_kubernetes_node_name": "n"}, "pod"),
        ({"__meta_kubernetes_node_name": "n"}, "node"),
        ({"__meta_kubernetes_service_name": "svc"}, "service"),
        ({"__meta_kubernetes_ingress_name": "i"}, "ingress"),
        ({}, "other"),
    ],
)
def test_discovery_role(labels: dict[str, str], role: str) -> None:
    decoded = msgspec.json.decode(json.dumps(labels), type=targets_json._DiscoveredLabels)
    assert prometheus.discovery_role(decoded) == role


def test_service_role_target_is_kept_others_without_service_are_not() -> None:
    pools = parse_targets(
        answer(
            raw_target(__meta_kubernetes_service_name="svc"),
            raw_target(__meta_kubernetes_pod_name="x"),
            raw_target(__meta_kubernetes_node_name="n"),
        )
    )
    assert [t.role for t in pools["p"].targets] == ["service"]
    assert pools["p"].active == 3


def test_endpoints_node_name_wins_over_pod_node_name() -> None:
    pools = parse_targets(
        answer(
            raw_target(
                __meta_kubernetes_endpoints_name="e",
                __meta_kubernetes_service_name="e",
                __meta_kubernetes_endpoint_node_name="from-endpoint",
                __meta_kubernetes_pod_node_name="from-pod",
            )
        )
    )
    assert pools["p"].targets[0].node_name == "from-endpoint"


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("[::1]:9100", "::1"),
        ("[fd00:10:0:6::15]:9100", "fd00:10:0:6::15"),
        ("[fd00::1]", "fd00::1"),
        ("fd00::1", "fd00::1"),
        ("10.0.0.1:9100", "10.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
        ("node-1.example:10250", "node-1.example"),
    ],
)
def test_address_host(address: str, host: str) -> None:
    assert address_host(address) == host


# --- cheap counts -----------------------------------------------------------------


async def test_pool_target_counts_from_metrics(fake) -> None:
    server, url = fake
    async with source_for(url) as source:
        counts = await source.pool_target_counts()
    assert counts == {
        POD_POOL: 1,
        AM_POOL: 0,
        KSM_POOL: 1,
        KUBELET_POOL: 2,
        NE_POOL: 3,
    }
    assert server.paths == ["/metrics"]


async def test_pool_target_counts_unavailable(fake) -> None:
    server, url = fake
    server.overrides["/metrics"] = respond(500, b"boom", "text/plain")
    async with source_for(url) as source:
        assert await source.pool_target_counts() is None
        assert source.health.errors_total == 1


def test_parse_pool_target_counts_escapes_and_absence() -> None:
    text = (
        'prometheus_target_scrape_pool_targets{scrape_job="a \\"b\\" \\\\c"} 7\n'
        'prometheus_target_scrape_pool_target_limit{scrape_job="x"} 5\n'
    )
    assert parse_pool_target_counts(text) == {'a "b" \\c': 7}
    assert parse_pool_target_counts("up 1\n") is None


# --- sessions and TLS ---------------------------------------------------------------


async def test_given_session_is_used_and_not_closed(fake) -> None:
    server, url = fake
    async with aiohttp.ClientSession() as session:
        source = PrometheusSource(PrometheusEndpoint(url=url), session=session)
        await source.collect()
        await source.close()
        assert not session.closed
    assert len(server.requests) == 7  # /metrics (the start time), scrape_pools, 5 pools


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject]
    subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return cert, key


async def test_tls_verified_against_ca_file(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    fake = FakePrometheus()
    srv = TestServer(fake.app, host="127.0.0.1")
    await srv.start_server(ssl=server_ctx)
    url = f"https://127.0.0.1:{srv.port}"
    try:
        not_trusted = "TLS certificate of 127.0.0.1:[0-9]+ not accepted: self-signed certificate"
        with pytest.raises(SourceError, match=not_trusted):
            async with source_for(url) as source:
                await source.collect()
        async with source_for(url, ca_file=str(cert)) as source:
            assert len((await source.collect()).targets) == 6
        async with source_for(url, insecure_skip_verify=True) as source:
            assert len((await source.collect()).targets) == 6
    finally:
        await srv.close()


# --- decoding while the body arrives ------------------------------------------


def compact_answer(targets: list[dict], dropped: list[dict] | None = None) -> bytes:
    """As Prometheus writes it: compact JSON, discoveredLabels first."""
    data: dict = {"activeTargets": targets}
    if dropped is not None:
        data["droppedTargets"] = dropped
    return json.dumps({"status": "success", "data": data}, separators=(",", ":")).encode()


def many_targets(count: int, pool: str = "p") -> list[dict]:
    return [
        raw_target(
            pool,
            __address__=f"10.1.{i // 250}.{i % 250}:9100",
            __meta_kubernetes_service_name="svc",
            __meta_kubernetes_endpointslice_name=f"svc-{i // 100}",
            __meta_kubernetes_endpointslice_endpoint_node_name=f"node-{i}",
        )
        for i in range(count)
    ]


def stream_in_chunks(body: bytes, chunk: int, piece: int, pool: str | None = None):
    stream = TargetStream(pool, piece_bytes=piece)
    peak = 0
    for at in range(0, len(body), chunk):
        stream.feed(body[at : at + chunk])
        peak = max(peak, stream.buffered)
    return stream.finish(), peak


def summary(pools: dict) -> dict:
    return {
        p: (r.active, [(t.node_name, t.address_host) for t in r.targets]) for p, r in pools.items()
    }


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_streamed_decode_equals_whole_decode(chunk: int) -> None:
    body = (FIXTURES / "v3_targets_node_exporter.json").read_bytes()
    whole = parse_targets(body, "serviceMonitor/monitoring/node-exporter/0")
    streamed, _ = stream_in_chunks(
        body, chunk, piece=64, pool="serviceMonitor/monitoring/node-exporter/0"
    )
    assert summary(streamed) == summary(whole) and whole


def test_streamed_decode_holds_one_piece_not_the_body() -> None:
    body = compact_answer(many_targets(10000))
    pools, peak = stream_in_chunks(body, chunk=64 << 10, piece=256 << 10, pool="p")
    assert pools["p"].active == 10000 and len(pools["p"].targets) == 10000
    assert [t.node_name for t in pools["p"].targets[:2]] == ["node-0", "node-1"]
    assert len(body) > 2_000_000 and peak < 400 << 10


def test_streamed_decode_survives_dropped_targets_after_the_array() -> None:
    """A server that ignores state=active: the piece that spans the end of
    the array cannot be split; the rest is decoded whole, nothing lost."""
    body = compact_answer(many_targets(300), dropped=many_targets(300, pool="other"))
    pools, _ = stream_in_chunks(body, chunk=1000, piece=2000, pool="p")
    assert pools["p"].active == 300


def test_streamed_error_answer_is_a_source_error() -> None:
    stream = TargetStream("p", piece_bytes=16)
    stream.feed(b'{"status":"error","errorType":"bad_data","error":"x"}')
    with pytest.raises(SourceError, match="bad_data"):
        stream.finish()


def test_streamed_body_cut_short_is_a_source_error() -> None:
    body = compact_answer(many_targets(200))
    with pytest.raises(SourceError, match="undecodable"):
        stream_in_chunks(body[: len(body) // 2], chunk=500, piece=1000, pool="p")


# --- when the server started (still discovering) -------------------------------------

# As client_golang's process collector writes it (expfmt: strconv 'g'),
# on the real Prometheus 2.53 and 3.16 alike (tests/e2e/test_discovering_e2e.py
# checks the name there).
_START_HELP = (
    b"# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
    b"# TYPE process_start_time_seconds gauge\n"
)


def metrics_with_start(start: float, date: str) -> Handler:
    body = fixture_bytes("v3_metrics.txt") + _START_HELP
    body += f"process_start_time_seconds {start / 1e9!r}e+09\n".encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="text/plain", headers={"Date": date})

    return handler


async def test_a_full_read_carries_the_servers_start_on_this_clock(fake, decoding) -> None:
    """Its uptime is the Date of its answer minus its start, both on its own
    clock: a server whose clock is an hour behind, up for 30 s, started 30 s
    ago here, not an hour and 30 s ago."""
    server, url = fake
    server_now = 1_700_000_000.0  # its clock: far from ours
    server.overrides["/metrics"] = metrics_with_start(
        server_now - 30, "Tue, 14 Nov 2023 22:13:20 GMT"
    )
    async with source_for(url) as source:
        before = time.time()
        snapshot = await source.collect()
        after = time.time()
        assert snapshot.started is not None
        assert before - 30 <= snapshot.started <= after - 30
        # The same start told again: the same value (and, decoded in the
        # worker, the very same snapshot: the collector compares nothing).
        again = await source.collect()
        assert again.started == snapshot.started
        assert (again is snapshot) == (decoding == "process")
        # A restart (a new start told): a new value.
        server.overrides["/metrics"] = metrics_with_start(
            server_now + 60, "Tue, 14 Nov 2023 22:14:25 GMT"
        )
        restarted = await source.collect()
        assert restarted.started is not None and restarted.started > snapshot.started


async def test_a_start_in_the_future_of_its_date_is_now(fake) -> None:
    server, url = fake
    server.overrides["/metrics"] = metrics_with_start(
        1_700_000_100.0, "Tue, 14 Nov 2023 22:13:20 GMT"
    )
    async with source_for(url) as source:
        before = time.time()
        snapshot = await source.collect()
    assert snapshot.started is not None and before <= snapshot.started <= time.time()


async def test_no_metrics_means_no_start(fake) -> None:
    server, url = fake
    server.overrides["/metrics"] = respond(404, b"404 page not found\n", "text/plain")
    async with source_for(url) as source:
        assert (await source.collect()).started is None


def test_parse_start_time() -> None:
    assert parse_start_time("up 1\nprocess_start_time_seconds 1.76530918541e+09\n") == (
        1.76530918541e09
    )
    assert parse_start_time("process_start_time_seconds 12\n") == 12.0
    assert parse_start_time("process_start_time_seconds_x 12\n") is None
    assert parse_start_time("up 1\n") is None
    for bad in ("NaN", "+Inf", "-5", "0", "x"):
        assert parse_start_time(f"process_start_time_seconds {bad}\n") is None, bad
