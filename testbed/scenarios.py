"""The issue's scenario on the testbed cluster, through the Kubernetes API.

- ``monitoring/node-exporter``: a DaemonSet (status written here, no DaemonSet
  controller runs), one hostNetwork pod per node and a Service selecting them.
  The real endpoints controller cuts its Endpoints to 1000 addresses and the
  EndpointSlice controller spreads all of them over slices of 100.
- ``kube-system/kubelet``: selector-less Service and Endpoints of every node as
  the Prometheus Operator writes them; the mirroring controller mirrors at most
  1000 of them (the first 1000 by IP string, like truncation).
- ``kube-system/kubelet-skip-mirror``: the same with the skip-mirror label and
  EndpointSlices written as the Operator's ``--kubelet-endpointslice`` does.

With ``operator=True`` neither kubelet object is written here: the real
Operator owns ``kube-system/kubelet`` (testbed/operator.py), and a second
Service labelled ``app.kubernetes.io/name: kubelet`` would be scraped twice
by the kubelet ServiceMonitor.

Node i (1-based) is ``node-0001``.. with IP ``node_ip(i)``. IPs are spread so
that the lexicographically largest 200 (what truncation drops) are not the
last 200 node names.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from testbed.kube import Kube

log = logging.getLogger("testbed.scenarios")

MONITORING = "monitoring"
KUBE_SYSTEM = "kube-system"
NODE_EXPORTER = "node-exporter"
KUBELET = "kubelet"
KUBELET_SKIP_MIRROR = "kubelet-skip-mirror"
ENDPOINTS_CAP = 1000  # endpoints controller maxCapacity
MIRROR_CAP = 1000  # --mirroring-max-endpoints-per-subset default
SLICE_SIZE = 100  # --max-endpoints-per-slice default
OPERATOR_SLICE_SIZE = 512  # Prometheus Operator's kubelet slices
DEFAULT_NODES = 1200

OVER_CAPACITY = "endpoints.kubernetes.io/over-capacity"
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME = "kubernetes.io/service-name"
BY_CONTROLLER = "endpointslice-controller.k8s.io"
BY_MIRRORING = "endpointslicemirroring-controller.k8s.io"
BY_OPERATOR = "prometheus-operator"
NODE_EXPORTER_LABELS = {"app.kubernetes.io/name": "node-exporter"}
OPERATOR_LABELS = {
    "k8s-app": "kubelet",
    "app.kubernetes.io/name": "kubelet",
    "app.kubernetes.io/managed-by": "prometheus-operator",
}
KUBELET_PORTS = [("https-metrics", 10250), ("cadvisor", 4194), ("http-metrics", 10255)]

# ---- names and addresses, computed without the cluster ----------------------


def node_name(i: int) -> str:
    return f"node-{i:04d}"


def node_ip(i: int) -> str:
    # Consecutive nodes rotate over six third octets, so the IP-string order
    # interleaves node names: truncation drops node-0006, node-0012, ...
    k = i - 1
    return f"10.20.{k % 6 + 6 * (k // 1500)}.{(k // 6) % 250 + 1}"


def nodes(n: int) -> dict[str, str]:
    """Node name -> InternalIP for a scenario of n nodes."""
    return {node_name(i): node_ip(i) for i in range(1, n + 1)}


def endpoints_kept_nodes(n: int) -> set[str]:
    """Nodes whose node-exporter address survives the endpoints controller's
    truncation: all pods are ready, so the first 1000 by IP string."""
    by_ip = sorted(nodes(n).items(), key=lambda kv: kv[1].encode())
    return {name for name, _ in by_ip[:ENDPOINTS_CAP]}


def endpoints_dropped_nodes(n: int) -> set[str]:
    return set(nodes(n)) - endpoints_kept_nodes(n)


def mirroring_dropped_nodes(n: int) -> set[str]:
    """Nodes the mirroring controller leaves out of the kubelet slices. It
    repacks (sorts by IP string) the subset before taking the first 1000
    (endpointslicemirroring/reconciler.go), so, whatever order the Operator
    wrote, these are the same nodes endpoints truncation drops."""
    by_ip = sorted(nodes(n).items(), key=lambda kv: kv[1].encode())
    return {name for name, _ in by_ip[MIRROR_CAP:]}


def pod_names_by_node(kube: Kube) -> dict[str, str]:
    """node -> name of its node-exporter pod. The names are the apiserver's
    (generateName), as the DaemonSet controller's are: not derivable."""
    return {
        p["spec"].get("nodeName"): p["metadata"]["name"]
        for p in kube.list(f"/api/v1/namespaces/{MONITORING}/pods",
                           labelSelector="app.kubernetes.io/name=node-exporter")
    }


def connect(kubeconfig: str | os.PathLike[str]) -> Kube:
    """A plain-JSON client for the testbed's kubeconfig."""
    return Kube(os.fspath(kubeconfig))


# ---- object bodies -----------------------------------------------------------


def _node_body(name: str, ip: str) -> dict[str, Any]:
    # status is kept on create (the kubelet registers this way). The nodeInfo
    # fields a real kubelet always sets are filled so strict clients parse it.
    seed = uuid.uuid5(uuid.NAMESPACE_DNS, name)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": str(uuid.uuid5(seed, "boot")),
                "machineID": seed.hex,
                "systemUUID": str(uuid.uuid5(seed, "system")),
                "containerRuntimeVersion": "containerd://2.1.0",
                "kernelVersion": "6.8.0-kwok",
                "kubeProxyVersion": "v1.36.3",
                "kubeletVersion": "v1.36.3",
                "operatingSystem": "linux",
                "osImage": "kwok simulated node",
            },
        },
    }


def _daemonset_body() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": NODE_EXPORTER, "namespace": MONITORING, "labels": NODE_EXPORTER_LABELS,
        },
        "spec": {
            "selector": {"matchLabels": NODE_EXPORTER_LABELS},
            "template": {
                "metadata": {"labels": NODE_EXPORTER_LABELS},
                "spec": _pod_spec(None),
            },
        },
    }


def _pod_spec(node: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hostNetwork": True,
        "hostPID": True,
        "enableServiceLinks": False,
        "tolerations": [{"operator": "Exists"}],
        "containers": [{
            "name": "node-exporter",
            "image": "quay.io/prometheus/node-exporter:v1.9.1",
            "ports": [{"name": "metrics", "containerPort": 9100, "hostPort": 9100,
                       "protocol": "TCP"}],
        }],
    }
    if node:
        spec["nodeName"] = node
    return spec


def _pod_body(node: str, ds_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            # What the DaemonSet controller sends (controller_utils.go
            # getPodsPrefix): the apiserver appends 5 random characters, the
            # name the exporter infers a Table row's owner from.
            "generateName": f"{NODE_EXPORTER}-",
            "namespace": MONITORING,
            "labels": {**NODE_EXPORTER_LABELS, "pod-template-generation": "1"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "DaemonSet", "name": NODE_EXPORTER,
                "uid": ds_uid, "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": _pod_spec(node),
    }


def _service_body(ns: str, name: str, *, selector: dict[str, str] | None) -> dict[str, Any]:
    if selector:
        ports = [{"name": "metrics", "port": 9100, "targetPort": "metrics"}]
        labels = NODE_EXPORTER_LABELS
    else:
        ports = [{"name": n, "port": p, "targetPort": p} for n, p in KUBELET_PORTS]
        labels = OPERATOR_LABELS
    spec: dict[str, Any] = {"clusterIP": "None", "ports": ports}
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec}


def _kubelet_endpoints_body(name: str, node_list: list[dict[str, Any]], skip_mirror: bool) -> dict:
    labels = dict(OPERATOR_LABELS)
    if skip_mirror:
        labels[SKIP_MIRROR] = "true"
    addresses = [
        {"ip": ip, "nodeName": n, "targetRef": {"kind": "Node", "name": n, "uid": uid}}
        for n, ip, uid in _node_triples(node_list)
    ]
    subset = {"addresses": addresses, "ports": [{"name": n, "port": p} for n, p in KUBELET_PORTS]}
    return {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": KUBE_SYSTEM, "labels": labels},
        "subsets": [subset] if addresses else [],
    }


def _node_triples(node_list: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(name, InternalIP, uid) sorted by name, as the Operator orders them."""
    out = []
    for node in node_list:
        ips = [a["address"] for a in node["status"].get("addresses", [])
               if a["type"] == "InternalIP"]
        if ips:
            out.append((node["metadata"]["name"], ips[0], node["metadata"]["uid"]))
    return sorted(out)


# ---- applying the scenario ---------------------------------------------------


def apply(kube: Kube, n: int = DEFAULT_NODES, timeout: float = 300, *,
          operator: bool = False) -> None:
    """Creates the whole scenario for n nodes and waits until the controllers
    have converged. Idempotent: existing objects are kept."""
    kube.create("/api/v1/namespaces", {"metadata": {"name": MONITORING}})
    ds = kube.get_or_none(f"/apis/apps/v1/namespaces/{MONITORING}/daemonsets/{NODE_EXPORTER}")
    if ds is None:
        ds = kube.create(f"/apis/apps/v1/namespaces/{MONITORING}/daemonsets", _daemonset_body())
    kube.create(f"/api/v1/namespaces/{MONITORING}/services",
                _service_body(MONITORING, NODE_EXPORTER, selector=NODE_EXPORTER_LABELS))
    for name in () if operator else (KUBELET, KUBELET_SKIP_MIRROR):
        kube.create(f"/api/v1/namespaces/{KUBE_SYSTEM}/services",
                    _service_body(KUBE_SYSTEM, name, selector=None))
    scale_nodes(kube, n, timeout=timeout, operator=operator)


def scale_nodes(kube: Kube, n: int, timeout: float = 300, *, operator: bool = False) -> None:
    """Makes the cluster have exactly nodes 1..n with their node-exporter pods,
    rewrites what the Operator would (kubelet Endpoints and slices) and the
    DaemonSet status, then waits for the controllers to converge."""
    t0 = time.monotonic()
    existing = {x["metadata"]["name"] for x in kube.list("/api/v1/nodes")}
    want = nodes(n)
    extra = sorted(existing - set(want))
    # Pods first: a pod left on a deleted node would drop out of slices anyway
    # but stay in the DaemonSet's pod count.
    by_node = pod_names_by_node(kube)
    kube.parallel(lambda nd: kube.delete(
        f"/api/v1/namespaces/{MONITORING}/pods/{by_node[nd]}", grace=0),
        [nd for nd in extra if nd in by_node])
    kube.parallel(lambda nd: kube.delete(f"/api/v1/nodes/{nd}"), extra)
    missing = [nd for nd in want if nd not in existing]
    kube.parallel(lambda nd: kube.create("/api/v1/nodes", _node_body(nd, want[nd])), missing)
    log.info("nodes: %d deleted, %d created (%.1f s)", len(extra), len(missing),
             time.monotonic() - t0)
    node_list = _wait_nodes_ready(kube, want, timeout)
    log.info("nodes ready (%.1f s)", time.monotonic() - t0)
    ds = kube.get(f"/apis/apps/v1/namespaces/{MONITORING}/daemonsets/{NODE_EXPORTER}")
    pods = {p["spec"].get("nodeName") for p in
            kube.list(f"/api/v1/namespaces/{MONITORING}/pods",
                      labelSelector="app.kubernetes.io/name=node-exporter")}
    kube.parallel(lambda nd: kube.create(f"/api/v1/namespaces/{MONITORING}/pods",
                                         _pod_body(nd, ds["metadata"]["uid"])),
                  [nd for nd in want if nd not in pods])
    log.info("pods created (%.1f s)", time.monotonic() - t0)
    _wait_pods_running(kube, want, timeout)
    log.info("pods running (%.1f s)", time.monotonic() - t0)
    kube.patch(f"/apis/apps/v1/namespaces/{MONITORING}/daemonsets/{NODE_EXPORTER}/status", {
        "status": {
            "currentNumberScheduled": n, "desiredNumberScheduled": n, "numberAvailable": n,
            "numberReady": n, "updatedNumberScheduled": n, "numberMisscheduled": 0,
            "observedGeneration": ds["metadata"].get("generation", 1),
        }
    })
    if not operator:
        write_operator_objects(kube, node_list)
    wait_converged(kube, n, timeout=timeout, operator=operator)
    log.info("controllers converged for %d nodes (%.1f s)", n, time.monotonic() - t0)


# ---- the testbed's own Prometheus servers, as pods ---------------------------------

# What the prometheus-community `prometheus` chart labels its server pods with:
# a Prometheus the Operator does not run, found by a pod label selector.
SERVER_POD_LABELS = {"app.kubernetes.io/name": "prometheus",
                     "app.kubernetes.io/component": "server"}
SERVER_POD_SELECTOR = ",".join(f"{k}={v}" for k, v in SERVER_POD_LABELS.items())
SERVER_POD_PORT = "web"
HOST_NODE = "testbed-host"
"""The node the servers' pods are bound to: none exists, so kwok leaves them
alone, and no node count changes."""


def register_server_pods(kube: Kube, urls: dict[str, str]) -> None:
    """The plain testbed's Prometheus servers (name -> http://127.0.0.1:PORT)
    as pods in `monitoring`: Running and Ready at IP 127.0.0.1 with their
    port named `web`, the status written here as their kubelet would. So
    `--prometheus-pod-selector` finds them (a Prometheus the Operator does
    not run); kube-apiserver takes 127.0.0.1 as a pod IP (testbed/README.md)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kube.create("/api/v1/namespaces", {"metadata": {"name": MONITORING}})
    for name, url in urls.items():
        port = int(url.rsplit(":", 1)[1])
        pod = f"{name}-0"
        path = f"/api/v1/namespaces/{MONITORING}/pods"
        kube.delete(f"{path}/{pod}", grace=0)  # a previous run's, at another port
        _wait_gone(kube, f"{path}/{pod}")
        kube.create(path, {
            "metadata": {"name": pod, "namespace": MONITORING, "labels": SERVER_POD_LABELS},
            "spec": {"nodeName": HOST_NODE, "containers": [{
                "name": "prometheus", "image": "quay.io/prometheus/prometheus",
                "ports": [{"name": SERVER_POD_PORT, "containerPort": port}]}]},
        })
        kube.request("PATCH", f"{path}/{pod}/status", {"status": {
            "phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": now,
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                           for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
        }}, content_type="application/merge-patch+json")


def _wait_gone(kube: Kube, path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while kube.get_or_none(path) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not deleted")
        time.sleep(0.2)


def write_operator_objects(kube: Kube, node_list: list[dict[str, Any]]) -> None:
    """What the Operator's kubelet controller writes for these nodes: the
    kubelet Endpoints (mirrored), and for kubelet-skip-mirror the labelled
    Endpoints plus its own EndpointSlices of at most 512 endpoints."""
    eps = f"/api/v1/namespaces/{KUBE_SYSTEM}/endpoints"
    kube.put_or_create(eps, KUBELET, _kubelet_endpoints_body(KUBELET, node_list, False))
    kube.put_or_create(eps, KUBELET_SKIP_MIRROR,
                       _kubelet_endpoints_body(KUBELET_SKIP_MIRROR, node_list, True))
    _sync_operator_slices(kube, node_list)


def _sync_operator_slices(kube: Kube, node_list: list[dict[str, Any]]) -> None:
    # Same algorithm as prometheus-operator pkg/kubelet/controller.go
    # syncEndpointSlice: keep endpoints in place, drop gone nodes, fill
    # existing slices up to 512, then create new slices.
    path = f"/apis/discovery.k8s.io/v1/namespaces/{KUBE_SYSTEM}/endpointslices"
    svc = kube.get(f"/api/v1/namespaces/{KUBE_SYSTEM}/services/{KUBELET_SKIP_MIRROR}")
    todo = {ip: (n, uid) for n, ip, uid in _node_triples(node_list)}
    order = [ip for _, ip, _ in _node_triples(node_list)]

    def endpoint(ip: str) -> dict[str, Any]:
        n, uid = todo[ip]
        return {"addresses": [ip], "conditions": {"ready": True}, "nodeName": n,
                "targetRef": {"kind": "Node", "name": n, "uid": uid}}

    slices = kube.list(path, labelSelector=f"{SERVICE_NAME}={KUBELET_SKIP_MIRROR}")
    placed: set[str] = set()
    for s in slices:
        kept = [ep["addresses"][0] for ep in s.get("endpoints") or []
                if ep["addresses"][0] in todo and ep["addresses"][0] not in placed]
        placed.update(kept)
        s["endpoints"] = [endpoint(ip) for ip in kept]
    for ip in order:
        if ip in placed:
            continue
        room = [s for s in slices if len(s["endpoints"]) < OPERATOR_SLICE_SIZE]
        if not room:
            room = [_operator_slice(svc)]
            slices.append(room[0])
        room[0]["endpoints"].append(endpoint(ip))
        placed.add(ip)
    for s in slices:
        name = s["metadata"].get("name")
        if not s["endpoints"]:
            if name:
                kube.delete(f"{path}/{name}")
        elif name:
            kube.request("PUT", f"{path}/{name}", s)
        else:
            kube.create(path, s, exist_ok=False)


def _operator_slice(svc: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "generateName": f"{KUBELET_SKIP_MIRROR}-",
            "namespace": KUBE_SYSTEM,
            "labels": {**OPERATOR_LABELS, SERVICE_NAME: KUBELET_SKIP_MIRROR,
                       MANAGED_BY: BY_OPERATOR},
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": KUBELET_SKIP_MIRROR,
                "uid": svc["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p} for n, p in KUBELET_PORTS],
        "endpoints": [],
    }


# ---- reading state and waiting -------------------------------------------------


def get_endpoints(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get_or_none(f"/api/v1/namespaces/{namespace}/endpoints/{name}")


def endpoints_addresses(ep: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Ready and not-ready addresses over all subsets."""
    out: list[dict[str, Any]] = []
    for s in (ep or {}).get("subsets") or []:
        out += (s.get("addresses") or []) + (s.get("notReadyAddresses") or [])
    return out


def is_truncated(ep: dict[str, Any] | None) -> bool:
    return OVER_CAPACITY in ((ep or {}).get("metadata", {}).get("annotations") or {})


def list_endpointslices(
    kube: Kube, namespace: str, service: str, managed_by: str | None = None,
) -> list[dict[str, Any]]:
    sel = f"{SERVICE_NAME}={service}"
    if managed_by:
        sel += f",{MANAGED_BY}={managed_by}"
    return kube.list(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                     labelSelector=sel)


def slice_addresses(slices: list[dict[str, Any]]) -> set[str]:
    return {a for s in slices for ep in s.get("endpoints") or [] for a in ep["addresses"]}


def poll(check: Callable[[], str | None], what: str, timeout: float,
         interval: float = 1.0) -> None:
    """check returns None when done, else a description of what is missing.
    The testbed's one polling helper (scenarios and migration steps)."""
    deadline = time.monotonic() + timeout
    last: str | None = "not checked"
    while time.monotonic() < deadline:
        last = check()
        if last is None:
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} after {timeout:.0f} s: {last}")


def _wait_nodes_ready(kube: Kube, want: dict[str, str], timeout: float) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []

    def check() -> str | None:
        node_list = kube.list("/api/v1/nodes")
        bad = []
        for node in node_list:
            name = node["metadata"]["name"]
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in node["status"].get("conditions") or [])
            ips = [a["address"] for a in node["status"].get("addresses") or []
                   if a["type"] == "InternalIP"]
            if not ready or ips != [want.get(name)]:
                bad.append(name)
        if bad or len(node_list) != len(want):
            return f"{len(node_list)} nodes, {len(bad)} not Ready with their IP: {bad[:5]}"
        result[:] = node_list
        return None

    poll(check, "nodes not ready", timeout)
    return result


def _wait_pods_running(kube: Kube, want: dict[str, str], timeout: float) -> None:
    def check() -> str | None:
        pods = kube.list(f"/api/v1/namespaces/{MONITORING}/pods",
                         labelSelector="app.kubernetes.io/name=node-exporter")
        bad = [p["metadata"]["name"] for p in pods
               if p["status"].get("podIP") != want.get(p["spec"].get("nodeName"))]
        if bad or len(pods) != len(want):
            return f"{len(pods)} pods, {len(bad)} without their node's IP: {bad[:5]}"
        return None

    poll(check, "node-exporter pods not running", timeout)


def wait_converged(kube: Kube, n: int, timeout: float = 180, *, operator: bool = False) -> None:
    """Waits until the controllers show what n nodes must give: node-exporter
    Endpoints truncated (annotation set) iff n > 1000 and holding the expected
    addresses, its slices holding all n, kubelet mirrored slices min(n, 1000),
    no mirrored slices for kubelet-skip-mirror and n in the Operator's slices.
    operator: node-exporter only (the real Operator's kubelet objects depend
    on its flags; testbed.migration waits for them)."""
    expected = nodes(n)
    kept = {expected[name] for name in endpoints_kept_nodes(n)}

    def check() -> str | None:
        ep = get_endpoints(kube, MONITORING, NODE_EXPORTER)
        ips = {a["ip"] for a in endpoints_addresses(ep)}
        if ips != kept or is_truncated(ep) != (n > ENDPOINTS_CAP):
            return f"node-exporter Endpoints: {len(ips)} addresses, truncated={is_truncated(ep)}"
        got = slice_addresses(list_endpointslices(kube, MONITORING, NODE_EXPORTER, BY_CONTROLLER))
        if got != set(expected.values()):
            return f"node-exporter slices: {len(got)} addresses"
        if operator:
            return None
        mirrored = slice_addresses(list_endpointslices(kube, KUBE_SYSTEM, KUBELET, BY_MIRRORING))
        if len(mirrored) != min(n, MIRROR_CAP):
            return f"kubelet mirrored slices: {len(mirrored)} addresses"
        skip = list_endpointslices(kube, KUBE_SYSTEM, KUBELET_SKIP_MIRROR)
        if any(s["metadata"]["labels"].get(MANAGED_BY) != BY_OPERATOR for s in skip):
            return "kubelet-skip-mirror has mirrored slices"
        if len(slice_addresses(skip)) != n:
            return f"kubelet-skip-mirror operator slices: {len(slice_addresses(skip))}"
        return None

    poll(check, "controllers did not converge", timeout)
