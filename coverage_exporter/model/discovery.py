"""The Prometheus servers that run in the cluster, found from the Kubernetes
objects alone: the Prometheus Operator's `Prometheus` (v1) and
`PrometheusAgent` (v1alpha1) objects with the pods of their StatefulSets,
and pods matched by a label selector (servers the Operator does not run).

Why from the objects: a list of URLs kept by hand goes stale the day someone
scales Prometheus, and one URL in front of several pods (the Operator's
headless `prometheus-operated` Service) mixes replicas and shards. Each pod
is read directly, at its pod IP and web port, and its place among shards
and replicas comes from the object that made it, never from a guess.

What the Operator v0.85.0 does, read in its source:
- StatefulSet `prometheus-<name>` for shard 0 and `prometheus-<name>-shard-<i>`
  for the others (`prom-agent-` for PrometheusAgent; pkg/prometheus/common.go
  `PrefixedName`, `prometheusNameByShard`); pods append `-<ordinal>`, the
  replica. Pods carry `operator.prometheus.io/name` and
  `operator.prometheus.io/shard`.
- `spec.shards` below 1 or unset is 1; `spec.replicas` unset is 1, negative
  is 1, 0 runs no pod (`shardsNumber`, `ReplicasNumberPtr`).
- The web port is container port 9090 named `spec.portName` (default `web`);
  with `listenLocal: true` there is none and Prometheus listens on
  127.0.0.1 (`MakeContainerPorts`, promcfg.go): nothing outside the pod can
  read it.
- `spec.web.tlsConfig` makes the server https (`PrometheusURIScheme`).
- Prometheus always gets `--web.route-prefix`, `spec.routePrefix` or `/`
  (promcfg.go: `WebRoutePrefix`): so the path of `spec.externalUrl` does NOT
  move the API when `routePrefix` is unset (the issue text assumed it did;
  the flag the Operator passes wins over Prometheus's own default).

Pure: plain data in (model objects built by sources.kubernetes.discovery), plain data
out; the collector turns the result into the servers it reads.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from coverage_exporter.model.objects import ServerIdentity

PROMETHEUS = "Prometheus"
PROMETHEUS_AGENT = "PrometheusAgent"
PREFIX = {PROMETHEUS: "prometheus", PROMETHEUS_AGENT: "prom-agent"}
"""The Operator's name prefix of each kind's StatefulSets and pods."""
NAME_LABEL = "operator.prometheus.io/name"
SHARD_LABEL = "operator.prometheus.io/shard"
DEFAULT_PORT_NAME = "web"
SELECTED = "pod selector"
"""FoundServer.credentials of every pod found by the selector."""
HOW_DISCOVERED = "discovered"
"""ServerIdentity.how of a server placed by its Operator object."""


@dataclass(frozen=True, slots=True)
class ScraperObject:
    """What discovery reads of one Prometheus or PrometheusAgent object."""

    kind: str
    namespace: str
    name: str
    shards: int = 1
    replicas: int = 1
    scheme: str = "http"
    route_prefix: str = "/"
    port_name: str = DEFAULT_PORT_NAME
    listen_local: bool = False
    daemonset: bool = False
    """A PrometheusAgent in `mode: DaemonSet`: one pod per node, each
    scraping its own node's pods; no shards, no replicas."""
    problem: str = ""
    """What is malformed in its spec; its servers are then not judged."""

    @property
    def ref(self) -> str:
        """How findings and the `discovery` label name it."""
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def scraper(self) -> str:
        """The logical Prometheus, as the Operator's external label
        `prometheus: <ns>/<name>` names it (model.topology)."""
        return f"{self.namespace}/{self.name}"

    def statefulset(self, shard: int) -> str:
        base = f"{PREFIX[self.kind]}-{self.name}"
        return base if shard == 0 else f"{base}-shard-{shard}"

    def pod_name(self, shard: int, replica: int) -> str:
        return f"{self.statefulset(shard)}-{replica}"

    def replica_name(self, replica: int) -> str:
        """The replica as model.topology names it from the external labels:
        the pod name without its shard."""
        return f"{PREFIX[self.kind]}-{self.name}-{replica}"


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container: str
    name: str
    port: int


@dataclass(frozen=True, slots=True)
class ScraperPod:
    """What discovery reads of one pod."""

    namespace: str
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    owner_kind: str = ""
    owner_name: str = ""
    """Its controller (a StatefulSet for the Operator's pods)."""
    ip: str = ""
    phase: str = ""
    ready: bool = False
    deleting: bool = False
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True, slots=True)
class FoundServer:
    """One server discovery found, readable or not."""

    name: str
    """`<namespace>/<pod>`: the `server` label."""
    found_by: str
    """The object that made it (`Prometheus monitoring/k8s`) or the pod
    selector (`pod selector app=prometheus`)."""
    url: str = ""
    """Base URL at the pod IP and web port, route prefix included; empty
    when there is none (no pod yet, no IP, no such port, listenLocal)."""
    identity: ServerIdentity | None = None
    """Its place among shards and replicas, from the object; None for pods
    found by a selector (recognised from their answers, model.topology)."""
    pod_uid: str = ""
    unreadable: str = ""
    """Why it is not read now (no pod, pod not Ready, no IP, ...): its
    replica's coverage is then unknown, never covered nor missing. Empty
    when it is read."""
    credentials: str = ""
    """Which credentials it is read with: its object (`Prometheus ns/name`)
    or SELECTED; see the fleet file's `discovered` entries."""

    @property
    def readable(self) -> bool:
        return bool(self.url) and not self.unreadable


@dataclass(frozen=True, slots=True)
class DiscoveryFinding:
    """Something discovery cannot use, said once per object or pod."""

    subject: str
    reason: str
    """listen_local, malformed_spec, daemonset_mode, port_missing,
    shard_label_mismatch."""
    message: str


@dataclass(frozen=True, slots=True)
class Discovery:
    servers: tuple[FoundServer, ...] = ()
    findings: tuple[DiscoveryFinding, ...] = ()
    leaving: tuple[str, ...] = ()
    """Pods of a shard or replica the object no longer asks for (scaled
    down, object deleted): not judged while they go, never reported down."""

    def __add__(self, other: Discovery) -> Discovery:
        return Discovery(
            self.servers + other.servers,
            self.findings + other.findings,
            self.leaving + other.leaving,
        )


# --- addresses ----------------------------------------------------------------------


def base_url(scheme: str, ip: str, port: int, route_prefix: str = "/") -> str:
    """`scheme://ip:port/prefix` with no trailing slash; IPv6 bracketed."""
    host = f"[{ip}]" if ":" in ip else ip
    prefix = "/" + route_prefix.strip("/") if route_prefix.strip("/") else ""
    return f"{scheme}://{host}:{port}{prefix}"


def address_key(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL, the host normalised (an IP in its
    canonical form): two URLs with the same key reach the same server."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    host = parts.hostname.lower()
    with contextlib.suppress(ValueError):  # a name, not an IP
        host = str(ipaddress.ip_address(host))
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.scheme, host, port)


def _port(pod: ScraperPod, port_name: str, container: str | None = None) -> int | None:
    for p in pod.ports:
        if p.name == port_name and (container is None or p.container == container):
            return p.port
    return None


def _unreadable(pod: ScraperPod) -> str:
    if pod.deleting:
        return "pod terminating"
    if not pod.ip:
        return f"pod has no IP (phase {pod.phase or 'unknown'})"
    if not pod.ready:
        return "pod not Ready"
    return ""


# --- the Operator's objects -----------------------------------------------------------


def operator_servers(objects: Iterable[ScraperObject], pods: Iterable[ScraperPod]) -> Discovery:
    """Every shard x replica each object asks for, with the pod that runs
    it (or a placeholder that cannot be read yet), and what cannot be used."""
    by_name = {(p.namespace, p.name): p for p in pods if p.labels.get(NAME_LABEL)}
    claimed: set[tuple[str, str]] = set()
    servers: list[FoundServer] = []
    findings: list[DiscoveryFinding] = []
    for obj in sorted(objects, key=lambda o: (o.namespace, o.name, o.kind)):
        found, problems = _object_servers(obj, by_name, claimed)
        servers += found
        findings += problems
    leaving = sorted(f"{ns}/{name}" for ns, name in by_name.keys() - claimed)
    return Discovery(tuple(servers), tuple(findings), tuple(leaving))


def _object_servers(
    obj: ScraperObject,
    by_name: Mapping[tuple[str, str], ScraperPod],
    claimed: set[tuple[str, str]],
) -> tuple[list[FoundServer], list[DiscoveryFinding]]:
    if obj.problem or obj.daemonset or obj.listen_local:
        # Its pods are its own: neither judged one by one nor strays.
        claimed.update(k for k, pod in by_name.items() if _made_by(pod, obj))
    if obj.problem:
        return [], [
            DiscoveryFinding(
                obj.ref,
                "malformed_spec",
                f"{obj.ref}: {obj.problem}; its servers are not judged until the spec is fixed",
            )
        ]
    if obj.daemonset:
        return [], [
            DiscoveryFinding(
                obj.ref,
                "daemonset_mode",
                f"{obj.ref} runs in DaemonSet mode: each pod scrapes its own node's pods, so no "
                "pod holds a share to compare; not judged (list a Thanos Query over them "
                "with --prometheus-url to judge the whole)",
            )
        ]
    servers: list[FoundServer] = []
    findings: list[DiscoveryFinding] = []
    for shard in range(obj.shards):
        for replica in range(obj.replicas):
            identity = ServerIdentity(
                scraper=obj.scraper,
                replica=obj.replica_name(replica),
                shard=shard,
                shards=obj.shards,
                how=HOW_DISCOVERED,
            )
            pod_name = obj.pod_name(shard, replica)
            base = FoundServer(
                name=f"{obj.namespace}/{pod_name}",
                found_by=obj.ref,
                identity=identity,
                credentials=obj.ref,
            )
            if obj.listen_local:
                servers.append(replace(base, unreadable="listenLocal: serves 127.0.0.1 only"))
                continue
            pod = by_name.get((obj.namespace, pod_name))
            if pod is None or not _belongs(pod, obj, shard):
                servers.append(replace(base, unreadable="no pod yet"))
                continue
            claimed.add((pod.namespace, pod.name))
            label = pod.labels.get(SHARD_LABEL)
            if label is not None and label != str(shard):
                findings.append(
                    DiscoveryFinding(
                        f"pod {base.name}",
                        "shard_label_mismatch",
                        f"pod {base.name} is labelled {SHARD_LABEL}={label} but its StatefulSet "
                        f"{obj.statefulset(shard)} is shard {shard}; judged as shard {shard}",
                    )
                )
            port = _port(pod, obj.port_name, "prometheus") or _port(pod, obj.port_name)
            why = _unreadable(pod)
            if port is None and not why:
                findings.append(
                    DiscoveryFinding(
                        f"pod {base.name}",
                        "port_missing",
                        f"pod {base.name} has no container port named {obj.port_name!r} "
                        f"({obj.ref} spec.portName): it cannot be read",
                    )
                )
                why = f"no port named {obj.port_name}"
            url = base_url(obj.scheme, pod.ip, port, obj.route_prefix) if pod.ip and port else ""
            servers.append(replace(base, url=url, pod_uid=pod.uid, unreadable=why))
    if obj.listen_local:
        findings.append(
            DiscoveryFinding(
                obj.ref,
                "listen_local",
                f"{obj.ref} sets listenLocal: true, so its servers answer only inside their "
                "pods; their share is unknown. Read them through a sidecar or set "
                "listenLocal: false",
            )
        )
    return servers, findings


def _made_by(pod: ScraperPod, obj: ScraperObject) -> bool:
    """Some pod of the object's StatefulSets (or DaemonSet)."""
    base = f"{PREFIX[obj.kind]}-{obj.name}"
    return (
        pod.namespace == obj.namespace
        and pod.labels.get(NAME_LABEL) == obj.name
        and (pod.owner_name == base or pod.owner_name.startswith(f"{base}-shard-"))
    )


def _belongs(pod: ScraperPod, obj: ScraperObject, shard: int) -> bool:
    """The pod of that name is this object's: its name label, and, when it
    says, the StatefulSet that owns it."""
    if pod.labels.get(NAME_LABEL) != obj.name:
        return False
    return not pod.owner_kind or (
        pod.owner_kind == "StatefulSet" and pod.owner_name == obj.statefulset(shard)
    )


# --- pods found by a label selector ---------------------------------------------------


def selector_servers(
    pods: Iterable[ScraperPod], port_name: str, selector: str, scheme: str = "http"
) -> Discovery:
    """Each selected pod is one server, placed among shards and replicas by
    its own answers (model.topology). port_name: a container port's name,
    or a number. Pods the Operator runs are left to their object, so that
    no server is judged twice."""
    found_by = f"pod selector {selector}"
    servers: list[FoundServer] = []
    findings: list[DiscoveryFinding] = []
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        if pod.labels.get(NAME_LABEL):
            continue
        name = f"{pod.namespace}/{pod.name}"
        # A number need not be declared: many charts leave the port unnamed.
        port = int(port_name) if port_name.isdigit() else _port(pod, port_name)
        why = _unreadable(pod)
        if port is None and not why:
            findings.append(
                DiscoveryFinding(
                    f"pod {name}",
                    "port_missing",
                    f"pod {name} matches {found_by} but has no container port named "
                    f"{port_name!r}: it cannot be read",
                )
            )
            why = f"no port named {port_name}"
        url = base_url(scheme, pod.ip, port) if pod.ip and port else ""
        servers.append(
            FoundServer(
                name=name,
                found_by=found_by,
                url=url,
                pod_uid=pod.uid,
                unreadable=why,
                credentials=SELECTED,
            )
        )
    return Discovery(tuple(servers), tuple(findings))


# --- a server's configuration against its object ----------------------------------------


def configuration_lags(identity: ServerIdentity, shard: tuple[int, int] | None) -> str:
    """Why a discovered server's loaded configuration is not yet the one its
    object asks for, or "" when it is (or cannot be told: no hashmod rule).

    shard: (shard, shards) of the hashmod rule the server loaded
    (model.topology.hashmod_shard). When the object's shard count changes,
    the Operator rewrites the Secret at once, but each pod loads it only
    after its reloader sees it (the kubelet's Secret refresh: a minute or
    more in a cluster). Until then the shards of a replica split the
    targets by the old count, and their union is not the whole: judged,
    that would be a gap that is only a reload pending."""
    if identity.how != HOW_DISCOVERED or shard is None:
        return ""
    if shard == (identity.shard, identity.shards):
        return ""
    return (
        f"its loaded configuration keeps shard {shard[0]} of {shard[1]}, its object asks "
        f"for shard {identity.shard} of {identity.shards}: the new configuration is not "
        "loaded yet"
    )


# --- combining and following --------------------------------------------------------------


def without_explicit(
    found: Sequence[FoundServer], explicit_urls: Iterable[str]
) -> tuple[list[FoundServer], list[FoundServer]]:
    """(found servers to judge, found servers already given explicitly).
    A server reached at the same scheme, host and port as a --prometheus-url
    or fleet-file entry is that entry: judged once, as the user named it."""
    given = {address_key(u) for u in explicit_urls}
    given.discard(None)
    keep: list[FoundServer] = []
    dropped: list[FoundServer] = []
    for server in found:
        (dropped if server.url and address_key(server.url) in given else keep).append(server)
    return keep, dropped


@dataclass(frozen=True, slots=True)
class FleetChanges:
    added: tuple[FoundServer, ...] = ()
    removed: tuple[FoundServer, ...] = ()
    replaced: tuple[tuple[FoundServer, FoundServer], ...] = ()
    """(before, after): the same server at a new address or in a new pod
    (a new UID); its old answers are not its new pod's."""
    updated: tuple[tuple[FoundServer, FoundServer], ...] = ()
    """(before, after): the same pod and address, something else changed
    (readiness, the shard count of its object)."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.replaced or self.updated)


def fleet_changes(before: Mapping[str, FoundServer], after: Iterable[FoundServer]) -> FleetChanges:
    """What changed between two discoveries, by server name."""
    now = {s.name: s for s in after}
    added = tuple(s for n, s in now.items() if n not in before)
    removed = tuple(s for n, s in before.items() if n not in now)
    replaced, updated = [], []
    for name, new in now.items():
        old = before.get(name)
        if old is None or old == new:
            continue
        if old.url != new.url or (old.pod_uid and new.pod_uid and old.pod_uid != new.pod_uid):
            replaced.append((old, new))
        else:
            updated.append((old, new))
    return FleetChanges(added, removed, tuple(replaced), tuple(updated))
