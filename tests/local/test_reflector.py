"""Reflector against a fake apiserver on 127.0.0.1 speaking list/watch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from kubernetes.client import Configuration

from coverage_exporter import logs
from coverage_exporter.health import SOURCE_KUBERNETES, SourceHealth
from coverage_exporter.model.objects import Node, Service
from coverage_exporter.model.scope import over_capacity_services
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes import parse as k8s_parse
from coverage_exporter.sources.kubernetes.api import ApiClient
from coverage_exporter.sources.kubernetes.kubeconfig import KubeAuth
from coverage_exporter.sources.kubernetes.node_decoder import NodePageDecoder
from coverage_exporter.sources.kubernetes.reflector import Backoff, Reflector
from coverage_exporter.sources.kubernetes.source import KubernetesSource
from fakes.apiserver import FakeApiServer, node, nodes


async def until(check: Callable[[], Any], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def configuration(url: str, token: str | None = None) -> Configuration:
    cfg = Configuration()
    cfg.host = url
    if token:
        cfg.api_key["BearerToken"] = f"Bearer {token}"
    return cfg


@pytest.fixture
async def api(server: FakeApiServer) -> AsyncIterator[ApiClient]:
    client = ApiClient(
        KubeAuth.from_configuration(configuration(server.url, "s3cret")),
        SourceHealth(SOURCE_KUBERNETES),
        request_timeout_seconds=5,
    )
    await client.open()
    yield client
    await client.close()


NODE_DECODER: list[NodePageDecoder | None] = [None]


@pytest.fixture(autouse=True, params=["here", "worker"])
def node_decoding(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on both paths of a Node LIST page: parsed in this
    process, and in the Node decoding worker with the next page asked for
    early (the default of serve)."""
    decoder = NodePageDecoder() if request.param == "worker" else None
    NODE_DECODER[0] = decoder
    yield request.param
    NODE_DECODER[0] = None
    if decoder is not None:
        decoder.release()


def node_reflector(api: ApiClient, **kwargs: Any) -> Reflector[str, Node]:
    kwargs.setdefault("backoff", Backoff(base=0.02, cap=0.1))
    kwargs.setdefault("page_decoder", NODE_DECODER[0])
    return Reflector(api, "/api/v1/nodes", k8s_parse.NODES, api._health, name="nodes", **kwargs)


@pytest.fixture
async def reflectors() -> AsyncIterator[list[Reflector[Any, Any]]]:
    started: list[Reflector[Any, Any]] = []
    yield started
    for r in started:
        await r.stop()


async def test_paginated_list_then_watch(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    for obj in nodes(1234):
        server.put("nodes", obj)
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    assert len(r.cache) == 1234
    assert r.cache["node-01233"].addresses == ("10.0.4.209",)
    lists = server.lists("nodes")
    assert [req.params.get("limit") for req in lists] == ["500"] * 3
    assert "continue" not in lists[0].params and all("continue" in q.params for q in lists[1:])
    assert all(req.authorization == "Bearer s3cret" for req in server.requests)
    await until(lambda: server.open_watches == 1)
    watch = server.watches("nodes")[0].params
    assert watch["resourceVersion"] == str(server.rv)
    assert watch["allowWatchBookmarks"] == "true"
    assert int(watch["timeoutSeconds"]) >= 300
    assert r.healthy and r.lists_total == 1
    health = api._health
    assert health.requests_total == 4 and health.response_bytes_total > 100_000


class _GatedPages(NodePageDecoder):
    """Parses a page only once the test lets it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def decode(self, body: Any, encoding: str, limit: int) -> Any:
        self.waiting += 1
        await self.gate.wait()
        return await super().decode(body, encoding, limit)


@pytest.mark.parametrize("wait", ["wait_synced", "wait_settled"])
async def test_a_wait_cancelled_as_the_list_ends_is_cancelled(api: ApiClient, wait: str) -> None:
    """Cancelled in the loop turns between the first LIST's end and the
    waiter resuming, a wait is cancelled, not answered: with asyncio.wait_for
    on Python 3.11 the cancel was lost (CPython gh-86296; see
    KubeAuth._bounded), and a cycle cancelled at its deadline or at SIGTERM
    went on as if it had not been."""
    for turns in range(8):
        r = node_reflector(api)
        waiting = asyncio.create_task(getattr(r, wait)(5))
        await asyncio.sleep(0)
        r._synced.set()
        r._settled.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        if waiting.done():
            break  # past the window: answered before the cancel
        waiting.cancel()
        await asyncio.wait([waiting])
        assert waiting.cancelled(), f"cancel lost {turns} turns after the LIST ended"
    else:
        raise AssertionError("the wait never returned: the window was not passed")


async def test_the_next_page_is_asked_for_while_this_one_is_parsed(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]], node_decoding
) -> None:
    """With a page decoder the second page is requested before the first is
    parsed (its head names the continue token); without one, after. Each
    page is asked for once, and the worker is gone once the LIST is."""
    for obj in nodes(1234):
        server.put("nodes", obj)
    pages = _GatedPages() if node_decoding == "worker" else None
    r = node_reflector(api, page_decoder=pages)
    reflectors.append(r)
    r.start()
    if pages is None:
        assert await r.wait_synced(5)
    else:
        await until(lambda: pages.waiting == 1 and len(server.lists("nodes")) == 2)
        assert not r.synced  # page one is still being parsed
        pages.gate.set()
        assert await r.wait_synced(5)
        assert pages._slot._worker is None
    assert len(r.cache) == 1234
    tokens = [req.params.get("continue") for req in server.lists("nodes")]
    assert len(tokens) == 3 and len(set(tokens)) == 3


async def test_watch_events_apply(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    server.put("nodes", node("a", "10.0.0.1"))
    server.put("nodes", node("b", "10.0.0.2"))
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    await until(lambda: server.open_watches == 1)
    generation = r.generation
    server.put("nodes", node("c", "10.0.0.3"))
    server.put("nodes", node("a", "10.0.0.1", ready=False))
    server.delete("nodes", "b")
    await until(lambda: set(r.cache) == {"a", "c"} and not r.cache["a"].ready)
    assert r.resource_version == str(server.rv)
    assert r.generation > generation
    server.bookmark()
    server.rv += 10  # other resources moved on; the bookmark tells us
    server.bookmark()
    await until(lambda: r.resource_version == str(server.rv))
    assert len(server.lists()) == 1


async def test_connection_drop_resumes_watch_from_last_rv(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    server.put("nodes", node("a"))
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    await until(lambda: server.open_watches == 1)
    server.put("nodes", node("b"))
    await until(lambda: "b" in r.cache)
    seen = r.resource_version
    server.drop_watches()
    # Changes while no watch is open are replayed from history on resume.
    server.put("nodes", node("c"))
    await until(lambda: "c" in r.cache)
    resumed = server.watches("nodes")[-1].params
    assert resumed["resourceVersion"] == seen
    assert len(server.lists()) == 1  # no relist for a dropped connection


async def test_watch_timeout_does_not_relist(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    server.put("nodes", node("a"))
    r = node_reflector(api, watch_timeout_seconds=1)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    await until(lambda: len(server.watches()) >= 3, seconds=10)
    assert len(server.lists()) == 1
    assert r.healthy and r.last_error == ""


async def test_bookmark_rv_is_used_for_resume(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    server.put("nodes", node("a"))
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    await until(lambda: server.open_watches == 1)
    server.rv = 500
    server.bookmark()
    await until(lambda: r.resource_version == "500")
    server.drop_watches()
    await until(lambda: len(server.watches()) == 2)
    assert server.watches()[-1].params["resourceVersion"] == "500"


@pytest.mark.parametrize("http_410", [False, True])
async def test_gone_relists_and_replaces_cache(
    server: FakeApiServer,
    api: ApiClient,
    reflectors: list[Reflector[Any, Any]],
    http_410: bool,
) -> None:
    server.watch_gone_http = http_410
    server.put("nodes", node("a"))
    server.put("nodes", node("b"))
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    await until(lambda: server.open_watches == 1)
    server.drop_watches()
    # While no watch is open, "b" goes and "c" comes, and history is
    # compacted: the resume gets 410 and only a relist can catch up.
    server.delete("nodes", "b")
    server.put("nodes", node("c"))
    server.compact()
    await until(lambda: set(r.cache) == {"a", "c"})
    assert len(server.lists()) == 2
    assert r.healthy
    await until(lambda: server.open_watches == 1)
    assert server.watches()[-1].params["resourceVersion"] == str(server.rv)


async def test_expired_continue_restarts_list(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]], caplog: Any
) -> None:
    for obj in nodes(1100):
        server.put("nodes", obj)
    server.expire_continue = 1
    r = node_reflector(api)
    reflectors.append(r)
    with caplog.at_level(logging.WARNING, logger="coverage_exporter.kubernetes"):
        r.start()
        assert await r.wait_synced(5)
    assert len(r.cache) == 1100
    tokens = [q.params.get("continue") for q in server.lists()]
    # page 1, page 2 (410), then from scratch: page 1, 2, 3
    assert [t is None for t in tokens] == [True, False, True, False, False]
    assert "continue token expired" in caplog.text


async def test_cache_is_never_half_empty_during_relist(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    for obj in nodes(1200, prefix="old"):
        server.put("nodes", obj)
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    await until(lambda: server.open_watches == 1)
    old = dict(r.cache)
    # Replace every node, then force a relist that stalls after page one.
    for i in range(1200):
        server.delete("nodes", f"old-{i:05d}")
    server.drop_watches()
    for obj in nodes(1200, prefix="new"):
        server.put("nodes", obj)
    server.compact()
    server.page_gate = asyncio.Event()
    await until(lambda: len(server.lists()) == 3)  # second list's first page served
    for _ in range(20):
        # Replayed deletes may have landed before the 410; what must never
        # show is a mix of old and new, or a partial new list.
        assert not any(k.startswith("new") for k in r.cache)
        await asyncio.sleep(0.01)
    server.page_gate.set()
    await until(lambda: len(r.cache) == 1200 and all(k.startswith("new") for k in r.cache))
    assert set(old) != set(r.cache)


async def test_cache_survives_apiserver_outage(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    server.put("nodes", node("a"))
    changes: list[bool] = []
    r = node_reflector(api, on_state_change=lambda: changes.append(r.healthy))
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    await until(lambda: server.open_watches == 1)
    port = server.port
    await server.stop()
    await until(lambda: not r.healthy)
    assert set(r.cache) == {"a"}
    assert api._health.errors_total >= 1 and "nodes" in api._health.last_error
    await asyncio.sleep(0.3)  # a few failed retries, capped backoff
    errors = api._health.errors_total
    assert errors >= 2
    server.put("nodes", node("b"))
    await server.start(port)
    await until(lambda: r.healthy and "b" in r.cache)
    assert len(server.lists()) == 1  # resumed the watch, history replayed
    transitions = [h for i, h in enumerate(changes) if i == 0 or changes[i - 1] != h]
    assert transitions == [True, False, True]


async def test_server_errors_back_off_and_recover(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    server.put("nodes", node("a"))
    server.fail_status = 500
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    await until(lambda: len(server.requests) >= 3)
    assert not r.synced and not r.healthy
    assert "injected failure" in r.last_error
    server.fail_status = None
    assert await r.wait_synced(5)
    assert r.healthy and r.last_error == ""


async def test_gone_on_first_list_page_backs_off(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    server.fail_status = 410
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    await asyncio.sleep(0.5)
    # Backoff (20-100 ms), not a tight relist loop.
    assert 2 <= len(server.requests) <= 30
    assert not r.healthy and "410" in r.last_error


async def test_unchanged_objects_keep_generation(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    server.put("nodes", node("a"))
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    await until(lambda: server.open_watches == 1)
    generation = r.generation
    heartbeat = node("a")
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "2025-11-26T05:00:00Z"
    server.put("nodes", heartbeat)
    await until(lambda: r.resource_version == str(server.rv))
    assert r.generation == generation
    server.put("nodes", node("a", ready=False))
    await until(lambda: not r.cache["a"].ready)
    assert r.generation == generation + 1


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(base=1, cap=8)
    delays = [b.next() for _ in range(10)]
    assert all(0.5 <= d <= 8 for d in delays)
    assert all(4 <= d <= 8 for d in delays[4:])
    b.reset()
    assert b.next() <= 1


async def test_bad_objects_are_skipped(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]], caplog: Any
) -> None:
    server.put("nodes", node("good"))
    server.put("nodes", {"metadata": {"name": "bad"}, "status": {"addresses": "nope"}})
    r = node_reflector(api)
    reflectors.append(r)
    with caplog.at_level(logging.WARNING, logger="coverage_exporter.kubernetes"):
        r.start()
        assert await r.wait_synced(5)
        assert set(r.cache) == {"good"}
        assert "skipping a bad object" in caplog.text
        await until(lambda: server.open_watches == 1)
        # A good object turning bad is dropped: its old state is not true any more.
        server.put("nodes", {"metadata": {"name": "good"}, "status": {"conditions": 5}})
        server.put("nodes", node("later"))
        await until(lambda: set(r.cache) == {"later"})
        assert r.resource_version == str(server.rv)
        # Unknown event types are ignored, the watch goes on.
        server.put_raw_event("nodes", b'{"type":"SURPRISE","object":{}}\n')
        server.put("nodes", node("last"))
        await until(lambda: "last" in r.cache)
    assert r.healthy and len(server.lists()) == 1


async def test_event_larger_than_aiohttp_line_limit(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]]
) -> None:
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    await until(lambda: server.open_watches == 1)
    big = node("big")
    big["status"]["images"] = [{"names": [f"registry/img-{i}:" + "x" * 200]} for i in range(2000)]
    server.put("nodes", big)
    server.put("nodes", node("after"))
    await until(lambda: {"big", "after"} <= set(r.cache))


async def test_deprecation_warning_logged_once(
    server: FakeApiServer, api: ApiClient, reflectors: list[Reflector[Any, Any]], caplog: Any
) -> None:
    warning = '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"'
    server.warnings["endpoints"] = warning
    r = Reflector(
        api,
        "/api/v1/endpoints",
        k8s_parse.ENDPOINTS,
        api._health,
        name="endpoints",
        watch_timeout_seconds=1,
        backoff=Backoff(base=0.02, cap=0.1),
    )
    reflectors.append(r)
    with caplog.at_level(logging.WARNING, logger="coverage_exporter.kubernetes"):
        r.start()
        assert await r.wait_synced(5)
        await until(lambda: len(server.watches()) >= 3, seconds=10)
    lines = [logs.LogfmtFormatter().format(r) for r in caplog.records]
    assert sum("v1 Endpoints is deprecated" in line for line in lines) == 1


# --- KubernetesSource on the fake apiserver ----------------------------------------------


def _svc(ns: str, name: str, selector: dict[str, str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"port": 9100}]}
    if selector is not None:
        spec["selector"] = selector
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


def _slice(ns: str, name: str, service: str, family: str, ips: list[str]) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": ns,
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": family,
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


def _pod(ns: str, name: str, node_name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node_name},
        "status": {"podIP": "10.1.0.1"},
    }


@pytest.fixture
async def source(server: FakeApiServer) -> AsyncIterator[KubernetesSource]:
    src = KubernetesSource(
        configuration(server.url), watch_timeout_seconds=60, node_decoder=NODE_DECODER[0]
    )
    yield src
    await src.stop()


def watched_pod_lists(server: FakeApiServer) -> list[Any]:
    """The pod reflectors' LISTs (not the owner reads of model.owners)."""
    return [r for r in server.lists("pods") if "fieldSelector" not in r.params]


async def test_source_snapshot(server: FakeApiServer, source: KubernetesSource) -> None:
    ne = {"app": "node-exporter"}
    server.put("nodes", node("n1", "10.0.0.1"))
    server.put("services", _svc("mon", "ne", ne))
    server.put("services", _svc("kube-system", "kubelet", None))
    server.put(
        "endpoints",
        {
            "metadata": {
                "namespace": "mon",
                "name": "ne",
                "annotations": {"endpoints.kubernetes.io/over-capacity": "truncated"},
            },
            "subsets": [{"addresses": [{"ip": "10.0.0.1", "nodeName": "n1"}]}],
        },
    )
    server.put("endpointslices", _slice("mon", "ne-v4", "ne", "IPv4", ["10.0.0.1"]))
    server.put("endpointslices", _slice("mon", "ne-v6", "ne", "IPv6", ["fd00::1"]))
    server.put("endpointslices", _slice("mon", "orphan", "", "IPv4", ["10.9.9.9"]))
    server.put(
        "daemonsets",
        {"metadata": {"namespace": "mon", "name": "ne"}, "status": {"desiredNumberScheduled": 1}},
    )
    server.put("pods", _pod("mon", "ne-abc", "n1", ne))
    server.put("pods", _pod("mon", "other", "n1", {"app": "other"}))
    server.put("pods", _pod("elsewhere", "ne-xyz", "n1", ne))

    await source.start()
    assert await source.wait_synced(5)
    assert source.is_synced()
    await until(lambda: source.health.up)
    snap = source.snapshot()
    assert set(snap.nodes) == {"n1"}
    assert snap.services[("kube-system", "kubelet")].selector is None
    assert over_capacity_services(snap) == [("mon", "ne")]
    assert [s.address_type for s in snap.endpointslices[("mon", "ne")]] == ["IPv4", "IPv6"]
    assert ("mon", "") not in snap.endpointslices
    assert snap.daemonsets[("mon", "ne")].desired_number_scheduled == 1
    assert snap.pods == {}
    # Unchanged caches: the same derived objects, no rebuild.
    again = source.snapshot()
    assert again.nodes is snap.nodes and again.endpointslices is snap.endpointslices

    services = snap.services.values()
    source.set_pod_scope(services)
    await source.ensure_pods_synced(5)
    pod_lists = watched_pod_lists(server)
    assert len(pod_lists) == 1  # the selector-less kubelet Service has no pods
    # No pod of the scope has an owner its name shows (ne-abc is not
    # "ne-" + 5 characters): one pod's owner is read from its metadata
    # (issue #19 item 8), once; it has none, so nothing more is read.
    (probe,) = [r for r in server.lists("pods") if r not in pod_lists]
    assert probe.params["fieldSelector"] == "metadata.name=ne-abc"
    assert probe.params["includeObject"] == "Metadata"
    assert pod_lists[0].namespace == "mon"
    assert pod_lists[0].params["labelSelector"] == "app=node-exporter"
    snap = source.snapshot()
    assert [p.name for p in snap.pods[("mon", "ne")]] == ["ne-abc"]
    assert source.health.up

    # A second Service with the same selector shares the reflector.
    twin = Service("mon", "ne-twin", ne)
    source.set_pod_scope([*services, twin])
    await source.ensure_pods_synced(5)
    assert len(watched_pod_lists(server)) == 1
    assert len(server.lists("pods")) == 2  # the probe is not repeated
    assert source.snapshot().pods[("mon", "ne-twin")][0].name == "ne-abc"

    # Pods change through the watch.
    await until(lambda: server.open_watches == 6)
    server.put("pods", _pod("mon", "ne-def", "n2", ne))
    await until(lambda: len(source.snapshot().pods[("mon", "ne")]) == 2)

    # Leaving scope stops the pod watch.
    source.set_pod_scope([])
    await until(lambda: server.open_watches == 5)
    assert source.snapshot().pods == {}
    # Still one LIST per reflector ever, and the one owner probe.
    assert len(server.lists()) == 6 + 1


async def test_source_health_follows_reflectors(
    server: FakeApiServer, source: KubernetesSource
) -> None:
    server.put("nodes", node("n1"))
    await source.start()
    assert await source.wait_synced(5)
    await until(lambda: source.health.up)
    assert source.health.last_success_timestamp > 0
    port = server.port
    await server.stop()
    await until(lambda: not source.health.up)
    assert set(source.snapshot().nodes) == {"n1"}
    await server.start(port)
    await until(lambda: source.health.up, seconds=10)


async def test_wait_synced_timeout_names_laggards(server: FakeApiServer) -> None:
    server.fail_status = 403
    src = KubernetesSource(configuration(server.url))
    await src.start()
    try:
        assert await src.wait_synced(0.3) is False
        assert "nodes (HTTP 403" in src.health.last_error
        assert not src.health.up and src.health.errors_total > 0
        src.set_pod_scope([Service("mon", "ne", {"app": "ne"})])
        with pytest.raises(SourceError, match=r"pods mon app=ne \(HTTP 403"):
            await src.ensure_pods_synced(0.3)
    finally:
        await src.stop()


async def test_snapshot_is_stable_while_watch_changes_cache(
    server: FakeApiServer, source: KubernetesSource
) -> None:
    server.put("nodes", node("n1"))
    await source.start()
    assert await source.wait_synced(5)
    await until(lambda: server.open_watches == 5)
    snap = source.snapshot()
    server.put("nodes", node("n2"))
    await until(lambda: "n2" in source.snapshot().nodes)
    assert set(snap.nodes) == {"n1"}


def test_pod_scope_before_start() -> None:
    with pytest.raises(RuntimeError):
        KubernetesSource(configuration("http://127.0.0.1:1")).set_pod_scope([])
