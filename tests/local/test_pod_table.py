"""Pods in the apiserver's Table form (issue #12): the parser on the real
kube-apiserver v1.36 captures, hostile tables, the fallback to full objects,
the DaemonSet owner inference, and the bench fake's Table against the real one."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from coverage_exporter import logs
from coverage_exporter.health import SOURCE_KUBERNETES, SourceHealth
from coverage_exporter.model.coverage import expected_targets
from coverage_exporter.model.objects import ClusterSnapshot, DaemonSet, Pod, Service
from coverage_exporter.model.owners import daemonset_prefixes, infer_daemonset_owners
from coverage_exporter.sources.kubernetes import parse as k8s_parse
from coverage_exporter.sources.kubernetes import pod_table
from coverage_exporter.sources.kubernetes.reflector import Reflector
from coverage_exporter.sources.kubernetes.source import KubernetesSource
from fakes import pod_table as fake_table
from fakes.apiserver import FakeApiServer
from tests.local.test_reflector import _pod, _svc, configuration, until

FORMS = Path(__file__).parent.parent / "fixtures/captured/kubernetes/pod_forms"
REPO = Path(__file__).parent.parent.parent
NS = "pod-forms-capture"


def _reflector(parser: Any) -> Reflector[Any, Any]:
    return Reflector(None, "/api/v1/pods", parser, SourceHealth(SOURCE_KUBERNETES))  # type: ignore[arg-type]


def test_the_real_table_page_decodes_to_pods() -> None:
    body = (FORMS / "list_pods_table.json").read_bytes()
    raw = json.loads(body)
    parser = pod_table.PodTableParser("monitoring")
    page = parser.parse_page(body)
    assert page.errors == [] and len(page.items) == len(raw["rows"]) == 3
    first = page.items[0]
    assert first.key == ("monitoring", "node-exporter-00209d9201")
    assert first.obj == Pod("monitoring", "node-exporter-00209d9201", "node-0420", "10.20.5.70")
    assert page.metadata is not None
    assert page.metadata.resource_version == raw["metadata"]["resourceVersion"]
    assert page.metadata.continue_ == raw["metadata"]["continue"]
    assert parser.columns == pod_table.PodColumns(name=0, status=2, ip=5, node=6)


def test_a_real_table_watch_stream_is_applied_event_by_event() -> None:
    parser = pod_table.PodTableParser(NS)
    reflector = _reflector(parser)
    seen: dict[str, list[Pod]] = {}
    lines = (FORMS / "watch_pods_table.jsonl").read_bytes().splitlines()
    for line in lines:
        reflector._handle_event(line)
        for (_, name), pod in reflector.cache.items():
            seen.setdefault(name, []).append(pod)
    moved = seen["node-exporter-moved"]
    assert moved[0].ip is None and moved[0].node_name == "node-0002"  # Pending, <none> IP
    assert any(p.ip == "10.20.1.1" and not p.terminating for p in moved)
    assert moved[-1].terminating  # Status Terminating before its DELETED
    job = seen["capture-job-pod"]
    assert job[-1].phase == "Succeeded"  # the row's Completed condition
    assert reflector.cache == {}  # both DELETED, named by their Name cell
    assert reflector.resource_version == "6632"  # the bookmarks' Table metadata


def test_the_initial_events_end_bookmark_is_a_bookmark_not_a_pod() -> None:
    reflector = _reflector(pod_table.PodTableParser(NS))
    for line in (FORMS / "watch_pods_table_initial.jsonl").read_bytes().splitlines():
        reflector._handle_event(line)
    assert list(reflector.cache) == [(NS, "node-exporter-steady")]
    assert reflector.resource_version == "6633"


def _table(rows: list[Any], columns: list[dict[str, Any]] | None = None, **kw: Any) -> bytes:
    cols = json.loads((FORMS / "list_pods_table.json").read_bytes())["columnDefinitions"]
    doc = {
        "kind": "Table",
        "metadata": {"resourceVersion": "7"},
        "columnDefinitions": cols if columns is None else columns,
        "rows": rows,
        **kw,
    }
    return json.dumps(doc).encode()


def _row(name: Any, ip: Any = "10.0.0.1", node: Any = "n1", status: str = "Running") -> Any:
    return {"cells": [name, "1/1", status, "0", "1m", ip, node, "<none>", "<none>"]}


def test_bad_rows_are_skipped_with_an_error_not_the_page() -> None:
    rows = [
        _row("good"),
        {"cells": ["short", "1/1"]},
        _row(None),
        _row({"nested": ["x"]}),
        _row("bad-ip", ip=7),
        "not a row",
        _row("also-good", ip="<none>", node="<none>"),
    ]
    page = pod_table.PodTableParser("ns").parse_page(_table(rows))
    assert [p.obj.name for p in page.items] == ["good", "also-good"]
    assert page.items[1].obj.ip is None and page.items[1].obj.node_name is None
    assert len(page.errors) == 5 and all(isinstance(e, str) for e in page.errors)


def test_columns_are_found_by_name_not_position() -> None:
    cols = json.loads((FORMS / "list_pods_table.json").read_bytes())["columnDefinitions"]
    rows = [{"cells": list(reversed(_row("p", ip="10.1.1.1", node="n9")["cells"]))}]
    page = pod_table.PodTableParser("ns").parse_page(_table(rows, list(reversed(cols))))
    assert page.items[0].obj == Pod("ns", "p", "n9", "10.1.1.1")


@pytest.mark.parametrize(
    "body",
    [
        (FORMS.parent / "list_pods.json").read_bytes(),  # a server ignoring as=Table
        _table([_row("p")], columns=[{"name": "Name"}, {"name": "Status"}]),  # no IP/Node
        _table([_row("p")], columns=[]),
        b'{"kind":"Table","rows":[]}',
    ],
)
def test_a_page_not_in_table_form_is_form_unsupported_never_no_pods(body: bytes) -> None:
    with pytest.raises(k8s_parse.FormUnsupported):
        pod_table.PodTableParser("ns").parse_page(body)


def test_hostile_watch_events_fail_cleanly() -> None:
    parser = pod_table.PodTableParser("ns")
    parser.parse_page(_table([]))  # columns known, as after the LIST
    reflector = _reflector(parser)
    two_rows = _table([_row("a"), _row("b")], columns=[])
    with pytest.raises(k8s_parse.ParseError):
        parser.parse(two_rows)
    reflector._handle_event(json.dumps({"type": "ADDED", "object": json.loads(two_rows)}).encode())
    assert reflector.cache == {}
    pod_event = json.dumps({"type": "DELETED", "object": {"kind": "Pod", "metadata": {}}})
    with pytest.raises(k8s_parse.FormUnsupported):
        reflector._handle_event(pod_event.encode())
    for junk in (b"[]", b"{}", b'{"rows":[{"cells":[1]}]}', b'{"kind":"Table","rows":"x"}'):
        assert parser.identify(junk)[0] is None


async def test_406_falls_back_to_full_objects_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeApiServer()
    server.table_status = 406
    await server.start()
    ne = {"app": "ne"}
    server.put("services", _svc("mon", "ne", ne))
    server.put("pods", _pod("mon", "ne-abcde", "n1", ne))
    source = KubernetesSource(configuration(server.url), watch_timeout_seconds=60)
    try:
        await source.start()
        await source.wait_synced(5)
        caplog.set_level(logging.INFO, "coverage_exporter.kubernetes")
        source.set_pod_scope([Service("mon", "ne", ne)])
        await source.ensure_pods_synced(5)
        assert [p.name for p in source.snapshot().pods[("mon", "ne")]] == ["ne-abcde"]
        fallbacks = [r for r in caplog.records if "falling back" in r.getMessage()]
        assert len(fallbacks) == 1 and "406" in logs.LogfmtFormatter().format(fallbacks[0])
        pod_lists = server.lists("pods")
        assert "as=Table" in (pod_lists[0].accept or "")
        assert pod_lists[-1].accept == "application/json"
        assert "includeObject" not in pod_lists[-1].params
    finally:
        await source.stop()
        await server.stop()


async def test_a_failing_table_scope_is_unsynced_not_empty() -> None:
    server = FakeApiServer()
    server.table_status = 500  # not a form problem: no fallback, an error
    await server.start()
    ne = {"app": "ne"}
    server.put("pods", _pod("mon", "ne-abcde", "n1", ne))
    source = KubernetesSource(configuration(server.url), watch_timeout_seconds=60)
    try:
        await source.start()
        source.set_pod_scope([Service("mon", "ne", ne)])
        with pytest.raises(Exception, match="pods not listed"):
            await source.ensure_pods_synced(2)
        assert ("mon", "ne") not in source.snapshot().pods
    finally:
        await source.stop()
        await server.stop()


async def test_table_watch_sees_terminating_and_deleted_pods() -> None:
    server = FakeApiServer()
    await server.start()
    ne = {"app": "ne"}
    server.put(
        "daemonsets",
        {
            "metadata": {"namespace": "mon", "name": "ne"},
            "spec": {"template": {"metadata": {"labels": ne}}},
            "status": {"desiredNumberScheduled": 2},
        },
    )
    server.put("pods", _pod("mon", "ne-abcde", "n1", ne))
    server.put("pods", _pod("mon", "ne-fghij", "n2", ne))
    source = KubernetesSource(configuration(server.url), watch_timeout_seconds=60)
    try:
        await source.start()
        await source.wait_synced(5)
        source.set_pod_scope([Service("mon", "ne", ne)])
        await source.ensure_pods_synced(5)
        pods = source.snapshot().pods[("mon", "ne")]
        assert {(p.name, p.owner_kind, p.owner_name) for p in pods} == {
            ("ne-abcde", "DaemonSet", "ne"),
            ("ne-fghij", "DaemonSet", "ne"),
        }
        assert all(r.params.get("includeObject") == "None" for r in server.lists("pods"))
        await until(lambda: any(w.resource == "pods" for w in server.watches()))
        await until(lambda: server.open_watches == 6)
        dying = _pod("mon", "ne-abcde", "n1", ne)
        dying["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
        server.put("pods", dying)
        await until(
            lambda: any(p.terminating for p in source.snapshot().pods[("mon", "ne")])
        )
        server.delete("pods", "ne-abcde", "mon")
        await until(
            lambda: [p.name for p in source.snapshot().pods[("mon", "ne")]] == ["ne-fghij"]
        )
    finally:
        await source.stop()
        await server.stop()


# --- owner inference -----------------------------------------------------------------


def _ds(name: str, labels: dict[str, str] | None, ns: str = "mon") -> DaemonSet:
    return DaemonSet(ns, name, 3, template_labels=labels)


def _pods(*names: str, ns: str = "mon") -> list[Pod]:
    return [Pod(ns, n, f"node-{i}", f"10.0.0.{i}") for i, n in enumerate(names)]


def _owners(pods: list[Pod], daemonsets: list[DaemonSet], selector: dict[str, str]) -> list[Any]:
    prefixes = daemonset_prefixes({(d.namespace, d.name): d for d in daemonsets})
    return [p.owner_name for p in infer_daemonset_owners(pods, "mon", selector, prefixes)]


def test_owner_is_inferred_from_the_generated_name_and_the_template_labels() -> None:
    ne = {"app": "ne"}
    ds = [_ds("ne", {**ne, "extra": "x"}), _ds("ne-win", ne)]
    pods = _pods("ne-b2c4d", "ne-win-x9z7q", "ne-toolong", "ne-abc", "ne-ABCDE", "other-b2c4d")
    assert _owners(pods, ds, ne) == ["ne", "ne-win", None, None, None, None]
    # Template labels that the Service's selector does not select: no owner.
    assert _owners(_pods("ne-b2c4d"), [_ds("ne", {"app": "other"})], ne) == [None]
    assert _owners(_pods("ne-b2c4d"), [_ds("ne", None)], ne) == [None]
    # Another namespace's DaemonSet owns nothing here.
    assert _owners(_pods("ne-b2c4d"), [_ds("ne", ne, ns="elsewhere")], ne) == [None]


def test_long_names_are_cut_to_58_characters_like_the_apiserver_does() -> None:
    long_name = "a" * 70
    ne = {"app": "ne"}
    assert _owners(_pods("a" * 58 + "xyz12"), [_ds(long_name, ne)], ne) == [long_name]
    # Two DaemonSets equal on 58 characters: ambiguous, left unowned.
    twins = [_ds(long_name, ne), _ds(long_name + "b", ne)]
    assert _owners(_pods("a" * 58 + "xyz12"), twins, ne) == [None]


def test_real_owners_are_kept_and_the_model_sees_a_daemonset() -> None:
    ne = {"app": "ne"}
    real = Pod("mon", "ne-b2c4d", "n1", "10.0.0.1", owner_kind="ReplicaSet", owner_name="rs")
    prefixes = daemonset_prefixes({("mon", "ne"): _ds("ne", ne)})
    assert infer_daemonset_owners([real], "mon", ne, prefixes) == (real,)
    pods = infer_daemonset_owners(_pods("ne-b2c4d", "ne-f5g6h"), "mon", ne, prefixes)
    snap = ClusterSnapshot(
        pods={("mon", "ne"): pods}, daemonsets={("mon", "ne"): _ds("ne", ne)}
    )
    expected = expected_targets(Service("mon", "ne", ne), snap, None)
    assert expected is not None and expected.source == "daemonset"
    assert set(expected.keys) == {"node-0", "node-1"} and expected.count == 3


def test_daemonset_template_labels_are_parsed() -> None:
    raw = json.loads((FORMS.parent / "list_daemonsets.json").read_bytes())
    page = k8s_parse.DAEMONSETS.parse_page((FORMS.parent / "list_daemonsets.json").read_bytes())
    for parsed, item in zip(page.items, raw["items"], strict=True):
        assert parsed.obj.template_labels == item["spec"]["template"]["metadata"]["labels"]


# --- the bench fake's Table against the real one ----------------------------------------


def test_the_bench_fakes_table_page_is_shaped_like_the_real_one() -> None:
    real_body = (FORMS / "list_pods_table.json").read_bytes()
    real = json.loads(real_body)
    pod = json.loads((FORMS.parent / "list_pods.json").read_bytes())["items"][0]
    fake_body = (
        fake_table.head("6617", real["metadata"]["continue"])
        + fake_table.row_bytes(json.dumps(pod).encode())
        + b"]}"
    )
    fake = json.loads(fake_body)
    assert fake.keys() == real.keys() and fake["metadata"].keys() == real["metadata"].keys()
    assert fake["columnDefinitions"] == real["columnDefinitions"]
    # Byte for byte up to the rows: same key order, same Go escaping.
    assert real_body.startswith(fake_body[: fake_body.index(b'"rows":[') + 8])
    assert fake["rows"][0].keys() == real["rows"][0].keys()
    assert len(fake["rows"][0]["cells"]) == len(real["rows"][0]["cells"])
    parsed = pod_table.PodTableParser(pod["metadata"]["namespace"]).parse_page(fake_body)
    assert parsed.items[0].obj.node_name == pod["spec"]["nodeName"]
    assert parsed.items[0].obj.ip == pod["status"]["podIP"]
    # Watch framing: the real stream's bookmark, byte for byte.
    real_bookmark = (FORMS / "watch_pods_table.jsonl").read_bytes().splitlines()[-1]
    assert fake_table.event("BOOKMARK", {}, "6632", first=False).rstrip(b"\n") == real_bookmark
    real_first = json.loads((FORMS / "watch_pods_table.jsonl").read_bytes().splitlines()[0])
    fake_first = json.loads(fake_table.event("ADDED", pod, "1", first=True))
    assert fake_first.keys() == real_first.keys()
    assert fake_first["object"].keys() == real_first["object"].keys()
    assert fake_first["object"]["columnDefinitions"] == real_first["object"]["columnDefinitions"]
