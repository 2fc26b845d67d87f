"""The cycle's orchestration on plain data: failed sources keep their last
good data, and a Prometheus is re-read only as much as needed."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

from coverage_exporter.cycle import CycleResult, CycleRunner
from coverage_exporter.health import SourceHealth
from coverage_exporter.model.causes import Cause
from coverage_exporter.model.objects import (
    KIND_UNKNOWN,
    ClusterSnapshot,
    PrometheusSnapshot,
    RelabelRule,
    ScrapeJob,
    Service,
)
from coverage_exporter.model.scope import Scope
from coverage_exporter.model.stages import service_stages
from coverage_exporter.model.topology import Declared
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.prometheus.config import LoadedConfig
from tests.unit import clusters

NE = ("monitoring", "node-exporter")


class StaticCluster:
    def __init__(self, snapshot: ClusterSnapshot, synced: bool = True) -> None:
        self.health = SourceHealth("kubernetes", up=synced)
        self._snapshot = snapshot
        self.synced = synced
        self.scope: list[Service] = []

    def snapshot(self) -> ClusterSnapshot:
        return self._snapshot

    def set_pod_scope(self, services: Sequence[Service]) -> None:
        self.scope = list(services)

    async def ensure_pods_synced(self, timeout: float) -> None:  # noqa: ASYNC109
        return None

    def scope_ready(self) -> bool:
        return self.is_synced()

    def is_synced(self) -> bool:
        return self.synced


class ScriptedPrometheus:
    """Answers from a list of snapshots; an exception in the list is raised."""

    def __init__(
        self,
        name: str,
        answers: list[PrometheusSnapshot | Exception],
        counts: list[dict[str, int] | None] | None = None,
    ) -> None:
        self.health = SourceHealth("prometheus", name)
        self.declared = Declared()
        self.kind = KIND_UNKNOWN
        self._answers = answers
        self._counts = counts or []
        self.collect_calls: list[Collection[str] | None] = []
        self.in_turn: list[bool] = []
        """one_pool_at_a_time, per collect() call."""
        self._active: dict[str, int] = {}
        self.discovery_settled = False

    @property
    def pool_active_counts(self) -> Mapping[str, int]:
        return self._active

    async def collect(
        self, pools_to_refresh: Collection[str] | None = None, *, one_pool_at_a_time: bool = False
    ) -> PrometheusSnapshot:
        self.collect_calls.append(pools_to_refresh)
        self.in_turn.append(one_pool_at_a_time)
        answer = self._answers.pop(0)
        if isinstance(answer, Exception):
            self.health.mark(False, 0.1, str(answer))
            raise answer
        self.health.mark(True, 0.1)
        self._active = {}
        for t in answer.targets:
            self._active[t.scrape_pool] = self._active.get(t.scrape_pool, 0) + 1
        return answer

    async def pool_target_counts(self) -> dict[str, int] | None:
        return self._counts.pop(0) if self._counts else None

    async def read_config(self) -> LoadedConfig | None:
        # The configuration is read first in every poll: a failing server
        # fails there, as the real one would.
        if self._answers and isinstance(self._answers[0], Exception):
            self.health.mark(False, 0.1, str(self._answers[0]))
            raise self._answers.pop(0)
        return self.config

    config: LoadedConfig | None = None


def samples(exposition: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    for family in text_string_to_metric_families(exposition.decode()):
        if family.name == name:
            return {tuple(sorted(s.labels.items())): s.value for s in family.samples}
    return {}


def prometheus_missing(exposition: bytes) -> list[float]:
    return list(samples(exposition, "scrape_coverage_prometheus_missing_targets").values())


async def test_a_failing_prometheus_keeps_its_last_good_targets_not_zero() -> None:
    cluster = clusters.node_exporter(1200)
    good = PrometheusSnapshot("p", clusters.endpoints_targets(cluster, "ne", *NE))
    prom = ScriptedPrometheus("p", [good, SourceError("HTTP 503 from p")])
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope())

    first = await collector.run_cycle()
    assert first.complete and prometheus_missing(first.exposition) == [200.0]

    second = await collector.run_cycle()
    assert not second.complete
    assert prometheus_missing(second.exposition) == [200.0]
    up = samples(second.exposition, "scrape_coverage_source_up")
    assert up[(("server", "p"), ("source", "prometheus"))] == 0.0
    assert samples(second.exposition, "scrape_coverage_prometheus_targets") == samples(
        first.exposition, "scrape_coverage_prometheus_targets"
    )


async def test_a_prometheus_that_never_answered_publishes_no_pool_figures() -> None:
    cluster = clusters.node_exporter(1200)
    prom = ScriptedPrometheus("p", [SourceError("connection refused")])
    result = await CycleRunner(StaticCluster(cluster), [prom], Scope(frozenset({NE}))).run_cycle()
    assert not result.complete
    assert prometheus_missing(result.exposition) == []
    assert samples(result.exposition, "scrape_coverage_gap_targets") == {}
    # The Kubernetes stages are still known and published.
    missing = samples(result.exposition, "scrape_coverage_missing_targets")
    assert (
        missing[(("namespace", "monitoring"), ("service", "node-exporter"), ("stage", "endpoints"))]
        == 200.0
    )


async def test_unsynced_kubernetes_publishes_no_coverage_at_all() -> None:
    prom = ScriptedPrometheus("p", [PrometheusSnapshot("p", [])])
    collector = CycleRunner(StaticCluster(ClusterSnapshot(), synced=False), [prom], Scope())
    result = await collector.run_cycle()
    assert result.report is None and not result.complete
    assert samples(result.exposition, "scrape_coverage_missing_targets") == {}
    assert samples(result.exposition, "scrape_coverage_cycles")[()] == 1.0


async def test_pod_scope_follows_the_services_prometheus_discovers() -> None:
    cluster = clusters.node_exporter(10)
    kube = StaticCluster(cluster)
    prom = ScriptedPrometheus(
        "p", [PrometheusSnapshot("p", clusters.slice_targets(cluster, "ne", *NE))]
    )
    await CycleRunner(kube, [prom], Scope()).run_cycle()
    assert [s.key for s in kube.scope] == [NE]


async def test_unchanged_counts_skip_the_target_lists() -> None:
    cluster = clusters.node_exporter(1200)
    targets = clusters.endpoints_targets(cluster, "ne", *NE)
    snapshot = PrometheusSnapshot("p", targets)
    prom = ScriptedPrometheus(
        "p", [snapshot, snapshot], counts=[{"ne": 1000}, {"ne": 1000, "other": 5}]
    )
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope(), full_refresh_seconds=3600)
    await collector.run_cycle()
    second = await collector.run_cycle()
    assert prom.collect_calls == [None]
    assert second.complete and prometheus_missing(second.exposition) == [200.0]
    await collector.run_cycle()
    assert prom.collect_calls == [None, {"other"}]


async def test_only_the_first_read_reads_several_pools_at_once() -> None:
    """Re-reads, full or partial, read one pool at a time: each pool read at
    once is one more whole answer in the Prometheus's heap (issue #24); the
    first read, which readiness waits for, keeps reading a few at once."""
    cluster = clusters.node_exporter(1200)
    snapshot = PrometheusSnapshot("p", clusters.endpoints_targets(cluster, "ne", *NE))
    prom = ScriptedPrometheus(
        "p",
        [snapshot, snapshot, snapshot],
        counts=[{"ne": 1000}, {"ne": 1000, "other": 5}],
    )
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope(), full_refresh_seconds=3600)
    await collector.run_cycle()  # first read: every pool
    await collector.run_cycle()  # counts unchanged: nothing read
    await collector.run_cycle()  # a pool's count moved: that pool
    await collector.run_cycle()  # counts unavailable: every pool again
    assert prom.collect_calls == [None, {"other"}, None]
    assert prom.in_turn == [False, True, True]


async def test_a_full_reread_reads_one_pool_at_a_time() -> None:
    cluster = clusters.node_exporter(10)
    snapshot = PrometheusSnapshot("p", [])
    prom = ScriptedPrometheus("p", [snapshot, snapshot, snapshot])
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope(), full_refresh_seconds=0)
    for _ in range(3):
        await collector.run_cycle()
    assert prom.collect_calls == [None, None, None]
    assert prom.in_turn == [False, True, True]


async def test_a_first_read_that_failed_is_retried_several_pools_at_once() -> None:
    cluster = clusters.node_exporter(10)
    snapshot = PrometheusSnapshot("p", [])
    prom = ScriptedPrometheus("p", [SourceError("HTTP 503"), snapshot, snapshot])
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope(), full_refresh_seconds=0)
    for _ in range(3):
        await collector.run_cycle()
    # The failure is raised by read_config, before any collect().
    assert prom.in_turn == [False, True]


async def test_unavailable_counts_mean_a_full_read_every_cycle() -> None:
    cluster = clusters.node_exporter(10)
    snapshot = PrometheusSnapshot("p", [])
    prom = ScriptedPrometheus("p", [snapshot, snapshot])
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope(), full_refresh_seconds=3600)
    await collector.run_cycle()
    await collector.run_cycle()
    assert prom.collect_calls == [None, None]


async def test_unchanged_sources_reuse_the_report_and_a_change_recomputes_it() -> None:
    cluster = clusters.node_exporter(1200)
    endpoints_only = PrometheusSnapshot("p", clusters.endpoints_targets(cluster, "ne", *NE))
    fixed = PrometheusSnapshot("p", clusters.slice_targets(cluster, "ne", *NE))
    prom = ScriptedPrometheus("p", [endpoints_only, endpoints_only, fixed])
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope())
    first = await collector.run_cycle()
    second = await collector.run_cycle()
    assert second.report is first.report
    assert samples(second.exposition, "scrape_coverage_cycles")[()] == 2.0
    third = await collector.run_cycle()
    assert third.report is not first.report
    assert prometheus_missing(first.exposition) == [200.0]
    assert prometheus_missing(third.exposition) == [0.0]


async def test_pods_of_truncated_services_are_listed_while_prometheus_is_read() -> None:
    cluster = clusters.node_exporter(1200)
    kube = StaticCluster(cluster)
    seen_during_collect: list[list[tuple[str, str]]] = []

    class Watching(ScriptedPrometheus):
        async def collect(self, pools_to_refresh=None, *, one_pool_at_a_time=False):
            seen_during_collect.append([s.key for s in kube.scope])
            return await super().collect(pools_to_refresh, one_pool_at_a_time=one_pool_at_a_time)

    prom = Watching("p", [PrometheusSnapshot("p", [])])
    await CycleRunner(kube, [prom], Scope()).run_cycle()
    assert seen_during_collect == [[NE]]


async def test_a_prometheus_down_longer_than_stale_after_stops_covering() -> None:
    """A shard down for hours must not keep covering its targets."""
    import asyncio

    cluster = clusters.node_exporter(1200)
    good = PrometheusSnapshot("p", clusters.slice_targets(cluster, "ne", *NE))
    prom = ScriptedPrometheus("p", [good, SourceError("refused"), SourceError("refused")])
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope(), stale_after_seconds=0.2)
    first = await collector.run_cycle()
    assert prometheus_missing(first.exposition) == [0.0]
    within = await collector.run_cycle()  # still within the bound: last good data
    assert prometheus_missing(within.exposition) == [0.0] and not within.complete
    await asyncio.sleep(0.3)
    expired = await collector.run_cycle()
    assert prometheus_missing(expired.exposition) == []
    unknown = samples(expired.exposition, "scrape_coverage_prometheus_unknown_targets")
    assert list(unknown.values()) == [1200.0]
    assert samples(expired.exposition, "scrape_coverage_prometheus_targets") == {}
    known = samples(expired.exposition, "scrape_coverage_replica_coverage_known")
    assert known == {(("scraper", "p"), ("scraper_replica", "p")): 0.0}
    assert expired.report is not None and not expired.report.has_gaps


async def test_a_pool_whose_targets_vanish_during_a_run_reports_all_missing() -> None:
    """A selector typo: the pool still runs but discovers nothing; its
    earlier targets say which Service it was meant for."""
    cluster = clusters.node_exporter(1200)
    before = PrometheusSnapshot("p", clusters.slice_targets(cluster, "ne", *NE), pools=("ne",))
    after = PrometheusSnapshot("p", [], pools=("ne",))
    gone = PrometheusSnapshot("p", [], pools=())
    prom = ScriptedPrometheus("p", [before, after, gone])
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope())
    first = await collector.run_cycle()
    assert prometheus_missing(first.exposition) == [0.0]
    second = await collector.run_cycle()
    assert prometheus_missing(second.exposition) == [1200.0]
    assert second.report is not None and second.report.has_gaps
    # The job itself was removed: nothing is meant any more.
    third = await collector.run_cycle()
    assert prometheus_missing(third.exposition) == []


async def test_a_reload_is_read_at_once_even_when_counts_did_not_move() -> None:
    cluster = clusters.node_exporter(10)
    snapshot = PrometheusSnapshot("p", [])
    prom = ScriptedPrometheus("p", [snapshot, snapshot], counts=[{}, {}])
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope(), full_refresh_seconds=3600)
    await collector.run_cycle()
    prom.config = LoadedConfig({}, ())
    await collector.run_cycle()
    assert prom.collect_calls == [None, None]


async def test_an_unresolved_service_is_a_series_and_one_log_line(caplog) -> None:
    cluster = clusters.node_exporter(10)
    cluster.pods = {}
    prom = ScriptedPrometheus("p", [PrometheusSnapshot("p", []), PrometheusSnapshot("p", [])])
    collector = CycleRunner(StaticCluster(cluster), [prom], Scope(frozenset({NE})))
    first = await collector.run_cycle()
    await collector.run_cycle()
    unresolved = samples(first.exposition, "scrape_coverage_service_unresolved")
    assert unresolved == {
        (
            ("namespace", "monitoring"),
            ("reason", "its pods are not listed yet"),
            ("service", "node-exporter"),
        ): 1.0
    }
    said = "cannot tell what a Service should hold"
    lines = [r for r in caplog.records if said in r.getMessage()]
    assert len(lines) == 1


class ScopedCluster(StaticCluster):
    """As the real source: pods are in the snapshot only for the Services
    whose pod scope was set (KubernetesSource.set_pod_scope)."""

    def snapshot(self) -> ClusterSnapshot:
        full = super().snapshot()
        scoped = {s.key for s in self.scope}
        return dataclasses.replace(full, pods={k: v for k, v in full.pods.items() if k in scoped})


async def test_a_service_only_a_pool_that_discovers_nothing_is_meant_for_is_missing() -> None:
    """Issue #19 item 9: the meant pool discovers nothing (RBAC refused, a
    port renamed), so no target names the Service; its pods must still be
    listed, and the Service judged missing with its cause, not unresolved."""
    cluster = clusters.node_exporter(10)
    cluster.services = {
        NE: Service(*NE, {"app": "node-exporter"}, {"app": "node-exporter"}, {}, ("metrics",))
    }
    job = ScrapeJob(
        "serviceMonitor/monitoring/node-exporter/0",
        "endpointslice",
        ("monitoring",),
        (RelabelRule("keep", ("__meta_kubernetes_service_label_app",), regex="node-exporter"),),
    )
    snapshot = PrometheusSnapshot("p", [], jobs=(job,), pools=(job.name,))
    prom = ScriptedPrometheus("p", [snapshot])
    result = await CycleRunner(ScopedCluster(cluster), [prom], Scope()).run_cycle()
    assert result.report is not None
    assert result.report.unresolved == []
    (svc,) = result.report.services
    (pool,) = svc.pools
    assert (pool.scrape_pool, pool.meant, pool.discovered) == (job.name, True, 0)
    assert pool.missing_count == 10
    (pool_stage,) = [st for st in service_stages(svc) if st.pool]
    assert pool_stage.causes.counts == {Cause.POOL_DISCOVERS_NOTHING: 10}
    assert result.report.has_gaps


async def test_a_server_within_its_discovery_grace_is_still_discovering_never_a_gap() -> None:
    """A fresh replica's pools are empty until its discovery delivers: the
    same empty pool is `still_discovering` (coverage unknown) within the
    grace period after the server's start, and a loss once past it."""
    import time

    cluster = clusters.node_exporter(10)
    cluster.services = {
        NE: Service(*NE, {"app": "node-exporter"}, {"app": "node-exporter"}, {}, ("metrics",))
    }
    job = ScrapeJob(
        "serviceMonitor/monitoring/node-exporter/0",
        "endpointslice",
        ("monitoring",),
        (RelabelRule("keep", ("__meta_kubernetes_service_label_app",), regex="node-exporter"),),
    )

    def fresh(uptime: float) -> PrometheusSnapshot:
        started = time.time() - uptime
        return PrometheusSnapshot("p", [], jobs=(job,), pools=(job.name,), started=started)

    prom = ScriptedPrometheus("p", [fresh(5), fresh(130), PrometheusSnapshot("p", [])])
    collector = CycleRunner(ScopedCluster(cluster), [prom], Scope(), discovery_grace_seconds=120)
    young = await collector.run_cycle()
    assert young.report is not None and not young.report.has_gaps and not young.complete
    (svc,) = young.report.services
    (pool_stage,) = [st for st in service_stages(svc) if st.pool]
    assert pool_stage.count is None
    assert pool_stage.causes.counts == {Cause.STILL_DISCOVERING: 10}
    (replica,) = young.report.fleet.replicas.values()
    assert replica.discovering
    assert "still discovering: started 5s ago" in replica.why_unknown
    assert prometheus_missing(young.exposition) == []

    past = await collector.run_cycle()
    assert past.report is not None and past.report.has_gaps
    (svc,) = past.report.services
    (pool_stage,) = [st for st in service_stages(svc) if st.pool]
    assert pool_stage.causes.counts == {Cause.POOL_DISCOVERS_NOTHING: 10}


async def test_a_fresh_server_whose_discovery_has_settled_is_judged_within_the_grace() -> None:
    """The grace period ends early once the server's own counts say its
    discovery delivered to every pool (sources.prometheus.source.
    discovery_settled): then an empty pool is a loss, as it would be
    after the grace."""
    import time

    cluster = clusters.node_exporter(10)
    cluster.services = {
        NE: Service(*NE, {"app": "node-exporter"}, {"app": "node-exporter"}, {}, ("metrics",))
    }
    job = ScrapeJob(
        "serviceMonitor/monitoring/node-exporter/0",
        "endpointslice",
        ("monitoring",),
        (RelabelRule("keep", ("__meta_kubernetes_service_label_app",), regex="node-exporter"),),
    )
    fresh = PrometheusSnapshot("p", [], jobs=(job,), pools=(job.name,), started=time.time() - 15)
    prom = ScriptedPrometheus("p", [fresh, fresh])
    collector = CycleRunner(ScopedCluster(cluster), [prom], Scope(), discovery_grace_seconds=120)
    unsettled = await collector.run_cycle()
    assert unsettled.report is not None and not unsettled.report.has_gaps
    (replica,) = unsettled.report.fleet.replicas.values()
    assert replica.discovering

    prom.discovery_settled = True
    settled = await collector.run_cycle()
    assert settled.report is not None and settled.report.has_gaps
    (replica,) = settled.report.fleet.replicas.values()
    assert not replica.discovering and replica.why_unknown == ""
    (svc,) = settled.report.services
    (pool_stage,) = [st for st in service_stages(svc) if st.pool]
    assert pool_stage.causes.counts == {Cause.POOL_DISCOVERS_NOTHING: 10}


async def test_audit_waits_for_a_fresh_servers_discovery_then_judges_it() -> None:
    """app.after_discovery: one cycle of a one-shot audit would say "could
    not judge" for a server that has just started; it re-reads until the
    server's discovery settles, then answers with the verdict."""
    import time

    from coverage_exporter.app import after_discovery

    cluster = clusters.node_exporter(10)
    cluster.services = {
        NE: Service(*NE, {"app": "node-exporter"}, {"app": "node-exporter"}, {}, ("metrics",))
    }
    job = ScrapeJob(
        "serviceMonitor/monitoring/node-exporter/0",
        "endpointslice",
        ("monitoring",),
        (RelabelRule("keep", ("__meta_kubernetes_service_label_app",), regex="node-exporter"),),
    )
    fresh = PrometheusSnapshot("p", [], jobs=(job,), pools=(job.name,), started=time.time() - 5)
    prom = ScriptedPrometheus("p", [fresh] * 6)
    collector = CycleRunner(ScopedCluster(cluster), [prom], Scope(), discovery_grace_seconds=120)
    first = await collector.run_cycle()
    assert first.report is not None and not first.report.has_gaps

    cycles = 0

    async def settles_on_the_second_read() -> CycleResult:
        nonlocal cycles
        cycles += 1
        prom.discovery_settled = cycles >= 2
        return await collector.run_cycle()

    done = await after_discovery(first, settles_on_the_second_read, 120, poll_seconds=0.01)
    assert cycles == 2
    assert done.report is not None and done.report.has_gaps
    (replica,) = done.report.fleet.replicas.values()
    assert not replica.discovering

    # Nothing discovering any more: that answer, no further cycle.
    async def never() -> CycleResult:
        raise AssertionError("ran a cycle")

    assert await after_discovery(done, never, 120) is done

    # Never settling: bounded by the wait given (the grace), then answered
    # as it stands, still discovering.
    prom.discovery_settled = False
    prom._answers = [fresh] * 50
    first = await collector.run_cycle()
    reads = 0

    async def counted() -> CycleResult:
        nonlocal reads
        reads += 1
        return await collector.run_cycle()

    stuck = await after_discovery(first, counted, 0.1, poll_seconds=0.02)
    assert reads >= 1
    assert stuck.report is not None and not stuck.report.has_gaps
    (replica,) = stuck.report.fleet.replicas.values()
    assert replica.discovering
