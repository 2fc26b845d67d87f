"""Scrapers other than a Prometheus server (issue #20), on plain data:
Thanos Query's stores split into servers, vmagent pools whose targets
cannot be attributed to a Service, vmagent's relabeling forms in the
loaded configuration, and the server kind in the fleet and exposition."""

from __future__ import annotations

import pytest

from coverage_exporter.exposition.audit import render_json, render_table
from coverage_exporter.exposition.metrics import ExporterState, render_coverage
from coverage_exporter.model.fleet import ServerState
from coverage_exporter.model.intent import job_selects
from coverage_exporter.model.objects import (
    KIND_THANOS_QUERY,
    KIND_VMAGENT,
    PrometheusSnapshot,
    RelabelRule,
    ScrapeJob,
    Service,
)
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scope import Scope
from coverage_exporter.model.topology import identify
from coverage_exporter.sources.prometheus.config import parse_config_yaml
from coverage_exporter.sources.prometheus.thanos import Store, StoreMembers
from tests.unit import clusters

NE = ("monitoring", "node-exporter")
META = "__meta_kubernetes_"
R0 = (("prometheus", "monitoring/thanos"), ("prometheus_replica", "prometheus-thanos-0"))
R1 = (("prometheus", "monitoring/thanos"), ("prometheus_replica", "prometheus-thanos-1"))
SCRAPER = (("prometheus", "monitoring/thanos"),)


def only(report, key):
    (svc,) = [s for s in report.services if s.key == key]
    return svc


def pools_by_replica(svc):
    return {(p.replica, p.scrape_pool): p for p in svc.pools}


# --- Thanos Query: one server per store --------------------------------------


def _query(by_labels, stores, warnings=(), members=None, now=0.0):
    members = members or StoreMembers("query")
    snaps = members.snapshots(stores, by_labels, list(warnings), now)
    return PrometheusSnapshot(
        "query",
        (),
        identity=identify("query", {}, (), None, KIND_THANOS_QUERY),
        members=tuple(snaps),
    )


def test_each_store_behind_thanos_query_is_judged_on_its_own() -> None:
    """Replica 0 reads the slices (1200), replica 1 the truncated Endpoints
    (1000): the union covers every node, replica 1 must still miss 200."""
    cluster = clusters.node_exporter(1200)
    slices = clusters.slice_targets(cluster, "node-exporter", *NE)
    endpoints = clusters.endpoints_targets(cluster, "node-exporter", *NE)
    query = _query(
        {R0: {"node-exporter": slices}, R1: {"node-exporter": endpoints}},
        [Store("127.0.0.1:1", R0), Store("127.0.0.1:2", R1)],
    )
    report = build_report(Scope(), cluster, [query])
    pools = pools_by_replica(only(report, NE))
    assert set(pools) == {
        ("prometheus-thanos-0", "node-exporter"),
        ("prometheus-thanos-1", "node-exporter"),
    }
    assert pools[("prometheus-thanos-0", "node-exporter")].missing == ()
    missing = pools[("prometheus-thanos-1", "node-exporter")].missing
    assert missing is not None and len(missing) == 200
    assert {s.identity.kind for r in report.fleet.replicas.values() for s in r.servers} == {
        KIND_THANOS_QUERY
    }


def test_replica_labels_removed_by_query_make_every_replica_unknown() -> None:
    """--query.replica-label: the targets carry only the scraper's labels and
    the duplicates are merged; no replica can be told, none is judged."""
    cluster = clusters.node_exporter(1200)
    slices = clusters.slice_targets(cluster, "node-exporter", *NE)
    query = _query(
        {SCRAPER: {"node-exporter": slices}},
        [Store("127.0.0.1:1", R0), Store("127.0.0.1:2", R1)],
    )
    report = build_report(Scope(), cluster, [query])
    pools = only(report, NE).pools
    assert len(pools) == 2
    for pool in pools:
        assert pool.missing is None and pool.unknown == 1200
        assert "--query.replica-label" in pool.why_unknown
    assert report.unknown_pools == 2 and not report.has_gaps


@pytest.mark.parametrize(
    ("stores", "warnings", "why"),
    [
        # Before Query notices: the store is still healthy to it, the fan-out
        # to it failed and the answer warns.
        (
            [Store("127.0.0.1:1", R0), Store("127.0.0.1:2", R1)],
            ["fetching targets from targets client: connection refused"],
            "partial",
        ),
        # After: Query no longer asks the store and says nothing in the answer.
        (
            [Store("127.0.0.1:1", R0), Store("127.0.0.1:2", R1, "rpc error: Unavailable")],
            [],
            "leaves this store out",
        ),
        # Later still: Query dropped it from its stores.
        ([Store("127.0.0.1:1", R0)], [], "no longer among"),
    ],
)
def test_a_store_missing_from_the_answer_is_unknown_never_covered_never_missing(
    stores, warnings, why
) -> None:
    cluster = clusters.node_exporter(1200)
    slices = clusters.slice_targets(cluster, "ne", *NE)
    members = StoreMembers("query")
    both = [Store("127.0.0.1:1", R0), Store("127.0.0.1:2", R1)]
    _query({R0: {"ne": slices}, R1: {"ne": slices}}, both, members=members, now=0.0)
    query = _query({R0: {"ne": slices}}, stores, warnings, members=members, now=10.0)
    report = build_report(Scope(), cluster, [query])
    pools = pools_by_replica(only(report, NE))
    assert pools[("prometheus-thanos-0", "ne")].missing == ()
    down = pools[("prometheus-thanos-1", "ne")]
    assert down.missing is None and why in down.why_unknown
    assert not report.has_gaps


def test_a_healthy_store_without_targets_is_judged() -> None:
    """No warning and a healthy store: its Prometheus discovers nothing, which
    is a loss for every pool meant for the Service, not an unknown."""
    cluster = clusters.node_exporter(12)
    slices = clusters.slice_targets(cluster, "ne", *NE)
    query = _query({R0: {"ne": slices}}, [Store("a", R0), Store("b", R1)])
    (r0, r1) = sorted(query.members, key=lambda s: s.name)
    assert (r0.unknown_reason, r1.unknown_reason) == ("", "")
    assert r1.targets == ()


def test_a_gone_store_is_forgotten_after_the_forget_period() -> None:
    members = StoreMembers("query", forget_after=60)
    members.snapshots([Store("a", R0), Store("b", R1)], {}, [], now=0.0)
    assert len(members.snapshots([Store("a", R0)], {}, [], now=59.0)) == 2
    assert [s.name for s in members.snapshots([Store("a", R0)], {}, [], now=61.0)] == [
        "query/prometheus=monitoring/thanos,prometheus_replica=prometheus-thanos-0"
    ]


# --- vmagent: targets without discovered labels ---------------------------------


def test_a_pool_whose_targets_name_no_service_cannot_be_judged() -> None:
    """-promscrape.dropOriginalLabels with a job that copies neither
    namespace nor service: the pool meant for node-exporter is unknown with
    its reason, never a false gap and never a false zero."""
    cluster = clusters.node_exporter(12)
    job = ScrapeJob(
        "node-exporter-bare",
        "endpointslice",
        ("monitoring",),
        (
            # Only the Service-level keep: the job is meant for node-exporter.
            RelabelRule(
                "keep",
                (META + "namespace", META + "service_name"),
                regex="monitoring;node-exporter",
            ),
        ),
    )
    reason = "12 of the pool's 12 targets came without discovered labels"
    snap = PrometheusSnapshot(
        "vm",
        (),
        identity=identify("vm", {}, (), None, KIND_VMAGENT),
        jobs=(job,),
        pools=("node-exporter-bare",),
        unjudged_pools={"node-exporter-bare": reason},
    )
    report = build_report(Scope(), cluster, [snap])
    (pool,) = only(report, NE).pools
    assert (pool.scrape_pool, pool.role, pool.meant) == (
        "node-exporter-bare",
        "endpointslice",
        True,
    )
    assert pool.missing is None and pool.unknown == 12 and pool.why_unknown == reason
    assert not report.has_gaps
    table = render_table(report, [])
    assert "coverage unknown for 12 of 12: " + reason in table
    assert '"why_unknown": "' + reason in render_json(report, [])


# --- vmagent's configuration: its own relabeling forms ---------------------------


def test_vmagent_writes_a_regex_without_groups_as_a_list_of_alternatives() -> None:
    """lib/promrelabel MultiLineRegex.MarshalYAML: `a|b` comes back as [a, b]."""
    config = parse_config_yaml(
        "scrape_configs:\n"
        "- job_name: ne\n"
        "  kubernetes_sd_configs: [{role: endpointslice}]\n"
        "  relabel_configs:\n"
        "  - source_labels: [__meta_kubernetes_service_name]\n"
        "    regex: [node-exporter, kubelet]\n"
        "    action: keep\n"
    )
    (job,) = config.jobs
    assert job.relabel[0].regex == "node-exporter|kubelet"
    assert job_selects(job, Service("monitoring", "node-exporter", {}))
    assert not job_selects(job, Service("monitoring", "grafana", {}))


@pytest.mark.parametrize(
    "rule",
    [
        "{if: '{__meta_kubernetes_service_name=\"x\"}', action: keep}",
        "{source_labels: [__meta_kubernetes_service_name, __meta_kubernetes_namespace], "
        "action: keep_if_equal}",
        "{source_labels: [__meta_kubernetes_service_name], regex: x, action: drop_if_contains}",
    ],
)
def test_a_vmagent_filter_not_evaluated_here_never_makes_a_job_meant(rule: str) -> None:
    """The job is compared once it discovers the Service; taken as meant
    from a rule read wrong it would report every expected target missing."""
    config = parse_config_yaml(
        "scrape_configs:\n"
        "- job_name: ne\n"
        "  kubernetes_sd_configs: [{role: endpoints, namespaces: {names: [monitoring]}}]\n"
        f"  relabel_configs: [{rule}]\n"
    )
    (job,) = config.jobs
    assert not job_selects(job, Service("monitoring", "node-exporter", {}, port_names=("m",)))


def test_a_conditional_write_leaves_its_label_unknown() -> None:
    config = parse_config_yaml(
        "scrape_configs:\n"
        "- job_name: ne\n"
        "  kubernetes_sd_configs: [{role: endpoints}]\n"
        "  relabel_configs:\n"
        "  - {if: '{x=\"y\"}', target_label: __tmp_keep, replacement: 'no'}\n"
        "  - {source_labels: [__tmp_keep], regex: 'no', action: drop}\n"
    )
    (job,) = config.jobs
    # The drop reads a label that may or may not have been written: skipped.
    assert job_selects(job, Service("monitoring", "node-exporter", {}))


# --- the kind of each server ------------------------------------------------------


def test_server_info_says_what_each_server_is() -> None:
    cluster = clusters.node_exporter(2)
    vm = PrometheusSnapshot("vm", (), identity=identify("vm", {}, (), None, KIND_VMAGENT))
    servers = [ServerState("vm", vm.server_identity, True)]
    report = build_report(Scope(), cluster, [vm], servers)
    text = render_coverage(ExporterState(report)).decode()
    (line,) = [x for x in text.splitlines() if x.startswith("scrape_coverage_server_info{")]
    assert 'kind="vmagent"' in line and 'server="vm"' in line


def test_a_known_replica_is_judged_on_its_known_servers_only() -> None:
    """The same replica through a Query that merges replicas (unknown) and
    through one that does not (known): the merged answer's pools, of both
    replicas' roles, are not judged against the known replica."""
    cluster = clusters.node_exporter(12)
    slices = clusters.slice_targets(cluster, "ne", *NE)
    endpoints = clusters.endpoints_targets(cluster, "ne", *NE)
    stores = [Store("a", R0), Store("b", R1)]
    split = _query({R0: {"ne": slices}, R1: {"ne": endpoints}}, stores)
    merged = _query({SCRAPER: {"ne": slices + endpoints}}, stores)
    merged = PrometheusSnapshot(
        "merged",
        (),
        identity=merged.identity,
        members=tuple(
            PrometheusSnapshot(
                "merged/" + m.name,
                m.targets,
                m.identity,
                pools=m.pools,
                unknown_reason=m.unknown_reason,
            )
            for m in merged.members
        ),
    )
    report = build_report(Scope(), cluster, [split, merged])
    pools = {(p.replica, p.role): p for p in only(report, NE).pools}
    assert set(pools) == {
        ("prometheus-thanos-0", "endpointslice"),
        ("prometheus-thanos-1", "endpoints"),
    }
    assert all(p.known and p.missing == () for p in pools.values())


def test_targets_that_name_no_service_cannot_hide_a_pool_that_covers_everything() -> None:
    """They can only add to the pool: covered is covered; what is not may be
    among them (unknown, not missing)."""
    cluster = clusters.node_exporter(12)
    slices = clusters.slice_targets(cluster, "bare", *NE)
    why = {"bare": "2 of the pool's 14 targets came without discovered labels"}
    full = PrometheusSnapshot("vm", slices, unjudged_pools=why)
    (pool,) = only(build_report(Scope(), cluster, [full]), NE).pools
    assert pool.known and pool.missing == () and pool.why_unknown == ""
    part = PrometheusSnapshot("vm", slices[:10], unjudged_pools=why)
    (pool,) = only(build_report(Scope(), cluster, [part]), NE).pools
    assert (pool.missing, pool.discovered, pool.unknown) == (None, 10, 2)
    assert pool.why_unknown == why["bare"]


def test_a_kind_is_declared_by_flag_or_fleet_file(tmp_path) -> None:
    from coverage_exporter import cli
    from coverage_exporter.app import Settings

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("servers:\n  - {name: tq, url: 'http://tq:10902', kind: thanos_query}\n")
    args = cli.build_parser().parse_args(
        [
            "audit",
            "--prometheus-url",
            "vm=http://vm:8429",
            "--prometheus-kind",
            "vm=vmagent",
            "--prometheus-fleet-file",
            str(fleet),
        ]
    )
    vm, tq = Settings.from_args(args).prometheus
    assert (vm.declared.kind, tq.declared.kind) == ("vmagent", "thanos_query")
    # A declared kind is what server_info says even before the server answers.
    assert identify("vm", {}, (), vm.declared).kind == "vmagent"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prometheus-kind", "vm=cortex"], "unknown server kind 'cortex'"),
        (["--prometheus-kind", "other=vmagent"], "names no configured server: other"),
        (["--prometheus-kind", "vmagent"], "expected NAME=KIND"),
    ],
)
def test_a_wrong_kind_is_refused_with_the_choices(argv, message, capsys) -> None:
    from coverage_exporter import cli

    assert cli.main(["audit", "--prometheus-url", "vm=http://vm:8429", *argv]) == 2
    assert message in capsys.readouterr().err
