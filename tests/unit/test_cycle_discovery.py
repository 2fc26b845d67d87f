"""The cycle with discovery, on plain data: the fleet follows the objects
(the real Operator's captured CR and pods, tests/unit/test_discovery_model),
servers that go are not reported down, unreadable ones make their replica
unknown, and a cycle with no server is never complete."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import pytest

from coverage_exporter.cycle import CycleRunner
from coverage_exporter.health import SourceHealth
from coverage_exporter.model import discovery as d
from coverage_exporter.model.objects import PrometheusSnapshot, ScrapeJob
from coverage_exporter.model.scope import Scope
from coverage_exporter.servers import Followed, SeveralServers
from tests.unit import clusters
from tests.unit.test_cycle import NE, ScriptedPrometheus, StaticCluster, samples
from tests.unit.test_discovery_model import cr, pods
from tests.unit.test_servers import FakeDiscovery

CLUSTER = clusters.node_exporter(1200)
# Shard 0 of each replica discovers the whole Service, shard 1 nothing: the
# union of a replica's shards is complete.
ALL = clusters.slice_targets(CLUSTER, "ne", *NE)


def found_source(server: d.FoundServer) -> ScriptedPrometheus:
    ident = server.identity
    assert ident is not None
    targets = ALL if ident.shard == 0 else []
    snap = PrometheusSnapshot(server.name, targets, identity=ident, pools=("ne",))
    return ScriptedPrometheus(server.name, [snap] * 50)


def collector(fake: FakeDiscovery, given: list[ScriptedPrometheus] | None = None) -> CycleRunner:
    c = CycleRunner(StaticCluster(CLUSTER), given or [], Scope())
    health = SourceHealth("discovery", up=True)
    c.set_discovery(
        Followed(fake, found_source, [], [p.health.prometheus for p in given or []]), health
    )
    return c


def known(exposition: bytes) -> dict[str, float]:
    return {
        dict(k)["scraper_replica"]: v
        for k, v in samples(exposition, "scrape_coverage_replica_coverage_known").items()
    }


def servers_up(exposition: bytes) -> dict[str, float]:
    return {
        dict(k)["server"]: v
        for k, v in samples(exposition, "scrape_coverage_source_up").items()
        if dict(k)["server"]
    }


async def test_found_servers_are_judged_then_leave_without_being_down() -> None:
    fake = FakeDiscovery([cr("k8s")], pods("k8s"))
    c = collector(fake)
    first = await c.run_cycle()
    assert first.complete and first.servers == 4
    assert known(first.exposition) == {"prometheus-k8s-0": 1.0, "prometheus-k8s-1": 1.0}
    info = {
        dict(k)["server"]: dict(k) for k in samples(first.exposition, "scrape_coverage_server_info")
    }
    assert info["monitoring/prometheus-k8s-shard-1-1"] == {
        "server": "monitoring/prometheus-k8s-shard-1-1",
        "scraper": "monitoring/k8s",
        "scraper_replica": "prometheus-k8s-1",
        "shard": "1",
        "shards": "2",
        "topology": "discovered",
        "kind": "unknown",  # the scripted servers do not say what they are
        "discovery": "Prometheus monitoring/k8s",
    }
    assert set(servers_up(first.exposition).values()) == {1.0}

    # Scaled to one shard: shard 1's servers are gone, not down.
    fake.objects = [replace(cr("k8s"), shards=1)]
    second = await c.run_cycle()
    assert second.complete and second.servers == 2
    assert sorted(servers_up(second.exposition)) == [
        "monitoring/prometheus-k8s-0",
        "monitoring/prometheus-k8s-1",
    ]
    assert samples(second.exposition, "scrape_coverage_prometheus_missing_targets") == {
        k: 0.0 for k in samples(second.exposition, "scrape_coverage_prometheus_missing_targets")
    }


async def test_a_pod_not_ready_makes_its_replica_unknown_at_once() -> None:
    fake = FakeDiscovery([cr("k8s")], pods("k8s"))
    c = collector(fake)
    assert (await c.run_cycle()).complete
    fake.pods = [
        replace(p, ready=False) if p.name == "prometheus-k8s-shard-1-1" else p for p in pods("k8s")
    ]
    result = await c.run_cycle()
    assert not result.complete
    assert known(result.exposition) == {"prometheus-k8s-0": 1.0, "prometheus-k8s-1": 0.0}
    assert [(s.name, s.unreadable) for s in result.unread] == [
        ("monitoring/prometheus-k8s-shard-1-1", "pod not Ready")
    ]
    # Unknown is never missing: replica 1 has no missing-target figure.
    missing = samples(result.exposition, "scrape_coverage_prometheus_missing_targets")
    assert {dict(k)["scraper_replica"] for k in missing} == {"prometheus-k8s-0"}


async def test_no_server_found_or_given_is_never_complete(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="coverage_exporter.collector")
    c = collector(FakeDiscovery())
    result = await c.run_cycle()
    assert result.servers == 0 and not result.complete
    assert samples(result.exposition, "scrape_coverage_servers") == {(): 0.0}
    await c.run_cycle()
    assert caplog.text.count("no Prometheus server was found or given") == 1  # once, not each cycle


async def test_a_url_that_fronts_several_servers_is_forgotten_at_once() -> None:
    good = PrometheusSnapshot("operated", ALL, pools=("ne",))
    given = ScriptedPrometheus(
        "operated", [good, SeveralServers("prometheus operated: answers come from different")]
    )
    c = collector(FakeDiscovery(), [given])
    assert (await c.run_cycle()).complete
    result = await c.run_cycle()
    assert not result.complete
    # Not kept for --prometheus-stale-after like a server that went silent:
    # what it said mixed servers, so nothing of it is judged any more.
    assert known(result.exposition) == {"operated": 0.0}
    assert samples(result.exposition, "scrape_coverage_prometheus_missing_targets") == {}
    assert servers_up(result.exposition) == {"operated": 0.0}


async def test_a_found_server_that_just_started_is_judged_once_its_discovery_settled() -> None:
    """A found shard fresh from its start: its pools look empty until its
    service discovery delivers, which is still_discovering (unknown), never
    a gap; judged once its discovery has settled (the same one rule as for a
    given server: sources.prometheus.source.discovery_settled)."""
    made: dict[str, ScriptedPrometheus] = {}

    def make(server: d.FoundServer) -> ScriptedPrometheus:
        ident = server.identity
        assert ident is not None
        job = ScrapeJob("ne", "endpointslice", ("monitoring",))
        targets = ALL if ident.shard == 0 else []
        snap = PrometheusSnapshot(
            server.name,
            targets,
            identity=ident,
            jobs=(job,),
            pools=("ne",),
            started=time.time() - 5,
        )
        made[server.name] = ScriptedPrometheus(server.name, [snap] * 50)
        return made[server.name]

    c = CycleRunner(StaticCluster(CLUSTER), [], Scope())
    c.set_discovery(
        Followed(FakeDiscovery([cr("k8s")], pods("k8s")), make, [], []),
        SourceHealth("discovery", up=True),
    )
    first = await c.run_cycle()
    assert known(first.exposition) == {"prometheus-k8s-0": 0.0, "prometheus-k8s-1": 0.0}
    assert samples(first.exposition, "scrape_coverage_prometheus_missing_targets") == {}
    for source in made.values():
        source.discovery_settled = True
    second = await c.run_cycle()
    assert known(second.exposition) == {"prometheus-k8s-0": 1.0, "prometheus-k8s-1": 1.0}
    assert set(
        samples(second.exposition, "scrape_coverage_prometheus_missing_targets").values()
    ) == {0.0}




async def test_listen_local_is_one_finding_and_its_replica_unknown() -> None:
    """A CR with listenLocal: true runs servers nobody outside the pod can
    read: named once, its replica's coverage unknown (never covered, never
    missing), and the cycle not complete."""
    fake = FakeDiscovery([cr("local")], pods("local"))
    c = collector(fake)
    for _ in range(2):  # the same on every cycle, not only the first
        result = await c.run_cycle()
        assert not result.complete
        assert [(f.reason, f.subject) for f in result.findings] == [
            ("listen_local", "Prometheus monitoring/local")
        ]
        assert [s.name for s in result.unread] == ["monitoring/prometheus-local-0"]
        assert set(known(result.exposition).values()) == {0.0}
        assert samples(result.exposition, "scrape_coverage_prometheus_missing_targets") == {}
