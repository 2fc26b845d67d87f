"""A load balancer that ends every watch right after its headers, in front
of the testbed's real kube-apiserver (issue #21 item 14): the Kubernetes
source goes down, and once the watches stay open again it is back within
one cycle, without a restart. The same scenario as
tests/local/test_watches_cut.py, here with the real server's watches,
bookmarks and 1,200 Nodes; the proxy is the test's (plain HTTP to the
exporter, TLS with the testbed's CA to the apiserver), on 127.0.0.1.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import yaml

from coverage_exporter.sources.kubernetes.source import KubernetesSource
from testbed.cluster import Cluster
from tests.local.test_watches_cut import CuttingProxy, cut_then_pass

INTERVAL = 3.0
"""As tests/e2e/test_faults.py's exporter: cycles are counted, not timed."""


async def test_the_source_is_back_within_one_cycle_of_the_first_watch_that_stays_open(
    testbed: Cluster, tmp_path: Path
) -> None:
    proxy = CuttingProxy(testbed.api_url, ssl.create_default_context(cafile=str(testbed.ca_file)))
    await proxy.start()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "lb", "cluster": {"server": proxy.url}}],
                    "users": [{"name": "u", "user": {"token": testbed.token}}],
                    "contexts": [{"name": "lb", "context": {"cluster": "lb", "user": "u"}}],
                    "current-context": "lb",
                }
            )
        )
        source = KubernetesSource(kubeconfig=str(kubeconfig))
        counted = await cut_then_pass(source, proxy, INTERVAL)
    finally:
        await proxy.stop()
    assert counted <= 2
    assert proxy.passed, "the real apiserver's watches went through once passed"
