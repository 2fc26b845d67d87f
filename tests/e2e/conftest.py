"""Session fixtures for the e2e tests: one testbed (real kube-apiserver,
controllers, kwok, Prometheus 2.53 and 3.x, Alertmanager) with the 1200-node
scenario, shared by every module in tests/e2e.

The tests never skip on their own: missing binaries make the fixture fail.
Set COVERAGE_EXPORTER_SKIP_E2E=1 to skip them all. TESTBED_REUSE=1 uses a
testbed already started with ``testbed/testbed up`` (state dir from
TESTBED_STATE_DIR or testbed/state) and leaves it running.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from alerts.generate import render_rules
from testbed import migration, scenarios
from testbed.cluster import REPO, Cluster, state_dir_default
from testbed.kube import Kube
from testbed.procs import free_ports

NODES = scenarios.DEFAULT_NODES
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = os.environ.get("COVERAGE_EXPORTER_SKIP_E2E", "") not in ("", "0")
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            if skip:
                item.add_marker(pytest.mark.skip(reason="COVERAGE_EXPORTER_SKIP_E2E is set"))


def rule_files() -> list[Path]:
    """TESTBED_RULE_FILES (os.pathsep-separated, may be empty), else every
    top-level alerts/*.y*ml that holds rule groups."""
    env = os.environ.get("TESTBED_RULE_FILES")
    if env is not None:
        return [Path(p) for p in env.split(os.pathsep) if p]
    out = []
    for p in sorted((REPO / "alerts").glob("*.y*ml")):
        doc = yaml.safe_load(p.read_text())
        if isinstance(doc, dict) and "groups" in doc:
            out.append(p)
    return out


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The running testbed with the 1200-node scenario applied."""
    if os.environ.get("TESTBED_REUSE", "") not in ("", "0"):
        cluster = Cluster.load(state_dir_default())
        cluster.up()  # starts whatever is not running
        kube = Kube(cluster.kubeconfig)
        scenarios.apply(kube, NODES)
        scenarios.register_server_pods(kube, cluster.prometheus_urls)
        kube.close()
        yield cluster
        return
    cluster = Cluster(
        tmp_path_factory.mktemp("testbed"),
        prometheus=("3", "2"),
        rule_files=rule_files(),
        # Not the default 9842: a running demo must not collide with the tests.
        exporter_address=f"127.0.0.1:{free_ports(1)[0]}",
    )
    try:
        cluster.up()
        kube = Kube(cluster.kubeconfig)
        scenarios.apply(kube, NODES)
        # The servers as pods, for discovery by pod selector (as testbed up does).
        scenarios.register_server_pods(kube, cluster.prometheus_urls)
        kube.close()
        yield cluster
    finally:
        cluster.down(remove_state=False)  # keep logs for a failed run


@pytest.fixture(scope="session")
def kube(testbed: Cluster) -> Iterator[Kube]:
    """Plain-JSON Kubernetes client for the testbed (see testbed.kube)."""
    k = Kube(testbed.kubeconfig)
    yield k
    k.close()


@pytest.fixture(scope="session")
def prometheus_urls(testbed: Cluster) -> dict[str, str]:
    """ "prometheus-3" / "prometheus-2" -> base URL."""
    return testbed.prometheus_urls


@pytest.fixture(scope="session")
def operator_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The operator scenario at 1200 nodes, settled: shared by the modules
    that use the real Operator (test_discovery_e2e.py, then
    test_operator_migration.py), each leaving the CR as it found it."""
    reuse = os.environ.get("OPERATOR_TESTBED_REUSE", "")
    if reuse:
        # A `testbed/testbed up --operator` started by hand (its state dir):
        # used as it is and left running, for a quick rerun while developing.
        yield Cluster.load(reuse)
        return
    rules = tmp_path_factory.mktemp("operator-rules") / "coverage-exporter-fast.rules.yml"
    rules.write_text(yaml.safe_dump(render_rules(fast=True), sort_keys=False))
    cluster = Cluster(
        tmp_path_factory.mktemp("operator-testbed"),
        prometheus=("3",),
        rule_files=[rules],
        exporter_address=f"127.0.0.1:{free_ports(1)[0]}",
        operator=True,
    )
    try:
        cluster.up()
        kube = Kube(cluster.kubeconfig)
        scenarios.apply(kube, NODES, operator=True)
        migration.settle(cluster, kube, timeout=300)
        kube.close()
        yield cluster
    finally:
        cluster.down(remove_state=False)
