"""The testbed's processes: etcd, kube-apiserver, kube-controller-manager,
kwok, Alertmanager with a webhook receiver, and Prometheus 2.53 and/or 3.x.
With ``operator=True``: the real Prometheus Operator (under a restarting
supervisor), kube-controller-manager's statefulset and garbage collector
controllers, and testbed/pods.py, which runs one Prometheus 3.x per pod of
the Operator's StatefulSets at its pod IP (CR ``monitoring/k8s``: 2 shards
x 2 replicas); the testbed's own ``prometheus-3`` then only scrapes the
exporter and evaluates the rules.

Everything binds 127.0.0.1 on free ports. Ports, pids and the admin token live
in ``<state_dir>/state.json`` so a later process (``testbed env``, ``down``, a
test) can find and stop what an earlier one started.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import certs, procs
from testbed import operator as op
from testbed import pods as oppods
from testbed import prometheus as promcfg
from testbed import scrapers as scr
from testbed.scenarios import SERVER_POD_SELECTOR

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO / "testbed"
DEFAULT_STATE_DIR = TESTBED / "state"
DEFAULT_EXPORTER_ADDRESS = "127.0.0.1:9842"
# Scrapes of simulated targets go through this proxy, where nothing listens
# (port 1 is privileged and unused), so they fail without leaving loopback.
DEFAULT_SCRAPE_PROXY = "http://127.0.0.1:1"
PROMETHEUS_VERSIONS = ("3", "2")
# Start order; stop runs in reverse.
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kwok")
MONITORING = ("webhook", "alertmanager", "prometheus-3", "prometheus-2")
OPERATOR = ("prometheus-operator", "prometheus-pods")
SERVICE_CIDR = "10.96.0.0/16"
# Pod IPs for non-hostNetwork pods; kwok's default /24 runs out at 254.
POD_CIDR = "10.128.0.0/10"


def state_dir_default() -> Path:
    return Path(os.environ.get("TESTBED_STATE_DIR") or DEFAULT_STATE_DIR)


def _versions() -> dict[str, str]:
    out = {}
    for line in (TESTBED / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kwok: Path
    prometheus: dict[str, Path]  # "2" | "3" -> binary
    alertmanager: Path
    operator: Path | None = None


def find_binaries(
    prometheus: Sequence[str] = PROMETHEUS_VERSIONS, operator: bool = False,
) -> Binaries:
    """Binaries built by testbed/build.sh; raises (never skips) when one is missing."""
    v = _versions()
    cache = Path(
        os.environ.get("COVERAGE_EXPORTER_CACHE") or Path.home() / ".cache/coverage-exporter"
    )
    k8s = cache / "kubernetes" / v["KUBERNETES_VERSION"]
    am = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or ""
    prom_dirs = {"3": v["PROMETHEUS3_VERSION"], "2": v["PROMETHEUS2_VERSION"]}
    b = Binaries(
        etcd=cache / "etcd" / v["ETCD_VERSION"] / "etcd",
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kwok=cache / "kwok" / v["KWOK_VERSION"] / "kwok",
        prometheus={p: cache / "prometheus" / prom_dirs[p] / "prometheus" for p in prometheus},
        alertmanager=Path(am),
        operator=cache / "prometheus-operator" / v["OPERATOR_VERSION"] / "operator"
        if operator else None,
    )
    paths = [b.etcd, b.kube_apiserver, b.kube_controller_manager, b.kwok, *b.prometheus.values()]
    if b.operator:
        paths.append(b.operator)
    missing = [str(p) for p in paths if not (p.is_file() and os.access(p, os.X_OK))]
    if not am:
        missing.append("prometheus-alertmanager (apt-get install prometheus-alertmanager)")
    if missing:
        raise FileNotFoundError(
            "testbed binaries missing (run testbed/install-deps.sh): " + ", ".join(missing)
        )
    return b


AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Leases renew every 15 min per node (kwok): noise for a harness
        # that asks who read what.
        {"level": "None", "resources": [{"group": "coordination.k8s.io"}]},
        {"level": "Metadata", "verbs": ["get", "list", "watch"]},
        {"level": "None"},
    ],
}
"""Reads only, at Metadata level (user agent, verb, URI, status, times):
a LIST names its resourceVersion, limit and sendInitialEvents in its URI;
a WATCH is logged when its response starts and when it ends."""


KCM_CONTROLLERS = (
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "namespace-controller",
)
"""What the testbed's kube-controller-manager runs (a cluster needs no
other for the scenarios)."""


def _checked_controllers(names: Sequence[str]) -> list[str]:
    unknown = set(names) - set(KCM_CONTROLLERS)
    if unknown:
        raise ValueError(f"unknown controllers {sorted(unknown)}: not in {KCM_CONTROLLERS}")
    return sorted(names)


class Cluster:
    """One testbed. ``up()`` starts everything; ``start``/``stop`` act on one
    component by name (see CONTROL_PLANE and MONITORING)."""

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        prometheus: Sequence[str] = PROMETHEUS_VERSIONS,
        rule_files: Sequence[Path | str] = (),
        exporter_address: str = DEFAULT_EXPORTER_ADDRESS,
        scrape_proxy: str = DEFAULT_SCRAPE_PROXY,
        target_interval: str = "15s",
        operator: bool = False,
        scrapers: Sequence[str] = (),
        without_controllers: Sequence[str] = (),
        monitoring: bool = True,
        audit_log: bool = False,
    ) -> None:
        """monitoring False: the control plane only (etcd, kube-apiserver,
        kube-controller-manager, kwok), for a harness that starts its own
        Prometheus (bench/server_cost.py). audit_log: kube-apiserver writes
        an audit log of reads (AUDIT_POLICY) to ``audit_log_path``, the
        only record of which client (user agent) sent which request.
        scrapers: kinds of testbed.scrapers (vmagent, agent, thanos) to
        run beside the Prometheus servers. without_controllers: names of
        KCM_CONTROLLERS the kube-controller-manager does not run (KEP-4974's
        cluster runs without endpoints-controller and
        endpointslice-mirroring-controller)."""
        self.state_dir = Path(state_dir) if state_dir else state_dir_default()
        self.state_dir = self.state_dir.resolve()
        self._state: dict[str, Any] = {
            "prometheus": [p for p in PROMETHEUS_VERSIONS if p in prometheus],
            "rule_files": [str(Path(p).resolve()) for p in rule_files],
            "exporter_address": exporter_address,
            "scrape_proxy": scrape_proxy,
            "target_interval": target_interval,
            "operator": operator,
            # (--kubelet-endpoints, --kubelet-endpointslice) of the operator.
            "kubelet_flags": list(op.KUBELET_FLAGS["start"]),
            "scrapers": scr.components(list(scrapers)),
            "without_controllers": _checked_controllers(without_controllers),
            "monitoring": monitoring,
            "audit_log": audit_log,
            "ports": {},
            "pids": {},
        }
        if not monitoring and (operator or scrapers):
            raise ValueError("the operator and the scrapers need the monitoring components")
        if monitoring and not self._state["prometheus"]:
            raise ValueError(f"prometheus must name some of {PROMETHEUS_VERSIONS}")
        if operator and "3" not in self._state["prometheus"]:
            raise ValueError("the operator scenario runs Prometheus 3.x")

    # ---- persistent state -------------------------------------------------

    @classmethod
    def load(cls, state_dir: Path | str | None = None) -> Cluster:
        """The testbed an earlier process started; FileNotFoundError if none."""
        c = cls(state_dir)
        c._state = json.loads((c.state_dir / "state.json").read_text())
        return c

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(self._state, indent=2))
        tmp.replace(self.state_dir / "state.json")

    @property
    def operator(self) -> bool:
        return bool(self._state.get("operator"))

    @property
    def kubelet_flags(self) -> tuple[bool, bool]:
        endpoints, endpointslice = self._state["kubelet_flags"]
        return bool(endpoints), bool(endpointslice)

    @property
    def monitoring(self) -> bool:
        return bool(self._state.get("monitoring", True))

    @property
    def components(self) -> list[str]:
        if not self.monitoring:
            return list(CONTROL_PLANE)
        mon = [m for m in MONITORING if not m.startswith("prometheus-")]
        mon += [f"prometheus-{v}" for v in self._state["prometheus"]]
        return [*CONTROL_PLANE, *mon, *(OPERATOR if self.operator else ()), *self.scrapers]

    @property
    def scrapers(self) -> list[str]:
        """Components of testbed.scrapers this testbed runs."""
        return list(self._state.get("scrapers", ()))

    @property
    def target_interval(self) -> str:
        return self._state.get("target_interval", "15s")

    def port_of(self, name: str) -> int:
        return self._port(name)

    def prometheus_binary(self, version: str) -> Path:
        return find_binaries((version,)).prometheus[version]

    # ---- addresses and files -----------------------------------------------

    def _port(self, name: str) -> int:
        return int(self._state["ports"][name])

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "token"

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self._port('kube-apiserver')}"

    @property
    def prometheus_urls(self) -> dict[str, str]:
        """Component name ("prometheus-3", "prometheus-2") -> base URL."""
        if not self.monitoring:
            return {}
        return {
            f"prometheus-{v}": f"http://127.0.0.1:{self._port(f'prometheus-{v}')}"
            for v in self._state["prometheus"]
        }

    @property
    def operator_prometheus_urls(self) -> dict[str, str]:
        """Pod name of each running operator-managed Prometheus -> base URL
        (its pod IP and web port)."""
        return {p.name: p.url for p in self.operator_pods()}

    def operator_pods(self) -> list[oppods.PodProcess]:
        """The Operator's pods whose Prometheus runs now (testbed/pods.py)."""
        return oppods.load(self.state_dir) if self.operator else []

    @property
    def pod_cidr(self) -> str:
        """The loopback /24 of the Operator's pod IPs (testbed/pods.py)."""
        return str(self._state["pod_cidr"])

    @property
    def operator_port(self) -> int:
        return self._port("prometheus-operator")

    @property
    def sa_token_file(self) -> Path:
        """Token of ServiceAccount monitoring/prometheus-k8s: the CR's
        apiserver credentials (a TokenRequest of 24 h, renewed at each
        operator start)."""
        return self.state_dir / "token-prometheus-k8s"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self._port('alertmanager')}"

    @property
    def webhook_log(self) -> Path:
        return self.state_dir / "webhook.jsonl"

    @property
    def exporter_address(self) -> str:
        return self._state["exporter_address"]

    @property
    def scrape_proxy(self) -> str:
        return self._state["scrape_proxy"]

    @property
    def audit_log_path(self) -> Path | None:
        """kube-apiserver's audit log (JSON lines), when asked for."""
        return self.state_dir / "audit.log" if self._state.get("audit_log") else None

    def log_file(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def env(self) -> dict[str, str]:
        """What tests and the exporter need, as environment variables."""
        env = {
            "TESTBED_STATE_DIR": str(self.state_dir),
            "KUBECONFIG": str(self.kubeconfig),
            "KUBE_API_URL": self.api_url,
            "KUBE_TOKEN_FILE": str(self.token_file),
            "KUBE_CA_FILE": str(self.ca_file),
            "SCRAPE_PROXY": self.scrape_proxy,
        }
        if self.monitoring:
            env.update({
                "PROMETHEUS_URLS": ",".join(self.prometheus_urls.values()),
                "ALERTMANAGER_URL": self.alertmanager_url,
                "WEBHOOK_LOG": str(self.webhook_log),
                "EXPORTER_ADDRESS": self.exporter_address,
            })
        for name, url in self.prometheus_urls.items():
            env[name.upper().replace("-", "_") + "_URL"] = url
        if not self.operator:
            # The servers as pods (scenarios.register_server_pods).
            env["PROMETHEUS_POD_SELECTOR"] = SERVER_POD_SELECTOR
        if self.scrapers:
            # NAME=URL, as --prometheus-url takes it.
            env["SCRAPER_URLS"] = ",".join(f"{n}={u}" for n, u in scr.urls(self).items())
        if self.operator:
            # NAME=URL, as --prometheus-url takes it (comma-separated in
            # COVERAGE_EXPORTER_PROMETHEUS_URL); the names are the pod names.
            env["RULES_PROMETHEUS_URL"] = env.pop("PROMETHEUS_3_URL")
            env["PROMETHEUS_URLS"] = ",".join(
                f"{n}={u}" for n, u in self.operator_prometheus_urls.items())
            env["OPERATOR_URL"] = f"http://127.0.0.1:{self.operator_port}"
        return env

    def write_kubeconfig(self, path: Path | None = None, *, insecure: bool = False) -> Path:
        """Admin kubeconfig (bearer token; CA data, or insecure-skip-tls-verify)."""
        path = path or self.kubeconfig
        cluster: dict[str, Any] = {"server": self.api_url}
        if insecure:
            cluster["insecure-skip-tls-verify"] = True
        else:
            cluster["certificate-authority-data"] = base64.b64encode(
                self.ca_file.read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": cluster}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "admin"}}],
            "current-context": "testbed",
        }
        promcfg.write_yaml(path, cfg)
        path.chmod(0o600)
        return path

    # ---- lifecycle ----------------------------------------------------------

    def is_running(self, name: str) -> bool:
        p = self._state["pids"].get(name)
        return bool(p) and procs.pid_alive(p["pid"], p["exe"])

    def pid(self, name: str) -> int | None:
        p = self._state["pids"].get(name)
        return p["pid"] if p and self.is_running(name) else None

    def running(self) -> list[str]:
        return [n for n in self.components if self.is_running(n)]

    def non_loopback_peers(self) -> dict[str, set[str]]:
        """Component -> TCP peers outside 127.0.0.0/8 (must stay empty); a
        component's child processes (the supervised operator) count too."""
        out = {}
        for name in self.running():
            pid = self.pid(name)
            if not pid:
                continue
            bad = {p for q in (pid, *procs.descendants(pid)) for p in procs.socket_peers(q)
                   if not procs.is_loopback(p)}
            if bad:
                out[name] = bad
        return out

    def up(self, timeout: float = 120) -> None:
        """Starts every component not already running, in dependency order."""
        self._binaries = find_binaries(self._state["prometheus"], self.operator)
        proxy_port = int(self.scrape_proxy.rsplit(":", 1)[1])
        if not procs.port_refuses(proxy_port):
            raise RuntimeError(f"something listens on the scrape proxy {self.scrape_proxy}")
        self._prepare()
        for name in self.components:
            if not self.is_running(name):
                self.start(name, timeout=timeout)

    def _prepare(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        names = [*self.components, "etcd-peer", "kube-controller-manager", "kwok",
                 *(scr.GRPC[n] for n in self.scrapers if n in scr.GRPC)]
        needed = [n for n in dict.fromkeys(names) if n not in self._state["ports"]]
        for n, port in zip(needed, procs.free_ports(len(needed)), strict=True):
            self._state["ports"][n] = port
        if self.operator and "pod_cidr" not in self._state:
            self._state["pod_cidr"] = oppods.choose_cidr()
        certs.ensure_pki(self.pki)
        if not self.token_file.exists():
            self.token_file.write_text(secrets.token_hex(24) + "\n")
            self.token_file.chmod(0o600)
        (self.state_dir / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        self._save()
        self.write_kubeconfig()
        self.write_configs()

    def write_configs(
        self, rule_files: Sequence[Path | str] | None = None, exporter_address: str | None = None,
    ) -> None:
        """(Re)writes the Alertmanager and Prometheus configs; call
        ``reload_prometheus()`` afterwards if Prometheus runs."""
        if rule_files is not None:
            self._state["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
        if exporter_address is not None:
            self._state["exporter_address"] = exporter_address
        self._save()
        if self._state.get("audit_log"):
            promcfg.write_yaml(self.state_dir / "audit-policy.yaml", AUDIT_POLICY)
        if not self.monitoring:
            return
        webhook = f"http://127.0.0.1:{self._port('webhook')}/"
        promcfg.write_yaml(self.state_dir / "alertmanager" / "alertmanager.yml",
                           promcfg.render_alertmanager(webhook))
        for v in self._state["prometheus"]:
            cfg = promcfg.render_prometheus(
                scenario_jobs=not self.operator,
                api_server=self.api_url,
                token_file=self.token_file,
                ca_file=self.ca_file,
                alertmanager=f"127.0.0.1:{self._port('alertmanager')}",
                exporter_address=self.exporter_address,
                rule_files=self._state["rule_files"],
                proxy_url=self.scrape_proxy,
                target_interval=self._state.get("target_interval", "15s"),
            )
            promcfg.write_yaml(self.state_dir / f"prometheus-{v}" / "prometheus.yml", cfg)
        scr.write_configs(self, self.scrapers)

    def start_scrapers(self, kinds: Sequence[str], timeout: float = 120) -> list[str]:
        """Starts the scrapers of these kinds beside a running testbed;
        returns their component names (``stop_scrapers`` stops them)."""
        added = [n for n in scr.components(list(kinds)) if n not in self.scrapers]
        self._state["scrapers"] = [*self.scrapers, *added]
        self._prepare()
        for name in self.scrapers:
            if not self.is_running(name):
                self.start(name, timeout=timeout)
        return added

    def stop_scrapers(self) -> None:
        for name in reversed(self.scrapers):
            self.stop(name)
        self._state["scrapers"] = []
        self._save()

    def reload_prometheus(
        self, rule_files: Sequence[Path | str] | None = None, exporter_address: str | None = None,
    ) -> None:
        """Rewrites the configs and asks every running Prometheus to reload."""
        self.write_configs(rule_files, exporter_address)
        for name, url in self.prometheus_urls.items():
            if self.is_running(name):
                status = procs.http_post(f"{url}/-/reload")
                if status != 200:
                    log = procs.tail(self.log_file(name))
                    raise RuntimeError(f"{name} reload failed ({status}): {log}")

    def start(self, name: str, timeout: float = 120) -> None:
        """Starts one component (same port as before) and waits until ready."""
        if name not in self.components:
            raise KeyError(name)
        if self.is_running(name):
            return
        if not hasattr(self, "_binaries"):
            self._binaries = find_binaries(self._state["prometheus"], self.operator)
        if name == "prometheus-operator":
            self._prepare_operator()
        argv = self._argv(name)
        env = {"KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": str(REPO)}
        proc = procs.spawn(argv, self.log_file(name), cwd=self.state_dir, env=env)
        self._state["pids"][name] = {"pid": proc.pid, "exe": argv[0]}
        self._save()
        try:
            procs.wait_for(lambda: self._ready(name), name, timeout,
                           alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            log = self.log_file(name)
            raise RuntimeError(f"{e}; log {log}:\n{procs.tail(log)}") from e

    def stop(self, name: str, *, force: bool = False, timeout: float = 10) -> None:
        """Stops one component by its recorded pid: SIGTERM, SIGKILL after
        timeout (kube-apiserver stops listening at once but takes ~20 s to
        exit), or SIGKILL at once if force."""
        p = self._state["pids"].get(name)
        if p:
            procs.terminate(p["pid"], p["exe"], timeout=timeout, force=force)
            self._state["pids"].pop(name, None)
            self._save()
        if name == "prometheus-pods":
            # Its Prometheus servers, should it have died without stopping them.
            oppods.stop_leftovers(self.state_dir)

    def set_without_controllers(self, names: Sequence[str]) -> None:
        """Restarts the kube-controller-manager without these controllers
        (none: all of KCM_CONTROLLERS). Objects stay as they were written."""
        self._state["without_controllers"] = _checked_controllers(names)
        self._save()
        self.restart("kube-controller-manager")

    @property
    def kcm_controllers(self) -> list[str]:
        off = set(self._state.get("without_controllers", ()))
        return [c for c in KCM_CONTROLLERS if c not in off]

    def set_kubelet_flags(self, endpoints: bool, endpointslice: bool) -> None:
        """Restarts the operator with these kubelet flags: it reloads none."""
        self._state["kubelet_flags"] = [endpoints, endpointslice]
        self._save()
        self.restart("prometheus-operator")

    def _prepare_operator(self) -> None:
        """CRDs Established, then RBAC, the Prometheus CR and ServiceMonitors;
        the operator would otherwise start with its Prometheus controller off."""
        from testbed.kube import Kube

        kube = Kube(self.kubeconfig)
        try:
            version = _versions()["OPERATOR_VERSION"]
            op.install_crds(kube, op.crd_bodies(version))
            cr = op.prometheus_cr(
                version=_versions()["PROMETHEUS3_VERSION"], api_url=self.api_url,
                credentials_file=self.sa_token_file, ca_file=self.ca_file,
            )
            op.apply_objects(kube, cr, op.servicemonitors(self.scrape_proxy), self.sa_token_file)
        finally:
            kube.close()

    def restart(self, name: str, timeout: float = 120) -> None:
        self.stop(name)
        self.start(name, timeout=timeout)

    def down(self, *, remove_state: bool = True) -> None:
        for name in reversed([*CONTROL_PLANE, *MONITORING, *OPERATOR, *scr.COMPONENTS]):
            self.stop(name)
        if remove_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def wait_ready(self, name: str, timeout: float = 60) -> None:
        procs.wait_for(lambda: self._ready(name), name, timeout)

    # ---- per-component details --------------------------------------------

    def _argv(self, name: str) -> list[str]:
        b, s, port = self._binaries, self.state_dir, self._port
        if name == "etcd":
            client, peer = f"http://127.0.0.1:{port('etcd')}", f"http://127.0.0.1:{port('etcd-peer')}"
            return [
                str(b.etcd), "--name=testbed", f"--data-dir={s / 'etcd'}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=testbed={peer}", "--unsafe-no-fsync", "--log-level=warn",
            ]
        if name == "kube-apiserver":
            return [
                str(b.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{port('etcd')}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={port('kube-apiserver')}",
                f"--cert-dir={s / 'apiserver-certs'}",
                f"--tls-cert-file={self.pki / 'apiserver.crt'}",
                f"--tls-private-key-file={self.pki / 'apiserver.key'}",
                f"--token-auth-file={s / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer=https://127.0.0.1:{port('kube-apiserver')}",
                f"--service-account-key-file={self.pki / 'sa.pub'}",
                f"--service-account-signing-key-file={self.pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                # The default reconciler keeps failing to write 127.0.0.1 into
                # default/kubernetes Endpoints (loopback is rejected).
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
                *self._audit_flags(),
            ]
        if name == "kube-controller-manager":
            controllers = list(self.kcm_controllers)
            if self.operator:
                # The Operator's StatefulSets get their pods; shards removed
                # go (the Operator deletes them with foreground propagation,
                # which only the garbage collector completes), and so do
                # the objects of a deleted CR. Not in KCM_CONTROLLERS: the
                # scenarios never turn them off.
                controllers += ["statefulset-controller", "garbage-collector-controller"]
            return [
                str(b.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                f"--controllers={','.join(controllers)}",
                "--bind-address=127.0.0.1", f"--secure-port={port('kube-controller-manager')}",
                f"--cert-dir={s / 'kcm-certs'}",
                # Defaults stated on purpose: they are what the scenario tests.
                "--max-endpoints-per-slice=100",
                "--mirroring-max-endpoints-per-subset=1000",
                "--kube-api-qps=100", "--kube-api-burst=200",
                "--profiling=false",
                "--v=1",
            ]
        if name == "kwok":
            return [
                str(b.kwok),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={TESTBED / 'kwok-stages.yaml'}",
                "--manage-all-nodes=true",
                f"--cidr={POD_CIDR}",
                f"--server-address=127.0.0.1:{port('kwok')}",
                # Leases renew every duration/4; nothing here reads them.
                "--node-lease-duration-seconds=3600",
            ]
        if name == "webhook":
            return [sys.executable, str(TESTBED / "webhook.py"),
                    f"--port={port('webhook')}", f"--out={self.webhook_log}"]
        if name == "alertmanager":
            d = s / "alertmanager"
            return [
                str(b.alertmanager), f"--config.file={d / 'alertmanager.yml'}",
                f"--storage.path={d / 'data'}",
                f"--web.listen-address=127.0.0.1:{port('alertmanager')}",
                f"--web.external-url=http://127.0.0.1:{port('alertmanager')}",
                "--cluster.listen-address=",
            ]
        if name == "prometheus-operator":
            assert b.operator is not None
            endpoints, endpointslice = self.kubelet_flags
            return [sys.executable, "-m", "testbed.operator", "supervise", "--",
                    *op.operator_argv(b.operator, port(name), endpoints, endpointslice,
                                      _versions()["OPERATOR_VERSION"])]
        if name == "prometheus-pods":
            return [sys.executable, "-m", "testbed.pods", "run",
                    f"--state-dir={s}", f"--kubeconfig={self.kubeconfig}",
                    f"--prometheus={b.prometheus['3']}", f"--pod-cidr={self.pod_cidr}"]
        if name in scr.COMPONENTS:
            return scr.argv(self, name, self._state["ports"])
        if name.startswith("prometheus-"):
            v = name.removeprefix("prometheus-")
            d = s / name
            return [
                str(b.prometheus[v]), f"--config.file={d / 'prometheus.yml'}",
                f"--storage.tsdb.path={d / 'data'}",
                f"--web.listen-address=127.0.0.1:{port(name)}",
                f"--web.external-url=http://127.0.0.1:{port(name)}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
            ]
        raise KeyError(name)

    def _audit_flags(self) -> list[str]:
        path = self.audit_log_path
        if path is None:
            return []
        # No rotation within a run: readers keep byte offsets into the file.
        return [f"--audit-policy-file={self.state_dir / 'audit-policy.yaml'}",
                f"--audit-log-path={path}", "--audit-log-maxsize=100000",
                "--audit-log-maxbackup=1", "--audit-log-format=json"]

    def _ready(self, name: str) -> bool:
        port = self._port(name)
        if name == "etcd":
            status, body = procs.http_get(f"http://127.0.0.1:{port}/health")
            return status == 200 and b"true" in body
        if name == "kube-apiserver":
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            status, _ = procs.http_get(f"{self.api_url}/readyz", token=self.token, ctx=ctx)
            return status == 200
        if name in ("kube-controller-manager", "kwok"):
            scheme = "https" if name == "kube-controller-manager" else "http"
            url = f"{scheme}://127.0.0.1:{port}/healthz"
            status, _ = procs.http_get(url, ctx=procs.insecure_ctx())
            return status == 200
        if name == "webhook":
            return procs.http_get(f"http://127.0.0.1:{port}/")[0] == 200
        if name == "prometheus-operator":
            return op.operator_ready(port, *self.kubelet_flags)
        if name == "prometheus-pods":
            return (self.state_dir / oppods.STATE_FILE).exists()
        if name in scr.COMPONENTS:
            return scr.ready(name, port)
        return procs.http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200

