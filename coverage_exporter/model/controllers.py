"""Whether the Endpoints controller and the EndpointSlice mirroring
controller run, told from the objects already read (no new read, no clock).

Kubernetes is preparing clusters without these two controllers (KEP-4974;
a 1.37 test job runs so). Endpoints objects are then absent or frozen, and
a claim read from them (truncation, the mirroring cap) describes a past
that nothing maintains. The API says nothing about which controllers run,
so the evidence is what they would have written and did not:

- The Endpoints controller creates an Endpoints object for EVERY Service
  with a selector, empty ones included, as the EndpointSlice controller
  writes at least a placeholder slice for each. A selector-backed Service
  with slices of the EndpointSlice controller and no Endpoints object is a
  witness: the Endpoints controller is not maintaining it.
- The mirroring controller mirrors every selector-less Endpoints object
  that has an address and is not labelled skip-mirror. Such an object with
  no mirrored slice at all is a witness: the cap never leaves zero (it
  copies 1000 addresses per subset), so zero is not the cap.

One witness convicts the controller cluster-wide (it is one loop in one
process): every object it would maintain is then read as frozen, and
neither truncation nor a mirroring cap is claimed from it. A frozen
Endpoints object still listing what its slices list loses nothing and is
not called out; one that disagrees with its slices is.

Limits (docs/runbooks/causes.md#unmaintained):
- A cluster with no such Service (no selector-backed Service with slices,
  no selector-less Endpoints to mirror) has no witness: nothing is claimed.
- A controller stopped after it wrote everything, with no Service or
  Endpoints created since, leaves no witness: its frozen objects are read
  as maintained until one is created.
- A Service created in the instant between the two controllers' writes is
  a witness for one read (the alerts' `for` absorbs it; audit may say it).
- Without the EndpointSlice controller there is no witness for the
  Endpoints controller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coverage_exporter.model.objects import (
    MANAGED_BY_CONTROLLER,
    MANAGED_BY_MIRRORING,
    ClusterSnapshot,
    EndpointSlice,
    Service,
    ServiceKey,
)


@dataclass(frozen=True, slots=True)
class Controllers:
    """What the read objects say of the two controllers."""

    endpoints_witnesses: tuple[ServiceKey, ...] = ()
    """Selector-backed Services with controller slices and no Endpoints."""
    mirroring_witnesses: tuple[ServiceKey, ...] = ()
    """Selector-less Endpoints to mirror, with no mirrored slice."""

    @property
    def endpoints_down(self) -> bool:
        return bool(self.endpoints_witnesses)

    @property
    def mirroring_down(self) -> bool:
        return bool(self.mirroring_witnesses)


RUNNING = Controllers()
"""No witness: what every cluster with both controllers looks like."""


def _has(slices: Iterable[EndpointSlice], managed_by: str) -> bool:
    return any(s.managed_by == managed_by for s in slices)


def controllers(snapshot: ClusterSnapshot) -> Controllers:
    """One pass over the Services: the witnesses of each controller."""
    ep_witnesses: list[ServiceKey] = []
    mirror_witnesses: list[ServiceKey] = []
    for key, svc in snapshot.services.items():
        slices = snapshot.endpointslices.get(key, ())
        endpoints = snapshot.endpoints.get(key)
        if svc.selector is not None:
            if endpoints is None and _has(slices, MANAGED_BY_CONTROLLER):
                ep_witnesses.append(key)
        elif _unmirrored(endpoints is not None and _to_mirror(snapshot, key), slices):
            mirror_witnesses.append(key)
    return Controllers(tuple(sorted(ep_witnesses)), tuple(sorted(mirror_witnesses)))


def _to_mirror(snapshot: ClusterSnapshot, key: ServiceKey) -> bool:
    e = snapshot.endpoints[key]
    return not e.skip_mirror and any(e.subset_sizes)


def _unmirrored(to_mirror: bool, slices: Sequence[EndpointSlice]) -> bool:
    return to_mirror and not _has(slices, MANAGED_BY_MIRRORING)


def endpoints_unmaintained(service: Service, snapshot: ClusterSnapshot, found: Controllers) -> bool:
    """The Service's Endpoints object (or its absence) is something no
    controller maintains, and it matters: absent, or listing other
    addresses than the Service's slices (frozen since the controller
    stopped). Selector-less Services' Endpoints are their owner's."""
    if not found.endpoints_down or service.selector is None:
        return False
    endpoints = snapshot.endpoints.get(service.key)
    slices = snapshot.endpointslices.get(service.key, ())
    if endpoints is None:
        return _has(slices, MANAGED_BY_CONTROLLER)
    listed = {a.ip for a in endpoints.ready + endpoints.not_ready}
    family = "IPv6" if any(":" in ip for ip in listed) else "IPv4"
    current = {
        e.address
        for s in slices
        if s.managed_by == MANAGED_BY_CONTROLLER and s.address_type == family
        for e in s.endpoints
    }
    return listed != current


def slices_unmirrored(service: Service, snapshot: ClusterSnapshot, found: Controllers) -> bool:
    """The Service's selector-less Endpoints are to be mirrored and the
    mirroring controller does not run: the mirrored slices are absent (a
    witness) or frozen, and any shortfall is not the cap."""
    if not found.mirroring_down or service.selector is not None:
        return False
    if service.key not in snapshot.endpoints:
        return False
    return _to_mirror(snapshot, service.key)
