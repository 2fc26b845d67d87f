"""The benchmark's Prometheus servers (bench/fake_api.py over
fakes/prometheus.py) answer in the shapes a
real Prometheus 3.16 gave for the Prometheus Operator v0.85.0's config:
same keys in the same order, same label names, same relabel rules. The
real answers are in tests/fixtures/captured/operator/ (see its README.md);
this keeps the benchmark's data set from drifting away from them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bench import dataset, fake_api

REPO = Path(__file__).resolve().parents[2]
CAPTURED = REPO / "tests" / "fixtures" / "captured" / "operator"

POOLS = {
    "kubelet-0": "serviceMonitor/monitoring/kubelet/0",
    "kubelet-1": "serviceMonitor/monitoring/kubelet/1",
    "kubelet-2": "serviceMonitor/monitoring/kubelet/2",
    "kubelet-3": "serviceMonitor/monitoring/kubelet/3",
    "node-exporter-0": "serviceMonitor/monitoring/node-exporter/0",
}
# Names that carry a Kubernetes label or annotation key: the keys differ
# between the testbed's objects and the data set's (kube-prometheus labels,
# the truncation annotation), the families must not.
_KEYED = re.compile(
    r"^(__meta_kubernetes_\w+?_(?:label|labelpresent|annotation|annotationpresent))_.*$"
)


def _families(names) -> set[str]:
    return {_KEYED.sub(r"\1_*", n) for n in names}


@pytest.fixture(scope="module", params=["endpoints", "endpointslice"])
def built(request):
    return dataset.build(60, role=request.param, shards=2, replicas=2)


def _captured_targets(role: str, pool: str) -> dict:
    return json.loads((CAPTURED / f"targets-{role}-{pool}.json").read_text())


def _fake_target(ds: dataset.Dataset, pool_name: str) -> dict:
    pool = next(p for p in ds.pools if p.name == pool_name)
    return json.loads(pool.targets[0])


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_target_shape(built: dataset.Dataset, pool: str) -> None:
    real = _captured_targets(built.role, pool)["data"]["activeTargets"][0]
    fake = _fake_target(built, POOLS[pool])
    assert list(fake) == list(real)
    assert list(fake["labels"]) == list(real["labels"])
    # discovered labels: sorted, as Prometheus sorts them, same families
    assert list(fake["discoveredLabels"]) == sorted(fake["discoveredLabels"])
    fake_f, real_f = _families(fake["discoveredLabels"]), _families(real["discoveredLabels"])
    # Present only when the object has them: the data set's Endpoints carry
    # annotations (the truncation one past 1000 addresses) and its nodes a
    # zone; the testbed's Endpoints had no annotations, its kwok nodes no zone.
    optional = {
        "__meta_kubernetes_endpoints_annotation_*",
        "__meta_kubernetes_endpoints_annotationpresent_*",
        "__meta_kubernetes_endpointslice_endpoint_zone",
    }
    assert fake_f - optional == real_f - optional
    assert fake["scrapeInterval"] == real["scrapeInterval"] or pool.startswith("node-exporter")
    assert fake["scrapeTimeout"] == real["scrapeTimeout"]
    assert fake["discoveredLabels"]["job"] == fake["scrapePool"] == real["scrapePool"]
    if pool.startswith("kubelet"):
        assert fake["labels"]["metrics_path"] == real["labels"]["metrics_path"]


def _targets(bench: fake_api.Bench, pool: str) -> dict:
    """What the first server of shard 0 answers for a pool."""
    body = bench.prometheus[0].answers.targets("active", pool)
    assert body is not None
    return json.loads(b"".join(body.chunks))


def test_targets_response_shape(built: dataset.Dataset) -> None:
    """The envelope of /api/v1/targets?state=active&scrapePool=..."""
    # a data set of its own: the Bench keeps only the joined blobs
    bench = fake_api.Bench(dataset.build(60, built.role, 2, 2), _Args())
    body = _targets(bench, POOLS["kubelet-0"])
    real = _captured_targets(built.role, "kubelet-0")
    assert list(body) == list(real)
    assert list(body["data"]) == list(real["data"])
    assert body["data"]["droppedTargetCounts"] is real["data"]["droppedTargetCounts"] is None


def test_target_churn_flips_health_and_keeps_every_target(built: dataset.Dataset) -> None:
    """--target-churn: the other variant of a pool differs in health only,
    for one target in 100, so counts (what the exporter polls) stay put."""
    bench = fake_api.Bench(dataset.build(400, built.role, 2, 2), _ChurnArgs())
    pool = POOLS["kubelet-0"]
    plain = _targets(bench, pool)  # every other read of a pool is the churned one
    churned = _targets(bench, pool)
    a, b = plain["data"]["activeTargets"], churned["data"]["activeTargets"]
    assert len(a) == len(b) > 100
    flipped = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    assert 0 < len(flipped) <= len(a) // 100 + 1
    for i in flipped:
        assert {a[i]["health"], b[i]["health"]} == {"up", "down"}
        assert {**a[i], "health": None} == {**b[i], "health": None}


def test_shards_split_by_prometheus_hashmod(built: dataset.Dataset) -> None:
    """The real servers kept, on shard 1, only addresses whose md5's last 8
    bytes are 1 mod 2; the fake puts every target on that shard."""
    for pool in POOLS:
        real = _captured_targets(built.role, pool)["data"]["activeTargets"][0]
        assert dataset.hashmod(real["discoveredLabels"]["__address__"], 2) == 1
    for p in built.pools:
        for t, shard in zip(p.targets, p.shard_of, strict=True):
            address = json.loads(t)["discoveredLabels"]["__address__"]
            assert shard == dataset.hashmod(address, 2)
        assert set(p.shard_of) == {0, 1}


def _real_config(role: str) -> dict:
    body = json.loads((CAPTURED / f"config-{role}-shard-1-0.json").read_text())
    return yaml.safe_load(body["data"]["yaml"])


# In the testbed Prometheus runs outside the cluster: the SD blocks name the
# apiserver and its credentials, the jobs a proxy that no scrape gets past.
_TESTBED_ONLY = {"proxy_url", "api_server", "authorization", "tls_config"}


def test_config_shape(built: dataset.Dataset) -> None:
    server = next(s for s in built.servers if s.shard == 1 and s.replica == 0)
    response = json.loads(
        json.dumps({"status": "success", "data": {"yaml": built.config_yaml(server)}})
    )
    real = _real_config(built.role)
    fake = yaml.safe_load(response["data"]["yaml"])
    assert list(fake) == list(real)
    assert list(fake["global"]) == list(real["global"])
    assert (
        fake["global"]["external_labels"]
        == real["global"]["external_labels"]
        == {
            "prometheus": "monitoring/k8s",
            "prometheus_replica": "prometheus-k8s-shard-1-0",
        }
    )
    real_jobs = {j["job_name"]: j for j in real["scrape_configs"]}
    assert [j["job_name"] for j in fake["scrape_configs"]] == list(real_jobs)
    for job in fake["scrape_configs"]:
        rj = real_jobs[job["job_name"]]
        fake_keys = [k for k in job if k not in _TESTBED_ONLY]
        real_keys = [k for k in rj if k not in _TESTBED_ONLY]
        if "node-exporter" in job["job_name"]:
            # kube-prometheus's node-exporter endpoint is https with a token
            # and no honor_labels; the testbed's own one is plain http
            real_keys = [k for k in real_keys if k != "honor_labels"]
        assert fake_keys == real_keys, job["job_name"]
        (fsd,) = job["kubernetes_sd_configs"]
        (rsd,) = rj["kubernetes_sd_configs"]
        assert fsd["role"] == rsd["role"] == built.role
        assert [k for k in fsd if k not in _TESTBED_ONLY] == [
            k for k in rsd if k not in _TESTBED_ONLY
        ]
        assert fsd["namespaces"] == rsd["namespaces"]
        for rule in job["relabel_configs"]:
            assert list(rule) in _rule_key_orders(real), rule
        if "kubelet" in job["job_name"]:
            assert job["relabel_configs"] == rj["relabel_configs"]
            for k in ("scrape_interval", "scrape_timeout", "metrics_path", "honor_timestamps"):
                assert job[k] == rj[k], (job["job_name"], k)
        else:
            # the same Operator rules, around kube-prometheus's selector,
            # port name and instance relabeling
            tail = job["relabel_configs"][-3:]
            assert tail == rj["relabel_configs"][-3:]


def _rule_key_orders(real: dict) -> list[list[str]]:
    return [list(r) for j in real["scrape_configs"] for r in j["relabel_configs"]]


def test_exporter_reads_the_fake_config(built: dataset.Dataset) -> None:
    """The exporter's own parser finds the Operator topology in each server."""
    from coverage_exporter.model.topology import identify
    from coverage_exporter.sources.prometheus.config import parse_config_response

    seen = {}
    for server in built.servers:
        body = json.dumps({"status": "success", "data": {"yaml": built.config_yaml(server)}})
        loaded = parse_config_response(body.encode())
        ident = identify(server.name, loaded.external_labels, loaded.jobs)
        seen[server.name] = (ident.scraper, ident.replica, ident.shard, ident.shards, ident.how)
        assert [j.name for j in loaded.jobs] == sorted(POOLS.values())
        assert {j.role for j in loaded.jobs} == {built.role}
    assert seen == {
        "k8s-0-0": ("monitoring/k8s", "prometheus-k8s-0", 0, 2, "operator"),
        "k8s-0-1": ("monitoring/k8s", "prometheus-k8s-1", 0, 2, "operator"),
        "k8s-1-0": ("monitoring/k8s", "prometheus-k8s-0", 1, 2, "operator"),
        "k8s-1-1": ("monitoring/k8s", "prometheus-k8s-1", 1, 2, "operator"),
    }


def test_default_topology() -> None:
    assert dataset.default_topology(14999) == (1, 1)
    assert dataset.default_topology(15000) == (2, 2)
    assert [s.pod for s in dataset.server_list(2, 2)] == [
        "prometheus-k8s-0",
        "prometheus-k8s-1",
        "prometheus-k8s-shard-1-0",
        "prometheus-k8s-shard-1-1",
    ]


class _Args:
    gzip = False
    gzip_cache_mb = 64
    target_churn = False
    bookmark_interval = 60.0


class _ChurnArgs(_Args):
    target_churn = True
