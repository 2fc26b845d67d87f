"""What bench/server_cost.py's windows say about each goal of issue #24,
and its section of bench/RESULTS.md. Pure: a run's JSON in, figures and
Markdown out (bench/report.py renders the section from
bench/results/server_cost/*.json)."""

from __future__ import annotations

from collections import Counter
from typing import Any

# What the exporter lists once and then watches (its reflectors).
WATCHED = frozenset({"nodes", "services", "endpoints", "endpointslices", "pods", "daemonsets"})
# The kube-prometheus pools: kubelet's four and node-exporter.
POOLS = 5


def per_goal(result: dict[str, Any]) -> dict[str, Any]:
    """The figures each goal of issue #24 is read from (no verdict here:
    RESULTS.md states them against the goals)."""
    w = result["windows"]
    out: dict[str, Any] = {}
    sync = w.get("exporter_initial_sync")
    for ref in ("prometheus_discovery", "prometheus_discovery_warm"):
        disc = w.get(ref)
        if sync and disc:
            out[f"initial_sync_vs_{ref}"] = {
                "apiserver_cpu_s": [sync["apiserver"]["cpu_s"], disc["apiserver"]["cpu_s"]],
                "apiserver_rss_growth_mb": [_growth(sync["apiserver"]), _growth(disc["apiserver"])],
                "apiserver_heap_growth_mb": [
                    _heap_growth(sync["apiserver"]),
                    _heap_growth(disc["apiserver"]),
                ],
                "wall_s": [sync["wall_s"], disc["wall_s"]],
            }
    idle = w.get("idle")
    if idle:
        rate = idle["apiserver"]["cpu_s"] / idle["wall_s"]
        out["apiserver_idle_cpu_s_per_s"] = round(rate, 4)
        # the same comparison with the background (kwok, controllers) taken out
        for key, pair in list(out.items()):
            if key.startswith("initial_sync_vs_"):
                pair["apiserver_cpu_s_net_of_idle"] = [
                    round(cpu - rate * wall, 3)
                    for cpu, wall in zip(pair["apiserver_cpu_s"], pair["wall_s"], strict=True)
                ]
    steady = w.get("steady_with_exporter")
    if steady and steady.get("audit"):
        exp = steady["audit"]["by_client"].get("coverage-exporter", {})
        out["steady_exporter_requests"] = exp
        lists = {k.split()[1]: v for k, v in exp.items() if k.startswith("list ")}
        # A relist is a LIST of a resource the exporter watches; the
        # Operator's objects (CRs, ServiceMonitors, namespaces) are read,
        # not watched, once per --operator-refresh-interval by design.
        out["steady_exporter_relists"] = sum(v for r, v in lists.items() if r in WATCHED)
        out["steady_exporter_other_lists"] = {r: v for r, v in lists.items() if r not in WATCHED}
    base = w.get("steady_without_exporter")
    rereads = w.get("full_rereads")
    if steady and base and "prometheus" in steady and "prometheus" in base:
        extra = steady["prometheus"]["cpu_s"] - base["prometheus"]["cpu_s"]
        cycles = steady.get("exporter_cycles") or 0
        serving = _serving_s(steady["prometheus"], base["prometheus"])
        out["prometheus_steady"] = {
            "serving_s": serving,
            "serving_s_per_cycle": round(serving / cycles, 4) if cycles else None,
            "cpu_s_with": steady["prometheus"]["cpu_s"],
            "cpu_s_without": base["prometheus"]["cpu_s"],
            "cpu_s_extra": round(extra, 3),
            "exporter_cycles": cycles,
            "cpu_s_per_cycle": round(extra / cycles, 4) if cycles else None,
            "share_of_core_pct": round(100 * extra / steady["wall_s"], 3),
        }
    if rereads and base and "prometheus" in rereads and "prometheus" in base:
        extra = rereads["prometheus"]["cpu_s"] - base["prometheus"]["cpu_s"]
        reads = rereads["prometheus"]["http_requests"].get("/api/v1/targets", 0)
        # each full re-read reads every pool once
        pools = len(w.get("prometheus_discovery", {}).get("pool_targets") or {}) or POOLS
        full = reads / pools if pools else 0
        steady_heap = base["prometheus"]["heap_inuse_mb_median"]
        # heap_inuse swings between GCs without the exporter too (Prometheus's
        # own scrapes and the harness's samples): the window without the
        # exporter's peak is the level that the re-reads' peak is compared
        # with as well (bench/analysis.md says why).
        steady_peak = base["prometheus"]["heap_inuse_mb_max"]
        peak = rereads["prometheus"]["heap_inuse_mb_max"]
        serving = _serving_s(rereads["prometheus"], base["prometheus"])
        out["prometheus_full_reread"] = {
            "serving_s_per_full_reread": round(serving / full, 4) if full else None,
            "cpu_s_extra": round(extra, 3),
            "full_rereads": full,
            "cpu_s_per_full_reread": round(extra / full, 4) if full else None,
            "steady_heap_mb": steady_heap,
            "peak_heap_mb_during_rereads": peak,
            "heap_growth_pct": round(100 * (peak - steady_heap) / steady_heap, 2)
            if peak and steady_heap
            else None,
            "steady_heap_peak_mb": steady_peak,
            "steady_swing_pct": round(100 * (steady_peak - steady_heap) / steady_heap, 2)
            if steady_peak and steady_heap
            else None,
            "growth_over_steady_peak_pct": round(100 * (peak - steady_peak) / steady_peak, 2)
            if peak and steady_peak
            else None,
        }
        ps = out.get("prometheus_steady")
        if ps and ps["cpu_s_per_cycle"] is not None and full:
            per_hour = 60 * max(ps["cpu_s_per_cycle"], 0) + 6 * max(extra / full, 0)
            out["prometheus_default_flags_per_hour"] = {
                "cpu_s": round(per_hour, 3),
                "share_of_core_pct": round(100 * per_hour / 3600, 4),
                "how": "60 steady cycles (--interval 1m) + 6 full re-reads "
                "(--prometheus-full-refresh-interval 10m), each at its measured cost",
            }
    return out


def _serving_s(with_: dict[str, Any], without: dict[str, Any]) -> float:
    """Seconds the Prometheus spent serving the exporter's requests
    (prometheus_http_request_duration_seconds): every handler but /metrics,
    and /metrics only for the reads beyond the harness's own samples (the
    window without the exporter makes as many), at their mean duration.
    Steadier than CPU deltas; an upper bound of their CPU when requests
    wait on nothing else."""
    w = with_.get("http_seconds", {})
    n, no = with_.get("http_requests", {}), without.get("http_requests", {})
    other = sum(v for h, v in w.items() if h != "/metrics")
    extra = n.get("/metrics", 0.0) - no.get("/metrics", 0.0)
    mean = w.get("/metrics", 0.0) / n["/metrics"] if n.get("/metrics") else 0.0
    return round(other + max(0.0, extra) * mean, 4)


def _growth(api: dict[str, Any]) -> float | None:
    peak = api["rss_mb_peak_hwm"] or api["rss_mb_peak_sampled"]
    return round(peak - api["rss_mb_start"], 1)


def _heap_growth(api: dict[str, Any]) -> float | None:
    a, b = api["heap_inuse_mb_start"], api["heap_inuse_mb_end"]
    return round(b - a, 1) if a is not None and b is not None else None


GOALS = (
    "apiserver, initial sync: no more CPU and no more peak memory than one "
    "Prometheus's discovery of the same objects",
    "apiserver, steady state: watches only, no relist in an hour without faults, and the "
    "watch cost per event no higher than client-go's",
    "each Prometheus, default flags, averaged over an hour: under 1% of one core",
    "each Prometheus, one full re-read: heap growth under 5% of its steady heap",
)


def _clients(w: dict[str, Any], client: str) -> str:
    reqs = ((w.get("audit") or {}).get("by_client") or {}).get(client) or {}
    verbs: Counter[str] = Counter()
    for k, v in reqs.items():
        verbs[k.split()[0]] += v
    return ", ".join(f"{v} {k}" for k, v in sorted(verbs.items())) or "-"


def render_section(results: list[dict[str, Any]]) -> list[str]:
    """RESULTS.md's section for bench/server_cost.py runs (bench/report.py
    adds it from bench/results/server_cost/*.json)."""
    lines = [
        "## What the exporter costs the servers it reads (issue #24)",
        "",
        "`bench/server_cost.py` on the real servers: the testbed's kube-apiserver v1.36.3 "
        "(kwok Nodes, real controllers) and Prometheus 3.16.0 running the Operator's "
        "kube-prometheus pools (kubelet x4, node-exporter; role endpoints, one shard). "
        'How it is measured: bench/analysis.md, "The servers\' side".',
        "",
    ]
    for r in sorted(results, key=lambda r: r["nodes"]):
        g, w = r["goals"], r["windows"]
        f = r["flags"]
        lines += [
            f"### {r['nodes']:,} nodes (revision `{r['revision']}`, {r['started']}, "
            f"load average {r['load_average_start'][0]:.1f} at the start)",
            "",
            f"Windows: steady {f['steady']:.0f} s each, idle {f['idle']:.0f} s, "
            f"{f['tail']:.0f} s kept after discovery or sync; scrape interval "
            f"{f['scrape_interval'] or 'kube-prometheus'}; re-read window at `--interval "
            f"{f['reread_interval']}`."
            + (f" Stopped early: {r['error']}." if r.get("error") else "")
            + (f" Note: {r['note']}." if r.get("note") else ""),
            "",
            "| goal | measured |",
            "| --- | --- |",
        ]
        for i, goal in enumerate(GOALS):
            lines.append(f"| {goal} | {_goal_line(i, g, w)} |")
        lines += [
            "",
            "| window | s | apiserver CPU s | apiserver RSS MB start / peak | apiserver heap MB "
            "start / end | exporter requests | Prometheus requests | Prometheus CPU s | "
            "Prometheus heap MB median / max |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |",
        ]
        for name, x in w.items():
            api, prom = x["apiserver"], x.get("prometheus") or {}
            pcpu = prom.get("cpu_s", x.get("prometheus_cpu_s"))
            lines.append(
                f"| {name} | {x['wall_s']:.1f} | {api['cpu_s']:.2f} | {api['rss_mb_start']:.0f} / "
                f"{(api['rss_mb_peak_hwm'] or api['rss_mb_peak_sampled']):.0f} | "
                f"{api['heap_inuse_mb_start']} / {api['heap_inuse_mb_end']} | "
                f"{_clients(x, 'coverage-exporter')} | {_clients(x, 'Prometheus')} | "
                f"{'-' if pcpu is None else f'{pcpu:.2f}'} | "
                f"{prom.get('heap_inuse_mb_median', '-')} / {prom.get('heap_inuse_mb_max', '-')} |"
            )
        lines.append("")
    return lines


def _cost_text(who: str, c: dict[str, Any], net: list[Any], k: int) -> str:
    return (
        f"{who}: {c['apiserver_cpu_s'][k]:.2f} CPU s ({net[k]} net of idle), RSS "
        f"+{c['apiserver_rss_growth_mb'][k]} MB, heap +{c['apiserver_heap_growth_mb'][k]} MB"
    )


def _goal_line(i: int, g: dict[str, Any], w: dict[str, Any]) -> str:
    if i == 0:
        parts: list[str] = []
        for ref, label in (
            ("prometheus_discovery", "the first Prometheus"),
            ("prometheus_discovery_warm", "a second Prometheus, after the exporter"),
        ):
            c = g.get(f"initial_sync_vs_{ref}")
            if not c:
                continue
            net = c.get("apiserver_cpu_s_net_of_idle", [None, None])
            if not parts:
                parts.append(_cost_text("exporter", c, net, 0))
            parts.append(_cost_text(label, c, net, 1))
        return "; ".join(parts) or "not measured"
    if i == 1:
        steady = w.get("steady_with_exporter")
        if not steady:
            return "not measured"
        other = g.get("steady_exporter_other_lists") or {}
        return (
            f"{g.get('steady_exporter_relists')} relists in {steady['wall_s']:.0f} s "
            f"(not an hour); exporter requests {g.get('steady_exporter_requests') or 'none'}"
            + (f" (Operator objects read on their 5-min refresh: {other})" if other else "")
            + "; per-event watch cost per client is not told apart by the apiserver's metrics: "
            "not measured"
        )
    if i == 2:
        h = g.get("prometheus_default_flags_per_hour")
        s = g.get("prometheus_steady") or {}
        if not h:
            return "not measured"
        return (
            f"{h['share_of_core_pct']:.3f}% of one core ({h['cpu_s']:.1f} CPU s per hour, from "
            f"{s.get('cpu_s_per_cycle')} s per steady cycle and "
            f"{(g.get('prometheus_full_reread') or {}).get('cpu_s_per_full_reread')} s per full "
            f"re-read); serving time {s.get('serving_s_per_cycle')} s per steady cycle"
        )
    full = g.get("prometheus_full_reread")
    if not full:
        return "not measured"
    swing = ""
    if full.get("steady_swing_pct") is not None:
        swing = (
            f"; without the exporter its own peak was +{full['steady_swing_pct']}% over that "
            f"median ({full['steady_heap_peak_mb']} MB), and the re-reads' peak "
            f"{full['growth_over_steady_peak_pct']:+}% over that peak"
        )
    return (
        f"+{full['heap_growth_pct']}% (heap_inuse peak {full['peak_heap_mb_during_rereads']} MB "
        f"during {full['full_rereads']:.0f} full re-reads against a steady median of "
        f"{full['steady_heap_mb']} MB){swing}; serving time "
        f"{full['serving_s_per_full_reread']} s per full re-read"
    )
