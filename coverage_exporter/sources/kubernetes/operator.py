"""The Prometheus Operator's objects, for migration readiness
(model.readiness): `Prometheus` and `PrometheusAgent` CRs, their
ServiceMonitors, and whether each CR's ServiceAccount may list and watch
EndpointSlices (a SubjectAccessReview).

Optional by design: where the `monitoring.coreos.com` CRDs are absent or
may not be read, the feature is off, says so in one log line, and nothing
else changes. SubjectAccessReviews need `create` on
`authorization.k8s.io/subjectaccessreviews`; without it the RBAC check is
reported as unknown. Namespace labels (for ServiceMonitor namespace
selectors) need `list` on namespaces; without it such selectors are
skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import msgspec

from coverage_exporter import defaults, untrusted
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.logs import fields
from coverage_exporter.model.readiness import (
    LabelSelector,
    PrometheusCR,
    ServiceMonitor,
)
from coverage_exporter.model.scope import LabelRequirement
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes.api import ApiClient, ApiError

log = logging.getLogger("coverage_exporter.operator")


PROMETHEUSES = "/apis/monitoring.coreos.com/v1/prometheuses"
PROMETHEUS_AGENTS = "/apis/monitoring.coreos.com/v1alpha1/prometheusagents"
SERVICE_MONITORS = "/apis/monitoring.coreos.com/v1/servicemonitors"
NAMESPACES = "/api/v1/namespaces"
SAR = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


class _SarStatus(msgspec.Struct):
    allowed: bool = False


class _SarAnswer(msgspec.Struct):
    status: _SarStatus | None = None


_SAR_DECODER = untrusted.Decoder(_SarAnswer)
"""An answer is untrusted like every other: not an object, nested 10 KB
deep or `allowed: "yes"` is a source error, never a crash or a yes."""


class _Requirement(msgspec.Struct, rename="camel"):
    key: str = ""
    operator: str = ""
    values: list[str] | None = None


class _Selector(msgspec.Struct, rename="camel"):
    match_labels: dict[str, str] | None = None
    match_expressions: list[_Requirement] | None = None


class _Meta(msgspec.Struct):
    name: str = ""
    namespace: str = ""
    labels: dict[str, str] | None = None


class _CRSpec(msgspec.Struct, rename="camel"):
    service_discovery_role: str | None = None
    service_account_name: str | None = None
    service_monitor_selector: _Selector | None = None
    service_monitor_namespace_selector: _Selector | None = None


class _CR(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    spec: _CRSpec = msgspec.field(default_factory=_CRSpec)


class _NamespaceSelector(msgspec.Struct, rename="camel"):
    any: bool = False
    match_names: list[str] | None = None


class _SMSpec(msgspec.Struct, rename="camel"):
    selector: _Selector = msgspec.field(default_factory=_Selector)
    namespace_selector: _NamespaceSelector | None = None
    service_discovery_role: str | None = None
    """Operator v0.86+; absent from older CRDs."""


class _SM(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    spec: _SMSpec = msgspec.field(default_factory=_SMSpec)


class _List(msgspec.Struct):
    items: list[msgspec.Raw] | None = None


_OPS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}


def selector(raw: _Selector | None) -> LabelSelector | None:
    if raw is None:
        return None
    reqs = [
        LabelRequirement(k, "=", frozenset({v}))
        for k, v in sorted((raw.match_labels or {}).items())
    ]
    for e in raw.match_expressions or ():
        op = _OPS.get(e.operator)
        if op is None:
            # An operator Kubernetes does not know selects nothing.
            reqs.append(LabelRequirement(e.key, "in", frozenset()))
            continue
        reqs.append(LabelRequirement(e.key, op, frozenset(e.values or ())))
    return LabelSelector(tuple(reqs))


def parse_crs(body: bytes | bytearray, kind: str) -> list[PrometheusCR]:
    out = []
    for raw in _items(body):
        cr = msgspec.json.decode(raw, type=_CR)
        spec = cr.spec
        out.append(
            PrometheusCR(
                kind=kind,
                namespace=cr.metadata.namespace,
                name=cr.metadata.name,
                service_discovery_role=spec.service_discovery_role or "Endpoints",
                # The Operator leaves the pod on the namespace's "default"
                # ServiceAccount when none is named.
                service_account=spec.service_account_name or "default",
                service_monitor_selector=selector(spec.service_monitor_selector),
                service_monitor_namespace_selector=selector(
                    spec.service_monitor_namespace_selector
                ),
            )
        )
    return out


def parse_service_monitors(body: bytes | bytearray) -> list[ServiceMonitor]:
    out = []
    for raw in _items(body):
        sm = msgspec.json.decode(raw, type=_SM)
        ns = sm.spec.namespace_selector or _NamespaceSelector()
        out.append(
            ServiceMonitor(
                namespace=sm.metadata.namespace,
                name=sm.metadata.name,
                selector=selector(sm.spec.selector) or LabelSelector(),
                labels=sm.metadata.labels or {},
                any_namespace=ns.any,
                namespaces=tuple(ns.match_names or ()),
                service_discovery_role=sm.spec.service_discovery_role or None,
            )
        )
    return out


def _items(body: bytes | bytearray) -> list[msgspec.Raw]:
    try:
        return msgspec.json.decode(body, type=_List).items or []
    except msgspec.DecodeError as exc:
        raise SourceError(f"undecodable list: {exc}") from None


@dataclass(frozen=True, slots=True)
class OperatorObjects:
    crs: list[PrometheusCR]
    monitors: list[ServiceMonitor]
    namespace_labels: Mapping[str, Mapping[str, str]]
    endpointslice_rbac: Mapping[tuple[str, str], bool | None]
    """(namespace, ServiceAccount) -> may list and watch EndpointSlices."""


class OperatorSource:
    """Reads the Operator's objects once per cycle through the Kubernetes
    source's API client."""

    def __init__(
        self,
        api: ApiClient,
        refresh_seconds: float = parse_seconds(defaults.OPERATOR_REFRESH_INTERVAL),
    ) -> None:
        self._api = api
        self._refresh = refresh_seconds
        self._read_at: float | None = None
        self._cached: OperatorObjects | None = None
        self._state = ""
        """What was last logged about the feature being on or off."""

    def _changed(self, state: str) -> bool:
        """True once per change of state: what is worth a log line."""
        changed, self._state = state != self._state, state
        return changed

    async def collect(self) -> OperatorObjects | None:
        """None while the feature is off (CRDs absent or unreadable);
        SourceError for anything else that goes wrong, never another error:
        readiness is advice and must not end a cycle. Read anew at most
        every `refresh_seconds`: a steady cycle makes no Kubernetes request
        (the rest of the cluster comes from watches), and these objects
        change when people change them."""
        now = time.monotonic()
        if self._read_at is not None and now - self._read_at < self._refresh:
            return self._cached
        try:
            self._cached = await self._collect()
            self._read_at = now
            return self._cached
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = httpclient.describe(exc)
            raise SourceError(f"prometheus operator objects: {detail}") from None
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise SourceError(f"prometheus operator objects: undecodable: {exc}") from None

    async def _collect(self) -> OperatorObjects | None:
        try:
            crs = parse_crs(await self._api.get(PROMETHEUSES, {}), "Prometheus")
        except ApiError as exc:
            if exc.code in (401, 403, 404):
                why = "not installed" if exc.code == 404 else "not readable"
                if self._changed(why):
                    log.info(
                        "migration readiness off: the Prometheus Operator's objects cannot be read",
                        extra=fields(objects="prometheuses.monitoring.coreos.com", why=why),
                    )
                return None
            raise SourceError(f"prometheus operator objects: {exc}") from None
        if self._changed("on"):
            log.info("migration readiness on: reading Prometheus Operator objects")
        try:
            crs += parse_crs(await self._api.get(PROMETHEUS_AGENTS, {}), "PrometheusAgent")
        except ApiError as exc:
            if exc.code not in (401, 403, 404):
                raise SourceError(f"prometheus agents: {exc}") from None
        try:
            monitors = parse_service_monitors(await self._api.get(SERVICE_MONITORS, {}))
        except ApiError as exc:
            raise SourceError(f"servicemonitors: {exc}") from None
        namespace_labels = await self._namespace_labels(crs)
        rbac = {}
        for cr in crs:
            key = (cr.namespace, cr.service_account)
            if key not in rbac:
                rbac[key] = await self._may_watch_endpointslices(*key)
        return OperatorObjects(crs, monitors, namespace_labels, rbac)

    async def _namespace_labels(self, crs: list[PrometheusCR]) -> dict[str, dict[str, str]]:
        if not any(cr.service_monitor_namespace_selector for cr in crs):
            return {}
        try:
            body = await self._api.get(NAMESPACES, {})
        except ApiError:
            return {}
        out = {}
        for raw in _items(body):
            meta = msgspec.json.decode(raw, type=_CR).metadata
            out[meta.name] = meta.labels or {}
        return out

    async def _may_watch_endpointslices(self, namespace: str, account: str) -> bool | None:
        allowed = True
        for verb in ("list", "watch"):
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": f"system:serviceaccount:{namespace}:{account}",
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                    "resourceAttributes": {
                        "group": "discovery.k8s.io",
                        "resource": "endpointslices",
                        "verb": verb,
                    },
                },
            }
            try:
                answer = await self._api.post(SAR, msgspec.json.encode(review))
            except ApiError as exc:
                if exc.code in (401, 403, 404):
                    return None
                raise SourceError(f"subjectaccessreview: {exc}") from None
            try:
                review_status = _SAR_DECODER.decode(answer).status
            except msgspec.DecodeError as exc:
                raise SourceError(f"subjectaccessreview: undecodable answer: {exc}") from None
            allowed = allowed and review_status is not None and review_status.allowed
        return allowed
