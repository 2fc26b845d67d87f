"""The HTML coverage report in a real browser: headless Chromium (Debian's
package, driven over the DevTools protocol by testbed/chromium.py) loads
the page that `serve` shows live against the testbed, and the file that
`audit --output html` writes.

What the rendered DOM shows is checked against the exporter's own /metrics
and against the scenario's truth (testbed.scenarios): every missing node is
listed, at the stage that lost it. The page must log no console error and
request nothing but itself; the filter must work, with JavaScript off the
page must still list everything, and in print every row is laid out.

Screenshots, the printed PDF and the report file are kept: under pytest's
tmp dir and copied to $TEST_ARTIFACTS (default .artifacts/, gitignored);
the paths are printed.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coverage_exporter.exposition.html import PageInfo, render_page
from testbed import scenarios as s
from testbed.chromium import Browser, Page
from testbed.cluster import REPO, Cluster
from tests.e2e.test_exporter_e2e import (
    INTERVAL,
    POOLS,
    Exporter,
    eventually,
    exporter_args,
    prometheus_sees,
)
from tests.unit.test_html_report import HOSTILE_NODES, hostile_report

N = s.DEFAULT_NODES
BINARY = Path(sys.executable).parent / "coverage-exporter"
NE = "monitoring/node-exporter"
KUBELET = "kube-system/kubelet"
SERVERS = ("prometheus-3", "prometheus-2")
CAUSES = {NE: "endpoints_truncated", KUBELET: "mirroring_capped"}
"""The cause of every node each Service misses in the testbed (issue #19):
node-exporter's are cut from its truncated Endpoints, at that stage and in
the pool of role endpoints; the kubelet's are left out of the mirrored
slices, there and in the pool of role endpointslice."""

# One evaluation that reads back what the page shows: the funnel of every
# Service, the stages that lost each listed target, and the sources table.
READ_PAGE = r"""(() => {
  const services = {};
  for (const sec of document.querySelectorAll('section.service')) {
    const name = sec.querySelector('h3').firstChild.textContent.trim();
    services[name] = [...sec.querySelectorAll('table.funnel tbody tr')].map(tr => ({
      stage: tr.dataset.stage, pool: tr.dataset.pool || '', role: tr.dataset.role || '',
      scraper: tr.dataset.scraper || '', replica: tr.dataset.scraperReplica || '',
      holds: tr.querySelector('.holds').textContent, missing: tr.querySelector('.miss').textContent,
      servers: Object.fromEntries([...tr.querySelectorAll('[data-server]')]
        .map(e => [e.dataset.server, e.textContent])),
    }));
  }
  const missing = {};
  for (const d of document.querySelectorAll('details.missing')) {
    const t = d.querySelector('table.missing');  // the first chunk: the column headers
    const name = d.querySelector('summary').firstChild.textContent.replace(/: $/, '');
    // The last column is each row's cause, not a stage.
    const cols = [...t.tHead.rows[0].cells].slice(1, -1)
      .map(th => th.dataset.pool ? th.dataset.pool + '@' + th.dataset.replica : th.dataset.kind);
    const causeHead = t.tHead.rows[0].cells[cols.length + 1].dataset.kind;
    const lost = Object.fromEntries(cols.map(c => [c, []]));
    const causes = {};
    let visible = 0, rows = 0;
    // A Service's list comes in chunks: one table each.
    for (const table of d.querySelectorAll('table.missing')) {
      for (const tr of table.tBodies[0].rows) {
        rows++;
        if (tr.checkVisibility()) visible++;
        for (let i = 1; i <= cols.length; i++)
          if (tr.cells[i].textContent === 'lost') lost[cols[i - 1]].push(tr.cells[0].textContent);
        causes[tr.cells[0].textContent] = tr.cells[cols.length + 1].textContent;
      }
    }
    missing[name] = {lost, rows, visible, causes, causeHead};
  }
  const sources = [...document.querySelectorAll('table.sources tbody tr')].map(tr => ({
    source: tr.dataset.source, server: tr.dataset.server,
    status: tr.cells[1].textContent}));
  return {services, missing, sources,
          verdict: document.querySelector('.verdict strong').textContent,
          scripts: document.scripts.length,
          filterShown: !document.getElementById('filter').hidden};
})()"""

VISIBLE_ROWS = """[...document.querySelectorAll('table.missing tbody tr')]
  .filter(r => r.checkVisibility()).length"""
FILTER_IDLE = (
    "!document.getElementById('filter').hasAttribute('data-busy') && "
    "document.getElementById('shown').textContent !== ''"
)


def artifact(tmp_path: Path, name: str, data: bytes, capsys: pytest.CaptureFixture[str]) -> Path:
    """Keeps a screenshot under tmp_path and in $TEST_ARTIFACTS (.artifacts/)."""
    kept = tmp_path / name
    kept.write_bytes(data)
    target = Path(os.environ.get("TEST_ARTIFACTS") or REPO / ".artifacts") / "report-browser"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(kept, target / name)
    with capsys.disabled():
        print(f"\nartifact: {target / name} (also {kept})")
    return target / name


async def full_screenshot(page: Page) -> bytes:
    """The whole page, the missing-target chunks too: off screen the
    browser skips rendering them (content-visibility: auto)."""
    await page.evaluate(
        "document.querySelectorAll('div.chunk').forEach(c => c.style.contentVisibility = 'visible')"
    )
    return await page.screenshot()


def keep_file(tmp_path: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    return artifact(tmp_path, path.name, path.read_bytes(), capsys)


def number(text: str) -> int:
    return int(text.replace(",", ""))


def truth() -> dict[str, dict[str, set[str]]]:
    """Service -> stage column -> the nodes it must list as lost there. The
    testbed's two servers are independent: each its own replica, judged on
    its own, so each has its own column per pool."""
    out: dict[str, dict[str, set[str]]] = {}
    for (ns, name, pool), dropped in POOLS.items():
        if dropped(N):
            for server in SERVERS:
                out.setdefault(f"{ns}/{name}", {})[f"{pool}@{server}"] = dropped(N)
    out[NE]["endpoints"] = s.endpoints_dropped_nodes(N)
    out[KUBELET]["endpointslices"] = s.mirroring_dropped_nodes(N)
    return out


def assert_lists_the_truth(shown: dict[str, Any]) -> None:
    want = truth()
    assert set(shown["missing"]) == set(want), shown["missing"].keys()
    for service, columns in want.items():
        listed = shown["missing"][service]
        assert {c: set(v) for c, v in listed["lost"].items()} == columns, service
        assert listed["rows"] == len(set().union(*columns.values()))
        # Each row says why, and the testbed's truth has one cause per Service.
        assert listed["causeHead"] == "cause"
        assert set(listed["causes"]) == set().union(*columns.values())
        assert set(listed["causes"].values()) == {CAUSES[service]}, service
        # Every row is on screen (the tables are small enough to start open).
        assert listed["visible"] == listed["rows"], service


def assert_console_clean_and_nothing_fetched(page: Page, url: str) -> None:
    assert page.console_errors() == []
    assert page.requested_urls() == [url]


async def check_filter(
    page: Page, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    want = truth()
    needle = sorted(want[NE]["endpoints"])[0]
    # Rows per Service whose name contains the needle, from the truth.
    expected = sum(
        1 for columns in want.values() for n in set().union(*columns.values()) if needle in n
    )
    await page.evaluate("document.querySelector('#filter input[name=q]').focus()")
    await page.send("Input.insertText", text=needle)
    await page.wait_for(
        FILTER_IDLE + " && document.getElementById('shown').textContent.startsWith('showing')"
    )
    assert await page.evaluate(VISIBLE_ROWS) == expected
    assert expected >= 1
    artifact(tmp_path, f"{name}-filtered.png", await page.screenshot(full_page=False), capsys)

    async def select(stage: str, pool: str) -> int:
        await page.evaluate(
            "(() => { const f = document.getElementById('filter'); f.elements.q.value = '';"
            f" f.elements.stage.value = {stage!r}; f.elements.pool.value = {pool!r};"
            " f.elements.pool.dispatchEvent(new Event('change')); })()"
        )
        await page.wait_for(FILTER_IDLE)
        return await page.evaluate(VISIBLE_ROWS)

    # The search box matches a row's cause too.
    await page.evaluate(
        "(() => { const f = document.getElementById('filter'); f.elements.q.value = "
        "'mirroring_capped'; f.dispatchEvent(new Event('submit', {cancelable: true})); })()"
    )
    await page.wait_for(FILTER_IDLE)
    assert await page.evaluate(VISIBLE_ROWS) == len(want[KUBELET]["endpointslices"])
    assert await select("endpoints", "") == len(want[NE]["endpoints"])
    kubelet_slices = want[KUBELET][f"kubelet-endpointslice@{SERVERS[0]}"]
    assert await select("", "kubelet-endpointslice") == len(kubelet_slices)
    assert await select("endpointslices", "node-exporter-endpoints") == 0
    everything = sum(len(set().union(*c.values())) for c in want.values())
    assert await select("", "") == everything


# --- the live page ------------------------------------------------------------


@pytest.fixture(scope="module")
def exporter(testbed: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    for url in testbed.prometheus_urls.values():
        eventually(lambda url=url: prometheus_sees(url, N), "Prometheus to see the scenario", 180)
    log = tmp_path_factory.mktemp("report-exporter") / "exporter.log"
    urls = [f"{name}={url}" for name, url in testbed.prometheus_urls.items()]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(BINARY),
                "serve",
                *exporter_args(testbed, *urls),
                "--web.listen-address",
                testbed.exporter_address,
                "--interval",
                INTERVAL,
                "--prometheus-full-refresh-interval",
                "0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    exp = Exporter(testbed.exporter_address, process, log)
    try:
        eventually(lambda: exp.get("/-/ready")[0] == 200, "the exporter to be ready", 180)
        for (ns, name, pool), dropped in POOLS.items():
            for server in SERVERS:
                eventually(
                    lambda ns=ns, name=name, pool=pool, dropped=dropped, server=server: (
                        exp.value(
                            "scrape_coverage_prometheus_missing_targets",
                            namespace=ns,
                            service=name,
                            scrape_pool=pool,
                            role="endpoints" if pool.endswith("-endpoints") else "endpointslice",
                            scraper=server,
                            scraper_replica=server,
                        )
                        == len(dropped(N))
                    ),
                    f"the exporter to see {pool} of {server}",
                )
        yield exp
    finally:
        process.terminate()
        process.wait(timeout=30)


def metric_sum(
    m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **want: str
) -> int:
    total = 0.0
    for labels, value in m.get(name, {}).items():
        d = dict(labels)
        if all(d.get(k) == v for k, v in want.items()):
            total += value
    return int(total)


async def test_live_report_shows_the_exporters_numbers_and_every_missing_node(
    exporter: Exporter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = exporter.url + "/report"
    async with Browser(log=tmp_path / "chromium.log") as browser:
        page = await browser.new_page()
        await page.navigate(url)
        shown = await page.evaluate(READ_PAGE)
        m = exporter.samples()
        artifact(tmp_path, "live-report.png", await full_screenshot(page), capsys)

        assert shown["verdict"].startswith("Gaps found")
        assert {(x["source"], x["server"], x["status"]) for x in shown["sources"]} == {
            ("kubernetes", "", "up"),
            ("discovery", "", "up"),  # on by default: finds nothing more here
            *(("prometheus", name, "up") for name in SERVERS),
        }
        assert set(shown["services"]) >= {NE, KUBELET, "kube-system/kubelet-skip-mirror"}
        for service, stages in shown["services"].items():
            ns, name = service.split("/")
            sel = {"namespace": ns, "service": name}
            by = {(st["stage"], st["pool"]): st for st in stages}
            expected = number(by[("expected", "")]["holds"])
            assert expected == metric_sum(m, "scrape_coverage_expected_targets", **sel)
            endpoints = by[("endpoints", "")]
            assert number(endpoints["holds"]) == metric_sum(
                m, "scrape_coverage_endpoints_addresses", **sel
            )
            assert number(endpoints["missing"]) == metric_sum(
                m, "scrape_coverage_missing_targets", **sel, stage="endpoints"
            )
            slices = by[("endpointslices", "")]
            assert number(slices["holds"]) == metric_sum(
                m, "scrape_coverage_endpointslice_endpoints", **sel
            )
            assert number(slices["missing"]) == metric_sum(
                m, "scrape_coverage_missing_targets", **sel, stage="endpointslices"
            )
            pools = [st for st in stages if st["stage"] == "prometheus"]
            assert pools
            # One row per (replica, pool): the testbed's servers are their own replicas.
            assert {st["replica"] for st in pools} == set(SERVERS)
            for st in pools:
                pool = {**sel, "scrape_pool": st["pool"], "role": st["role"]}
                replica = {"scraper": st["scraper"], "scraper_replica": st["replica"]}
                missing = metric_sum(
                    m, "scrape_coverage_prometheus_missing_targets", **pool, **replica
                )
                assert number(st["missing"]) == missing, st
                assert number(st["holds"]) == expected - missing, st
                assert set(st["servers"]) == {st["replica"]}
                for server, text in st["servers"].items():
                    active = metric_sum(
                        m, "scrape_coverage_prometheus_targets", **pool, server=server
                    )
                    assert text.startswith(f"{server}: {active:,} targets"), text
        assert_lists_the_truth(shown)
        assert shown["scripts"] == 1 and shown["filterShown"]
        await check_filter(page, "live-report", tmp_path, capsys)
        assert_console_clean_and_nothing_fetched(page, url)


def test_live_report_revalidates_with_its_etag(exporter: Exporter) -> None:
    with urllib.request.urlopen(exporter.url + "/report", timeout=30) as r:
        etag = r.headers["ETag"]
        assert r.headers["Cache-Control"] == "no-cache"
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    request = urllib.request.Request(exporter.url + "/report", headers={"If-None-Match": etag})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            # A cycle ended in between (every 3 s here): then it is a new page.
            assert r.headers["ETag"] != etag
    except urllib.error.HTTPError as err:
        assert err.code == 304
    landing = exporter.get("/")[1]
    assert '<a href="report">' in landing


# --- the file from audit --output html ----------------------------------------------


@pytest.fixture(scope="module")
def report_file(testbed: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    for url in testbed.prometheus_urls.values():
        eventually(lambda url=url: prometheus_sees(url, N), "Prometheus to see the scenario", 180)
    path = tmp_path_factory.mktemp("report-file") / "report.html"
    urls = [f"{name}={url}" for name, url in testbed.prometheus_urls.items()]
    with path.open("wb") as out:
        done = subprocess.run(
            [str(BINARY), "audit", *exporter_args(testbed, *urls), "--output", "html"],
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=300,
            check=False,
        )
    assert done.returncode == 1, done.stderr  # gaps found
    return path


async def test_report_file_lists_every_missing_node(
    report_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = report_file.as_uri()
    async with Browser(log=tmp_path / "chromium.log") as browser:
        page = await browser.new_page()
        await page.navigate(url)
        shown = await page.evaluate(READ_PAGE)
        artifact(tmp_path, "static-report.png", await full_screenshot(page), capsys)
        ne = {(st["stage"], st["pool"]): st for st in shown["services"][NE]}
        assert number(ne[("expected", "")]["holds"]) == N
        assert number(ne[("endpoints", "")]["holds"]) == s.ENDPOINTS_CAP
        assert number(ne[("endpoints", "")]["missing"]) == N - s.ENDPOINTS_CAP
        assert_lists_the_truth(shown)
        await check_filter(page, "static-report", tmp_path, capsys)
        assert_console_clean_and_nothing_fetched(page, url)

        # In print: no filter or navigation, every row laid out, and a PDF.
        await page.send("Emulation.setEmulatedMedia", media="print")
        printed = await page.evaluate(
            "({filter: document.getElementById('filter').checkVisibility(),"
            " toc: document.querySelector('nav.toc').checkVisibility(),"
            " chunks: [...document.querySelectorAll('div.chunk')]"
            ".map(c => getComputedStyle(c).contentVisibility)})"
        )
        assert printed["filter"] is False and printed["toc"] is False
        assert set(printed["chunks"]) == {"visible"}
        pdf = await page.send("Page.printToPDF", printBackground=True)
        artifact(tmp_path, "static-report.pdf", base64.b64decode(pdf["data"]), capsys)
        keep_file(tmp_path, report_file, capsys)


async def test_report_file_without_javascript_still_lists_everything(
    report_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = report_file.as_uri()
    async with Browser(log=tmp_path / "chromium.log") as browser:
        page = await browser.new_page()
        await page.send("Emulation.setScriptExecutionDisabled", value=True)
        await page.navigate(url)
        await page.send("Emulation.setScriptExecutionDisabled", value=False)
        # Our own evaluations run again; the page's script did not run.
        shown = await page.evaluate(READ_PAGE)
        artifact(tmp_path, "static-report-nojs.png", await full_screenshot(page), capsys)
        assert not shown["filterShown"]
        assert await page.evaluate("document.getElementById('nojs').checkVisibility()")
        assert_lists_the_truth(shown)
        assert_console_clean_and_nothing_fetched(page, url)


async def test_hostile_names_render_as_text_in_the_browser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No testbed needed: cluster data made of markup, in a real browser."""
    report, health = hostile_report()
    path = tmp_path / "hostile.html"
    path.write_bytes(render_page(report, PageInfo("<script>alert(0)</script>", 0.0, health)))
    async with Browser(log=tmp_path / "chromium.log") as browser:
        page = await browser.new_page()
        await page.navigate(path.as_uri())
        listed = await page.evaluate(
            "[...document.querySelectorAll('table.missing tbody tr')]"
            ".map(r => r.cells[0].textContent)"
        )
        assert set(HOSTILE_NODES) <= set(listed)
        assert await page.evaluate("document.scripts.length") == 1
        assert await page.evaluate("document.querySelectorAll('img, i, h1 ~ h1').length") == 0
        assert await page.evaluate("document.querySelector('h1').textContent") == (
            "Scrape coverage of <script>alert(0)</script>"
        )
        assert not [m for m, _ in page.events if m == "Page.javascriptDialogOpening"]
        artifact(tmp_path, "hostile.png", await page.screenshot(full_page=False), capsys)
        assert_console_clean_and_nothing_fetched(page, path.as_uri())
