"""Issue 8 on plain data: which pools are meant for a Service, topology,
DaemonSet placement, selector-less Services, the gap definition, and the
flags and errors around them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coverage_exporter import cli
from coverage_exporter.app import Settings, exit_code
from coverage_exporter.exposition.audit import render_json, render_table
from coverage_exporter.model.fleet import Fleet, ServerState
from coverage_exporter.model.intent import job_selects
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    DaemonSet,
    EndpointAddress,
    Endpoints,
    EndpointSlice,
    Node,
    NodeSelectorRequirement,
    Pod,
    PodPlacement,
    PrometheusSnapshot,
    RelabelRule,
    ScrapeJob,
    Service,
    SliceEndpoint,
    Toleration,
)
from coverage_exporter.model.report import build_report
from coverage_exporter.model.scheduling import eligible_nodes, should_run
from coverage_exporter.model.scope import Scope
from coverage_exporter.model.topology import Declared, identify
from coverage_exporter.sources.prometheus.config import parse_config_yaml
from tests.unit import clusters

NE = ("monitoring", "node-exporter")
KUBELET = ("kube-system", "kubelet")
META = "__meta_kubernetes_"


def keep(labels: list[str], regex: str) -> RelabelRule:
    return RelabelRule("keep", tuple(labels), regex=regex)


def only(report, key):
    (svc,) = [s for s in report.services if s.key == key]
    return svc


# --- which pools are meant to scrape a Service ----------------------------------

OPERATOR_KUBELET_JOB = ScrapeJob(
    "serviceMonitor/monitoring/kubelet/0",
    "endpointslice",
    ("kube-system",),
    (
        RelabelRule("replace", ("job",), target_label="__tmp_prometheus_job_name"),
        keep(
            [
                META + "service_label_app_kubernetes_io_name",
                META + "service_labelpresent_app_kubernetes_io_name",
            ],
            "(kubelet);true",
        ),
        keep([META + "endpointslice_port_name"], "https-metrics"),
        RelabelRule("hashmod", ("__address__",), target_label="__tmp_hash", modulus=2),
        keep(["__tmp_hash", "__tmp_disable_sharding"], "1;|.+;.+"),
    ),
)


def test_the_operators_job_is_meant_for_the_service_its_selector_names() -> None:
    kubelet = Service("kube-system", "kubelet", None, clusters.OPERATOR_LABELS)
    other = Service("kube-system", "coredns", {"k8s-app": "kube-dns"}, {"k8s-app": "kube-dns"})
    elsewhere = Service("default", "kubelet", None, clusters.OPERATOR_LABELS)
    assert job_selects(OPERATOR_KUBELET_JOB, kubelet)
    assert not job_selects(OPERATOR_KUBELET_JOB, other)
    assert not job_selects(OPERATOR_KUBELET_JOB, elsewhere)  # namespaces of its SD


def test_a_renamed_port_does_not_make_the_service_unmeant() -> None:
    """The port keep rule is not evaluated once Service rules decided: a
    port renamed under a job is a way to lose every target, not a reason
    to stop comparing."""
    kubelet = Service(
        "kube-system", "kubelet", None, clusters.OPERATOR_LABELS, port_names=("metrics-renamed",)
    )
    assert job_selects(OPERATOR_KUBELET_JOB, kubelet)


def test_a_namespace_wide_job_is_meant_only_for_services_with_a_port_it_keeps() -> None:
    job = ScrapeJob(
        "all-metrics", "endpoints", None, (keep([META + "endpoint_port_name"], "metrics"),)
    )
    assert job_selects(job, Service("a", "x", {"a": "b"}, port_names=("metrics",)))
    assert not job_selects(job, Service("a", "y", {"a": "b"}, port_names=("http",)))


def test_annotation_and_drop_rules_and_replace_chains_are_evaluated() -> None:
    job = ScrapeJob(
        "annotated",
        "endpoints",
        None,
        (
            keep([META + "service_annotation_prometheus_io_scrape"], "true"),
            RelabelRule("drop", (META + "namespace",), regex="kube-system"),
            RelabelRule(
                "replace", (META + "service_name",), target_label="__tmp_svc", regex="(.*)-exp"
            ),
            keep(["__tmp_svc"], "node"),
        ),
    )
    yes = Service("m", "node-exp", {"a": "b"}, annotations={"prometheus.io/scrape": "true"})
    assert job_selects(job, yes)
    assert not job_selects(job, Service("m", "node-exp", {"a": "b"}))
    assert not job_selects(
        job,
        Service(
            "kube-system", "node-exp", {"a": "b"}, annotations={"prometheus.io/scrape": "true"}
        ),
    )
    assert not job_selects(
        job, Service("m", "web-exp", {"a": "b"}, annotations={"prometheus.io/scrape": "true"})
    )


def test_service_role_selectors_of_the_sd_config_are_evaluated() -> None:
    job = ScrapeJob("sel", "endpoints", None, (), ("tier in (infra),!legacy",))
    assert job_selects(job, Service("a", "x", {"a": "b"}, {"tier": "infra"}))
    assert not job_selects(job, Service("a", "x", {"a": "b"}, {"tier": "infra", "legacy": "1"}))


def test_config_yaml_is_read_into_jobs_and_external_labels() -> None:
    config = parse_config_yaml(
        """
global:
  external_labels: {prometheus: monitoring/k8s, prometheus_replica: prometheus-k8s-shard-1-0}
scrape_configs:
- job_name: serviceMonitor/monitoring/kubelet/0
  kubernetes_sd_configs:
  - role: endpointslice
    namespaces: {own_namespace: false, names: [kube-system]}
  relabel_configs:
  - {source_labels: [__address__], target_label: __tmp_hash, modulus: 2, action: hashmod}
  - {source_labels: [__tmp_hash], regex: '1', action: keep}
- job_name: pods
  kubernetes_sd_configs: [{role: pod}]
- job_name: static
  static_configs: [{targets: ['127.0.0.1:9']}]
"""
    )
    assert config.external_labels["prometheus"] == "monitoring/k8s"
    (job,) = config.jobs
    assert (job.name, job.role, job.namespaces) == (
        "serviceMonitor/monitoring/kubelet/0",
        "endpointslice",
        ("kube-system",),
    )
    ident = identify("k8s-1-0", config.external_labels, config.jobs)
    assert (ident.scraper, ident.replica, ident.shard, ident.shards, ident.how) == (
        "monitoring/k8s",
        "prometheus-k8s-0",
        1,
        2,
        "operator",
    )


@pytest.mark.parametrize(
    ("labels", "declared", "want"),
    [
        ({"replica": "a", "cluster": "eu"}, None, ("cluster=eu", "a")),
        ({"__replica__": "b"}, None, ("x", "b")),
        ({}, None, ("x", "x")),
        ({"replica": "a"}, Declared(scraper="mine", replica="r1"), ("mine", "r1")),
    ],
)
def test_topology_from_thanos_labels_or_declared(labels, declared, want) -> None:
    ident = identify("x", labels, (), declared)
    assert (ident.scraper, ident.replica) == want


def test_unlabelled_hashmod_shards_form_replicas_in_order() -> None:
    jobs = (
        ScrapeJob(
            "j",
            "endpoints",
            None,
            (
                RelabelRule("hashmod", ("__address__",), target_label="__tmp_hash", modulus=2),
                keep(["__tmp_hash"], "0"),
            ),
        ),
    )
    jobs1 = (
        ScrapeJob(
            "j",
            "endpoints",
            None,
            (
                RelabelRule("hashmod", ("__address__",), target_label="__tmp_hash", modulus=2),
                keep(["__tmp_hash"], "1"),
            ),
        ),
    )
    servers = [
        ServerState("a0", identify("a0", {}, jobs), True),
        ServerState("a1", identify("a1", {}, jobs1), True),
        ServerState("b0", identify("b0", {}, jobs), True),
        ServerState("b1", identify("b1", {}, jobs1), True),
    ]
    fleet = Fleet.build(servers)
    assert sorted(sorted(s.name for s in r.servers) for r in fleet.replicas.values()) == [
        ["a0", "a1"],
        ["b0", "b1"],
    ]
    assert all(r.known for r in fleet.replicas.values())


# --- expected targets ----------------------------------------------------------


def node(name: str, labels: dict[str, str] | None = None, taints=()) -> Node:
    return Node(name, (), True, labels or {}, tuple(taints))


def test_daemonset_placement_names_the_nodes_it_should_run_on() -> None:
    nodes = {
        "a": node("a", {"pool": "edge", "kubernetes.io/os": "linux"}),
        "b": node("b", {"pool": "edge"}, [("dedicated", "gpu", "NoSchedule")]),
        "c": node("c", {"pool": "core"}),
        "d": node("d", {"pool": "edge"}, [("node.kubernetes.io/unschedulable", "", "NoSchedule")]),
        "e": node("e", {"pool": "edge"}, [("soft", "", "PreferNoSchedule")]),
    }
    placement = PodPlacement(node_selector={"pool": "edge"})
    assert eligible_nodes(placement, nodes) == {"a", "d", "e"}
    tolerant = PodPlacement({"pool": "edge"}, (), (Toleration("dedicated", "Equal", "gpu", None),))
    assert eligible_nodes(tolerant, nodes) == {"a", "b", "d", "e"}
    affinity = PodPlacement(
        terms=(
            (NodeSelectorRequirement("pool", "NotIn", ("edge",)),),
            (NodeSelectorRequirement("kubernetes.io/hostname", "In", ("a",)),),
        )
    )
    assert eligible_nodes(affinity, nodes) == {"a", "c"}
    assert eligible_nodes(PodPlacement(terms=None), nodes) is None


def test_placement_decided_once_per_shared_label_set_still_follows_each_node() -> None:
    """Parsed Nodes share their label dicts and taint tuples; the answer is
    taken once per pair of them, and never where a rule names the node."""
    edge, core = {"pool": "edge"}, {"pool": "core"}
    gpu = (("dedicated", "gpu", "NoSchedule"),)
    nodes = {
        f"n{i}": node(f"n{i}", edge if i % 2 else core, gpu if i % 3 == 0 else ())
        for i in range(12)
    }
    by_name = PodPlacement(
        terms=((NodeSelectorRequirement("kubernetes.io/hostname", "In", ("n1", "n2")),),)
    )
    placements = [
        PodPlacement(node_selector={"pool": "edge"}),
        PodPlacement({"pool": "edge"}, (), (Toleration("dedicated", "Equal", "gpu", None),)),
        PodPlacement(terms=((NodeSelectorRequirement("pool", "In", ("core",)),),)),
        by_name,
    ]
    for placement in placements:
        one_by_one = {name for name, n in nodes.items() if should_run(placement, n)}
        assert eligible_nodes(placement, nodes) == one_by_one
    assert eligible_nodes(placements[0], nodes) == {"n1", "n5", "n7", "n11"}
    assert eligible_nodes(by_name, nodes) == {"n1", "n2"}


def daemonset_cluster(placement: PodPlacement | None, desired: int) -> ClusterSnapshot:
    ns = "monitoring"
    nodes = {f"n{i}": node(f"n{i}", {"pool": "edge" if i < 5 else "core"}) for i in range(8)}
    pods = [
        Pod(ns, f"ne-{i}", f"n{i}", f"10.0.0.{i}", "DaemonSet", "ne", phase="Running")
        for i in range(3)
    ]
    pods.append(Pod(ns, "ne-3", "n3", "10.0.0.3", "DaemonSet", "ne", phase="Failed"))
    addresses = tuple(EndpointAddress(p.ip or "", p.node_name, "Pod", p.name) for p in pods[:3])
    return ClusterSnapshot(
        nodes=nodes,
        services={NE: Service(*NE, {"app": "ne"})},
        endpoints={NE: Endpoints(*NE, addresses, (), (3,))},
        pods={NE: pods},
        daemonsets={(ns, "ne"): DaemonSet(ns, "ne", desired, placement)},
    )


def test_nodes_without_a_running_pod_are_named_where_placement_decides() -> None:
    cluster = daemonset_cluster(PodPlacement({"pool": "edge"}), desired=5)
    svc = only(build_report(Scope(frozenset({NE})), cluster, []), NE)
    assert (svc.expected, svc.unnamed) == (5, 0)
    assert [m.node for m in svc.endpoints.missing] == ["n3", "n4"]  # Failed pod, no pod


def test_nodes_without_a_pod_are_counted_where_placement_cannot_name_them() -> None:
    """Expected 5 and missing 0 must never stand side by side."""
    cluster = daemonset_cluster(PodPlacement(terms=None), desired=5)
    svc = only(build_report(Scope(frozenset({NE})), cluster, []), NE)
    assert (svc.expected, svc.unnamed) == (5, 2)
    assert svc.endpoints_missing_count() == 2 and svc.endpoints.missing == ()


def test_a_placement_that_disagrees_with_the_controller_is_not_trusted() -> None:
    cluster = daemonset_cluster(PodPlacement({"pool": "edge"}), desired=3)
    svc = only(build_report(Scope(frozenset({NE})), cluster, []), NE)
    assert (svc.expected, svc.unnamed, svc.endpoints.missing) == (3, 0, ())


def test_a_service_backed_by_two_daemonsets_expects_both() -> None:
    ns = "monitoring"
    nodes = {f"n{i}": node(f"n{i}") for i in range(4)}
    pods = [
        Pod(ns, "linux-0", "n0", "10.0.0.0", "DaemonSet", "ne-linux"),
        Pod(ns, "linux-1", "n1", "10.0.0.1", "DaemonSet", "ne-linux"),
        Pod(ns, "windows-0", "n2", "10.0.0.2", "DaemonSet", "ne-windows"),
    ]
    cluster = ClusterSnapshot(
        nodes=nodes,
        services={NE: Service(*NE, {"app": "ne"})},
        pods={NE: pods},
        daemonsets={
            (ns, "ne-linux"): DaemonSet(ns, "ne-linux", 2),
            (ns, "ne-windows"): DaemonSet(ns, "ne-windows", 2),
        },
    )
    svc = only(build_report(Scope(frozenset({NE})), cluster, []), NE)
    assert (svc.source, svc.expected, svc.unnamed) == ("daemonset", 4, 1)


def test_frozen_operator_endpoints_unread_are_no_loss_and_slices_still_compare() -> None:
    """After --kubelet-endpoints=false: the Endpoints object stops at 1100
    nodes; only role endpointslice pools read the kubelet now."""
    cluster = clusters.kubelet(1200, skip_mirror=True)
    frozen = cluster.endpoints[KUBELET]
    cluster.endpoints = {
        KUBELET: Endpoints(*KUBELET, frozen.ready[:1100], (), (1100,), None, True, True)
    }
    prom = PrometheusSnapshot("p", clusters.slice_targets(cluster, "kubelet", *KUBELET))
    report = build_report(Scope(), cluster, [prom])
    svc = only(report, KUBELET)
    assert svc.endpoints_missing_count() == 100
    assert not report.has_gaps
    # And gone altogether: still compared, from the slices.
    cluster.endpoints = {}
    svc = only(build_report(Scope(), cluster, [prom]), KUBELET)
    assert (svc.source, svc.expected, svc.slices_missing_count()) == ("nodes", 1200, 0)


def test_the_operators_kubelet_endpoints_expect_every_node() -> None:
    cluster = clusters.kubelet(10, skip_mirror=True)
    cluster.nodes = clusters.nodes(11)  # the Operator skipped node-0010
    svc = only(build_report(Scope(frozenset({KUBELET})), cluster, []), KUBELET)
    assert [m.node for m in svc.endpoints.missing] == ["node-0010"]


def test_hand_made_endpoints_of_three_nodes_expect_three() -> None:
    ns, name = "kube-system", "etcd"
    addresses = tuple(
        EndpointAddress(clusters.node_ip(i), clusters.node_name(i), "Node", clusters.node_name(i))
        for i in range(3)
    )
    slices = [
        EndpointSlice(
            ns,
            "etcd-x",
            name,
            "endpointslicemirroring-controller.k8s.io",
            "IPv4",
            tuple(SliceEndpoint(a.ip, a.node_name, "Node", a.target_name) for a in addresses),
        )
    ]
    cluster = ClusterSnapshot(
        nodes=clusters.nodes(1200),
        services={(ns, name): Service(ns, name, None)},
        endpoints={(ns, name): Endpoints(ns, name, addresses, (), (3,))},
        endpointslices={(ns, name): slices},
    )
    report = build_report(Scope(frozenset({(ns, name)})), cluster, [])
    svc = only(report, (ns, name))
    assert (svc.source, svc.expected, svc.endpoints_missing_count()) == ("listed", 3, 0)


def test_failed_and_succeeded_pods_are_never_expected() -> None:
    ns, name = "shop", "api"
    pods = [
        Pod(ns, "a", "node-0000", "10.1.0.1", "ReplicaSet", "api", phase="Running"),
        Pod(ns, "b", "node-0001", "10.1.0.2", "ReplicaSet", "api", phase="Failed"),
        Pod(ns, "c", "node-0001", "10.1.0.3", "Job", "api", phase="Succeeded"),
    ]
    cluster = ClusterSnapshot(
        nodes=clusters.nodes(2),
        services={(ns, name): Service(ns, name, {"app": "api"})},
        pods={(ns, name): pods},
    )
    svc = only(build_report(Scope(frozenset({(ns, name)})), cluster, []), (ns, name))
    assert svc.expected == 1


# --- the gap definition, one place for exit code, table, JSON ----------------------


def test_a_truncated_endpoints_that_no_pool_reads_is_a_finding_not_a_gap() -> None:
    cluster = clusters.node_exporter(1200)
    prom = PrometheusSnapshot("p", clusters.slice_targets(cluster, "ne", *NE))
    report = build_report(Scope(), cluster, [prom])
    assert not report.has_gaps
    assert exit_code(report, True) == 0
    table = render_table(report, [], True)
    assert "nothing is lost" in table and table.rstrip().endswith("full coverage")
    doc = json.loads(render_json(report, [], True))
    assert doc["gaps"] is False and doc["services"][0]["gaps"] == []


def test_an_audit_that_compared_nothing_does_not_exit_0() -> None:
    report = build_report(Scope(), clusters.node_exporter(10), [])
    assert report.services == []
    assert exit_code(report, True) == 3  # could not judge
    assert "no Service compared" in render_table(report, [], True)


def test_unknown_coverage_exits_3_and_a_real_gap_exits_1() -> None:
    cluster = clusters.node_exporter(1200)
    targets = clusters.endpoints_targets(cluster, "ne", *NE)
    prom = PrometheusSnapshot("p", targets)
    known = build_report(Scope(), cluster, [prom])
    assert exit_code(known, True) == 1
    unknown = build_report(
        Scope(), cluster, [prom], [ServerState("p", prom.server_identity, False)]
    )
    assert not unknown.has_gaps and unknown.unknown_pools == 1
    assert exit_code(unknown, False) == 3


# --- flags and errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--interval", "0"],
        ["serve", "--interval", "-1"],
        ["serve", "--interval", "inf"],
        ["audit", "--prometheus-timeout", "nan"],
        ["audit", "--kubernetes-sync-timeout", "0"],
        ["audit", "--prometheus-stale-after", "inf"],
    ],
)
def test_durations_must_be_finite_and_positive(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2  # a usage error
    err = capsys.readouterr().err
    assert "must be a duration above 0" in err or "not a valid duration" in err, err


def test_set_based_service_selectors_are_parsed_or_refused(capsys) -> None:
    args = cli.build_parser().parse_args(["audit", "--service-selector", "tier in (a,b),!legacy"])
    scope = Settings.from_args(args).scope
    assert [r.op for r in scope.label_selector] == ["in", "!exists"]
    assert cli.main(["audit", "--service-selector", "tier in a"]) == 2
    err = capsys.readouterr().err
    assert "cannot read 'tier in a'" in err and err.count("coverage-exporter:") == 1


def test_fleet_file_gives_each_server_its_credentials_and_place(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "servers:\n"
        "  - name: a\n"
        "    url: https://a.example:9090\n"
        "    authorization: {credentials_file: /tok}\n"
        "    tls_config: {ca_file: /ca.crt, insecure_skip_verify: false}\n"
        "    scraper: k8s\n"
        "    replica: r0\n"
        "    shard: 1\n"
        "    shards: 2\n"
        "  - {url: 'http://b.example:9090', basic_auth: {username: u, password_file: /pw}}\n"
    )
    args = cli.build_parser().parse_args(["audit", "--prometheus-fleet-file", str(fleet)])
    a, b = Settings.from_args(args).prometheus
    assert (a.name, a.bearer_token_file, a.ca_file) == ("a", "/tok", "/ca.crt")
    assert (a.declared.scraper, a.declared.replica, a.declared.shard) == ("k8s", "r0", 1)
    assert (b.name, b.basic_auth_user, b.basic_auth_password_file) == ("b.example:9090", "u", "/pw")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servers: [{}]", "'url' is required"),
        ("servers: [{url: 'http://x:1', colour: red}]", "unknown keys colour"),
        ("servers: [{url: 'http://x:1', shard: -1}]", "non-negative integer"),
        ("nope", "'servers' list"),
        ("servers: [{url: 'http://x:1', timeout: 0}]", "positive number of seconds"),
        # Issue 21: nothing dropped in silence. "false" as a string turned
        # verification off; inline secrets were dropped (an empty password sent).
        (
            "servers: [{url: 'https://x:1', tls_config: {insecure_skip_verify: 'false'}}]",
            "tls_config.insecure_skip_verify must be true or false, not str 'false'",
        ),
        (
            "servers: [{url: 'https://x:1', tls_config: {insecure_skip_verify: 0}}]",
            "must be true or false",
        ),
        (
            "servers: [{url: 'http://x:1', basic_auth: {username: u, password: hunter2}}]",
            "basic_auth.password inline is not read",
        ),
        (
            "servers: [{url: 'http://x:1', authorization: {credentials: tok}}]",
            "authorization.credentials inline is not read",
        ),
        (
            "servers: [{url: 'http://x:1', tls_config: {ca: /ca.crt}}]",
            "unknown keys tls_config.ca",
        ),
        (
            "servers: [{url: 'http://x:1', basic_auth: {user: u, password_file: /p}}]",
            "unknown keys basic_auth.user",
        ),
        (
            "servers: [{url: 'http://x:1', authorization: {type: Basic, credentials_file: /t}}]",
            "authorization.type must be Bearer",
        ),
        ("servers: [{url: 'http://x:1', timeout: '60s'}]", "'timeout' must be a number"),
    ],
)
def test_bad_fleet_files_are_refused_with_the_entry_named(text, message, tmp_path, capsys) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(text)
    assert cli.main(["audit", "--prometheus-fleet-file", str(fleet)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(fleet) in err


# --- Thanos and vmagent ----------------------------------------------------------


def test_a_partial_thanos_answer_is_never_taken_as_complete() -> None:
    from coverage_exporter.sources.errors import SourceError
    from coverage_exporter.sources.prometheus.source import parse_targets

    body = json.dumps(
        {
            "status": "success",
            "data": {"activeTargets": []},
            "warnings": ["receive store eu-1: context deadline exceeded"],
        }
    ).encode()
    with pytest.raises(SourceError, match="partial answer: receive store eu-1"):
        parse_targets(body)


def test_vmagent_targets_without_discovered_labels_are_matched_by_final_labels() -> None:
    from coverage_exporter.sources.prometheus.source import parse_targets

    body = json.dumps(
        {
            "status": "success",
            "data": {
                "activeTargets": [
                    {
                        "discoveredLabels": {},
                        "labels": {
                            "instance": "10.0.0.1:9100",
                            "job": "node-exporter",
                            "namespace": "monitoring",
                            "service": "node-exporter",
                            "node": "node-0000",
                        },
                        "scrapePool": "ne",
                        "health": "up",
                    }
                ]
            },
        }
    ).encode()
    (target,) = parse_targets(body)["ne"].targets
    assert (target.role, target.namespace, target.service, target.node_name) == (
        "unknown",
        "monitoring",
        "node-exporter",
        "node-0000",
    )
    assert target.address_host == "10.0.0.1"
    cluster = clusters.node_exporter(2)
    report = build_report(Scope(), cluster, [PrometheusSnapshot("vm", [target])])
    (pool,) = only(report, NE).pools
    assert (pool.role, pool.discovered, [m.node for m in pool.missing or ()]) == (
        "unknown",
        1,
        ["node-0001"],
    )


@pytest.mark.timeout(60)
def test_audit_against_a_refused_apiserver_fails_in_seconds(tmp_path: Path, capsys) -> None:
    """Not the 300 s sync timeout meant for large clusters: could not judge
    (exit 3) at once, the refusal in words."""
    from testbed.procs import free_ports

    port = free_ports(1)[0]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    assert cli.main(["audit", "--kubeconfig", str(kubeconfig)]) == 3
    err = capsys.readouterr().err
    assert "cannot list the cluster" in err and "Traceback" not in err
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in err
    assert "SSLContext" not in err


def test_selection_memo_reuses_results_for_unchanged_objects(monkeypatch) -> None:
    from coverage_exporter.model import report as report_module

    calls: list[str] = []
    real = report_module.job_selects

    def counting(job, service):
        calls.append(service.name)
        return real(job, service)

    monkeypatch.setattr(report_module, "job_selects", counting)
    memo = report_module.SelectionMemo()
    job = ScrapeJob("j", "endpoints", None, (keep([META + "service_name"], "a"),))
    a, b = Service("n", "a", {"x": "y"}), Service("n", "b", {"x": "y"})
    assert [memo.selects(job, s) for s in (a, b)] == [True, False]
    memo.rotate()
    assert [memo.selects(job, s) for s in (a, b)] == [True, False]
    assert calls == ["a", "b"]
    changed = Service("n", "a", {"x": "z"})
    memo.rotate()
    assert memo.selects(job, changed) is True
    assert calls == ["a", "b", "a"]
