"""Pods in the apiserver's Table form (issue #12).

`Accept: application/json;as=Table;g=meta.k8s.io;v=v1` with includeObject=None:
the server prints each pod as `kubectl get pods -o wide` would, ~150 B per pod
against 3.4-7 KB for the object (bench/pod_forms.py). A row has cells only:
no namespace (the scope's), no labels, no owner (inferred later from the name,
model/owners.py), no resourceVersion (the Table's, on watch events).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from coverage_exporter import untrusted
from coverage_exporter.model.objects import POD_PHASES_DONE, Pod, ServiceKey
from coverage_exporter.sources.kubernetes.parse import (
    PODS,
    Buffer,
    FormUnsupported,
    ListMeta,
    ObjectParser,
    Page,
    Parsed,
    ParseError,
    _i,
)

TABLE_ACCEPT = "application/json;as=Table;g=meta.k8s.io;v=v1"
TABLE_PAGE_SIZE = 2000
"""153 B/pod: 2000 rows make ~300 KB pages, above the 128 KiB below which the
apiserver does not gzip (500 rows would travel uncompressed)."""
NONE_CELL = "<none>"
"""How the pod printer writes an unset IP or node."""
_TERMINATING_STATUS = "Terminating"
"""printPod's Status when deletionTimestamp is set and the phase is not done
(a NodeLost pod shows "Unknown" instead: not seen as terminating here)."""
_TABLE_COLUMNS = ("Name", "Status", "IP", "Node")
"""The cells read; their positions come from columnDefinitions, by name."""


class _TableColumn(msgspec.Struct):
    name: str | None = None


class _RowCondition(msgspec.Struct):
    type: str | None = None
    status: str | None = None
    reason: str | None = None


Cell = str | int | float | bool | None


class _TableRow(msgspec.Struct):
    cells: list[Cell] | None = None
    conditions: list[_RowCondition] | None = None


class RawTable(msgspec.Struct, rename="camel"):
    kind: str | None = None
    metadata: ListMeta | None = None
    column_definitions: list[_TableColumn] | None = None
    rows: list[_TableRow] | None = None


class _LooseTable(msgspec.Struct, rename="camel"):
    """A Table whose rows stay raw: one row that does not fit costs that row."""

    kind: str | None = None
    metadata: ListMeta | None = None
    column_definitions: list[_TableColumn] | None = None
    rows: list[msgspec.Raw] | None = None


class _NameOnlyRow(msgspec.Struct):
    cells: list[Any] | None = None


class _KindOnly(msgspec.Struct):
    kind: Any = None


_table_decoder = untrusted.Decoder(RawTable)
_name_row_decoder = untrusted.Decoder(_NameOnlyRow)
_kind_decoder = untrusted.Decoder(_KindOnly)
_loose_table_decoder = untrusted.Decoder(_LooseTable)
_row_decoder = untrusted.Decoder(_TableRow)


@dataclass(frozen=True, slots=True)
class PodColumns:
    """Cell positions of the columns read."""

    name: int
    status: int
    ip: int
    node: int

    @property
    def width(self) -> int:
        return max(self.name, self.status, self.ip, self.node) + 1


def pod_columns(definitions: list[_TableColumn]) -> PodColumns:
    """Positions by name (the server sends every column, priority 1 included,
    but their order is its business). FormUnsupported if one is missing."""
    index: dict[str, int] = {}
    for i, column in enumerate(definitions):
        if column.name in _TABLE_COLUMNS:
            index.setdefault(column.name, i)
    missing = [c for c in _TABLE_COLUMNS if c not in index]
    if missing:
        raise FormUnsupported(f"pod Table without the column(s) {', '.join(missing)}")
    return PodColumns(index["Name"], index["Status"], index["IP"], index["Node"])


def _cell(cells: list[Cell], i: int, what: str) -> str | None:
    value = cells[i]
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"pod Table row: {what} cell is not a string")
    return None if value in ("", NONE_CELL) else value


def pod_from_row(row: _TableRow, columns: PodColumns, namespace: str) -> Pod:
    cells = row.cells or []
    if len(cells) < columns.width:
        raise ParseError(f"pod Table row with {len(cells)} cells, {columns.width} needed")
    name = _cell(cells, columns.name, "Name")
    if not name:
        raise ParseError("pod Table row without a Name")
    phase = None
    for condition in row.conditions or ():
        # A done pod's row carries Completed=True with the phase as reason.
        done = condition.type == "Completed" and condition.status == "True"
        if done and condition.reason in POD_PHASES_DONE:
            phase = sys.intern(condition.reason)
    return Pod(
        namespace=namespace,
        name=name,
        node_name=_i(_cell(cells, columns.node, "Node")),
        ip=_i(_cell(cells, columns.ip, "IP")),
        owner_kind=None,
        owner_name=None,
        terminating=cells[columns.status] == _TERMINATING_STATUS,
        phase=phase,
    )


class PodTableParser(ObjectParser[ServiceKey, Pod]):
    """The pods of one namespace in Table form. Stateful: the column
    positions of the last LIST serve the watch events, which carry
    columnDefinitions only in their first event. One per pod reflector."""

    accept = TABLE_ACCEPT
    params: Mapping[str, str] = {"includeObject": "None"}
    page_size = TABLE_PAGE_SIZE

    def __init__(self, namespace: str, fallback: ObjectParser[ServiceKey, Pod] = PODS) -> None:
        self.kind = "Pod"
        self.namespace = sys.intern(namespace)
        self.columns: PodColumns | None = None
        self.fallback = fallback

    def _table(self, table: RawTable | _LooseTable, *, need_columns: bool) -> PodColumns:
        if table.kind != "Table":
            # A server or proxy that ignores as=Table answers a PodList (or a
            # Pod event) with 200: read as a Table it would be "no pods".
            kind = untrusted.printable(str(table.kind), 40)
            raise FormUnsupported(f"asked for a pod Table, got kind {kind}")
        if table.column_definitions:
            self.columns = pod_columns(table.column_definitions)
        elif need_columns or self.columns is None:
            raise FormUnsupported("pod Table without columnDefinitions")
        return self.columns

    def parse_page(self, data: Buffer) -> Page[ServiceKey, Pod]:
        try:
            table: RawTable | _LooseTable = _table_decoder.decode(data)
        except msgspec.ValidationError:
            table = self._decode_loose(data)
        except msgspec.DecodeError as exc:
            raise ParseError(f"bad pod Table: {exc}") from exc
        # Every LIST page repeats columnDefinitions on the real server.
        columns = self._table(table, need_columns=True)
        out = Page[ServiceKey, Pod]([], table.metadata, [])
        for row in table.rows or ():
            try:
                if isinstance(row, msgspec.Raw):
                    row = _decode_row(row)
                pod = pod_from_row(row, columns, self.namespace)
            except ParseError as exc:
                out.errors.append(f"Pod {self.namespace}/?: {exc}")
                continue
            out.items.append(Parsed((self.namespace, pod.name), pod, None))
        return out

    @staticmethod
    def _decode_loose(data: Buffer) -> _LooseTable:
        try:
            return _loose_table_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ParseError(f"bad pod Table: {exc}") from exc

    def parse(self, data: Buffer) -> Parsed[ServiceKey, Pod]:
        """The object of an ADDED or MODIFIED watch event: a one-row Table."""
        try:
            table = _table_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ParseError(f"Pod: bad Table event: {exc}") from exc
        columns = self._table(table, need_columns=False)
        rows = table.rows or []
        if len(rows) != 1:
            raise ParseError(f"Pod: watch event Table with {len(rows)} rows, 1 expected")
        try:
            pod = pod_from_row(rows[0], columns, self.namespace)
        except ParseError as exc:
            raise ParseError(f"Pod {self.namespace}/?: {exc}") from exc
        rv = table.metadata.resource_version if table.metadata else None
        return Parsed((self.namespace, pod.name), pod, rv)

    def check_form(self, data: Buffer) -> None:
        """A DELETED event that is not a Table (a server that ignores as=Table
        on watches): FormUnsupported, so that the reflector falls back rather
        than keep a deleted pod that identify() cannot name."""
        try:
            kind = _kind_decoder.decode(data).kind
        except msgspec.DecodeError:
            return  # not the form's business: identify() finds no key
        if kind != "Table":
            raise FormUnsupported(
                f"asked for a pod Table, got kind {untrusted.printable(str(kind), 40)}"
            )

    def identify(self, data: Buffer) -> tuple[ServiceKey | None, str | None]:
        """DELETED events and rows that failed: the Name cell, read alone.
        Never raises."""
        try:
            table = _loose_table_decoder.decode(data)
        except msgspec.DecodeError:
            return None, None
        rv = table.metadata.resource_version if table.metadata else None
        try:
            columns = self._table(table, need_columns=False)
            rows = table.rows or []
            if len(rows) != 1:
                return None, rv
            # Cells as Any: a row bad in another cell still names its pod.
            cells = _name_row_decoder.decode(rows[0]).cells or []
            name = _cell(cells, columns.name, "Name") if len(cells) > columns.name else None
        except (ParseError, msgspec.DecodeError):
            return None, rv
        return ((self.namespace, name) if name else None), rv


def _decode_row(raw: msgspec.Raw) -> _TableRow:
    try:
        return _row_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise ParseError(f"bad Table row: {exc}") from exc


# --- owners from metadata (issue #19 item 8; model/owners.py) ---------------------
#
# For the few pods whose name does not show their DaemonSet: one LIST each,
# `fieldSelector=metadata.name=<pod>`, in the Table form with
# includeObject=Metadata, which carries each row's PartialObjectMetadata
# (ownerReferences included). A LIST, not a GET: the exporter's role grants
# list and watch on pods, never get. A server that ignores as=Table answers
# a PodList, whose items carry the same metadata: read either.

OWNER_PARAMS: Mapping[str, str] = {"includeObject": "Metadata"}


class _OwnerReference(msgspec.Struct):
    kind: str | None = None
    name: str | None = None
    controller: bool | None = None


class _OwnerMeta(msgspec.Struct, rename="camel"):
    name: str | None = None
    owner_references: list[_OwnerReference] | None = None


class _WithMeta(msgspec.Struct):
    metadata: _OwnerMeta | None = None


class _OwnerRow(msgspec.Struct):
    object: _WithMeta | None = None


class _OwnerAnswer(msgspec.Struct):
    kind: str | None = None
    rows: list[_OwnerRow] | None = None
    items: list[_WithMeta] | None = None


_owner_decoder = untrusted.Decoder(_OwnerAnswer)


def owner_of(data: Buffer, pod: str) -> tuple[str | None, str | None] | None:
    """The controller owner (kind, name) of the pod named `pod` in the
    answer to its one-name LIST; (None, None) when it has none; None when
    the answer does not hold that pod (gone). ParseError if undecodable."""
    try:
        answer = _owner_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ParseError(f"pod metadata: {exc}") from exc
    found = [r.object for r in answer.rows or ()] + list(answer.items or ())
    for obj in found:
        meta = obj.metadata if obj else None
        if meta is None or meta.name != pod:
            continue
        for ref in meta.owner_references or ():
            if ref.controller and ref.kind and ref.name:
                return (
                    sys.intern(untrusted.printable(ref.kind, 63)),
                    sys.intern(untrusted.printable(ref.name, 253)),
                )
        return (None, None)
    return None
