"""Pods in the apiserver's Table form, for the fake apiserver (issue #12).

What kube-apiserver v1.36 answers to ``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``
with ``includeObject=None`` for pods (captured in
tests/fixtures/captured/kubernetes/pod_forms/): a Table with the pod printer's nine
columns, one row of cells per pod, ``object: null``; a watch event per change with
one row, columnDefinitions in the first event only; a BOOKMARK is a one-row Table of
an empty pod. Encoded like Go's encoding/json (``<`` ``>`` ``&`` escaped, compact).
Written once for the tests and the benchmark; tests/local/test_pod_table.py
holds it against the real server's captures.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

ACCEPT = "as=table;g=meta.k8s.io;v=v1"
"""What marks a Table request, in the lower-cased Accept without spaces."""

# The pod printer's column definitions, as the real server sends them.
COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        "priority": 0,
    },
    {
        "name": "Ready",
        "type": "string",
        "format": "",
        "description": "The aggregate readiness state of this pod for accepting traffic.",
        "priority": 0,
    },
    {
        "name": "Status",
        "type": "string",
        "format": "",
        "description": "The aggregate status of the containers in this pod.",
        "priority": 0,
    },
    {
        "name": "Restarts",
        "type": "string",
        "format": "",
        "description": "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        "priority": 0,
    },
    {
        "name": "Age",
        "type": "string",
        "format": "",
        "description": "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
        "priority": 0,
    },
    {
        "name": "IP",
        "type": "string",
        "format": "",
        "description": "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
        "priority": 1,
    },
    {
        "name": "Node",
        "type": "string",
        "format": "",
        "description": "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename",
        "priority": 1,
    },
    {
        "name": "Nominated Node",
        "type": "string",
        "format": "",
        "description": "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled.",
        "priority": 1,
    },
    {
        "name": "Readiness Gates",
        "type": "string",
        "format": "",
        "description": 'If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to "True" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates',
        "priority": 1,
    },
]

_DONE = ("Succeeded", "Failed")
NONE = "<none>"


def go_json(obj: Any) -> bytes:
    """Compact JSON escaped as Go's encoding/json writes it."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(ch, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


def _age(created: str | None, now: datetime.datetime) -> str:
    """k8s.io/apimachinery duration.HumanDuration of now - creationTimestamp."""
    if not created:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    s = int((now - then).total_seconds())
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 60 * 2:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 60 * 3:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    return f"{h // (24 * 365)}y"


def row(pod: dict[str, Any], now: datetime.datetime | None = None) -> dict[str, Any]:
    """One pod as printPod prints it (the cells the real server sends)."""
    now = now or datetime.datetime.now(datetime.UTC)
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    phase = status.get("phase") or ""
    reason = status.get("reason") or phase
    if meta.get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif phase not in _DONE:
            reason = "Terminating"
    ready = sum(1 for c in containers if c.get("ready"))
    total = len(spec.get("containers") or []) if pod else 0
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    ips = status.get("podIPs") or []
    ip = (ips[0].get("ip") if ips else None) or status.get("podIP") or NONE
    cells = [
        meta.get("name", ""),
        f"{ready}/{total}",
        reason,
        str(restarts),
        _age(meta.get("creationTimestamp"), now),
        ip,
        spec.get("nodeName") or NONE,
        status.get("nominatedNodeName") or NONE,
        NONE,
    ]
    out: dict[str, Any] = {"cells": cells}
    if phase in _DONE:
        message = (
            "The pod has completed successfully." if phase == "Succeeded" else "The pod failed."
        )
        out["conditions"] = [
            {"type": "Completed", "status": "True", "reason": phase, "message": message}
        ]
    out["object"] = None
    return out


def head(resource_version: str, continue_: str | None = None) -> bytes:
    """A LIST page up to its rows: ``head + b",".join(rows) + b"]}"``."""
    meta = {"resourceVersion": resource_version}
    if continue_:
        meta["continue"] = continue_
    doc = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": COLUMNS,
    }
    return go_json(doc)[:-1] + b',"rows":['


def row_bytes(item: bytes) -> bytes:
    """A pre-rendered pod (the dataset's bytes) as its Table row."""
    return go_json(row(json.loads(item)))


def event(etype: str, pod: dict[str, Any], resource_version: str, first: bool) -> bytes:
    """One watch event: a one-row Table (an empty pod's row for a BOOKMARK)."""
    table = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": COLUMNS if first else None,
        "rows": [row(pod if etype != "BOOKMARK" else {})],
    }
    return go_json({"type": etype, "object": table}) + b"\n"


def event_from_line(line: bytes, first: bool) -> bytes:
    """A full-object watch event line (the fake's history and live events) as Table."""
    doc = json.loads(line)
    obj = doc.get("object") or {}
    if doc.get("type") == "ERROR":
        return line  # ERROR events stay Status objects on the real server
    rv = (obj.get("metadata") or {}).get("resourceVersion", "")
    return event(doc["type"], obj, rv, first)
