"""Decoding the pages of a Node LIST in a worker process.

At 100k nodes the Node LIST is 200 pages and ~1.5 GB of JSON: a real Node
carries its image list, ~15 KB of it. Inflating and decoding those pages
in the collector process took one core for 3.7-5 s and was the critical
path of the first cycle, while the target decoder's worker held the
other core. Here each page is handed over still compressed to a worker
process of its own (`node_worker.py`), which inflates it and parses it
with the very parser the collector uses for watch events
(k8s_parse.NODES). It sends back slim Nodes whose label sets and taints
are indices into tables mirrored here (NodeMirror), so Nodes with equal
labels share one dict here as they do when parsed here.
Figures: bench/analysis.md.

The worker lives for one LIST: watch events are small and parsed in this
process, and a relist (410 Gone) is rare, so between LISTs it would only
hold memory. A worker that dies fails the page, and with it the LIST,
which the reflector retries.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import msgspec

from coverage_exporter.model.objects import Node, Taint
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes import node_worker
from coverage_exporter.sources.kubernetes.node_worker import NodePage, NodePageRequest
from coverage_exporter.sources.kubernetes.parse import NODES, ListMeta, ObjectParser, Page, Parsed
from coverage_exporter.sources.worker_child import Failed
from coverage_exporter.sources.worker_process import (
    DEADLINE_SECONDS,
    Mirror,
    WorkerProcess,
    WorkerSlot,
)
from coverage_exporter.sources.worker_process import answer as worker_answer


class NodeMirror(Mirror):
    """The worker's label sets and taints, interned: Nodes with equal
    labels share one dict here as they do when parsed here."""

    def __init__(self) -> None:
        super().__init__()
        self.label_sets: list[Mapping[str, str]] = []
        self.taint_sets: list[tuple[Taint, ...]] = []

    def follow(self, answer: Any) -> None:
        if isinstance(answer, NodePage):
            intern = sys.intern
            self._extend(
                self.label_sets,
                answer.label_sets_start,
                ({intern(k): intern(v) for k, v in s.items()} for s in answer.label_sets),
            )
            self._extend(
                self.taint_sets,
                answer.taint_sets_start,
                (tuple(_taint(t) for t in ts) for ts in answer.taint_sets),
            )


def _taint(taint: Taint) -> Taint:
    key, value, effect = taint
    return sys.intern(key), sys.intern(value), sys.intern(effect)


_ANSWERS = msgspec.msgpack.Decoder(NodePage | Failed)


def _start_worker() -> WorkerProcess:
    return WorkerProcess(node_worker.__name__, _ANSWERS, NodeMirror())


class NodePageDecoder:
    """Node LIST pages parsed in a worker process, started by the first
    page of a LIST and stopped by `release` at its end."""

    parser: ObjectParser[str, Node] = NODES
    """What the pages are parsed with (the reflector's parser must be it)."""

    def __init__(self, deadline_seconds: float = DEADLINE_SECONDS) -> None:
        self._slot = WorkerSlot(_start_worker, deadline_seconds)

    async def decode(
        self, body: bytes | bytearray, encoding: str, limit: int
    ) -> tuple[Page[str, Node], int]:
        """The page as `NODES.parse_page` gives it, and its size once
        inflated. Raises SourceError (BodyTooLarge past `limit`)."""
        worker, _ = self._slot.get()
        mirror = worker.mirror
        assert isinstance(mirror, NodeMirror)
        # A bytearray is encoded as bytes, as is: no copy while it waits.
        # msgspec encodes a bytearray as bytes, but types the field as bytes.
        request = NodePageRequest(body, encoding, limit)  # type: ignore[arg-type]
        answer = await worker_answer(worker, request, self._slot.deadline, "node decoding worker")
        if not isinstance(answer, NodePage) or mirror.broken:
            self._slot.stop()
            raise SourceError("node decoding worker out of step; restarted")
        labels, taints = mirror.label_sets, mirror.taint_sets
        intern = sys.intern
        items: list[Parsed[str, Node]] = []
        try:
            for wire in answer.nodes:
                name = intern(wire.name)
                node = Node(
                    name,
                    tuple(map(intern, wire.addresses)),
                    wire.ready,
                    labels[wire.labels],
                    taints[wire.taints],
                    wire.unschedulable,
                )
                items.append(Parsed(name, node, None))
        except IndexError:
            self._slot.stop()
            raise SourceError("node decoding worker out of step; restarted") from None
        page = Page(items, ListMeta(answer.resource_version, answer.continue_), answer.errors)
        return page, answer.body_bytes

    def warm(self) -> None:
        """Start the worker now, so that its start-up (~0.15 s) overlaps the
        first page's download rather than following it."""
        self._slot.get()

    def release(self) -> None:
        """The LIST is over: the worker goes, with its memory."""
        self._slot.stop()
