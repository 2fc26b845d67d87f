"""The coverage report as one self-contained HTML page, for people in an
incident: `audit --output html` writes it, `serve` shows it live on /report.

The page fetches nothing: its style and its one script are inlined, and
its Content-Security-Policy forbids every fetch (the script runs only by
its hash, so even a mistake in escaping could not run injected script).
Every piece of cluster data goes through `_e` (html.escape, quotes too).
Everything but filtering works without JavaScript.

Rendering is split in two so that `serve` renders the heavy part (every
missing target, ~300k rows at 100k nodes) once per report object and only
the small header (time, source health) once per cycle.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

from coverage_exporter import __version__
from coverage_exporter.exposition.audit import findings
from coverage_exporter.model.coverage import (
    STAGE_ENDPOINTS,
    STAGE_ENDPOINTSLICES,
    STAGE_PROMETHEUS,
    MissingTarget,
    ServiceCoverage,
)
from coverage_exporter.model.objects import (
    SOURCE_DAEMONSET,
    SOURCE_NODES,
    SOURCE_PODS,
)
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.sources.health import SOURCE_KUBERNETES, SourceHealth

# Where the runbooks are published; the same base as the alerts'
# runbook_url (alerts/rules.py, a test keeps them equal). The findings name
# runbooks as docs/runbooks/<page>.md; the page links them here.
RUNBOOK_BASE_URL = "https://github.com/coverage-exporter/coverage-exporter/blob/main/docs/runbooks/"
_RUNBOOK_REF = re.compile(r"docs/runbooks/([A-Za-z0-9_-]+\.md)")

CHUNK_ROWS = 500
"""Rows per table of a Service's missing targets. Each chunk is a table of
its own in a `content-visibility: auto` box, so the browser lays out only
the chunks on screen: one 99k-row table takes Chromium ~3.5 s to lay out,
and the whole page would wait for it."""
ROW_PX = 21
"""A row's height (report.css), for the size a chunk reserves unrendered."""

LOST = "lost"
"""The text of a "lost at this stage" cell: a word, so that screen readers,
print and copy-paste say it."""

_ASSETS = resources.files("coverage_exporter.exposition")
CSS = (_ASSETS / "report.css").read_text(encoding="utf-8")
JS = (_ASSETS / "report.js").read_text(encoding="utf-8")
_JS_HASH = base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    f"script-src 'sha256-{_JS_HASH}'; base-uri 'none'; form-action 'none'"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int) -> str:
    return f"{value:,}"


# --- the one place that reads the coverage model ------------------------------
# Everything below this section renders StageView/ServiceView only, so a
# change of the model (report.py, coverage.py) is adapted here.


@dataclass(frozen=True, slots=True)
class StageView:
    """One stage of a Service's funnel."""

    kind: str
    """STAGE_ENDPOINTS, STAGE_ENDPOINTSLICES or STAGE_PROMETHEUS."""
    label: str
    holds: int | None
    """What the stage holds (addresses, endpoints, discovered targets); None: unknown."""
    missing: Sequence[MissingTarget] | None
    """Expected targets absent here; None: unknown (its source never answered)."""
    pool: str = ""
    role: str = ""
    alarm: str = ""
    """A short tag that names what is wrong (TRUNCATED, MIRRORING CAPPED)."""
    notes: tuple[str, ...] = ()
    per_prometheus: tuple[tuple[str, int, int], ...] = ()
    """(prometheus, active targets, of which health down) for a pool stage."""


@dataclass(frozen=True, slots=True)
class ServiceView:
    name: str
    source: str
    expected: int
    stages: tuple[StageView, ...]
    findings: tuple[str, ...]
    has_gap: bool
    prometheus_known: bool
    node_wide: bool


def _endpoints_stage(s: ServiceCoverage) -> StageView:
    ep = s.endpoints
    if ep is None:
        return StageView(
            STAGE_ENDPOINTS,
            "Endpoints",
            0,
            # No Endpoints object: every expected target is missing there,
            # as scrape_coverage_missing_targets{stage="endpoints"} says.
            None,
            alarm="NO ENDPOINTS OBJECT",
        )
    notes = []
    if ep.not_ready:
        notes.append(f"{_n(ep.not_ready)} not ready")
    if ep.skip_mirror:
        notes.append("labelled skip-mirror: the owner writes its own slices")
    return StageView(
        STAGE_ENDPOINTS,
        "Endpoints",
        ep.ready + ep.not_ready,
        ep.missing,
        alarm="TRUNCATED" if ep.truncated else "",
        notes=tuple(notes),
    )


def _slices_stage(s: ServiceCoverage) -> StageView:
    sl = s.slices
    notes = [
        f"{_n(count)} {'ready' if ready else 'not ready'} by {managed_by}"
        for (managed_by, ready), count in sorted(sl.endpoints.items())
    ]
    notes += [f"{_n(c)} terminating by {m}" for m, c in sorted(sl.terminating.items()) if c]
    if sl.mirroring_skipped:
        notes.append(f"mirroring left {_n(sl.mirroring_skipped)} addresses out")
    return StageView(
        STAGE_ENDPOINTSLICES,
        "EndpointSlices",
        sum(sl.endpoints.values()),
        sl.missing,
        alarm="MIRRORING CAPPED" if sl.mirroring_skipped else "",
        notes=tuple(notes),
    )


def _pool_stages(s: ServiceCoverage) -> list[StageView]:
    if not s.prometheus_known:
        return [StageView(STAGE_PROMETHEUS, "Scrape pools", None, None)]
    per: dict[tuple[str, str], dict[str, list[int]]] = {}
    for (prometheus, pool, role, health), count in s.target_counts.items():
        totals = per.setdefault((pool, role), {}).setdefault(prometheus, [0, 0])
        totals[0] += count
        if health == "down":
            totals[1] += count
    return [
        StageView(
            STAGE_PROMETHEUS,
            f"scrape pool {p.scrape_pool}",
            p.discovered,
            p.missing,
            pool=p.scrape_pool,
            role=p.role,
            per_prometheus=tuple(
                (name, t[0], t[1])
                for name, t in sorted(per.get((p.scrape_pool, p.role), {}).items())
            ),
        )
        for p in s.pools
    ]


def service_view(s: ServiceCoverage, has_gap: bool) -> ServiceView:
    return ServiceView(
        name=f"{s.namespace}/{s.service}",
        source=s.source,
        expected=s.expected,
        stages=(_endpoints_stage(s), _slices_stage(s), *_pool_stages(s)),
        findings=tuple(findings(s)),
        has_gap=has_gap,
        prometheus_known=s.prometheus_known,
        node_wide=s.source != SOURCE_PODS,
    )


def _has_gap(s: ServiceCoverage) -> bool:
    # The model's one definition of a gap, asked for one Service.
    return CoverageReport(services=[s]).has_gaps


def report_views(report: CoverageReport) -> list[ServiceView]:
    return [service_view(s, _has_gap(s)) for s in report.services]


# --- rendering -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageInfo:
    """What the page says around the report: where, when, from which sources."""

    cluster: str
    collected_at: float
    sources: Sequence[SourceHealth] = ()
    prometheus_urls: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServicesPart:
    """The per-report part of the page, rendered once per report."""

    html: str
    services: int
    with_gaps: int
    missing: int
    """Distinct (Service, target) pairs lost at some stage."""
    has_gaps: bool
    prometheus_known: bool
    unresolved: int


def _missing_total(stage: StageView, expected: int) -> int | None:
    if stage.missing is None:
        return expected if stage.kind == STAGE_ENDPOINTS else None
    return len(stage.missing)


def _bar(present: int | None, expected: int) -> str:
    if present is None:
        return '<span class="bar unknown" title="unknown"></span>'
    share = 100.0 if not expected else max(0.0, min(100.0, 100.0 * present / expected))
    return (
        f'<span class="bar" title="{share:.1f}% present">'
        f'<span style="width:{share:.2f}%"></span></span>'
    )


def _stage_label(st: StageView) -> str:
    if st.kind != STAGE_PROMETHEUS or not st.pool:
        return _e(st.label)
    return f"scrape pool <code>{_e(st.pool)}</code> <small>role {_e(st.role)}</small>"


def _funnel(v: ServiceView) -> str:
    source = {
        SOURCE_DAEMONSET: "the DaemonSet's nodes",
        SOURCE_NODES: "every Node",
        SOURCE_PODS: "the selected pods",
    }.get(v.source, v.source)
    rows = [
        '<tr data-stage="expected"><th scope="row">Expected</th>'
        f'<td class="n holds">{_n(v.expected)}</td><td class="n miss"></td>'
        f'<td class="cov">{_bar(v.expected, v.expected)}</td><td>{_e(source)}</td></tr>'
    ]
    for st in v.stages:
        missing = _missing_total(st, v.expected)
        present = None if missing is None else v.expected - missing
        notes = [f'<span class="tag bad">{_e(st.alarm)}</span>'] if st.alarm else []
        notes += [_e(n) for n in st.notes]
        notes += [
            f'<span data-prometheus="{_e(name)}">{_e(name)}: {_n(active)} targets'
            + (f" ({_n(down)} down)" if down else "")
            + "</span>"
            for name, active, down in st.per_prometheus
        ]
        if st.holds is None:
            notes.append("unknown: no Prometheus has answered yet")
        attrs = f'data-stage="{_e(st.kind)}"'
        if st.pool:
            attrs += f' data-pool="{_e(st.pool)}" data-role="{_e(st.role)}"'
        gap = ' class="gap"' if missing else ""
        miss_cell = (
            '<td class="n miss">unknown</td>'
            if missing is None
            else f'<td class="n miss{" lostn" if missing else ""}">{_n(missing)}</td>'
        )
        rows.append(
            f'<tr {attrs}{gap}><th scope="row">{_stage_label(st)}</th>'
            f'<td class="n holds">{"unknown" if st.holds is None else _n(st.holds)}</td>'
            f'{miss_cell}<td class="cov">{_bar(present, v.expected)}</td>'
            f"<td>{'<br>'.join(notes)}</td></tr>"
        )
    return (
        f'<table class="funnel"><caption class="muted">Expected targets of {_e(v.name)}, '
        "and how many each stage holds and misses</caption><thead><tr>"
        '<th scope="col">Stage</th><th scope="col" class="n">Holds</th>'
        '<th scope="col" class="n">Missing</th><th scope="col">Expected targets present</th>'
        '<th scope="col">Notes</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
    )


def _linked(text: str) -> str:
    """Escapes a finding and links the runbooks it names."""
    return _RUNBOOK_REF.sub(
        lambda m: f'<a href="{_e(RUNBOOK_BASE_URL + m.group(1))}">{m.group(0)}</a>', _e(text)
    )


def _runbook(page: str, text: str) -> str:
    return f'<a href="{_e(RUNBOOK_BASE_URL + page)}">{_e(text)}</a>'


def _next_steps(views: Sequence[ServiceView]) -> list[str]:
    steps = []
    stages = [(v, st) for v in views for st in v.stages]
    if any(st.kind == STAGE_ENDPOINTS and st.alarm for _, st in stages):
        steps.append(
            "Endpoints truncated at 1000 addresses: move every scrape job with role "
            "<code>endpoints</code> to role <code>endpointslice</code>: "
            + _runbook("migrate-to-endpointslice.md", "migrate-to-endpointslice")
            + ", "
            + _runbook("ScrapeCoverageEndpointsTruncated.md", "ScrapeCoverageEndpointsTruncated")
        )
    if any(st.kind == STAGE_ENDPOINTSLICES and st.alarm for _, st in stages):
        steps.append(
            "Mirrored EndpointSlices capped at 1000 per subset: have the owner of the "
            "Endpoints write its own slices and label the Endpoints skip-mirror: "
            + _runbook(
                "ScrapeCoverageEndpointSliceMirroringCapped.md",
                "ScrapeCoverageEndpointSliceMirroringCapped",
            )
        )
    if any(st.kind == STAGE_PROMETHEUS and st.missing for _, st in stages):
        steps.append(
            "Scrape pools miss expected targets: find the stage that lost them in the "
            "tables below: "
            + _runbook("ScrapeCoverageTargetsMissing.md", "ScrapeCoverageTargetsMissing")
        )
    return steps


def _missing_table(i: int, v: ServiceView) -> tuple[str, int]:
    """The table of every target this Service misses at some stage, one row
    per target, one column per stage; ("", 0) when none is missing."""
    stages = [st for st in v.stages if st.missing]
    sets = [frozenset(st.missing or ()) for st in stages]
    union: set[MissingTarget] = set().union(*sets)
    if not union:
        return "", 0
    head = [f'<th scope="col">{"Node" if v.node_wide else "Pod, on node"}</th>']
    for st in stages:
        label = _e(st.label) if not st.pool else f"{_e(st.pool)}<br><small>{_e(st.role)}</small>"
        pool = f' data-pool="{_e(st.pool)}"' if st.pool else ""
        head.append(f'<th scope="col" data-kind="{_e(st.kind)}"{pool}>{label}</th>')
    lost, empty = "<td>" + LOST, "<td>"
    patterns: dict[tuple[bool, ...], str] = {}
    rows = []
    # Minimal markup (optional </td> left out): at 100k nodes this is
    # ~300k rows, and every byte counts ~0.3 MB.
    for m in sorted(union):
        flags = tuple(m in s for s in sets)
        cells = patterns.get(flags)
        if cells is None:
            cells = patterns[flags] = "".join(lost if f else empty for f in flags)
        if m.pod:
            name = f'{_e(m.pod)} <span class="muted">on {_e(m.node) or "no node"}</span>'
        else:
            name = _e(m.node)
        # </tr> closes the last cell too: a newline inside it would be text.
        rows.append(f"<tr><td>{name}{cells}</tr>\n")
    thead = f"<thead><tr>{''.join(head)}</tr></thead>"
    caption = (
        f'<caption class="muted">Each target of {_e(v.name)} missing at some stage; '
        "\u201clost\u201d marks the stages that miss it</caption>"
    )
    chunks = []
    for start in range(0, len(rows), CHUNK_ROWS):
        part = rows[start : start + CHUNK_ROWS]
        chunks.append(
            f'<div class="chunk" style="contain-intrinsic-size:auto {len(part) * ROW_PX + 40}px">'
            f'<table class="missing">{caption if not start else ""}{thead}<tbody>\n'
            f"{''.join(part)}</tbody></table></div>"
        )
    where = ", ".join(f"{_e(st.pool or st.label)} {_n(len(st.missing or ()))}" for st in stages)
    table = (
        f'<details class="missing" id="missing-{i}" open><summary>{_e(v.name)}: '
        f'<span class="count">{_n(len(union))} missing</span> '
        f'<small>lost at: {where}</small></summary><div class="scroll">{"".join(chunks)}'
        "</div></details>"
    )
    return table, len(union)


def render_services(report: CoverageReport) -> ServicesPart:
    """The per-report part: summary, findings, funnels, every missing target."""
    views = report_views(report)
    summary: list[str] = []
    sections: list[str] = []
    tables: list[str] = []
    missing_total = 0
    pools: dict[str, None] = {}
    for i, v in enumerate(views):
        table, rows = _missing_table(i, v)
        if table:
            tables.append(table)
        # No Endpoints object: every expected target is missing there, unnamed.
        missing_total += max(rows, _missing_total(v.stages[0], v.expected) or 0)
        for st in v.stages:
            if st.pool and st.missing:
                pools[st.pool] = None
        cells = []
        for st in v.stages:
            miss = _missing_total(st, v.expected)
            value = "unknown" if st.holds is None else _n(st.holds)
            if st.kind == STAGE_PROMETHEUS and st.pool:
                value = f"<code>{_e(st.pool)}</code> {value}"
            tag = f' <span class="tag bad">{_e(st.alarm)}</span>' if st.alarm else ""
            lost = f' <span class="lostn">&minus;{_n(miss)}</span>' if miss else ""
            cells.append((st.kind, f"{value}{tag}{lost}"))
        k8s = [c for kind, c in cells if kind != STAGE_PROMETHEUS]
        prom = "<br>".join(c for kind, c in cells if kind == STAGE_PROMETHEUS) or "none"
        verdict = (
            '<span class="tag bad">GAP</span>' if v.has_gap else '<span class="tag good">OK</span>'
        )
        summary.append(
            f'<tr{" class=gap" if v.has_gap else ""}><th scope="row">'
            f'<a href="#service-{i}">{_e(v.name)}</a></th><td>{_e(v.source)}</td>'
            f'<td class="n">{_n(v.expected)}</td><td class="n">{k8s[0]}</td>'
            f'<td class="n">{k8s[1]}</td><td>{prom}</td>'
            f'<td class="n{" lostn" if rows else ""}">{_n(rows)}</td><td>{verdict}</td></tr>'
        )
        service_findings = [_linked(f) for f in v.findings]
        sections.append(
            f'<section class="service" id="service-{i}" aria-labelledby="service-{i}-h">'
            f'<h3 id="service-{i}-h">{_e(v.name)} {verdict}</h3>'
            + _funnel(v)
            + "".join(f'<p class="finding">{f}</p>' for f in service_findings)
            + (f'<p><a href="#missing-{i}">{_n(rows)} missing targets</a></p>' if rows else "")
            + "</section>"
        )
    findings_html = _findings_html(views, report.unresolved)
    parts = [
        '<h2 id="services">Services</h2>',
        '<table class="services"><thead><tr><th scope="col">Service</th>'
        '<th scope="col">Expected from</th><th scope="col" class="n">Expected</th>'
        '<th scope="col" class="n">Endpoints</th><th scope="col" class="n">EndpointSlices</th>'
        '<th scope="col">Scrape pools: discovered</th><th scope="col" class="n">Missing</th>'
        '<th scope="col">Verdict</th></tr></thead><tbody>'
        + ("".join(summary) or '<tr><td colspan="8">no Service in scope</td></tr>')
        + "</tbody></table>",
        findings_html,
        '<h2 id="funnels">Where targets are lost, per Service</h2>',
        *sections,
        '<h2 id="missing">Missing targets</h2>',
        _filter_form(list(pools)) if tables else "<p>No expected target is missing.</p>",
        *tables,
    ]
    return ServicesPart(
        html="\n".join(parts),
        services=len(views),
        with_gaps=sum(v.has_gap for v in views),
        missing=missing_total,
        has_gaps=report.has_gaps,
        prometheus_known=report.prometheus_known,
        unresolved=len(report.unresolved),
    )


def _findings_html(views: Sequence[ServiceView], unresolved: Iterable[str]) -> str:
    items = [
        f'<li><a href="#service-{i}">{_e(v.name)}</a>: {_linked(f.split(": ", 1)[-1])}'
        for i, v in enumerate(views)
        for f in v.findings
    ]
    items += [f"<li>{_e(u)}: cannot tell which targets it should hold" for u in unresolved]
    steps = _next_steps(views)
    return (
        '<h2 id="findings">Findings and next steps</h2>'
        + ('<ol class="findings">' + "".join(items) + "</ol>" if items else "<p>No finding.</p>")
        + (
            '<h3>Next steps</h3><ul class="steps">' + "".join(f"<li>{s}" for s in steps) + "</ul>"
            if steps
            else ""
        )
    )


def _filter_form(pools: Sequence[str]) -> str:
    options = "".join(f'<option value="{_e(p)}">{_e(p)}</option>' for p in sorted(pools))
    return (
        '<form class="filter" id="filter" hidden role="search" aria-label="Filter missing targets">'
        '<label>Name contains <input type="search" name="q" autocomplete="off" '
        'spellcheck="false" placeholder="node or pod name"></label>'
        '<label>Lost at stage <select name="stage"><option value="">any stage</option>'
        f'<option value="{STAGE_ENDPOINTS}">Endpoints</option>'
        f'<option value="{STAGE_ENDPOINTSLICES}">EndpointSlices</option>'
        f'<option value="{STAGE_PROMETHEUS}">a scrape pool</option></select></label>'
        '<label>Lost by scrape pool <select name="pool"><option value="">any pool</option>'
        f"{options}</select></label>"
        '<output id="shown" aria-live="polite"></output></form>'
        '<p class="nojs muted" id="nojs">Filtering needs JavaScript; every missing target '
        "is listed below all the same.</p>"
    )


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _ago(ts: float, now: float) -> str:
    seconds = max(0, int(now - ts))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _display_url(url: str) -> str:
    """The URL without credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _source_name(h: SourceHealth) -> str:
    return "Kubernetes" if h.source == SOURCE_KUBERNETES else f"Prometheus {h.prometheus}"


def _sources_table(info: PageInfo) -> str:
    rows = []
    for h in info.sources:
        url = info.prometheus_urls.get(h.prometheus) if h.prometheus else None
        name = f"<b>{_e(_source_name(h))}</b>"
        if url:
            name += f"<br><small>{_e(_display_url(url))}</small>"
        status = '<span class="up">up</span>' if h.up else '<span class="down">DOWN</span>'
        success = (
            f'<time datetime="{_iso(h.last_success_timestamp)}">'
            f"{_when(h.last_success_timestamp)}</time>"
            f"<br><small>{_ago(h.last_success_timestamp, info.collected_at)} before this report"
            "</small>"
            if h.last_success_timestamp
            else '<span class="down">never</span>'
        )
        rows.append(
            f'<tr data-source="{_e(h.source)}" data-prometheus="{_e(h.prometheus)}">'
            f'<th scope="row">{name}</th><td>{status}</td><td>{success}</td>'
            f"<td>{_e(h.last_error) or '-'}</td>"
            f'<td class="n">{h.duration_seconds:.2f} s</td>'
            f'<td class="n">{_n(h.errors_total)}</td></tr>'
        )
    return (
        '<h2 id="sources">Sources</h2><table class="sources"><thead><tr>'
        '<th scope="col">Source</th><th scope="col">Status</th>'
        '<th scope="col">Last success</th><th scope="col">Last error</th>'
        '<th scope="col" class="n">Last read took</th><th scope="col" class="n">Errors</th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _source_warnings(info: PageInfo) -> list[str]:
    out = []
    for h in info.sources:
        if h.up:
            continue
        name = _e(_source_name(h))
        error = f" ({_e(h.last_error)})" if h.last_error else ""
        if h.last_success_timestamp:
            what = "cluster" if h.source == SOURCE_KUBERNETES else "targets"
            out.append(
                f"<b>{name} is DOWN</b>{error}: its {what} below are its last good read, "
                f"from {_when(h.last_success_timestamp)} "
                f"({_ago(h.last_success_timestamp, info.collected_at)} before this report)."
            )
        else:
            out.append(f"<b>{name} has never answered</b>{error}: nothing from it is compared.")
    return out


def _verdict(part: ServicesPart | None, info: PageInfo) -> tuple[str, str]:
    """(css class, headline)."""
    if part is None:
        return "unknown", "No coverage: Kubernetes could not be read yet."
    if part.has_gaps:
        return (
            "gaps",
            f"Gaps found: {_n(part.missing)} expected targets missing, "
            f"in {part.with_gaps} of {part.services} Services.",
        )
    if not part.prometheus_known:
        return (
            "unknown",
            f"No gap in Kubernetes for {part.services} Services; scrape pools unknown: "
            "no Prometheus has answered.",
        )
    return "ok", f"Full coverage: every expected target of {part.services} Services is found."


def render_page(
    report: CoverageReport | None, info: PageInfo, part: ServicesPart | None = None
) -> bytes:
    """The whole page. `part` is render_services(report), for a caller that
    keeps it across cycles."""
    if report is not None and part is None:
        part = render_services(report)
    css, headline = _verdict(part, info)
    warnings = _source_warnings(info)
    if part is not None and not part.prometheus_known and part.has_gaps:
        warnings.append("<b>Scrape pools unknown</b>: no Prometheus has answered yet.")
    compared = [h.prometheus for h in info.sources if h.prometheus]
    nodes = (
        f" · {_n(report.nodes_ready + report.nodes_not_ready)} nodes "
        f"({_n(report.nodes_ready)} ready, {_n(report.nodes_not_ready)} not ready)"
        if report is not None
        else ""
    )
    title = f"Scrape coverage of {info.cluster}: {headline.split(':')[0].lower()}"
    head = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty icon: otherwise a browser asks the server for /favicon.ico.
        '<link rel="icon" href="data:,">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        f'<meta name="generator" content="coverage-exporter {_e(__version__)}">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Scrape coverage of {_e(info.cluster)}</h1>"
        f'<p class="meta">Collected <b><time datetime="{_iso(info.collected_at)}">'
        f"{_when(info.collected_at)}</time></b>{nodes} · compared with "
        + (", ".join(f"<b>{_e(p)}</b>" for p in compared) or "no Prometheus")
        + f'</p><div class="verdict {css}" role="status"><p><strong>{_e(headline)}</strong></p>'
        + "".join(f"<p>{w}</p>" for w in warnings)
        + "</div>"
        '<nav class="toc" aria-label="Sections"><a href="#sources">Sources</a>'
        '<a href="#services">Services</a><a href="#findings">Findings</a>'
        '<a href="#funnels">Per Service</a><a href="#missing">Missing targets</a></nav>'
        "</header><main>"
    )
    body = part.html if part is not None else "<p>Nothing was compared.</p>"
    tail = (
        f"</main><footer>coverage-exporter {_e(__version__)} · "
        f"{_runbook('README.md', 'runbooks')}</footer>"
        f"<script>{JS}</script></body></html>\n"
    )
    return (head + _sources_table(info) + "\n" + body + tail).encode()
