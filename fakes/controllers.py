"""What the Kubernetes controllers keep of a Service's addresses: the rules
the fakes and the plain-data clusters of the tests build their objects
with. Written from the controllers' source (kubernetes
pkg/controller/endpoint, endpointslicemirroring), independently of the
exporter, which must find what they drop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

A = TypeVar("A")

ENDPOINTS_MAX_CAPACITY = 1000
"""The endpoints controller's maxCapacity, ready and not-ready addresses
counted together over all subsets."""
MIRRORING_MAX_PER_SUBSET = 1000
"""The EndpointSlice mirroring controller copies at most this many
addresses of each subset of selector-less Endpoints."""
OVER_CAPACITY_ANNOTATION = "endpoints.kubernetes.io/over-capacity"


def truncate_endpoints(
    ready: Sequence[A], not_ready: Sequence[A], ip: Callable[[A], str]
) -> tuple[list[A], list[A], bool]:
    """One subset as the endpoints controller writes it: (ready, not ready,
    truncated). Each list sorted by IP as a string (repackSubsets); past
    1000 addresses the ready ones are kept first, and when the ready alone
    are more than 1000 every not-ready one goes (truncateEndpoints)."""
    kept_ready = sorted(ready, key=ip)
    kept_not_ready = sorted(not_ready, key=ip)
    truncated = len(kept_ready) + len(kept_not_ready) > ENDPOINTS_MAX_CAPACITY
    if truncated:
        kept_ready = kept_ready[:ENDPOINTS_MAX_CAPACITY]
        kept_not_ready = kept_not_ready[: ENDPOINTS_MAX_CAPACITY - len(kept_ready)]
    return kept_ready, kept_not_ready, truncated


def mirrored(addresses: Sequence[A]) -> list[A]:
    """What the mirroring controller copies of one subset into slices."""
    return list(addresses[:MIRRORING_MAX_PER_SUBSET])
