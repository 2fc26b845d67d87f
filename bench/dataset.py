"""Synthetic cluster for the benchmark: N nodes run the way the Prometheus
Operator (kube-prometheus v0.16.0, Operator v0.85.0) runs them, rendered
once to JSON bytes in the shapes a real kube-apiserver and a real
Prometheus 3.16 return (tests/fixtures/captured/operator/ holds the real
answers; tests/bench/test_fake_shapes.py keeps the two alike).

Kubernetes objects (issues #5, #12):

* ``monitoring/node-exporter``: DaemonSet with hostNetwork pods (pod IP =
  node IP), headless Service with a selector, kube-prometheus labels.
  Endpoints cut to 1000 addresses by the endpoints controller (annotation
  ``endpoints.kubernetes.io/over-capacity: truncated``, first 1000 ready
  addresses after sorting by IP string), EndpointSlices of 100 endpoints.
* ``kube-system/kubelet``: selector-less, written by the Operator: Endpoints
  with every node (``nodeName``, targetRef kind Node, ports https-metrics
  10250, http-metrics 10255, cadvisor 4194, never truncated); the mirroring
  controller mirrors at most 1000 of them into one slice and skips the
  rest. cAdvisor is scraped through the kubelet, not by a DaemonSet of its
  own.
* A couple of small objects of every real cluster (``default/kubernetes``,
  ``kube-system/kube-dns`` with two CoreDNS pods).

One node in 200 is NotReady: its node-exporter pod is not ready, so it is
in ``notReadyAddresses`` (dropped by truncation when more than 1000 are
ready), and its targets are active with health ``down``.

Prometheus: the Operator's Prometheus ``monitoring/k8s`` with S shards x R
replicas (``default_topology``: 2 x 2 from 15k nodes up, 1 x 1 below), one
server per pod (``prometheus-k8s-<r>`` for shard 0,
``prometheus-k8s-shard-<s>-<r>``), all with the same ``serviceDiscoveryRole``
(``role``: ``endpoints``, the Operator's default, or ``endpointslice``).
Five scrape pools, one per ServiceMonitor endpoint:
``serviceMonitor/monitoring/kubelet/0..3`` (``/metrics``,
``/metrics/cadvisor``, ``/metrics/probes``, ``/metrics/slis``, port
https-metrics) and ``serviceMonitor/monitoring/node-exporter/0``. Role
endpoints: node-exporter sees the 1000 addresses of its Endpoints, every
kubelet pool every node. Role endpointslice: node-exporter sees every node,
the kubelet pools the 1000 mirrored. Each target goes to the shard
``hashmod(__address__)`` picks (md5, last 8 bytes, as Prometheus's relabel
does); the replicas of a shard have the same targets. Every server also has
its loaded configuration (``prometheus_config``: external labels
``prometheus``/``prometheus_replica``, one job per ServiceMonitor endpoint
with the Operator's relabel rules and sharding rules) and its own
``/metrics`` counts.

Everything is deterministic for a given N, role, shards and replicas.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import random
import re
from dataclasses import dataclass, field

import msgspec
from fakes import controllers

SLICE_SIZE = 100
NOT_READY_EVERY = 200

CREATED = "2025-09-14T07:21:43Z"
HEARTBEAT = "2025-11-26T05:38:12Z"
LAST_SCRAPE = "2025-11-26T05:40:11.482913402Z"
ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
KUBE_VERSION = "v1.33.4"
PROM_VERSION = "3.16.0"
PROM_REVISION = "4b1e5ac8e4d14d76e1a6b39c3dc5b2ec1c2c5f5e"
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

_enc = msgspec.json.Encoder()
_json = _enc.encode


def _uid(*parts: object) -> str:
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _suffix(seed: object, n: int = 5) -> str:
    h = int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=8).digest(), "big")
    out = []
    for _ in range(n):
        h, r = divmod(h, len(_SUFFIX_ALPHABET))
        out.append(_SUFFIX_ALPHABET[r])
    return "".join(out)


class _UniqueNames:
    """generateName-style names (prefix + 5 random characters), unique like
    the apiserver makes them: on a collision, draw again."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, prefix: str, seed: object) -> str:
        k = 0
        while True:
            name = prefix + _suffix((seed, k) if k else seed)
            if name not in self.used:
                self.used.add(name)
                return name
            k += 1


def _hex(seed: object, n: int = 64) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()[:n]


class Template:
    """A JSON document with ``@@NAME@@`` string placeholders, rendered by
    splicing values into the pre-encoded bytes (much faster than encoding a
    fresh dict per object)."""

    _rx = re.compile(r"@@([A-Za-z0-9_]+)@@")

    def __init__(self, doc: object):
        text = _json(doc).decode()
        pieces = self._rx.split(text)
        self.static = pieces[0::2]
        self.names = pieces[1::2]

    def render(self, values: dict[str, str]) -> bytes:
        out = [self.static[0]]
        for name, static in zip(self.names, self.static[1:], strict=True):
            out.append(values[name])
            out.append(static)
        return "".join(out).encode()


def _managed(manager: str, operation: str, time: str, fields: dict, subresource: str | None = None):
    m = {
        "manager": manager,
        "operation": operation,
        "apiVersion": "v1",
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }
    if subresource:
        m["subresource"] = subresource
    return m


# --------------------------------------------------------------------------
# Kubernetes object templates


def _image_pool() -> list[dict]:
    repos = [
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/amazon-k8s-cni",
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/amazon-k8s-cni-init",
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/eks/kube-proxy",
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/eks/pause",
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/eks/aws-ebs-csi-driver",
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/eks/csi-node-driver-registrar",
        "602401143452.dkr.ecr.eu-west-1.amazonaws.com/eks/livenessprobe",
        "quay.io/prometheus/node-exporter",
        "quay.io/brancz/kube-rbac-proxy",
        "gcr.io/cadvisor/cadvisor",
        "registry.k8s.io/coredns/coredns",
        "docker.io/grafana/promtail",
        "docker.io/fluent/fluent-bit",
        "docker.io/istio/proxyv2",
        "docker.io/istio/pilot",
        "docker.io/library/nginx",
        "docker.io/library/redis",
        "docker.io/library/postgres",
        "docker.io/bitnami/kafka",
        "docker.io/bitnami/zookeeper",
        "ghcr.io/company/checkout-service",
        "ghcr.io/company/payment-gateway",
        "ghcr.io/company/inventory-api",
        "ghcr.io/company/search-indexer",
        "ghcr.io/company/recommendation-engine",
        "ghcr.io/company/user-profile",
        "ghcr.io/company/notification-worker",
        "ghcr.io/company/frontend-web",
        "ghcr.io/company/order-router",
        "ghcr.io/company/billing-batch",
        "ghcr.io/company/feature-flags",
        "ghcr.io/company/session-cache",
        "docker.io/datadog/agent",
        "docker.io/calico/node",
        "docker.io/calico/cni",
        "docker.io/jaegertracing/jaeger-agent",
        "docker.io/envoyproxy/envoy",
        "docker.io/openpolicyagent/gatekeeper",
        "registry.k8s.io/metrics-server/metrics-server",
        "registry.k8s.io/kube-state-metrics/kube-state-metrics",
    ]
    pool = []
    for r, repo in enumerate(repos):
        for v in range(3):
            tag = f"v{1 + r % 4}.{(r * 7 + v) % 30}.{v}"
            pool.append(
                {
                    "names": [f"{repo}@sha256:{_hex((repo, tag))}", f"{repo}:{tag}"],
                    "sizeBytes": 4_000_000 + (r * 7_919_113 + v * 1_234_567) % 400_000_000,
                }
            )
    return pool


IMAGE_POOL = _image_pool()
NODE_VARIANTS = 8
IMAGES_PER_NODE = 50


def node_template(variant: int, ready: bool) -> Template:
    rnd = random.Random(variant)
    images = rnd.sample(IMAGE_POOL, IMAGES_PER_NODE)
    images.sort(key=lambda i: -i["sizeBytes"])
    ready_cond = (
        {
            "type": "Ready",
            "status": "True",
            "lastHeartbeatTime": HEARTBEAT,
            "lastTransitionTime": CREATED,
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
        }
        if ready
        else {
            "type": "Ready",
            "status": "Unknown",
            "lastHeartbeatTime": "2025-11-26T04:58:40Z",
            "lastTransitionTime": "2025-11-26T05:02:21Z",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
        }
    )

    def pressure(kind: str, reason: str, msg: str) -> dict:
        return {
            "type": kind,
            "status": "False" if ready else "Unknown",
            "lastHeartbeatTime": HEARTBEAT,
            "lastTransitionTime": CREATED,
            "reason": reason if ready else "NodeStatusUnknown",
            "message": msg if ready else "Kubelet stopped posting node status.",
        }

    conditions = [
        pressure(
            "MemoryPressure",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        pressure("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        pressure("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ready_cond,
    ]
    status_fields = {
        "f:allocatable": {f"f:{k}": {} for k in ("cpu", "ephemeral-storage", "memory", "pods")},
        "f:capacity": {f"f:{k}": {} for k in ("cpu", "ephemeral-storage", "memory", "pods")},
        "f:conditions": {
            f'k:{{"type":"{c["type"]}"}}': {
                "f:lastHeartbeatTime": {},
                "f:lastTransitionTime": {},
                "f:message": {},
                "f:reason": {},
                "f:status": {},
            }
            for c in conditions
        },
        "f:images": {},
        "f:nodeInfo": {"f:bootID": {}, "f:kernelVersion": {}, "f:systemUUID": {}},
        "f:runtimeHandlers": {},
        "f:features": {".": {}, "f:supplementalGroupsPolicy": {}},
    }
    doc = {
        "metadata": {
            "name": "@@name@@",
            "uid": "@@uid@@",
            "resourceVersion": "@@rv@@",
            "creationTimestamp": CREATED,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/instance-type": "m6i.2xlarge",
                "beta.kubernetes.io/os": "linux",
                "eks.amazonaws.com/capacityType": "ON_DEMAND",
                "eks.amazonaws.com/nodegroup": "@@nodegroup@@",
                "eks.amazonaws.com/nodegroup-image": "ami-0c1f3a3b6e8b2d9f1",
                "failure-domain.beta.kubernetes.io/region": "eu-west-1",
                "failure-domain.beta.kubernetes.io/zone": "@@zone@@",
                "k8s.io/cloud-provider-aws": "5b8d6a2f1e4c7d9a0b3e6f8c1d2a4b7e",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": "@@hostname@@",
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m6i.2xlarge",
                "topology.ebs.csi.aws.com/zone": "@@zone@@",
                "topology.k8s.aws/zone-id": "@@zoneid@@",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": "@@zone@@",
            },
            "annotations": {
                "alpha.kubernetes.io/provided-node-ip": "@@ip@@",
                "csi.volume.kubernetes.io/nodeid": '{"ebs.csi.aws.com":"@@instance@@"}',
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "managedFields": [
                _managed(
                    "kubelet",
                    "Update",
                    CREATED,
                    {
                        "f:metadata": {
                            "f:annotations": {
                                ".": {},
                                "f:alpha.kubernetes.io/provided-node-ip": {},
                                "f:volumes.kubernetes.io/controller-managed-attach-detach": {},
                            },
                            "f:labels": {
                                ".": {},
                                **{
                                    f"f:{k}": {}
                                    for k in (
                                        "beta.kubernetes.io/arch",
                                        "beta.kubernetes.io/instance-type",
                                        "beta.kubernetes.io/os",
                                        "eks.amazonaws.com/capacityType",
                                        "eks.amazonaws.com/nodegroup",
                                        "eks.amazonaws.com/nodegroup-image",
                                        "failure-domain.beta.kubernetes.io/region",
                                        "failure-domain.beta.kubernetes.io/zone",
                                        "k8s.io/cloud-provider-aws",
                                        "kubernetes.io/arch",
                                        "kubernetes.io/hostname",
                                        "kubernetes.io/os",
                                        "node.kubernetes.io/instance-type",
                                        "topology.kubernetes.io/region",
                                        "topology.kubernetes.io/zone",
                                    )
                                },
                            },
                        },
                        "f:spec": {"f:providerID": {}},
                    },
                ),
                _managed(
                    "kube-controller-manager",
                    "Update",
                    CREATED,
                    {
                        "f:metadata": {"f:annotations": {"f:node.alpha.kubernetes.io/ttl": {}}},
                        "f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, 'v:"@@podcidr@@"': {}}},
                    },
                ),
                _managed(
                    "aws-ebs-csi-driver",
                    "Update",
                    CREATED,
                    {
                        "f:metadata": {
                            "f:annotations": {"f:csi.volume.kubernetes.io/nodeid": {}},
                            "f:labels": {"f:topology.ebs.csi.aws.com/zone": {}},
                        }
                    },
                ),
                _managed("kubelet", "Update", HEARTBEAT, {"f:status": status_fields}, "status"),
            ],
        },
        "spec": {
            "podCIDR": "@@podcidr@@",
            "podCIDRs": ["@@podcidr@@"],
            "providerID": "aws:///@@zone@@/@@instance@@",
        },
        "status": {
            "capacity": {
                "cpu": "8",
                "ephemeral-storage": "104845292Ki",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
                "memory": "32386524Ki",
                "pods": "58",
            },
            "allocatable": {
                "cpu": "7910m",
                "ephemeral-storage": "95551679124",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
                "memory": "31369692Ki",
                "pods": "58",
            },
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "@@ip@@"},
                {"type": "InternalDNS", "address": "@@hostname@@"},
                {"type": "Hostname", "address": "@@hostname@@"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "@@machineid@@",
                "systemUUID": "@@systemuuid@@",
                "bootID": "@@bootid@@",
                "kernelVersion": "6.1.141-155.222.amzn2023.x86_64",
                "osImage": "Amazon Linux 2023.8.20250818",
                "containerRuntimeVersion": "containerd://1.7.27",
                "kubeletVersion": KUBE_VERSION + "-eks-3025e55",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": images,
            "runtimeHandlers": [
                {
                    "name": "nvidia",
                    "features": {"recursiveReadOnlyMounts": True, "userNamespaces": True},
                },
                {
                    "name": "runc",
                    "features": {"recursiveReadOnlyMounts": True, "userNamespaces": True},
                },
                {"name": "", "features": {"recursiveReadOnlyMounts": True, "userNamespaces": True}},
            ],
            "features": {"supplementalGroupsPolicy": True},
        },
    }
    return Template(doc)


def _probe(port, scheme="HTTP", path="/healthz"):
    return {
        "httpGet": {"path": path, "port": port, "scheme": scheme},
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }


def _cstatus(name, image, ready, started_at):
    st = {
        "name": name,
        "state": {"running": {"startedAt": started_at}},
        "lastState": {},
        "ready": ready,
        "restartCount": 0,
        "image": image,
        "imageID": f"{image.split(':')[0]}@sha256:{_hex(image)}",
        "containerID": f"containerd://@@cid_{name.replace('-', '_')}@@",
        "started": True,
    }
    return st


@dataclass
class DaemonSetSpec:
    namespace: str
    name: str
    host_network: bool
    port_name: str
    port: int
    scheme: str
    containers: list[tuple[str, str]]  # (name, image); the port is on the last
    labels: dict[str, str]
    pod_extra_labels: dict[str, str]
    revision_hash: str


NODE_EXPORTER = DaemonSetSpec(
    namespace="monitoring",
    name="node-exporter",
    host_network=True,
    port_name="https",
    port=9100,
    scheme="https",
    containers=[
        ("node-exporter", "quay.io/prometheus/node-exporter:v1.9.1"),
        ("kube-rbac-proxy", "quay.io/brancz/kube-rbac-proxy:v0.19.1"),
    ],
    labels={
        "app.kubernetes.io/component": "exporter",
        "app.kubernetes.io/name": "node-exporter",
        "app.kubernetes.io/part-of": "kube-prometheus",
    },
    pod_extra_labels={},
    revision_hash="6c9f8b7d5d",
)

DAEMONSETS = (NODE_EXPORTER,)


def pod_template(ds: DaemonSetSpec, ready: bool) -> Template:
    labels = {
        **ds.labels,
        "controller-revision-hash": ds.revision_hash,
        "pod-template-generation": "3",
    }
    containers = []
    for cname, image in ds.containers:
        c = {
            "name": cname,
            "image": image,
            "resources": {
                "limits": {"cpu": "250m", "memory": "180Mi"},
                "requests": {"cpu": "102m", "memory": "180Mi"},
            },
            "volumeMounts": [
                {
                    "name": "kube-api-access-@@sfx@@",
                    "readOnly": True,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                }
            ],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
            "securityContext": {
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
            },
        }
        if cname == "node-exporter":
            c["args"] = [
                "--web.listen-address=127.0.0.1:9100",
                "--path.sysfs=/host/sys",
                "--path.rootfs=/host/root",
                "--path.udev.data=/host/root/run/udev/data",
                "--no-collector.wifi",
                "--no-collector.hwmon",
                "--no-collector.btrfs",
                "--collector.filesystem.mount-points-exclude=^/(dev|proc|sys|run/k3s/containerd/.+|var/lib/docker/.+|var/lib/kubelet/pods/.+)($|/)",
                "--collector.netclass.ignored-devices=^(veth.*|[a-f0-9]{15})$",
                "--collector.netdev.device-exclude=^(veth.*|[a-f0-9]{15})$",
            ]
            c["volumeMounts"] += [
                {
                    "name": "sys",
                    "readOnly": True,
                    "mountPath": "/host/sys",
                    "mountPropagation": "HostToContainer",
                },
                {
                    "name": "root",
                    "readOnly": True,
                    "mountPath": "/host/root",
                    "mountPropagation": "HostToContainer",
                },
            ]
        if (cname, image) == ds.containers[-1]:
            c["ports"] = [
                {"name": ds.port_name, "containerPort": ds.port, "protocol": "TCP"}
                | ({"hostPort": ds.port} if ds.host_network else {})
            ]
            c["livenessProbe"] = _probe(ds.port, ds.scheme.upper())
            c["readinessProbe"] = _probe(ds.port, ds.scheme.upper())
            if cname == "kube-rbac-proxy":
                c["args"] = [
                    "--secure-listen-address=[$(IP)]:9100",
                    "--tls-cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                    "--upstream=http://127.0.0.1:9100/",
                ]
                c["env"] = [
                    {
                        "name": "IP",
                        "valueFrom": {
                            "fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}
                        },
                    }
                ]
        containers.append(c)
    pod_cond = "True" if ready else "False"
    conditions = [
        {
            "type": "PodReadyToStartContainers",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": CREATED,
        },
        {
            "type": "Initialized",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": CREATED,
        },
        {"type": "Ready", "status": pod_cond, "lastProbeTime": None, "lastTransitionTime": CREATED},
        {
            "type": "ContainersReady",
            "status": pod_cond,
            "lastProbeTime": None,
            "lastTransitionTime": CREATED,
        },
        {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": CREATED,
        },
    ]
    doc = {
        "metadata": {
            "name": "@@name@@",
            "generateName": ds.name + "-",
            "namespace": ds.namespace,
            "uid": "@@uid@@",
            "resourceVersion": "@@rv@@",
            "creationTimestamp": CREATED,
            "labels": labels,
            "annotations": {"kubectl.kubernetes.io/default-container": ds.containers[0][0]},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "DaemonSet",
                    "name": ds.name,
                    "uid": _uid("ds", ds.namespace, ds.name),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                _managed(
                    "kube-controller-manager",
                    "Update",
                    CREATED,
                    {
                        "f:metadata": {
                            "f:generateName": {},
                            "f:labels": {".": {}, **{f"f:{k}": {} for k in labels}},
                            "f:ownerReferences": {
                                ".": {},
                                f'k:{{"uid":"{_uid("ds", ds.namespace, ds.name)}"}}': {},
                            },
                        },
                        "f:spec": {
                            "f:affinity": {
                                ".": {},
                                "f:nodeAffinity": {
                                    ".": {},
                                    "f:requiredDuringSchedulingIgnoredDuringExecution": {},
                                },
                            },
                            "f:containers": {
                                f'k:{{"name":"{n}"}}': {".": {}, "f:image": {}, "f:name": {}}
                                for n, _ in ds.containers
                            },
                            "f:dnsPolicy": {},
                            "f:hostNetwork": {},
                            "f:nodeSelector": {},
                            "f:restartPolicy": {},
                            "f:tolerations": {},
                        },
                    },
                ),
                _managed(
                    "kubelet",
                    "Update",
                    CREATED,
                    {
                        "f:status": {
                            "f:conditions": {
                                f'k:{{"type":"{c["type"]}"}}': {
                                    ".": {},
                                    "f:lastProbeTime": {},
                                    "f:lastTransitionTime": {},
                                    "f:status": {},
                                    "f:type": {},
                                }
                                for c in conditions
                            },
                            "f:containerStatuses": {},
                            "f:hostIP": {},
                            "f:hostIPs": {},
                            "f:phase": {},
                            "f:podIP": {},
                            "f:podIPs": {".": {}, 'k:{"ip":"@@podip@@"}': {".": {}, "f:ip": {}}},
                            "f:startTime": {},
                        }
                    },
                    "status",
                ),
            ],
        },
        "spec": {
            "volumes": (
                [
                    {"name": "sys", "hostPath": {"path": "/sys", "type": ""}},
                    {"name": "root", "hostPath": {"path": "/", "type": ""}},
                ]
                if ds.host_network
                else [
                    {"name": "rootfs", "hostPath": {"path": "/", "type": ""}},
                    {"name": "var-run", "hostPath": {"path": "/var/run", "type": ""}},
                ]
            )
            + [
                {
                    "name": "kube-api-access-@@sfx@@",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {
                                                "apiVersion": "v1",
                                                "fieldPath": "metadata.namespace",
                                            },
                                        }
                                    ]
                                }
                            },
                        ],
                        "defaultMode": 420,
                    },
                }
            ],
            "containers": containers,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "serviceAccountName": ds.name,
            "serviceAccount": ds.name,
            "automountServiceAccountToken": True,
            "nodeName": "@@node@@",
            **({"hostNetwork": True, "hostPID": True} if ds.host_network else {}),
            "securityContext": {"runAsUser": 65534, "runAsNonRoot": True},
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchFields": [
                                    {
                                        "key": "metadata.name",
                                        "operator": "In",
                                        "values": ["@@node@@"],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"operator": "Exists"},
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                },
                {
                    "key": "node.kubernetes.io/disk-pressure",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                },
                {
                    "key": "node.kubernetes.io/memory-pressure",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                },
                {
                    "key": "node.kubernetes.io/pid-pressure",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                },
                {
                    "key": "node.kubernetes.io/unschedulable",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                },
            ]
            + (
                [
                    {
                        "key": "node.kubernetes.io/network-unavailable",
                        "operator": "Exists",
                        "effect": "NoSchedule",
                    }
                ]
                if ds.host_network
                else []
            ),
            "priorityClassName": "system-node-critical",
            "priority": 2000001000,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "@@hostip@@",
            "hostIPs": [{"ip": "@@hostip@@"}],
            "podIP": "@@podip@@",
            "podIPs": [{"ip": "@@podip@@"}],
            "startTime": CREATED,
            "containerStatuses": [_cstatus(n, img, ready, CREATED) for n, img in ds.containers],
            "qosClass": "Burstable",
        },
    }
    return Template(doc)


# --------------------------------------------------------------------------


def ip_str(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


NODE_IP_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
POD_NET_BASE = int(ipaddress.IPv4Address("10.128.0.0"))


def node_ip(i: int) -> str:
    a, b = divmod(i, 250)
    return f"10.{a // 256}.{a % 256}.{b + 4}"


def pod_cidr(i: int) -> str:
    return f"{ip_str(POD_NET_BASE + i * 64)}/26"


def pod_net_ip(i: int) -> str:
    """The IP of a pod-network DaemonSet pod on node i (none in the data set
    today: node-exporter runs on the host network)."""
    return ip_str(POD_NET_BASE + i * 64 + 2)


@dataclass
class NodeInfo:
    name: str
    uid: str
    ip: str
    ready: bool
    zone: str


@dataclass
class PodInfo:
    name: str
    uid: str
    node: NodeInfo
    ip: str
    ready: bool


@dataclass
class Resource:
    """One API resource: its items rendered to bytes, sorted the way etcd
    keys sort (namespace, name)."""

    group_version: str  # "v1" or "apps/v1"
    kind: str  # item kind, e.g. "Node"
    plural: str
    namespaced: bool
    items: list[bytes] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # "ns/name" or "name"
    namespaces: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    labels: list[dict[str, str]] = field(default_factory=list)
    fields: list[dict[str, str]] = field(default_factory=list)
    rvs: list[int] = field(default_factory=list)

    def add(
        self, ns: str, name: str, labels: dict, body: bytes, rv: int, fields: dict | None = None
    ):
        self.items.append(body)
        self.namespaces.append(ns)
        self.names.append(name)
        self.labels.append(labels)
        self.fields.append(fields or {})
        self.rvs.append(rv)
        self.keys.append(f"{ns}/{name}" if self.namespaced else name)

    def finish(self) -> None:
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"duplicate {self.plural} names")
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)
        for attr in ("items", "keys", "namespaces", "names", "labels", "fields", "rvs"):
            old = getattr(self, attr)
            setattr(self, attr, [old[i] for i in order])

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    def position_after(self, selection: list[int], key: str) -> int:
        return bisect.bisect_right(selection, key, key=self.keys.__getitem__)


@dataclass
class Pool:
    """One scrape pool as every server of the fleet has it: all the active
    targets before sharding, each with the shard that keeps it."""

    name: str
    namespace: str
    service: str
    role: str
    targets: list[bytes]
    shard_of: list[int]
    discovered: int  # prometheus_sd_discovered_targets: before relabeling, on every shard

    def on_shard(self, shard: int) -> list[bytes]:
        return [t for t, s in zip(self.targets, self.shard_of, strict=True) if s == shard]


@dataclass(frozen=True)
class PromServer:
    """One Prometheus server of the Operator's StatefulSets."""

    name: str  # the exporter's --prometheus-url NAME, k8s-<shard>-<replica>
    shard: int
    replica: int
    pod: str  # prometheus-k8s-<r> (shard 0), prometheus-k8s-shard-<s>-<r>


def server_list(shards: int, replicas: int) -> list[PromServer]:
    """Pod names as the Operator's StatefulSets make them: StatefulSet
    prometheus-k8s for shard 0 and prometheus-k8s-shard-<s> for the others,
    pods <statefulset>-<replica>."""
    out = []
    for s in range(shards):
        sts = "prometheus-k8s" if s == 0 else f"prometheus-k8s-shard-{s}"
        for r in range(replicas):
            out.append(PromServer(f"k8s-{s}-{r}", s, r, f"{sts}-{r}"))
    return out


def default_topology(n_nodes: int) -> tuple[int, int]:
    """(shards, replicas): 2 x 2 from 15k nodes up, 1 x 1 below."""
    return (2, 2) if n_nodes >= 15000 else (1, 1)


def hashmod(value: str, modulus: int) -> int:
    """Prometheus's relabel `hashmod` (model/relabel/relabel.go): md5 of the
    value, its LAST 8 bytes as a big-endian uint64, mod modulus."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


@dataclass
class Dataset:
    nodes_count: int
    resources: dict[tuple[str, str], Resource]  # (group_version, plural)
    pools: list[Pool]
    resource_version: int
    service_selectors: dict[tuple[str, str], dict[str, str]]
    role: str
    shards: int
    replicas: int
    servers: list[PromServer]
    metrics_by_shard: list[bytes]  # each server's /metrics (replicas of a shard agree)

    def summary(self) -> dict:
        out = {}
        for (gv, plural), r in self.resources.items():
            out[f"{gv}/{plural}"] = {"items": len(r.items), "bytes": sum(map(len, r.items))}
        for p in self.pools:
            per_shard = [0] * self.shards
            for s in p.shard_of:
                per_shard[s] += 1
            out[p.name] = {
                "targets": len(p.targets),
                "bytes": sum(map(len, p.targets)),
                "targets_per_shard": per_shard,
                "discovered": p.discovered,
            }
        return out

    def config_yaml(self, server: PromServer) -> str:
        return prometheus_config(self, server)


class _RV:
    def __init__(self, start: int = 1_000_000):
        self.v = start

    def __call__(self) -> int:
        self.v += 1
        return self.v


def _service(ns, name, labels, selector, cluster_ip, ports, rv, annotations=None, headless=False):
    meta = {
        "name": name,
        "namespace": ns,
        "uid": _uid("svc", ns, name),
        "resourceVersion": str(rv),
        "creationTimestamp": CREATED,
        "labels": labels,
    }
    if annotations:
        meta["annotations"] = annotations
    spec = {
        "ports": ports,
        "clusterIP": "None" if headless else cluster_ip,
        "clusterIPs": ["None" if headless else cluster_ip],
        "type": "ClusterIP",
        "sessionAffinity": "None",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
    }
    if selector is not None:
        spec = {
            "ports": ports,
            "selector": selector,
            **{k: v for k, v in spec.items() if k != "ports"},
        }
    return _json({"metadata": meta, "spec": spec, "status": {"loadBalancer": {}}})


def _label_name(k: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", k)


def _meta_labels(prefix: str, labels: dict[str, str], present: bool = True) -> dict[str, str]:
    out = {}
    for k, v in labels.items():
        ln = _label_name(k)
        out[f"{prefix}_label_{ln}"] = v
        if present:
            out[f"{prefix}_labelpresent_{ln}"] = "true"
    return out


def _meta_annotations(prefix: str, ann: dict[str, str]) -> dict[str, str]:
    out = {}
    for k, v in ann.items():
        ln = _label_name(k)
        out[f"{prefix}_annotation_{ln}"] = v
        out[f"{prefix}_annotationpresent_{ln}"] = "true"
    return out


# Prometheus 3.x adds these to every target's discovered labels.
_PROM3_DISCOVERED = {
    "__always_scrape_classic_histograms__": "false",
    "__convert_classic_histograms_to_nhcb__": "false",
    "__scrape_native_histograms__": "false",
}


def _target(
    discovered: dict,
    labels: dict,
    pool: str,
    scheme: str,
    address: str,
    path: str,
    health: str,
    interval: str = "30s",
    timeout: str = "10s",
) -> bytes:
    """One entry of activeTargets, keys in the order Prometheus 3.16 writes
    them (tests/fixtures/captured/operator/targets-*.json)."""
    url = f"{scheme}://{address}{path}"
    doc = {
        "discoveredLabels": dict(sorted({**discovered, **_PROM3_DISCOVERED}.items())),
        "labels": dict(sorted(labels.items())),
        "scrapePool": pool,
        "scrapeUrl": url,
        "globalUrl": url,
        "lastError": "" if health == "up" else f'Get "{url}": context deadline exceeded',
        "lastScrape": LAST_SCRAPE,
        "lastScrapeDuration": 0.021837642 if health == "up" else 10.000871312,
        "health": health,
        "scrapeInterval": interval,
        "scrapeTimeout": timeout,
    }
    return _json(doc)


# The kube-prometheus v0.16.0 ServiceMonitors (the release that ships the
# Operator v0.85.0), as the Operator turns them into jobs: one job per
# endpoint, named serviceMonitor/<SM namespace>/<SM name>/<endpoint index>.
SM_NAMESPACE = "monitoring"
NODE_EXPORTER_SM = {
    "name": "node-exporter",
    "namespaces": ["monitoring"],
    "selector": {
        "app.kubernetes.io/component": "exporter",
        "app.kubernetes.io/name": "node-exporter",
        "app.kubernetes.io/part-of": "kube-prometheus",
    },
    "port": "https",
    "endpoints": [{"path": "/metrics", "interval": "15s"}],
}
KUBELET_SM = {
    "name": "kubelet",
    "namespaces": ["kube-system"],
    "selector": {"app.kubernetes.io/name": "kubelet"},
    "port": "https-metrics",
    "honor_labels": True,
    "endpoints": [
        {"path": "/metrics", "interval": "30s"},
        {"path": "/metrics/cadvisor", "interval": "30s", "honor_timestamps": False},
        {"path": "/metrics/probes", "interval": "30s"},
        # 5s: below the 10s global timeout, so Prometheus lowers the timeout to 5s
        {"path": "/metrics/slis", "interval": "5s"},
    ],
}


def _timeout(interval: str) -> str:
    return interval if int(interval.rstrip("s")) < 10 else "10s"


def build(
    n_nodes: int,
    role: str = "endpoints",
    shards: int | None = None,
    replicas: int | None = None,
) -> Dataset:
    """The cluster of n_nodes. role: the Prometheus CR's
    serviceDiscoveryRole (endpoints, the Operator's default, or
    endpointslice); shards, replicas: default_topology(n_nodes) when None."""
    if role not in ("endpoints", "endpointslice"):
        raise ValueError(f"role must be endpoints or endpointslice, not {role!r}")
    d_shards, d_replicas = default_topology(n_nodes)
    shards = d_shards if shards is None else shards
    replicas = d_replicas if replicas is None else replicas
    if shards < 1 or replicas < 1:
        raise ValueError("shards and replicas must be at least 1")
    rv = _RV()
    nodes_res = Resource("v1", "Node", "nodes", False)
    svc_res = Resource("v1", "Service", "services", True)
    ep_res = Resource("v1", "Endpoints", "endpoints", True)
    eps_res = Resource("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", True)
    ds_res = Resource("apps/v1", "DaemonSet", "daemonsets", True)
    pod_res = Resource("v1", "Pod", "pods", True)
    ns_res = Resource("v1", "Namespace", "namespaces", False)

    # ---- nodes
    templates = {(v, r): node_template(v, r) for v in range(NODE_VARIANTS) for r in (True, False)}
    nodes: list[NodeInfo] = []
    for i in range(n_nodes):
        ip = node_ip(i)
        name = f"ip-{ip.replace('.', '-')}.eu-west-1.compute.internal"
        ready = i % NOT_READY_EVERY != NOT_READY_EVERY - 1
        zone = ZONES[i % 3]
        info = NodeInfo(name, _uid("node", i), ip, ready, zone)
        nodes.append(info)
        body = templates[(i % NODE_VARIANTS, ready)].render(
            {
                "name": name,
                "uid": info.uid,
                "rv": str(rv()),
                "nodegroup": f"workers-{i % 12:02d}-{_hex(('ng', i % 12), 8)}",
                "zone": zone,
                "zoneid": f"euw1-az{i % 3 + 1}",
                "hostname": name,
                "ip": ip,
                "instance": f"i-0{_hex(('i', i), 16)}",
                "podcidr": pod_cidr(i),
                "machineid": _hex(("m", i), 32),
                "systemuuid": "ec2" + _hex(("s", i), 5) + "-" + _uid("sys", i)[9:],
                "bootid": _uid("boot", i),
            }
        )
        nodes_res.add(
            "", name, {}, body, rv.v, {"metadata.name": name, "spec.unschedulable": "false"}
        )
    nodes_res.finish()

    # ---- namespaces
    for ns in (
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "monitoring",
    ):
        ns_res.add(
            "",
            ns,
            {"kubernetes.io/metadata.name": ns},
            _json(
                {
                    "metadata": {
                        "name": ns,
                        "uid": _uid("ns", ns),
                        "resourceVersion": str(rv()),
                        "creationTimestamp": CREATED,
                        "labels": {"kubernetes.io/metadata.name": ns},
                    },
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                }
            ),
            rv.v,
        )
    ns_res.finish()

    pools: list[Pool] = []
    selectors: dict[tuple[str, str], dict[str, str]] = {}
    unique = _UniqueNames()

    # ---- DaemonSet-backed Services
    per_service_pods: dict[str, list[PodInfo]] = {}
    for ds in DAEMONSETS:
        ptemplates = {r: pod_template(ds, r) for r in (True, False)}
        pods: list[PodInfo] = []
        for i, node in enumerate(nodes):
            pname = unique(f"{ds.name}-", (ds.name, i))
            ip = node.ip if ds.host_network else pod_net_ip(i)
            p = PodInfo(pname, _uid("pod", ds.name, i), node, ip, node.ready)
            pods.append(p)
            labels = {
                **ds.labels,
                "controller-revision-hash": ds.revision_hash,
                "pod-template-generation": "3",
            }
            cids = {
                f"cid_{c.replace('-', '_')}": _hex(("c", ds.name, i, c)) for c, _ in ds.containers
            }
            body = ptemplates[node.ready].render(
                {
                    "name": pname,
                    "uid": p.uid,
                    "rv": str(rv()),
                    "sfx": _suffix(("kapi", ds.name, i)),
                    "node": node.name,
                    "hostip": node.ip,
                    "podip": ip,
                    **cids,
                }
            )
            pod_res.add(
                ds.namespace,
                pname,
                labels,
                body,
                rv.v,
                {
                    "metadata.name": pname,
                    "metadata.namespace": ds.namespace,
                    "spec.nodeName": node.name,
                    "status.phase": "Running",
                },
            )
        per_service_pods[ds.name] = pods
        n_ready = sum(p.ready for p in pods)
        ds_res.add(
            ds.namespace,
            ds.name,
            ds.labels,
            _json(
                {
                    "metadata": {
                        "name": ds.name,
                        "namespace": ds.namespace,
                        "uid": _uid("ds", ds.namespace, ds.name),
                        "resourceVersion": str(rv()),
                        "generation": 3,
                        "creationTimestamp": CREATED,
                        "labels": ds.labels,
                        "annotations": {"deprecated.daemonset.template.generation": "3"},
                    },
                    "spec": {
                        "selector": {
                            "matchLabels": {
                                k: v for k, v in ds.labels.items() if "version" not in k
                            }
                        },
                        "template": {
                            "metadata": {"creationTimestamp": None, "labels": ds.labels},
                            "spec": {
                                "containers": [
                                    {"name": c, "image": img} for c, img in ds.containers
                                ],
                                "hostNetwork": ds.host_network or None,
                                "serviceAccountName": ds.name,
                                "nodeSelector": {"kubernetes.io/os": "linux"},
                                "tolerations": [{"operator": "Exists"}],
                                "priorityClassName": "system-node-critical",
                            },
                        },
                        "updateStrategy": {
                            "type": "RollingUpdate",
                            "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0},
                        },
                        "revisionHistoryLimit": 10,
                    },
                    "status": {
                        "currentNumberScheduled": n_nodes,
                        "numberMisscheduled": 0,
                        "desiredNumberScheduled": n_nodes,
                        "numberReady": n_ready,
                        "observedGeneration": 3,
                        "updatedNumberScheduled": n_nodes,
                        "numberAvailable": n_ready,
                        **({"numberUnavailable": n_nodes - n_ready} if n_nodes != n_ready else {}),
                    },
                }
            ),
            rv.v,
        )
        svc_labels = dict(ds.labels)
        selector = {k: v for k, v in ds.labels.items() if "version" not in k}
        selectors[(ds.namespace, ds.name)] = selector
        headless = ds.host_network
        svc_res.add(
            ds.namespace,
            ds.name,
            svc_labels,
            _service(
                ds.namespace,
                ds.name,
                svc_labels,
                selector,
                "172.20.61.14" if not headless else None,
                [
                    {
                        "name": ds.port_name,
                        "protocol": "TCP",
                        "port": ds.port,
                        "targetPort": ds.port_name,
                    }
                ],
                rv(),
                headless=headless,
            ),
            rv.v,
        )
        ep_labels = {**svc_labels, **({"service.kubernetes.io/headless": ""} if headless else {})}
        # Endpoints: controller-made, truncated past 1000 addresses.
        kept_ready, kept_not_ready, truncated = controllers.truncate_endpoints(
            [p for p in pods if p.ready], [p for p in pods if not p.ready], lambda p: p.ip
        )
        ep_ann = {"endpoints.kubernetes.io/last-change-trigger-time": HEARTBEAT}
        if truncated:
            ep_ann[controllers.OVER_CAPACITY_ANNOTATION] = "truncated"

        def addr(p: PodInfo, ns=ds.namespace) -> dict:
            return {
                "ip": p.ip,
                "nodeName": p.node.name,
                "targetRef": {"kind": "Pod", "namespace": ns, "name": p.name, "uid": p.uid},
            }

        subset = {"addresses": [addr(p) for p in kept_ready]}
        if kept_not_ready:
            subset["notReadyAddresses"] = [addr(p) for p in kept_not_ready]
        subset["ports"] = [{"name": ds.port_name, "port": ds.port, "protocol": "TCP"}]
        ep_res.add(
            ds.namespace,
            ds.name,
            ep_labels,
            _json(
                {
                    "metadata": {
                        "name": ds.name,
                        "namespace": ds.namespace,
                        "uid": _uid("ep", ds.namespace, ds.name),
                        "resourceVersion": str(rv()),
                        "creationTimestamp": CREATED,
                        "labels": ep_labels,
                        "annotations": ep_ann,
                    },
                    "subsets": [subset],
                }
            ),
            rv.v,
        )
        # EndpointSlices: 100 endpoints each.
        slice_labels = {
            **ep_labels,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            "kubernetes.io/service-name": ds.name,
        }
        slice_of: dict[str, str] = {}
        for s in range(0, len(pods), SLICE_SIZE):
            chunk = pods[s : s + SLICE_SIZE]
            sname = unique(f"{ds.name}-", ("slice", ds.name, s))
            for p in chunk:
                slice_of[p.name] = sname
            eps_res.add(
                ds.namespace,
                sname,
                slice_labels,
                _json(
                    {
                        "metadata": {
                            "name": sname,
                            "generateName": ds.name + "-",
                            "namespace": ds.namespace,
                            "uid": _uid("eps", ds.namespace, sname),
                            "resourceVersion": str(rv()),
                            "generation": 7,
                            "creationTimestamp": CREATED,
                            "labels": slice_labels,
                            "annotations": {
                                "endpoints.kubernetes.io/last-change-trigger-time": HEARTBEAT
                            },
                            "ownerReferences": [
                                {
                                    "apiVersion": "v1",
                                    "kind": "Service",
                                    "name": ds.name,
                                    "uid": _uid("svc", ds.namespace, ds.name),
                                    "controller": True,
                                    "blockOwnerDeletion": True,
                                }
                            ],
                        },
                        "addressType": "IPv4",
                        "endpoints": [
                            {
                                "addresses": [p.ip],
                                "conditions": {
                                    "ready": p.ready,
                                    "serving": p.ready,
                                    "terminating": False,
                                },
                                "targetRef": {
                                    "kind": "Pod",
                                    "namespace": ds.namespace,
                                    "name": p.name,
                                    "uid": p.uid,
                                },
                                "nodeName": p.node.name,
                                "zone": p.node.zone,
                            }
                            for p in chunk
                        ],
                        "ports": [{"name": ds.port_name, "protocol": "TCP", "port": ds.port}],
                    }
                ),
                rv.v,
            )
        # Prometheus targets.
        common_pod = dict(ds.labels)
        common_pod.update(
            {"controller-revision-hash": ds.revision_hash, "pod-template-generation": "3"}
        )
        port_container = ds.containers[-1]
        # One pool: the ServiceMonitor's only endpoint, in the CR's role.
        sm_ep = NODE_EXPORTER_SM["endpoints"][0]
        interval = sm_ep["interval"]
        pool_name = f"serviceMonitor/{SM_NAMESPACE}/{NODE_EXPORTER_SM['name']}/0"
        base = {
            "__meta_kubernetes_namespace": ds.namespace,
            "__meta_kubernetes_service_name": ds.name,
            **_meta_labels("__meta_kubernetes_service", svc_labels),
            "__meta_kubernetes_pod_container_image": port_container[1],
            "__meta_kubernetes_pod_container_init": "false",
            "__meta_kubernetes_pod_container_name": port_container[0],
            "__meta_kubernetes_pod_container_port_name": ds.port_name,
            "__meta_kubernetes_pod_container_port_number": str(ds.port),
            "__meta_kubernetes_pod_container_port_protocol": "TCP",
            "__meta_kubernetes_pod_controller_kind": "DaemonSet",
            "__meta_kubernetes_pod_controller_name": ds.name,
            **_meta_labels("__meta_kubernetes_pod", common_pod),
            "__meta_kubernetes_pod_phase": "Running",
            "__metrics_path__": "/metrics",
            "__scheme__": ds.scheme,
            "__scrape_interval__": interval,
            "__scrape_timeout__": _timeout(interval),
            "job": pool_name,
        }
        if role == "endpoints":
            base.update(
                {
                    "__meta_kubernetes_endpoints_name": ds.name,
                    **_meta_labels("__meta_kubernetes_endpoints", ep_labels),
                    **_meta_annotations("__meta_kubernetes_endpoints", ep_ann),
                    "__meta_kubernetes_endpoint_port_name": ds.port_name,
                    "__meta_kubernetes_endpoint_port_protocol": "TCP",
                    "__meta_kubernetes_endpoint_address_target_kind": "Pod",
                }
            )
            members = [(p, True) for p in kept_ready] + [(p, False) for p in kept_not_ready]
        else:
            base.update(
                {
                    "__meta_kubernetes_endpointslice_address_type": "IPv4",
                    **_meta_labels("__meta_kubernetes_endpointslice", slice_labels),
                    **_meta_annotations(
                        "__meta_kubernetes_endpointslice",
                        {"endpoints.kubernetes.io/last-change-trigger-time": HEARTBEAT},
                    ),
                    "__meta_kubernetes_endpointslice_port": str(ds.port),
                    "__meta_kubernetes_endpointslice_port_name": ds.port_name,
                    "__meta_kubernetes_endpointslice_port_protocol": "TCP",
                    "__meta_kubernetes_endpointslice_address_target_kind": "Pod",
                    "__meta_kubernetes_endpointslice_endpoint_conditions_terminating": "false",
                }
            )
            members = [(p, p.ready) for p in pods]
        targets = []
        shard_of = []
        for p, ready in members:
            address = f"{p.ip}:{ds.port}"
            d = dict(base)
            d.update(
                {
                    "__address__": address,
                    "__meta_kubernetes_pod_host_ip": p.node.ip,
                    "__meta_kubernetes_pod_ip": p.ip,
                    "__meta_kubernetes_pod_name": p.name,
                    "__meta_kubernetes_pod_node_name": p.node.name,
                    "__meta_kubernetes_pod_ready": "true" if p.ready else "false",
                    "__meta_kubernetes_pod_uid": p.uid,
                }
            )
            if role == "endpoints":
                d["__meta_kubernetes_endpoint_address_target_name"] = p.name
                d["__meta_kubernetes_endpoint_node_name"] = p.node.name
                d["__meta_kubernetes_endpoint_ready"] = "true" if ready else "false"
            else:
                d["__meta_kubernetes_endpointslice_name"] = slice_of[p.name]
                d["__meta_kubernetes_endpointslice_address_target_name"] = p.name
                d["__meta_kubernetes_endpointslice_endpoint_node_name"] = p.node.name
                d["__meta_kubernetes_endpointslice_endpoint_zone"] = p.node.zone
                d["__meta_kubernetes_endpointslice_endpoint_conditions_ready"] = (
                    "true" if ready else "false"
                )
                d["__meta_kubernetes_endpointslice_endpoint_conditions_serving"] = (
                    "true" if ready else "false"
                )
            labels = {
                "container": port_container[0],
                "endpoint": ds.port_name,
                "instance": p.node.name if ds.host_network else address,
                "job": ds.name,
                "namespace": ds.namespace,
                "pod": p.name,
                "service": ds.name,
            }
            targets.append(
                _target(
                    d,
                    labels,
                    pool_name,
                    ds.scheme,
                    address,
                    "/metrics",
                    "up" if p.node.ready else "down",
                    interval,
                    _timeout(interval),
                )
            )
            shard_of.append(hashmod(address, shards))
        # The job discovers one target per address and port of the
        # namespace's Endpoints (or slices): here the Service's one port.
        pools.append(Pool(pool_name, ds.namespace, ds.name, role, targets, shard_of, len(targets)))

    # ---- kubelet: selector-less, operator-written Endpoints, mirrored slices
    kubelet_labels = {
        "app.kubernetes.io/managed-by": "prometheus-operator",
        "app.kubernetes.io/name": "kubelet",
        "k8s-app": "kubelet",
    }
    kubelet_ports = [
        {"name": "https-metrics", "port": 10250, "protocol": "TCP"},
        {"name": "http-metrics", "port": 10255, "protocol": "TCP"},
        {"name": "cadvisor", "port": 4194, "protocol": "TCP"},
    ]
    svc_res.add(
        "kube-system",
        "kubelet",
        kubelet_labels,
        _service(
            "kube-system",
            "kubelet",
            kubelet_labels,
            None,
            None,
            [{**p, "targetPort": p["port"]} for p in kubelet_ports],
            rv(),
            headless=True,
        ),
        rv.v,
    )
    kubelet_nodes = sorted(nodes, key=lambda n: n.ip)
    ep_res.add(
        "kube-system",
        "kubelet",
        kubelet_labels,
        _json(
            {
                "metadata": {
                    "name": "kubelet",
                    "namespace": "kube-system",
                    "uid": _uid("ep", "kube-system", "kubelet"),
                    "resourceVersion": str(rv()),
                    "creationTimestamp": CREATED,
                    "labels": kubelet_labels,
                },
                "subsets": [
                    {
                        "addresses": [
                            {
                                "ip": n.ip,
                                "nodeName": n.name,
                                "targetRef": {"kind": "Node", "name": n.name, "uid": n.uid},
                            }
                            for n in kubelet_nodes
                        ],
                        "ports": kubelet_ports,
                    }
                ],
            }
        ),
        rv.v,
    )
    mirrored = controllers.mirrored(kubelet_nodes)
    mirror_labels = {
        **kubelet_labels,
        "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io",
        "kubernetes.io/service-name": "kubelet",
    }
    mirror_name = f"kubelet-{_suffix('kubelet-mirror')}"
    eps_res.add(
        "kube-system",
        mirror_name,
        mirror_labels,
        _json(
            {
                "metadata": {
                    "name": mirror_name,
                    "generateName": "kubelet-",
                    "namespace": "kube-system",
                    "uid": _uid("eps", "kubelet-mirror"),
                    "resourceVersion": str(rv()),
                    "generation": 41,
                    "creationTimestamp": CREATED,
                    "labels": mirror_labels,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Endpoints",
                            "name": "kubelet",
                            "uid": _uid("ep", "kube-system", "kubelet"),
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [n.ip],
                        "conditions": {"ready": True},
                        "targetRef": {"kind": "Node", "name": n.name, "uid": n.uid},
                        "nodeName": n.name,
                    }
                    for n in mirrored
                ],
                "ports": kubelet_ports
                and [
                    {"name": p["name"], "protocol": "TCP", "port": p["port"]} for p in kubelet_ports
                ],
            }
        ),
        rv.v,
    )
    # One pool per endpoint of the kube-prometheus kubelet ServiceMonitor, all
    # on port https-metrics; cAdvisor is scraped through the kubelet (/1).
    # Role endpoints sees the Operator's Endpoints (every node, never
    # truncated); role endpointslice sees the mirrored slice (at most 1000).
    members = kubelet_nodes if role == "endpoints" else mirrored
    # Every kubelet job discovers every port of every address in
    # kube-system (3 kubelet ports, kube-dns: 2 pods x 3 ports) and keeps one.
    kube_system_discovered = 3 * len(members) + 2 * 3
    for idx, sm_ep in enumerate(KUBELET_SM["endpoints"]):
        pool_name = f"serviceMonitor/{SM_NAMESPACE}/{KUBELET_SM['name']}/{idx}"
        path = sm_ep["path"]
        interval = sm_ep["interval"]
        base = {
            "__meta_kubernetes_namespace": "kube-system",
            "__meta_kubernetes_service_name": "kubelet",
            **_meta_labels("__meta_kubernetes_service", kubelet_labels),
            "__metrics_path__": path,
            "__scheme__": "https",
            "__scrape_interval__": interval,
            "__scrape_timeout__": _timeout(interval),
            "job": pool_name,
        }
        if role == "endpoints":
            base.update(
                {
                    "__meta_kubernetes_endpoints_name": "kubelet",
                    **_meta_labels("__meta_kubernetes_endpoints", kubelet_labels),
                    "__meta_kubernetes_endpoint_port_name": "https-metrics",
                    "__meta_kubernetes_endpoint_port_protocol": "TCP",
                    "__meta_kubernetes_endpoint_address_target_kind": "Node",
                    "__meta_kubernetes_endpoint_ready": "true",
                }
            )
        else:
            base.update(
                {
                    "__meta_kubernetes_endpointslice_name": mirror_name,
                    "__meta_kubernetes_endpointslice_address_type": "IPv4",
                    **_meta_labels("__meta_kubernetes_endpointslice", mirror_labels),
                    "__meta_kubernetes_endpointslice_port": "10250",
                    "__meta_kubernetes_endpointslice_port_name": "https-metrics",
                    "__meta_kubernetes_endpointslice_port_protocol": "TCP",
                    "__meta_kubernetes_endpointslice_address_target_kind": "Node",
                    "__meta_kubernetes_endpointslice_endpoint_conditions_ready": "true",
                }
            )
        targets = []
        shard_of = []
        for n in members:
            address = f"{n.ip}:10250"
            d = dict(base)
            d["__address__"] = address
            if role == "endpoints":
                d["__meta_kubernetes_endpoint_address_target_name"] = n.name
                d["__meta_kubernetes_endpoint_node_name"] = n.name
            else:
                d["__meta_kubernetes_endpointslice_address_target_name"] = n.name
                d["__meta_kubernetes_endpointslice_endpoint_node_name"] = n.name
            labels = {
                "endpoint": "https-metrics",
                "instance": address,
                "job": "kubelet",
                "metrics_path": path,
                "namespace": "kube-system",
                "node": n.name,
                "service": "kubelet",
            }
            targets.append(
                _target(
                    d,
                    labels,
                    pool_name,
                    "https",
                    address,
                    path,
                    "up" if n.ready else "down",
                    interval,
                    _timeout(interval),
                )
            )
            shard_of.append(hashmod(address, shards))
        pools.append(
            Pool(
                pool_name, "kube-system", "kubelet", role, targets, shard_of, kube_system_discovered
            )
        )

    # ---- small objects every cluster has
    svc_res.add(
        "default",
        "kubernetes",
        {"component": "apiserver", "provider": "kubernetes"},
        _service(
            "default",
            "kubernetes",
            {"component": "apiserver", "provider": "kubernetes"},
            None,
            "172.20.0.1",
            [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 443}],
            rv(),
        ),
        rv.v,
    )
    ep_res.add(
        "default",
        "kubernetes",
        {"endpointslice.kubernetes.io/skip-mirror": "true"},
        _json(
            {
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "uid": _uid("ep", "default", "kubernetes"),
                    "resourceVersion": str(rv()),
                    "creationTimestamp": CREATED,
                    "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
                },
                "subsets": [
                    {
                        "addresses": [
                            {"ip": "10.255.0.10"},
                            {"ip": "10.255.1.10"},
                            {"ip": "10.255.2.10"},
                        ],
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP"}],
                    }
                ],
            }
        ),
        rv.v,
    )
    dns_labels = {
        "k8s-app": "kube-dns",
        "kubernetes.io/cluster-service": "true",
        "kubernetes.io/name": "CoreDNS",
    }
    svc_res.add(
        "kube-system",
        "kube-dns",
        dns_labels,
        _service(
            "kube-system",
            "kube-dns",
            dns_labels,
            {"k8s-app": "kube-dns"},
            "172.20.0.10",
            [
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53},
                {"name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 53},
                {"name": "metrics", "protocol": "TCP", "port": 9153, "targetPort": 9153},
            ],
            rv(),
            annotations={"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
        ),
        rv.v,
    )
    for k in range(2):
        pname = f"coredns-5b9dfbf96-{_suffix(('coredns', k))}"
        node = nodes[k]
        ip = ip_str(POD_NET_BASE + k * 64 + 3)
        pod_res.add(
            "kube-system",
            pname,
            {"k8s-app": "kube-dns", "pod-template-hash": "5b9dfbf96"},
            _json(
                {
                    "metadata": {
                        "name": pname,
                        "generateName": "coredns-5b9dfbf96-",
                        "namespace": "kube-system",
                        "uid": _uid("pod", "coredns", k),
                        "resourceVersion": str(rv()),
                        "creationTimestamp": CREATED,
                        "labels": {"k8s-app": "kube-dns", "pod-template-hash": "5b9dfbf96"},
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "ReplicaSet",
                                "name": "coredns-5b9dfbf96",
                                "uid": _uid("rs", "coredns"),
                                "controller": True,
                                "blockOwnerDeletion": True,
                            }
                        ],
                    },
                    "spec": {
                        "containers": [
                            {"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.12.1"}
                        ],
                        "nodeName": node.name,
                    },
                    "status": {
                        "phase": "Running",
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "lastProbeTime": None,
                                "lastTransitionTime": CREATED,
                            }
                        ],
                        "hostIP": node.ip,
                        "hostIPs": [{"ip": node.ip}],
                        "podIP": ip,
                        "podIPs": [{"ip": ip}],
                        "startTime": CREATED,
                    },
                }
            ),
            rv.v,
            {
                "metadata.name": pname,
                "metadata.namespace": "kube-system",
                "spec.nodeName": node.name,
                "status.phase": "Running",
            },
        )

    for r in (svc_res, ep_res, eps_res, ds_res, pod_res):
        r.finish()

    metrics_by_shard = [_prometheus_metrics(pools, shard) for shard in range(shards)]
    resources = {
        (r.group_version, r.plural): r
        for r in (nodes_res, svc_res, ep_res, eps_res, ds_res, pod_res, ns_res)
    }
    return Dataset(
        n_nodes,
        resources,
        pools,
        rv.v,
        selectors,
        role,
        shards,
        replicas,
        server_list(shards, replicas),
        metrics_by_shard,
    )


def _prometheus_metrics(pools: list[Pool], shard: int) -> bytes:
    """One server's /metrics: its own counts (discovered: every target of
    the SD, on every shard; scrape pool targets: its shard's), and the rest
    of a real Prometheus's self-metrics, roughly sized."""
    lines = [
        "# HELP prometheus_build_info A metric with a constant '1' value labeled by version, revision, branch, goversion from which prometheus was built, and the goos and goarch for the build.",
        "# TYPE prometheus_build_info gauge",
        'prometheus_build_info{branch="HEAD",goarch="amd64",goos="linux",goversion="go1.26.8",revision="'
        + PROM_REVISION
        + '",tags="netgo,builtinassets",version="'
        + PROM_VERSION
        + '"} 1',
        "# HELP prometheus_sd_discovered_targets Current number of discovered targets.",
        "# TYPE prometheus_sd_discovered_targets gauge",
    ]
    for p in pools:
        lines.append(
            f'prometheus_sd_discovered_targets{{config="{p.name}",name="scrape"}} {p.discovered}'
        )
    lines += [
        "# HELP prometheus_target_scrape_pool_targets Current number of targets in this scrape pool.",
        "# TYPE prometheus_target_scrape_pool_targets gauge",
    ]
    for p in pools:
        active = sum(1 for s in p.shard_of if s == shard)
        lines.append(f'prometheus_target_scrape_pool_targets{{scrape_job="{p.name}"}} {active}')
    # The rest of a real Prometheus's self-metrics, roughly sized.
    lines += [
        "# HELP prometheus_http_request_duration_seconds Histogram of latencies for HTTP requests.",
        "# TYPE prometheus_http_request_duration_seconds histogram",
    ]
    handlers = [
        "/",
        "/-/healthy",
        "/-/ready",
        "/api/v1/query",
        "/api/v1/query_range",
        "/api/v1/targets",
        "/api/v1/scrape_pools",
        "/api/v1/series",
        "/api/v1/labels",
        "/api/v1/label/:name/values",
        "/api/v1/status/config",
        "/api/v1/status/buildinfo",
        "/api/v1/rules",
        "/api/v1/alerts",
        "/federate",
        "/metrics",
        "/graph",
        "/static/*filepath",
    ]
    buckets = ["0.1", "0.2", "0.4", "1", "3", "8", "20", "60", "120", "+Inf"]
    for h in handlers:
        for b in buckets:
            lines.append(
                f'prometheus_http_request_duration_seconds_bucket{{handler="{h}",le="{b}"}} 1234'
            )
        lines.append(f'prometheus_http_request_duration_seconds_sum{{handler="{h}"}} 12.5')
        lines.append(f'prometheus_http_request_duration_seconds_count{{handler="{h}"}} 1234')
    for p in pools:
        for q in ("0.01", "0.05", "0.5", "0.9", "0.99"):
            lines.append(
                f'prometheus_target_interval_length_seconds{{interval="30s",quantile="{q}"}} 30.0001'
            )
        lines.append(f'prometheus_target_sync_length_seconds_sum{{scrape_job="{p.name}"}} 42.1')
        lines.append(f'prometheus_target_sync_length_seconds_count{{scrape_job="{p.name}"}} 1800')
        lines.append(f'prometheus_target_scrape_pool_sync_total{{scrape_job="{p.name}"}} 1800')
        lines.append("prometheus_target_scrape_pool_exceeded_target_limit_total 0")
    for k in range(600):
        lines.append(f'go_gc_heap_allocs_by_size_bytes_bucket{{le="{8 * (k + 1)}"}} {k * 1000}')
    return ("\n".join(lines) + "\n").encode()


# --------------------------------------------------------------------------
# /api/v1/status/config: the Operator v0.85.0's generated configuration as
# Prometheus 3.16 answers it once loaded (every default filled in, keys in
# its order). Shaped after tests/fixtures/captured/operator/config-*.json,
# captured from the real Operator and Prometheus in the testbed, except that
# Prometheus here runs in the cluster: no api_server, no proxy_url.


def _rule(
    action: str,
    sources: list[str] | None = None,
    regex: str | None = None,
    target: str | None = None,
    replacement: str = "$1",
    modulus: int | None = None,
) -> str:
    out = []
    if sources:
        out.append(f"source_labels: [{', '.join(sources)}]")
    out.append("separator: ;")
    if regex is not None:
        out.append(f"regex: {regex}")
    if modulus is not None:
        out.append(f"modulus: {modulus}")
    if target is not None:
        out.append(f"target_label: {target}")
    out.append(f"replacement: {replacement}")
    out.append(f"action: {action}")
    return "  - " + "\n    ".join(out)


def _job(sm: dict, idx: int, role: str, shards: int, shard: int, extra_relabel: list[str]) -> str:
    ep = sm["endpoints"][idx]
    interval = ep["interval"]
    meta = (
        "__meta_kubernetes_endpoint" if role == "endpoints" else "__meta_kubernetes_endpointslice"
    )
    relabel = [_rule("replace", ["job"], target="__tmp_prometheus_job_name")]
    for key, value in sorted(sm["selector"].items()):
        ln = _label_name(key)
        relabel.append(
            _rule(
                "keep",
                [
                    f"__meta_kubernetes_service_label_{ln}",
                    f"__meta_kubernetes_service_labelpresent_{ln}",
                ],
                f"({value});true",
            )
        )
    kind = [f"{meta}_address_target_kind", f"{meta}_address_target_name"]
    relabel += [
        _rule("keep", [f"{meta}_port_name"], sm["port"]),
        _rule("replace", kind, "Node;(.*)", "node", "${1}"),
        _rule("replace", kind, "Pod;(.*)", "pod", "${1}"),
        _rule("replace", ["__meta_kubernetes_namespace"], target="namespace"),
        _rule("replace", ["__meta_kubernetes_service_name"], target="service"),
        _rule("replace", ["__meta_kubernetes_pod_name"], target="pod"),
        _rule("replace", ["__meta_kubernetes_pod_container_name"], target="container"),
        _rule("drop", ["__meta_kubernetes_pod_phase"], "(Failed|Succeeded)"),
        _rule("replace", ["__meta_kubernetes_service_name"], target="job", replacement="${1}"),
        _rule(
            "replace",
            ["__meta_kubernetes_service_label_app_kubernetes_io_name"],
            "(.+)",
            "job",
            "${1}",
        ),
        _rule("replace", None, target="endpoint", replacement=sm["port"]),
        *extra_relabel,
        _rule("replace", ["__address__", "__tmp_hash"], "(.+);", "__tmp_hash"),
        _rule("hashmod", ["__tmp_hash"], target="__tmp_hash", modulus=shards),
        _rule("keep", ["__tmp_hash", "__tmp_disable_sharding"], f"{shard};|.+;.+"),
    ]
    names = "\n".join(f"      - {n}" for n in sm["namespaces"])
    lines = [
        f"- job_name: serviceMonitor/{SM_NAMESPACE}/{sm['name']}/{idx}",
        *(["  honor_labels: true"] if sm.get("honor_labels") else []),
        f"  honor_timestamps: {'false' if ep.get('honor_timestamps') is False else 'true'}",
        "  track_timestamps_staleness: false",
        f"  scrape_interval: {interval}",
        f"  scrape_timeout: {_timeout(interval)}",
        "  scrape_protocols:",
        "  - OpenMetricsText1.0.0",
        "  - OpenMetricsText0.0.1",
        "  - PrometheusText1.0.0",
        "  - PrometheusText0.0.4",
        "  scrape_native_histograms: false",
        "  always_scrape_classic_histograms: false",
        "  convert_classic_histograms_to_nhcb: false",
        f"  metrics_path: {ep['path']}",
        "  scheme: https",
        "  enable_compression: true",
        "  metric_name_validation_scheme: utf8",
        "  metric_name_escaping_scheme: allow-utf-8",
        "  extra_scrape_metrics: false",
        "  authorization:",
        "    type: Bearer",
        f"    credentials_file: {SA_TOKEN}",
        "  tls_config:",
        "    insecure_skip_verify: true",
        "  follow_redirects: true",
        "  enable_http2: true",
        "  relabel_configs:",
        *relabel,
        "  kubernetes_sd_configs:",
        f"  - role: {role}",
        '    kubeconfig_file: ""',
        "    follow_redirects: true",
        "    enable_http2: true",
        "    namespaces:",
        "      own_namespace: false",
        "      names:",
        names,
    ]
    return "\n".join(lines)


def operator_jobs(
    role: str, shards: int, shard: int, node_exporter_sm: dict = NODE_EXPORTER_SM
) -> list[str]:
    """The scrape jobs (YAML, one string each) the Operator generates for
    the kube-prometheus kubelet and node-exporter ServiceMonitors, for one
    shard. node_exporter_sm: another node-exporter ServiceMonitor (the
    testbed's Service has other labels and port name; bench/server_cost.py)."""
    jobs = []
    metrics_path = _rule("replace", ["__metrics_path__"], target="metrics_path")
    instance = _rule("replace", ["__meta_kubernetes_pod_node_name"], target="instance")
    for sm, extra in ((KUBELET_SM, [metrics_path]), (node_exporter_sm, [instance])):
        for idx in range(len(sm["endpoints"])):
            jobs.append(_job(sm, idx, role, shards, shard, extra))
    return jobs


def prometheus_config(data: Dataset, server: PromServer) -> str:
    """The loaded configuration of one server: the external labels the
    Operator gives every pod, then one job per ServiceMonitor endpoint
    (jobs sorted by ServiceMonitor namespace/name, then endpoint index)."""
    jobs = operator_jobs(data.role, data.shards, server.shard)
    head = [
        "global:",
        "  scrape_interval: 30s",
        "  scrape_timeout: 10s",
        "  evaluation_interval: 30s",
        "  external_labels:",
        "    prometheus: monitoring/k8s",
        f"    prometheus_replica: {server.pod}",
        "  metric_name_validation_scheme: utf8",
        "  scrape_native_histograms: false",
        "  extra_scrape_metrics: false",
        "runtime:",
        "  gogc: 75",
        "  log_level: info",
        "scrape_configs:",
    ]
    tail = [
        "storage:",
        "  tsdb:",
        "    outofordertimewindow: 0",
        "otlp:",
        "  translation_strategy: UnderscoreEscapingWithSuffixes",
        "  label_name_underscore_sanitization: true",
        "  label_name_preserve_multiple_underscores: true",
    ]
    return "\n".join([*head, *jobs, *tail]) + "\n"


if __name__ == "__main__":
    import json
    import sys
    import time

    t = time.perf_counter()
    ds = build(
        int(sys.argv[1]) if len(sys.argv) > 1 else 1000,
        sys.argv[2] if len(sys.argv) > 2 else "endpoints",
    )
    print(f"built in {time.perf_counter() - t:.2f}s", file=sys.stderr)
    print(json.dumps(ds.summary(), indent=1))
