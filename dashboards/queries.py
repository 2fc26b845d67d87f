"""The PromQL behind every dashboard panel, kept apart from the layout.

Recorded series come from alerts/rules.py, so the dashboard and the alerts
count the same way. `$cluster`, `$namespace` and `$service` are the
dashboard's variables; `CL` selects the cluster (every series selector
carries it, so two clusters in one Thanos never mix), `SEL` all three.
The cluster label's name is a placeholder (alerts.rules.Tuning), filled in
for the plain JSON, the chart and the mixin.
"""

from __future__ import annotations

from alerts.rules import (
    ENDPOINTS_ADDRESSES,
    ENDPOINTS_CAPACITY,
    ENDPOINTS_TRUNCATED,
    EXPECTED,
    GAP,
    GAP_RATIO,
    MISSING_BY_REASON,
    PLACEHOLDERS,
    POOL_TARGETS,
    POOL_UNKNOWN,
    SLICE_ENDPOINTS,
    STAGE_MISSING,
)

C = PLACEHOLDERS.cluster_label
CL = f'{C}="$cluster"'
SEL = f'{CL}, namespace=~"$namespace", service=~"$service"'
# An Endpoints object this full is worth watching before it reaches the cap.
AT_SCALE_ADDRESSES = 500


def expected() -> str:
    return f"{EXPECTED}{{{SEL}}}"


def present_at_stage(stage: str) -> str:
    """Expected targets found at a Kubernetes stage (expected minus missing)."""
    return (
        f"{expected()}\n- on (namespace, service)\n"
        f'{STAGE_MISSING}{{{SEL}, stage="{stage}"}}'
    )


POOL_GAP = f'{GAP}{{{SEL}, stage="prometheus"}}'


def discovered_by_worst_pool() -> str:
    """Expected targets discovered by the Service's least complete replica pool."""
    return (
        f"{expected()}\n- on (namespace, service)\n"
        f"max by (namespace, service) ({POOL_GAP})"
    )


def truncated_only(expr: str) -> str:
    return f"{expr}\nand on (namespace, service) ({ENDPOINTS_TRUNCATED}{{{SEL}}} == 1)"


def endpoints_role_pools_at_scale(value: str) -> str:
    """`value` per (Prometheus, pool) using role endpoints for a large Endpoints."""
    return (
        f"{value}\n+ on (namespace, service) group_right ()\n"
        f'(0 * {POOL_TARGETS}{{{SEL}, role="endpoints"}})\n'
        f"and on (namespace, service) ({ENDPOINTS_ADDRESSES}{{{SEL}}} > {AT_SCALE_ADDRESSES})"
    )


def selector_less_only(expr: str) -> str:
    # skip_mirror is exported for selector-less Services only.
    return (
        f"{expr}\nand on (namespace, service)\n"
        f"max by (namespace, service) (scrape_coverage_endpoints_skip_mirror{{{SEL}}})"
    )


def per_source(metric: str) -> str:
    return f"max by (source, server) ({metric}{{{CL}}})"


def source_rate(counter: str) -> str:
    return f"sum by (source, server) (rate({counter}{{{CL}}}[$__rate_interval]))"


EXPORTER_UP = f"sum(up{{{CL}, {PLACEHOLDERS.exporter_selector}}})"
# The worst replica per (Service, pool): replicas each miss their own.
MISSING_TOTAL = (
    f"sum(max by (namespace, service, scrape_pool, role) ({POOL_GAP})) or vector(0)"
)
TRUNCATED_READ = (
    f"count(\n  {ENDPOINTS_TRUNCATED}{{{SEL}}} == 1\n"
    f'  and on (namespace, service) {GAP}{{{SEL}, stage="endpoints"}}\n'
    ") or vector(0)"
)
LOWEST_COVERAGE = f'min(1 - {GAP_RATIO}{{{SEL}, stage="prometheus"}})'
UNKNOWN_TOTAL = f"sum({POOL_UNKNOWN}{{{SEL}}}) or vector(0)"
CAPACITY = f"vector({ENDPOINTS_CAPACITY})"
__all__ = ["ENDPOINTS_ADDRESSES", "ENDPOINTS_CAPACITY", "SLICE_ENDPOINTS", "STAGE_MISSING"]


MISSING_BY_REASON_SUM = f"sum by (reason) ({MISSING_BY_REASON}{{{SEL}}})"
"""Named missing targets per cause, over every stage, pool and replica."""
