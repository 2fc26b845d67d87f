"""The Node page decoding worker process (the collector's side is
`node_decoder.py`): each `NodePageRequest` is one page of a Node LIST as
it came, answered with a `NodePage` (or a `worker_child.Failed`).

Run as `python -m coverage_exporter.sources.kubernetes.node_worker --fd
N`, over `worker_child.serve`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Generic, TypeVar

import msgspec

from coverage_exporter.model.objects import Taint
from coverage_exporter.sources import worker_child
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes import parse as k8s_parse

V = TypeVar("V")


class NodePageRequest(msgspec.Struct, frozen=True, tag=True):
    """One page of a Node LIST to decode, as it came (gzip, mostly)."""

    body: bytes
    encoding: str
    limit: int


class WireNode(msgspec.Struct, array_like=True, gc=False):
    """A model.objects.Node as it crosses: its label set and taints are
    indices into the worker's tables of them (NodePage), so that Nodes
    with equal labels share one dict in the collector process too."""

    name: str
    addresses: tuple[str, ...]
    ready: bool
    labels: int
    taints: int
    unschedulable: bool


class NodePage(msgspec.Struct, frozen=True, tag=True):
    label_sets_start: int
    label_sets: list[Mapping[str, str]]
    """The worker's label sets from label_sets_start on, new in this page."""
    taint_sets_start: int
    taint_sets: list[tuple[Taint, ...]]
    nodes: list[WireNode]
    errors: list[str]
    """One message per object that did not parse (see ObjectParser)."""
    resource_version: str | None
    continue_: str | None
    body_bytes: int
    """Bytes after decompression."""


class _Sets(Generic[V]):
    """Label sets (or taint lists) by identity: k8s_parse hands out one
    shared object per distinct set, and each gets an index the collector's
    mirror follows. The objects are held here, so their ids stay theirs.
    The Node worker lives for one LIST (node_decoder), which bounds it."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}
        self.held: list[V] = []

    def ref(self, value: V, new: list[V]) -> int:
        found = self.index.get(id(value))
        if found is None:
            found = self.index[id(value)] = len(self.held)
            self.held.append(value)
            new.append(value)
        return found


_LABEL_SETS: _Sets[Mapping[str, str]] = _Sets()
_TAINT_SETS: _Sets[tuple[Taint, ...]] = _Sets()


def decode_node_page(body: bytes, encoding: str, limit: int) -> NodePage:
    """Inflate and parse one Node LIST page with the very parser the
    collector process uses for watch events (k8s_parse.NODES)."""
    data = worker_child.inflated_whole(body, encoding, limit)
    del body
    page = k8s_parse.NODES.parse_page(data)
    labels_start, taints_start = len(_LABEL_SETS.held), len(_TAINT_SETS.held)
    new_labels: list[Mapping[str, str]] = []
    new_taints: list[tuple[Taint, ...]] = []
    nodes = []
    for parsed in page.items:
        node = parsed.obj
        nodes.append(
            WireNode(
                node.name,
                node.addresses,
                node.ready,
                _LABEL_SETS.ref(node.labels, new_labels),
                _TAINT_SETS.ref(node.taints, new_taints),
                node.unschedulable,
            )
        )
    meta = page.metadata
    return NodePage(
        labels_start,
        new_labels,
        taints_start,
        new_taints,
        nodes,
        page.errors,
        meta.resource_version if meta else None,
        meta.continue_ if meta else None,
        len(data),
    )


def _decode(request: NodePageRequest) -> NodePage:
    return decode_node_page(request.body, request.encoding, request.limit)


def main(argv: list[str] | None = None) -> int:
    return worker_child.serve(
        argv,
        "Node page decoding worker",
        NodePageRequest,
        _decode,
        (SourceError, k8s_parse.ParseError),
    )


if __name__ == "__main__":
    sys.exit(main())
