"""Kubernetes' Warning events on Endpoints objects, read as evidence for
the findings (model.evidence, issue #19 item 7).

One LIST per reason read (a field selector cannot say "one of"), of the
`events` of the core API, filtered by the server on the involved object's
kind, the type and the reason: a few events, whatever the cluster's size.
Cluster-wide, or in each --namespace. Read anew at most every
OPERATOR_REFRESH_INTERVAL (events change when a controller syncs, and a
steady cycle then makes no request).

`list` on `events` is optional: 401/403 give EventsRead.FORBIDDEN, logged
once, and the audit says that it could not read them. Nothing here ends a
cycle: any other failure is EventsRead.FAILED with its detail.

Events are untrusted (anyone who may create events can write one with
these fields): pages are capped, messages cut and escaped, and an event is
shown only beside the finding the objects already prove.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import aiohttp
import msgspec

from coverage_exporter import defaults, untrusted
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.logs import fields
from coverage_exporter.model.evidence import (
    EVIDENCE_REASONS,
    MESSAGE_MAX,
    ControllerEvent,
    EventsRead,
    Evidence,
    gather,
)
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.kubernetes.api import ApiClient, ApiError

log = logging.getLogger("coverage_exporter.kubernetes.events")

EVENTS = "/api/v1/events"
PAGE_SIZE = 500
MAX_PAGES = 4
"""2000 events of one reason on Endpoints objects is far past any real
cluster (one event per capped object, its repeats folded into its count):
beyond it the rest is not read, and the read is still READ."""


class _Involved(msgspec.Struct):
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None


class _Source(msgspec.Struct):
    component: str | None = None


class _Series(msgspec.Struct, rename="camel"):
    count: int | None = None
    last_observed_time: str | None = None


class _Event(msgspec.Struct, rename="camel"):
    """core/v1 Event; events/v1 writers fill series, eventTime and
    reportingComponent instead of count, lastTimestamp and source."""

    involved_object: _Involved | None = None
    reason: str | None = None
    message: str | None = None
    type: str | None = None
    count: int | None = None
    last_timestamp: str | None = None
    event_time: str | None = None
    series: _Series | None = None
    source: _Source | None = None
    reporting_component: str | None = None


class _Meta(msgspec.Struct, rename="camel"):
    continue_: str | None = msgspec.field(default=None, name="continue")


class _EventList(msgspec.Struct):
    items: list[msgspec.Raw] | None = None
    metadata: _Meta | None = None


_list_decoder = untrusted.Decoder(_EventList)
_event_decoder = untrusted.Decoder(_Event)


def parse_event(raw: bytes | msgspec.Raw) -> ControllerEvent | None:
    """One event as evidence, or None when it is not about an Endpoints
    object or does not fit (one bad event costs that event)."""
    try:
        e = _event_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    obj = e.involved_object
    if obj is None or obj.kind != "Endpoints" or not obj.namespace or not obj.name:
        return None
    if e.type != "Warning" or e.reason not in EVIDENCE_REASONS:
        return None
    series = e.series
    count = e.count or (series.count if series else None) or 1
    last = e.last_timestamp or (series.last_observed_time if series else None) or e.event_time
    component = (e.source.component if e.source else None) or e.reporting_component or ""
    return ControllerEvent(
        namespace=untrusted.printable(obj.namespace, 63),
        name=untrusted.printable(obj.name, 253),
        reason=e.reason,
        message=untrusted.printable(e.message or "", MESSAGE_MAX),
        count=max(int(count), 1),
        last_seen=untrusted.printable(last, 40) if last else None,
        component=untrusted.printable(component, 80),
    )


class EventSource:
    """Reads the evidence events through the Kubernetes source's client."""

    def __init__(
        self,
        api: ApiClient,
        namespaces: Sequence[str] = (),
        refresh_seconds: float = parse_seconds(defaults.OPERATOR_REFRESH_INTERVAL),
    ) -> None:
        self._api = api
        self._paths = [f"/api/v1/namespaces/{ns}/events" for ns in namespaces] or [EVENTS]
        self._refresh = refresh_seconds
        self._read_at: float | None = None
        self._cached: Evidence | None = None
        self._state = ""

    async def collect(self) -> Evidence:
        """Never raises for what the server answers: the state says how
        the read went."""
        now = time.monotonic()
        fresh = self._read_at is not None and now - self._read_at < self._refresh
        if self._cached is not None and fresh:
            return self._cached
        self._cached = await self._read()
        self._read_at = now
        self._log(self._cached)
        return self._cached

    def _log(self, evidence: Evidence) -> None:
        if evidence.state == self._state:
            return
        self._state = evidence.state
        if evidence.state == EventsRead.READ:
            log.info(
                "reading Kubernetes events as evidence", extra=fields(reasons=EVIDENCE_REASONS)
            )
        else:
            log.warning(
                "Kubernetes events not read: findings are shown without them",
                extra=fields(state=evidence.state.value, err=evidence.detail),
            )

    async def _read(self) -> Evidence:
        events: list[ControllerEvent] = []
        try:
            for path in self._paths:
                for reason in EVIDENCE_REASONS:
                    events += await self._list(path, reason)
        except ApiError as exc:
            state = EventsRead.FORBIDDEN if exc.code in (401, 403) else EventsRead.FAILED
            detail = f"list events: {exc}"
            if state == EventsRead.FORBIDDEN:
                detail = "no permission to list events (RBAC: list on events, optional)"
            return Evidence(state, {}, detail)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Evidence(EventsRead.FAILED, {}, f"list events: {httpclient.describe(exc)}")
        except msgspec.DecodeError as exc:
            return Evidence(EventsRead.FAILED, {}, f"list events: undecodable: {exc}")
        return gather(EventsRead.READ, events)

    async def _list(self, path: str, reason: str) -> list[ControllerEvent]:
        selector = f"involvedObject.kind=Endpoints,type=Warning,reason={reason}"
        out: list[ControllerEvent] = []
        cont = ""
        for _ in range(MAX_PAGES):
            params = {"fieldSelector": selector, "limit": str(PAGE_SIZE)}
            if cont:
                params["continue"] = cont
            page = _list_decoder.decode(await self._api.get(path, params))
            out += [e for raw in page.items or () if (e := parse_event(raw)) is not None]
            cont = (page.metadata.continue_ if page.metadata else None) or ""
            if not cont:
                break
        return out
