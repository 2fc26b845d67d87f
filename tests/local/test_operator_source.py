"""The Operator objects' source (sources/kubernetes/operator.py) against a
port where nothing listens: its failure is a source error, never a crash."""

from __future__ import annotations

import pytest


async def test_an_unreachable_apiserver_is_a_source_error_not_a_crash() -> None:
    """Readiness is advice: a refused connection must end as SourceError,
    which the collector logs, never as an exception that ends serve."""
    from kubernetes.client import Configuration

    from coverage_exporter.health import SourceHealth
    from coverage_exporter.sources.errors import SourceError
    from coverage_exporter.sources.kubernetes.api import ApiClient
    from coverage_exporter.sources.kubernetes.kubeconfig import KubeAuth
    from coverage_exporter.sources.kubernetes.operator import OperatorSource
    from testbed.procs import free_ports

    port = free_ports(1)[0]
    auth = KubeAuth(configuration=Configuration(), host=f"http://127.0.0.1:{port}", ssl=False)
    api = ApiClient(auth, SourceHealth("kubernetes"))
    await api.open()
    try:
        refused = f"cannot connect to 127.0.0.1:{port}: connection refused"
        with pytest.raises(SourceError, match=refused):
            await OperatorSource(api).collect()
    finally:
        await api.close()
