"""Prometheus's /api/v1/targets answer -> the slim Targets of model.objects.

Only msgspec and the model: this module is what the target decoding worker
process (sources.target_decoder) imports, so it stays free of aiohttp and
the rest of the source.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from coverage_exporter import untrusted
from coverage_exporter.logs import fields
from coverage_exporter.model.objects import (
    ROLE_ENDPOINTS,
    ROLE_ENDPOINTSLICE,
    ROLE_UNKNOWN,
    Target,
)
from coverage_exporter.sources.errors import DEFAULT_LIMITS, BodyTooLarge, SourceError

log = logging.getLogger("coverage_exporter.sources.prometheus")

ROLE_POD = "pod"
ROLE_NODE = "node"
ROLE_SERVICE = "service"
ROLE_INGRESS = "ingress"
ROLE_OTHER = "other"


def _label(name: str) -> str | None:
    return msgspec.field(name=name, default=None)


class _DiscoveredLabels(msgspec.Struct, gc=False):
    address: str | None = _label("__address__")
    namespace: str | None = _label("__meta_kubernetes_namespace")
    service: str | None = _label("__meta_kubernetes_service_name")
    endpoints_name: str | None = _label("__meta_kubernetes_endpoints_name")
    endpointslice_name: str | None = _label("__meta_kubernetes_endpointslice_name")
    pod_name: str | None = _label("__meta_kubernetes_pod_name")
    node_name: str | None = _label("__meta_kubernetes_node_name")
    ingress_name: str | None = _label("__meta_kubernetes_ingress_name")
    endpoint_node_name: str | None = _label("__meta_kubernetes_endpoint_node_name")
    slice_node_name: str | None = _label("__meta_kubernetes_endpointslice_endpoint_node_name")
    pod_node_name: str | None = _label("__meta_kubernetes_pod_node_name")
    endpoint_target_kind: str | None = _label("__meta_kubernetes_endpoint_address_target_kind")
    endpoint_target_name: str | None = _label("__meta_kubernetes_endpoint_address_target_name")
    slice_target_kind: str | None = _label("__meta_kubernetes_endpointslice_address_target_kind")
    slice_target_name: str | None = _label("__meta_kubernetes_endpointslice_address_target_name")


class _FinalLabels(msgspec.Struct, gc=False):
    """The target's labels after relabeling: all that vmagent started with
    -promscrape.dropOriginalLabels sends. The Operator's and VictoriaMetrics'
    generated jobs put the Service's identity in these."""

    instance: str | None = None
    namespace: str | None = None
    service: str | None = None
    node: str | None = None
    pod: str | None = None


class _ActiveTarget(msgspec.Struct, gc=False):
    discovered: _DiscoveredLabels | None = msgspec.field(name="discoveredLabels", default=None)
    labels: _FinalLabels | None = None
    scrape_pool: str | None = msgspec.field(name="scrapePool", default=None)
    health: str | None = None


class _TargetsData(msgspec.Struct, gc=False):
    # Required, but null allowed: Go writes a nil slice as null, and a
    # response without the key at all is broken, not empty.
    active: list[_ActiveTarget] | None = msgspec.field(name="activeTargets")


class _TargetsResponse(msgspec.Struct, gc=False):
    status: str
    data: _TargetsData | None = None
    error_type: str = msgspec.field(name="errorType", default="")
    error: str = ""
    warnings: list[str] | None = None
    """Thanos Query: set when a store did not answer (a partial answer)."""


_TARGETS_DECODER = untrusted.Decoder(_TargetsResponse)


# --- parsing -----------------------------------------------------------------


@dataclass(slots=True)
class PoolTargets:
    targets: Sequence[Target] = ()
    """A tuple once decoded: a tuple of untracked Targets is itself
    untracked by the garbage collector, where a list of 200k would be
    walked, element by element, by every full collection."""
    active: int = 0
    """Every active target Prometheus reported for the pool, kept or not:
    the number `prometheus_target_scrape_pool_targets` is compared with."""
    keep: object = None
    """What keeps `targets` shared with equal answers alive (a
    target_decoder.SharedTargets); None when decoded in this process."""
    unattributed: int = 0
    """Active targets that came without discovered labels and whose final
    labels name no namespace and Service (vmagent with
    -promscrape.dropOriginalLabels, a job that does not copy them): no
    Service can be told for them, so the pool cannot be judged."""


def _intern(value: str | None) -> str | None:
    # The same pool, namespace, node and health strings repeat on every
    # target; without interning each decoded target holds its own copies.
    return None if value is None else sys.intern(value)


def address_host(address: str) -> str:
    """Host part of `host:port`, `[v6]:port`, `[v6]`, a bare host or a bare v6."""
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address


def discovery_role(labels: _DiscoveredLabels) -> str:
    # Order matters: endpoints(lice) targets also carry pod and node labels
    # (pod-backed addresses, attach_metadata), pod targets carry node labels.
    if labels.endpointslice_name is not None:
        return ROLE_ENDPOINTSLICE
    if labels.endpoints_name is not None:
        return ROLE_ENDPOINTS
    if labels.pod_name is not None:
        return ROLE_POD
    if labels.node_name is not None:
        return ROLE_NODE
    if labels.service is not None:
        return ROLE_SERVICE
    if labels.ingress_name is not None:
        return ROLE_INGRESS
    return ROLE_OTHER


def _to_target(
    labels: _DiscoveredLabels, address: str, health: str | None, pool: str
) -> Target | None:
    """None for targets that cannot be matched to a Service."""
    # Coverage is computed per Service, so a target without namespace and
    # Service name (pod, node, static roles) can never count for anything:
    # dropping it here keeps 100k-node clusters' kubelet/cAdvisor pools of
    # role node out of memory.
    namespace, service = labels.namespace, labels.service
    if not namespace or not service:
        return None
    # This runs once per target (a million at 100k nodes with HA replicas):
    # positional arguments to the Struct's C __init__, no helper calls for
    # the common case. Every string is interned: node names and addresses
    # repeat across pools and replicas, and are the very objects the Nodes
    # hold.
    intern = sys.intern
    node_name = labels.endpoint_node_name or labels.slice_node_name or labels.pod_node_name
    kind = labels.endpoint_target_kind or labels.slice_target_kind
    name = labels.endpoint_target_name or labels.slice_target_name
    pod = labels.pod_name
    if labels.endpointslice_name is not None:
        role = ROLE_ENDPOINTSLICE
    elif labels.endpoints_name is not None:
        role = ROLE_ENDPOINTS
    else:
        role = discovery_role(labels)
    colon = address.find(":")
    host = (
        address[:colon] if colon > 0 and address.find(":", colon + 1) < 0 else address_host(address)
    )
    return Target(
        pool,
        intern(health) if health else "unknown",
        role,
        intern(namespace),
        intern(service),
        None if node_name is None else intern(node_name),
        None if kind is None else intern(kind),
        None if name is None else intern(name),
        None if pod is None else intern(pod),
        intern(host),
    )


def _status_error(status: str, error_type: str, error: str) -> str:
    return untrusted.printable(f"status {status!r}: {error_type}: {error}")


def _check_envelope(response: _TargetsResponse) -> list[_ActiveTarget]:
    if response.status != "success":
        raise SourceError(_status_error(response.status, response.error_type, response.error))
    if response.warnings:
        # Thanos Query with a store missing: the targets of that store are
        # simply absent, which would read as lost targets.
        raise SourceError(f"partial answer: {'; '.join(response.warnings)[:300]}")
    if response.data is None:
        raise SourceError("status 'success' without data")
    return response.data.active or []


def _from_final_labels(labels: _FinalLabels, health: str | None, pool: str) -> Target | None:
    """A target known only by its final labels (vmagent without original
    labels): matched by namespace, service, node or pod and the instance's
    host; its discovery role cannot be told."""
    if not labels.namespace or not labels.service or not labels.instance:
        return None
    return Target(
        scrape_pool=pool,
        health=sys.intern(health or "unknown"),
        role=ROLE_UNKNOWN,
        namespace=_intern(labels.namespace),
        service=_intern(labels.service),
        node_name=_intern(labels.node),
        target_kind=None,
        target_name=None,
        pod_name=_intern(labels.pod),
        address_host=sys.intern(address_host(labels.instance)),
    )


_LIST_DECODER = untrusted.Decoder(list[_ActiveTarget])
STREAM_PIECE_BYTES = 1 << 20
"""Small enough that one decode holds the GIL for ~1 ms (the event loop
serving /metrics waits for it), large enough that the thread hand-offs
cost nothing (~1000 per GB)."""
_ARRAY_START = b'"activeTargets":['
# Prometheus writes every target as {"discoveredLabels":...,"labels":...}.
# An unescaped quote cannot occur inside a JSON string, so this byte
# sequence only ever stands between two targets of the array.
_TARGET_SEPARATOR = b',{"discoveredLabels":'


class TargetStream:
    """Decodes an /api/v1/targets answer while it arrives.

    A pool of 100k targets is ~500 MB of JSON; holding it whole, four pools
    at a time, was most of the exporter's memory at scale. The array is cut
    between targets into pieces of about `piece_bytes`, each decoded on its
    own and dropped, so memory stays at one piece per request. The envelope
    (status, error, the last targets) is decoded whole at the end; an answer
    whose layout does not split this way (pretty-printed, other key order)
    is simply buffered whole, as before.
    """

    # What a piece of the array and the whole answer decode into: the
    # Thanos Query stream (sources.prometheus.thanos) reads more of each target.
    _list_decoder: untrusted.Decoder = _LIST_DECODER
    _envelope_decoder: untrusted.Decoder = _TARGETS_DECODER

    def __init__(
        self,
        only_pool: str | None = None,
        piece_bytes: int = STREAM_PIECE_BYTES,
        max_buffered: int = DEFAULT_LIMITS.max_body_bytes,
    ) -> None:
        self._only_pool = only_pool
        self._max_buffered = max_buffered
        self._piece_bytes = piece_bytes
        self._buffer = bytearray()
        self._head: bytes | None = None
        """The envelope up to and including '[', once seen."""
        self._splitting = True
        self.pools: dict[str, PoolTargets] = {}
        self._kept: dict[str, list[Target]] = {}
        """Each pool's Targets while the answer streams in."""
        if only_pool is not None:
            self._pool(sys.intern(only_pool))
        self._total = self._malformed = self._foreign = 0
        self.final_labels_only = 0
        """Targets matched by their final labels (no discoveredLabels)."""

    @property
    def buffered(self) -> int:
        """Bytes held but not decoded yet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> None:
        """Take the next bytes of the answer. A bytearray is adopted, not
        copied, when nothing is buffered: the caller must not reuse it."""
        if not self._buffer and isinstance(data, bytearray):
            self._buffer = data
        else:
            self._buffer += data
        if len(self._buffer) > self._max_buffered:
            # Nothing to cut between targets (no array, or an answer that
            # does not split): it would have to be held whole. Let go of it
            # now, not when the error and its traceback go.
            self._buffer = bytearray()
            raise BodyTooLarge(self._max_buffered)
        if self._head is None:
            at = self._buffer.find(_ARRAY_START)
            if at < 0:
                return
            # Keep the '[' in the buffer: every piece is decoded as an array
            # straight from it (see _decode_piece).
            cut = at + len(_ARRAY_START)
            self._head = bytes(self._buffer[: cut - 1])
            del self._buffer[: cut - 1]
        if self._splitting and len(self._buffer) >= self._piece_bytes:
            self._decode_piece()

    def _decode_piece(self) -> None:
        # The buffer is '[' + targets + the start of the next one. The comma
        # before the last separator is turned into ']' for the decode and
        # then into the next piece's '[', so no piece is ever copied: with a
        # dozen pools streaming at once, the copies were most of the
        # exporter's peak memory.
        buffer = self._buffer
        cut = buffer.rfind(_TARGET_SEPARATOR)
        if cut <= 0:
            return
        buffer[cut] = 0x5D  # ']'
        try:
            with memoryview(buffer) as view:
                targets = self._list_decoder.decode(view[: cut + 1])
        except msgspec.DecodeError:
            # Not a plain run of targets (the array ended inside the piece):
            # keep the rest whole; finish() decodes it with the envelope.
            buffer[cut] = 0x2C  # ','
            self._splitting = False
            return
        del buffer[:cut]
        buffer[0] = 0x5B  # '['
        self._add(targets)

    def finish(self) -> dict[str, PoolTargets]:
        """The targets by pool; SourceError for a broken or failed answer."""
        document, self._buffer = self._buffer, bytearray()
        if self._head is not None:
            # In place, not head + buffer: that held an answer held whole
            # twice while it was decoded.
            document[:0] = self._head
        try:
            response = self._envelope_decoder.decode(document)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise SourceError(f"undecodable response: {exc}") from None
        finally:
            del document  # the answer goes before its targets are sorted
        self._add(self._envelope(response))
        _report_skipped(self._total, self._malformed, self._foreign, self._only_pool)
        for name, result in self.pools.items():
            result.targets = tuple(self._kept[name])
        self._kept.clear()
        return self.pools

    def _envelope(self, response: _TargetsResponse) -> list:
        """The answer's last targets, once its status and warnings are checked."""
        return _check_envelope(response)

    def _pool(self, pool: str) -> list[Target]:
        """The list a pool's Targets go to while the answer streams in."""
        kept = self._kept.get(pool)
        if kept is None:
            self.pools[pool] = PoolTargets()
            kept = self._kept[pool] = []
        return kept

    def _count(self, pool: str) -> list[Target]:
        """One more active target of `pool`; where its Target goes."""
        kept = self._pool(pool)
        self.pools[pool].active += 1
        return kept

    def _add(self, raw_targets: list[_ActiveTarget]) -> None:
        only_pool = self._only_pool
        self._total += len(raw_targets)
        # The pool of the previous target, as decoded and as kept: a pool's
        # targets come one after another (one pool per answer, mostly).
        named: str | None = None
        pool_name = ""
        kept: list[Target] = []
        counted = PoolTargets()
        for raw in raw_targets:
            labels, pool = raw.discovered, raw.scrape_pool or only_pool
            if pool is not None and (labels is None or labels.address is None) and raw.labels:
                self._add_final(raw, pool)
                continue
            if labels is None or labels.address is None or pool is None:
                self._malformed += 1
                continue
            if pool != named:
                if only_pool is not None and pool != only_pool:
                    self._foreign += 1
                    continue
                named = pool
                # The pool's one string object is what every Target of it holds.
                pool_name = sys.intern(pool)
                kept = self._pool(pool_name)
                counted = self.pools[pool_name]
            counted.active += 1
            target = _to_target(labels, labels.address, raw.health, pool_name)
            if target is not None:
                kept.append(target)

    def _add_final(self, raw: _ActiveTarget, pool: str) -> None:
        if self._only_pool is not None and pool != self._only_pool:
            self._foreign += 1
            return
        pool = sys.intern(pool)
        kept = self._count(pool)
        self.final_labels_only += 1
        target = _from_final_labels(raw.labels or _FinalLabels(), raw.health, pool)
        if target is not None:
            kept.append(target)
        else:
            self.pools[pool].unattributed += 1


def parse_targets(body: bytes, only_pool: str | None = None) -> dict[str, PoolTargets]:
    """Active targets grouped by scrape pool.

    only_pool: the pool that was asked for. Its targets are kept even when
    the server leaves scrapePool out; targets of other pools (a server that
    ignored the filter) are left out rather than counted twice.
    Malformed targets are skipped and logged; if every target is malformed
    the response is broken and SourceError is raised.
    """
    stream = TargetStream(only_pool)
    stream.feed(body)
    return stream.finish()


def _report_skipped(total: int, malformed: int, foreign: int, pool: str | None) -> None:
    if malformed and malformed == total:
        raise SourceError(f"all {total} active targets malformed (no discoveredLabels/__address__)")
    if malformed:
        log.warning(
            "skipped malformed active targets",
            extra=fields(skipped=malformed, targets=total, scrape_pool=pool),
        )
    if foreign:
        log.warning(
            "skipped targets of other pools: the server seems to ignore the scrapePool parameter",
            extra=fields(skipped=foreign, scrape_pool=pool),
        )
