"""Benchmark of the HTML coverage report on the bench data set.

Collects once against bench/fake_api.py (in this process, the exporter's
own Exporter and CycleRunner), then measures:

1. rendering: render_services (the per-report part: every missing target)
   and render_page, best and median of --repeat runs; page size, gzipped
   size and the time gzip takes;
2. `serve`'s /report over HTTP: the first request (render + gzip), a
   revalidation (If-None-Match -> 304), and the next cycle's request (same
   report object: only the header is rendered again);
3. headless Chromium (the real browser, testbed/chromium.py): load time of
   the file and of the live /report, DOM size and JS heap, the filter's
   time for a node name typed --idle-before-typing seconds after the load
   (0: at once, with the filter's index not built yet) and for a stage
   change, and the worst
   main-thread stall seen while it filters (a probe evaluated every 20 ms);
   opening the largest closed table.

Prints one JSON object; keeps report.html and a screenshot in the workdir.

    python -m bench.report_html --nodes 100000 [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import ClientSession
from coverage_exporter import app
from coverage_exporter.cli import build_parser
from coverage_exporter.exposition.html import render_page, render_services
from coverage_exporter.web.server import MetricsServer, ServerLimits
from coverage_exporter.web.view import ExporterView
from testbed.chromium import Browser, Page

from bench import run as bench_run


async def collect(kubeconfig: Path, prometheus_urls: list[str]):
    args = build_parser().parse_args(
        ["audit", "--kubeconfig", str(kubeconfig), *bench_run.prometheus_args(prometheus_urls)]
    )
    settings = app.Settings.from_args(args)
    exporter = app.Exporter(settings)
    try:
        await exporter.kubernetes.start()
        await exporter.kubernetes.wait_synced(settings.kubernetes_sync_timeout)
        result = await exporter.cycle.run_cycle()
        health = [replace(h) for h in exporter.health]
    finally:
        await exporter.close()
    return settings, result, health


def timed(fn, repeat: int) -> tuple[object, list[float]]:
    times = []
    value = None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return value, times


async def http_report(view: ExporterView, info_next) -> dict:
    # serve's own HTTP server, in this process (serve runs it in the front
    # process, which asks the collector's view for /report the same way).
    server = MetricsServer(view, ServerLimits())
    port = await server.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/report"
    out: dict = {"url": url}
    try:
        async with ClientSession() as http:
            t = time.perf_counter()
            async with http.get(url, headers={"Accept-Encoding": "gzip"}) as r:
                await r.read()
                etag = r.headers["ETag"]
            out["first_request_s"] = time.perf_counter() - t
            t = time.perf_counter()
            async with http.get(
                url, headers={"Accept-Encoding": "gzip", "If-None-Match": etag}
            ) as r:
                out["revalidate_status"] = r.status
            out["revalidate_ms"] = (time.perf_counter() - t) * 1000
            view.publish_report(view.report, info_next)
            t = time.perf_counter()
            async with http.get(url, headers={"Accept-Encoding": "gzip"}) as r:
                await r.read()
            out["next_cycle_request_s"] = time.perf_counter() - t
            out["services_renders"] = view.report_page.services_renders
    finally:
        out["server"] = server
    return out


async def stall_probe(page: Page, done: str) -> tuple[float, float]:
    """(seconds until `done` is true, worst round trip of a trivial
    evaluation meanwhile): how long the page's main thread was blocked."""
    start = time.perf_counter()
    worst = 0.0
    while True:
        t = time.perf_counter()
        finished = await page.evaluate(done)
        worst = max(worst, time.perf_counter() - t)
        if finished:
            return time.perf_counter() - start, worst
        await asyncio.sleep(0.02)


async def browser_figures(
    page_file: Path, live_url: str, node: str, workdir: Path, args_idle_s: float
) -> dict:
    out: dict = {}
    async with Browser(height=1000) as browser:
        page = await browser.new_page()
        await page.send("Performance.enable")
        out["file_load_s"] = await page.navigate(page_file.as_uri(), wait_seconds=300)
        metrics = {
            m["name"]: m["value"] for m in (await page.send("Performance.getMetrics"))["metrics"]
        }
        out["dom_nodes"] = int(metrics.get("Nodes", 0))
        out["js_heap_used_mb"] = metrics.get("JSHeapUsedSize", 0) / 1e6
        out["layout_s"] = metrics.get("LayoutDuration")
        out["rows"] = await page.evaluate("document.querySelectorAll('table.missing tr').length")
        idle = "!document.getElementById('filter').hasAttribute('data-busy')"
        # A reader looks at the page before typing: the filter's index is
        # built while the page is idle (report.js), as in real use.
        await asyncio.sleep(args_idle_s)
        await page.evaluate("document.querySelector('#filter input').focus()")
        t = time.perf_counter()
        await page.send("Input.insertText", text=node)
        await asyncio.sleep(0.13)  # the filter's debounce
        out["filter_name_s"], out["filter_name_worst_stall_s"] = await stall_probe(page, idle)
        out["filter_name_s"] = time.perf_counter() - t
        out["filter_name_visible_rows"] = await page.evaluate(
            "[...document.querySelectorAll('table.missing tbody tr')]"
            ".filter(r => r.checkVisibility()).length"
        )
        await page.evaluate(
            "(() => { const f = document.getElementById('filter');"
            " f.elements.q.value = ''; f.elements.stage.value = 'endpoints';"
            " f.elements.stage.dispatchEvent(new Event('change')); })()"
        )
        out["filter_stage_s"], out["filter_stage_worst_stall_s"] = await stall_probe(page, idle)
        out["filter_stage_matching"] = await page.evaluate(
            "document.getElementById('shown').textContent"
        )
        out["open_largest_table_s"] = await page.evaluate(
            "(() => { const d = [...document.querySelectorAll('details.missing')]"
            ".sort((a, b) => b.querySelectorAll('tr').length - a.querySelectorAll('tr').length)[0];"
            " const t = performance.now(); d.open = true; document.body.offsetHeight;"
            " return (performance.now() - t) / 1000; })()"
        )
        (workdir / "report.png").write_bytes(await page.screenshot(full_page=False))
        live = await browser.new_page()
        out["live_load_s"] = await live.navigate(live_url, wait_seconds=300)
        out["console_errors"] = page.console_errors() + live.console_errors()
        out["requests"] = sorted(set(page.requested_urls() + live.requested_urls()))
    return out


async def main_async(args) -> dict:
    workdir = args.workdir
    out: dict = {"nodes": args.nodes, "exporter_revision": bench_run.exporter_revision()}
    bench_run.log(f"starting fake API with {args.nodes} nodes (workdir {workdir})")
    fake = bench_run.FakeApi(args.nodes, workdir, lifetime=3600)
    server = None
    try:
        kubeconfig = workdir / "kubeconfig"
        bench_run.write_kubeconfig(kubeconfig, fake.base)
        bench_run.log("collecting once")
        t = time.perf_counter()
        settings, result, health = await collect(kubeconfig, fake.prometheus_urls)
        report = result.report
        out["collect_s"] = time.perf_counter() - t
        assert report is not None, "no report: the fake API could not be read"
        cluster = app.cluster_name(settings)

        bench_run.log("rendering")
        part, services_times = timed(lambda: render_services(report), args.repeat)
        info = app.page_info(settings, health, cluster, result)
        page, page_times = timed(lambda: render_page(report, info, part), args.repeat)
        out["render_services_s_best"] = min(services_times)
        out["render_services_s_median"] = statistics.median(services_times)
        out["render_page_header_s_median"] = statistics.median(page_times)
        out["gap_targets"] = part.gap_targets
        out["missing_rows"] = part.details.count("<tr><td>")
        out["services"] = part.services
        out["page_bytes"] = len(page)
        t = time.perf_counter()
        out["page_gzip_bytes"] = len(gzip.compress(page, 6))
        out["gzip_s"] = time.perf_counter() - t
        page_file = workdir / "report.html"
        page_file.write_bytes(page)

        bench_run.log("serve /report over HTTP")
        view = ExporterView(lambda: b"")
        view.publish_report(report, info)
        served = await http_report(view, app.page_info(settings, health, cluster, result))
        server = served.pop("server")
        out["http"] = served

        bench_run.log("headless Chromium")
        # A node name to type into the filter: one that some pool misses.
        missing = [m for s in report.services for p in s.pools for m in (p.missing or ())[:1]]
        node = missing[0].node if missing else "node"
        out["browser"] = await browser_figures(
            page_file, served["url"], node, workdir, args.idle_before_typing
        )
        out["browser"]["idle_before_typing_s"] = args.idle_before_typing
        out["workdir"] = str(workdir)
    finally:
        if server is not None:
            await server.close()
        fake.stop()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--idle-before-typing",
        type=float,
        default=3.0,
        help="seconds between the page's load and the first keystroke (0: type at once)",
    )
    ap.add_argument("--workdir", help="keep report.html, report.png and logs here")
    args = ap.parse_args(argv)
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="coverage-report-bench-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = asyncio.run(main_async(args))
    print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
