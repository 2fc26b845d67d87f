"""The server-cost harness's own parts (bench/server_cost.py), without a
testbed: the Prometheus configuration it runs is one the real Prometheus
3.16 loads (promtool of that version checks it), with the Operator's pools;
the audit log is read per client from lines the real kube-apiserver wrote;
the goals' figures are the arithmetic the docs say. The harness end to end
is tests/bench/test_server_cost_smoke.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from bench import server_cost, server_cost_goals
from tools import chart

# Lines the testbed's kube-apiserver v1.36 wrote under testbed.cluster's
# AUDIT_POLICY during a bench/server_cost.py run (300 nodes), one per
# (client, verb, stage, resource).
AUDIT = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "captured"
    / "kubernetes"
    / "audit-reads.jsonl"
)


def test_prometheus_config_loads_in_prometheus_3(tmp_path: Path) -> None:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("x\n")
    ca.write_text("")
    cfg = server_cost.prometheus_config(
        "https://127.0.0.1:6443", token, ca, "http://127.0.0.1:1", "1m"
    )
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    promtool = chart.tool("promtool", "PROMETHEUS3_VERSION")
    done = subprocess.run(
        [str(promtool), "check", "config", "--syntax-only", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = cfg["scrape_configs"]
    assert [j["job_name"] for j in jobs] == [
        *server_cost.KUBELET_POOLS,
        server_cost.NODE_EXPORTER_POOL,
    ]
    for job in jobs:
        sd = job["kubernetes_sd_configs"]
        assert sd[0]["role"] == "endpoints" and sd[0]["api_server"] == "https://127.0.0.1:6443"
        assert job["proxy_url"] == "http://127.0.0.1:1"
        assert job["scrape_interval"] == "1m" and job["scrape_timeout"] == "10s"
        # one shard: the Operator's hashmod keeps everything
        hashmod = [r for r in job["relabel_configs"] if r.get("action") == "hashmod"]
        assert [r["modulus"] for r in hashmod] == [1]
    # kube-prometheus's own intervals when none is forced
    own = server_cost.prometheus_config("https://127.0.0.1:6443", token, ca, "http://x:1", None)
    assert [j["scrape_interval"] for j in own["scrape_configs"]] == [
        "30s",
        "30s",
        "30s",
        "5s",
        "15s",
    ]


def test_expected_pools() -> None:
    assert server_cost.expected_pools(2000) == {
        **dict.fromkeys(server_cost.KUBELET_POOLS, 2000),
        server_cost.NODE_EXPORTER_POOL: 1000,
    }
    assert server_cost.expected_pools(300)[server_cost.NODE_EXPORTER_POOL] == 300


def test_audit_requests_per_client() -> None:
    size = AUDIT.stat().st_size
    out = server_cost.audit_requests(AUDIT, 0, size)
    lines = [json.loads(x) for x in AUDIT.read_text().splitlines()]
    lists = sum(1 for e in lines if e["verb"] == "list" and e["stage"] == "ResponseComplete")
    watches = sum(1 for e in lines if e["verb"] == "watch" and e["stage"] == "ResponseStarted")
    counted = out["by_client"]
    total = sum(
        v for c in counted.values() for k, v in c.items() if k.split()[0] in ("list", "watch")
    )
    assert total == lists + watches
    assert "coverage-exporter" in counted and "Prometheus" in counted
    # a watch counts once (its ResponseComplete is not a second watch), a
    # paginated LIST once per page; the queries say how each was asked
    assert counted["coverage-exporter"]["watch nodes"] == 1
    assert counted["coverage-exporter"]["list nodes"] == 1
    queries = out["queries"]
    assert queries["coverage-exporter"]["list nodes limit=set"] == 1
    assert queries["coverage-exporter"]["watch nodes resourceVersion=1875"] == 1
    # Prometheus 3.16 (client-go 0.37) asks for streaming lists
    assert all("sendInitialEvents=true" in k for k in queries["Prometheus"]), queries
    # an offset range reads only its part
    half = server_cost.audit_requests(AUDIT, size, size)
    assert half["by_client"] == {}


def _window(cpu: float, wall: float, prom_cpu: float | None = None, **extra: object) -> dict:
    api = {
        "cpu_s": cpu,
        "rss_mb_start": 100.0,
        "rss_mb_peak_hwm": 100.0 + cpu,
        "rss_mb_peak_sampled": 100.0,
        "heap_inuse_mb_start": 50.0,
        "heap_inuse_mb_end": 50.0 + cpu,
    }
    w: dict = {"wall_s": wall, "apiserver": api, "audit": None, **extra}
    if prom_cpu is not None:
        w["prometheus"] = {
            "cpu_s": prom_cpu,
            "heap_inuse_mb_median": 80.0,
            "heap_inuse_mb_max": 84.0,
            "http_requests": {"/api/v1/targets": 10},
            "http_seconds": {"/api/v1/targets": prom_cpu / 10, "/metrics": 0.1},
        }
    return w


def test_goal_figures() -> None:
    result = {
        "nodes": 2000,
        "windows": {
            "idle": _window(1.0, 20.0),
            "prometheus_discovery": _window(3.0, 10.0),
            "exporter_initial_sync": _window(2.0, 8.0),
            "steady_with_exporter": _window(0.5, 120.0, 12.0, exporter_cycles=2),
            "steady_without_exporter": _window(0.5, 120.0, 11.0),
            "full_rereads": _window(0.5, 120.0, 15.0),
        },
    }
    result["windows"]["full_rereads"]["prometheus"]["heap_inuse_mb_max"] = 92.4
    goals = server_cost_goals.per_goal(result)
    sync = goals["initial_sync_vs_prometheus_discovery"]
    assert sync["apiserver_cpu_s"] == [2.0, 3.0]
    assert sync["apiserver_rss_growth_mb"] == [2.0, 3.0]
    assert goals["apiserver_idle_cpu_s_per_s"] == 0.05
    steady = goals["prometheus_steady"]
    assert steady["cpu_s_extra"] == 1.0 and steady["cpu_s_per_cycle"] == 0.5
    # serving time: every handler but /metrics, which both windows read alike
    assert steady["serving_s"] == 1.2 and steady["serving_s_per_cycle"] == 0.6
    full = goals["prometheus_full_reread"]
    # 10 reads of /api/v1/targets over 5 pools: 2 full re-reads of 2 s each
    assert full["full_rereads"] == 2 and full["cpu_s_per_full_reread"] == 2.0
    # against the median without the exporter (the goal's reading), and
    # against that window's own peak (its GC swing, 5% here)
    assert full["heap_growth_pct"] == 15.5
    assert full["steady_swing_pct"] == 5.0 and full["growth_over_steady_peak_pct"] == 10.0
    hour = goals["prometheus_default_flags_per_hour"]
    assert hour["cpu_s"] == 60 * 0.5 + 6 * 2.0
    # RESULTS.md's section: one line per goal of the issue, then the windows
    result.update(
        revision="abc1234",
        started="2026-12-08 00:00:00 UTC",
        load_average_start=[1.0, 1.0, 1.0],
        flags={
            "steady": 120.0,
            "idle": 20.0,
            "tail": 10.0,
            "scrape_interval": "1m",
            "reread_interval": "20s",
        },
        goals=goals,
    )
    md = "\n".join(server_cost_goals.render_section([result]))
    assert "### 2,000 nodes" in md
    for goal in server_cost_goals.GOALS:
        line = next(x for x in md.splitlines() if x.startswith(f"| {goal} |"))
        assert "not measured" not in line or goal.startswith("apiserver, steady"), line
    assert "exporter: 2.00 CPU s" in md and "+15.5%" in md
    assert "its own peak was +5.0% over that median (84.0 MB)" in md
    assert "peak +10.0% over that peak" in md


def test_testbed_control_plane_only_with_audit(tmp_path: Path) -> None:
    from testbed.cluster import CONTROL_PLANE, Cluster

    c = Cluster(tmp_path, monitoring=False, audit_log=True)
    assert c.components == list(CONTROL_PLANE)
    assert c.prometheus_urls == {}
    assert c.audit_log_path == tmp_path.resolve() / "audit.log"
    assert Cluster(tmp_path).audit_log_path is None
    assert "prometheus-3" in Cluster(tmp_path).components
