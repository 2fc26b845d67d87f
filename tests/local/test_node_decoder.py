"""Node LIST pages parsed in the Node decoding worker (sources/node_decoder.py):
the very Nodes `k8s_parse.NODES` gives in this process, label sets shared,
hostile pages refused as source errors, and no worker left after a LIST.
The reflector's side (the next page asked for early) is in test_reflector.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from coverage_exporter.sources.errors import BodyTooLarge, SourceError
from coverage_exporter.sources.kubernetes import parse as k8s_parse
from coverage_exporter.sources.kubernetes.node_decoder import NodePageDecoder

CAPTURED = Path(__file__).parents[1] / "fixtures/captured/kubernetes"
REAL_PAGE = (CAPTURED / "list_nodes.json").read_bytes()
"""A page of a LIST of kube-apiserver v1.36.3 (limit=3)."""
LIMIT = 64 << 20


@pytest.fixture
def decoder() -> Iterator[NodePageDecoder]:
    pages = NodePageDecoder()
    yield pages
    pages.release()


def _page(nodes: list[dict], continue_: str | None = "next") -> bytes:
    meta = {"resourceVersion": "7", **({"continue": continue_} if continue_ else {})}
    body = {"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": nodes}
    return json.dumps(body, separators=(",", ":")).encode()


def _node(name: str, labels: dict[str, str], taints: list[dict] | None = None) -> dict:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "spec": {"taints": taints} if taints else {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": f"10.0.0.{len(name)}"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


@pytest.mark.parametrize("encoding", ["gzip", ""])
async def test_a_real_page_gives_the_nodes_parsed_here(
    decoder: NodePageDecoder, encoding: str
) -> None:
    body = gzip.compress(REAL_PAGE) if encoding else REAL_PAGE
    page, inflated = await decoder.decode(body, encoding, LIMIT)
    here = k8s_parse.NODES.parse_page(REAL_PAGE)
    assert inflated == len(REAL_PAGE)
    assert [(p.key, p.obj) for p in page.items] == [(p.key, p.obj) for p in here.items]
    assert len(page.items) == 3 and page.errors == here.errors == []
    assert page.metadata == here.metadata and page.metadata.continue_


async def test_equal_label_sets_and_taints_are_one_object(decoder: NodePageDecoder) -> None:
    zone_a = {"topology.kubernetes.io/zone": "a"}
    taint = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    first, _ = await decoder.decode(
        _page([_node("n1", zone_a, taint), _node("n2", zone_a, taint)]), "", LIMIT
    )
    # The next page of the same LIST: its labels are the same object too.
    second, _ = await decoder.decode(
        _page([_node("n3", zone_a, taint), _node("n4", {"topology.kubernetes.io/zone": "b"})]),
        "",
        LIMIT,
    )
    n1, n2 = (p.obj for p in first.items)
    n3, n4 = (p.obj for p in second.items)
    assert n1.labels == {"topology.kubernetes.io/zone": "a"}  # the hostname is the name's
    assert n1.labels is n2.labels is n3.labels and n4.labels is not n1.labels
    assert n1.taints == (("dedicated", "gpu", "NoSchedule"),) and n1.taints is n3.taints
    assert n4.taints == () and n1.name == "n1" and n1.addresses == ("10.0.0.2",) and n1.ready


async def test_a_bad_object_is_skipped_as_here(decoder: NodePageDecoder) -> None:
    body = _page([_node("ok", {}), {"metadata": {"name": "bad"}, "status": {"addresses": 3}}])
    page, _ = await decoder.decode(body, "", LIMIT)
    here = k8s_parse.NODES.parse_page(body)
    assert [p.key for p in page.items] == ["ok"]
    assert page.errors == here.errors and len(page.errors) == 1


async def test_hostile_pages_are_source_errors(decoder: NodePageDecoder) -> None:
    with pytest.raises(SourceError, match="bad list response"):
        await decoder.decode(b'{"kind":"NodeList","items":[', "", LIMIT)
    bomb = gzip.compress(b" " * (LIMIT + 1), 9)
    with pytest.raises(BodyTooLarge):
        await decoder.decode(bomb, "gzip", LIMIT)
    with pytest.raises(SourceError, match="undecodable gzip"):
        await decoder.decode(b"\x1f\x8b\x08\x00" + b"not deflate data" * 64, "gzip", LIMIT)
    with pytest.raises(SourceError, match="unsupported Content-Encoding"):
        await decoder.decode(REAL_PAGE, "br", LIMIT)
    # The worker goes on after each of them.
    page, _ = await decoder.decode(REAL_PAGE, "", LIMIT)
    assert len(page.items) == 3


async def test_release_ends_the_worker_and_the_next_page_starts_one(
    decoder: NodePageDecoder,
) -> None:
    await decoder.decode(REAL_PAGE, "", LIMIT)
    worker = decoder._slot._worker
    assert worker is not None and worker.process.poll() is None
    decoder.release()
    assert decoder._slot._worker is None and worker.process.poll() is not None
    page, _ = await decoder.decode(REAL_PAGE, "", LIMIT)
    assert len(page.items) == 3 and decoder._slot._worker is not worker


async def test_a_worker_that_dies_fails_its_page_and_the_next_starts_afresh(
    decoder: NodePageDecoder,
) -> None:
    await decoder.decode(REAL_PAGE, "", LIMIT)
    worker = decoder._slot._worker
    assert worker is not None
    # A page that takes the worker a while: killed while it is parsed.
    big = gzip.compress(_page([_node(f"n{i}", {"pool": str(i % 7)}) for i in range(60_000)]))
    parsing = asyncio.ensure_future(decoder.decode(big, "gzip", LIMIT))
    await asyncio.sleep(0.02)
    os.kill(worker.process.pid, signal.SIGKILL)
    with pytest.raises(SourceError, match="worker process ended"):
        await parsing
    page, _ = await decoder.decode(REAL_PAGE, "", LIMIT)
    assert len(page.items) == 3 and decoder._slot._worker is not worker
