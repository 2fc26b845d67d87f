"""Kubernetes' own word on a finding (issue #19 item 7): the Warning events
that its controllers record on the Endpoints object they could not handle
in full, shown beside the finding they confirm.

The EndpointSlice mirroring controller records `TooManyAddressesToMirror`
on a selector-less Endpoints object whose subset holds more addresses than
it mirrors ("A max of 1000 addresses can be mirrored to EndpointSlices per
Endpoints subset. 200 addresses were skipped"; kubernetes v1.36
pkg/controller/endpointslicemirroring/reconciler.go, events.go). That is
the only event a controller records about a loss the exporter names. The
Endpoints controller truncates without an event (the over-capacity
annotation is its only mark, and the proof the exporter reads); its
events (FailedToCreateEndpoint, FailedToUpdateEndpoint) say that a write
failed, which no finding here claims, so they are not read.

Events are evidence, never the verdict: the finding comes from the objects
(model.coverage, model.findings), and an event is shown only with the
finding it names. An event outlives its cause for up to an hour (the
apiserver's --event-ttl) and a controller records none again while nothing
changes, so an event without its finding proves nothing, and a finding
without its event is still a finding. Reading events needs `list` on
`events`, an optional permission: without it the audit says that it could
not read them (EventsRead), never that Kubernetes was silent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from coverage_exporter.model.findings import Finding, FindingKind
from coverage_exporter.model.objects import ServiceKey

TOO_MANY_ADDRESSES_TO_MIRROR = "TooManyAddressesToMirror"
MIRRORING_CONTROLLER = "endpoint-slice-mirroring-controller"
"""The event's source.component: the controller's EventRecorder names
itself so (pkg/controller/endpointslicemirroring), though the controller
is enabled as `endpointslice-mirroring-controller`."""

EVIDENCE: Mapping[FindingKind, str] = {
    FindingKind.MIRRORING_CAPPED: TOO_MANY_ADDRESSES_TO_MIRROR,
}
"""Finding kind -> the event reason that confirms it: the closed set of
reasons read (sources/kubernetes/events.py asks for these only)."""
EVIDENCE_REASONS = tuple(sorted(set(EVIDENCE.values())))

EVENTS_PER_OBJECT = 3
"""The newest events kept per Endpoints object: one is the usual case (a
controller's repeats fold into one event's count); the cap bounds what a
flood of events can cost."""
MESSAGE_MAX = 300
"""Characters of an event's message kept (untrusted: any writer of events
can put anything there)."""

_SKIPPED = re.compile(r"(\d+) addresses were skipped")


class EventsRead(StrEnum):
    """Whether the events could be read this cycle."""

    READ = "read"
    FORBIDDEN = "forbidden"
    """401/403: the exporter may not list events (optional RBAC)."""
    FAILED = "failed"
    """Any other failure; the detail says which."""
    OFF = "off"
    """Not asked (a source without an API, tests)."""


@dataclass(frozen=True, slots=True)
class ControllerEvent:
    """One Warning event recorded on an Endpoints object."""

    namespace: str
    name: str
    """The Endpoints object's (= its Service's) name."""
    reason: str
    message: str
    count: int
    """How many times the controller recorded it (core/v1 count, or the
    events/v1 series count)."""
    last_seen: str | None
    """RFC 3339, as the server wrote it; None when it wrote none."""
    component: str
    """Who recorded it (source.component or reportingController)."""

    @property
    def skipped(self) -> int | None:
        """The addresses the mirroring controller says it skipped."""
        m = _SKIPPED.search(self.message)
        return int(m.group(1)) if m else None


@dataclass(frozen=True, slots=True)
class Evidence:
    """The events read this cycle, by the Service (Endpoints) they name."""

    state: EventsRead
    by_object: Mapping[ServiceKey, tuple[ControllerEvent, ...]] = field(default_factory=dict)
    detail: str = ""
    """Why they could not be read (FORBIDDEN, FAILED)."""


NO_EVIDENCE = Evidence(EventsRead.OFF)


def gather(state: EventsRead, events: Iterable[ControllerEvent], detail: str = "") -> Evidence:
    """Group events by object, newest first, EVENTS_PER_OBJECT each; only
    the reasons read as evidence."""
    grouped: dict[ServiceKey, list[ControllerEvent]] = {}
    for e in events:
        if e.reason in EVIDENCE_REASONS:
            grouped.setdefault((e.namespace, e.name), []).append(e)
    by_object = {
        key: tuple(sorted(es, key=lambda e: e.last_seen or "", reverse=True)[:EVENTS_PER_OBJECT])
        for key, es in grouped.items()
    }
    return Evidence(state, by_object, detail)


def finding_evidence(finding: Finding, evidence: Evidence) -> tuple[ControllerEvent, ...]:
    """The events that confirm this finding: of the reason its kind names,
    on its Service's Endpoints object."""
    reason = EVIDENCE.get(finding.kind)
    if reason is None:
        return ()
    events = evidence.by_object.get((finding.namespace, finding.service), ())
    return tuple(e for e in events if e.reason == reason)


def evidence_unread(finding: Finding, evidence: Evidence) -> bool:
    """A finding that events could confirm, while they could not be read:
    say so rather than show nothing."""
    return finding.kind in EVIDENCE and evidence.state in (
        EventsRead.FORBIDDEN,
        EventsRead.FAILED,
    )
