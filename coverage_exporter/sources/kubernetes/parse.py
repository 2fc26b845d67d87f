"""Raw Kubernetes API JSON -> the slim objects of `model.objects`.

msgspec decodes into Structs that declare only the fields read here; every
other field (managedFields, images, spec.template, ...) is skipped by the
decoder without building Python objects, which is what keeps a 100k-node
list affordable. Every field is optional: what the API omits becomes None,
and an object that cannot be decoded or lacks its name raises ParseError so
the caller skips that one object instead of losing the whole list.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from coverage_exporter import untrusted
from coverage_exporter.model.objects import (
    APP_MANAGED_BY_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_OPERATOR,
    OVER_CAPACITY_ANNOTATION,
    SERVICE_NAME_LABEL,
    SKIP_MIRROR_LABEL,
    DaemonSet,
    EndpointAddress,
    Endpoints,
    EndpointSlice,
    Node,
    NodeSelectorRequirement,
    Pod,
    PodPlacement,
    Service,
    ServiceKey,
    SliceEndpoint,
    Toleration,
)

K = TypeVar("K")
T = TypeVar("T")

Buffer = bytes | bytearray | memoryview | msgspec.Raw


class ParseError(ValueError):
    """One object could not be turned into its slim type."""


class FormUnsupported(ParseError):
    """The answer is not in the form asked for (no Table, or a Table without
    the columns read): the reflector falls back to full objects."""


# --- envelopes: lists, watch events, Status --------------------------------


class ListMeta(msgspec.Struct, rename="camel"):
    resource_version: str | None = None
    continue_: str | None = msgspec.field(default=None, name="continue")


class ObjectList(msgspec.Struct):
    """A LIST page; items stay raw so one bad item is skipped, not fatal."""

    metadata: ListMeta | None = None
    items: list[msgspec.Raw] | None = None


class WatchEvent(msgspec.Struct):
    type: str
    # Raw cannot be part of a union: an absent object is an empty Raw.
    object: msgspec.Raw = msgspec.Raw()


class Status(msgspec.Struct):
    """metav1.Status: the body of API errors and of watch ERROR events."""

    status: str | None = None
    message: str | None = None
    reason: str | None = None
    code: int | None = None


_list_decoder = untrusted.Decoder(ObjectList)
_event_decoder = untrusted.Decoder(WatchEvent)
_status_decoder = untrusted.Decoder(Status)


def decode_list(data: Buffer) -> ObjectList:
    try:
        return _list_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ParseError(f"bad list response: {exc}") from exc


_LIST_HEAD = re.compile(
    rb'\{"kind":"[A-Za-z]+List","apiVersion":"[^"]*","metadata":(\{[^{}]*\}),"items":'
)
"""How kube-apiserver begins a list (its encoder writes the fields in the
struct's order): the metadata, whose continue token names the next page,
comes before the items."""
_HEAD_BYTES = 4096


def peek_list_meta(body: bytes | bytearray, encoding: str) -> ListMeta | None:
    """The list metadata read off the first bytes of a page still as sent
    (gzip or none), without the page: None unless the page begins exactly
    as the apiserver writes it. A hint only (the next page can be asked for
    early); the parsed page's own metadata is what counts."""
    head: bytes | bytearray
    if encoding in ("", "identity"):
        head = body[:_HEAD_BYTES]
    elif encoding == "gzip":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(
                body[:_HEAD_BYTES], _HEAD_BYTES
            )
        except zlib.error:
            return None
    else:
        return None
    match = _LIST_HEAD.match(head)
    if match is None:
        return None
    try:
        return msgspec.json.decode(match.group(1), type=ListMeta)
    except msgspec.DecodeError:
        return None


def decode_event(data: Buffer) -> WatchEvent:
    try:
        return _event_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ParseError(f"bad watch event: {exc}") from exc


def decode_status(data: Buffer) -> Status | None:
    """The Status in an error body or ERROR event; None if it is not one."""
    try:
        return _status_decoder.decode(data)
    except msgspec.DecodeError:
        return None


# --- the metadata every object has -----------------------------------------


class Meta(msgspec.Struct, rename="camel"):
    name: str | None = None
    namespace: str | None = None
    resource_version: str | None = None


class OwnerReference(msgspec.Struct):
    kind: str | None = None
    name: str | None = None
    controller: bool | None = None


class _MetaOnly(msgspec.Struct):
    metadata: Meta | None = None


_meta_decoder = untrusted.Decoder(_MetaOnly)


def decode_meta(data: Buffer) -> Meta | None:
    """Name, namespace and resourceVersion only: for DELETED events,
    BOOKMARKs and objects whose full decode failed."""
    try:
        return _meta_decoder.decode(data).metadata
    except msgspec.DecodeError:
        return None


def _i(value: str | None) -> str | None:
    """sys.intern for what repeats across objects (node names and IPs,
    namespaces, owners, kinds): at 100k nodes a node's name stands in its
    Node, its pods, Endpoints addresses, slice endpoints and targets, and
    without interning each is its own string (~170 MB in all). Prometheus
    targets are interned the same way, so they share these very objects."""
    return None if value is None else sys.intern(value)


def _name(meta: Meta | None) -> str:
    if meta is None or not meta.name:
        raise ParseError("object without metadata.name")
    return meta.name


def _ns(meta: Meta | None) -> str:
    return sys.intern((meta.namespace if meta else None) or "")


def namespaced_key(meta: Meta) -> ServiceKey:
    return (_ns(meta), _name(meta))


def cluster_key(meta: Meta) -> str:
    return _name(meta)


# --- Node --------------------------------------------------------------------


class _NodeAddress(msgspec.Struct):
    type: str | None = None
    address: str | None = None


class _Condition(msgspec.Struct):
    type: str | None = None
    status: str | None = None


class _NodeStatus(msgspec.Struct):
    addresses: list[_NodeAddress] | None = None
    conditions: list[_Condition] | None = None


class _NodeMeta(Meta, rename="camel"):
    labels: dict[str, str] | None = None


class _Taint(msgspec.Struct):
    key: str | None = None
    value: str | None = None
    effect: str | None = None


class _NodeSpec(msgspec.Struct):
    taints: list[_Taint] | None = None
    unschedulable: bool | None = None


class RawNode(msgspec.Struct):
    metadata: _NodeMeta | None = None
    spec: _NodeSpec | None = None
    status: _NodeStatus | None = None


_NODE_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})
_HOSTNAME_LABEL = "kubernetes.io/hostname"
# Node label sets repeat across a cluster (zone, instance type, OS, pool)
# once the per-node hostname is set aside: one shared dict per distinct
# set, not one per Node (~1 KB each at 100k nodes). Bounded: a cluster
# with more distinct sets than this simply stops sharing the rest.
_LABEL_SETS: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
_LABEL_SETS_MAX = 50_000
_TAINT_SETS: dict[tuple[tuple[str, str, str], ...], tuple[tuple[str, str, str], ...]] = {}


_NO_LABELS: dict[str, str] = {}
"""Shared like any other set: Nodes are read, never changed."""


def _shared_labels(labels: dict[str, str] | None, name: str) -> dict[str, str]:
    if not labels:
        return _NO_LABELS
    if labels.get(_HOSTNAME_LABEL) == name:
        # The hostname label equals the name on almost every Node: leave it
        # out of the shared set; model.scheduling reads it from the name.
        # (The dict is the decoder's own, made for this Node alone.)
        del labels[_HOSTNAME_LABEL]
    key = tuple(sorted(labels.items()))
    shared = _LABEL_SETS.get(key)
    if shared is None:
        shared = {sys.intern(k): sys.intern(v) for k, v in key}
        if len(_LABEL_SETS) < _LABEL_SETS_MAX:
            _LABEL_SETS[key] = shared
    return shared


def _shared_taints(taints: list[_Taint] | None) -> tuple[tuple[str, str, str], ...]:
    if not taints:
        return ()
    key = tuple((t.key or "", t.value or "", t.effect or "") for t in taints)
    return _TAINT_SETS.setdefault(key, key) if len(_TAINT_SETS) < 10_000 else key


def node_from_raw(raw: RawNode) -> Node:
    status = raw.status or _NodeStatus()
    name = sys.intern(_name(raw.metadata))
    spec = raw.spec or _NodeSpec()
    ready = False
    for c in status.conditions or ():
        if c.type == "Ready":
            ready = c.status == "True"
            break
    # Positional: Node's fields in order (name, addresses, ready, labels,
    # taints, unschedulable); this runs once per Node, 100k at a time.
    return Node(
        name,
        tuple(
            sys.intern(a.address)
            for a in status.addresses or ()
            if a.type in _NODE_ADDRESS_TYPES and a.address
        ),
        ready,
        _shared_labels(raw.metadata.labels if raw.metadata else None, name),
        _shared_taints(spec.taints) if spec.taints else (),
        bool(spec.unschedulable),
    )


# --- Service -------------------------------------------------------------------


class _ServiceMeta(Meta, rename="camel"):
    labels: dict[str, str] | None = None


class _AnnotatedMeta(_ServiceMeta, rename="camel"):
    annotations: dict[str, str] | None = None


class _ServicePort(msgspec.Struct):
    name: str | None = None


class _ServiceSpec(msgspec.Struct, rename="camel"):
    selector: dict[str, str] | None = None
    ports: list[_ServicePort] | None = None
    ip_family_policy: str | None = None
    ip_families: list[str] | None = None


class RawService(msgspec.Struct):
    metadata: _AnnotatedMeta | None = None
    spec: _ServiceSpec | None = None


# Annotations kept on a Service: only those a scrape job's relabel rules
# commonly read (prometheus.io/*); the rest (last-applied-configuration,
# Helm's) can be large and are never compared.
_KEPT_ANNOTATION_PREFIXES = ("prometheus.io/",)


def service_from_raw(raw: RawService) -> Service:
    meta = raw.metadata
    annotations = (meta.annotations if meta else None) or {}
    spec = raw.spec or _ServiceSpec()
    return Service(
        namespace=_ns(meta),
        name=_name(meta),
        # An empty selector selects nothing for a Service: same as none.
        selector=spec.selector or None,
        labels=(meta.labels if meta else None) or {},
        annotations={
            k: v for k, v in annotations.items() if k.startswith(_KEPT_ANNOTATION_PREFIXES)
        },
        port_names=tuple(p.name for p in spec.ports or () if p.name),
        ip_family_policy=sys.intern(spec.ip_family_policy or ""),
        ip_families=tuple(map(sys.intern, spec.ip_families or ())),
    )


# --- Endpoints (v1) -------------------------------------------------------------


class _ObjectReference(msgspec.Struct):
    kind: str | None = None
    name: str | None = None


class _EndpointAddress(msgspec.Struct, rename="camel"):
    ip: str | None = None
    node_name: str | None = None
    target_ref: _ObjectReference | None = None


class _Subset(msgspec.Struct, rename="camel"):
    addresses: list[_EndpointAddress] | None = None
    not_ready_addresses: list[_EndpointAddress] | None = None


class _LabelledMeta(Meta, rename="camel"):
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class RawEndpoints(msgspec.Struct):
    metadata: _LabelledMeta | None = None
    subsets: list[_Subset] | None = None


def _address(raw: _EndpointAddress) -> EndpointAddress:
    if not raw.ip:
        raise ParseError("endpoint address without ip")
    ref = raw.target_ref
    node = raw.node_name
    return EndpointAddress(
        sys.intern(raw.ip),
        None if node is None else sys.intern(node),
        _i(ref.kind) if ref else None,
        _i(ref.name) if ref else None,
    )


def endpoints_from_raw(raw: RawEndpoints) -> Endpoints:
    meta = raw.metadata
    ready: list[EndpointAddress] = []
    not_ready: list[EndpointAddress] = []
    sizes: list[int] = []
    for subset in raw.subsets or ():
        sub_ready = subset.addresses or ()
        sub_not_ready = subset.not_ready_addresses or ()
        ready.extend(_address(a) for a in sub_ready)
        not_ready.extend(_address(a) for a in sub_not_ready)
        sizes.append(len(sub_ready) + len(sub_not_ready))
    labels = (meta.labels if meta else None) or {}
    annotations = (meta.annotations if meta else None) or {}
    return Endpoints(
        namespace=_ns(meta),
        name=_name(meta),
        ready=tuple(ready),
        not_ready=tuple(not_ready),
        subset_sizes=tuple(sizes),
        over_capacity=annotations.get(OVER_CAPACITY_ANNOTATION),
        skip_mirror=labels.get(SKIP_MIRROR_LABEL) == "true",
        operator_managed=labels.get(APP_MANAGED_BY_LABEL) == MANAGED_BY_OPERATOR,
    )


# --- EndpointSlice (discovery.k8s.io/v1) ----------------------------------------


class _SliceConditions(msgspec.Struct):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class _SliceEndpoint(msgspec.Struct, rename="camel"):
    addresses: list[str] | None = None
    conditions: _SliceConditions | None = None
    node_name: str | None = None
    target_ref: _ObjectReference | None = None


class RawEndpointSlice(msgspec.Struct, rename="camel"):
    metadata: _ServiceMeta | None = None
    address_type: str | None = None
    # "endpoints": null is what the API sends for an empty slice.
    endpoints: list[_SliceEndpoint] | None = None


def _slice_endpoint(raw: _SliceEndpoint) -> SliceEndpoint:
    if not raw.addresses:
        raise ParseError("slice endpoint without addresses")
    cond = raw.conditions or _SliceConditions()
    # API semantics: nil ready means ready; nil serving defers to ready;
    # nil terminating means not terminating.
    ready = True if cond.ready is None else cond.ready
    ref = raw.target_ref
    node = raw.node_name
    return SliceEndpoint(
        sys.intern(raw.addresses[0]),
        None if node is None else sys.intern(node),
        _i(ref.kind) if ref else None,
        _i(ref.name) if ref else None,
        ready,
        ready if cond.serving is None else cond.serving,
        bool(cond.terminating),
    )


def endpointslice_from_raw(raw: RawEndpointSlice) -> EndpointSlice:
    meta = raw.metadata
    labels = (meta.labels if meta else None) or {}
    if not raw.address_type:
        raise ParseError("endpointslice without addressType")
    return EndpointSlice(
        namespace=_ns(meta),
        name=_name(meta),
        service_name=sys.intern(labels.get(SERVICE_NAME_LABEL, "")),
        managed_by=sys.intern(labels.get(MANAGED_BY_LABEL, "")),
        address_type=sys.intern(raw.address_type),
        endpoints=tuple(_slice_endpoint(e) for e in raw.endpoints or ()),
    )


# --- Pod ---------------------------------------------------------------------------


class _PodMeta(Meta, rename="camel"):
    deletion_timestamp: str | None = None
    owner_references: list[OwnerReference] | None = None


class _PodSpec(msgspec.Struct, rename="camel"):
    node_name: str | None = None


class _PodStatus(msgspec.Struct, rename="camel"):
    pod_ip: str | None = msgspec.field(default=None, name="podIP")
    phase: str | None = None


class RawPod(msgspec.Struct):
    metadata: _PodMeta | None = None
    spec: _PodSpec | None = None
    status: _PodStatus | None = None


def pod_from_raw(raw: RawPod) -> Pod:
    meta = raw.metadata
    owner = None
    for o in (meta.owner_references if meta else None) or ():
        if o.controller:
            owner = o
            break
    status = raw.status
    return Pod(
        _ns(meta),
        _name(meta),
        _i((raw.spec.node_name if raw.spec else None) or None),
        _i((status.pod_ip if status else None) or None),
        _i(owner.kind) if owner else None,
        _i(owner.name) if owner else None,
        bool(meta and meta.deletion_timestamp),
        _i(status.phase if status else None),
    )


# --- DaemonSet (apps/v1) -----------------------------------------------------------


class _DaemonSetStatus(msgspec.Struct, rename="camel"):
    desired_number_scheduled: int | None = None


class _Requirement(msgspec.Struct):
    key: str | None = None
    operator: str | None = None
    values: list[str] | None = None


class _Term(msgspec.Struct, rename="camel"):
    match_expressions: list[_Requirement] | None = None
    match_fields: list[_Requirement] | None = None


class _NodeSelector(msgspec.Struct, rename="camel"):
    node_selector_terms: list[_Term] | None = None


class _NodeAffinity(msgspec.Struct):
    required: _NodeSelector | None = msgspec.field(
        default=None, name="requiredDuringSchedulingIgnoredDuringExecution"
    )


class _Affinity(msgspec.Struct, rename="camel"):
    node_affinity: _NodeAffinity | None = None


class _Toleration(msgspec.Struct):
    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None


class _TemplatePodSpec(msgspec.Struct, rename="camel"):
    node_selector: dict[str, str] | None = None
    affinity: _Affinity | None = None
    tolerations: list[_Toleration] | None = None
    host_network: bool | None = None


class _TemplateMeta(msgspec.Struct):
    labels: dict[str, str] | None = None


class _PodTemplate(msgspec.Struct):
    metadata: _TemplateMeta | None = None
    spec: _TemplatePodSpec | None = None


class _DaemonSetSpec(msgspec.Struct):
    template: _PodTemplate | None = None


class RawDaemonSet(msgspec.Struct):
    metadata: Meta | None = None
    spec: _DaemonSetSpec | None = None
    status: _DaemonSetStatus | None = None


def _placement(spec: _TemplatePodSpec) -> PodPlacement:
    terms: tuple[tuple[NodeSelectorRequirement, ...], ...] | None = ()
    affinity = spec.affinity.node_affinity if spec.affinity else None
    required = affinity.required if affinity else None
    if required is not None:
        out = []
        for term in required.node_selector_terms or ():
            fields = term.match_fields or ()
            if any(f.key != "metadata.name" for f in fields):
                terms = None  # not modelled: count only
                break
            out.append(
                tuple(
                    NodeSelectorRequirement(r.key or "", r.operator or "", tuple(r.values or ()))
                    for r in (*(term.match_expressions or ()), *fields)
                )
            )
        else:
            terms = tuple(out)
    return PodPlacement(
        node_selector=spec.node_selector or {},
        terms=terms,
        tolerations=tuple(
            Toleration(t.key, t.operator or "Equal", t.value, t.effect)
            for t in spec.tolerations or ()
        ),
        host_network=bool(spec.host_network),
    )


def daemonset_from_raw(raw: RawDaemonSet) -> DaemonSet:
    meta = raw.metadata
    template = raw.spec.template if raw.spec else None
    return DaemonSet(
        namespace=_ns(meta),
        name=_name(meta),
        desired_number_scheduled=(raw.status.desired_number_scheduled if raw.status else 0) or 0,
        placement=_placement(template.spec) if template and template.spec else None,
        template_labels=(
            _shared_template_labels(template.metadata.labels)
            if template and template.metadata
            else None
        ),
    )


def _shared_template_labels(labels: dict[str, str] | None) -> dict[str, str]:
    return {sys.intern(k): sys.intern(v) for k, v in (labels or {}).items()}


# --- per-kind parsers ----------------------------------------------------------------


class Parsed(msgspec.Struct, Generic[K, T], gc=False):
    """One decoded object with its cache key (one per list item: a Struct,
    whose C __init__ a frozen dataclass's object.__setattr__ would cost ~6x)."""

    key: K
    obj: T
    resource_version: str | None


@dataclass(slots=True)
class Page(Generic[K, T]):
    """One LIST page: the objects that parsed, the list metadata, and one
    message per object that did not."""

    items: list[Parsed[K, T]]
    metadata: ListMeta | None
    errors: list[str]


class ObjectParser(Generic[K, T]):
    """Decodes one raw object of one kind into (cache key, slim object)."""

    accept: str | None = None
    """The Accept header of this parser's requests; None: application/json."""
    params: Mapping[str, str] = {}
    """Query parameters its LISTs and WATCHes add."""
    page_size: int | None = None
    """LIST page size; None: the reflector's."""
    fallback: ObjectParser[K, T] | None = None
    """The parser to switch to when the server cannot answer in this form."""

    def __init__(
        self,
        kind: str,
        raw_type: type[Any],
        convert: Callable[[Any], T],
        key: Callable[[Meta], K],
    ) -> None:
        self.kind = kind
        self._decoder = untrusted.Decoder(raw_type)
        page_type = msgspec.defstruct(
            f"{kind}List",
            # A type made at run time: mypy cannot check list[raw_type].
            [("metadata", ListMeta | None, None), ("items", list[raw_type] | None, None)],  # type: ignore[valid-type]
        )
        self._page_decoder: untrusted.Decoder[Any] = untrusted.Decoder(page_type)
        self._convert = convert
        self._key = key

    def parse_page(self, data: Buffer) -> Page[K, T]:
        """A whole LIST page in one typed pass. If one item does not fit its
        type, the page is decoded again item by item so that only that item
        is lost (the rare path; the common one never decodes twice)."""
        try:
            page = self._page_decoder.decode(data)
        except msgspec.ValidationError:
            return self._parse_page_per_item(data)
        except msgspec.DecodeError as exc:
            raise ParseError(f"bad list response: {exc}") from exc
        out = Page[K, T]([], page.metadata, [])
        for raw in page.items or ():
            try:
                out.items.append(self._from_raw(raw))
            except ParseError as exc:
                out.errors.append(str(exc))
        return out

    def _parse_page_per_item(self, data: Buffer) -> Page[K, T]:
        page = decode_list(data)
        out = Page[K, T]([], page.metadata, [])
        for item in page.items or ():
            try:
                out.items.append(self.parse(item))
            except ParseError as exc:
                out.errors.append(str(exc))
        return out

    def parse(self, data: Buffer) -> Parsed[K, T]:
        try:
            raw = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ParseError(f"{self.kind}: {exc}") from exc
        return self._from_raw(raw)

    def _from_raw(self, raw: Any) -> Parsed[K, T]:
        if raw.metadata is None:
            raise ParseError(f"{self.kind}: object without metadata")
        try:
            obj = self._convert(raw)
        except ParseError as exc:
            raise ParseError(f"{self.kind} {_describe(raw.metadata)}: {exc}") from exc
        return Parsed(self._key(raw.metadata), obj, raw.metadata.resource_version)

    def check_form(self, data: Buffer) -> None:
        """FormUnsupported if a DELETED event's object is not in this
        parser's form; full objects have one form only."""

    def identify(self, data: Buffer) -> tuple[K | None, str | None]:
        """Key and resourceVersion without the full decode (DELETED events,
        objects that failed to parse). (None, None) if even that fails."""
        meta = decode_meta(data)
        if meta is None:
            return None, None
        try:
            return self._key(meta), meta.resource_version
        except ParseError:
            return None, meta.resource_version


def _describe(meta: Meta) -> str:
    return f"{meta.namespace}/{meta.name}" if meta.namespace else str(meta.name)


NODES: ObjectParser[str, Node] = ObjectParser("Node", RawNode, node_from_raw, cluster_key)
SERVICES: ObjectParser[ServiceKey, Service] = ObjectParser(
    "Service", RawService, service_from_raw, namespaced_key
)
ENDPOINTS: ObjectParser[ServiceKey, Endpoints] = ObjectParser(
    "Endpoints", RawEndpoints, endpoints_from_raw, namespaced_key
)
ENDPOINTSLICES: ObjectParser[ServiceKey, EndpointSlice] = ObjectParser(
    "EndpointSlice", RawEndpointSlice, endpointslice_from_raw, namespaced_key
)
PODS: ObjectParser[ServiceKey, Pod] = ObjectParser("Pod", RawPod, pod_from_raw, namespaced_key)
DAEMONSETS: ObjectParser[ServiceKey, DaemonSet] = ObjectParser(
    "DaemonSet", RawDaemonSet, daemonset_from_raw, namespaced_key
)
