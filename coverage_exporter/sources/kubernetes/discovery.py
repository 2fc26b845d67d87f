"""Discovery's data source: list+watch caches (sources.reflector) of the
Prometheus Operator's `Prometheus` (v1) and `PrometheusAgent` (v1alpha1)
objects, of the pods labelled `operator.prometheus.io/name`, and of the pods
a `--prometheus-pod-selector` matches; model.discovery turns them into
servers.

The CRDs may be installed or removed while the exporter runs: the API group's
discovery document is read again every `crd_check_seconds`, and a resource's
watches start when it appears and stop when it goes, each change said in one
log line. Where the CRDs are absent nothing is watched and nothing is wrong.
A spec that does not decode is one finding naming the field (model), never a
lost object; a pod that does not decode is skipped with the reflector's
warning.

Its own health (`source="discovery"`): up when every watch it runs is listed
and healthy and the last CRD check answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import msgspec

from coverage_exporter import defaults, untrusted
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.health import SourceHealth
from coverage_exporter.logs import fields
from coverage_exporter.model.discovery import (
    DEFAULT_PORT_NAME,
    PROMETHEUS,
    PROMETHEUS_AGENT,
    ContainerPort,
    Discovery,
    ScraperObject,
    ScraperPod,
    operator_servers,
    selector_servers,
)
from coverage_exporter.model.objects import ServiceKey
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.kubernetes.api import ApiClient, ApiError
from coverage_exporter.sources.kubernetes.parse import (
    Meta,
    ObjectParser,
    OwnerReference,
    ParseError,
    namespaced_key,
)
from coverage_exporter.sources.kubernetes.reflector import Reflector

log = logging.getLogger("coverage_exporter.discovery")

SOURCE_DISCOVERY = "discovery"
GROUP = "monitoring.coreos.com"
# resource -> (group version, kind)
RESOURCES = {
    "prometheuses": ("v1", PROMETHEUS),
    "prometheusagents": ("v1alpha1", PROMETHEUS_AGENT),
}
OPERATOR_POD_SELECTOR = "operator.prometheus.io/name"
CRD_CHECK_SECONDS = 30.0
"""How often the CRDs are looked for again: they may be installed or removed
while the exporter runs; one small discovery document each time."""


# --- the objects -------------------------------------------------------------------


_ABSENT = msgspec.Raw(b"null")
"""msgspec takes no `Raw | None`: an absent field reads as JSON null."""


def _absent(raw: msgspec.Raw) -> bool:
    return bytes(raw).strip() == b"null"


class RawScraper(msgspec.Struct):
    metadata: Meta | None = None
    spec: msgspec.Raw = _ABSENT


class _Spec(msgspec.Struct, rename="camel"):
    """The fields read, each kept raw so that one malformed field is named
    in a finding instead of losing the object."""

    shards: msgspec.Raw = _ABSENT
    replicas: msgspec.Raw = _ABSENT
    route_prefix: msgspec.Raw = _ABSENT
    port_name: msgspec.Raw = _ABSENT
    listen_local: msgspec.Raw = _ABSENT
    web: msgspec.Raw = _ABSENT
    mode: msgspec.Raw = _ABSENT


class _Web(msgspec.Struct, rename="camel"):
    tls_config: msgspec.Raw = _ABSENT


_SPEC: untrusted.Decoder[_Spec] = untrusted.Decoder(_Spec)
_WEB: untrusted.Decoder[_Web] = untrusted.Decoder(_Web)
_FIELD: dict[type, untrusted.Decoder[Any]] = {
    int: untrusted.Decoder(int),
    str: untrusted.Decoder(str),
    bool: untrusted.Decoder(bool),
}


def _field(raw: msgspec.Raw, kind: type, name: str, problems: list[str]) -> Any:
    if _absent(raw):
        return None
    try:
        return _FIELD[kind].decode(raw)
    except msgspec.DecodeError:
        want = {int: "an integer", str: "a string", bool: "true or false"}[kind]
        problems.append(f"spec.{name} is {untrusted.printable(bytes(raw), 60)}, not {want}")
        return None


def scraper_from_raw(raw: RawScraper, kind: str) -> ScraperObject:
    meta = raw.metadata
    if meta is None or not meta.name:
        raise ParseError(f"{kind} without metadata.name")
    problems: list[str] = []
    try:
        spec = _Spec() if _absent(raw.spec) else _SPEC.decode(raw.spec)
    except msgspec.DecodeError as exc:
        spec = _Spec()
        problems.append(f"spec is not an object ({exc})")
    shards = _field(spec.shards, int, "shards", problems)
    replicas = _field(spec.replicas, int, "replicas", problems)
    prefix = _field(spec.route_prefix, str, "routePrefix", problems)
    port_name = _field(spec.port_name, str, "portName", problems)
    listen_local = _field(spec.listen_local, bool, "listenLocal", problems)
    mode = _field(spec.mode, str, "mode", problems)
    tls = False
    if not _absent(spec.web):
        try:
            tls = not _absent(_WEB.decode(spec.web).tls_config)
        except msgspec.DecodeError:
            problems.append("spec.web is not an object")
    return ScraperObject(
        kind=kind,
        namespace=meta.namespace or "",
        name=meta.name,
        # pkg/prometheus/common.go: shardsNumber, ReplicasNumberPtr.
        shards=max(1, shards or 1),
        replicas=1 if replicas is None or replicas < 0 else replicas,
        scheme="https" if tls else "http",
        route_prefix=prefix or "/",
        port_name=port_name or DEFAULT_PORT_NAME,
        listen_local=bool(listen_local),
        daemonset=kind == PROMETHEUS_AGENT and mode == "DaemonSet",
        problem="; ".join(problems),
    )


def scraper_parser(kind: str) -> ObjectParser[ServiceKey, ScraperObject]:
    return ObjectParser(kind, RawScraper, lambda raw: scraper_from_raw(raw, kind), namespaced_key)


class _PodMeta(Meta, rename="camel"):
    uid: str | None = None
    labels: dict[str, str] | None = None
    deletion_timestamp: str | None = None
    owner_references: list[OwnerReference] | None = None


class _Port(msgspec.Struct, rename="camel"):
    name: str | None = None
    container_port: int | None = None


class _Container(msgspec.Struct):
    name: str | None = None
    ports: list[_Port] | None = None


class _PodSpec(msgspec.Struct):
    containers: list[_Container] | None = None


class _Condition(msgspec.Struct):
    type: str | None = None
    status: str | None = None


class _PodStatus(msgspec.Struct, rename="camel"):
    pod_ip: str | None = msgspec.field(default=None, name="podIP")
    phase: str | None = None
    conditions: list[_Condition] | None = None


class RawScraperPod(msgspec.Struct):
    metadata: _PodMeta | None = None
    spec: _PodSpec | None = None
    status: _PodStatus | None = None


def scraper_pod_from_raw(raw: RawScraperPod) -> ScraperPod:
    meta = raw.metadata
    assert meta is not None  # ObjectParser checks
    owner = next((o for o in meta.owner_references or () if o.controller), None)
    status = raw.status or _PodStatus()
    ports = tuple(
        ContainerPort(c.name or "", p.name, p.container_port)
        for c in (raw.spec.containers if raw.spec else None) or ()
        for p in c.ports or ()
        if p.name and p.container_port
    )
    return ScraperPod(
        namespace=meta.namespace or "",
        name=meta.name or "",
        uid=meta.uid or "",
        labels=meta.labels or {},
        owner_kind=(owner.kind or "") if owner else "",
        owner_name=(owner.name or "") if owner else "",
        ip=status.pod_ip or "",
        phase=status.phase or "",
        ready=any(c.type == "Ready" and c.status == "True" for c in status.conditions or ()),
        deleting=bool(meta.deletion_timestamp),
        ports=ports,
    )


SCRAPER_PODS: ObjectParser[ServiceKey, ScraperPod] = ObjectParser(
    "Pod", RawScraperPod, scraper_pod_from_raw, namespaced_key
)


class _Resource(msgspec.Struct):
    name: str = ""


class _ResourceList(msgspec.Struct):
    resources: list[_Resource] | None = None


_RESOURCE_LIST: untrusted.Decoder[_ResourceList] = untrusted.Decoder(_ResourceList)


# --- the source --------------------------------------------------------------------------


class DiscoverySource:
    """Follows the objects that say which Prometheus servers run."""

    def __init__(
        self,
        *,
        operator: bool = True,
        pod_selector: str = "",
        pod_port: str = defaults.PROMETHEUS_POD_PORT,
        namespaces: Sequence[str] = (),
        crd_check_seconds: float = CRD_CHECK_SECONDS,
        watch_idle_seconds: float = parse_seconds(defaults.KUBERNETES_WATCH_IDLE_TIMEOUT),
    ) -> None:
        """operator: follow the Operator's objects; pod_selector (a label
        selector as kubectl takes it) and pod_port: also servers the
        Operator does not run; namespaces: only there (and RBAC only
        there), else the whole cluster."""
        self.health = SourceHealth(source=SOURCE_DISCOVERY)
        self.operator = operator
        self.pod_selector = pod_selector
        self.pod_port = pod_port
        self._namespaces = tuple(sorted(set(namespaces)))
        self._crd_check_seconds = crd_check_seconds
        self._watch_idle = watch_idle_seconds
        self._api: ApiClient | None = None
        self._present: dict[str, bool] = {}
        """CRD resource -> installed, as last checked."""
        self._checked_at = float("-inf")
        self._check_ok = False
        self._reflectors: dict[str, list[Reflector[Any, Any]]] = {}
        """'prometheuses', 'prometheusagents', 'operator pods', 'selected pods'."""
        self._memo: tuple[tuple[tuple[int, int], ...], Discovery] | None = None

    @property
    def enabled(self) -> bool:
        return self.operator or bool(self.pod_selector)

    async def start(self, api: ApiClient) -> None:
        """Start the watches that need no CRD, and check the CRDs once."""
        self._api = api
        if self.pod_selector:
            self._start("selected pods", "/api/v1", "pods", SCRAPER_PODS, self.pod_selector)
        await self.refresh()

    async def stop(self) -> None:
        for name in list(self._reflectors):
            await self._stop(name)
        self.health.up = False

    async def refresh(self) -> None:
        """Follow the CRDs appearing and going (at most every
        crd_check_seconds); called at the start of each cycle."""
        if not self.operator or self._api is None:
            self._update_health()
            return
        now = time.monotonic()
        if now - self._checked_at < self._crd_check_seconds:
            self._update_health()
            return
        self._checked_at = now
        present = await self._installed()
        if present is not None:
            for resource, (version, kind) in RESOURCES.items():
                await self._follow(resource, version, kind, present[resource])
            any_crd = any(present.values())
            if any_crd and "operator pods" not in self._reflectors:
                self._start("operator pods", "/api/v1", "pods", SCRAPER_PODS, OPERATOR_POD_SELECTOR)
            elif not any_crd and "operator pods" in self._reflectors:
                await self._stop("operator pods")
        self._update_health()

    async def _installed(self) -> dict[str, bool] | None:
        """Which CRDs the apiserver serves; None when it could not say."""
        assert self._api is not None
        out = {}
        try:
            for version in sorted({v for v, _ in RESOURCES.values()}):
                try:
                    body = await self._api.get(f"/apis/{GROUP}/{version}", {})
                    names = {r.name for r in _RESOURCE_LIST.decode(body).resources or ()}
                except ApiError as exc:
                    if exc.code != 404:
                        raise
                    names = set()
                for resource, (v, _) in RESOURCES.items():
                    if v == version:
                        out[resource] = resource in names
        except (ApiError, aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
            why = (
                httpclient.describe(exc)
                if isinstance(exc, (aiohttp.ClientError, TimeoutError))
                else untrusted.printable(str(exc))
            )
            message = f"discovery: cannot tell whether the {GROUP} CRDs are installed: {why}"
            if self._check_ok:
                log.warning(
                    "discovery cannot tell whether the Operator's CRDs are installed",
                    extra=fields(group=GROUP, err=why),
                )
            self.health.record_error(message)
            self._check_ok = False
            return None
        self._check_ok = True
        return out

    async def _follow(self, resource: str, version: str, kind: str, installed: bool) -> None:
        was = self._present.get(resource)
        self._present[resource] = installed
        if installed and resource not in self._reflectors:
            self._start(resource, f"/apis/{GROUP}/{version}", resource, scraper_parser(kind))
            crd = f"{resource}.{GROUP}"
            if was is not None:
                log.info("discovery: a CRD appeared; following its objects", extra=fields(crd=crd))
            else:
                log.info("discovery: following a CRD's objects", extra=fields(crd=crd))
        elif not installed and resource in self._reflectors:
            await self._stop(resource)
            log.warning(
                "discovery: a CRD is no longer served (removed); the servers its objects ran "
                "are no longer judged",
                extra=fields(crd=f"{resource}.{GROUP}"),
            )
        elif not installed and was is None:
            log.info(
                "discovery: a CRD is not installed; nothing to follow there",
                extra=fields(crd=f"{resource}.{GROUP}"),
            )

    def _start(
        self, name: str, api: str, resource: str, parser: ObjectParser[Any, Any], selector: str = ""
    ) -> None:
        assert self._api is not None
        params = {"labelSelector": selector} if selector else {}
        paths = (
            [(f"{api}/{resource}", name)]
            if not self._namespaces
            else [(f"{api}/namespaces/{ns}/{resource}", f"{name} {ns}") for ns in self._namespaces]
        )
        reflectors = [
            Reflector(
                self._api,
                path,
                parser,
                self.health,
                name=f"discovery {label}",
                params=params,
                on_state_change=self._update_health,
                watch_idle_seconds=self._watch_idle,
            )
            for path, label in paths
        ]
        for r in reflectors:
            r.start()
        self._reflectors[name] = reflectors

    async def _stop(self, name: str) -> None:
        for r in self._reflectors.pop(name, []):
            await r.stop()
        self._memo = None

    def _all(self) -> list[Reflector[Any, Any]]:
        return [r for rs in self._reflectors.values() for r in rs]

    def _update_health(self) -> None:
        reflectors = self._all()
        up = (self._check_ok or not self.operator) and all(
            r.synced and r.healthy for r in reflectors
        )
        if up:
            self.health.last_success_timestamp = time.time()
            self.health.last_error = ""
        self.health.up = up

    def synced(self) -> bool:
        """Every watch has listed once and the CRDs were checked once: only
        then does 'no server found' mean there is none."""
        return (self._check_ok or not self.operator) and all(r.synced for r in self._all())

    async def wait_synced(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Until every watch has listed once (True), or the CRD check or a
        watch's first list has failed (RBAC, the apiserver: False at once,
        its error in the health), or timeout (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.refresh()
            if self.synced():
                return True
            failed_check = self.operator and not self._check_ok and self.health.errors_total
            if failed_check or any(r.last_error and not r.synced for r in self._all()):
                return False
            await asyncio.sleep(0.05)
        return False

    def installed(self) -> Mapping[str, bool]:
        return dict(self._present)

    def discovery(self) -> Discovery:
        """The servers the cached objects imply; recomputed only when a
        cache changed."""
        generation = tuple((id(r), r.generation) for r in self._all())
        if self._memo is not None and self._memo[0] == generation:
            return self._memo[1]
        objects = [
            obj
            for name in RESOURCES
            for r in self._reflectors.get(name, [])
            for obj in r.cache.values()
        ]
        result = Discovery()
        if self.operator:
            result += operator_servers(objects, self._pods("operator pods"))
        if self.pod_selector:
            result += selector_servers(
                self._pods("selected pods"), self.pod_port, self.pod_selector
            )
        self._memo = (generation, result)
        return result

    def _pods(self, name: str) -> list[ScraperPod]:
        return [p for r in self._reflectors.get(name, []) for p in r.cache.values()]
