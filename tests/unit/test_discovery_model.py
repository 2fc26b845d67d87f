"""model.discovery on plain data: the real Operator's objects
(tests/fixtures/captured/operator/discovery, README there) read by
sources.discovery's parsers, then CR + pods -> servers, and fleet changes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from coverage_exporter.model import discovery as d
from coverage_exporter.model.objects import ServerIdentity
from coverage_exporter.model.topology import hashmod_shard
from coverage_exporter.sources.kubernetes.discovery import (
    SCRAPER_PODS,
    RawScraper,
    scraper_from_raw,
)
from coverage_exporter.sources.prometheus.config import parse_config_response

CAPTURED = Path(__file__).parents[1] / "fixtures" / "captured" / "operator" / "discovery"


def cr(name: str, kind: str = d.PROMETHEUS) -> d.ScraperObject:
    prefix = "prometheusagent" if kind == d.PROMETHEUS_AGENT else "prometheus"
    raw = msgspec.json.decode((CAPTURED / f"{prefix}-{name}.json").read_bytes(), type=RawScraper)
    return scraper_from_raw(raw, kind)


def pods(name: str) -> list[d.ScraperPod]:
    page = SCRAPER_PODS.parse_page((CAPTURED / f"pods-{name}.json").read_bytes())
    assert not page.errors
    return [p.obj for p in page.items]


def raw_pods(name: str) -> list[dict[str, Any]]:
    return json.loads((CAPTURED / f"pods-{name}.json").read_text())["items"]


def by_name(found: d.Discovery) -> dict[str, d.FoundServer]:
    return {s.name: s for s in found.servers}


# --- CR + pod -> server ---------------------------------------------------------------


def test_the_testbed_cr_gives_its_four_pods_read_at_their_pod_ip() -> None:
    k8s = cr("k8s")
    assert (k8s.shards, k8s.replicas, k8s.scheme, k8s.route_prefix) == (2, 2, "http", "/")
    found = d.operator_servers([k8s], pods("k8s"))
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in raw_pods("k8s")}
    assert found.findings == () and found.leaving == ()
    servers = by_name(found)
    assert sorted(servers) == [
        "monitoring/prometheus-k8s-0",
        "monitoring/prometheus-k8s-1",
        "monitoring/prometheus-k8s-shard-1-0",
        "monitoring/prometheus-k8s-shard-1-1",
    ]
    for name, server in servers.items():
        pod = name.split("/")[1]
        assert server.url == f"http://{ips[pod]}:9090"
        assert server.readable, server.unreadable
        assert server.found_by == "Prometheus monitoring/k8s"
    assert servers["monitoring/prometheus-k8s-shard-1-1"].identity == ServerIdentity(
        scraper="monitoring/k8s", replica="prometheus-k8s-1", shard=1, shards=2, how="discovered"
    )
    assert servers["monitoring/prometheus-k8s-0"].identity == ServerIdentity(
        scraper="monitoring/k8s", replica="prometheus-k8s-0", shard=0, shards=2, how="discovered"
    )


def test_tls_route_prefix_and_port_name_come_from_the_cr() -> None:
    web = cr("web")
    assert (web.scheme, web.route_prefix, web.port_name, web.shards, web.replicas) == (
        "https",
        "/prom",
        "http-web",
        3,
        1,
    )
    servers = by_name(d.operator_servers([web], pods("web")))
    ips = {p["metadata"]["name"]: p["status"].get("podIP") for p in raw_pods("web")}
    assert sorted(servers) == [
        "monitoring/prometheus-web-0",
        "monitoring/prometheus-web-shard-1-0",
        "monitoring/prometheus-web-shard-2-0",
    ]
    for name, server in servers.items():
        ip = ips[name.split("/")[1]]
        assert server.url == f"https://{ip}:9090/prom"
        assert server.identity is not None and server.identity.replica == "prometheus-web-0"
    assert [s.identity.shard for s in servers.values() if s.identity] == [0, 1, 2]


def test_ready_follows_the_pod_condition() -> None:
    """Captured as soon as the pods existed: each server is read only if its
    pod was Ready then, and says why not otherwise."""
    ready = {
        p["metadata"]["name"]: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions") or []
        )
        for p in raw_pods("web")
    }
    for name, server in by_name(d.operator_servers([cr("web")], pods("web"))).items():
        assert server.readable == ready[name.split("/")[1]]
        if not server.readable:
            assert server.unreadable == "pod not Ready"


def test_listen_local_is_one_finding_and_an_unknown_share() -> None:
    local = cr("local")
    assert local.listen_local
    found = d.operator_servers([local], pods("local"))
    assert [f.reason for f in found.findings] == ["listen_local"]
    assert "monitoring/local" in found.findings[0].message
    (server,) = found.servers
    assert server.name == "monitoring/prometheus-local-0"
    assert not server.readable and server.url == ""
    assert server.unreadable.startswith("listenLocal")
    assert found.leaving == ()  # its pod is its own, not a stray


def test_prometheus_agent_pods_are_prom_agent_statefulsets() -> None:
    agent = cr("agent", d.PROMETHEUS_AGENT)
    servers = by_name(d.operator_servers([agent], pods("agent")))
    assert sorted(servers) == [
        "monitoring/prom-agent-agent-0",
        "monitoring/prom-agent-agent-shard-1-0",
    ]
    ident = servers["monitoring/prom-agent-agent-shard-1-0"].identity
    assert ident == ServerIdentity("monitoring/agent", "prom-agent-agent-0", 1, 2, "discovered")
    assert all(s.found_by == "PrometheusAgent monitoring/agent" for s in servers.values())


def test_a_prometheus_and_an_agent_of_one_name_keep_their_own_pods() -> None:
    agent = replace(cr("agent", d.PROMETHEUS_AGENT), name="k8s", shards=1)
    found = d.operator_servers([cr("k8s"), agent], pods("k8s"))
    agents = [s for s in found.servers if s.found_by.startswith("PrometheusAgent")]
    assert [(s.name, s.unreadable) for s in agents] == [
        ("monitoring/prom-agent-k8s-0", "no pod yet")
    ]
    assert len([s for s in found.servers if s.readable]) == 4


# --- bad input: one finding or reason each, never a crash ------------------------------------


def test_a_pod_without_an_ip_is_not_read_and_says_why() -> None:
    ps = pods("k8s")
    ps[0] = replace(ps[0], ip="", phase="Pending", ready=False)
    server = by_name(d.operator_servers([cr("k8s")], ps))[f"monitoring/{ps[0].name}"]
    assert (server.url, server.unreadable) == ("", "pod has no IP (phase Pending)")


def test_a_missing_port_name_is_a_finding_per_pod() -> None:
    k8s = replace(cr("k8s"), port_name="metrics")
    found = d.operator_servers([k8s], pods("k8s"))
    assert [f.reason for f in found.findings] == ["port_missing"] * 4
    assert "'metrics'" in found.findings[0].message
    assert all(s.unreadable == "no port named metrics" for s in found.servers)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"shards": "two"}, 'spec.shards is "two", not an integer'),
        ({"replicas": [1]}, "spec.replicas is [1], not an integer"),
        ({"listenLocal": "yes"}, 'spec.listenLocal is "yes", not true or false'),
        ({"web": 3}, "spec.web is not an object"),
    ],
)
def test_a_malformed_spec_is_one_finding_naming_the_field(
    spec: dict[str, Any], problem: str
) -> None:
    body = json.loads((CAPTURED / "prometheus-k8s.json").read_text())
    body["spec"].update(spec)
    obj = scraper_from_raw(msgspec.json.decode(json.dumps(body), type=RawScraper), d.PROMETHEUS)
    assert obj.problem == problem
    found = d.operator_servers([obj], pods("k8s"))
    assert found.servers == ()
    assert [f.reason for f in found.findings] == ["malformed_spec"]
    assert problem in found.findings[0].message
    # Its pods are neither judged nor taken for strays of a deleted object.
    assert found.leaving == ()


def test_a_spec_that_is_not_an_object_is_malformed() -> None:
    body = b'{"metadata":{"name":"k8s","namespace":"m"},"spec":"x"}'
    obj = scraper_from_raw(msgspec.json.decode(body, type=RawScraper), d.PROMETHEUS)
    assert obj.problem.startswith("spec is not an object")


def test_a_shard_label_that_disagrees_with_the_statefulset_is_a_finding() -> None:
    ps = pods("k8s")
    i = next(i for i, p in enumerate(ps) if p.name == "prometheus-k8s-shard-1-0")
    ps[i] = replace(ps[i], labels={**ps[i].labels, d.SHARD_LABEL: "0"})
    found = d.operator_servers([cr("k8s")], ps)
    assert [f.reason for f in found.findings] == ["shard_label_mismatch"]
    server = by_name(found)["monitoring/prometheus-k8s-shard-1-0"]
    assert server.identity is not None and server.identity.shard == 1


def test_a_pod_of_another_statefulset_with_that_name_is_not_taken() -> None:
    ps = [replace(p, owner_name="something-else") for p in pods("k8s")]
    found = d.operator_servers([cr("k8s")], ps)
    assert {s.unreadable for s in found.servers} == {"no pod yet"}
    assert len(found.leaving) == 4


# --- scaling and deleting --------------------------------------------------------------------


def test_shards_the_cr_no_longer_asks_for_are_leaving_not_down() -> None:
    found = d.operator_servers([replace(cr("k8s"), shards=1)], pods("k8s"))
    assert sorted(by_name(found)) == ["monitoring/prometheus-k8s-0", "monitoring/prometheus-k8s-1"]
    assert found.leaving == (
        "monitoring/prometheus-k8s-shard-1-0",
        "monitoring/prometheus-k8s-shard-1-1",
    )


def test_a_deleted_cr_leaves_its_pods_unjudged() -> None:
    found = d.operator_servers([], pods("k8s"))
    assert found.servers == () and len(found.leaving) == 4


def test_a_new_shard_is_unknown_until_its_pods_run() -> None:
    found = d.operator_servers([replace(cr("k8s"), shards=3)], pods("k8s"))
    new = [s for s in found.servers if s.identity and s.identity.shard == 2]
    assert [(s.name, s.unreadable) for s in new] == [
        ("monitoring/prometheus-k8s-shard-2-0", "no pod yet"),
        ("monitoring/prometheus-k8s-shard-2-1", "no pod yet"),
    ]
    assert {s.identity.shards for s in found.servers if s.identity} == {3}


def test_replicas_zero_runs_no_server_and_negative_is_one() -> None:
    body = json.loads((CAPTURED / "prometheus-k8s.json").read_text())
    for replicas, want in ((0, 0), (-1, 1)):
        body["spec"]["replicas"] = replicas
        obj = scraper_from_raw(msgspec.json.decode(json.dumps(body), type=RawScraper), d.PROMETHEUS)
        assert obj.replicas == want
    body["spec"]["shards"] = 0
    obj = scraper_from_raw(msgspec.json.decode(json.dumps(body), type=RawScraper), d.PROMETHEUS)
    assert obj.shards == 1


# --- fleet changes -----------------------------------------------------------------------------


def test_fleet_changes_name_added_removed_replaced_and_updated() -> None:
    before = by_name(d.operator_servers([cr("k8s")], pods("k8s")))
    ps = pods("k8s")
    moved = next(i for i, p in enumerate(ps) if p.name == "prometheus-k8s-1")
    ps[moved] = replace(ps[moved], uid="new-uid", ip="127.206.53.99")
    unready = next(i for i, p in enumerate(ps) if p.name == "prometheus-k8s-0")
    ps[unready] = replace(ps[unready], ready=False)
    after = d.operator_servers([replace(cr("k8s"), shards=1)], ps).servers
    changes = d.fleet_changes(before, after)
    assert [s.name for s in changes.removed] == [
        "monitoring/prometheus-k8s-shard-1-0",
        "monitoring/prometheus-k8s-shard-1-1",
    ]
    assert changes.added == ()
    ((old, new),) = changes.replaced
    assert old.name == new.name == "monitoring/prometheus-k8s-1"
    assert new.url == "http://127.206.53.99:9090" != old.url
    ((old0, new0),) = changes.updated
    assert new0.unreadable == "pod not Ready" and old0.readable
    assert new0.identity is not None and new0.identity.shards == 1
    assert d.fleet_changes(before, before.values()).empty


def test_a_pod_replaced_at_the_same_ip_is_still_replaced() -> None:
    before = by_name(d.operator_servers([cr("k8s")], pods("k8s")))
    ps = [replace(p, uid=p.uid + "-2") if p.name == "prometheus-k8s-0" else p for p in pods("k8s")]
    changes = d.fleet_changes(before, d.operator_servers([cr("k8s")], ps).servers)
    assert [old.name for old, _ in changes.replaced] == ["monitoring/prometheus-k8s-0"]


def test_a_server_given_explicitly_is_judged_once() -> None:
    servers = d.operator_servers([cr("k8s")], pods("k8s")).servers
    first = servers[0]
    ip = first.url.split("//")[1].split(":")[0]
    keep, dropped = d.without_explicit(servers, [f"http://{ip}:9090/", "http://prom.example:9090"])
    assert dropped == [first]
    assert len(keep) == 3 and first not in keep
    # Another scheme or port is another server.
    keep, dropped = d.without_explicit(servers, [f"https://{ip}:9090", f"http://{ip}:9091"])
    assert dropped == []


# --- pods found by a selector ------------------------------------------------------------------


def test_selected_pods_are_placed_by_their_answers_and_operator_pods_skipped() -> None:
    ps = pods("k8s")
    plain = [
        replace(p, labels={"app": "prometheus"}, owner_kind="StatefulSet", owner_name="prom")
        for p in ps[:2]
    ]
    found = d.selector_servers([*ps, *plain], "web", "app=prometheus")
    assert [s.name for s in found.servers] == [f"monitoring/{p.name}" for p in plain]
    assert all(s.identity is None and s.readable for s in found.servers)
    assert found.servers[0].found_by == "pod selector app=prometheus"
    missing = d.selector_servers(plain, "http", "app=prometheus")
    assert [f.reason for f in missing.findings] == ["port_missing"] * 2
    numbered = d.selector_servers(plain, "9091", "app=prometheus")
    assert numbered.findings == () and numbered.servers[0].url.endswith(":9091")


def test_urls() -> None:
    assert d.base_url("http", "10.0.0.1", 9090, "/") == "http://10.0.0.1:9090"
    assert d.base_url("https", "fd00::1", 9090, "/prom/") == "https://[fd00::1]:9090/prom"
    assert d.address_key("http://[FD00:0::1]:9090/x") == ("http", "fd00::1", 9090)
    assert d.address_key("https://prom.example") == ("https", "prom.example", 443)
    assert d.address_key("http://a:notaport") is None


# --- a configuration that lags its object ---------------------------------------------------


def test_a_shard_whose_loaded_config_lags_its_object_is_not_judged() -> None:
    """The config shard-1-0 loaded from the real Operator's Secret (2 shards):
    fine while the CR says 2 shards, lagging once it says 3 (reload pending)."""
    body = (CAPTURED.parent / "config-endpoints-shard-1-0.json").read_bytes()
    loaded = hashmod_shard(parse_config_response(body).jobs)
    assert loaded == (1, 2)
    ident = ServerIdentity("monitoring/k8s", "prometheus-k8s-0", 1, 2, d.HOW_DISCOVERED)
    assert d.configuration_lags(ident, loaded) == ""
    lag = d.configuration_lags(replace(ident, shards=3), loaded)
    assert "keeps shard 1 of 2" in lag and "shard 1 of 3" in lag
    # Servers not placed by an object, or with no hashmod rule: nothing to compare.
    assert d.configuration_lags(replace(ident, shards=3, how="operator"), loaded) == ""
    assert d.configuration_lags(replace(ident, shards=3), None) == ""
