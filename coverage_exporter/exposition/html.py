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
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

from coverage_exporter import __version__, runbooks
from coverage_exporter.exposition.audit import (
    CAUSE_WORDS,
    VERDICT_WORDS,
    evidence_words,
    finding_words,
    replica_name,
    unreached_lines,
)
from coverage_exporter.health import SOURCE_KUBERNETES, SourceHealth
from coverage_exporter.model.causes import Cause
from coverage_exporter.model.coverage import MissingTarget, ServiceCoverage
from coverage_exporter.model.evidence import NO_EVIDENCE, Evidence
from coverage_exporter.model.findings import (
    EXTRA_TARGETS,
    RUNBOOK_CAUSES,
    RUNBOOK_ENDPOINTS_TRUNCATED,
    RUNBOOK_INDEX,
    RUNBOOK_MIGRATION,
    RUNBOOK_MIRRORING_CAPPED,
    RUNBOOK_TARGETS_EXTRA,
    RUNBOOK_TARGETS_MISSING,
    RUNBOOK_UNKNOWN,
    RUNBOOK_UNMAINTAINED,
    Finding,
    FindingKind,
    service_findings,
)
from coverage_exporter.model.fleet import Fleet
from coverage_exporter.model.gaps import STAGE_ENDPOINTS, STAGE_ENDPOINTSLICES, STAGE_PROMETHEUS
from coverage_exporter.model.objects import SOURCE_DAEMONSET, SOURCE_NODES, SOURCE_PODS
from coverage_exporter.model.readiness import Readiness
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.model.stages import Stage, service_stages
from coverage_exporter.model.verdict import Verdict, decide, service_verdict

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
# Everything below this section renders the views only. The stages, their
# gaps, the findings and the verdicts are the model's (model.stages,
# model.findings, model.verdict); a view adds only how they are shown.


@dataclass(frozen=True, slots=True)
class StageView:
    """One stage of a Service's funnel (the model's Stage) as shown."""

    stage: Stage
    label: str
    alarm: str = ""
    notes: tuple[str, ...] = ()
    per_server: tuple[tuple[str, int, int], ...] = ()
    """(server, active targets, of which health down) of the replica."""

    @property
    def replica(self) -> str:
        return replica_name(self.stage)


@dataclass(frozen=True, slots=True)
class ServiceView:
    name: str
    source: str
    expected: int
    unnamed: int
    """Expected targets known by count only: missing everywhere, unlisted."""
    stages: tuple[StageView, ...]
    findings: tuple[Finding, ...]
    findings_html: tuple[str, ...]
    """Each finding in words, its runbook linked (without the Service's name)."""
    verdict: Verdict
    node_wide: bool

    @property
    def has_gap(self) -> bool:
        return self.verdict is Verdict.GAPS


@dataclass(frozen=True, slots=True)
class ServerView:
    """Where one Prometheus server stands in its fleet."""

    replica: str
    shard: str
    topology: str
    known: bool
    """Answered recently enough to count (--prometheus-stale-after)."""


def _replica_name(scraper: str, replica: str) -> str:
    return replica if replica == scraper else f"{scraper}/{replica}"


def _unread(st: Stage) -> tuple[str, ...]:
    if st.count and not st.read:
        return (f"no scrape pool reads it with role {st.role}: a finding, nothing lost today",)
    return ()


def _endpoints_view(s: ServiceCoverage, st: Stage) -> StageView:
    ep = s.endpoints
    if ep is None:
        return StageView(st, "Endpoints", alarm="NO ENDPOINTS OBJECT")
    notes = [f"{_n(ep.not_ready)} not ready"] if ep.not_ready else []
    if ep.skip_mirror:
        notes.append("labelled skip-mirror: the owner writes its own slices")
    notes += _unread(st)
    return StageView(st, "Endpoints", alarm="TRUNCATED" if ep.truncated else "", notes=tuple(notes))


def _slices_view(s: ServiceCoverage, st: Stage) -> StageView:
    sl = s.slices
    notes = [
        f"{_n(c)} {'ready' if ready else 'not ready'} by {managed_by}"
        for (managed_by, ready), c in sorted(sl.endpoints.items())
    ]
    notes += [f"{_n(c)} terminating by {m}" for m, c in sorted(sl.terminating.items()) if c]
    if sl.mirroring_skipped:
        notes.append(f"mirroring left {_n(sl.mirroring_skipped)} addresses out")
    notes += _unread(st)
    return StageView(
        st,
        "EndpointSlices",
        alarm="MIRRORING CAPPED" if sl.mirroring_skipped else "",
        notes=tuple(notes),
    )


def _pool_views(s: ServiceCoverage, stages: Sequence[Stage], fleet: Fleet) -> list[StageView]:
    counts: dict[tuple[str, str, str], tuple[int, int]] = {}
    for (server, pool, role, health), count in s.target_counts.items():
        active, down = counts.get((server, pool, role), (0, 0))
        counts[(server, pool, role)] = (active + count, down + (count if health == "down" else 0))
    out = []
    for st in stages:
        replica = fleet.replicas.get((st.scraper, st.replica))
        servers = sorted(sv.name for sv in replica.servers) if replica else []
        notes = [] if st.meant or st.holds else ["not meant by the configuration"]
        if not st.known:
            why = st.why_unknown or "a shard of the replica has not answered recently"
            notes.append(f"coverage unknown for {_n(st.unknown)}: {why}")
        out.append(
            StageView(
                st,
                f"scrape pool {st.pool}",
                notes=tuple(notes),
                per_server=tuple(
                    (name, *counts.get((name, st.pool, st.role), (0, 0))) for name in servers
                ),
            )
        )
    return out


def _finding_html(s: ServiceCoverage, f: Finding, evidence: Evidence = NO_EVIDENCE) -> str:
    """A finding in words, escaped, with a link to its runbook, then what
    Kubernetes' own events say of it (model.evidence)."""
    link = f" ({_runbook_link(f.runbook, f.runbook)})" if f.runbook else ""
    said = evidence_words(f, evidence)
    said_html = f' <span class="evidence">{_e(said.strip())}</span>' if said else ""
    return f"{_e(finding_words(s, f))}{link}.{said_html}"


def service_view(s: ServiceCoverage, fleet: Fleet, evidence: Evidence = NO_EVIDENCE) -> ServiceView:
    endpoints, slices, *pools = service_stages(s)
    found = tuple(service_findings(s))
    return ServiceView(
        name=f"{s.namespace}/{s.service}",
        source=s.source,
        expected=s.expected,
        unnamed=s.unnamed,
        stages=(
            _endpoints_view(s, endpoints),
            _slices_view(s, slices),
            *_pool_views(s, pools, fleet),
        ),
        findings=found,
        findings_html=tuple(_finding_html(s, f, evidence) for f in found),
        verdict=service_verdict(s),
        node_wide=s.source != SOURCE_PODS,
    )


def report_views(report: CoverageReport, evidence: Evidence = NO_EVIDENCE) -> list[ServiceView]:
    return [service_view(s, report.fleet, evidence) for s in report.services]


def server_views(report: CoverageReport | None) -> dict[str, ServerView]:
    if report is None:
        return {}
    return {
        sv.name: ServerView(
            replica=_replica_name(r.scraper, r.replica),
            shard=f"{sv.identity.shard + 1} of {r.shards}" if r.shards > 1 else "",
            topology=f"{sv.identity.kind}, {sv.identity.how}",
            known=sv.known,
        )
        for r in report.fleet.replicas.values()
        for sv in r.servers
    }


def unresolved_lines(report: CoverageReport) -> list[str]:
    return [
        f"{u.namespace}/{u.service}: cannot tell which targets it should hold ({u.reason})"
        for u in report.unresolved
    ]


VERDICT_CSS = {
    Verdict.GAPS: "gaps",
    Verdict.FULL_COVERAGE: "ok",
    Verdict.NOT_COLLECTED: "unknown",
    Verdict.NOTHING_COMPARED: "unknown",
    Verdict.NO_SERVER: "unknown",
    Verdict.UNKNOWN: "unknown",
}
"""The page's colour for each verdict: nothing or not everything judged is
shown as unknown."""


def report_verdict(report: CoverageReport | None, complete: bool) -> tuple[str, str]:
    """(colour, words) of the model's verdict (model.verdict)."""
    decided = decide(report, complete)
    return VERDICT_CSS[decided], VERDICT_WORDS[decided]


@dataclass(frozen=True, slots=True)
class ReadinessView:
    """Where one Prometheus Operator CR stands on the migration path."""

    name: str
    role: str
    kubelet: str
    rbac: str
    over_capacity: str
    next_step: str
    safe_now: bool
    advice: str
    action: str


def readiness_views(readiness: Sequence[Readiness]) -> list[ReadinessView]:
    rbac = {True: "may list EndpointSlices", False: "may NOT list EndpointSlices", None: "unknown"}
    return [
        ReadinessView(
            name=f"{r.cr.kind} {r.cr.namespace}/{r.cr.name}",
            role=r.role,
            kubelet=r.kubelet_state,
            rbac=f"{r.cr.service_account}: {rbac[r.endpointslice_rbac]}",
            over_capacity=", ".join(f"{ns}/{n}" for ns, n in r.over_capacity)
            + (
                (" (soon: " + ", ".join(f"{ns}/{n}" for ns, n in r.soon_over_capacity) + ")")
                if r.soon_over_capacity
                else ""
            ),
            next_step=r.next_step,
            safe_now=r.safe_now,
            advice=r.advice,
            action=r.action,
        )
        for r in readiness
    ]


def node_counts(report: CoverageReport) -> tuple[int, int]:
    return report.nodes_ready, report.nodes_not_ready


# --- rendering -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageInfo:
    """What the page says around the report: where, when, from which sources."""

    cluster: str
    collected_at: float
    sources: Sequence[SourceHealth] = ()
    prometheus_urls: Mapping[str, str] = field(default_factory=dict)
    complete: bool = True
    """Every source answered in this cycle."""
    readiness: Sequence[Readiness] = ()
    """Migration readiness of each Prometheus Operator CR; empty without the Operator."""
    evidence: Evidence = NO_EVIDENCE
    """Kubernetes' events read as evidence for the findings (model.evidence)."""


@dataclass(frozen=True, slots=True)
class ServicesPart:
    """The per-report part of the page, rendered once per report."""

    html: str
    """What is wrong and what to do: the Services table, findings, next steps."""
    details: str
    """Where: the funnel of each Service and every missing target."""
    services: int
    with_gaps: int
    gap_targets: int
    """Distinct (Service, target) pairs lost at a stage that is a gap."""


def _bar(st: StageView | None, expected: int) -> str:
    """Present (green), unknown (hatched) and lost (red) shares."""
    if st is None or st.stage.count is None:
        present = st.stage.holds if st is not None else expected
        unknown = st.stage.unknown if st is not None else 0
    else:
        present, unknown = expected - st.stage.count, 0
    if not expected:
        return '<span class="bar"><span style="width:100%"></span></span>'
    ok = max(0.0, min(100.0, 100.0 * present / expected))
    unk = max(0.0, min(100.0 - ok, 100.0 * unknown / expected))
    title = f"{ok:.1f}% present" + (f", {unk:.1f}% unknown" if unk else "")
    return (
        f'<span class="bar" title="{title}"><span style="width:{ok:.2f}%"></span>'
        + (f'<span class="unk" style="width:{unk:.2f}%"></span>' if unk else "")
        + "</span>"
    )


def _stage_label(st: StageView) -> str:
    if st.stage.kind != STAGE_PROMETHEUS:
        return _e(st.label)
    return (
        f"scrape pool <code>{_e(st.stage.pool)}</code> <small>role {_e(st.stage.role)} · replica "
        f"{_e(st.replica)}</small>"
    )


def _funnel(v: ServiceView) -> str:
    source = {
        SOURCE_DAEMONSET: "the DaemonSet's nodes",
        SOURCE_NODES: "every Node",
        SOURCE_PODS: "the selected pods",
    }.get(v.source, v.source)
    if v.unnamed:
        source += f"; {_n(v.unnamed)} known by count only (no pod yet)"
    rows = [
        '<tr data-stage="expected"><th scope="row">Expected</th>'
        f'<td class="n holds">{_n(v.expected)}</td><td class="n miss"></td>'
        f'<td class="cov">{_bar(None, v.expected)}</td><td>{_e(source)}</td></tr>'
    ]
    for st in v.stages:
        notes = [f'<span class="tag bad">{_e(st.alarm)}</span>'] if st.alarm else []
        notes += [_e(n) for n in st.notes]
        notes += [
            f'<span data-server="{_e(name)}">{_e(name)}: {_n(active)} targets'
            + (f" ({_n(down)} down)" if down else "")
            + "</span>"
            for name, active, down in st.per_server
        ]
        attrs = f'data-stage="{_e(st.stage.kind)}"'
        stage = st.stage
        if stage.pool:
            attrs += (
                f' data-pool="{_e(stage.pool)}" data-role="{_e(stage.role)}"'
                f' data-scraper="{_e(stage.scraper)}" data-scraper-replica="{_e(stage.replica)}"'
                f' data-replica="{_e(st.replica)}"'
            )
        css = "gap" if st.stage.gap else ("finding" if st.stage.count else "")
        if st.stage.count is None:
            miss = '<td class="n miss">unknown</td>'
        else:
            lost = " lostn" if st.stage.gap else ""
            miss = f'<td class="n miss{lost}">{_n(st.stage.count)}</td>'
        rows.append(
            f'<tr {attrs}{f" class={css}" if css else ""}><th scope="row">{_stage_label(st)}</th>'
            f'<td class="n holds">{_n(st.stage.holds)}</td>{miss}'
            f'<td class="cov">{_bar(st, v.expected)}</td>'
            f"<td>{'<br>'.join(notes)}</td></tr>"
        )
    return (
        f'<table class="funnel"><caption>Expected targets of {_e(v.name)}, '
        "and how many each stage holds and misses</caption><thead><tr>"
        '<th scope="col">Stage</th><th scope="col" class="n">Holds</th>'
        '<th scope="col" class="n">Missing</th><th scope="col">Expected targets present</th>'
        '<th scope="col">Notes</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
    )


def _runbook_link(page: str, text: str) -> str:
    """A link to a runbook page, where --runbook-base-url says they are."""
    return f'<a href="{_e(runbooks.runbook_url(page))}">{_e(text)}</a>'


def _next_steps(views: Sequence[ServiceView]) -> list[str]:
    """What to do first, from the findings' kinds."""
    found = [f for v in views for f in v.findings]
    kinds = {f.kind for f in found}
    steps = []
    # A Service without an Endpoints object that a pool of role endpoints
    # reads is helped by the same move as a truncated one.
    if any(
        f.gap and f.kind in (FindingKind.ENDPOINTS_TRUNCATED, FindingKind.ENDPOINTS_ABSENT)
        for f in found
    ):
        steps.append(
            "Endpoints truncated at 1000 addresses and read with role <code>endpoints</code>: "
            "move those scrape jobs to role <code>endpointslice</code>: "
            + _runbook_link(RUNBOOK_MIGRATION, RUNBOOK_MIGRATION)
            + ", "
            + _runbook_link(RUNBOOK_ENDPOINTS_TRUNCATED, RUNBOOK_ENDPOINTS_TRUNCATED)
        )
    if FindingKind.MIRRORING_CAPPED in kinds:
        steps.append(
            "Mirrored EndpointSlices capped at 1000 per subset: have the owner of the "
            "Endpoints write its own slices (Prometheus Operator: "
            "<code>--kubelet-endpointslice=true</code>) before any job reads them: "
            + _runbook_link(RUNBOOK_MIRRORING_CAPPED, RUNBOOK_MIRRORING_CAPPED)
        )
    if kinds & {FindingKind.ENDPOINTS_UNMAINTAINED, FindingKind.SLICES_UNMIRRORED}:
        steps.append(
            "The Endpoints or the EndpointSlice mirroring controller does not run "
            "(KEP-4974): Endpoints objects and mirrored slices are absent or frozen, "
            "so no truncation or cap is claimed from them; scrape with role "
            "<code>endpointslice</code> from slices a controller writes: "
            + _runbook_link(RUNBOOK_UNMAINTAINED, "causes: unmaintained")
        )
    if kinds & {
        FindingKind.POOL_MISSES,
        FindingKind.POOL_READS_UNMAINTAINED,
        FindingKind.POOL_READS_TRUNCATED,
        FindingKind.POOL_DISCOVERS_NOTHING,
    }:
        steps.append(
            "Scrape pools miss expected targets: the tables below show at which stage each "
            "was lost: " + _runbook_link(RUNBOOK_TARGETS_MISSING, RUNBOOK_TARGETS_MISSING)
        )
    if kinds & EXTRA_TARGETS:
        steps.append(
            "Scrape pools discover some targets twice, or targets of nodes and pods that are "
            "gone: " + _runbook_link(RUNBOOK_TARGETS_EXTRA, RUNBOOK_TARGETS_EXTRA)
        )
    if FindingKind.COVERAGE_UNKNOWN in kinds:
        steps.append(
            "Some coverage is unknown: a Prometheus shard has not answered, or its answer "
            "cannot say what it scrapes: " + _runbook_link(RUNBOOK_UNKNOWN, RUNBOOK_UNKNOWN)
        )
    return steps


def _missing_table(i: int, v: ServiceView) -> tuple[str, int, int]:
    """Every target this Service misses at some stage, one row per target,
    one column per stage that names what it misses. Returns (html, rows,
    targets lost at a stage that is a gap); ("", 0, 0) when none is named."""
    stages = [st for st in v.stages if st.stage.missing]
    sets = [frozenset(st.stage.missing or ()) for st in stages]
    union: set[MissingTarget] = set().union(*sets)
    gap_union: set[MissingTarget] = set().union(
        *(s for s, st in zip(sets, stages, strict=True) if st.stage.gap)
    )
    gap_targets = len(gap_union) + (v.unnamed if v.has_gap else 0)
    if not union:
        return "", 0, gap_targets
    head = [f'<th scope="col">{"Node" if v.node_wide else "Pod, on node"}</th>']
    splits = [st.stage.causes.split() for st in stages]
    for st in stages:
        read = "" if st.stage.gap else "<br><small>a finding: not read</small>"
        if st.stage.pool:
            label = f"{_e(st.stage.pool)}<br><small>{_e(st.stage.role)} · {_e(st.replica)}</small>"
            data = f' data-pool="{_e(st.stage.pool)}" data-replica="{_e(st.replica)}"'
        else:
            label, data = _e(st.label) + read, ""
        head.append(f'<th scope="col" data-kind="{_e(st.stage.kind)}"{data}>{label}</th>')
    # Last, so that the stage columns keep their places (report.js).
    head.append('<th scope="col" data-kind="cause">Why (cause)</th>')
    lost, empty = "<td>" + LOST, "<td>"
    patterns: dict[tuple[bool, ...], str] = {}
    why_cells: dict[tuple[Cause, ...], str] = {}
    rows = []
    # Minimal markup (optional </td> left out): at 100k nodes this is
    # ~300k rows, and every byte counts ~0.3 MB.
    for m in sorted(union):
        flags = tuple(m in s for s in sets)
        cells = patterns.get(flags)
        if cells is None:
            cells = patterns[flags] = "".join(lost if f else empty for f in flags)
        # Its cause at each stage that misses it, each said once, in the
        # funnel's order (model.causes).
        key = id(m)
        why = tuple(
            dict.fromkeys(
                others.get(key, dominant)
                for f, (dominant, others) in zip(flags, splits, strict=True)
                if f
            )
        )
        why_cell = why_cells.get(why)
        if why_cell is None:
            why_cell = why_cells[why] = "<td>" + "; ".join(c.value for c in why)
        if m.pod:
            name = f'{_e(m.pod)} <span class="muted">on {_e(m.node) or "no node"}</span>'
        else:
            name = _e(m.node)
        # </tr> closes the last cell too: a newline inside it would be text.
        rows.append(f"<tr><td>{name}{cells}{why_cell}</tr>\n")
    thead = f"<thead><tr>{''.join(head)}</tr></thead>"
    caption = (
        f"<caption>Each target of {_e(v.name)} missing at some stage; "
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
    where = ", ".join(f"{_e(st.stage.pool or st.label)} {_n(st.stage.count or 0)}" for st in stages)
    unnamed = (
        f"; and {_n(v.unnamed)} known by count only, not listed (no pod yet)" if v.unnamed else ""
    )
    legend = _causes_legend({c for why in why_cells for c in why})
    table = (
        f'<details class="missing" id="missing-{i}" open><summary>{_e(v.name)}: '
        f'<span class="count">{_n(len(union))} missing</span> '
        f'<small>lost at: {where}{unnamed}</small></summary>{legend}<div class="scroll">'
        f"{''.join(chunks)}</div></details>"
    )
    return table, len(union), gap_targets


def _causes_legend(causes: Iterable[Cause]) -> str:
    """The causes a table names, in words, each linked to its runbook
    section: the rows carry the bare value (300k rows at 100k nodes)."""
    items = [
        f'<li><code>{c.value}</code>: <a href="{_e(runbooks.runbook_url(RUNBOOK_CAUSES))}'
        f'#{c.value}">{_e(CAUSE_WORDS[c])}</a></li>'
        for c in Cause
        if c in causes
    ]
    return f'<ul class="causes">{"".join(items)}</ul>' if items else ""


def _count_cell(st: StageView) -> str:
    """What a stage holds, what it is told, and what it loses."""
    tag = f' <span class="tag bad">{_e(st.alarm)}</span>' if st.alarm else ""
    if st.stage.count is None:
        lost = ' <span class="tag warn">UNKNOWN</span>'
    elif st.stage.count:
        css = "lostn" if st.stage.gap else "muted"
        lost = f' <span class="{css}">&minus;{_n(st.stage.count)}</span>'
    else:
        lost = ""
    return f"{_n(st.stage.holds)}{tag}{lost}"


def _pools_cell(stages: Sequence[StageView]) -> str:
    """One line per pool, its replicas side by side."""
    by_pool: dict[tuple[str, str], list[StageView]] = {}
    for st in stages:
        if st.stage.kind == STAGE_PROMETHEUS:
            by_pool.setdefault((st.stage.pool, st.stage.role), []).append(st)
    lines = [
        f'<div class="pool"><code>{_e(pool)}</code> '
        + " ".join(
            f'<span class="rep"><small>{_e(st.replica)}</small> {_count_cell(st)}</span>'
            for st in replicas
        )
        + "</div>"
        for (pool, _), replicas in by_pool.items()
    ]
    return "".join(lines) or "none"


def _summary_row(i: int, v: ServiceView, rows: int) -> str:
    k8s = [_count_cell(st) for st in v.stages if st.stage.kind != STAGE_PROMETHEUS]
    return (
        f'<tr{" class=gap" if v.has_gap else ""}><th scope="row">'
        f'<a href="#service-{i}">{_e(v.name)}</a></th><td>{_e(v.source)}</td>'
        f'<td class="n">{_n(v.expected)}</td><td class="k">{k8s[0]}</td>'
        f'<td class="k">{k8s[1]}</td><td>{_pools_cell(v.stages)}</td>'
        f'<td class="n{" lostn" if rows else ""}">{_n(rows)}</td><td>{_verdict_tag(v)}</td></tr>'
    )


_VERDICT_TAGS = {
    Verdict.GAPS: '<span class="tag bad">GAP</span>',
    Verdict.UNKNOWN: '<span class="tag warn">UNKNOWN</span>',
    Verdict.FULL_COVERAGE: '<span class="tag good">OK</span>',
}


def _verdict_tag(v: ServiceView) -> str:
    return _VERDICT_TAGS[v.verdict]


def render_services(report: CoverageReport, evidence: Evidence = NO_EVIDENCE) -> ServicesPart:
    """The per-report part: summary, findings, funnels, every missing target."""
    views = report_views(report, evidence)
    summary: list[str] = []
    sections: list[str] = []
    tables: list[str] = []
    gap_targets = 0
    pools: dict[str, None] = {}
    replicas: dict[str, None] = {}
    for i, v in enumerate(views):
        table, rows, gaps = _missing_table(i, v)
        if table:
            tables.append(table)
        gap_targets += gaps
        for st in v.stages:
            if st.stage.pool and st.stage.missing:
                pools[st.stage.pool] = None
                replicas[st.replica] = None
        summary.append(_summary_row(i, v, rows))
        tag = _verdict_tag(v)
        sections.append(
            f'<section class="service" id="service-{i}" aria-labelledby="service-{i}-h">'
            f'<h3 id="service-{i}-h">{_e(v.name)} {tag}</h3>'
            + _funnel(v)
            + "".join(f'<p class="finding">{_e(v.name)}: {f}</p>' for f in v.findings_html)
            + (f'<p><a href="#missing-{i}">{_n(rows)} missing targets</a></p>' if rows else "")
            + "</section>"
        )
    parts = [
        '<h2 id="services">Services</h2>',
        '<table class="services"><thead><tr><th scope="col">Service</th>'
        '<th scope="col">Expected from</th><th scope="col" class="n">Expected</th>'
        '<th scope="col">Endpoints</th><th scope="col">EndpointSlices</th>'
        '<th scope="col">Scrape pools: discovered, per replica</th>'
        '<th scope="col" class="n">Missing</th><th scope="col">Verdict</th></tr></thead><tbody>'
        + ("".join(summary) or '<tr><td colspan="8">no Service in scope</td></tr>')
        + "</tbody></table>",
        _findings_html(views, [*unresolved_lines(report), *unreached_lines(report)]),
    ]
    details = [
        '<h2 id="funnels">Where targets are lost, per Service</h2>',
        *sections,
        '<h2 id="missing">Missing targets</h2>',
        _filter_form(list(pools), list(replicas))
        if tables
        else "<p>No expected target is missing.</p>",
        *tables,
    ]
    return ServicesPart(
        html="\n".join(parts),
        details="\n".join(details),
        services=len(views),
        with_gaps=sum(v.has_gap for v in views),
        gap_targets=gap_targets,
    )


def _findings_html(views: Sequence[ServiceView], unresolved: Iterable[str]) -> str:
    items = [
        f'<li><a href="#service-{i}">{_e(v.name)}</a>: {f}'
        for i, v in enumerate(views)
        for f in v.findings_html
    ]
    items += [f"<li>{_e(u)}" for u in unresolved]
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


def _options(values: Sequence[str]) -> str:
    return "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in sorted(values))


def _filter_form(pools: Sequence[str], replicas: Sequence[str]) -> str:
    replica_select = (
        '<label>Lost by replica <select name="replica"><option value="">any replica</option>'
        f"{_options(replicas)}</select></label>"
        if len(replicas) > 1
        else ""
    )
    return (
        '<form class="filter" id="filter" hidden role="search" aria-label="Filter missing targets">'
        '<label>Name contains <input type="search" name="q" autocomplete="off" '
        'spellcheck="false" placeholder="node or pod name"></label>'
        '<label>Lost at stage <select name="stage"><option value="">any stage</option>'
        f'<option value="{STAGE_ENDPOINTS}">Endpoints</option>'
        f'<option value="{STAGE_ENDPOINTSLICES}">EndpointSlices</option>'
        f'<option value="{STAGE_PROMETHEUS}">a scrape pool</option></select></label>'
        '<label>Lost by scrape pool <select name="pool"><option value="">any pool</option>'
        f"{_options(pools)}</select></label>{replica_select}"
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
    if h.source == SOURCE_KUBERNETES:
        return "Kubernetes"
    return f"Prometheus {h.prometheus}" if h.prometheus else h.source.capitalize()


def _sources_table(info: PageInfo, servers: Mapping[str, ServerView]) -> str:
    rows = []
    for h in info.sources:
        url = info.prometheus_urls.get(h.prometheus) if h.prometheus else None
        name = f"<b>{_e(_source_name(h))}</b>"
        if url:
            name += f"<br><small>{_e(_display_url(url))}</small>"
        status = '<span class="up">up</span>' if h.up else '<span class="down">DOWN</span>'
        server = servers.get(h.prometheus) if h.prometheus else None
        if server is not None and not server.known:
            status += '<br><small class="down">too old to count</small>'
        place = ""
        if server is not None:
            place = _e(server.replica) + (
                f"<br><small>shard {server.shard}</small>" if server.shard else ""
            )
            place += f"<br><small>{_e(server.topology)}</small>"
        success = (
            f'<time datetime="{_iso(h.last_success_timestamp)}">'
            f"{_when(h.last_success_timestamp)}</time>"
            f"<br><small>{_ago(h.last_success_timestamp, info.collected_at)} before this report"
            "</small>"
            if h.last_success_timestamp
            else '<span class="down">never</span>'
        )
        rows.append(
            f'<tr data-source="{_e(h.source)}" data-server="{_e(h.prometheus)}">'
            f'<th scope="row">{name}</th><td>{status}</td><td>{place or "-"}</td>'
            f"<td>{success}</td><td>{_e(h.last_error) or '-'}</td>"
            f'<td class="n">{h.duration_seconds:.2f} s</td>'
            f'<td class="n">{_n(h.errors_total)}</td></tr>'
        )
    return (
        '<h2 id="sources">Sources</h2><table class="sources"><thead><tr>'
        '<th scope="col">Source</th><th scope="col">Status</th>'
        '<th scope="col">Replica, shard</th>'
        '<th scope="col">Last success</th><th scope="col">Last error</th>'
        '<th scope="col" class="n">Last read took</th><th scope="col" class="n">Errors</th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _readiness_table(info: PageInfo) -> str:
    views = readiness_views(info.readiness)
    if not views:
        return ""
    rows = [
        f'<tr><th scope="row">{_e(r.name)}</th><td>{_e(r.role)}</td><td>{_e(r.kubelet)}</td>'
        f"<td>{_e(r.rbac)}</td><td>{_e(r.over_capacity) or '-'}</td>"
        f"<td><b>{_e(r.next_step)}</b>"
        + ("" if r.safe_now else ' <span class="tag bad">UNSAFE NOW</span>')
        + f"<br>{_e(r.advice)}"
        + (f"<br><code>{_e(r.action)}</code>" if r.action else "")
        + "</td></tr>"
        for r in views
    ]
    return (
        '<h2 id="migration">Migration readiness</h2><table class="migration"><caption>Each '
        "Prometheus Operator CR on the way from role Endpoints to role EndpointSlice: "
        + _runbook_link(RUNBOOK_MIGRATION, RUNBOOK_MIGRATION)
        + '</caption><thead><tr><th scope="col">Prometheus CR</th><th scope="col">Role</th>'
        '<th scope="col">Kubelet slices</th><th scope="col">ServiceAccount</th>'
        '<th scope="col">Services over 1000</th><th scope="col">Next step</th></tr></thead>'
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )


def _source_warnings(info: PageInfo, servers: Mapping[str, ServerView]) -> list[str]:
    out = []
    for h in info.sources:
        if h.up:
            continue
        name = _e(_source_name(h))
        error = f" ({_e(h.last_error)})" if h.last_error else ""
        if not h.last_success_timestamp:
            out.append(f"<b>{name} has never answered</b>{error}: nothing from it is compared.")
            continue
        since = (
            f"{_when(h.last_success_timestamp)} "
            f"({_ago(h.last_success_timestamp, info.collected_at)} before this report)"
        )
        server = servers.get(h.prometheus) if h.prometheus else None
        if h.source == SOURCE_KUBERNETES:
            what = "the cluster below is the watch caches' state as of its last good read, "
        elif server is not None and not server.known:
            what = (
                "its last answer is too old to count: its replica's coverage is unknown; "
                "last good read "
            )
        else:
            what = "its targets below are its last good read, from "
        out.append(f"<b>{name} is DOWN</b>{error}: {what}{since}.")
    return out


def _headline(
    report: CoverageReport | None, part: ServicesPart | None, info: PageInfo
) -> tuple[str, str]:
    kind, words = report_verdict(report, info.complete)
    words = words[:1].upper() + words[1:]
    if kind == "gaps" and part is not None:
        words += (
            f": {_n(part.gap_targets)} expected targets lost, in {part.with_gaps} of "
            f"{part.services} Services"
        )
    elif kind == "ok" and part is not None:
        words += f": every expected target of {part.services} Services is found"
    return kind, words + "."


def render_page(
    report: CoverageReport | None, info: PageInfo, part: ServicesPart | None = None
) -> bytes:
    """The whole page. `part` is render_services(report), for a caller that
    keeps it across cycles."""
    if report is not None and part is None:
        part = render_services(report, info.evidence)
    servers = server_views(report)
    css, headline = _headline(report, part, info)
    warnings = _source_warnings(info, servers)
    compared = [h.prometheus for h in info.sources if h.prometheus]
    nodes = ""
    if report is not None:
        ready, not_ready = node_counts(report)
        nodes = f" · {_n(ready + not_ready)} nodes ({_n(ready)} ready, {_n(not_ready)} not ready)"
    title = f"Scrape coverage of {info.cluster}: {headline.split(':')[0].rstrip('.').lower()}"
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
        '<nav class="toc" aria-label="Sections"><a href="#services">Services</a>'
        '<a href="#findings">Findings</a><a href="#sources">Sources</a>'
        '<a href="#funnels">Per Service</a><a href="#missing">Missing targets</a></nav>'
        "</header><main>"
    )
    # What is wrong first; then how far to trust it (sources, per cycle);
    # then where each target was lost.
    summary, details = (part.html, part.details) if part is not None else ("", "")
    tail = (
        f"</main><footer>coverage-exporter {_e(__version__)} · "
        f"{_runbook_link(RUNBOOK_INDEX, 'runbooks')}</footer>"
        f"<script>{JS}</script></body></html>\n"
    )
    sources = _sources_table(info, servers) + _readiness_table(info)
    if part is None:
        summary = "<p>Nothing was compared.</p>"
    return "\n".join((head + summary, sources, details + tail)).encode()
