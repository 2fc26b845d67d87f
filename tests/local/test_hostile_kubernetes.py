"""Hostile and broken answers on the Kubernetes side, from the local fake of
the list/watch protocol (fakes/apiserver.py): deep nesting,
gzip bombs, escapes in error text, watches a proxy cuts at once, half-open
connections, a pod scope that cannot list, the pod watch cap and the
namespace narrowing. The real apiserver's faults (restart, compaction) are
in tests/e2e/test_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from coverage_exporter import logs
from coverage_exporter.health import SOURCE_KUBERNETES, SourceHealth
from coverage_exporter.model.objects import Service
from coverage_exporter.sources.errors import Limits, SourceError
from coverage_exporter.sources.kubernetes import parse as k8s_parse
from coverage_exporter.sources.kubernetes.api import (
    ApiClient,
    GoneError,
    api_error,
    parse_retry_after,
)
from coverage_exporter.sources.kubernetes.reflector import MAX_EMPTY_WATCHES, Backoff, Reflector
from coverage_exporter.sources.kubernetes.source import KubernetesSource
from fakes.apiserver import FakeApiServer, node, nodes, status
from tests.local.test_hostile_prometheus import ANSI_AND_NEWLINES, DEEP, assert_one_clean_line
from tests.local.test_reflector import (  # node_decoding: every test on both paths of a page
    NODE_DECODER,
    configuration,
    node_decoding,  # noqa: F401
    node_reflector,
    until,
)

MiB = 1 << 20


@pytest.fixture
async def api(server: FakeApiServer) -> AsyncIterator[ApiClient]:
    from coverage_exporter.sources.kubernetes.kubeconfig import KubeAuth

    client = ApiClient(
        KubeAuth.from_configuration(configuration(server.url, "s3cret")),
        SourceHealth(SOURCE_KUBERNETES),
        request_timeout_seconds=5,
        limits=Limits(max_body_bytes=8 * MiB),
    )
    await client.open()
    yield client
    await client.close()


@pytest.fixture
async def reflectors() -> AsyncIterator[list[Reflector[Any, Any]]]:
    started: list[Reflector[Any, Any]] = []
    yield started
    for r in started:
        await r.stop()


def json_body(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


# --- hostile list pages and events --------------------------------------------------


async def test_a_deeply_nested_list_page_is_an_error_not_a_traceback(
    server: FakeApiServer, api: ApiClient, reflectors, caplog: pytest.LogCaptureFixture
) -> None:
    """Used to raise RecursionError: logged with a traceback as an
    'unexpected error', and the same again at every retry."""

    async def nested(_: web.Request) -> web.Response:
        return json_body(b'{"kind":"NodeList","metadata":{"x":' + DEEP + b'},"items":[]}')

    server.overrides[("nodes", "list")] = nested
    r = node_reflector(api)
    reflectors.append(r)
    with caplog.at_level(logging.INFO):
        r.start()
        await until(lambda: r.last_error)
    assert "nested too deeply" in r.last_error and not r.synced and not r.healthy
    assert_one_clean_line(caplog)


async def test_a_deeply_nested_watch_event_restarts_the_watch_cleanly(
    server: FakeApiServer, api: ApiClient, reflectors, caplog: pytest.LogCaptureFixture
) -> None:
    server.put("nodes", node("a"))
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    await until(lambda: r.synced and server.open_watches == 1)
    with caplog.at_level(logging.INFO):
        server.put_raw_event("nodes", b'{"type":"ADDED","object":' + DEEP + b"}\n")
        await until(lambda: len(server.watches("nodes")) >= 2)
    assert dict(r.cache).keys() == {"a"}
    assert_one_clean_line(caplog)
    assert any("nested too deeply" in logs.LogfmtFormatter().format(rec) for rec in caplog.records)


async def test_a_gzip_bomb_list_page_is_cut_off(
    server: FakeApiServer, api: ApiClient, reflectors
) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join([*(packer.compress(b" " * MiB) for _ in range(512)), packer.flush()])

    async def inflating(_: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    server.overrides[("nodes", "list")] = inflating
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    await until(lambda: r.last_error)
    assert "larger than 8388608 bytes" in r.last_error
    assert api._health.response_bytes_total <= 10 * MiB


_NODE_PAGE_IN_CHILD = """
import asyncio, sys
from pathlib import Path
from coverage_exporter.health import SOURCE_KUBERNETES, SourceHealth
from coverage_exporter.sources.kubernetes import parse as k8s_parse
from coverage_exporter.sources.kubernetes.api import ApiClient
from coverage_exporter.sources.kubernetes.kubeconfig import KubeAuth
from tests.local.test_reflector import configuration

def peak_mib() -> float:
    # VmHWM, not ru_maxrss: that one keeps the forking pytest's peak across exec.
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

async def main() -> None:
    auth = KubeAuth.from_configuration(configuration(sys.argv[1], "s3cret"))
    api = ApiClient(auth, SourceHealth(SOURCE_KUBERNETES), request_timeout_seconds=600)
    await api.open()
    before = peak_mib()
    # What the Node reflector does with a page when no worker parses it.
    nodes = k8s_parse.NODES
    page = nodes.parse_page(await api.get("/api/v1/nodes", {"limit": "500"}, nodes.accept))
    print(len(page.items), f"{peak_mib() - before:.0f}")
    await api.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("node_decoding", ["here"], indirect=True)  # the worker's page: its own
async def test_a_node_page_just_under_the_default_limit_is_held_once_in_process(
    server: FakeApiServer,
) -> None:
    """--kubernetes-decode-in-process, the default limits: a Node page of
    250 MiB (blanks in its items, gzipped) is held once while it is parsed.
    Before, the body was read into a bytearray and copied to bytes: the
    process grew 503 MiB (253 MiB after). Read in a child process, whose
    peak RSS is the read's alone."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = b'{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":['
    page = b"".join(
        [
            packer.compress(head),
            *(packer.compress(b" " * MiB) for _ in range(250)),
            packer.compress(b"]}"),
            packer.flush(),
        ]
    )

    async def answer(_: web.Request) -> web.Response:
        return web.Response(
            body=page, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    server.overrides[("nodes", "list")] = answer
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _NODE_PAGE_IN_CHILD,
        server.url,
        cwd=Path(__file__).parents[2],
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    assert child.returncode == 0, out
    items, grown = out.decode().split()
    print(f"Node page of 250 MiB, in process: peak RSS grew {grown} MiB")
    assert items == "0"
    assert float(grown) < 400


async def test_a_watch_event_without_end_is_cut_off(
    server: FakeApiServer, api: ApiClient, reflectors
) -> None:
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    await until(lambda: r.synced and server.open_watches == 1)
    chunk = b'{"type":"ADDED","object":{"metadata":{"name":"' + b"x" * MiB
    for _ in range(9):
        server.put_raw_event("nodes", chunk)
    await until(lambda: "larger than" in r.last_error)


async def test_error_text_is_escaped_and_cut_before_any_log() -> None:
    body = json.dumps(
        {"kind": "Status", "message": ANSI_AND_NEWLINES * 100, "reason": "Bad\nReason", "code": 500}
    ).encode()
    err = api_error(500, body, "7")
    text = str(err)
    assert "\x1b" not in text and "\n" not in text and "\u2028" not in text
    assert "\\x1b[31mALERT" in text and len(text) < 400
    assert err.retry_after == 7
    raw = api_error(502, b"<html>\x1b[2J" + b"bad gateway\r\n" * 1000, None)
    assert "\x1b" not in str(raw) and "\r" not in str(raw)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5", 5.0), ("0", 0.0), ("-3", 0.0), ("NaN", 0.0), ("1e9", 60.0), ("soon", 0.0), (None, 0.0)],
)
def test_retry_after_is_honoured_but_capped(value: str | None, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


async def test_503_retry_after_delays_the_next_attempt(
    server: FakeApiServer, api: ApiClient, reflectors
) -> None:
    calls = 0

    async def busy(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        body = b'{"kind":"Status","code":503,"reason":"ServiceUnavailable","message":"busy"}'
        return web.Response(body=body, status=503, headers={"Retry-After": "3600"})

    server.overrides[("nodes", "list")] = busy
    r = node_reflector(api, backoff=Backoff(base=0.01, cap=0.01))
    reflectors.append(r)
    r.start()
    await until(lambda: r.last_error)
    await asyncio.sleep(0.5)
    # Without Retry-After the 10ms backoff would have retried ~50 times.
    assert calls == 1
    assert "503" in r.last_error


# --- liveness -------------------------------------------------------------------------


async def test_thirty_watches_cut_at_once_mark_the_source_down(server: FakeApiServer) -> None:
    """Used to keep source_up 1: every watch opened with 200, so each looked
    healthy, while the caches stopped following the cluster."""
    for obj in nodes(3):
        server.put("nodes", obj)
    source = KubernetesSource(configuration(server.url), watch_timeout_seconds=60)
    await source.start()
    try:
        assert await source.wait_synced(5)
        services = [
            Service("ns", f"svc-{i}", selector={"app": f"a{i}"}, labels={}) for i in range(25)
        ]
        source.set_pod_scope(services)
        await source.ensure_pods_synced(5)
        assert len(source.reflectors()) == 30
        source.snapshot()
        assert source.health.up
        for r in source.reflectors():
            r._backoff = Backoff(base=0.01, cap=0.02)
        server.watch_ends_at_once = True
        server.drop_watches()
        await until(lambda: all(r.last_error for r in source.reflectors()), 10)
        source.snapshot()
        assert not source.health.up
        assert all("without an event or bookmark" in r.last_error for r in source.reflectors())
        # Fault over: the first event or bookmark of each watch brings it back.
        server.watch_ends_at_once = False
        await until(lambda: server.open_watches == 30, 10)
        server.bookmark()
        await until(lambda: all(r.healthy for r in source.reflectors()), 10)
        source.snapshot()
        assert source.health.up
    finally:
        await source.stop()


async def test_a_half_open_watch_is_noticed(
    server: FakeApiServer, api: ApiClient, reflectors
) -> None:
    """The fake sends nothing on a quiet watch (no bookmarks unless asked):
    exactly what a connection whose peer vanished looks like."""
    r = node_reflector(api, watch_idle_seconds=0.2)
    reflectors.append(r)
    r.start()
    await until(lambda: r.synced)
    await until(lambda: len(server.watches("nodes")) >= MAX_EMPTY_WATCHES and r.last_error, 5)
    assert not r.healthy
    assert "no byte and no bookmark for 0.2s" in r.last_error
    # A bookmark on a later watch proves the connection lives again
    # (sent until one lands: each watch lives only 0.2s here).
    await until(lambda: server.bookmark() or r.healthy)
    assert r.last_error == ""


async def test_a_relist_past_its_deadline_is_down_not_stale_nodes_served_as_current(
    server: FakeApiServer,
) -> None:
    """A relist (after a 410 on the watch) whose pages trickle in, each well
    within the request timeout: used to keep the source up for the whole
    relist, however long, serving the Nodes of before the 410 as current."""
    for each in nodes(40):
        server.put("nodes", each)
    source = KubernetesSource(
        configuration(server.url),
        page_size=1,
        list_deadline_seconds=1.0,
        node_decoder=NODE_DECODER[0],
    )
    await source.start()
    gates: list[asyncio.Event] = []

    async def trickle() -> None:
        # One page every 0.2 s: 40 pages take 8 s, every one on time.
        while True:
            gates.append(asyncio.Event())
            server.page_gate = gates[-1]
            await asyncio.sleep(0.2)
            gates[-1].set()

    trickling = asyncio.create_task(trickle())
    try:
        assert await source.wait_synced(30)
        source.snapshot()
        assert source.health.up
        assert source.nodes is not None
        server.put("nodes", node("joined"))
        await until(lambda: "joined" in source.snapshot().nodes)
        # The watch is told its resourceVersion is gone, and the Node leaves
        # after that (an event that watch never delivers): the Nodes relist.
        gone = {"type": "ERROR", "object": status(410, "Expired", "too old resource version")}
        server.put_raw_event("nodes", json.dumps(gone).encode() + b"\n")
        server.delete("nodes", "joined")
        lists = len(server.lists("nodes"))
        await until(lambda: len(server.lists("nodes")) > lists)

        def down_or_relisted() -> bool:
            source.snapshot()
            return not source.health.up or "joined" not in source.nodes.cache

        await until(down_or_relisted, 60)
        assert not source.health.up, "the relist completed with the source up all along"
        assert "joined" in source.snapshot().nodes, "the last complete list is kept, as down"
        assert "LIST not complete after 1s" in source.health.last_error
        # The relist goes on and completes: up again, with the Nodes of now.
        trickling.cancel()
        server.page_gate = None
        for gate in gates:
            gate.set()
        await until(lambda: (source.snapshot(), source.health.up)[1], 30)
        assert "joined" not in source.snapshot().nodes
    finally:
        trickling.cancel()
        server.page_gate = None
        for gate in gates:
            gate.set()
        await source.stop()


# --- pod scopes -----------------------------------------------------------------------


async def test_a_pod_scope_that_cannot_list_does_not_stall_the_cycle(
    server: FakeApiServer,
) -> None:
    """Used to wait the whole sync timeout (300s by default) every cycle."""
    server.forbidden_namespaces = {"locked"}
    source = KubernetesSource(configuration(server.url))
    await source.start()
    try:
        assert await source.wait_synced(5)
        source.set_pod_scope([Service("locked", "web", selector={"app": "web"}, labels={})])
        with pytest.raises(SourceError, match="403"):
            await asyncio.wait_for(source.ensure_pods_synced(300), 5)
        # The next cycle names it at once instead of waiting again.
        with pytest.raises(SourceError, match="pods not listed"):
            await asyncio.wait_for(source.ensure_pods_synced(300), 5)
    finally:
        await source.stop()


async def test_pod_watches_are_capped_and_counted(server: FakeApiServer) -> None:
    source = KubernetesSource(configuration(server.url), max_pod_watches=2)
    await source.start()
    try:
        assert await source.wait_synced(5)
        services = [Service("ns", f"s{i}", selector={"app": f"a{i}"}, labels={}) for i in range(5)]
        source.set_pod_scope(services)
        assert (source.pod_watches, source.pod_scopes_unwatched) == (2, 3)
        await source.ensure_pods_synced(5)
        snapshot = source.snapshot()
        # Services left unwatched have no pods at all: withheld, never empty.
        assert set(snapshot.pods) == {("ns", "s0"), ("ns", "s1")}
        # Scopes already watched keep their watch when the scope grows.
        source.set_pod_scope([Service("ns", "a", selector={"app": "z0"}, labels={}), *services])
        assert {k for k in source._pod_reflectors} == {("ns", "app=a0"), ("ns", "app=a1")}
        assert source.health.pod_watches == 2
    finally:
        await source.stop()


async def test_namespace_narrows_the_watches_not_only_the_comparison(
    server: FakeApiServer,
) -> None:
    server.put("services", {"metadata": {"name": "a", "namespace": "monitoring"}, "spec": {}})
    server.put("services", {"metadata": {"name": "b", "namespace": "other"}, "spec": {}})
    source = KubernetesSource(configuration(server.url), namespaces=["monitoring", "kube-system"])
    await source.start()
    try:
        assert await source.wait_synced(5)
        assert set(source.snapshot().services) == {("monitoring", "a")}
        for request in server.requests:
            if request.resource != "nodes":
                assert request.namespace in ("monitoring", "kube-system"), request
        assert len(server.lists()) == 1 + 4 * 2
    finally:
        await source.stop()


# What a real kube-apiserver (--watch-cache=false) sent on a watch after an
# etcd compaction, recorded while writing tests/fixtures/capture.py.
PREVKV_NIL = (
    b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},'
    b'"status":"Failure","message":"Internal error occurred: etcd event received with '
    b'PrevKv=nil (key=\\"/registry/minions/node-0001\\", modRevision=350, type=PUT)",'
    b'"reason":"InternalError","code":500}}\n'
)


async def test_a_watch_that_keeps_failing_from_its_resource_version_relists(
    server: FakeApiServer, api: ApiClient, reflectors
) -> None:
    async def failing(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(PREVKV_NIL)
        return response

    server.put("nodes", node("a"))
    server.overrides[("nodes", "watch")] = failing
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    # Sampled together: a relist that succeeds clears last_error until the
    # still-failing watch sets it again, so reading it after the wait raced.
    await until(
        lambda: len(server.lists("nodes")) >= 2
        and "PrevKv=nil" in r.last_error
        and "500" in r.last_error
    )
    server.overrides.clear()
    await until(lambda: r.healthy and server.open_watches == 1)


# --- real answers (tests/fixtures/capture.py) ----------------------------------------

CAPTURED = Path(__file__).parent.parent / "fixtures" / "captured" / "kubernetes"


def test_the_real_410s_after_an_etcd_compaction_are_gone_errors() -> None:
    """kube-apiserver 1.36's answers to a continue token and a watch from a
    resourceVersion that etcd compacted away: both must mean "relist"."""
    gone = api_error(410, (CAPTURED / "status_410_continue.json").read_bytes())
    assert isinstance(gone, GoneError) and gone.reason == "Expired"
    reflector: Reflector[Any, Any] = Reflector(
        None,  # type: ignore[arg-type]
        "/api/v1/nodes",
        k8s_parse.NODES,
        SourceHealth(SOURCE_KUBERNETES),
    )
    with pytest.raises(GoneError, match="too old"):
        reflector._handle_event((CAPTURED / "watch_410.jsonl").read_bytes().strip())


def test_a_real_watch_stream_is_applied_event_by_event() -> None:
    reflector: Reflector[Any, Any] = Reflector(
        None,  # type: ignore[arg-type]
        "/api/v1/services",
        k8s_parse.SERVICES,
        SourceHealth(SOURCE_KUBERNETES),
    )
    kinds = []
    for line in (CAPTURED / "watch_services.jsonl").read_bytes().splitlines():
        kinds.append(json.loads(line)["type"])
        reflector._handle_event(line)
        if kinds[-1] == "MODIFIED":
            assert reflector.cache[("default", "capture")].labels == {"a": "2"}
    assert kinds[:3] == ["ADDED", "MODIFIED", "DELETED"] and "BOOKMARK" in kinds
    assert ("default", "capture") not in reflector.cache
    assert reflector.resource_version == json.loads(line)["object"]["metadata"]["resourceVersion"]


@pytest.mark.parametrize("resource", sorted(p.stem[5:] for p in CAPTURED.glob("list_*.json")))
def test_real_list_pages_decode_whole_with_their_continue_token(resource: str) -> None:
    parser = {
        "nodes": k8s_parse.NODES,
        "services": k8s_parse.SERVICES,
        "endpoints": k8s_parse.ENDPOINTS,
        "endpointslices": k8s_parse.ENDPOINTSLICES,
        "pods": k8s_parse.PODS,
        "daemonsets": k8s_parse.DAEMONSETS,
    }[resource]
    raw = json.loads((CAPTURED / f"list_{resource}.json").read_bytes())
    page = parser.parse_page((CAPTURED / f"list_{resource}.json").read_bytes())
    assert page.errors == [] and len(page.items) == len(raw["items"]) > 0
    assert page.metadata is not None
    assert page.metadata.resource_version == raw["metadata"]["resourceVersion"]
    assert page.metadata.continue_ == raw["metadata"].get("continue")


async def test_a_page_whose_head_names_another_page_lists_by_what_it_says(
    server: FakeApiServer, api: ApiClient, reflectors
) -> None:
    """A page whose head names one continue token and whose own metadata,
    later in the body, names another (duplicate keys: a hand-made or
    re-serialized answer). The parsed page wins: the page asked for ahead
    on the head's word is dropped, the one the page names is read, and the
    LIST completes without a restart."""
    pages = {None: (["a", "b"], "t1"), "t1": (["c"], None)}
    asked: list[str | None] = []

    async def lying(request: web.Request) -> web.Response:
        token = request.query.get("continue")
        asked.append(token)
        if token not in pages:
            return json_body(json.dumps(status(410, "Expired", "no such page")).encode(), 410)
        names, following = pages[token]
        items = [node(n) for n in names]
        head = {"resourceVersion": "5", **({"continue": "bogus"} if following else {})}
        real = {"resourceVersion": "5", **({"continue": following} if following else {})}
        body = (
            b'{"kind":"NodeList","apiVersion":"v1","metadata":'
            + json.dumps(head, separators=(",", ":")).encode()
            + b',"items":'
            + json.dumps(items, separators=(",", ":")).encode()
            + b',"metadata":'
            + json.dumps(real, separators=(",", ":")).encode()
            + b"}"
        )
        return json_body(body)

    server.overrides[("nodes", "list")] = lying
    r = node_reflector(api)
    reflectors.append(r)
    r.start()
    assert await r.wait_synced(5)
    assert sorted(r.cache) == ["a", "b", "c"] and r.lists_total == 1
    assert asked.count(None) == 1 and asked.count("t1") == 1
