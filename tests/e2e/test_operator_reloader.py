"""The testbed's stand-in for prometheus-config-reloader, on plain data: what
it must do to the Operator's Secret before a Prometheus may load it. (The
real Secret and servers are exercised by test_operator_migration.py.)"""

from __future__ import annotations

import gzip

import pytest

from testbed import operator as op

# The Operator's sharding rules and external labels as it writes them
# (pkg/prometheus/promcfg.go), with a relabel replacement that must survive.
GENERATED = """global:
  external_labels:
    prometheus: monitoring/k8s
    prometheus_replica: $(POD_NAME)
scrape_configs:
- job_name: serviceMonitor/monitoring/kubelet/0
  relabel_configs:
  - source_labels: [__meta_kubernetes_endpoint_address_target_name]
    regex: Node;(.*)
    replacement: ${1}
    target_label: node
  - source_labels: [__tmp_hash, __tmp_disable_sharding]
    regex: $(SHARD);|.+;.+
    action: keep
"""


def test_pods_are_named_as_the_statefulsets_name_them() -> None:
    assert [(p.name, p.shard, p.replica) for p in op.pods()] == [
        ("prometheus-k8s-0", 0, 0),
        ("prometheus-k8s-1", 0, 1),
        ("prometheus-k8s-shard-1-0", 1, 0),
        ("prometheus-k8s-shard-1-1", 1, 1),
    ]


@pytest.mark.parametrize("compress", [True, False])
def test_config_is_gunzipped_and_expanded_per_pod(compress: bool) -> None:
    raw = GENERATED.encode()
    if compress:
        raw = gzip.compress(raw)
    pod = op.pods()[3]
    text = op.pod_config(raw, pod)
    assert "prometheus_replica: prometheus-k8s-shard-1-1" in text
    assert "regex: 1;|.+;.+" in text
    assert "replacement: ${1}" in text  # not an env reference
    assert "$(" not in text


def test_an_unset_variable_fails_like_the_reloader() -> None:
    with pytest.raises(KeyError, match="NAMESPACE"):
        op.pod_config(b"x: $(NAMESPACE)", op.pods()[0])
