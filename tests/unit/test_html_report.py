"""The HTML coverage report: it shows the model's truth (every missing
target, the funnel's numbers, source health), escapes every piece of
cluster data, fetches nothing, and `serve`'s /report caches and revalidates.
The same page in a real browser: tests/e2e/test_report_browser.py."""

from __future__ import annotations

import gzip
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from coverage_exporter import runbooks
from coverage_exporter.exposition import html as report_html
from coverage_exporter.exposition.html import (
    CHUNK_ROWS,
    JS,
    LOST,
    PageInfo,
    render_page,
)
from coverage_exporter.health import SourceHealth
from coverage_exporter.model.fleet import ServerState
from coverage_exporter.model.objects import (
    ClusterSnapshot,
    DaemonSet,
    EndpointAddress,
    Endpoints,
    Node,
    Pod,
    PrometheusSnapshot,
    Service,
    Target,
)
from coverage_exporter.model.readiness import PrometheusCR, Readiness
from coverage_exporter.model.report import CoverageReport, build_report
from coverage_exporter.model.scope import Scope
from coverage_exporter.web.server import Response, route
from coverage_exporter.web.view import ExporterView
from tests.unit import clusters
from tests.unit.test_exposition import merged

REPO = Path(__file__).resolve().parents[2]
NE = ("monitoring", "node-exporter")
KUBELET = ("kube-system", "kubelet")
NE_ONLY = frozenset({NE})
NOW = 1764130000.0


class Page(HTMLParser):
    """The parsed page: tags with attributes, text, and script bodies."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)

    def all_text(self) -> str:
        return "".join(self.text)


def sources(prometheus: str = "prom-a", up: bool = True, error: str = "") -> list[SourceHealth]:
    return [
        SourceHealth("kubernetes", "", True, "", 0.2, NOW - 1, 0, 10, 1000),
        SourceHealth("prometheus", prometheus, up, error, 1.0, NOW - 600 if not up else NOW, 2),
    ]


def info(**kw: object) -> PageInfo:
    values: dict[str, object] = {"cluster": "testbed", "collected_at": NOW, "sources": sources()}
    values.update(kw)
    return PageInfo(**values)  # type: ignore[arg-type]


def scenario_report(nodes: int = 1200) -> CoverageReport:
    """The testbed's scenario in plain data: truncated node-exporter
    Endpoints read by role endpoints, capped kubelet mirroring read by role
    endpointslice."""
    ne, kubelet = clusters.node_exporter(nodes), clusters.kubelet(nodes)
    prom = PrometheusSnapshot(
        "prom-a",
        [
            *clusters.endpoints_targets(ne, "node-exporter-endpoints", *NE),
            *clusters.slice_targets(ne, "node-exporter-endpointslice", *NE),
            *clusters.endpoints_targets(kubelet, "kubelet-endpoints", *KUBELET),
            *clusters.slice_targets(kubelet, "kubelet-endpointslice", *KUBELET),
        ],
    )
    return build_report(Scope(), merged(ne, kubelet), [prom])


def missing_rows(page: str) -> dict[str, list[list[str]]]:
    """Service -> rows of its missing-target table (cell texts), read back
    from the markup with a regex independent of the renderer."""
    out = {}
    for block in page.split('<details class="missing"')[1:]:
        name = re.search(r"<summary>(.*?): ", block)
        assert name is not None
        bodies = re.findall(r"<tbody>\n(.*?)</tbody>", block.split("</details>")[0], re.S)
        out[name.group(1)] = [
            re.split(r"<td>", line.removesuffix("</tr>"))[1:]
            for body in bodies
            for line in body.splitlines()
            if line
        ]
    return out


def test_every_missing_node_is_listed_with_the_stages_that_lost_it() -> None:
    report = scenario_report()
    page = render_page(report, info()).decode()
    rows = missing_rows(page)
    ne = next(s for s in report.services if s.key == NE)
    assert ne.endpoints is not None
    kubelet = next(s for s in report.services if s.key == KUBELET)
    dropped = {m.node for m in ne.endpoints.missing}
    assert len(dropped) == 200
    # node-exporter: lost at Endpoints and by the endpoints-role pool only.
    assert {r[0] for r in rows["monitoring/node-exporter"]} == dropped
    # ... each for the cut, the cause of both (the pool reads the Endpoints).
    assert all(
        r[1:] == [LOST, LOST, "endpoints_truncated"] for r in rows["monitoring/node-exporter"]
    )
    mirrored_out = {m.node for m in kubelet.slices.missing}
    assert {r[0] for r in rows["kube-system/kubelet"]} == mirrored_out
    assert all(r[-1] == "mirroring_capped" for r in rows["kube-system/kubelet"])
    assert len(mirrored_out) == 200
    # The legend says each cause in words and links its runbook section.
    assert f'href="{RUNBOOK_BASE}causes.md#endpoints_truncated">cut from the truncated' in page


def test_the_funnel_shows_the_models_numbers() -> None:
    report = scenario_report()
    page = render_page(report, info()).decode()
    ne = re.search(r'id="service-\d+".{0,200}monitoring/node-exporter(.*?)</section>', page, re.S)
    assert ne is not None
    section = ne.group(1)

    def cells(stage: str) -> tuple[str, str]:
        m = re.search(
            rf'<tr data-stage="{stage}"[^>]*>.*?<td class="n holds">([^<]*)</td>'
            rf'<td class="n miss[^"]*">([^<]*)</td>',
            section,
        )
        assert m is not None, stage
        return m.group(1), m.group(2)

    assert cells("expected") == ("1,200", "")
    assert cells("endpoints") == ("1,000", "200")
    assert cells("endpointslices") == ("1,200", "0")
    assert cells('prometheus" data-pool="node-exporter-endpoints') == ("1,000", "200")
    assert cells('prometheus" data-pool="node-exporter-endpointslice') == ("1,200", "0")
    assert "TRUNCATED" in section
    assert 'data-server="prom-a">prom-a: 1,000 targets (1,000 down)' in section
    assert "Gaps found: 400 expected targets lost, in 2 of 2 Services." in page


RUNBOOK_BASE = runbooks.DEFAULT_BASE_URL


def test_findings_come_from_the_audit_and_link_their_runbooks() -> None:
    page = render_page(scenario_report(), info()).decode()
    link = f'<a href="{RUNBOOK_BASE}ScrapeCoverageEndpointsTruncated.md">'
    assert link + "ScrapeCoverageEndpointsTruncated</a>" in page
    assert "migrate this job to role endpointslice" in page
    assert f'{RUNBOOK_BASE}ScrapeCoverageEndpointSliceMirroringCapped.md"' in page
    assert f'{RUNBOOK_BASE}migrate-to-endpointslice.md"' in page
    for page_name in re.findall(re.escape(RUNBOOK_BASE) + r'([^"]+)"', page):
        page_name, _, anchor = page_name.partition("#")
        assert (REPO / "docs" / "runbooks" / page_name).is_file(), page_name
        if anchor:
            text = (REPO / "docs" / "runbooks" / page_name).read_text()
            assert f"\n## {anchor}\n" in text, anchor


def _runbook_links(page: str) -> list[str]:
    """Every link of the page that names a runbook page."""
    hrefs = [dict(attrs).get("href") or "" for tag, attrs in Page(page).tags if tag == "a"]
    runbook = re.compile(r"/(ScrapeCoverage\w+|migrate-to-endpointslice|README)\.md$")
    return [h for h in hrefs if runbook.search(h)]


@pytest.mark.parametrize(
    "base", ["https://runbooks.example.com/coverage/", "file:///srv/runbooks/"]
)
def test_every_runbook_link_follows_the_runbook_base_url(base: str) -> None:
    """--runbook-base-url reaches every link of the report: the findings',
    the next steps', the migration table's and the footer's."""
    report = scenario_report()
    cr = PrometheusCR("Prometheus", "monitoring", "k8s", "Endpoints", "prometheus-k8s", None, None)
    readiness = Readiness(
        cr=cr,
        role="Endpoints",
        over_capacity=(NE,),
        soon_over_capacity=(),
        endpointslice_rbac=None,
        kubelet_state="mirrored_capped",
        next_step="dual-write",
        safe_now=True,
        advice="write the slices",
        action="--kubelet-endpointslice=true",
    )
    runbooks.set_base_url(base)
    try:
        page = render_page(report, info(readiness=(readiness,))).decode()
    finally:
        runbooks.set_base_url(None)
    links = _runbook_links(page)
    pages = {h.rsplit("/", 1)[1] for h in links}
    assert {
        "ScrapeCoverageEndpointsTruncated.md",
        "ScrapeCoverageEndpointSliceMirroringCapped.md",
        "ScrapeCoverageTargetsMissing.md",
        "migrate-to-endpointslice.md",
        "README.md",
    } <= pages
    assert all(h.startswith(base) for h in links), links
    assert RUNBOOK_BASE not in page and "docs/runbooks/" not in page
    for name in pages:
        assert (REPO / "docs" / "runbooks" / name).is_file(), name
    # Each finding with a runbook links it, once, where it is listed.
    listed = page.split('<ol class="findings">')[1].split("</ol>")[0].split("<li>")[1:]
    with_runbook = [f for f in listed if "migrate this job" in f or "mirroring controller" in f]
    assert len(with_runbook) >= 2
    assert all(f.count(f'<a href="{base}') == 1 for f in with_runbook), with_runbook


HOSTILE_NODES = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "a&amp;b'c\"d",
    "ünïcødé-節点-🚀",
    "node-</td></tr></table><h1>x",
    "<!--",
]


def hostile_report() -> tuple[CoverageReport, list[SourceHealth]]:
    """A DaemonSet-backed Service whose Endpoints leave out every hostile
    node, with hostile namespace, Service, pod, pool and Prometheus names."""
    ns, name = 'ns"<b>', "svc</title><script>alert(3)</script>"
    names = [*HOSTILE_NODES, *(clusters.node_name(i) for i in range(4))]
    nodes = {n: Node(n, (f"10.9.0.{i}",), True) for i, n in enumerate(names)}
    pods = [
        Pod(ns, f"pod<{i}>&'", n, f"10.9.0.{i}", "DaemonSet", "ds<x>") for i, n in enumerate(names)
    ]
    kept = [EndpointAddress(p.ip or "", p.node_name, "Pod", p.name) for p in pods][-4:]
    cluster = ClusterSnapshot(
        nodes=nodes,
        services={(ns, name): Service(ns, name, {"app": "<x>&\"'"})},
        endpoints={(ns, name): Endpoints(ns, name, tuple(kept), (), (len(kept),))},
        pods={(ns, name): pods},
        daemonsets={(ns, "ds<x>"): DaemonSet(ns, "ds<x>", len(names))},
    )
    pool = "pool<script>alert(4)</script>"
    targets = [
        Target(pool, "up", "endpoints", ns, name, a.node_name, "Pod", a.target_name, None, a.ip)
        for a in kept
    ]
    prometheus = '"prom<i>'
    report = build_report(Scope(), cluster, [PrometheusSnapshot(prometheus, targets)])
    health = sources(prometheus, up=False, error="HTTP 503: <script>alert(5)</script> & more")
    return report, health


def test_cluster_data_cannot_inject_markup() -> None:
    report, health = hostile_report()
    text = render_page(
        report,
        info(
            cluster="<cluster & 'co'>",
            sources=health,
            prometheus_urls={'"prom<i>': 'http://u:p@h:9090/"><script>'},
        ),
    ).decode()
    page = Page(text)
    # Only the page's own script, and only the page's own elements.
    assert page.scripts == [JS]
    tags = {t for t, _ in page.tags}
    assert tags <= {
        "html",
        "head",
        "meta",
        "link",
        "title",
        "style",
        "body",
        "header",
        "h1",
        "h2",
        "h3",
        "p",
        "b",
        "strong",
        "time",
        "div",
        "nav",
        "a",
        "main",
        "table",
        "caption",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "span",
        "small",
        "code",
        "br",
        "section",
        "details",
        "summary",
        "form",
        "label",
        "input",
        "select",
        "option",
        "output",
        "footer",
        "script",
        "ol",
        "li",
        "ul",
    }, tags
    assert not any(k.startswith("on") for _, attrs in page.tags for k in attrs)
    assert "img" not in tags and "i" not in tags
    # Every hostile string shows as text, exactly as the cluster spelled it.
    shown = page.all_text()
    for node in HOSTILE_NODES:
        assert node in shown, node
    assert 'ns"<b>/svc</title><script>alert(3)</script>' in shown
    assert "pool<script>alert(4)</script>" in shown
    assert "HTTP 503: <script>alert(5)</script> & more" in shown
    assert "<cluster & 'co'>" in shown
    # The pool name is also an attribute value: it reads back unchanged.
    pools = {a["data-pool"] for _, a in page.tags if "data-pool" in a}
    assert pools == {"pool<script>alert(4)</script>"}
    # Credentials in a Prometheus URL are never shown.
    assert "u:p@" not in text


def test_the_page_fetches_nothing() -> None:
    text = render_page(scenario_report(), info()).decode()
    page = Page(text)
    for tag, attrs in page.tags:
        assert "src" not in attrs and "srcset" not in attrs, tag
        if tag == "link":
            assert attrs["href"] == "data:,", attrs
        elif tag != "a":
            assert "href" not in attrs, tag
    assert "@import" not in text and "url(" not in text
    csp = next(
        a["content"] for t, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in csp
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha256(page.scripts[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp


def test_source_down_is_said_with_its_last_good_read() -> None:
    health = sources(up=False, error="HTTP 503")
    text = render_page(scenario_report(), info(sources=health)).decode()
    assert (
        "Prometheus prom-a is DOWN</b> (HTTP 503): its targets below are its last good read" in text
    )
    assert "10 min before this report" in text
    never = [sources()[0], SourceHealth("prometheus", "prom-b", False, "connection refused")]
    text = render_page(scenario_report(), info(sources=never)).decode()
    assert "Prometheus prom-b has never answered</b> (connection refused)" in text


def test_without_kubernetes_the_page_says_nothing_was_compared() -> None:
    down = [SourceHealth("kubernetes", "", False, "connection refused")]
    text = render_page(None, info(sources=down)).decode()
    assert "No coverage: Kubernetes could not be read." in text
    assert "Kubernetes has never answered</b> (connection refused)" in text
    assert "Full coverage" not in text


def test_pools_unknown_when_a_shard_has_not_answered() -> None:
    cluster = clusters.node_exporter(1001)
    prom = PrometheusSnapshot("prom-a", clusters.slice_targets(cluster, "ne", *NE))
    stale = [ServerState("prom-a", prom.server_identity, False)]
    report = build_report(Scope(), cluster, [prom], servers=stale)
    text = render_page(report, info(complete=False)).decode()
    assert "Coverage unknown: a source did not answer" in text
    assert '<td class="n miss">unknown</td>' in text
    assert "coverage unknown for 1,001: a shard of the replica has not answered" in text
    assert "Full coverage" not in text and "Gaps found" not in text
    # Truncated Endpoints that no known pool reads: a finding, not a gap.
    assert "a finding, nothing lost today" in text


def test_full_coverage_says_so_and_lists_nothing() -> None:
    cluster = clusters.node_exporter(10)
    prom = PrometheusSnapshot("prom-a", clusters.slice_targets(cluster, "ne", *NE))
    text = render_page(build_report(Scope(), cluster, [prom]), info()).decode()
    assert "Full coverage: every expected target of 1 Services is found." in text
    assert "No expected target is missing." in text and "<details" not in text


def test_long_lists_come_in_chunks_that_hold_every_row() -> None:
    report = scenario_report(1000 + 3 * CHUNK_ROWS + 7)
    page = render_page(report, info()).decode()
    ne = page.split('<details class="missing"')[2].split("</details>")[0]
    assert "monitoring/node-exporter" in ne
    chunks = re.findall(r'<div class="chunk"[^>]*><table class="missing">(.*?)</table>', ne, re.S)
    assert [c.count("<tr><td>") for c in chunks] == [CHUNK_ROWS] * 3 + [7]
    # No cell holds a newline (it would be text: an empty cell would read as
    # "lost" to the filter).
    assert not any(re.search(r"<td>[^<]*\n", c) for c in chunks)
    # Every chunk repeats the column headers, for screen readers and print.
    assert all(c.count('<th scope="col"') == 4 for c in chunks)  # node, 2 stages, cause
    assert len(missing_rows(page)["monitoring/node-exporter"]) == 3 * CHUNK_ROWS + 7


def test_assets_ship_as_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["coverage_exporter.exposition"]
    assets = Path(report_html.__file__).parent
    for name in ("report.css", "report.js"):
        assert any(Path(name).match(p) for p in patterns), name
        assert (assets / name).is_file()


# --- /report in serve ---------------------------------------------------------


class Client:
    """serve's routing (web.server.route, what the front process and the
    server answer with) driven directly, as a client would."""

    def __init__(self, view: ExporterView) -> None:
        self.view = view

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return await route(self.view, path, {k.lower(): v for k, v in (headers or {}).items()})


@pytest.fixture
def served():
    view = ExporterView(lambda: b"")
    return Client(view), view


async def test_report_before_the_first_cycle_is_503_and_collects_nothing(served) -> None:
    client, view = served
    response = await client.get("/report")
    assert response.status == 503
    assert "No report yet" in response.body.decode()
    assert view.report_page.services_renders == 0


async def test_landing_links_the_report(served) -> None:
    client, _ = served
    assert '<a href="report">' in (await client.get("/")).body.decode()


async def test_report_revalidates_and_renders_once_per_report(served) -> None:
    client, view = served
    report = scenario_report()
    view.publish_report(report, info())
    first = await client.get("/report", headers={"Accept-Encoding": "identity"})
    assert first.status == 200
    assert first.content_type == "text/html; charset=utf-8"
    assert first.headers["Cache-Control"] == "no-cache"
    assert "default-src 'none'" in first.headers["Content-Security-Policy"]
    etag = first.headers["ETag"]
    body = first.body
    assert b"monitoring/node-exporter" in body

    again = await client.get(
        "/report", headers={"If-None-Match": etag, "Accept-Encoding": "identity"}
    )
    assert again.status == 304 and again.headers["ETag"] == etag

    # The next cycle: same report object, new time and health: the header
    # changes, the per-Service part is not rendered again.
    view.publish_report(report, info(collected_at=NOW + 60))
    later = await client.get(
        "/report", headers={"If-None-Match": etag, "Accept-Encoding": "identity"}
    )
    assert later.status == 200 and later.headers["ETag"] != etag
    assert view.report_page.services_renders == 1

    # A new report is rendered again.
    view.publish_report(scenario_report(), info(collected_at=NOW + 120))
    assert (await client.get("/report")).status == 200
    assert view.report_page.services_renders == 2


async def test_report_is_gzipped_when_asked_with_its_own_etag(served) -> None:
    client, view = served
    view.publish_report(scenario_report(), info())
    plain = await client.get("/report", headers={"Accept-Encoding": "identity"})
    zipped = await client.get("/report", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == plain.body
    assert zipped.headers["ETag"] != plain.headers["ETag"]
    revalidated = await client.get(
        "/report",
        headers={"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["ETag"]},
    )
    assert revalidated.status == 304


def test_migration_readiness_of_each_operator_cr() -> None:
    cr = PrometheusCR(
        "Prometheus", "monitoring", "k8s<x>", "Endpoints", "prometheus-k8s", None, None
    )
    unsafe = Readiness(
        cr=cr,
        role="Endpoints",
        over_capacity=(("monitoring", "node-exporter"),),
        soon_over_capacity=(),
        endpointslice_rbac=False,
        kubelet_state="mirrored_capped",
        next_step="dual-write",
        safe_now=False,
        advice="switching now would lose the mirrored-out kubelet addresses",
        action="--kubelet-endpointslice=true",
    )
    page = Page(render_page(scenario_report(), info(readiness=[unsafe])).decode())
    text = page.all_text()
    assert "Migration readiness" in text
    assert "Prometheus monitoring/k8s<x>" in text
    assert "prometheus-k8s: may NOT list EndpointSlices" in text
    assert "dual-write UNSAFE NOW" in text and "--kubelet-endpointslice=true" in text
    assert "monitoring/node-exporter" in text
    # Without the Operator there is no such section.
    assert (
        "Migration readiness"
        not in Page(render_page(scenario_report(), info()).decode()).all_text()
    )


async def test_report_after_a_cycle_without_kubernetes_says_so(served) -> None:
    client, view = served
    down = [SourceHealth("kubernetes", "", False, "connection refused")]
    view.publish_report(None, info(sources=down, complete=False))
    response = await client.get("/report")
    assert response.status == 200
    text = response.body.decode()
    assert "No coverage: Kubernetes could not be read." in text
    assert view.report_page.services_renders == 0


def test_an_unknown_pool_says_why_and_each_server_what_it_is() -> None:
    """A vmagent pool whose targets name no Service: the reason on the pool,
    the server's kind beside its topology (issue #20)."""
    from coverage_exporter.model.objects import KIND_VMAGENT
    from coverage_exporter.model.topology import identify

    cluster = clusters.node_exporter(12)
    reason = "12 targets came without discovered labels"
    # 10 of 12 name the Service; the 2 others may be among those that do not.
    vm = PrometheusSnapshot(
        "vm",
        clusters.slice_targets(cluster, "bare", *NE)[:10],
        identity=identify("vm", {}, (), None, KIND_VMAGENT),
        unjudged_pools={"bare": reason},
    )
    report = build_report(Scope(), cluster, [vm])
    text = render_page(report, info(sources=sources("vm"))).decode()
    assert f"coverage unknown for 2: {reason}" in text
    assert "vmagent, independent" in text
    assert "Gaps found" not in text
