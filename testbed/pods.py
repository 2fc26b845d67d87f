"""The Prometheus Operator's pods, run for real: what the scheduler, the
kubelet and ``prometheus-config-reloader`` do for them in a cluster.

The Operator writes StatefulSets ``prometheus-<name>`` and
``prometheus-<name>-shard-<i>``; kube-controller-manager's real statefulset
controller creates their pods (with the Operator's labels, ports, args and
env). Here, one long-running process (``python -m testbed.pods run``):

- binds each new pod to the testbed's pod node (no scheduler runs; a
  Binding, as kube-scheduler posts it);
- waits for kwok to make it Running with an IP from that node's
  ``spec.podCIDR``, which the testbed sets to a loopback /24 of its own
  (kwok's stage ``prometheus-pod-started``, testbed/kwok-stages.yaml);
- starts one real Prometheus per pod, listening on the pod IP and the
  container's web port, with the pod's ``--web.route-prefix`` and
  ``--web.external-url``, and the Operator's Secret gunzipped and expanded
  with the pod's ``POD_NAME`` and ``SHARD`` (the reloader's work), reloaded
  when the Secret changes;
- marks the pod Ready once that Prometheus answers ``/-/ready`` (the
  Operator's readiness probe), not Ready when it stops answering, and
  restarts a Prometheus that exited (restartPolicy Always);
- stops the Prometheus of a pod that is deleted (or replaced: a new UID).

Why loopback pod IPs: the exporter must read each pod at its pod IP, and no
traffic may leave 127.0.0.0/8. kube-apiserver 1.36 validates pod IPs only as
IPs (``validatePodIPs``: ``IsValidIPForLegacyField``), so 127.x is accepted in
``status.podIPs``; Endpoints and EndpointSlices refuse loopback
(``ValidateEndpointIP``, CVE-2021-25737), so the endpoints and endpointslice
controllers cannot write the ``prometheus-operated`` Service's objects
(testbed/README.md). Every other testbed server stays on 127.0.0.1.

What runs is written to ``<state>/prometheus-pods.json`` (pod, UID, CR,
shard, replica, IP, port, URL, pid) for the Cluster, the tests and
``testbed down``, which stops any pid left there.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from testbed import procs
from testbed.kube import Kube
from testbed.operator import CONFIG_KEY, expand, gunzip

NAME_LABEL = "operator.prometheus.io/name"
SHARD_LABEL = "operator.prometheus.io/shard"
STATE_FILE = "prometheus-pods.json"
NODE = "node-0001"
"""Where the pods are bound: a node every scenario has (node 1 is never
scaled away). Adding a node of its own would change every node count."""
WEB_PORT = 9090
"""The Operator's container port (pkg/prometheus/common.go
MakeContainerPorts): fixed, named by spec.portName (default web)."""
STRATEGIC = "application/strategic-merge-patch+json"
LOOP_SECONDS = 0.5


def choose_cidr() -> str:
    """A loopback /24 nobody here uses: 127.X.Y.0/24 with X in 64..254, so
    testbeds of other worktrees (and 127.0.0.1) are left alone. Checked by
    connecting to the first addresses' web port."""
    rng = random.SystemRandom()
    for _ in range(50):
        net = f"127.{rng.randint(64, 254)}.{rng.randint(0, 255)}.0/24"
        base = ipaddress.ip_network(net).network_address
        if all(_refuses(str(base + i), WEB_PORT) for i in range(1, 17)):
            return net
    raise RuntimeError("no free loopback /24 for pod IPs")


def _refuses(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((ip, port)) != 0


@dataclass
class PodProcess:
    """One pod's Prometheus, as prometheus-pods.json holds it."""

    namespace: str
    name: str
    uid: str
    cr: str
    shard: int
    replica: int
    ip: str
    port: int
    route_prefix: str
    pid: int
    exe: str
    ready: bool = False

    @property
    def url(self) -> str:
        """Base URL, route prefix included (no trailing slash)."""
        return f"http://{self.ip}:{self.port}{self.route_prefix.rstrip('/')}"


def load(state_dir: Path) -> list[PodProcess]:
    """What the runner last wrote: every pod whose Prometheus it runs."""
    try:
        raw = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [PodProcess(**p) for p in raw]


# ---- what a pod asks for ----------------------------------------------------------


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for c in pod["spec"].get("containers") or []:
        if c.get("name") == name:
            return c
    return {}


def _arg(args: list[str], flag: str) -> str | None:
    for a in args:
        if a.startswith(f"--{flag}="):
            return a.split("=", 1)[1]
    return None


def web_port(pod: dict[str, Any]) -> int | None:
    """The prometheus container's port (named spec.portName); None with
    listenLocal, where the Operator declares none."""
    ports = _container(pod, "prometheus").get("ports") or []
    return int(ports[0]["containerPort"]) if ports else None


def route_prefix(pod: dict[str, Any]) -> str:
    args = _container(pod, "prometheus").get("args") or []
    return _arg(args, "web.route-prefix") or "/"


def shard_env(pod: dict[str, Any]) -> str:
    """SHARD as the config-reloader container gets it (a literal value)."""
    for e in _container(pod, "config-reloader").get("env") or []:
        if e.get("name") == "SHARD" and "value" in e:
            return str(e["value"])
    return pod["metadata"]["labels"].get(SHARD_LABEL, "0")


def agent(pod: dict[str, Any]) -> bool:
    """A PrometheusAgent's pod: its Prometheus runs with --agent."""
    return "--agent" in (_container(pod, "prometheus").get("args") or [])


def config_secret(pod: dict[str, Any]) -> str:
    """The Operator's config Secret: `prometheus-<name>`, or `prom-agent-<name>`
    for a PrometheusAgent (pkg/prometheus/common.go PrefixedName)."""
    prefix = "prom-agent" if agent(pod) else "prometheus"
    return f"{prefix}-{pod['metadata']['labels'][NAME_LABEL]}"


def is_ready(pod: dict[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


# ---- the runner ---------------------------------------------------------------------


class Runner:
    def __init__(self, state_dir: Path, kube: Kube, binary: Path, cidr: str,
                 node: str = NODE) -> None:
        self.state_dir = state_dir
        self.kube = kube
        self.binary = binary
        self.cidr = ipaddress.ip_network(cidr)
        self.node = node
        self.children: dict[str, tuple[PodProcess, subprocess.Popen[bytes]]] = {}
        """pod key (namespace/name) -> its Prometheus."""
        self.pending_reload: set[str] = set()
        self.restarts: dict[str, float] = {}
        """pod key -> when its exited Prometheus may start again."""
        self.node_ready = False

    def log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    # -- one pass --

    def step(self) -> None:
        pods = self.kube.list("/api/v1/pods", labelSelector=NAME_LABEL)
        self._ensure_node()
        configs: dict[tuple[str, str], bytes | None] = {}
        seen = set()
        for pod in pods:
            meta = pod["metadata"]
            key = f"{meta['namespace']}/{meta['name']}"
            if meta.get("deletionTimestamp"):
                continue
            if not pod["spec"].get("nodeName"):
                self._bind(pod)
                continue
            ip = (pod.get("status") or {}).get("podIP")
            if (pod.get("status") or {}).get("phase") != "Running" or not ip:
                continue
            if ipaddress.ip_address(ip) not in self.cidr:
                # kwok's node cache lagged behind the podCIDR: the IP is not
                # one this machine can serve. The StatefulSet makes a new pod.
                self.log(f"{key}: IP {ip} outside {self.cidr}; deleting the pod")
                self.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                 grace=0)
                continue
            seen.add(key)
            secret = (meta["namespace"], config_secret(pod))
            if secret not in configs:
                configs[secret] = self._secret(*secret)
            self._run(pod, key, configs[secret])
        for key in [k for k in self.children if k not in seen]:
            self.log(f"{key}: pod gone or deleting; stopping its Prometheus")
            self._stop(key)
        self._save()

    def _ensure_node(self) -> None:
        if self.node_ready:
            return
        node = self.kube.get_or_none(f"/api/v1/nodes/{self.node}")
        if node is None:
            return
        have = node["spec"].get("podCIDR")
        if not have:
            self.kube.patch(f"/api/v1/nodes/{self.node}", {"spec": {"podCIDR": str(self.cidr)}})
            self.log(f"{self.node}: spec.podCIDR set to {self.cidr}")
            # kwok assigns pod IPs from its node cache: let the watch land.
            time.sleep(2)
            return
        if have != str(self.cidr):
            raise RuntimeError(f"{self.node} has podCIDR {have}, not {self.cidr}")
        self.node_ready = True

    def _bind(self, pod: dict[str, Any]) -> None:
        if not self.node_ready:
            return
        meta = pod["metadata"]
        try:
            self.kube.request(
                "POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
                {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"]},
                 "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}},
            )
            self.log(f"{meta['namespace']}/{meta['name']}: bound to {self.node}")
        except ApiException as e:
            if e.status not in (404, 409):  # gone, or bound meanwhile
                raise

    def _secret(self, namespace: str, name: str) -> bytes | None:
        secret = self.kube.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        data = ((secret or {}).get("data") or {}).get(CONFIG_KEY)
        return base64.b64decode(data) if data else None

    def _run(self, pod: dict[str, Any], key: str, raw: bytes | None) -> None:
        meta = pod["metadata"]
        port = web_port(pod)
        if port is None:
            if key not in self.children:
                self.log(f"{key}: listenLocal (no container port): not reachable, not run")
            return
        running = self.children.get(key)
        if running and (running[0].uid != meta["uid"] or running[0].ip != pod["status"]["podIP"]):
            self.log(f"{key}: replaced (uid {meta['uid']}); restarting its Prometheus")
            self._stop(key)
            running = None
        if raw is None:
            return  # the Operator has not written the config yet
        changed = self._write_config(pod, raw)
        if running is None:
            if time.monotonic() < self.restarts.get(key, 0):
                return
            self._start(pod, key, port)
            return
        proc = running[1]
        if proc.poll() is not None:
            self.log(f"{key}: Prometheus exited with {proc.returncode}; restarting in 2 s")
            self.children.pop(key)
            self.restarts[key] = time.monotonic() + 2
            self._set_ready(pod, False)
            return
        if changed:
            self.pending_reload.add(key)
        p = running[0]
        if key in self.pending_reload:
            with contextlib.suppress(OSError):
                if procs.http_post(f"{p.url}/-/reload", timeout=30) == 200:
                    self.pending_reload.discard(key)
                    self.log(f"{key}: reloaded")
        status, _ = procs.http_get(f"{p.url}/-/ready", timeout=1)
        p.ready = status == 200
        if p.ready != is_ready(pod):
            self._set_ready(pod, p.ready)

    def _config_path(self, pod: dict[str, Any]) -> Path:
        return self.state_dir / pod["metadata"]["name"] / "prometheus.env.yaml"

    def _write_config(self, pod: dict[str, Any], raw: bytes) -> bool:
        env = {"POD_NAME": pod["metadata"]["name"], "SHARD": shard_env(pod)}
        text = expand(gunzip(raw).decode(), env)
        path = self._config_path(pod)
        if path.exists() and path.read_text() == text:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return True

    def _start(self, pod: dict[str, Any], key: str, port: int) -> None:
        meta = pod["metadata"]
        ip = pod["status"]["podIP"]
        prefix = route_prefix(pod)
        args = _container(pod, "prometheus").get("args") or []
        external = _arg(args, "web.external-url") or f"http://{ip}:{port}{prefix.rstrip('/')}"
        d = self.state_dir / meta["name"]
        # An emptyDir: a new pod starts with no data.
        shutil.rmtree(d / "data", ignore_errors=True)
        storage = (["--agent", f"--storage.agent.path={d / 'data'}"] if agent(pod) else
                   [f"--storage.tsdb.path={d / 'data'}", "--storage.tsdb.retention.time=1d"])
        argv = [
            str(self.binary), f"--config.file={self._config_path(pod)}", *storage,
            f"--web.listen-address={ip}:{port}",
            f"--web.route-prefix={prefix}",
            f"--web.external-url={external}",
            "--web.enable-lifecycle",
        ]
        proc = procs.spawn(argv, self.state_dir / "logs" / f"{meta['name']}.log",
                           cwd=self.state_dir)
        replica = int(meta["name"].rsplit("-", 1)[1])
        p = PodProcess(meta["namespace"], meta["name"], meta["uid"], meta["labels"][NAME_LABEL],
                       int(shard_env(pod)), replica, ip, port, prefix, proc.pid, argv[0])
        self.children[key] = (p, proc)
        self.pending_reload.discard(key)
        self.log(f"{key}: Prometheus started on {ip}:{port} (pid {proc.pid})")

    def _set_ready(self, pod: dict[str, Any], ready: bool) -> None:
        meta = pod["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = "True" if ready else "False"
        conditions = [{"type": t, "status": status, "lastTransitionTime": now}
                      for t in ("Ready", "ContainersReady")]
        try:
            self.kube.request(
                "PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"status": {"conditions": conditions}}, content_type=STRATEGIC)
            self.log(f"{meta['namespace']}/{meta['name']}: Ready={status}")
        except ApiException as e:
            if e.status != 404:
                raise

    def _stop(self, key: str) -> None:
        p, proc = self.children.pop(key)
        self.pending_reload.discard(key)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.log(f"{key}: Prometheus (pid {p.pid}) stopped")

    def _save(self) -> None:
        out = [asdict(p) for p, _ in sorted(self.children.values(), key=lambda c: c[0].name)]
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(self.state_dir / STATE_FILE)

    def stop_all(self) -> None:
        for key in list(self.children):
            self._stop(key)
        self._save()

    def run(self) -> None:
        stopping = False

        def on_term(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        self._save()
        try:
            while not stopping:
                try:
                    self.step()
                except Exception as e:
                    # A slow or restarting apiserver (urllib3 timeouts are not
                    # OSErrors): the pods keep running; try again next pass,
                    # as a kubelet would.
                    self.log(f"pass failed: {type(e).__name__}: {str(e)[:300]}")
                time.sleep(LOOP_SECONDS)
        finally:
            self.stop_all()


def stop_leftovers(state_dir: Path) -> None:
    """Stops every Prometheus the state file names (a runner that died
    without cleaning up)."""
    for p in load(state_dir):
        procs.terminate(p.pid, p.exe, timeout=10)
    with contextlib.suppress(OSError):
        (state_dir / STATE_FILE).unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.pods")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="schedule and run the Operator's Prometheus pods")
    run.add_argument("--state-dir", type=Path, required=True)
    run.add_argument("--kubeconfig", type=Path, required=True)
    run.add_argument("--prometheus", type=Path, required=True, help="the Prometheus binary")
    run.add_argument("--pod-cidr", required=True)
    run.add_argument("--node", default=NODE)
    args = p.parse_args(argv)
    kube = Kube(args.kubeconfig, pool=4)
    Runner(args.state_dir, kube, args.prometheus, args.pod_cidr, args.node).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
