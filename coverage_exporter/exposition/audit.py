"""The `audit` command's output for people (a table and findings in words)
and for programs (JSON)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from coverage_exporter.model.coverage import MissingTarget, PoolCoverage, ServiceCoverage
from coverage_exporter.model.objects import ROLE_ENDPOINTS
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.sources.health import SourceHealth

RUNBOOKS = "docs/runbooks"
NAMES_SHOWN = 5


def _names(missing: Sequence[MissingTarget]) -> str:
    shown = ", ".join(m.pod or m.node for m in missing[:NAMES_SHOWN])
    more = len(missing) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _endpoints_cell(s: ServiceCoverage) -> str:
    if s.endpoints is None:
        return "none"
    cell = str(s.endpoints.ready + s.endpoints.not_ready)
    return cell + (" TRUNCATED" if s.endpoints.truncated else "")


def _slices_cell(s: ServiceCoverage) -> str:
    return str(sum(s.slices.endpoints.values()))


def _pool_cell(p: PoolCoverage) -> str:
    return f"{p.scrape_pool} ({p.role}) {p.discovered}"


def _rows(report: CoverageReport) -> list[list[str]]:
    rows = [["SERVICE", "SOURCE", "EXPECTED", "ENDPOINTS", "SLICES", "PROMETHEUS", "MISSING"]]
    for s in report.services:
        pools = [_pool_cell(p) for p in s.pools] or (["-"] if s.prometheus_known else ["unknown"])
        worst = max((len(p.missing) for p in s.pools), default=0)
        k8s_missing = len(s.endpoints.missing) if s.endpoints else s.expected
        missing = max(worst, k8s_missing, len(s.slices.missing))
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
                    str(missing) if first else "",
                ]
            )
    return rows


def findings(s: ServiceCoverage) -> list[str]:
    """What is wrong with one Service, in words, with what to do."""
    name = f"{s.namespace}/{s.service}"
    out = []
    if s.endpoints is None:
        out.append(f"{name}: has no Endpoints object; {s.expected} expected targets.")
    elif s.endpoints.truncated:
        out.append(
            f"{name}: Endpoints truncated to {s.endpoints.ready + s.endpoints.not_ready} of "
            f"{s.expected} expected (annotation endpoints.kubernetes.io/over-capacity); "
            f"{len(s.endpoints.missing)} missing: {_names(s.endpoints.missing)}."
        )
    if s.slices.mirroring_skipped:
        out.append(
            f"{name}: the EndpointSlice mirroring controller left {s.slices.mirroring_skipped} "
            "addresses out of its slices (it mirrors at most 1000 per subset). Let the owner "
            "write its own slices and label the Endpoints endpointslice.kubernetes.io/skip-mirror"
            f"=true ({RUNBOOKS}/ScrapeCoverageEndpointSliceMirroringCapped.md)."
        )
    for p in s.pools:
        if not p.missing:
            continue
        advice = (
            f" Role endpoints reads the truncated Endpoints object: migrate this job to role "
            f"endpointslice ({RUNBOOKS}/ScrapeCoverageEndpointsTruncated.md)."
            if p.role == ROLE_ENDPOINTS and s.endpoints is not None and s.endpoints.truncated
            else ""
        )
        out.append(
            f"{name}: scrape pool {p.scrape_pool!r} (role {p.role}) misses {len(p.missing)} of "
            f"{s.expected}: {_names(p.missing)}.{advice}"
        )
    return out


def render_table(report: CoverageReport | None, sources: Sequence[SourceHealth]) -> str:
    lines = [
        f"source {h.source}{' ' + h.prometheus if h.prometheus else ''}: "
        + ("up" if h.up else f"DOWN ({h.last_error or 'no answer'})")
        for h in sources
    ]
    if report is None:
        return "\n".join([*lines, "no coverage: Kubernetes could not be read"]) + "\n"
    rows = _rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    words = [f for s in report.services for f in findings(s)]
    words += [
        f"{name}: cannot tell what it should hold (selector-less, not Nodes)"
        for name in report.unresolved
    ]
    verdict = "gaps found" if report.has_gaps else "full coverage"
    return "\n".join([*lines, "", *table, "", *words, verdict]) + "\n"


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
            "missing": _missing_list(s.endpoints.missing),
        }
    return {
        "namespace": s.namespace,
        "service": s.service,
        "source": s.source,
        "expected": s.expected,
        "endpoints": endpoints,
        "endpointslices": {
            "endpoints": [
                {"managed_by": m, "ready": r, "count": c}
                for (m, r), c in sorted(s.slices.endpoints.items())
            ],
            "terminating": dict(sorted(s.slices.terminating.items())),
            "mirroring_skipped": s.slices.mirroring_skipped,
            "missing": _missing_list(s.slices.missing),
        },
        "prometheus": None
        if not s.prometheus_known
        else {
            "targets": [
                {"prometheus": pr, "scrape_pool": pool, "role": role, "health": h, "count": c}
                for (pr, pool, role, h), c in sorted(s.target_counts.items())
            ],
            "pools": [
                {
                    "scrape_pool": p.scrape_pool,
                    "role": p.role,
                    "discovered": p.discovered,
                    "ratio": p.ratio,
                    "missing": _missing_list(p.missing),
                }
                for p in s.pools
            ],
        },
        "findings": findings(s),
    }


def render_json(report: CoverageReport | None, sources: Sequence[SourceHealth]) -> str:
    document = {
        "sources": [
            {"source": h.source, "prometheus": h.prometheus, "up": h.up, "error": h.last_error}
            for h in sources
        ],
        "complete": report is not None and all(h.up for h in sources),
        "gaps": None if report is None else report.has_gaps,
        "nodes": None
        if report is None
        else {
            "ready": report.nodes_ready,
            "not_ready": report.nodes_not_ready,
        },
        "services": [] if report is None else [service_json(s) for s in report.services],
        "unresolved": [] if report is None else list(report.unresolved),
    }
    # msgspec, not json.dumps: at 100k nodes the document lists every
    # missing node (~600k entries) and json.dumps(indent=2) takes seconds.
    return msgspec.json.format(msgspec.json.encode(document), indent=2).decode() + "\n"
