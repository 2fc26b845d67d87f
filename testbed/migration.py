"""The four-step kubelet migration on the real Operator, and what each of its
Prometheus servers must then discover.

What a pod must discover is computed from the Kubernetes objects and the
documented rules, not by asking the exporter: role ``endpoints`` reads the
Service's Endpoints, role ``endpointslice`` the union of its EndpointSlices;
the ServiceMonitor keeps the named port; the Operator's sharding rules keep
``hashmod(md5(__address__)) == SHARD``; a Prometheus whose credentials may
not list the role's resource discovers nothing.

Each step returns once settled: the operator runs with the step's flags and
has synced the kubelet objects at least twice since (its first sync after
enabling slices can fail; it converges on the next), the pods the CR asks
for (shards x replicas) and no others run and are Ready, every pod's config
file equals the Secret as the reloader expands it and Prometheus loaded it
after the file was written, and every pod's targets equal what the objects
imply, twice in a row.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from testbed import operator as op
from testbed import procs
from testbed import scenarios as sc
from testbed.cluster import Cluster
from testbed.kube import Kube

# pool -> (namespace, service, port name, port number)
POOL_SERVICES = {
    op.NODE_EXPORTER_POOL: (sc.MONITORING, sc.NODE_EXPORTER, "metrics", op.NODE_EXPORTER_PORT),
    **{p: (sc.KUBE_SYSTEM, sc.KUBELET, "https-metrics", op.KUBELET_PORT)
       for p in op.KUBELET_POOLS},
}
ROLE_RESOURCE = {"endpoints": ("", "endpoints"), "endpointslice": ("discovery.k8s.io",
                                                                    "endpointslices")}
Targets = dict[str, dict[str, set[str]]]  # pod -> pool -> {"ip:port"}


def shard_of(address: str, shards: int) -> int:
    """Prometheus's hashmod: the last 8 bytes of md5, big-endian, modulo."""
    return int.from_bytes(hashlib.md5(address.encode()).digest()[8:], "big") % shards


def cr_role(cr: dict[str, Any]) -> str:
    """The SD role the CR asks for; unset means Endpoints."""
    return (cr["spec"].get("serviceDiscoveryRole") or "Endpoints").lower()


def may_list(kube: Kube, cluster: Cluster, cr: dict[str, Any], role: str, namespace: str) -> bool:
    """Whether the CR's apiserver credentials may list and watch the role's
    resource: the admin token is system:masters; the ServiceAccount's token
    is asked about with a SubjectAccessReview (RBAC, as the apiserver
    decides it)."""
    cred = cr["spec"]["apiserverConfig"]["authorization"]["credentialsFile"]
    if Path(cred) == cluster.token_file:
        return True
    group, resource = ROLE_RESOURCE[role]
    user = f"system:serviceaccount:{op.MONITORING}:{op.SERVICE_ACCOUNT}"
    for verb in ("list", "watch"):
        sar = kube.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "resourceAttributes": {
                "namespace": namespace, "verb": verb, "group": group, "resource": resource}},
        })
        if not sar["status"].get("allowed"):
            return False
    return True


def object_addresses(kube: Kube, role: str, namespace: str, service: str,
                     port_name: str) -> set[str]:
    """ip:port of every target the role's SD gives for that Service and
    port (ready or not, as Prometheus lists both)."""
    out = set()
    if role == "endpoints":
        ep = sc.get_endpoints(kube, namespace, service) or {}
        for subset in ep.get("subsets") or []:
            ports = [p["port"] for p in subset.get("ports") or [] if p.get("name") == port_name]
            for a in (subset.get("addresses") or []) + (subset.get("notReadyAddresses") or []):
                out |= {f"{a['ip']}:{p}" for p in ports}
    else:
        for s in sc.list_endpointslices(kube, namespace, service):
            ports = [p["port"] for p in s.get("ports") or [] if p.get("name") == port_name]
            for ep in s.get("endpoints") or []:
                out |= {f"{a}:{p}" for a in ep["addresses"] for p in ports}
    return out


def expected_targets(kube: Kube, cluster: Cluster) -> Targets:
    """What each pod must discover in each pool, from the objects."""
    cr = op.get_cr(kube)
    role = cr_role(cr)
    shards = max(1, int(cr["spec"].get("shards") or 1))
    per_pool = {}
    for pool, (ns, svc, port_name, _) in POOL_SERVICES.items():
        allowed = may_list(kube, cluster, cr, role, ns)
        per_pool[pool] = object_addresses(kube, role, ns, svc, port_name) if allowed else set()
    return {pod.name: {pool: {a for a in addrs if shard_of(a, shards) == pod.shard}
                       for pool, addrs in per_pool.items()} for pod in cr_pods(cr)}


def cr_pods(cr: dict[str, Any]) -> list[op.Pod]:
    """The pods the CR asks for, as its StatefulSets name them."""
    spec = cr["spec"]
    return op.pods(cr["metadata"]["name"], max(1, int(spec.get("shards") or 1)),
                   int(spec.get("replicas") if spec.get("replicas") is not None else 1))


def active_targets(url: str, pool: str) -> set[str]:
    status, body = procs.http_get(
        f"{url}/api/v1/targets?{urlencode({'state': 'active', 'scrapePool': pool})}", timeout=30)
    if status != 200:
        raise RuntimeError(f"{url} targets: HTTP {status}")
    return {t["discoveredLabels"]["__address__"]
            for t in json.loads(body)["data"]["activeTargets"]}


def discovered(cluster: Cluster) -> Targets:
    """What each pod's /api/v1/targets shows, per pool."""
    return {pod: {pool: active_targets(url, pool) for pool in op.POOLS}
            for pod, url in cluster.operator_prometheus_urls.items()}


def replica_union(targets: Targets, replica: int) -> dict[str, set[str]]:
    """What one replica discovers: the union of its shards."""
    out: dict[str, set[str]] = {pool: set() for pool in op.POOLS}
    for name, pools in targets.items():
        if op.place(name)[1] != replica:
            continue
        for pool, addrs in pools.items():
            out[pool] |= addrs
    return out


# ---- waiting for a step to settle -------------------------------------------------------


def _kubelet_objects(kube: Kube, cluster: Cluster) -> str | None:
    endpoints, endpointslice = cluster.kubelet_flags
    ips = {a["address"] for n in kube.list("/api/v1/nodes")
           for a in n["status"].get("addresses") or [] if a["type"] == "InternalIP"}
    ep = sc.get_endpoints(kube, sc.KUBE_SYSTEM, sc.KUBELET)
    if endpoints and {a["ip"] for a in sc.endpoints_addresses(ep)} != ips:
        return f"kubelet Endpoints: {len(sc.endpoints_addresses(ep))} of {len(ips)} nodes"
    skip = ((ep or {}).get("metadata", {}).get("labels") or {}).get(sc.SKIP_MIRROR) == "true"
    slices = sc.list_endpointslices(kube, sc.KUBE_SYSTEM, sc.KUBELET)
    mirrored = [s for s in slices if s["metadata"]["labels"].get(sc.MANAGED_BY) == sc.BY_MIRRORING]
    # The operator adopts every slice labelled with the service name (the
    # mirror's too) and fills in what they lack: the union is its promise.
    if endpointslice and sc.slice_addresses(slices) != ips:
        return f"kubelet slices: {len(sc.slice_addresses(slices))} of {len(ips)} nodes"
    if ep and not skip and len(sc.slice_addresses(mirrored)) != min(
            len(sc.endpoints_addresses(ep)), sc.MIRROR_CAP):
        return f"mirrored kubelet slices: {len(sc.slice_addresses(mirrored))} addresses"
    if skip and mirrored:
        return "mirrored kubelet slices left after skip-mirror"
    return None


def _operator_synced(cluster: Cluster, since: dict[str, float]) -> str | None:
    endpoints, endpointslice = cluster.kubelet_flags
    if not op.operator_ready(cluster.operator_port, endpoints, endpointslice):
        return "operator not ready with the step's flags"
    for resource, on in (("endpoints", endpoints), ("endpointslice", endpointslice)):
        n = op.node_syncs(cluster.operator_port, resource)
        if on and n < since.get(resource, 0) + 2:
            return f"{n:.0f} {resource} syncs, waiting for 2 more than {since.get(resource, 0)}"
    return None


def _prometheus_metric(url: str, name: str) -> float | None:
    status, body = procs.http_get(f"{url}/metrics")
    for line in body.decode().splitlines() if status == 200 else []:
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _pods_running(kube: Kube, cluster: Cluster) -> str | None:
    """The pods the CR asks for, and no others, exist, are Ready, and run
    their Prometheus (the statefulset controller, the garbage collector
    and testbed/pods.py have caught up with the CR)."""
    want = {p.name for p in cr_pods(op.get_cr(kube))}
    objects = kube.list(f"/api/v1/namespaces/{op.MONITORING}/pods",
                        labelSelector=f"operator.prometheus.io/name={op.NAME}")
    have = {p["metadata"]["name"] for p in objects}
    ready = {p["metadata"]["name"] for p in objects if _pod_ready(p)}
    running = {p.name for p in cluster.operator_pods() if p.ready}
    if have != want:
        return f"pods {sorted(have)}, the CR asks for {sorted(want)}"
    if ready != want or running != want:
        return f"Ready {sorted(ready)}, Prometheus answering on {sorted(running)}"
    return None


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _configs_loaded(kube: Kube, cluster: Cluster) -> str | None:
    raw = op.secret_config(kube)
    if raw is None:
        return "no config Secret"
    role = cr_role(op.get_cr(kube))
    for pod in cr_pods(op.get_cr(kube)):
        path = op.config_path(cluster.state_dir, pod.name)
        want = op.pod_config(raw, pod)
        roles = set(re.findall(r"^\s*-?\s*role: (\w+)\s*$", want, re.MULTILINE))
        if roles != {role}:
            return f"Secret has roles {roles}, not yet regenerated for {role}"
        if not path.exists() or path.read_text() != want:
            return f"{pod.name}: config file not yet rewritten"
        url = cluster.operator_prometheus_urls.get(pod.name)
        if url is None:
            return f"{pod.name}: its Prometheus is not running"
        ok = _prometheus_metric(url, "prometheus_config_last_reload_successful")
        at = _prometheus_metric(url, "prometheus_config_last_reload_success_timestamp_seconds")
        if ok != 1 or at is None or at < int(path.stat().st_mtime):
            return f"{pod.name}: config not reloaded (ok={ok}, at={at})"
    return None


def _discovery(kube: Kube, cluster: Cluster, last: list[Targets]) -> str | None:
    want = expected_targets(kube, cluster)
    try:
        got = discovered(cluster)
    except RuntimeError as e:  # a server restarting (its pod replaced)
        last.clear()
        return str(e)
    for pod, pools in want.items():
        for pool, addrs in pools.items():
            have = got.get(pod, {}).get(pool, set())
            if have != addrs:
                last.clear()
                return f"{pod} {pool}: {len(have)} targets, the objects imply {len(addrs)}"
    if not last or last[-1] != got:
        last[:] = [got]
        return "discovery matches once; checking it holds"
    return None


def settle(cluster: Cluster, kube: Kube, since: dict[str, float] | None = None,
           timeout: float = 180) -> Targets:
    """Waits for the operator, the configs and discovery; returns what each
    pod discovers."""
    t0 = time.monotonic()
    sc.poll(lambda: _operator_synced(cluster, since or {}), "operator not synced", timeout,
            interval=0.5)
    sc.poll(lambda: _kubelet_objects(kube, cluster), "kubelet objects not converged", timeout,
            interval=0.5)
    sc.poll(lambda: _pods_running(kube, cluster), "Prometheus pods not running", timeout,
            interval=0.5)
    sc.poll(lambda: _configs_loaded(kube, cluster), "configs not loaded", timeout, interval=0.5)
    seen: list[Targets] = []
    sc.poll(lambda: _discovery(kube, cluster, seen), "discovery not converged",
            max(30.0, timeout - (time.monotonic() - t0)), interval=0.5)
    return seen[-1]


# ---- the steps --------------------------------------------------------------------------


def set_kubelet_flags(cluster: Cluster, kube: Kube, endpoints: bool,
                      endpointslice: bool) -> Targets:
    cluster.set_kubelet_flags(endpoints, endpointslice)
    return settle(cluster, kube, since={})  # a restart resets the counters


def set_role(cluster: Cluster, kube: Kube, role: str) -> Targets:
    """role: "Endpoints" or "EndpointSlice" (Prometheus-wide in 0.85)."""
    op.patch_cr(kube, {"serviceDiscoveryRole": role})
    return settle(cluster, kube, since=_syncs(cluster))


def set_shards(cluster: Cluster, kube: Kube, shards: int) -> Targets:
    """PATCH the CR's shards; returns once its pods are the CR's and settled."""
    op.patch_cr(kube, {"shards": shards})
    return settle(cluster, kube, since=_syncs(cluster))


def set_endpointslice_rbac(cluster: Cluster, kube: Kube, allowed: bool) -> Targets:
    """Grants or revokes the ServiceAccount's endpointslices rule."""
    since = _syncs(cluster)
    op.set_endpointslice_rbac(kube, allowed)
    return settle(cluster, kube, since=since)


def _syncs(cluster: Cluster) -> dict[str, float]:
    return {r: op.node_syncs(cluster.operator_port, r) for r in ("endpoints", "endpointslice")}


def migrate(cluster: Cluster, kube: Kube, step: str) -> Targets:
    """One step of the safe migration (testbed/testbed migrate STEP)."""
    if step == "switch-role":
        return set_role(cluster, kube, "EndpointSlice")
    if step not in op.KUBELET_FLAGS or step == "start":
        raise ValueError(f"step must be one of {op.STEPS}")
    return set_kubelet_flags(cluster, kube, *op.KUBELET_FLAGS[step])


def scale(cluster: Cluster, kube: Kube, n: int) -> Targets:
    """Nodes 1..n (and their node-exporter pods); the Operator writes the
    kubelet objects."""
    since = _syncs(cluster)
    sc.scale_nodes(kube, n, operator=True)
    return settle(cluster, kube, since=since)
