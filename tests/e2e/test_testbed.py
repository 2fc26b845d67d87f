"""The testbed shows the failure the exporter exists for: real controllers
truncate and cap, Prometheus discovers only what they leave, and nothing
leaves loopback."""

from __future__ import annotations

import re
import time

import pytest

from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from testbed.prometheus import active_targets

N = s.DEFAULT_NODES
IP_TO_NODE = {ip: name for name, ip in s.nodes(N).items()}


def test_endpoints_truncated_to_1000_with_annotation(kube: Kube) -> None:
    ep = s.get_endpoints(kube, s.MONITORING, s.NODE_EXPORTER)
    addresses = s.endpoints_addresses(ep)
    assert len(addresses) == 1000
    assert ep["metadata"]["annotations"][s.OVER_CAPACITY] == "truncated"
    kept = {IP_TO_NODE[a["ip"]] for a in addresses}
    assert set(s.nodes(N)) - kept == s.endpoints_dropped_nodes(N)
    assert len(s.endpoints_dropped_nodes(N)) == N - 1000


def test_endpointslices_hold_every_node(kube: Kube) -> None:
    slices = s.list_endpointslices(kube, s.MONITORING, s.NODE_EXPORTER, s.BY_CONTROLLER)
    assert s.slice_addresses(slices) == set(s.nodes(N).values())
    assert all(len(x["endpoints"]) <= 100 for x in slices)
    assert 12 <= len(slices) <= 14


def test_kubelet_mirroring_caps_at_1000(kube: Kube) -> None:
    ep = s.get_endpoints(kube, s.KUBE_SYSTEM, s.KUBELET)
    assert len(s.endpoints_addresses(ep)) == N
    assert not s.is_truncated(ep)  # selector-less: the endpoints controller skips it
    mirrored = s.list_endpointslices(kube, s.KUBE_SYSTEM, s.KUBELET, s.BY_MIRRORING)
    got = {IP_TO_NODE[ip] for ip in s.slice_addresses(mirrored)}
    assert len(got) == 1000
    assert set(s.nodes(N)) - got == s.mirroring_dropped_nodes(N)


def test_skip_mirror_has_only_operator_slices(kube: Kube) -> None:
    slices = s.list_endpointslices(kube, s.KUBE_SYSTEM, s.KUBELET_SKIP_MIRROR)
    assert {x["metadata"]["labels"][s.MANAGED_BY] for x in slices} == {s.BY_OPERATOR}
    assert sorted(len(x["endpoints"]) for x in slices) == [176, 512, 512]
    assert len(s.slice_addresses(slices)) == N


# Active targets each scrape pool must show with 1200 nodes.
EXPECTED = {
    "node-exporter-endpoints": 1000,
    "node-exporter-endpointslice": N,
    "kubelet-endpoints": N,
    "kubelet-endpointslice": 1000,
    "kubelet-skip-mirror-endpoints": N,
    "kubelet-skip-mirror-endpointslice": N,
}


@pytest.mark.parametrize("prom", ["prometheus-3", "prometheus-2"])
def test_prometheus_discovers_what_the_controllers_left(testbed: Cluster, prom: str) -> None:
    url = testbed.prometheus_urls[prom]
    got: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = {pool: len(active_targets(url, pool)) for pool in EXPECTED}
        if got == EXPECTED:
            break
        time.sleep(2)
    assert got == EXPECTED


# Go's error when the proxy refuses: "proxyconnect tcp: dial tcp 127.0.0.1:1: ...".
_DIAL = re.compile(r"dial tcp \[?([0-9a-fA-F.:]+?)\]?:\d+")


@pytest.mark.parametrize("prom", ["prometheus-3", "prometheus-2"])
def test_scrapes_fail_at_the_loopback_proxy(testbed: Cluster, prom: str) -> None:
    url = testbed.prometheus_urls[prom]
    proxy = testbed.scrape_proxy.removeprefix("http://")
    deadline = time.monotonic() + 120
    while True:
        targets = [t for pool in EXPECTED for t in active_targets(url, pool)]
        unscraped = [t for t in targets if t["health"] == "unknown"]
        if not unscraped or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not unscraped, f"{len(unscraped)} targets never scraped"
    for t in targets:
        assert t["health"] == "down"
        assert proxy in t["lastError"], t["lastError"]
        for ip in _DIAL.findall(t["lastError"]):
            assert ip.startswith("127."), t["lastError"]


def test_nothing_connects_outside_loopback(testbed: Cluster) -> None:
    # Sample a few times: a Prometheus dialing node IPs would show SYN_SENT
    # sockets every scrape interval.
    for _ in range(5):
        assert testbed.non_loopback_peers() == {}
        time.sleep(1)
