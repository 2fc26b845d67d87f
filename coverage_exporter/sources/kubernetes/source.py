"""The Kubernetes data source: list+watch caches of the objects the coverage
model compares, and a cheap ClusterSnapshot of them on demand.

Cluster-wide reflectors run for nodes, services, endpoints, endpointslices
and daemonsets. Pods are watched only for the Services in scope
(`set_pod_scope`), one namespaced reflector per distinct (namespace,
selector): watching every pod of a 100k-node cluster is what this avoids.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, cast

import aiohttp
from kubernetes.client import Configuration

from coverage_exporter import defaults
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.health import SOURCE_KUBERNETES, SourceHealth
from coverage_exporter.logs import fields
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    DaemonSet,
    Endpoints,
    EndpointSlice,
    Node,
    Pod,
    Service,
    ServiceKey,
)
from coverage_exporter.model.owners import (
    Owner,
    PodKey,
    apply_owner_facts,
    daemonset_prefixes,
    infer_daemonset_owners,
    owners_to_confirm,
)
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.errors import DEFAULT_LIMITS, Limits, SourceError
from coverage_exporter.sources.kubernetes import kubeconfig, pod_table
from coverage_exporter.sources.kubernetes import parse as k8s_parse
from coverage_exporter.sources.kubernetes.api import ApiClient, ApiError
from coverage_exporter.sources.kubernetes.kubeconfig import (
    KubeAuth,
    credential_files,
    exec_plugin,
    load_configuration,
)
from coverage_exporter.sources.kubernetes.node_decoder import NodePageDecoder
from coverage_exporter.sources.kubernetes.reflector import Reflector

log = logging.getLogger("coverage_exporter.kubernetes")

API = {
    "nodes": "/api/v1",
    "services": "/api/v1",
    "endpoints": "/api/v1",
    "endpointslices": "/apis/discovery.k8s.io/v1",
    "daemonsets": "/apis/apps/v1",
    "pods": "/api/v1",
}
"""Every resource listed and watched, by the API path it is served under:
what the shipped ClusterRole must grant (tests/unit/test_deploy.py)."""


OWNER_LOOKUPS_PER_CYCLE = 200
"""Pods whose owner is read from their metadata in one cycle (one small
LIST each, 8 at a time): a DaemonSet of 100k renamed pods is confirmed
over cycles, and the rest are said to be unconfirmed meanwhile."""
OWNER_LOOKUP_CONCURRENCY = 8

POD_FORMS = defaults.KUBERNETES_POD_FORMS
POD_FORM_TABLE, POD_FORM_FULL = POD_FORMS

PodScopeKey = tuple[str, str]
"""(namespace, label selector string): Services with equal selectors in one
namespace share one pod reflector."""


def label_selector(selector: Mapping[str, str]) -> str:
    """A Service selector as a labelSelector query (sorted: a stable key)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


class KubernetesSource:
    def __init__(
        self,
        configuration: Configuration | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        in_cluster: bool | None = None,
        page_size: int = 500,
        watch_timeout_seconds: int = 300,
        request_timeout_seconds: float = 60.0,
        watch_idle_seconds: float = parse_seconds(defaults.KUBERNETES_WATCH_IDLE_TIMEOUT),
        namespaces: Iterable[str] = (),
        max_pod_watches: int = defaults.KUBERNETES_MAX_POD_WATCHES,
        limits: Limits = DEFAULT_LIMITS,
        pod_form: str = defaults.KUBERNETES_POD_FORM,
        node_decoder: NodePageDecoder | None = None,
        list_deadline_seconds: float = parse_seconds(defaults.SOURCE_DEADLINE),
    ) -> None:
        """configuration: an already loaded client Configuration (tests);
        otherwise it is loaded at start() from kubeconfig/context/in_cluster
        (see kubeconfig.load_configuration), and loaded again when its files
        change or the API refuses the credentials.

        namespaces: watch Services, Endpoints, EndpointSlices and DaemonSets
        only there (one watch per namespace and resource); empty: the whole
        cluster. max_pod_watches bounds the pod reflectors (one watch each).
        pod_form: POD_FORM_TABLE (a scope whose server cannot serve it falls
        back to full objects on its own) or POD_FORM_FULL. node_decoder:
        where the Node LIST pages are parsed (a worker process; None: here).

        list_deadline_seconds: --source-deadline. A relist (after a 410),
        the Nodes' above all (all pages; 5 s at 100k Nodes here,
        bench/analysis.md), still under way after it makes the source down
        until it completes: a relist runs outside the cycles, but leaves them
        reading the previous list, as stale as the last answer of a
        Prometheus that missed its deadline. Not the request timeout: that
        bounds each page (a stuck one fails), not a relist whose pages each
        come in time."""
        self.health = SourceHealth(source=SOURCE_KUBERNETES)
        self._configuration = configuration
        self._config_args = (kubeconfig, context, in_cluster)
        self._reflector_args: dict[str, Any] = {
            "page_size": page_size,
            "watch_timeout_seconds": watch_timeout_seconds,
            "watch_idle_seconds": watch_idle_seconds,
            "list_deadline_seconds": list_deadline_seconds,
        }
        self._request_timeout = request_timeout_seconds
        self._namespaces = tuple(sorted(set(namespaces)))
        if max_pod_watches < 0:
            raise ValueError("max_pod_watches must be 0 or more")
        self.max_pod_watches = max_pod_watches
        if pod_form not in POD_FORMS:
            raise ValueError(f"pod_form must be one of {', '.join(POD_FORMS)}")
        self.pod_form = pod_form
        self.pod_scopes_unwatched = 0
        """Pod scopes (namespace, selector) left unwatched by the cap."""
        self._limits = limits
        self._node_decoder = node_decoder
        self._api: ApiClient | None = None
        self.nodes: Reflector[str, Node] | None = None
        self.services: Reflector[ServiceKey, Service] | None = None
        self.endpoints: Reflector[ServiceKey, Endpoints] | None = None
        self.endpointslices: Reflector[ServiceKey, EndpointSlice] | None = None
        self.daemonsets: Reflector[ServiceKey, DaemonSet] | None = None
        self._pod_reflectors: dict[PodScopeKey, Reflector[ServiceKey, Pod]] = {}
        self._pod_scope: dict[ServiceKey, PodScopeKey] = {}
        self._pod_selectors: dict[PodScopeKey, Mapping[str, str]] = {}
        # Derived views reused while the reflector's generation is unchanged.
        self._memo: dict[str, tuple[Any, Any]] = {}
        self._owner_facts: dict[PodKey, Owner] = {}
        """Owners read from pods' metadata (model.owners, issue #19 item 8)."""
        self._owner_facts_version = 0
        self._confirm_memo: dict[PodScopeKey, tuple[tuple[Any, ...], list[str]]] = {}
        self.owners_unconfirmed = 0
        """Pods whose owner should be read from metadata and is not yet."""
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def api(self) -> ApiClient | None:
        """The API client, once started: shared by sources.operator."""
        return self._api

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Load the configuration and start the cluster-wide reflectors.
        Raises SourceError when no usable configuration is found."""
        if self._api is not None:
            return
        reload = None
        files: tuple[str, ...] = ()
        plugin = None
        if self._configuration is None:
            # May run an exec credential plugin: keep it off the event loop.
            try:
                # An exec plugin runs here too; see kubeconfig.EXEC_TIMEOUT_SECONDS.
                async with asyncio.timeout(kubeconfig.EXEC_TIMEOUT_SECONDS):
                    self._configuration = await asyncio.to_thread(
                        load_configuration, *self._config_args
                    )
            except TimeoutError:
                raise SourceError(
                    f"loading the kubeconfig did not finish within "
                    f"{kubeconfig.EXEC_TIMEOUT_SECONDS:g}s (an exec plugin that hangs?)"
                ) from None
            reload = functools.partial(load_configuration, *self._config_args)
            files = credential_files(self._configuration, *self._config_args[:2])
            plugin = exec_plugin(*self._config_args[:2])
        try:
            auth = KubeAuth.from_configuration(
                self._configuration, reload=reload, files=files, plugin=plugin
            )
        except (OSError, ValueError, SourceError) as exc:
            raise SourceError(f"kubernetes connection settings not usable: {exc}") from exc
        self._api = ApiClient(
            auth, self.health, request_timeout_seconds=self._request_timeout, limits=self._limits
        )
        await self._api.open()
        if self._node_decoder is not None:
            self._node_decoder.warm()
        self.nodes = self._reflector(
            f"{API['nodes']}/nodes", k8s_parse.NODES, "nodes", page_decoder=self._node_decoder
        )
        self.services = self._namespaced("services", k8s_parse.SERVICES)
        self.endpoints = self._namespaced("endpoints", k8s_parse.ENDPOINTS)
        self.endpointslices = self._namespaced("endpointslices", k8s_parse.ENDPOINTSLICES)
        self.daemonsets = self._namespaced("daemonsets", k8s_parse.DAEMONSETS)
        for reflector in self._cluster_reflectors():
            reflector.start()
        watching = ",".join(r.name for r in self._cluster_reflectors())
        log.info("watching the cluster", extra=fields(resources=watching))

    def _namespaced(self, resource: str, parser: Any) -> Any:
        """One cluster-wide reflector, or one per --namespace merged into
        one view: a namespace-scoped exporter watches only its namespaces
        (and needs RBAC only there)."""
        api = API[resource]
        if not self._namespaces:
            return self._reflector(f"{api}/{resource}", parser, resource)
        return ReflectorGroup(
            resource,
            [
                self._reflector(f"{api}/namespaces/{ns}/{resource}", parser, f"{resource} {ns}")
                for ns in self._namespaces
            ],
        )

    async def stop(self) -> None:
        reflectors = [*self._cluster_reflectors(), *self._pod_reflectors.values()]
        await asyncio.gather(*(r.stop() for r in reflectors), *self._stopping)
        if self._node_decoder is not None:
            self._node_decoder.release()
        self._pod_reflectors.clear()
        self._pod_scope.clear()
        if self._api is not None:
            await self._api.close()
            self._api = None
        self.health.up = False

    def _reflector(
        self,
        path: str,
        parser: Any,
        name: str,
        page_decoder: NodePageDecoder | None = None,
        **params: str,
    ) -> Reflector[Any, Any]:
        assert self._api is not None
        return Reflector(
            self._api,
            path,
            parser,
            self.health,
            name=name,
            params=params,
            on_state_change=self._refresh_health,
            page_decoder=page_decoder,
            **self._reflector_args,
        )

    def _cluster_reflectors(self) -> list[Reflector[Any, Any]]:
        return _members(
            self.nodes, self.services, self.endpoints, self.endpointslices, self.daemonsets
        )

    @property
    def pod_watches(self) -> int:
        """Pod reflectors running now (each holds one watch)."""
        return len(self._pod_reflectors)

    def reflectors(self) -> list[Reflector[Any, Any]]:
        """Every running reflector (for logs, metrics and tests)."""
        return [*self._cluster_reflectors(), *self._pod_reflectors.values()]

    # --- sync ---------------------------------------------------------------------

    def scope_ready(self) -> bool:
        """Services and Endpoints are listed: enough to know which Services'
        pods to watch (model.scope), long before the Nodes at 100k."""
        out = _members(self.services, self.endpoints)
        return bool(out) and all(r.synced for r in out)

    def is_synced(self) -> bool:
        """Every cluster-wide reflector has completed its first LIST."""
        reflectors = self._cluster_reflectors()
        return bool(reflectors) and all(r.synced for r in reflectors)

    async def wait_synced(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True once every reflector has completed its first LIST; False on
        timeout, with the laggards and their last error logged and in
        health.last_error. The reflectors keep trying either way."""
        if self._api is None:
            raise RuntimeError("wait_synced() before start()")
        try:
            await self._wait(self.reflectors(), timeout)
        except SourceError as exc:
            log.warning("not every resource is listed yet", extra=fields(err=exc))
            self.health.last_error = str(exc)
            return False
        return True

    async def ensure_pods_synced(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait for the pod reflectors of the current scope; SourceError
        naming the laggards on timeout (the collector logs it and goes on:
        unsynced scopes are simply absent from snapshot().pods).

        Reflectors that already failed are named at once, not waited for:
        one pod scope that cannot list (RBAC, a broken selector) must not
        hold every cycle for the whole timeout."""
        pending = [r for r in self._pod_reflectors.values() if not r.synced]
        settled = await asyncio.gather(*(r.wait_settled(timeout) for r in pending))
        laggards = [
            f"{r.name} ({r.last_error or f'no answer after {timeout:.0f}s'})"
            for r, done in zip(pending, settled, strict=True)
            if not (done and r.synced)
        ]
        await self.confirm_owners()
        if laggards:
            raise SourceError(f"pods not listed: {', '.join(laggards)}")

    async def confirm_owners(self) -> None:
        """Read the owner of the pods whose name does not show it from their
        metadata (model.owners.owners_to_confirm), at most
        OWNER_LOOKUPS_PER_CYCLE a cycle; Table-form scopes only (full
        objects carry their owner). What cannot be read stays as the name
        says, and the count is logged: never a silent fallback."""
        prefixes = self._view("daemonset prefixes", self.daemonsets, daemonset_prefixes)
        live: set[PodKey] = set()
        wanted: list[PodKey] = []
        for scope_key, reflector in self._pod_reflectors.items():
            namespace, _ = scope_key
            live.update(reflector.cache.keys())
            if not reflector.synced or reflector.parser.accept != pod_table.TABLE_ACCEPT:
                continue
            view = self._pod_view(scope_key, reflector, prefixes)
            # The same view (memoised) and facts give the same answer: a
            # steady cycle does not walk 100k pods again.
            stamp = (id(reflector), reflector.generation, id(prefixes), self._owner_facts_version)
            memo = self._confirm_memo.get(scope_key)
            if memo is not None and memo[0] == stamp:
                names = memo[1]
            else:
                selector = self._pod_selectors.get(scope_key, {})
                names = owners_to_confirm(view, namespace, selector, prefixes, self._owner_facts)
                self._confirm_memo[scope_key] = (stamp, names)
            wanted += [(namespace, n) for n in names]
        for scope_key in self._confirm_memo.keys() - self._pod_reflectors.keys():
            del self._confirm_memo[scope_key]
        gone = [k for k in self._owner_facts if k not in live]
        for key in gone:
            del self._owner_facts[key]
        wanted = list(dict.fromkeys(wanted))
        batch, later = wanted[:OWNER_LOOKUPS_PER_CYCLE], len(wanted) - OWNER_LOOKUPS_PER_CYCLE
        gate = asyncio.Semaphore(OWNER_LOOKUP_CONCURRENCY)
        errors: list[str] = []

        async def look(key: PodKey) -> tuple[PodKey, Owner | None]:
            async with gate:
                try:
                    return key, await self._owner_of(*key)
                except (ApiError, SourceError, k8s_parse.ParseError) as exc:
                    errors.append(str(exc))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(httpclient.describe(exc))
                return key, None

        found = await asyncio.gather(*(look(k) for k in batch))
        learned = {k: o for k, o in found if o is not None}
        if learned or gone:
            self._owner_facts.update(learned)
            self._owner_facts_version += 1
        unconfirmed = max(0, later) + len(batch) - len(learned)
        if unconfirmed != self.owners_unconfirmed or errors:
            if unconfirmed:
                log.warning(
                    "pod owners not confirmed from metadata: their names do not show their "
                    "DaemonSet, so their Services may be judged on the selected pods alone",
                    extra=fields(pods=unconfirmed, err=errors[0] if errors else "later cycles"),
                )
            elif self.owners_unconfirmed:
                log.info("every pod owner that names do not show is confirmed")
        if learned:
            log.info("pod owners read from metadata", extra=fields(pods=len(learned)))
        self.owners_unconfirmed = unconfirmed

    async def _owner_of(self, namespace: str, name: str) -> Owner | None:
        assert self._api is not None
        body = await self._api.get(
            f"{API['pods']}/namespaces/{namespace}/pods",
            {**pod_table.OWNER_PARAMS, "fieldSelector": f"metadata.name={name}"},
            accept=pod_table.TABLE_ACCEPT,
        )
        return pod_table.owner_of(body, name)

    async def _wait(self, reflectors: Sequence[Reflector[Any, Any]], seconds: float) -> None:
        results = await asyncio.gather(*(r.wait_synced(seconds) for r in reflectors))
        laggards = [
            f"{r.name} ({r.last_error or 'no answer yet'})"
            for r, ok in zip(reflectors, results, strict=True)
            if not ok
        ]
        if laggards:
            raise SourceError(f"not synced after {seconds:.0f}s: {', '.join(laggards)}")

    def _refresh_health(self) -> None:
        reflectors = self.reflectors()
        up = bool(reflectors) and all(r.synced and r.healthy for r in reflectors)
        if up:
            # Watch-driven: while every watch is healthy the cache is current,
            # so "last success" is now, not when the source last came up.
            self.health.last_success_timestamp = time.time()
            self.health.last_error = ""
        self.health.up = up

    # --- pod scope ------------------------------------------------------------------

    def set_pod_scope(self, services: Iterable[Service]) -> None:
        """Watch the pods selected by these Services, and stop watching pods
        for Services no longer given. Services without a selector have no
        pods to watch and are ignored. New reflectors start syncing in the
        background: await ensure_pods_synced() before relying on them."""
        if self._api is None:
            raise RuntimeError("set_pod_scope() before start()")
        scope: dict[ServiceKey, PodScopeKey] = {}
        selectors: dict[PodScopeKey, Mapping[str, str]] = {}
        for service in services:
            if service.selector:
                key = (service.namespace, label_selector(service.selector))
                scope[service.key] = key
                selectors[key] = service.selector
        wanted = self._capped(set(scope.values()))
        self._pod_selectors = {key: selectors[key] for key in wanted}
        for key in set(self._pod_reflectors) - wanted:
            reflector = self._pod_reflectors.pop(key)
            self._memo.pop(f"pods {key}", None)
            log.info("pod scope left", extra=fields(resource=reflector.name))
            # Stopping only cancels a task; no need to make the caller await.
            task = asyncio.get_running_loop().create_task(reflector.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        for key in wanted - set(self._pod_reflectors):
            namespace, selector = key
            parser: k8s_parse.ObjectParser[ServiceKey, Pod] = (
                pod_table.PodTableParser(namespace)
                if self.pod_form == POD_FORM_TABLE
                else k8s_parse.PODS
            )
            reflector = self._reflector(
                f"{API['pods']}/namespaces/{namespace}/pods",
                parser,
                f"pods {namespace} {selector}",
                labelSelector=selector,
            )
            self._pod_reflectors[key] = reflector
            reflector.start()
        self._pod_scope = scope
        self.health.pod_watches = len(self._pod_reflectors)
        self.health.pod_scopes_unwatched = self.pod_scopes_unwatched
        self._refresh_health()

    def _capped(self, wanted: set[PodScopeKey]) -> set[PodScopeKey]:
        """At most max_pod_watches scopes: those watched already first (no
        churn), then in sorted order. Services of a scope left out have no
        pods in the snapshot, so they are withheld, never compared as empty."""
        if len(wanted) <= self.max_pod_watches:
            if self.pod_scopes_unwatched:
                log.info("every pod scope is watched again")
            self.pod_scopes_unwatched = 0
            return wanted
        kept = sorted(wanted & self._pod_reflectors.keys())[: self.max_pod_watches]
        room = self.max_pod_watches - len(kept)
        kept += sorted(wanted - set(kept))[:room]
        unwatched = len(wanted) - len(kept)
        if unwatched != self.pod_scopes_unwatched:
            log.warning(
                "more pod scopes (namespace, selector) than --kubernetes-max-pod-watches; "
                "the Services of the others are not compared",
                extra=fields(wanted=len(wanted), watching=len(kept), unwatched=unwatched),
            )
        self.pod_scopes_unwatched = unwatched
        return set(kept)

    # --- snapshot ---------------------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        """What the caches hold now. Cheap: a derived view is rebuilt only
        when its reflector changed since the previous snapshot. The mappings
        returned are never mutated afterwards; do not mutate them either.
        Pods appear only for Services whose pod reflector has synced, so an
        empty list means "no pods", never "not known yet"."""
        self._refresh_health()
        daemonsets = self._view("daemonsets", self.daemonsets, dict)
        prefixes = self._view("daemonset prefixes", self.daemonsets, daemonset_prefixes)
        pods: dict[ServiceKey, Sequence[Pod]] = {}
        for service_key, scope_key in self._pod_scope.items():
            reflector = self._pod_reflectors.get(scope_key)
            if reflector is not None and reflector.synced:
                pods[service_key] = self._pod_view(scope_key, reflector, prefixes)
        return ClusterSnapshot(
            nodes=self._view("nodes", self.nodes, dict),
            services=self._view("services", self.services, dict),
            endpoints=self._view("endpoints", self.endpoints, dict),
            endpointslices=self._view("endpointslices", self.endpointslices, _group_slices),
            pods=pods,
            daemonsets=daemonsets,
        )

    def _pod_view(
        self,
        scope_key: PodScopeKey,
        reflector: Reflector[ServiceKey, Pod],
        prefixes: Any,
    ) -> tuple[Pod, ...]:
        """The scope's pods, owners inferred where the form had none (Table
        rows; model.owners), then those read from metadata (confirm_owners):
        here, because only the snapshot knows both the pods and the
        DaemonSets. Rebuilt when either changed."""
        name = f"pods {scope_key}"
        memo = self._memo.get(name)
        stamp = (id(reflector), reflector.generation, id(prefixes), self._owner_facts_version)
        if memo is not None and memo[0] == stamp:
            return memo[1]
        namespace, _ = scope_key
        view = infer_daemonset_owners(
            reflector.cache.values(), namespace, self._pod_selectors.get(scope_key, {}), prefixes
        )
        # Metadata read for the pods the names do not explain wins.
        view = apply_owner_facts(view, namespace, self._owner_facts)
        self._memo[name] = (stamp, view)
        return view

    def _view(
        self,
        name: str,
        reflector: Reflector[Any, Any] | None,
        build: Callable[[Mapping[Any, Any]], Any],
    ) -> Any:
        if reflector is None:
            return build({})
        memo = self._memo.get(name)
        # id() guards against a new reflector reusing a name (pod scopes).
        stamp = (id(reflector), reflector.generation)
        if memo is not None and memo[0] == stamp:
            return memo[1]
        view = build(reflector.cache)
        self._memo[name] = (stamp, view)
        return view


class ReflectorGroup:
    """Reflectors of one resource in several namespaces, read as one: what
    KubernetesSource.snapshot needs of a Reflector (cache, generation)."""

    def __init__(self, name: str, members: Sequence[Reflector[Any, Any]]) -> None:
        self.name = name
        self.members = list(members)

    @property
    def cache(self) -> Mapping[Any, Any]:
        # Keys hold the namespace, so the members never collide. Read only:
        # ChainMap types its maps as mutable, the caches are not.
        return collections.ChainMap(
            *(cast("MutableMapping[Any, Any]", r.cache) for r in self.members)
        )

    @property
    def generation(self) -> tuple[int, ...]:
        return tuple(r.generation for r in self.members)


def _group_slices(cache: Mapping[Any, EndpointSlice]) -> dict[ServiceKey, list[EndpointSlice]]:
    grouped: dict[ServiceKey, list[EndpointSlice]] = {}
    for endpoint_slice in cache.values():
        if endpoint_slice.service_name:  # slices not owned by a Service: not ours
            key = (endpoint_slice.namespace, endpoint_slice.service_name)
            grouped.setdefault(key, []).append(endpoint_slice)
    return grouped


def _members(
    *reflectors: Reflector[Any, Any] | ReflectorGroup | None,
) -> list[Reflector[Any, Any]]:
    """The reflectors, a per-namespace group counting as its members."""
    out: list[Reflector[Any, Any]] = []
    for r in reflectors:
        if isinstance(r, ReflectorGroup):
            out.extend(r.members)
        elif r is not None:
            out.append(r)
    return out
