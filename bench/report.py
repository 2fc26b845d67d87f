"""Run the benchmark at every size and write bench/RESULTS.md and
bench/results.png.

    python -m bench.report                  # run 1k, 5k, 15k, 100k (~20 min)
    python -m bench.report --sizes 1000 5000
    python -m bench.report --no-run         # only re-render from bench/results/*.json
    python -m bench.report --only-full-refresh   # only the full-refresh serve runs

Per size, a second `serve` run with --prometheus-full-refresh-interval 0
measures a steady cycle that re-reads every scrape pool
(bench/results/full_refresh/N.json).

Each size's JSON (bench/run.py output) is kept in bench/results/N.json.
The hand-written analysis (profile findings) lives in bench/analysis.md and
is copied into RESULTS.md as is.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SIZES = (1000, 5000, 15000, 100000)


def run_size(n: int, naive_timeout: float) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--nodes",
        str(n),
        "--json",
        "--naive-timeout",
        str(naive_timeout),
        "--workdir",
        f"/tmp/coverage-bench-{n}",
    ]
    if n >= 100000:
        cmd += ["--interval", "15", "--steady-cycles", "3"]
    print(f"[report] running {n} nodes: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=naive_timeout + 3600)
    if proc.returncode != 0:
        raise SystemExit(f"run.py failed for {n} nodes")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{n}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data


def run_full_refresh(n: int) -> dict:
    """serve with --prometheus-full-refresh-interval 0: every cycle re-reads
    every scrape pool (the default does so every 600 s)."""
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--nodes",
        str(n),
        "--json",
        "--skip-naive",
        "--skip-audit",
        "--prometheus-full-refresh-interval",
        "0",
        # Every re-read then finds every pool changed (health flips), so the
        # exporter regroups and compares every cycle: an unchanged re-read
        # costs it next to nothing and would measure only the transfer.
        "--target-churn",
        "--workdir",
        f"/tmp/coverage-bench-{n}-full-refresh",
    ]
    if n >= 100000:
        cmd += ["--interval", "15", "--steady-cycles", "3"]
    print(f"[report] full-refresh run, {n} nodes", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"run.py (full refresh) failed for {n} nodes")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    (RESULTS / "full_refresh").mkdir(parents=True, exist_ok=True)
    (RESULTS / "full_refresh" / f"{n}.json").write_text(
        json.dumps(data, indent=1, default=str) + "\n"
    )
    return data


def machine() -> str:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cores = len([1 for line in open("/proc/cpuinfo") if line.startswith("processor")])
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) / 1024 / 1024
    return f"{cores} cores ({model}, `lscpu`), {mem:.0f} GiB RAM, Linux {platform.release()}, Python {platform.python_version()}"


def fmt(v, digits=2, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def mb(v):
    return "—" if v is None else f"{v / 1e6:.1f}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["nodes"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    ax1.plot(xs, [r["exporter_first_cycle_s"] for r in rows], "o-", label="exporter first cycle")
    ax1.plot(
        xs, [r.get("exporter_steady_cycle_s") for r in rows], "o-", label="exporter steady cycle"
    )
    ax1.plot(xs, [r["raw_s"] for r in rows], "s--", label="raw (download + discard)")
    nx = [r["nodes"] for r in rows if r.get("naive_s")]
    ax1.plot(nx, [r["naive_s"] for r in rows if r.get("naive_s")], "^-", label="naive")
    for r in rows:
        if r.get("naive_s") is None and r.get("naive_status") not in (None, "skipped"):
            ax1.annotate(
                "naive: did not finish",
                (r["nodes"], r["exporter_first_cycle_s"]),
                fontsize=8,
                xytext=(-120, 20),
                textcoords="offset points",
                arrowprops={"arrowstyle": "->"},
            )
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("nodes")
    ax1.set_ylabel("seconds (wall)")
    ax1.set_title("time")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.plot(xs, [r["exporter_peak_rss_mb"] for r in rows], "o-", label="exporter peak RSS (serve)")
    ax2.plot(
        xs, [r.get("audit_peak_rss_mb") for r in rows], "o:", label="exporter peak RSS (audit)"
    )
    ax2.plot(xs, [r["raw_peak_rss_mb"] for r in rows], "s--", label="raw peak RSS")
    ax2.plot(
        xs,
        [r.get("naive_peak_rss_mb") for r in rows],
        "^-",
        label="naive peak RSS (incl. failed runs)",
    )
    ax2.axhline(512, color="red", linewidth=0.8, linestyle=":", label="512 MB goal")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("nodes")
    ax2.set_ylabel("MB")
    ax2.set_title("peak memory")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle("coverage-exporter benchmark (synthetic cluster, bench/fake_api.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def goals(rows: dict[int, dict], full: dict[int, dict]) -> list[str]:
    """The goals of issue #12, each with its figures and verdict."""
    out = []
    r = rows.get(15000)
    if r:
        if r.get("naive_s"):
            speed = r["naive_s"] / r["exporter_first_cycle_s"]
            mem = r["naive_peak_rss_mb"] / r["exporter_peak_rss_mb"]
            out.append(
                f"| 15k: first cycle at least 10x faster than naive | {speed:.1f}x (first cycle {r['exporter_first_cycle_s']:.2f} s vs naive {r['naive_s']:.1f} s) | {'met' if speed >= 10 else 'NOT met'} |"
            )
            out.append(
                f"| 15k: peak memory at least 10x less than naive | {mem:.1f}x (exporter, its decoding workers and its HTTP front {r['exporter_peak_rss_mb']:.0f} MB vs naive {r['naive_peak_rss_mb']:.0f} MB) | {'met' if mem >= 10 else 'NOT met'} |"
            )
        else:
            out.append(f"| 15k: vs naive | naive {r.get('naive_status')} | — |")
    r = rows.get(100000)
    if r:
        ratio = r["exporter_first_cycle_s"] / r["raw_s"]
        out.append(
            f"| 100k: first cycle at most 2.0x raw | {ratio:.2f}x ({r['exporter_first_cycle_s']:.1f} s vs {r['raw_s']:.1f} s) | {'met' if ratio <= 2.0 else 'NOT met'} |"
        )
        rss = r["exporter_peak_rss_mb"]
        fr = full.get(100000, {}).get("exporter_peak_rss_mb")
        worst = max(rss, fr or 0)
        out.append(
            f"| 100k: peak RSS under 450 MB at all times (exporter, its decoding workers and its HTTP front) | {rss:.0f} MB (serve, first minute); "
            f"{fmt(fr, 0)} MB (serve re-reading every pool each cycle, as it does every 600 s by default); "
            f"audit {fmt(r.get('audit_peak_rss_mb'), 0)} MB | {'met' if worst < 450 else 'NOT met'} |"
        )
        busy = r.get("metrics_during_cycles_ms_max")
        fr_busy = full.get(100000, {}).get("metrics_during_cycles_ms_max")
        worst_ms = max(x for x in (r["metrics_response_ms_max"], busy, fr_busy) if x is not None)
        out.append(
            f"| 100k: /metrics never over 50 ms | between cycles: max {r['metrics_response_ms_max']:.1f} ms; "
            f"while cycles run: p50 {fmt(r.get('metrics_during_cycles_ms_p50'), 1)} ms, p99 {fmt(r.get('metrics_during_cycles_ms_p99'), 0)} ms, max {fmt(busy, 0)} ms; "
            f"during full Prometheus re-reads: p99 {fmt(full.get(100000, {}).get('metrics_during_cycles_ms_p99'), 0)} ms, max {fmt(fr_busy, 0)} ms "
            f"| {'met' if worst_ms <= 50 else 'NOT met'} |"
        )
    lists = {n: r.get("k8s_lists_after_startup") for n, r in sorted(rows.items())}
    ok = all(v == 0 for v in lists.values())
    out.append(
        f"| steady state: no Kubernetes LIST after start-up | LISTs after the first cycle: {', '.join(f'{n // 1000}k: {v}' for n, v in lists.items())} | {'met' if ok else 'NOT met'} |"
    )
    return out


def _servers(r: dict) -> str:
    if r.get("prometheus_servers") is None:
        return "1 (before issue #12)"
    return f"{r['prometheus_servers']} ({r['shards']} x {r['replicas']}, {r.get('role')})"


def _targets(r: dict) -> str:
    if r.get("targets_total") is None:
        return "—"
    per = r.get("targets_per_server") or {}
    return f"{r['targets_total']:,} ({', '.join(f'{v:,}' for v in per.values())})"


def render(rows: dict[int, dict]) -> str:
    ordered = [rows[n] for n in sorted(rows)]
    full = {}
    for f in (RESULTS / "full_refresh").glob("*.json"):
        d = json.loads(f.read_text())
        full[d["nodes"]] = d
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `python -m bench.report` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Machine: {machine()}. Every process (fake API server, exporter, baselines) runs on this one machine, "
        "talking over 127.0.0.1; the fake server has its responses pre-rendered (and pre-gzipped) and "
        "a warm-up `audit` run precedes the measured `serve` run.",
        "",
        "Exporter code measured (git revision at the start of each size's run): "
        + ", ".join(
            f"{n // 1000}k `{rows[n].get('exporter_revision', 'unknown')}`" for n in sorted(rows)
        )
        + ".",
        "",
        "![time and memory against nodes](results.png)",
        "",
        "## Goals",
        "",
        "| goal | measured | |",
        "| --- | --- | --- |",
        *goals(rows, full),
        "",
        "## Time and memory",
        "",
        "| nodes | exporter first cycle s (CPU s) | exporter steady cycle s (CPU s) | exporter peak RSS MB | audit s / RSS MB | raw s (download s) | raw RSS MB | naive s | naive RSS MB | /metrics ms between cycles: median (max) | /metrics ms during cycles: p50 / p99 / max |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in ordered:
        naive = fmt(r.get("naive_s"), 1) if r.get("naive_s") else (r.get("naive_status") or "—")
        lines.append(
            f"| {r['nodes']:,} | {fmt(r['exporter_first_cycle_s'])} ({fmt(r.get('exporter_first_cycle_cpu_s'))}) "
            f"| {fmt(r.get('exporter_steady_cycle_s'), 3)} ({fmt(r.get('exporter_steady_cycle_cpu_s'), 3)}) "
            f"| {fmt(r['exporter_peak_rss_mb'], 0)} | {fmt(r.get('audit_s'))} / {fmt(r.get('audit_peak_rss_mb'), 0)} "
            f"| {fmt(r['raw_s'])} ({fmt(r.get('raw_download_s'))}) | {fmt(r.get('raw_peak_rss_mb'), 0)} "
            f"| {naive} | {fmt(r.get('naive_peak_rss_mb'), 0)} | {fmt(r['metrics_response_ms'])} ({fmt(r.get('metrics_response_ms_max'))}) "
            f"| {fmt(r.get('metrics_during_cycles_ms_p50'), 1)} / {fmt(r.get('metrics_during_cycles_ms_p99'), 0)} / {fmt(r.get('metrics_during_cycles_ms_max'), 0)} |"
        )
    lines += [
        "",
        "## Requests and bytes",
        "",
        "Wire bytes are what crossed the socket (gzip where the client asked for it, as kube-apiserver and "
        "Prometheus do); body bytes are decompressed. From the fake server's request log.",
        "",
        "| nodes | first cycle: K8s requests | K8s MB wire / body | Prometheus requests | Prometheus MB wire / body | steady cycle: K8s requests (LISTs) | K8s MB | Prometheus requests | Prometheus MB wire / body | K8s LISTs after start-up |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in ordered:
        lines.append(
            f"| {r['nodes']:,} | {r['k8s_requests_first_cycle']} | {mb(r['k8s_bytes_first_cycle'])} / {mb(r['k8s_body_bytes_first_cycle'])} "
            f"| {r['prometheus_requests_first_cycle']} | {mb(r['prometheus_bytes_first_cycle'])} / {mb(r['prometheus_body_bytes_first_cycle'])} "
            f"| {fmt(r.get('k8s_requests_per_steady_cycle'))} ({fmt(r.get('k8s_lists_per_steady_cycle'))}) | {mb(r.get('k8s_bytes_per_steady_cycle'))} "
            f"| {fmt(r.get('prometheus_requests_per_steady_cycle'))} | {mb(r.get('prometheus_bytes_per_steady_cycle'))} / {mb(r.get('prometheus_body_bytes_per_steady_cycle'))} "
            f"| {r.get('k8s_lists_after_startup')} |"
        )
    lines += [
        "",
        "## Data set per size",
        "",
        "| nodes | Nodes MB | pods MB | Endpoints MB | EndpointSlices | Prometheus servers (shards x replicas, role) | scrape pools | active targets, all servers (per server) | largest scrape pool (targets, MB) | fake server start s / peak RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in ordered:
        d = r["dataset"]
        pools = [(k, v) for k, v in d.items() if k.startswith("serviceMonitor/")]
        big = max(pools, key=lambda kv: kv[1]["bytes"])
        lines.append(
            f"| {r['nodes']:,} | {mb(d['v1/nodes']['bytes'])} | {mb(d['v1/pods']['bytes'])} | {mb(d['v1/endpoints']['bytes'])} "
            f"| {d['discovery.k8s.io/v1/endpointslices']['items']} ({mb(d['discovery.k8s.io/v1/endpointslices']['bytes'])} MB) "
            f"| {_servers(r)} | {r.get('scrape_pools', len(pools))} | {_targets(r)} "
            f"| {big[1]['targets']:,} ({mb(big[1]['bytes'])}) | {fmt(r.get('fake_api_start_s'), 1)} / {fmt(r.get('fake_api_peak_rss_mb'), 0)} |"
        )
    lines += [
        "",
        "## How it is measured",
        "",
        "- `bench/fake_api.py` serves the synthetic cluster described in `bench/dataset.py`, run the way the "
        "Prometheus Operator runs it: node-exporter (DaemonSet, Endpoints truncated at 1000) and the Operator's "
        "selector-less kubelet Endpoints (every node, mirrored at most 1000); the kube-prometheus ServiceMonitors' "
        "five scrape pools (kubelet /metrics, /metrics/cadvisor, /metrics/probes, /metrics/slis; node-exporter) "
        "under role endpoints; 1 Prometheus server below 15k nodes, 2 shards x 2 replicas from 15k up, each on its "
        "own port with its shard's targets and its Operator-generated config. Kubernetes with list pagination, "
        "watches, bookmarks and 410s.",
        "- exporter first cycle: `coverage-exporter serve` from process start until `/-/ready` answers 200 "
        "(includes interpreter start-up and imports, from bytecode compiled beforehand as pip does on install); "
        "CPU seconds from /proc at that moment (first run). "
        "The median of 3 runs, interleaved with the 3 raw replays (`--repeats`; each run is in the JSON, "
        "`exporter_first_cycle_s_runs`): one run moves by 10-20% on this machine.",
        "- exporter steady cycle: median `scrape_coverage_cycle_duration_seconds` of the cycles after the second; "
        "CPU per cycle from /proc deltas; requests and bytes per cycle from the fake server's log between cycle ends "
        "(watches included when one restarts in the window). `--prometheus-full-refresh-interval` is left at its "
        "default (600 s), so steady cycles read `/metrics` counts and re-read only scrape pools whose count changed.",
        "- exporter peak RSS: the largest sum, sampled every 50 ms over the whole run, of the VmHWM of the `serve` process and its live children (the HTTP front, the target decoding worker, and the Node list's worker while it lives; before round three the sum was read at the end of the run only, which missed a child that had ended), an upper bound of their combined peak; `audit` the same (or wait4's figure if larger). CPU seconds likewise include the workers.",
        "- raw: `bench/raw.py` replays the exact non-watch requests of the exporter's first cycle (same Accept "
        "and Accept-Encoding), pages of one list in order, lists and pools concurrently, reading and discarding "
        "bodies. `raw s` is the process wall time (Python + aiohttp start-up included, like the exporter's "
        "first cycle), the median of 3 runs (`raw_s_runs`); `download s` is the replay alone, of the median run.",
        "- naive: `bench/naive.py`, `kubernetes` client typed `list_*` without pagination + `requests` `.json()` "
        "of the unfiltered `/api/v1/targets`; RLIMIT_AS and a timeout bound it.",
        "- `/metrics`: 20 sequential GETs after the steady cycles (median and max), and every poll the harness "
        "made every 100 ms while the steady cycles ran (p50, p99, max): a cycle that holds the event loop shows "
        "up only in the second.",
        "",
    ]
    if full:
        lines += [
            "## Steady cycle with a full Prometheus re-read",
            "",
            "By default the exporter re-reads every scrape pool only every "
            "`--prometheus-full-refresh-interval` (600 s) and in between reads the pool sizes from "
            "Prometheus's `/metrics`. These runs set it to 0, and the fake flips the health of one target "
            "in 100 on every other read of a pool (`--target-churn`), so every steady cycle downloads, "
            "decodes, regroups and compares every pool again: the worst case of the cost paid once per "
            "refresh interval (a re-read that finds nothing changed hands out the same snapshot and is "
            "not compared again).",
            "",
            "| nodes | revision | steady cycle s (CPU s) | Prometheus requests / MB wire / MB body per cycle | peak RSS MB | /metrics ms during cycles: p50 / p99 / max | K8s LISTs after start-up |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for n in sorted(full):
            r = full[n]
            lines.append(
                f"| {n:,} | `{r.get('exporter_revision')}` | {fmt(r.get('exporter_steady_cycle_s'))} ({fmt(r.get('exporter_steady_cycle_cpu_s'))}) "
                f"| {fmt(r.get('prometheus_requests_per_steady_cycle'), 0)} / {mb(r.get('prometheus_bytes_per_steady_cycle'))} / {mb(r.get('prometheus_body_bytes_per_steady_cycle'))} "
                f"| {fmt(r.get('exporter_peak_rss_mb'), 0)} | {fmt(r.get('metrics_during_cycles_ms_p50'), 1)} / {fmt(r.get('metrics_during_cycles_ms_p99'), 0)} / {fmt(r.get('metrics_during_cycles_ms_max'), 0)} "
                f"| {r.get('k8s_lists_after_startup')} |"
            )
        lines.append("")
    cost = [json.loads(f.read_text()) for f in sorted((RESULTS / "server_cost").glob("*.json"))]
    if cost:
        from bench import server_cost_goals

        lines += server_cost_goals.render_section(cost)
    analysis = HERE / "analysis.md"
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    ap.add_argument("--no-run", action="store_true")
    ap.add_argument("--naive-timeout", type=float, default=900)
    ap.add_argument(
        "--no-full-refresh", action="store_true", help="skip the full-refresh serve runs"
    )
    ap.add_argument(
        "--only-full-refresh", action="store_true", help="only the full-refresh serve runs"
    )
    args = ap.parse_args(argv)
    if not args.no_run:
        for n in args.sizes:
            if not args.only_full_refresh:
                run_size(n, args.naive_timeout)
            if not args.no_full_refresh:
                run_full_refresh(n)
    rows = {}
    for f in RESULTS.glob("*.json"):
        d = json.loads(f.read_text())
        rows[d["nodes"]] = d
    if not rows:
        raise SystemExit("no results in bench/results/")
    plot([rows[n] for n in sorted(rows)], HERE / "results.png")
    (HERE / "RESULTS.md").write_text(render(rows))
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'results.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
