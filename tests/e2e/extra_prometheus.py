"""Extra real Prometheus servers for e2e tests that need a topology the
session testbed does not run: HA replicas, shards, a job whose credentials
the apiserver refuses, a reload that switches a job's role.

Each server binds a free loopback port, discovers the testbed's apiserver,
and scrapes simulated targets only through the testbed's closed loopback
proxy, like the testbed's own servers.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed import procs
from testbed.cluster import Cluster, find_binaries
from testbed.kube import Kube
from testbed.prometheus import write_yaml

META = "__meta_kubernetes_"


def sd_job(
    testbed: Cluster,
    name: str,
    service: str,
    port: str,
    role: str,
    token_file: Path | None = None,
    extra_relabel: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A job for one Service, in the shape the testbed's jobs have."""
    namespace, svc = service.split("/")
    meta = "endpoint" if role == "endpoints" else "endpointslice"
    return {
        "job_name": name,
        "scrape_interval": "30s",
        "scrape_timeout": "10s",
        "proxy_url": testbed.scrape_proxy,
        "kubernetes_sd_configs": [
            {
                "api_server": testbed.api_url,
                "authorization": {"credentials_file": str(token_file or testbed.token_file)},
                "tls_config": {"ca_file": str(testbed.ca_file)},
                "role": role,
                "namespaces": {"names": [namespace]},
            }
        ],
        "relabel_configs": [
            {
                "source_labels": [META + "namespace", META + "service_name"],
                "regex": f"{namespace};{svc}",
                "action": "keep",
            },
            {"source_labels": [f"{META}{meta}_port_name"], "regex": port, "action": "keep"},
            *extra_relabel,
        ],
    }


def shard_rules(shards: int, shard: int) -> list[dict[str, Any]]:
    """The Prometheus Operator's sharding rules, $(SHARD) filled in."""
    return [
        {
            "source_labels": ["__address__"],
            "target_label": "__tmp_hash",
            "modulus": shards,
            "action": "hashmod",
        },
        {"source_labels": ["__tmp_hash"], "regex": str(shard), "action": "keep"},
    ]


class ExtraPrometheus:
    def __init__(self, root: Path, name: str, version: str = "3") -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = find_binaries((version,)).prometheus[version]
        self.port = procs.free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Any = None

    def write(self, jobs: Sequence[dict[str, Any]], external_labels: dict[str, str]) -> None:
        write_yaml(
            self.dir / "prometheus.yml",
            {
                "global": {"scrape_interval": "30s", "external_labels": external_labels},
                "scrape_configs": list(jobs),
            },
        )

    def start(self) -> None:
        argv = [
            str(self.binary),
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
        ]
        self.process = procs.spawn(argv, self.dir / "prometheus.log", self.dir)
        procs.wait_for(
            lambda: procs.http_get(f"{self.url}/-/ready")[0] == 200,
            self.name,
            60,
            alive=lambda: self.process.poll() is None,
        )

    def reload(self) -> None:
        assert procs.http_post(f"{self.url}/-/reload") == 200

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            procs.terminate(self.process.pid, str(self.binary), timeout=10)
            self.process.wait(timeout=10)

    def active(self, pool: str) -> list[dict[str, Any]]:
        status, body = procs.http_get(
            f"{self.url}/api/v1/targets?state=active&scrapePool={pool}", timeout=30
        )
        assert status == 200, body
        return json.loads(body)["data"]["activeTargets"]

    def wait_targets(self, pool: str, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            seen = len(self.active(pool))
            if seen == count:
                return
            time.sleep(1)
        raise AssertionError(f"{self.name} {pool}: {seen} active targets, want {count}")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def token_without_endpointslices(kube: Kube, namespace: str, name: str) -> str:
    """A ServiceAccount token the apiserver accepts for Services, Endpoints,
    Pods and Nodes but refuses for discovery.k8s.io EndpointSlices: the
    Prometheus RBAC that the migration's role switch forgets."""
    kube.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"metadata": {"name": name, "namespace": namespace}},
    )
    kube.put_or_create(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        name,
        {
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "endpoints", "pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
    )
    kube.put_or_create(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        name,
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    answer = kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        body={"spec": {"expirationSeconds": 3600}},
    )
    return str(answer["status"]["token"])
