"""The real Prometheus Operator v0.85.0 in the testbed, and what a pod would
do around it.

- Its CRDs come from the operator's own module (``jsonnet/prometheus-operator/
  <plural>-crd.json``), are POSTed and waited ``Established`` before it starts:
  the operator detects CRDs only at start and silently leaves the Prometheus
  controller off otherwise.
- The operator runs outside a cluster (``KUBECONFIG``, no ``--kubeconfig``
  flag), listens on 127.0.0.1, and owns ``kube-system/kubelet``
  (``--kubelet-service``). It can crash (a nil dereference when the Service
  sync fails), so ``supervise`` restarts it.
- kube-controller-manager's statefulset controller makes the pods of the
  Operator's StatefulSets; testbed/pods.py binds them, runs one real
  Prometheus per pod at its (loopback) pod IP and does what
  ``prometheus-config-reloader`` does in each pod: reads Secret
  ``prometheus-<name>``, gunzips ``prometheus.yaml.gz``, expands
  ``$(POD_NAME)`` and ``$(SHARD)`` (``pod_config`` here) and reloads.

``python -m testbed.operator supervise`` is the long-running helper the
Cluster starts; the rest are functions for the Cluster, the CLI and the
tests.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import procs
from testbed.kube import Kube

MONITORING = "monitoring"
KUBE_SYSTEM = "kube-system"
NAME = "k8s"  # the Prometheus CR, as kube-prometheus names it
SHARDS = 2
REPLICAS = 2
CONFIG_SECRET = f"prometheus-{NAME}"
CONFIG_KEY = "prometheus.yaml.gz"
# The minimal set: with the prometheuses CRD present the operator waits for
# informers on all four others and exits after 10 min if one is missing.
CRDS = ("prometheuses", "servicemonitors", "podmonitors", "probes", "prometheusrules",
        "prometheusagents")
CRD_GROUP = "monitoring.coreos.com"
API = f"/apis/{CRD_GROUP}/v1/namespaces/{MONITORING}"
KUBELET_SYNC_PERIOD = "5s"
SCRAPE_INTERVAL = "30s"
# The CR's ServiceAccount; its token is what the servers show the apiserver
# (apiserverConfig.credentialsFile), so its RBAC is what discovery gets.
SERVICE_ACCOUNT = "prometheus-k8s"
CLUSTER_ROLE = "prometheus-k8s-discovery"
CORE_RULE = {"apiGroups": [""], "resources": ["nodes", "services", "endpoints", "pods"],
             "verbs": ["get", "list", "watch"]}
SLICES_RULE = {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
               "verbs": ["get", "list", "watch"]}

# The migration's settings of the kubelet controller, as
# (--kubelet-endpoints, --kubelet-endpointslice).
KUBELET_FLAGS: dict[str, tuple[bool, bool]] = {
    "start": (True, False),  # the Operator's defaults
    "dual-write": (True, True),
    "endpoints-off": (False, True),
}
STEPS = ("dual-write", "switch-role", "endpoints-off")

NODE_EXPORTER_POOL = f"serviceMonitor/{MONITORING}/node-exporter/0"
KUBELET_POOLS = [f"serviceMonitor/{MONITORING}/kubelet/{i}" for i in range(4)]
POOLS = [NODE_EXPORTER_POOL, *KUBELET_POOLS]
NODE_EXPORTER_PORT = 9100
KUBELET_PORT = 10250


@dataclass(frozen=True)
class Pod:
    """One Prometheus pod the StatefulSets would run."""

    name: str
    shard: int
    replica: int


def pods(name: str = NAME, shards: int = SHARDS, replicas: int = REPLICAS) -> list[Pod]:
    # StatefulSet prometheus-<name> for shard 0, prometheus-<name>-shard-<i>
    # for the others (pkg/prometheus/common.go); pods append -<ordinal>.
    out = []
    for shard in range(shards):
        sts = f"prometheus-{name}" if shard == 0 else f"prometheus-{name}-shard-{shard}"
        out += [Pod(f"{sts}-{r}", shard, r) for r in range(replicas)]
    return out


POD_NAMES = [p.name for p in pods()]
"""The pods of the CR as the testbed creates it (2 shards x 2 replicas)."""


def replica_pods(replica: int) -> list[Pod]:
    return [p for p in pods() if p.replica == replica]


def place(pod: str, name: str = NAME) -> tuple[int, int]:
    """(shard, replica) of a pod of the CR's StatefulSets, from its name."""
    m = re.fullmatch(rf"prometheus-{re.escape(name)}(?:-shard-(\d+))?-(\d+)", pod)
    if not m:
        raise ValueError(f"not a pod of CR {name}: {pod}")
    return int(m.group(1) or 0), int(m.group(2))


# ---- the module and its CRDs ----------------------------------------------------


def module_dir(version: str) -> Path:
    """The operator's module in the Go module cache (downloaded if absent)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json",
         f"github.com/prometheus-operator/prometheus-operator@{version}"],
        capture_output=True, text=True, check=True, timeout=600,
        env={**procs.clean_env(), "GOWORK": "off"}, cwd="/",
    )
    return Path(json.loads(out.stdout)["Dir"])


def crd_bodies(version: str) -> list[dict[str, Any]]:
    d = module_dir(version) / "jsonnet" / "prometheus-operator"
    return [json.loads((d / f"{plural}-crd.json").read_text()) for plural in CRDS]


def install_crds(kube: Kube, bodies: list[dict[str, Any]], timeout: float = 60) -> None:
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    for body in bodies:
        kube.create(path, body)  # 409 on a re-run: already there
    deadline = time.monotonic() + timeout
    for body in bodies:
        name = body["metadata"]["name"]
        while True:
            crd = kube.get(f"{path}/{name}")
            status = crd.get("status") or {}
            conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if conds.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established: {conds}")
            time.sleep(0.25)


# ---- objects ------------------------------------------------------------------------


def prometheus_cr(
    *, version: str, api_url: str, credentials_file: Path, ca_file: Path, role: str = "Endpoints",
) -> dict[str, Any]:
    return {
        "apiVersion": f"{CRD_GROUP}/v1",
        "kind": "Prometheus",
        "metadata": {"name": NAME, "namespace": MONITORING},
        "spec": {
            "version": f"v{version}",
            "replicas": REPLICAS,
            "shards": SHARDS,
            "serviceAccountName": SERVICE_ACCOUNT,
            "serviceDiscoveryRole": role,
            # Nil selectors everywhere make the config "unmanaged" (empty).
            "serviceMonitorSelector": {},
            "serviceMonitorNamespaceSelector": {},
            "scrapeInterval": SCRAPE_INTERVAL,
            # Without it every SD block would use in-cluster config.
            "apiserverConfig": {
                "host": api_url,
                "authorization": {"type": "Bearer", "credentialsFile": str(credentials_file)},
                "tlsConfig": {"caFile": str(ca_file)},
            },
        },
    }


def servicemonitors(proxy_url: str) -> list[dict[str, Any]]:
    """node-exporter (the testbed's Service: port ``metrics``) and the
    kube-prometheus v0.16.0 kubelet ServiceMonitor
    (manifests/kubernetesControlPlane-serviceMonitorKubelet.yaml) with its
    four endpoints. Changed: ``proxyUrl`` on every endpoint (0.85 has no
    global proxy), no ``bearerTokenFile`` (the pod's SA token file does not
    exist here; the scrape fails at the proxy anyway) and no
    ``metricRelabelings`` (nothing is ever ingested from a simulated node)."""
    relabel = [{"action": "replace", "sourceLabels": ["__metrics_path__"],
                "targetLabel": "metrics_path"}]

    def kubelet_endpoint(path: str | None, interval: str, **extra: Any) -> dict[str, Any]:
        ep: dict[str, Any] = {
            "port": "https-metrics", "scheme": "https", "interval": interval,
            "honorLabels": True, "tlsConfig": {"insecureSkipVerify": True},
            "relabelings": relabel, "proxyUrl": proxy_url, **extra,
        }
        if path:
            ep["path"] = path
        return ep

    return [
        {
            "apiVersion": f"{CRD_GROUP}/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "node-exporter", "namespace": MONITORING,
                         "labels": {"app.kubernetes.io/name": "node-exporter"}},
            "spec": {
                "jobLabel": "app.kubernetes.io/name",
                "selector": {"matchLabels": {"app.kubernetes.io/name": "node-exporter"}},
                "endpoints": [{"port": "metrics", "interval": SCRAPE_INTERVAL,
                               "proxyUrl": proxy_url}],
            },
        },
        {
            "apiVersion": f"{CRD_GROUP}/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "kubelet", "namespace": MONITORING, "labels": {
                "app.kubernetes.io/name": "kubelet",
                "app.kubernetes.io/component": "kubernetes",
                "app.kubernetes.io/part-of": "kube-prometheus",
            }},
            "spec": {
                "jobLabel": "app.kubernetes.io/name",
                "namespaceSelector": {"matchNames": [KUBE_SYSTEM]},
                "selector": {"matchLabels": {"app.kubernetes.io/name": "kubelet"}},
                "endpoints": [
                    kubelet_endpoint(None, "30s"),
                    kubelet_endpoint("/metrics/cadvisor", "30s", honorTimestamps=False),
                    kubelet_endpoint("/metrics/probes", "30s"),
                    kubelet_endpoint("/metrics/slis", "5s"),
                ],
            },
        },
    ]


RBAC = "/apis/rbac.authorization.k8s.io/v1"


def _rbac(kube: Kube) -> None:
    """ServiceAccount monitoring/prometheus-k8s with a ClusterRole for service
    discovery (the endpointslices rule as kube-prometheus grants it)."""
    kube.create(f"/api/v1/namespaces/{MONITORING}/serviceaccounts",
                {"metadata": {"name": SERVICE_ACCOUNT, "namespace": MONITORING}})
    kube.create(f"{RBAC}/clusterroles", {
        "metadata": {"name": CLUSTER_ROLE}, "rules": [CORE_RULE, SLICES_RULE]})
    kube.create(f"{RBAC}/clusterrolebindings", {
        "metadata": {"name": CLUSTER_ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT,
                      "namespace": MONITORING}],
    })


def set_endpointslice_rbac(kube: Kube, allowed: bool) -> None:
    """Grants or takes away the ServiceAccount's endpointslices rule."""
    rules = [CORE_RULE, SLICES_RULE] if allowed else [CORE_RULE]
    kube.patch(f"{RBAC}/clusterroles/{CLUSTER_ROLE}", {"rules": rules})


def service_account_token(kube: Kube, path: Path) -> Path:
    """A TokenRequest for the ServiceAccount, written where the CR's
    ``credentialsFile`` can point."""
    tr = kube.request(
        "POST", f"/api/v1/namespaces/{MONITORING}/serviceaccounts/{SERVICE_ACCOUNT}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": 86400}},
    )
    path.write_text(tr["status"]["token"] + "\n")
    path.chmod(0o600)
    return path


def apply_objects(kube: Kube, cr: dict[str, Any], monitors: list[dict[str, Any]],
                  token_file: Path) -> None:
    """Namespace, RBAC, the ServiceAccount's token, the Prometheus CR and the
    ServiceMonitors (kept if they exist: a re-run must not undo a migration
    step)."""
    kube.create("/api/v1/namespaces", {"metadata": {"name": MONITORING}})
    _rbac(kube)
    service_account_token(kube, token_file)
    kube.create(f"{API}/prometheuses", cr)
    for sm in monitors:
        kube.create(f"{API}/servicemonitors", sm)


def get_cr(kube: Kube) -> dict[str, Any]:
    return kube.get(f"{API}/prometheuses/{NAME}")


def patch_cr(kube: Kube, spec: dict[str, Any]) -> None:
    kube.patch(f"{API}/prometheuses/{NAME}", {"spec": spec})


# ---- the config reloader's work -------------------------------------------------------

_ENV_VAR = re.compile(r"\$\(([a-zA-Z_0-9]+)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """thanos pkg/reloader's envsubst: $(VAR) from env, an unset one fails.
    Relabel replacements ($1, ${1}) do not match."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise KeyError(f"config references unset variable $({m.group(1)})")
        return env[m.group(1)]

    return _ENV_VAR.sub(sub, text)


def gunzip(raw: bytes) -> bytes:
    """The reloader gunzips only what starts with gzip's magic."""
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def pod_config(raw: bytes, pod: Pod) -> str:
    """The Secret's bytes as the pod's Prometheus must load them."""
    return expand(gunzip(raw).decode(), {"POD_NAME": pod.name, "SHARD": str(pod.shard)})


def secret_config(kube: Kube) -> bytes | None:
    """The generated config, or None while the operator has not written it."""
    import base64

    secret = kube.get_or_none(f"/api/v1/namespaces/{MONITORING}/secrets/{CONFIG_SECRET}")
    data = ((secret or {}).get("data") or {}).get(CONFIG_KEY)
    return base64.b64decode(data) if data else None


def config_path(state_dir: Path, pod: str) -> Path:
    return state_dir / pod / "prometheus.env.yaml"


def config_sha(state_dir: Path, pod: str) -> str:
    return hashlib.sha256(config_path(state_dir, pod).read_bytes()).hexdigest()


# ---- the operator process -----------------------------------------------------------


def operator_argv(binary: Path, port: int, endpoints: bool, endpointslice: bool,
                  version: str) -> list[str]:
    # Go bool flags need "=": "--kubelet-endpoints false" would not parse.
    return [
        str(binary),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--namespaces={MONITORING}",
        f"--kubelet-service={KUBE_SYSTEM}/kubelet",
        f"--kubelet-endpoints={str(endpoints).lower()}",
        f"--kubelet-endpointslice={str(endpointslice).lower()}",
        f"--kubelet-sync-period={KUBELET_SYNC_PERIOD}",
        "--kubelet-node-address-priority=internal",
        f"--prometheus-config-reloader=quay.io/prometheus-operator/"
        f"prometheus-config-reloader:{version}",
        "--log-level=info",
    ]


def supervise(argv: list[str], env: dict[str, str]) -> int:
    """Runs argv, restarting it (1 s, then up to 10 s apart) when it exits;
    SIGTERM stops it and the child."""
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    backoff = 1.0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        rc = child.wait()
        if stopping:
            break
        print(f"supervise: operator exited with {rc}; restarting in {backoff:.0f} s", flush=True)
        backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 10)
        time.sleep(backoff)
    if child and child.poll() is None:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The operator's /metrics as (name, labels) -> value; {} if it is down."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = procs.http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return {}
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float | None:
    return m.get((name, frozenset(labels.items())))


def operator_ready(port: int, endpoints: bool, endpointslice: bool) -> bool:
    """Prometheus controller up and the kubelet controller managing exactly
    the objects the flags ask for (a refused SSAR turns slices off with only
    a warning: this catches it)."""
    m = metrics(port)
    want = {"endpoints": endpoints, "endpointslice": endpointslice}
    return metric(m, "prometheus_operator_ready", controller="prometheus") == 1 and all(
        metric(m, "prometheus_operator_kubelet_managed_resource", resource=r) == float(on)
        for r, on in want.items()
    )


def node_syncs(port: int, resource: str) -> float:
    return metric(metrics(port), "prometheus_operator_node_syncs_total", resource=resource) or 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.operator")
    sub = p.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("supervise", help="run the operator, restarting it when it exits")
    sv.add_argument("argv", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = [a for a in args.argv if a != "--"]
    return supervise(cmd, dict(os.environ))

if __name__ == "__main__":
    sys.exit(main())
