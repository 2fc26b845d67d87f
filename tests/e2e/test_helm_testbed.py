"""The chart on the real testbed: `helm install` through a server-side
dry-run and a real apply, least privilege proven with the rendered
ServiceAccount's token, the exporter run with the rendered arguments and
scraped by the real Prometheus, every selector of every rule and dashboard
query answered with series (pint's online check), and the chart's
PrometheusRule loaded by the real Prometheus Operator.

The testbed has no kubelet: the Deployment's pod is never run. The exporter
runs here as a local process with exactly the container's arguments and a
TokenRequest token of the rendered ServiceAccount, which is what the pod
would mount. Tests run in file order and share the module's fixtures.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.generate import render_rules
from dashboards.generate import panel_queries
from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from testbed.procs import free_ports
from tests.e2e.conftest import rule_files
from tests.e2e.waiting import eventually
from tools import chart
from tools.contract import metric_names

RELEASE = NAMESPACE = "coverage-exporter"
N = s.DEFAULT_NODES
NE = ("monitoring", "node-exporter")
DEFAULT_VALUES = chart.CHART / "ci" / "default-values.yaml"
RULE_LABELS = {"release": "kube-prometheus-stack"}  # ci/default-values.yaml


def helm(testbed: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(testbed.kubeconfig), "HELM_CACHE_HOME": "/tmp/helm"}
    done = subprocess.run(
        [str(chart.helm()), *args], capture_output=True, text=True, timeout=300, env=env
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def values_args(testbed: Cluster) -> list[str]:
    servers = [{"name": n, "url": u} for n, u in testbed.prometheus_urls.items()]
    return [
        "--values", str(DEFAULT_VALUES),
        "--set-json", f"prometheus.servers={json.dumps(servers)}",
        "--set", "interval=3",
        "--set", "prometheus.fullRefreshInterval=0",
        # The Operator test's CR must be read within the test, not in 300 s.
        "--set-json", 'extraArgs=["--operator-refresh-interval=3"]',
    ]  # fmt: skip


# Where each kind of the chart lives in the API (for the dry-run and reads).
PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "ServiceMonitor": "/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors",
    "PrometheusRule": "/apis/monitoring.coreos.com/v1/namespaces/{ns}/prometheusrules",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
}


def collection(doc: dict[str, Any]) -> str:
    return PATHS[doc["kind"]].format(ns=doc["metadata"].get("namespace", NAMESPACE))


@pytest.fixture(scope="module")
def rendered(testbed: Cluster) -> list[dict[str, Any]]:
    text = chart.template([DEFAULT_VALUES], RELEASE, NAMESPACE, *values_args(testbed)[2:])
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def crds(kube: Kube) -> list[str]:
    """The Operator's CRDs from its module, as a kube-prometheus-stack
    install brings them; created once (the operator testbed may have)."""
    names = []
    for crd in chart.operator_crds():
        kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        names.append(crd["metadata"]["name"])

    def established() -> bool:
        for name in names:
            got = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = {c["type"]: c["status"] for c in got["status"].get("conditions", [])}
            if conditions.get("Established") != "True":
                return False
        return True

    eventually(established, "the Operator's CRDs to be established", 60)
    return names


def test_server_side_dry_run_accepts_every_object(
    testbed: Cluster, kube: Kube, crds: list[str], rendered: list[dict[str, Any]]
) -> None:
    kube.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    # helm's own: render against the live API (kinds and versions it serves).
    done = helm(
        testbed, "install", RELEASE, str(chart.CHART), "--namespace", NAMESPACE,
        "--dry-run=server", *values_args(testbed),
    )  # fmt: skip
    assert "STATUS: pending-install" in done.stdout
    # And every object through the apiserver's admission and validation,
    # persisting nothing (dryRun=All), as `kubectl apply --dry-run=server`.
    for doc in rendered:
        created = kube.request("POST", collection(doc), doc, query={"dryRun": "All"})
        assert created["metadata"]["name"] == doc["metadata"]["name"]
        assert kube.get_or_none(f"{collection(doc)}/{doc['metadata']['name']}") is None
    kinds = {d["kind"] for d in rendered}
    assert kinds == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
        "ServiceMonitor", "PrometheusRule", "ConfigMap",
    }  # fmt: skip


def test_helm_install_applies_every_object(
    testbed: Cluster, kube: Kube, rendered: list[dict[str, Any]]
) -> None:
    helm(
        testbed, "install", RELEASE, str(chart.CHART), "--namespace", NAMESPACE,
        *values_args(testbed),
    )  # fmt: skip
    for doc in rendered:
        live = kube.get(f"{collection(doc)}/{doc['metadata']['name']}")
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert live["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    status = json.loads(helm(testbed, "status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    rule = kube.get(f"{PATHS['PrometheusRule'].format(ns=NAMESPACE)}/{RELEASE}")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == render_rules()["groups"]


# --- least privilege -------------------------------------------------------------


class TokenClient:
    """Raw HTTPS to the apiserver with one bearer token."""

    def __init__(self, testbed: Cluster, token: str) -> None:
        self.base = testbed.api_url
        self.token = token
        self.ctx = ssl.create_default_context(cafile=str(testbed.ca_file))

    def status(self, method: str, path: str, body: dict[str, Any] | None = None) -> int:
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code


@pytest.fixture(scope="module")
def sa_token(kube: Kube, rendered: list[dict[str, Any]]) -> str:
    """A TokenRequest token of the rendered ServiceAccount, as the kubelet
    would mount it into the pod."""
    (sa,) = [d for d in rendered if d["kind"] == "ServiceAccount"]
    path = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{sa['metadata']['name']}/token"
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }
    return kube.request("POST", path, body)["status"]["token"]


@pytest.fixture(scope="module")
def sa_kubeconfig(
    testbed: Cluster, sa_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    ca = base64.b64encode(Path(testbed.ca_file).read_bytes()).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "testbed",
                        "cluster": {"server": testbed.api_url, "certificate-authority-data": ca},
                    }
                ],
                "users": [{"name": "coverage-exporter", "user": {"token": sa_token}}],
                "contexts": [
                    {"name": "sa", "context": {"cluster": "testbed", "user": "coverage-exporter"}}
                ],
                "current-context": "sa",
            }
        )
    )
    return path


def test_service_account_is_bound_only_to_the_rendered_role(
    kube: Kube, rendered: list[dict[str, Any]]
) -> None:
    (sa,) = [d for d in rendered if d["kind"] == "ServiceAccount"]
    me = {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}

    def names_me(binding: dict[str, Any]) -> bool:
        return any(
            {k: subject.get(k) for k in me} == me for subject in binding.get("subjects") or []
        )

    rbac = "/apis/rbac.authorization.k8s.io/v1"
    mine = [
        (kind, b["roleRef"]["kind"], b["roleRef"]["name"])
        for kind, path in (
            ("ClusterRoleBinding", "clusterrolebindings"),
            ("RoleBinding", "rolebindings"),
        )
        for b in kube.list(f"{rbac}/{path}")
        if names_me(b)
    ]
    assert mine == [("ClusterRoleBinding", "ClusterRole", RELEASE)]
    (role,) = [d for d in rendered if d["kind"] == "ClusterRole"]
    assert kube.get(f"{rbac}/clusterroles/{RELEASE}")["rules"] == role["rules"]


def test_token_reads_what_it_watches_and_nothing_else(testbed: Cluster, sa_token: str) -> None:
    client = TokenClient(testbed, sa_token)
    # The token works: every list the exporter makes is allowed...
    for path in (
        "/api/v1/nodes?limit=1",
        "/api/v1/services?limit=1",
        "/api/v1/endpoints?limit=1",
        "/api/v1/pods?limit=1",
        "/apis/discovery.k8s.io/v1/endpointslices?limit=1",
        "/apis/apps/v1/daemonsets?limit=1",
        "/apis/monitoring.coreos.com/v1/prometheuses?limit=1",
        "/apis/monitoring.coreos.com/v1/servicemonitors?limit=1",
        "/api/v1/namespaces?limit=1",
    ):
        assert client.status("GET", path) == 200, path
    # ...and Secrets, single-object gets, writes and other resources are denied.
    assert client.status("GET", "/api/v1/secrets") == 403
    assert client.status("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets") == 403
    assert client.status("GET", "/api/v1/namespaces/kube-system/secrets") == 403
    assert client.status("GET", "/api/v1/configmaps") == 403
    assert client.status("GET", "/api/v1/nodes/node-0001") == 403
    configmap = {"metadata": {"name": "x"}, "data": {}}
    assert client.status("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", configmap) == 403
    assert client.status("DELETE", "/api/v1/namespaces/monitoring/services/node-exporter") == 403


def test_full_audit_with_the_service_account_token(
    testbed: Cluster, sa_kubeconfig: Path, rendered: list[dict[str, Any]]
) -> None:
    binary = Path(sys.executable).parent / "coverage-exporter"
    urls = [f"--prometheus-url={n}={u}" for n, u in testbed.prometheus_urls.items()]
    done = subprocess.run(
        [str(binary), "audit", f"--kubeconfig={sa_kubeconfig}", *urls, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["complete"] is True
    assert all(source["up"] for source in doc["sources"]), doc["sources"]
    (ne,) = [x for x in doc["services"] if (x["namespace"], x["service"]) == NE]
    assert {m["node"] for m in ne["endpoints"]["missing"]} == s.endpoints_dropped_nodes(N)
    assert "forbidden" not in done.stderr.lower()


# --- the exporter as the pod would run it, scraped by the testbed Prometheus -----


def deployment_args(rendered: list[dict[str, Any]]) -> list[str]:
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["args"]


@pytest.fixture(scope="module")
def exporter(
    testbed: Cluster,
    sa_kubeconfig: Path,
    rendered: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    args = [
        f"--web.listen-address={testbed.exporter_address}"
        if a.startswith("--web.listen-address=")
        else a
        for a in deployment_args(rendered)
    ]
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    binary = Path(sys.executable).parent / "coverage-exporter"
    # Rules as shipped (the session may have loaded a fast copy).
    testbed.reload_prometheus(rule_files=rule_files())
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary), *args, f"--kubeconfig={sa_kubeconfig}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://{testbed.exporter_address}/-/ready"
        eventually(lambda: urllib.request.urlopen(url, timeout=5).status == 200, "ready", 180)
        yield log
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_exporter_with_rendered_args_is_scraped(testbed: Cluster, exporter: Path) -> None:
    for url in testbed.prometheus_urls.values():
        eventually(lambda url=url: query(url, 'up{job="coverage-exporter"} == 1'), "a scrape", 120)
        info = eventually(
            lambda url=url: query(url, "scrape_coverage_build_info"), "build_info", 60
        )
        assert {"version", "revision", "python_version"} <= info[0]["metric"].keys()
    assert "forbidden" not in exporter.read_text().lower()
    assert "Traceback" not in exporter.read_text()


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def selectors(expr: str) -> set[str]:
    """Every vector selector of a PromQL expression, as written (name and
    matchers). Built on the contract's metric-name parser; the matchers are
    the braces that follow the name."""
    out = set()
    for name in metric_names(expr):
        for m in re.finditer(rf"(?<![a-zA-Z0-9_:$]){re.escape(name)}\s*(\{{[^}}]*\}})?", expr):
            if not re.match(r"\s*\(", expr[m.end() :]):
                out.add(name + (m.group(1) or ""))
    return out


def rule_selectors() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for group in render_rules()["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            out.setdefault(name, set()).update(selectors(rule["expr"]))
    return out


def test_selector_parser_finds_selectors_with_matchers() -> None:
    expr = 'sum by (a) (rate(x_total{job=~"a.*"}[5m])) / on (a) y:z:max > 0 unless absent(w)'
    assert selectors(expr) == {'x_total{job=~"a.*"}', "y:z:max", "w"}


def empty_selectors(url: str, wanted: set[str], timeout: float = 240) -> list[str]:
    """The selectors without series once they are exactly the ones expected
    empty, or after `timeout`. Both ways must settle: recorded series need
    an evaluation after the first scrapes, and a server restarted by an
    earlier module (test_faults.py restarts prometheus-2) is still
    discovering for up to the exporter's discovery grace (2 min), its
    targets rightly unknown until then."""
    allowed = expected_empty(wanted)
    deadline = time.monotonic() + timeout
    while True:
        empty = sorted(sel for sel in wanted if not query(url, f"count({sel})"))
        if empty == allowed or time.monotonic() > deadline:
            return empty
        time.sleep(2)


# Series that by contract exist only in another scenario than this one (every
# Prometheus answering): docs/metrics.md, "Only while the replica's coverage
# is unknown". Here they must be absent, which is checked too.
ONLY_WHILE_UNKNOWN = {
    "scrape_coverage_prometheus_unknown_targets",
    "namespace_service_scrape_pool_replica:scrape_coverage_prometheus_unknown_targets:max",
}


# Series that by contract exist only while a finding holds (docs/metrics.md:
# "absent when none"); this testbed taints no Node, so they are absent here.
# tests/e2e/test_unreached_e2e.py checks them where the finding holds.
ONLY_WITH_A_FINDING = {"scrape_coverage_daemonset_unreached_nodes"}


# Migration readiness series exist only for Prometheus Operator CRs (none
# exist yet when these run; the Operator test below checks they appear).
OPERATOR_SERIES = "scrape_coverage_operator_"


def expected_empty(wanted: set[str]) -> list[str]:
    return sorted(
        sel
        for sel in wanted
        if sel.split("{")[0] in ONLY_WHILE_UNKNOWN | ONLY_WITH_A_FINDING
        or OPERATOR_SERIES in sel.split("{")[0]
    )


def unexpected_series(url: str, wanted: set[str], empty: list[str]) -> dict[str, list[Any]]:
    """For a failure message: the series of selectors expected empty that
    are not (which server, pool and reason)."""
    present = sorted(set(expected_empty(wanted)) - set(empty))
    return {sel: [r["metric"] for r in query(url, sel)][:5] for sel in present}


def test_every_rule_selector_returns_series(testbed: Cluster, exporter: Path) -> None:
    """pint's promql/series check, online: a selector that matches nothing
    (a renamed metric, a label the exporter does not set) makes its rule
    silently never fire."""
    wanted = {sel for sels in rule_selectors().values() for sel in sels}
    assert len(wanted) >= 10
    for name, url in testbed.prometheus_urls.items():
        empty = empty_selectors(url, wanted)
        assert empty == expected_empty(wanted), (name, unexpected_series(url, wanted, empty))


def test_every_dashboard_selector_returns_series(testbed: Cluster, exporter: Path) -> None:
    wanted = {sel for _, expr in panel_queries(substitute=True) for sel in selectors(expr)}
    assert len(wanted) >= 10
    url = testbed.prometheus_urls["prometheus-3"]
    empty = empty_selectors(url, wanted)
    assert empty == expected_empty(wanted), unexpected_series(url, wanted, empty)


# --- the chart's PrometheusRule through the real Operator ------------------------

OPERATOR_NAME = "rules-check"
PROMETHEUSES = f"/apis/monitoring.coreos.com/v1/namespaces/{NAMESPACE}/prometheuses"
RELOADER_IMAGE = "quay.io/prometheus-operator/prometheus-config-reloader"


def operator_binary() -> Path:
    version = chart.versions().get("OPERATOR_VERSION", "v0.85.0")
    return chart.cache_dir() / "prometheus-operator" / version / "operator"


@pytest.fixture(scope="module")
def operator(
    testbed: Cluster, kube: Kube, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    binary = operator_binary()
    if not binary.exists():
        pytest.skip(
            f"{binary} is not built: `testbed/build.sh operator` comes with the operator "
            "testbed (branch operator-testbed); this test runs once that has landed"
        )
    (port,) = free_ports(1)
    version = chart.versions().get("OPERATOR_VERSION", "v0.85.0")
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    # Watches only the chart's namespace, so it never touches the objects of
    # an operator the testbed itself may run (monitoring).
    argv = [
        str(binary),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--namespaces={NAMESPACE}",
        # Only written into the StatefulSet, never pulled: no kubelet here.
        f"--prometheus-config-reloader={RELOADER_IMAGE}:{version}",
        "--log-level=info",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(testbed.kubeconfig)},
        )
    cr = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": OPERATOR_NAME, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            # kube-prometheus-stack's selectors: its release label.
            "ruleSelector": {"matchLabels": RULE_LABELS},
            "ruleNamespaceSelector": {},
            "serviceMonitorSelector": {"matchLabels": RULE_LABELS},
            "serviceMonitorNamespaceSelector": {},
        },
    }
    kube.create(PROMETHEUSES, cr)
    try:
        yield log
    finally:
        process.terminate()
        process.wait(timeout=30)
        kube.delete(f"{PROMETHEUSES}/{OPERATOR_NAME}")
        testbed.reload_prometheus(rule_files=rule_files())


def test_operator_puts_the_chart_rule_into_prometheus_rule_files(
    testbed: Cluster,
    kube: Kube,
    operator: Path,
    exporter: Path,
    tmp_path: Path,
) -> None:
    rulefiles = f"prometheus-{OPERATOR_NAME}-rulefiles-0"
    configmap = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{rulefiles}"
    data = eventually(
        lambda: (kube.get_or_none(configmap) or {}).get("data"),
        "the Operator to write the rule ConfigMap " + operator.read_text()[-2000:],
        120,
    )
    (key,) = [k for k in data if f"{NAMESPACE}-{RELEASE}-" in k]
    groups = yaml.safe_load(data[key])["groups"]
    assert [g["name"] for g in groups] == [g["name"] for g in render_rules()["groups"]]
    # The generated config points Prometheus at that ConfigMap's mount.
    secret = kube.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/prometheus-{OPERATOR_NAME}")
    raw = gzip.decompress(base64.b64decode(secret["data"]["prometheus.yaml.gz"]))
    config = yaml.safe_load(raw)
    mount = f"/etc/prometheus/rules/{rulefiles}"
    assert any(p.startswith(mount) for p in config["rule_files"]), config["rule_files"]
    # No kubelet here: do its part, project the ConfigMap's files into the
    # directory the real Prometheus reads, and reload it.
    rules_dir = tmp_path / rulefiles
    rules_dir.mkdir()
    for name, content in data.items():
        (rules_dir / name).write_text(content)
    testbed.reload_prometheus(rule_files=[rules_dir / "*.yaml"])
    url = testbed.prometheus_urls["prometheus-3"]

    def evaluated() -> list[dict[str, Any]] | None:
        with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=30) as r:
            loaded = json.load(r)["data"]["groups"]
        ours = [g for g in loaded if g["file"].startswith(str(rules_dir))]
        rules = [rule for g in ours for rule in g["rules"]]
        if len(ours) != len(groups) or not all(
            r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules
        ):
            return None
        return rules

    rules = eventually(evaluated, "Prometheus to load and evaluate the Operator's rule file", 120)
    # The rendered RBAC covers migration readiness too: the exporter, with
    # the ServiceAccount's token, reads the CR and exports its state.
    info = eventually(
        lambda: query(url, f'scrape_coverage_operator_migration_info{{name="{OPERATOR_NAME}"}}'),
        "migration readiness of the Prometheus CR",
        120,
    )
    assert info[0]["metric"]["namespace"] == NAMESPACE
    by_name = {r["name"]: r for r in rules if r["type"] == "alerting"}
    # The scenario truncates node-exporter's Endpoints: the rule sees it.
    assert by_name["ScrapeCoverageEndpointsTruncated"]["state"] in ("pending", "firing")


# --- TLS, basic auth and a namespace scope: the probes as the kubelet runs them ----

SECURE = "coverage-exporter-secure"  # release and namespace
SCOPED = "monitoring"  # scope.namespaces


def probe_as_kubelet(probe: dict[str, Any], ports: dict[str, int], address: str) -> int:
    """One httpGet probe as the kubelet makes it (pkg/probe/http): the
    rendered scheme, path, port and headers, and for HTTPS no certificate
    verification. The container port is mapped to where the exporter runs."""
    get = probe["httpGet"]
    port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
    assert port, get
    scheme = get.get("scheme", "HTTP").lower()
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
    req = urllib.request.Request(f"{scheme}://{address}{get['path']}", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=probe.get("timeoutSeconds", 1) + 5):
            return 200
    except urllib.error.HTTPError as err:
        return err.code


def test_tls_basic_auth_and_namespace_scope_keep_probes_and_rbac_working(
    testbed: Cluster, kube: Kube, crds: list[str], tmp_path: Path
) -> None:
    import bcrypt

    kube.create("/api/v1/namespaces", {"metadata": {"name": SECURE}})
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", f"/CN={SECURE}", "-keyout", str(tmp_path / "tls.key"),
         "-out", str(tmp_path / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    # Relative paths: relative to web-config.yml, wherever the Secret is mounted.
    web_config = {
        "tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key"},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()},
    }
    files = {
        "web-config.yml": yaml.safe_dump(web_config),
        "tls.crt": (tmp_path / "tls.crt").read_text(),
        "tls.key": (tmp_path / "tls.key").read_text(),
    }
    kube.create(
        f"/api/v1/namespaces/{SECURE}/secrets",
        {"metadata": {"name": "web"}, "stringData": files},
    )
    helm(
        testbed, "install", SECURE, str(chart.CHART), "--namespace", SECURE, *values_args(testbed),
        "--set", "webConfig.secretName=web", "--set", "webConfig.tls=true",
        "--set-json", f'scope.namespaces=["{SCOPED}"]',
        # Discovery scoped too: cluster-wide (the default) it would grant
        # pods in the ClusterRole (test_chart.py), which is what the scope
        # is meant to withhold here.
        "--set-json", f'prometheus.discovery.namespaces=["{SCOPED}"]',
        "--set", "serviceMonitor.enabled=false", "--set", "prometheusRule.enabled=false",
        "--set", "dashboard.enabled=false",
    )  # fmt: skip
    try:
        deployment = kube.get(f"/apis/apps/v1/namespaces/{SECURE}/deployments/{SECURE}")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        # The kubelet's part: project the Secret volume's files.
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "web-config"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "web-config"]
        secret = kube.get(f"/api/v1/namespaces/{SECURE}/secrets/{volume['secret']['secretName']}")
        web_dir = tmp_path / "web"
        web_dir.mkdir()
        for name, data in secret["data"].items():
            (web_dir / name).write_bytes(base64.b64decode(data))
        # The ServiceAccount's token: bound to the Roles of the scope only.
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
        sa = pod["serviceAccountName"]
        token = kube.request(
            "POST", f"/api/v1/namespaces/{SECURE}/serviceaccounts/{sa}/token", body
        )["status"]["token"]
        client = TokenClient(testbed, token)
        assert client.status("GET", f"/api/v1/namespaces/{SCOPED}/pods?limit=1") == 200
        assert client.status("GET", f"/api/v1/namespaces/{SCOPED}/services?limit=1") == 200
        assert client.status("GET", "/api/v1/nodes?limit=1") == 200
        operator_objects = f"/apis/monitoring.coreos.com/v1/namespaces/{SCOPED}/prometheuses"
        assert client.status("GET", operator_objects + "?watch=1&timeoutSeconds=1") == 200
        # Cluster-wide only the list of migration readiness, no watch.
        everywhere = "/apis/monitoring.coreos.com/v1/prometheuses?watch=1&timeoutSeconds=1"
        assert client.status("GET", everywhere) == 403
        for path in ("/api/v1/pods", "/api/v1/services", "/api/v1/endpoints",
                     "/apis/discovery.k8s.io/v1/endpointslices", "/apis/apps/v1/daemonsets",
                     "/api/v1/namespaces/kube-system/pods"):  # fmt: skip
            assert client.status("GET", path + "?limit=1") == 403, path
        kubeconfig = tmp_path / "kubeconfig"
        ca = base64.b64encode(Path(testbed.ca_file).read_bytes()).decode()
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "t", "cluster": {"server": testbed.api_url,
                                                  "certificate-authority-data": ca}}
                    ],
                    "users": [{"name": "sa", "user": {"token": token}}],
                    "contexts": [{"name": "sa", "context": {"cluster": "t", "user": "sa"}}],
                    "current-context": "sa",
                }
            )
        )  # fmt: skip
        # The module's exporter holds the testbed's exporter address.
        address = f"127.0.0.1:{free_ports(1)[0]}"
        args = []
        for a in container["args"]:
            if a.startswith("--web.listen-address="):
                a = f"--web.listen-address={address}"
            args.append(a.replace(mount["mountPath"], str(web_dir)))
        assert f"--web.config.file={web_dir}/web-config.yml" in args
        log = tmp_path / "exporter.log"
        binary = Path(sys.executable).parent / "coverage-exporter"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(binary), *args, f"--kubeconfig={kubeconfig}"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            probes = {p: container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
            assert {p["httpGet"]["scheme"] for p in probes.values()} == {"HTTPS"}
            for name, probe in probes.items():
                eventually(
                    lambda probe=probe: probe_as_kubelet(probe, ports, address) == 200,
                    f"the {name} to succeed: " + log.read_text()[-2000:],
                    180,
                )
            # TLS and basic auth are really on: everything else needs both.
            insecure = ssl.create_default_context()
            insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(f"https://{address}/metrics", context=insecure, timeout=10)
            assert denied.value.code == 401
            auth = base64.b64encode(b"prometheus:s3cret").decode()
            req = urllib.request.Request(
                f"https://{address}/metrics", headers={"Authorization": f"Basic {auth}"}
            )
            with urllib.request.urlopen(req, context=insecure, timeout=10) as r:
                up = re.search(
                    rb'scrape_coverage_source_up\{[^}]*source="kubernetes"[^}]*\} (\S+)', r.read()
                )
            assert up and float(up.group(1)) == 1
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                urllib.request.urlopen(f"http://{address}/-/healthy", timeout=10)
            assert "forbidden" not in log.read_text().lower()
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        helm(testbed, "uninstall", SECURE, "-n", SECURE, check=False)
