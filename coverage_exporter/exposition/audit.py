"""The `audit` command's output for people (a table and findings in words)
and for programs (JSON). The stages, gaps, findings and verdict come from
the model (model.stages, model.findings, model.verdict), which the exit
code, the metrics and the HTML report read too; this only words them."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from coverage_exporter import runbooks
from coverage_exporter.health import SourceHealth
from coverage_exporter.model import evidence as kube_evidence
from coverage_exporter.model.causes import Cause, StageCauses
from coverage_exporter.model.coverage import MissingTarget, ServiceCoverage
from coverage_exporter.model.discovery import DiscoveryFinding, FoundServer
from coverage_exporter.model.findings import (
    EXTRA_TARGETS,
    RUNBOOK_MIGRATION,
    Finding,
    FindingKind,
)
from coverage_exporter.model.findings import service_findings as model_findings
from coverage_exporter.model.gaps import STAGE_PROMETHEUS
from coverage_exporter.model.intent import RuleRef
from coverage_exporter.model.objects import ROLE_ENDPOINTS, Taint
from coverage_exporter.model.readiness import Readiness
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.model.stages import Stage, service_gaps, service_stages
from coverage_exporter.model.unreached import RUNBOOK_UNREACHED, Unreached
from coverage_exporter.model.verdict import Verdict, decide
from coverage_exporter.untrusted import printable

NAMES_SHOWN = 5

CAUSE_WORDS: dict[Cause, str] = {
    Cause.NO_POD_TAINT: "no pod: a taint the DaemonSet does not tolerate",
    Cause.NO_POD_PLACEMENT: "no pod: the DaemonSet's node selector or affinity",
    Cause.POD_NOT_SCHEDULED: "pod not scheduled yet",
    Cause.POD_NOT_READY: "pod not started (no IP)",
    Cause.POD_TERMINATING: "pod terminating",
    Cause.ENDPOINTS_ABSENT: "no Endpoints object",
    Cause.ENDPOINTS_TRUNCATED: "cut from the truncated Endpoints",
    Cause.MIRRORING_CAPPED: "left out by the mirroring cap",
    Cause.ADDRESS_FAMILY: "only in the slices of the address family Prometheus skips",
    Cause.RELABEL_DROPPED: "dropped by the pool's relabel rule",
    Cause.POOL_DISCOVERS_NOTHING: "the pool discovers nothing",
    Cause.NO_SHARD_KEEPS: "no shard keeps its hashmod share",
    Cause.SHARE_UNKNOWN: "a shard's share is unknown",
    Cause.STILL_DISCOVERING: "the server is still discovering",
    Cause.UNEXPLAINED: "unexplained",
    Cause.UNMAINTAINED: "read from an object no controller maintains",
}
"""Each cause in words (model.causes.Cause); the runbook section is the value."""


def rule_words(rule: RuleRef | None) -> str:
    return "" if rule is None else f"relabel_configs[{rule[0]}] ({rule[1]})"


def cause_words(causes: StageCauses) -> str:
    """The counts per cause of one stage: "why: 200 cut from the truncated
    Endpoints, 1 pod terminating"; "" when there is none."""
    parts = []
    for cause, n in sorted(causes.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        words = CAUSE_WORDS[cause]
        if cause in (Cause.RELABEL_DROPPED, Cause.NO_SHARD_KEEPS) and causes.rule:
            words += f" {rule_words(causes.rule)}"
        parts.append(f"{n} {words} [{cause.value}]")
    return ("why: " + ", ".join(parts)) if parts else ""


def _names(missing: Sequence[MissingTarget], unnamed: int = 0) -> str:
    shown = ", ".join(m.pod or m.node for m in missing[:NAMES_SHOWN])
    more = len(missing) - NAMES_SHOWN
    out = shown + (f" and {more} more" if more > 0 else "")
    if unnamed:
        out += (" and " if out else "") + f"{unnamed} without a name (no pod yet)"
    return out


def _plain_names(names: Sequence[str]) -> str:
    more = len(names) - NAMES_SHOWN
    return ", ".join(names[:NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _endpoints_cell(s: ServiceCoverage) -> str:
    if s.endpoints is None:
        return "none"
    cell = str(s.endpoints.ready + s.endpoints.not_ready)
    return cell + (" TRUNCATED" if s.endpoints.truncated else "")


def _slices_cell(s: ServiceCoverage) -> str:
    return str(sum(s.slices.endpoints.values()))


def replica_name(st: Stage) -> str:
    """A scrape pool's replica as people read it: the replica alone when it
    is its own scraper, else scraper/replica."""
    return st.replica if st.replica == st.scraper else f"{st.scraper}/{st.replica}"


def _pool_cell(st: Stage) -> str:
    found = str(st.holds) if st.known else f"{st.holds}+{st.unknown} unknown"
    # A pool name comes from the server's answer: escaped for the terminal.
    return f"{replica_name(st)} {printable(st.pool)} ({st.role}) {found}"


def _rows(report: CoverageReport) -> list[list[str]]:
    rows = [["SERVICE", "SOURCE", "EXPECTED", "ENDPOINTS", "SLICES", "PROMETHEUS", "GAP"]]
    for s in report.services:
        pools = [_pool_cell(st) for st in service_stages(s) if st.kind == STAGE_PROMETHEUS] or ["-"]
        gap = max((st.count or 0 for st in service_gaps(s)), default=0)
        for i, pool in enumerate(pools):
            first = i == 0
            rows.append(
                [
                    f"{s.namespace}/{s.service}" if first else "",
                    s.source if first else "",
                    str(s.expected) if first else "",
                    _endpoints_cell(s) if first else "",
                    _slices_cell(s) if first else "",
                    pool,
                    str(gap) if first else "",
                ]
            )
    return rows


def finding_words(s: ServiceCoverage, f: Finding) -> str:
    """One finding in words, without the Service's name in front and
    without its runbook and final period, which the caller adds (a URL
    here, a link in the HTML report)."""
    st = f.stage
    kind = f.kind
    if kind is FindingKind.ENDPOINTS_ABSENT:
        return (
            "has no Endpoints object, yet a scrape pool reads it with role endpoints; "
            f"{s.expected} expected targets are lost"
        )
    if kind is FindingKind.ENDPOINTS_TRUNCATED:
        lost = (
            "a scrape pool reads it with role endpoints"
            if st.read
            else "no scrape pool reads it with role endpoints, so nothing is lost"
        )
        return (
            f"Endpoints truncated to {st.holds} of {s.expected} expected (annotation "
            f"endpoints.kubernetes.io/over-capacity); {f.count} missing: "
            f"{_names(st.missing or (), s.unnamed)}; {lost}"
        )
    if kind is FindingKind.ENDPOINTS_STALE:
        state = "read with role endpoints" if st.read else "read by no scrape pool"
        return (
            f"the Endpoints object misses {f.count} expected targets "
            f"({_names(st.missing or (), s.unnamed)}): it is stale (its owner no longer "
            f"writes it, e.g. --kubelet-endpoints=false) and {state}"
        )
    if kind is FindingKind.ENDPOINTS_UNMAINTAINED:
        state = "absent" if s.endpoints is None else "frozen: it disagrees with the slices"
        return (
            f"no Endpoints controller maintains its Endpoints object ({state}; a Service "
            "with slices and no Endpoints object shows the controller does not run); "
            "no truncation is claimed from it; "
            f"{f.count} expected targets are not in it"
        )
    if kind is FindingKind.SLICES_UNMIRRORED:
        return (
            "no EndpointSlice mirroring controller mirrors its selector-less Endpoints "
            "(Endpoints to mirror with no mirrored slice show it does not run); no mirroring "
            f"cap is claimed; {f.count} expected targets are not in the slices. Let the owner "
            "write its own slices (Prometheus Operator: --kubelet-endpointslice=true)"
        )
    if kind is FindingKind.MIRRORING_CAPPED:
        lost = (
            "a scrape pool reads the slices with role endpointslice and misses them"
            if st.read
            else "no scrape pool reads the slices yet; switching to role endpointslice "
            "now would lose them"
        )
        return (
            f"the EndpointSlice mirroring controller left {f.count} addresses out of its "
            f"slices (it mirrors at most 1000 per subset); {lost}. Let the owner write its "
            "own slices (Prometheus Operator: --kubelet-endpointslice=true)"
        )
    pool = f"{replica_name(st)} scrape pool {st.pool!r} (role {st.role})"
    if kind is FindingKind.COVERAGE_UNKNOWN:
        return (
            f"{pool}: coverage unknown for {f.count} of {s.expected}: "
            f"{st.why_unknown or 'a shard of the replica has not answered recently'}"
        )
    if kind is FindingKind.POOL_DUPLICATES:
        return (
            f"{pool} discovers {f.count} targets more than once, each scraped as often: "
            f"{_plain_names(st.duplicated)} (prometheus-operator #8682: both address "
            "families of each node in the kubelet Endpoints; or two Services for one target)"
        )
    if kind is FindingKind.POOL_GHOSTS:
        return (
            f"{pool} discovers {f.count} targets of nodes or pods that no longer exist: "
            f"{_plain_names(st.ghosts)} (a stale EndpointSlice or Endpoints object left "
            "behind; delete it)"
        )
    misses = f"{pool} misses {f.count} of {s.expected}: {_names(st.missing or (), s.unnamed)}"
    if kind is FindingKind.POOL_READS_TRUNCATED:
        return (
            f"{misses}. Role endpoints reads the truncated Endpoints object: migrate this "
            "job to role endpointslice"
        )
    if kind is FindingKind.POOL_READS_UNMAINTAINED:
        what = (
            "the Endpoints object, which no controller updates"
            if st.role == ROLE_ENDPOINTS
            else "slices mirrored by no controller"
        )
        return (
            f"{pool} reads {what}; it misses {f.count} of {s.expected}"
            f"{': ' + _names(st.missing or (), s.unnamed) if f.count else ''}. Migrate "
            "this job to role endpointslice (with slices that a controller writes)"
        )
    family = st.causes.counts.get(Cause.ADDRESS_FAMILY, 0)
    if family:
        # The usual advice (RBAC, selectors) would send the user the wrong
        # way: discovery works, and skips these slices on purpose.
        return (
            f"{misses}. {'All' if family == f.count else family} of them are only in the "
            "slices of an address family Prometheus 3.11+ skips: it reads only the primary "
            "family (spec.ipFamilies[0]) of a dual-stack Service (prometheus #18192). Have "
            "the slices written in that family too (Prometheus Operator 0.93+ for the "
            "kubelet), or make the Service single-stack"
        )
    if kind is FindingKind.POOL_DISCOVERS_NOTHING:
        return (
            f"{misses}. It discovers none of them: check its service discovery (RBAC for "
            "endpointslices after a role switch, selectors, port names)"
        )
    return misses


def finding_line(
    s: ServiceCoverage, f: Finding, evidence: kube_evidence.Evidence = kube_evidence.NO_EVIDENCE
) -> str:
    """The finding as the audit prints it, its runbook as a URL, then what
    Kubernetes itself says of it (model.evidence)."""
    runbook = f" ({runbooks.runbook_url(f.runbook)})" if f.runbook else ""
    why = _finding_causes(f)
    said = evidence_words(f, evidence)
    return f"{s.namespace}/{s.service}: {finding_words(s, f)}{why}{runbook}.{said}"


def event_words(e: kube_evidence.ControllerEvent) -> str:
    """One event as Kubernetes wrote it (escaped and cut at reading)."""
    seen = f", last {e.last_seen}" if e.last_seen else ""
    times = f" x{e.count}" if e.count > 1 else ""
    who = f" from {e.component}" if e.component else ""
    return f'Warning {e.reason}{who}{times}{seen}: "{e.message}"'


def evidence_words(f: Finding, evidence: kube_evidence.Evidence) -> str:
    """' Kubernetes says so: ...' for a finding its events confirm; a note
    when they could not be read; nothing otherwise (a finding without an
    event is still a finding: the controller records none while nothing
    changes, and events expire)."""
    events = kube_evidence.finding_evidence(f, evidence)
    if events:
        return " Kubernetes says so: " + "; ".join(event_words(e) for e in events) + "."
    if kube_evidence.evidence_unread(f, evidence):
        return f" (Kubernetes events not read: {evidence.detail})"
    return ""


def _finding_causes(f: Finding) -> str:
    """The stage's counts per cause, for the findings about lost or unknown
    targets (not for the mirroring count, which is about addresses)."""
    if f.kind in (FindingKind.MIRRORING_CAPPED, *EXTRA_TARGETS):
        return ""
    words = cause_words(f.stage.causes)
    return f"; {words}" if words else ""


def findings(
    s: ServiceCoverage, evidence: kube_evidence.Evidence = kube_evidence.NO_EVIDENCE
) -> list[str]:
    """What is wrong with one Service, in words, with what to do. Lines
    that describe a gap say so; the rest are findings that lose nothing
    today (no pool reads the stage)."""
    return [finding_line(s, f, evidence) for f in model_findings(s)]


def _source_line(h: SourceHealth) -> str:
    who = f"source {h.source}{' ' + h.prometheus if h.prometheus else ''}"
    return f"{who}: " + ("up" if h.up else f"DOWN ({h.last_error or 'no answer'})")


VERDICT_WORDS = {
    Verdict.NOT_COLLECTED: "no coverage: Kubernetes could not be read",
    Verdict.GAPS: "gaps found",
    Verdict.NOTHING_COMPARED: (
        "no Service compared: nothing to judge (check --service, --namespace, the scope)"
    ),
    Verdict.NO_SERVER: (
        "nothing judged: no Prometheus server was found or given (discovery finds the "
        "Prometheus Operator's servers and --prometheus-pod-selector pods; "
        "--prometheus-url and the fleet file name others)"
    ),
    Verdict.UNKNOWN: (
        "coverage unknown: a source did not answer, or its answer cannot be judged "
        "(no gap seen in what could)"
    ),
    Verdict.FULL_COVERAGE: "full coverage",
}


def verdict(report: CoverageReport | None, complete: bool) -> str:
    """The model's verdict (model.verdict) in words."""
    return VERDICT_WORDS[decide(report, complete)]


def migration_lines(readiness: Sequence[Readiness]) -> list[str]:
    """One paragraph per Prometheus Operator CR: where it stands, next step."""
    out = []
    for r in readiness:
        rbac = {True: "may", False: "may NOT", None: "unknown whether it may"}[r.endpointslice_rbac]
        over = ", ".join(f"{ns}/{n}" for ns, n in r.over_capacity) or "none"
        soon = ", ".join(f"{ns}/{n}" for ns, n in r.soon_over_capacity)
        line = (
            f"{r.cr.kind} {r.cr.namespace}/{r.cr.name}: role {r.role}; kubelet "
            f"{r.kubelet_state}; ServiceAccount {r.cr.service_account} {rbac} list "
            f"EndpointSlices; Services over 1000 addresses: {over}"
            + (f"; soon: {soon}" if soon else "")
            + "".join(
                f"; ServiceMonitor {m.namespace}/{m.name} sets role {m.role}"
                for m in r.monitors
                if m.own
            )
            + f". Next step: {r.next_step}"
            + (" (UNSAFE now)" if not r.safe_now else "")
            + f": {r.advice}"
        )
        out.append(line)
        if r.action:
            out.append(f"  do: {r.action} ({runbooks.runbook_url(RUNBOOK_MIGRATION)})")
    return out


def render_table(
    report: CoverageReport | None,
    sources: Sequence[SourceHealth],
    complete: bool = True,
    readiness: Sequence[Readiness] = (),
    evidence: kube_evidence.Evidence = kube_evidence.NO_EVIDENCE,
    found: Sequence[DiscoveryFinding] = (),
    unread: Sequence[FoundServer] = (),
) -> str:
    lines = [_source_line(h) for h in sources]
    if evidence.state in (kube_evidence.EventsRead.FORBIDDEN, kube_evidence.EventsRead.FAILED):
        lines.append(f"Kubernetes events: not read ({evidence.detail})")
    lines += [
        f"server {s.name} ({s.found_by}): not read, {s.unreadable}; its replica's coverage "
        "is unknown"
        for s in unread
    ]
    lines += [f"discovery: {f.message}" for f in found]
    if report is None:
        return "\n".join([*lines, verdict(None, complete)]) + "\n"
    rows = _rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    words = [f for s in report.services for f in findings(s, evidence)]
    words += [
        f"{u.namespace}/{u.service}: cannot tell what it should hold ({u.reason})"
        for u in report.unresolved
    ]
    words += unreached_lines(report)
    migration = migration_lines(readiness)
    if migration:
        migration = ["Prometheus Operator migration to EndpointSlice discovery:", *migration, ""]
    body = [*lines, "", *table, "", *words, *migration, verdict(report, complete)]
    return "\n".join(body) + "\n"


_NAMES_SHOWN = 10
"""Nodes named per taint in a line; the JSON names them all."""


def _taint(taint: Taint) -> str:
    key, value, effect = taint
    return printable(f"{key}={value}:{effect}" if value else f"{key}:{effect}")


def unreached_lines(report: CoverageReport) -> list[str]:
    """Nodes a node-level DaemonSet never reaches (model.unreached), one
    line per DaemonSet and taint, with the nodes' names."""
    out = []
    url = runbooks.runbook_url(RUNBOOK_UNREACHED)
    for u in report.unreached:
        for taint, nodes in u.by_taint.items():
            shown = ", ".join(nodes[:_NAMES_SHOWN])
            more = len(nodes) - _NAMES_SHOWN
            if more > 0:
                shown += f" and {more} more"
            out.append(
                f"DaemonSet {u.namespace}/{u.daemonset}: {len(nodes)} nodes never get its pod: "
                f"it selects no nodes, but does not tolerate their taint {_taint(taint)} "
                f"({shown}); not counted as missing targets ({url})."
            )
    return out


def unreached_json(u: Unreached) -> dict[str, object]:
    return {
        "namespace": u.namespace,
        "daemonset": u.daemonset,
        "count": u.count,
        "taints": [
            {"key": key, "value": value, "effect": effect, "nodes": list(nodes)}
            for (key, value, effect), nodes in u.by_taint.items()
        ],
    }


def _missing_list(missing: Sequence[MissingTarget], causes: StageCauses) -> list[dict[str, str]]:
    cause = causes.lookup()
    return [
        {"node": m.node, "pod": m.pod, "cause": cause(m).value}
        if m.pod
        else {"node": m.node, "cause": cause(m).value}
        for m in missing
    ]


def _causes_json(causes: StageCauses) -> dict[str, object]:
    """Counts per cause (named or not; a pool's unknown targets while
    unknown), and the relabel rule where a cause names one."""
    return {
        "causes": {c.value: n for c, n in sorted(causes.counts.items())},
        "cause_rule": None
        if causes.rule is None
        else {"index": causes.rule[0], "action": causes.rule[1]},
    }


def evidence_json(s: ServiceCoverage, evidence: kube_evidence.Evidence) -> list[dict[str, object]]:
    """The events that confirm the Service's findings, each with the kind
    of the finding it confirms."""
    return [
        {
            "finding": f.kind.value,
            "reason": e.reason,
            "component": e.component,
            "message": e.message,
            "count": e.count,
            "last_seen": e.last_seen,
            "skipped": e.skipped,
        }
        for f in model_findings(s)
        for e in kube_evidence.finding_evidence(f, evidence)
    ]


def service_json(
    s: ServiceCoverage, evidence: kube_evidence.Evidence = kube_evidence.NO_EVIDENCE
) -> dict[str, object]:
    stages = service_stages(s)
    ep_causes, sl_causes = stages[0].causes, stages[1].causes
    pool_causes = [st.causes for st in stages[2:]]
    endpoints = None
    if s.endpoints is not None:
        endpoints = {
            "ready": s.endpoints.ready,
            "not_ready": s.endpoints.not_ready,
            "truncated": s.endpoints.truncated,
            "skip_mirror": s.endpoints.skip_mirror,
            "missing_count": s.endpoints_missing_count(),
            "missing": _missing_list(s.endpoints.missing, ep_causes),
            **_causes_json(ep_causes),
        }
    return {
        "namespace": s.namespace,
        "service": s.service,
        "source": s.source,
        "expected": s.expected,
        "expected_unnamed": s.unnamed,
        "endpoints": endpoints,
        "endpoints_unmaintained": s.endpoints_unmaintained,
        "slices_unmirrored": s.slices_unmirrored,
        "endpointslices": {
            "endpoints": [
                {"managed_by": m, "ready": r, "count": c}
                for (m, r), c in sorted(s.slices.endpoints.items())
            ],
            "terminating": dict(sorted(s.slices.terminating.items())),
            "mirroring_skipped": s.slices.mirroring_skipped,
            "families": dict(s.slices.families),
            "missing_count": s.slices_missing_count(),
            "missing": _missing_list(s.slices.missing, sl_causes),
            **_causes_json(sl_causes),
        },
        "prometheus": {
            "targets": [
                {"server": sv, "scrape_pool": pool, "role": role, "health": h, "count": c}
                for (sv, pool, role, h), c in sorted(s.target_counts.items())
            ],
            "pools": [
                {
                    "scrape_pool": p.scrape_pool,
                    "role": p.role,
                    "scraper": p.scraper,
                    "replica": p.replica,
                    "meant": p.meant,
                    "known": p.known,
                    "discovered": p.discovered,
                    "unknown": p.unknown,
                    "why_unknown": p.why_unknown or None,
                    "missing_count": p.missing_count,
                    "missing": None if p.missing is None else _missing_list(p.missing, c),
                    **_causes_json(c),
                    "duplicated": list(p.duplicated),
                    "ghosts": list(p.ghosts),
                }
                for p, c in zip(s.pools, pool_causes, strict=True)
            ],
        },
        "gaps": [
            {
                "stage": st.kind,
                "role": st.role,
                "scrape_pool": st.pool,
                "scraper": st.scraper,
                "replica": st.replica,
                "missing": st.count,
            }
            for st in service_gaps(s)
        ],
        "findings": findings(s, evidence),
        "evidence": evidence_json(s, evidence),
    }


def controllers_json(report: CoverageReport) -> dict[str, object]:
    """What the read objects say of the Endpoints and mirroring controllers
    (model.controllers): the Services that show each one not running."""
    c = report.controllers
    return {
        "endpoints_down": c.endpoints_down,
        "endpoints_witnesses": [f"{ns}/{name}" for ns, name in c.endpoints_witnesses],
        "mirroring_down": c.mirroring_down,
        "mirroring_witnesses": [f"{ns}/{name}" for ns, name in c.mirroring_witnesses],
    }


def readiness_json(r: Readiness) -> dict[str, object]:
    return {
        "kind": r.cr.kind,
        "namespace": r.cr.namespace,
        "name": r.cr.name,
        "service_discovery_role": r.role,
        "service_account": r.cr.service_account,
        "endpointslice_rbac": r.endpointslice_rbac,
        "kubelet_state": r.kubelet_state,
        "services_over_capacity": [f"{ns}/{n}" for ns, n in r.over_capacity],
        "services_soon_over_capacity": [f"{ns}/{n}" for ns, n in r.soon_over_capacity],
        "service_monitors": [
            {"namespace": m.namespace, "name": m.name, "role": m.role, "own_role": m.own}
            for m in r.monitors
        ],
        "next_step": r.next_step,
        "safe_now": r.safe_now,
        "advice": r.advice,
        "action": r.action,
    }


JSON_VERSION = 1


def render_json(
    report: CoverageReport | None,
    sources: Sequence[SourceHealth],
    complete: bool = True,
    readiness: Sequence[Readiness] = (),
    evidence: kube_evidence.Evidence = kube_evidence.NO_EVIDENCE,
    found: Sequence[DiscoveryFinding] = (),
    unread: Sequence[FoundServer] = (),
) -> str:
    fleet = report.fleet if report is not None else None
    complete = complete and report is not None and all(h.up for h in sources)
    document = {
        # The document's format (docs/audit-json.md): raised when a field
        # changes meaning or goes away; new fields may appear at any time.
        "version": JSON_VERSION,
        "sources": [
            {"source": h.source, "server": h.prometheus, "up": h.up, "error": h.last_error}
            for h in sources
        ],
        "replicas": []
        if fleet is None
        else [
            {
                "scraper": r.scraper,
                "replica": r.replica,
                "shards": r.shards,
                "known": r.known,
                "why_unknown": r.why_unknown or None,
                "servers": [
                    {
                        "server": sv.name,
                        "kind": sv.identity.kind,
                        "shard": sv.identity.shard,
                        "topology": sv.identity.how,
                        "discovery": sv.found_by,
                        "known": sv.known,
                        "why_unknown": sv.why_unknown or None,
                    }
                    for sv in r.servers
                ],
            }
            for _, r in sorted(fleet.replicas.items())
        ],
        "complete": complete,
        "gaps": None if report is None else report.has_gaps,
        "verdict": verdict(report, complete),
        "nodes": None
        if report is None
        else {
            "ready": report.nodes_ready,
            "not_ready": report.nodes_not_ready,
        },
        "services": [] if report is None else [service_json(s, evidence) for s in report.services],
        "events": None
        if report is None
        else {"read": evidence.state.value, "detail": evidence.detail or None},
        "controllers": None if report is None else controllers_json(report),
        "migration": [readiness_json(r) for r in readiness],
        "discovery": {
            "findings": [
                {"subject": f.subject, "reason": f.reason, "message": f.message} for f in found
            ],
            "not_read": [
                {"server": s.name, "discovery": s.found_by, "reason": s.unreadable} for s in unread
            ],
        },
        "unresolved": []
        if report is None
        else [
            {"namespace": u.namespace, "service": u.service, "reason": u.reason}
            for u in report.unresolved
        ],
        "unreached": [] if report is None else [unreached_json(u) for u in report.unreached],
    }
    # msgspec, not json.dumps: at 100k nodes the document lists every
    # missing node (~600k entries) and json.dumps(indent=2) takes seconds.
    return msgspec.json.format(msgspec.json.encode(document), indent=2).decode() + "\n"
