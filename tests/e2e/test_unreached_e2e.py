"""Issue #19 item 2 on the real testbed: a group of Nodes tainted
`NoExecute`, and node-exporter with the chart's default tolerations
(`NoSchedule` only). The real apiserver holds the taints and the pod
template; what the controllers this testbed does not run would do is done
here by hand: the taint manager evicts the pods there, the DaemonSet
controller stops counting those Nodes (desiredNumberScheduled). Then no
stage expects those Nodes, and only the new finding names them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed import scenarios as s
from testbed.cluster import Cluster
from testbed.kube import Kube
from tests.e2e.conftest import NODES
from tests.e2e.test_cli_e2e import audit_args

TAINTED = sorted(s.nodes(NODES))[:40]
TAINT = {"key": "dedicated", "value": "ingest", "effect": "NoExecute"}
DS = f"/apis/apps/v1/namespaces/{s.MONITORING}/daemonsets/{s.NODE_EXPORTER}"


def _tolerations(kube: Kube, tolerations: list[dict[str, str]]) -> None:
    kube.patch(DS, {"spec": {"template": {"spec": {"tolerations": tolerations}}}})


@pytest.fixture(scope="module")
def ingest_pool(kube: Kube) -> Iterator[None]:
    # The prometheus-node-exporter chart's default tolerations.
    _tolerations(kube, [{"operator": "Exists", "effect": "NoSchedule"}])
    try:
        kube.parallel(lambda n: kube.patch(f"/api/v1/nodes/{n}", {"spec": {"taints": [TAINT]}}),
                      TAINTED)  # fmt: skip
        by_node = s.pod_names_by_node(kube)
        kube.parallel(
            lambda n: kube.delete(f"/api/v1/namespaces/{s.MONITORING}/pods/{by_node[n]}", grace=0),
            [n for n in TAINTED if n in by_node],
        )
        want = NODES - len(TAINTED)
        kube.patch(f"{DS}/status", {"status": {
            "currentNumberScheduled": want, "desiredNumberScheduled": want,
            "numberAvailable": want, "numberReady": want, "updatedNumberScheduled": want,
        }})  # fmt: skip
        yield
    finally:
        _tolerations(kube, [{"operator": "Exists"}])
        kube.parallel(lambda n: kube.patch(f"/api/v1/nodes/{n}", {"spec": {"taints": None}}),
                      TAINTED)  # fmt: skip
        s.scale_nodes(kube, NODES)  # the pods back, the status as it was


def _audit(testbed: Cluster, output: str) -> str:
    args = [*audit_args(testbed)[:-1], output]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1, 3), done.stderr[-3000:]
    return done.stdout


def test_a_noexecute_pool_without_node_exporter_is_named(
    testbed: Cluster, ingest_pool: None
) -> None:
    doc = json.loads(_audit(testbed, "json"))
    (u,) = doc["unreached"]
    assert (u["namespace"], u["daemonset"], u["count"]) == ("monitoring", "node-exporter", 40)
    (taint,) = u["taints"]
    assert (taint["key"], taint["value"], taint["effect"]) == ("dedicated", "ingest", "NoExecute")
    assert taint["nodes"] == TAINTED
    # Not a missing target: the expected set is the controller's 1160.
    (ne,) = [x for x in doc["services"] if x["service"] == s.NODE_EXPORTER]
    assert ne["expected"] == NODES - len(TAINTED)
    missing = {m["node"] for p in ne["prometheus"]["pools"] for m in p["missing"] or ()}
    assert not missing & set(TAINTED)

    text = _audit(testbed, "prometheus")
    series = {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "scrape_coverage_daemonset_unreached_nodes"
    }
    assert series == {
        (
            ("daemonset", "node-exporter"),
            ("namespace", "monitoring"),
            ("taint_effect", "NoExecute"),
            ("taint_key", "dedicated"),
        ): 40.0
    }

    table = _audit(testbed, "table")
    line = next(x for x in table.splitlines() if x.startswith("DaemonSet monitoring/node-exporter"))
    assert "40 nodes never get its pod" in line and "dedicated=ingest:NoExecute" in line
    assert TAINTED[0] in line and "and 30 more" in line
