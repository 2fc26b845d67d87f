"""The `audit` command's output for people (a table and findings in words)
and for programs (JSON). Both read the gaps from `model.gaps`, the one
definition the exit code and the metrics use too."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from coverage_exporter import runbooks
from coverage_exporter.model.coverage import MissingTarget, PoolCoverage, ServiceCoverage
from coverage_exporter.model.discovery import DiscoveryFinding, FoundServer
from coverage_exporter.model.gaps import service_gaps
from coverage_exporter.model.objects import ROLE_ENDPOINTS, ROLE_ENDPOINTSLICE
from coverage_exporter.model.readiness import Readiness
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.sources.health import SourceHealth
from coverage_exporter.sources.untrusted import printable

NAMES_SHOWN = 5


def runbook(name: str) -> str:
    # A URL a pip user can open (--runbook-base-url; default: docs/runbooks/ on GitHub).
    return runbooks.runbook_url(name)


def _names(missing: Sequence[MissingTarget], unnamed: int = 0) -> str:
    shown = ", ".join(m.pod or m.node for m in missing[:NAMES_SHOWN])
    more = len(missing) - NAMES_SHOWN
    out = shown + (f" and {more} more" if more > 0 else "")
    if unnamed:
        out += (" and " if out else "") + f"{unnamed} without a name (no pod yet)"
    return out


def _endpoints_cell(s: ServiceCoverage) -> str:
    if s.endpoints is None:
        return "none"
    cell = str(s.endpoints.ready + s.endpoints.not_ready)
    return cell + (" TRUNCATED" if s.endpoints.truncated else "")


def _slices_cell(s: ServiceCoverage) -> str:
    return str(sum(s.slices.endpoints.values()))


def _replica_name(p: PoolCoverage) -> str:
    return p.replica if p.replica == p.scraper else f"{p.scraper}/{p.replica}"


def _pool_cell(p: PoolCoverage) -> str:
    found = str(p.discovered) if p.known else f"{p.discovered}+{p.unknown} unknown"
    # A pool name comes from the server's answer: escaped for the terminal.
    return f"{_replica_name(p)} {printable(p.scrape_pool)} ({p.role}) {found}"


def _rows(report: CoverageReport) -> list[list[str]]:
    rows = [["SERVICE", "SOURCE", "EXPECTED", "ENDPOINTS", "SLICES", "PROMETHEUS", "GAP"]]
    for s in report.services:
        pools = [_pool_cell(p) for p in s.pools] or ["-"]
        gap = max((g.missing for g in service_gaps(s)), default=0)
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


def findings(s: ServiceCoverage) -> list[str]:
    """What is wrong with one Service, in words, with what to do. Lines
    that describe a gap say so; the rest are findings that lose nothing
    today (no pool reads the stage)."""
    name = f"{s.namespace}/{s.service}"
    out = []
    reads_endpoints = s.reads(ROLE_ENDPOINTS)
    reads_slices = s.reads(ROLE_ENDPOINTSLICE)
    if s.endpoints is None:
        if reads_endpoints:
            out.append(
                f"{name}: has no Endpoints object, yet a scrape pool reads it with role "
                f"endpoints; {s.expected} expected targets are lost."
            )
    elif s.endpoints.truncated:
        lost = (
            "a scrape pool reads it with role endpoints"
            if reads_endpoints
            else "no scrape pool reads it with role endpoints, so nothing is lost"
        )
        out.append(
            f"{name}: Endpoints truncated to {s.endpoints.ready + s.endpoints.not_ready} of "
            f"{s.expected} expected (annotation endpoints.kubernetes.io/over-capacity); "
            f"{s.endpoints_missing_count()} missing: "
            f"{_names(s.endpoints.missing, s.unnamed)}; {lost}."
        )
    elif s.endpoints_missing_count() and s.endpoints.skip_mirror is not None:
        state = "read with role endpoints" if reads_endpoints else "read by no scrape pool"
        out.append(
            f"{name}: the Endpoints object misses {s.endpoints_missing_count()} expected "
            f"targets ({_names(s.endpoints.missing, s.unnamed)}): it is stale (its owner no "
            f"longer writes it, e.g. --kubelet-endpoints=false) and {state}."
        )
    if s.slices.mirroring_skipped:
        lost = (
            "a scrape pool reads the slices with role endpointslice and misses them"
            if reads_slices
            else "no scrape pool reads the slices yet; switching to role endpointslice "
            "now would lose them"
        )
        out.append(
            f"{name}: the EndpointSlice mirroring controller left {s.slices.mirroring_skipped} "
            f"addresses out of its slices (it mirrors at most 1000 per subset); {lost}. Let "
            "the owner write its own slices (Prometheus Operator: --kubelet-endpointslice=true)"
            f" ({runbook('ScrapeCoverageEndpointSliceMirroringCapped')})."
        )
    for p in s.pools:
        if not p.known:
            out.append(
                f"{name}: {_replica_name(p)} scrape pool {p.scrape_pool!r} (role {p.role}): "
                f"coverage unknown for {p.unknown} of {s.expected}: a shard of the replica has "
                f"not answered recently ({runbook('ScrapeCoverageUnknown')})."
            )
            continue
        if not p.missing_count:
            continue
        advice = ""
        if p.role == ROLE_ENDPOINTS and s.endpoints is not None and s.endpoints.truncated:
            advice = (
                " Role endpoints reads the truncated Endpoints object: migrate this job to role "
                f"endpointslice ({runbook('ScrapeCoverageEndpointsTruncated')})."
            )
        elif p.discovered == 0:
            advice = (
                " It discovers none of them: check its service discovery (RBAC for "
                "endpointslices after a role switch, selectors, port names) "
                f"({runbook('ScrapeCoverageTargetsMissing')})."
            )
        out.append(
            f"{name}: {_replica_name(p)} scrape pool {p.scrape_pool!r} (role {p.role}) misses "
            f"{p.missing_count} of {s.expected}: {_names(p.missing or (), p.unnamed)}.{advice}"
        )
    return out


def _source_line(h: SourceHealth) -> str:
    who = f"source {h.source}{' ' + h.prometheus if h.prometheus else ''}"
    return f"{who}: " + ("up" if h.up else f"DOWN ({h.last_error or 'no answer'})")


def verdict(report: CoverageReport | None, complete: bool) -> str:
    if report is None:
        return "no coverage: Kubernetes could not be read"
    if report.has_gaps:
        return "gaps found"
    if not report.services:
        return "no Service compared: nothing to judge (check --service, --namespace, the scope)"
    if not report.fleet.replicas:
        return (
            "nothing judged: no Prometheus server was found or given (discovery finds the "
            "Prometheus Operator's servers and --prometheus-pod-selector pods; "
            "--prometheus-url and the fleet file name others)"
        )
    if report.unknown_pools or not complete:
        return "coverage unknown: a source did not answer (no gap seen in what did)"
    return "full coverage"


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
            + f". Next step: {r.next_step}"
            + (" (UNSAFE now)" if not r.safe_now else "")
            + f": {r.advice}"
        )
        out.append(line)
        if r.action:
            out.append(f"  do: {r.action} ({runbook('migrate-to-endpointslice')})")
    return out


def render_table(
    report: CoverageReport | None,
    sources: Sequence[SourceHealth],
    complete: bool = True,
    readiness: Sequence[Readiness] = (),
    found: Sequence[DiscoveryFinding] = (),
    unread: Sequence[FoundServer] = (),
) -> str:
    lines = [_source_line(h) for h in sources]
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
    words = [f for s in report.services for f in findings(s)]
    words += [
        f"{u.namespace}/{u.service}: cannot tell what it should hold ({u.reason})"
        for u in report.unresolved
    ]
    migration = migration_lines(readiness)
    if migration:
        migration = ["Prometheus Operator migration to EndpointSlice discovery:", *migration, ""]
    body = [*lines, "", *table, "", *words, *migration, verdict(report, complete)]
    return "\n".join(body) + "\n"


def _missing_list(missing: Sequence[MissingTarget]) -> list[dict[str, str]]:
    return [{"node": m.node, "pod": m.pod} if m.pod else {"node": m.node} for m in missing]


def service_json(s: ServiceCoverage) -> dict[str, object]:
    endpoints = None
    if s.endpoints is not None:
        endpoints = {
            "ready": s.endpoints.ready,
            "not_ready": s.endpoints.not_ready,
            "truncated": s.endpoints.truncated,
            "skip_mirror": s.endpoints.skip_mirror,
            "missing_count": s.endpoints_missing_count(),
            "missing": _missing_list(s.endpoints.missing),
        }
    return {
        "namespace": s.namespace,
        "service": s.service,
        "source": s.source,
        "expected": s.expected,
        "expected_unnamed": s.unnamed,
        "endpoints": endpoints,
        "endpointslices": {
            "endpoints": [
                {"managed_by": m, "ready": r, "count": c}
                for (m, r), c in sorted(s.slices.endpoints.items())
            ],
            "terminating": dict(sorted(s.slices.terminating.items())),
            "mirroring_skipped": s.slices.mirroring_skipped,
            "missing_count": s.slices_missing_count(),
            "missing": _missing_list(s.slices.missing),
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
                    "missing_count": p.missing_count,
                    "missing": None if p.missing is None else _missing_list(p.missing),
                }
                for p in s.pools
            ],
        },
        "gaps": [
            {
                "stage": g.stage,
                "role": g.role,
                "scrape_pool": g.scrape_pool,
                "scraper": g.scraper,
                "replica": g.replica,
                "missing": g.missing,
            }
            for g in service_gaps(s)
        ],
        "findings": findings(s),
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
        "next_step": r.next_step,
        "safe_now": r.safe_now,
        "advice": r.advice,
        "action": r.action,
    }


def render_json(
    report: CoverageReport | None,
    sources: Sequence[SourceHealth],
    complete: bool = True,
    readiness: Sequence[Readiness] = (),
    found: Sequence[DiscoveryFinding] = (),
    unread: Sequence[FoundServer] = (),
) -> str:
    fleet = report.fleet if report is not None else None
    complete = complete and report is not None and all(h.up for h in sources)
    document = {
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
                "servers": [
                    {
                        "server": sv.name,
                        "shard": sv.identity.shard,
                        "topology": sv.identity.how,
                        "discovery": sv.found_by,
                        "known": sv.known,
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
        "services": [] if report is None else [service_json(s) for s in report.services],
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
    }
    # msgspec, not json.dumps: at 100k nodes the document lists every
    # missing node (~600k entries) and json.dumps(indent=2) takes seconds.
    return msgspec.json.format(msgspec.json.encode(document), indent=2).decode() + "\n"
