"""Ways to learn each DaemonSet pod's node and IP without full pod objects (issue #12).

Against a real kube-apiserver (the testbed's by default), for the pods of one
label selector in one namespace (the exporter's pod scope), it measures each
response form the apiserver offers:

- ``json``: the full PodList (what the exporter reads now), decoded by the
  exporter's own ``k8s_parse.PODS``;
- ``metadata``: ``as=PartialObjectMetadataList`` (no nodeName, no podIP);
- ``table-none`` / ``table-metadata``: ``as=Table`` with ``includeObject=None``
  or ``=Metadata`` (cells Name, Ready, Status, Restarts, Age, IP, Node,
  Nominated Node, Readiness Gates);
- ``protobuf`` / ``protobuf-metadata``: ``application/vnd.kubernetes.protobuf``,
  decoded with the ``protobuf`` package from k8s.io/api's generated.proto
  (``protobuf-full``: every message; ``protobuf-slim``: a .proto declaring
  only the fields the exporter reads, the protobuf twin of msgspec's typed
  Structs) when ``protobuf`` and ``grpcio-tools`` import (bench/requirements.txt).

For each: body and gzip bytes per pod, decode CPU per pod into the
exporter's ``Pod`` objects, wall time of one full paginated LIST, and which
of node, IP, controller owner, terminating and done-phase survive (compared
pod by pod with the full JSON). Then field selectors, and what the Table
form supports (limit/continue, labelSelector, resourceVersion, watch,
bookmarks, sendInitialEvents). Linear extrapolation to ``--extrapolate``
pods (100,000 by default).

``--capture DIR`` also records small real answers, byte for byte as the
server sent them: Table and metadata LIST pages (limit=3, with a continue
token) and Table watch streams with ADDED/MODIFIED/DELETED/BOOKMARK events,
made by creating, completing and deleting three pods in a scratch namespace
``pod-forms-capture`` (deleted afterwards). Only that namespace is written.

    testbed/testbed up --nodes 1200 --prometheus 3
    PYTHONPATH=. .venv/bin/python bench/pod_forms.py            # markdown
    PYTHONPATH=. .venv/bin/python bench/pod_forms.py --json
    PYTHONPATH=. .venv/bin/python bench/pod_forms.py --capture tests/fixtures/captured/kubernetes/pod_forms

Every request goes to the kubeconfig's server, which must be a loopback
address; every request has a timeout; runs are bounded by ``--repeat``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import http.client
import ipaddress
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml
from coverage_exporter.model.objects import POD_PHASES_DONE, Pod
from coverage_exporter.sources.kubernetes import parse as k8s_parse

REPO = Path(__file__).resolve().parent.parent
JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"
TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_ONE = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
CAPTURE_NS = "pod-forms-capture"
CAPTURE_LABEL = "pod-forms-capture"


# --- HTTP to a loopback kube-apiserver --------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    wire: bytes
    """The body as received (gzip when the server compressed it)."""
    body: bytes
    """The body decompressed."""
    seconds: float

    @property
    def gzip(self) -> bool:
        return self.headers.get("content-encoding", "") == "gzip"


class Api:
    """Bearer token or client certificate from a kubeconfig; the server must be loopback."""

    def __init__(self, kubeconfig: Path) -> None:
        cfg = yaml.safe_load(kubeconfig.read_text())
        ctx_name = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next((u["user"] for u in cfg.get("users") or [] if u["name"] == ctx.get("user")), {})
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = url.hostname or "", url.port or 443
        addr = ipaddress.ip_address(socket.gethostbyname(self.host))
        if not addr.is_loopback:
            raise SystemExit(
                f"refusing {cluster['server']}: this benchmark only talks to 127.0.0.0/8"
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="pod-forms-")
        self.ssl = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            self.ssl.check_hostname = False
            self.ssl.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            self.ssl.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        elif cluster.get("certificate-authority"):
            self.ssl.load_verify_locations(cafile=cluster["certificate-authority"])
        cert = self._file(user, "client-certificate")
        if cert:
            self.ssl.load_cert_chain(cert, self._file(user, "client-key"))
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def _file(self, user: dict[str, Any], key: str) -> str | None:
        if user.get(f"{key}-data"):
            path = Path(self._tmp.name) / key
            path.write_bytes(base64.b64decode(user[f"{key}-data"]))
            return str(path)
        return user.get(key)

    def connection(self, timeout: float = 60) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        accept: str = JSON,
        gzip_ok: bool = True,
        body: Any = None,
        conn: http.client.HTTPSConnection | None = None,
        timeout: float = 120,
    ) -> Reply:
        own = conn is None
        conn = conn or self.connection(timeout)
        headers = {"Accept": accept, **self.auth}
        if gzip_ok:
            headers["Accept-Encoding"] = "gzip"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = JSON
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        start = time.perf_counter()
        try:
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            wire = resp.read()
            seconds = time.perf_counter() - start
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            if own:
                conn.close()
        raw = gzip.decompress(wire) if hdrs.get("content-encoding") == "gzip" else wire
        return Reply(resp.status, hdrs, wire, raw, seconds)

    def get(self, path: str, params: dict[str, str] | None = None, **kw: Any) -> Reply:
        return self.request("GET", path, params, **kw)

    def ok(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        r = self.request(method, path, params, body=body, gzip_ok=False)
        if r.status >= 400:
            raise RuntimeError(f"{method} {path}: {r.status} {r.body[:300]!r}")
        return json.loads(r.body) if r.body else {}

    @contextlib.contextmanager
    def stream(
        self, path: str, params: dict[str, str], accept: str, timeout: float
    ) -> Iterator[http.client.HTTPResponse]:
        """A watch: the response, read line by line (no gzip, as a watch client would)."""
        conn = self.connection(timeout)
        try:
            conn.request(
                "GET",
                path + "?" + urllib.parse.urlencode(params),
                headers={"Accept": accept, **self.auth},
            )
            yield conn.getresponse()
        finally:
            conn.close()


def list_all(
    api: Api, path: str, params: dict[str, str], accept: str, limit: int
) -> tuple[list[Reply], float]:
    """One full paginated LIST on one keep-alive connection, as the exporter's reflector does."""
    pages: list[Reply] = []
    cont = ""
    conn = api.connection(300)
    start = time.perf_counter()
    try:
        while True:
            q = {**params, **({"limit": str(limit)} if limit else {})}
            if cont:
                q["continue"] = cont
            r = api.get(path, q, accept=accept, conn=conn)
            if r.status != 200:
                raise RuntimeError(f"LIST {path} as {accept}: {r.status} {r.body[:300]!r}")
            pages.append(r)
            cont = _continue_token(r.body) if limit else ""
            if not cont:
                break
    finally:
        conn.close()
    return pages, time.perf_counter() - start


class _Envelope(msgspec.Struct):
    metadata: k8s_parse.ListMeta | None = None


_envelope = msgspec.json.Decoder(_Envelope)
_PB_CONTINUE: Callable[[bytes], str] | None = None


def _continue_token(body: bytes) -> str:
    if body[:4] == b"k8s\x00":
        return _PB_CONTINUE(body) if _PB_CONTINUE else ""
    meta = _envelope.decode(body).metadata
    return (meta.continue_ if meta else None) or ""


# --- decoders: each form -> the exporter's Pod objects ------------------------------------


def decode_json_full(body: bytes) -> list[Pod]:
    return [p.obj for p in k8s_parse.PODS.parse_page(body).items]


class _MetaItem(msgspec.Struct):
    metadata: k8s_parse._PodMeta | None = None


class _MetaList(msgspec.Struct):
    metadata: k8s_parse.ListMeta | None = None
    items: list[_MetaItem] | None = None


_meta_list = msgspec.json.Decoder(_MetaList)


def _owner(meta: k8s_parse._PodMeta | None) -> k8s_parse.OwnerReference | None:
    return next((o for o in (meta.owner_references if meta else None) or () if o.controller), None)


def _i(v: str | None) -> str | None:
    return None if v is None else sys.intern(v)


def decode_metadata(body: bytes) -> list[Pod]:
    out = []
    for item in _meta_list.decode(body).items or ():
        m = item.metadata
        o = _owner(m)
        out.append(
            Pod(
                namespace=_i(m.namespace or "") if m else "",
                name=m.name if m else "",
                node_name=None,
                ip=None,
                owner_kind=_i(o.kind) if o else None,
                owner_name=_i(o.name) if o else None,
                terminating=bool(m and m.deletion_timestamp),
                phase=None,
            )
        )
    return out


class _Column(msgspec.Struct):
    name: str = ""


class _RowCondition(msgspec.Struct):
    type: str | None = None
    status: str | None = None
    reason: str | None = None


class _RowObject(msgspec.Struct):
    metadata: k8s_parse._PodMeta | None = None


class _Row(msgspec.Struct):
    cells: list[str | int | float | bool | None] = []
    conditions: list[_RowCondition] | None = None
    object: _RowObject | None = None


class _Table(msgspec.Struct, rename="camel"):
    metadata: k8s_parse.ListMeta | None = None
    column_definitions: list[_Column] | None = None
    rows: list[_Row] | None = None


_table = msgspec.json.Decoder(_Table)
NONE_CELL = "<none>"


def table_pods(table: _Table, namespace: str, columns: dict[str, int] | None = None) -> list[Pod]:
    """Rows -> Pod. Node and IP from the cells (``<none>`` = unset); terminating
    from Status == "Terminating" (printPod: deletionTimestamp set, phase not
    terminal) or the object's deletionTimestamp; done phase from the row's
    Completed condition (reason Succeeded or Failed); the controller owner
    only from the object (includeObject=Metadata). Watch events after the
    first carry no columnDefinitions: pass the LIST's ``columns``."""
    if table.column_definitions:
        columns = {c.name: i for i, c in enumerate(table.column_definitions)}
    assert columns, "a Table without columnDefinitions and no columns given"
    c_name, c_status, c_ip, c_node = (
        columns["Name"],
        columns["Status"],
        columns["IP"],
        columns["Node"],
    )
    ns = sys.intern(namespace)
    out = []
    for row in table.rows or ():
        cells = row.cells
        ip, node = cells[c_ip], cells[c_node]
        phase = None
        for cond in row.conditions or ():
            if cond.type == "Completed" and cond.status == "True":
                phase = _i(cond.reason)
        meta = row.object.metadata if row.object else None
        o = _owner(meta)
        out.append(
            Pod(
                namespace=ns,
                name=str(cells[c_name]),
                node_name=_i(node) if node and node != NONE_CELL else None,
                ip=_i(ip) if ip and ip != NONE_CELL else None,
                owner_kind=_i(o.kind) if o else None,
                owner_name=_i(o.name) if o else None,
                terminating=cells[c_status] == "Terminating"
                or bool(meta and meta.deletion_timestamp),
                phase=phase,
            )
        )
    return out


def decode_table(namespace: str) -> Callable[[bytes], list[Pod]]:
    return lambda body: table_pods(_table.decode(body), namespace)


# --- protobuf ------------------------------------------------------------------------------

SLIM_PROTO = """\
// Only the fields coverage_exporter reads, with k8s.io/api's field numbers;
// the decoder skips every other field.
syntax = "proto2";
package podforms;
message Unknown { optional bytes raw = 2; }
message ListMeta { optional string resourceVersion = 2; optional string continue = 3; }
message Time { optional int64 seconds = 1; }
message OwnerReference { optional string kind = 1; optional string name = 3; optional bool controller = 6; }
message ObjectMeta {
  optional string name = 1; optional string namespace = 3; optional string resourceVersion = 6;
  optional Time deletionTimestamp = 9; repeated OwnerReference ownerReferences = 13;
}
message PodSpec { optional string nodeName = 10; }
message PodStatus { optional string phase = 1; optional string podIP = 6; }
message Pod { optional ObjectMeta metadata = 1; optional PodSpec spec = 2; optional PodStatus status = 3; }
message PodList { optional ListMeta metadata = 1; repeated Pod items = 2; }
"""


@dataclass
class Protobuf:
    unknown: Any
    pod_list: Any
    meta_list: Any
    slim_unknown: Any
    slim_pod_list: Any
    implementation: str
    source: str


def _protoc(include: Path, files: list[str], out: Path) -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    argv = ["protoc", f"-I{include}", f"--descriptor_set_out={out}", "--include_imports", *files]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed: {argv}")
    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(f)
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def _go_module_dir(module: str, version: str) -> Path:
    """The module's directory in the Go module cache (``go mod download``
    fetches it from the Go module proxy when it is not cached yet)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tempfile.gettempdir(),
        check=True,
    )
    return Path(json.loads(out.stdout)["Dir"])


def load_protobuf(server_version: str, proto_dir: Path | None, work: Path) -> Protobuf | str:
    """Message classes from k8s.io/api and k8s.io/apimachinery's generated.proto of the
    server's minor version, or why not."""
    try:
        import grpc_tools  # noqa: F401
        from google.protobuf.internal import api_implementation
    except ImportError as exc:
        return (
            f"protobuf/grpcio-tools not importable ({exc}); pip install -r bench/requirements.txt"
        )
    major_minor_patch = server_version.lstrip("v").split("-")[0].split("+")[0]
    _, minor, patch = major_minor_patch.split(".")
    gover = f"v0.{minor}.{patch}"
    root = work / "proto"
    try:
        if proto_dir:
            api_dir, mach_dir = proto_dir / "k8s.io/api", proto_dir / "k8s.io/apimachinery"
        else:
            api_dir, mach_dir = (
                _go_module_dir("k8s.io/api", gover),
                _go_module_dir("k8s.io/apimachinery", gover),
            )
        (root / "k8s.io").mkdir(parents=True, exist_ok=True)
        for name, src in (("api", api_dir), ("apimachinery", mach_dir)):
            link = root / "k8s.io" / name
            if not link.exists():
                link.symlink_to(src)
        full = _protoc(root, ["k8s.io/api/core/v1/generated.proto"], work / "core.pb")
        (work / "slim").mkdir(exist_ok=True)
        (work / "slim" / "slim.proto").write_text(SLIM_PROTO)
        slim = _protoc(work / "slim", ["slim.proto"], work / "slim.pb")
    except (OSError, subprocess.SubprocessError, RuntimeError, KeyError) as exc:
        return f"no generated.proto for {gover}: {exc}"
    return Protobuf(
        unknown=full("k8s.io.apimachinery.pkg.runtime.Unknown"),
        pod_list=full("k8s.io.api.core.v1.PodList"),
        meta_list=full("k8s.io.apimachinery.pkg.apis.meta.v1.PartialObjectMetadataList"),
        slim_unknown=slim("podforms.Unknown"),
        slim_pod_list=slim("podforms.PodList"),
        implementation=api_implementation.Type(),
        source=f"k8s.io/api@{gover} core/v1 generated.proto",
    )


def _pb_pods(items: Any, with_spec: bool = True) -> list[Pod]:
    out = []
    for p in items:
        m = p.metadata
        o = next((r for r in m.ownerReferences if r.controller), None)
        node = p.spec.nodeName if with_spec else ""
        ip = p.status.podIP if with_spec else ""
        out.append(
            Pod(
                namespace=sys.intern(m.namespace),
                name=m.name,
                node_name=sys.intern(node) if node else None,
                ip=sys.intern(ip) if ip else None,
                owner_kind=sys.intern(o.kind) if o else None,
                owner_name=sys.intern(o.name) if o else None,
                terminating=m.HasField("deletionTimestamp"),
                phase=(sys.intern(p.status.phase) or None) if with_spec else None,
            )
        )
    return out


def _unwrap(unknown: Any, body: bytes) -> bytes:
    if body[:4] != b"k8s\x00":
        raise ValueError("not a Kubernetes protobuf body")
    return unknown.FromString(body[4:]).raw


def protobuf_continue(pb: Protobuf) -> Callable[[bytes], str]:
    """The continue token of a protobuf list page (PodList or PartialObjectMetadataList)."""

    def token(body: bytes) -> str:
        return getattr(
            pb.slim_pod_list.FromString(_unwrap(pb.slim_unknown, body)).metadata, "continue"
        )

    return token


def decode_protobuf(pb: Protobuf, slim: bool) -> Callable[[bytes], list[Pod]]:
    unknown, plist = (pb.slim_unknown, pb.slim_pod_list) if slim else (pb.unknown, pb.pod_list)
    return lambda body: _pb_pods(plist.FromString(_unwrap(unknown, body)).items)


def decode_protobuf_metadata(pb: Protobuf) -> Callable[[bytes], list[Pod]]:
    return lambda body: _pb_pods(
        pb.meta_list.FromString(_unwrap(pb.unknown, body)).items, with_spec=False
    )


# --- measurements ----------------------------------------------------------------------------


@dataclass
class Form:
    name: str
    accept: str
    params: dict[str, str]
    decoders: dict[str, Callable[[bytes], list[Pod]]]
    note: str


@dataclass
class Result:
    form: str
    accept: str
    params: dict[str, str]
    status: int = 0
    error: str = ""
    pods: int = 0
    pages: int = 0
    body_bytes: int = 0
    wire_bytes: int = 0
    gzip_pages: int = 0
    list_seconds: list[float] = field(default_factory=list)
    gunzip_us_per_pod: float = 0.0
    decode_us_per_pod: dict[str, float] = field(default_factory=dict)
    fields_kept: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def body_per_pod(self) -> float:
        return self.body_bytes / self.pods if self.pods else 0.0

    @property
    def wire_per_pod(self) -> float:
        return self.wire_bytes / self.pods if self.pods else 0.0

    @property
    def list_median(self) -> float:
        return statistics.median(self.list_seconds) if self.list_seconds else 0.0


def cpu_per_call(fn: Callable[[], Any], repeat: int) -> float:
    """Best of `repeat` process-CPU seconds (the machine is shared: the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


FIELDS: dict[str, Callable[[Pod], Any]] = {
    "node": lambda p: p.node_name,
    "ip": lambda p: p.ip,
    "owner": lambda p: (p.owner_kind, p.owner_name),
    "terminating": lambda p: p.terminating,
    "done": lambda p: p.phase in POD_PHASES_DONE,
}


def kept(baseline: dict[str, Pod], pods: list[Pod]) -> dict[str, float]:
    """Share of pods whose field equals the full JSON's (1.0: nothing lost)."""
    by_name = {p.name: p for p in pods}
    out = {}
    for fname, get in FIELDS.items():
        same = sum(1 for n, b in baseline.items() if n in by_name and get(by_name[n]) == get(b))
        out[fname] = same / len(baseline) if baseline else 0.0
    return out


def measure(
    api: Api,
    path: str,
    selector: str,
    form: Form,
    limit: int,
    repeat: int,
    baseline: dict[str, Pod] | None,
) -> tuple[Result, list[Pod]]:
    params = {"labelSelector": selector, **form.params}
    res = Result(form.name, form.accept, form.params, note=form.note)
    pods: list[Pod] = []
    for _ in range(repeat):
        try:
            pages, seconds = list_all(api, path, params, form.accept, limit)
        except RuntimeError as exc:
            res.error = str(exc)[:300]
            res.status = 406 if " 406 " in str(exc) else 400
            return res, pods
        res.list_seconds.append(seconds)
    res.status = 200
    res.pages = len(pages)
    res.body_bytes = sum(len(p.body) for p in pages)
    res.wire_bytes = sum(len(p.wire) for p in pages)
    res.gzip_pages = sum(p.gzip for p in pages)
    bodies = [p.body for p in pages]
    for dname, decode in form.decoders.items():
        pods = [pod for b in bodies for pod in decode(b)]
        res.pods = len(pods)
        cpu = cpu_per_call(lambda decode=decode: [decode(b) for b in bodies], max(3, repeat))
        res.decode_us_per_pod[dname] = cpu / len(pods) * 1e6 if pods else 0.0
    if not form.decoders:
        res.pods = len(baseline or ())
    zipped = [p.wire for p in pages if p.gzip]
    if zipped and res.pods:
        cpu = cpu_per_call(lambda: [gzip.decompress(w) for w in zipped], 3)
        res.gunzip_us_per_pod = cpu / res.pods * 1e6 * len(pages) / len(zipped)
    if baseline is not None and pods:
        res.fields_kept = kept(baseline, pods)
    return res, pods


def field_selectors(api: Api, path: str, selector: str, nodes: list[str]) -> list[dict[str, Any]]:
    """What fieldSelector does here: it filters which pods come back; each one that
    comes back is as big as without it."""
    cases = [
        ("spec.nodeName=" + nodes[0], JSON, {}),
        ("spec.nodeName=" + nodes[0], TABLE, {"includeObject": "None"}),
        ("status.phase=Running", JSON, {}),
        ("status.phase!=Succeeded,status.phase!=Failed", TABLE, {"includeObject": "None"}),
        ("spec.nodeName!=", TABLE, {"includeObject": "None"}),
        ("status.podIP!=", TABLE, {"includeObject": "None"}),
        ("metadata.ownerReferences.kind=DaemonSet", JSON, {}),
        ("metadata.deletionTimestamp=", JSON, {}),
    ]
    out = []
    for fs, accept, extra in cases:
        r = api.get(path, {"labelSelector": selector, "fieldSelector": fs, **extra}, accept=accept)
        row: dict[str, Any] = {
            "fieldSelector": fs,
            "form": "table-none" if accept == TABLE else "json",
            "status": r.status,
            "seconds": round(r.seconds, 4),
        }
        if r.status == 200:
            doc = json.loads(r.body)
            n = len(doc.get("rows" if accept == TABLE else "items") or [])
            row.update(
                pods=n, body_bytes=len(r.body), body_per_pod=round(len(r.body) / n) if n else None
            )
        else:
            row["message"] = json.loads(r.body).get("message", "")[:200]
        out.append(row)
    return out


def _first_lines(
    resp: http.client.HTTPResponse, deadline: float, stop: Callable[[list[bytes]], bool]
) -> list[bytes]:
    lines: list[bytes] = []
    while time.monotonic() < deadline:
        try:
            line = resp.readline()
        except (TimeoutError, OSError):
            break
        if not line:
            break
        lines.append(line)
        if stop(lines):
            break
    return lines


def table_features(api: Api, path: str, selector: str, total: int) -> dict[str, Any]:
    """What the Table form supports, each with the evidence."""
    out: dict[str, Any] = {}
    base = {"labelSelector": selector, "includeObject": "None"}
    # limit/continue: two pages, disjoint, consistent resourceVersion, and all of them paged equal the unpaged list.
    p1 = json.loads(api.get(path, {**base, "limit": "3"}, accept=TABLE).body)
    cont = p1["metadata"].get("continue", "")
    p2 = json.loads(api.get(path, {**base, "limit": "3", "continue": cont}, accept=TABLE).body)
    names1 = [r["cells"][0] for r in p1["rows"]]
    names2 = [r["cells"][0] for r in p2["rows"]]
    out["limit_continue"] = {
        "works": bool(cont) and len(names1) == 3 and not set(names1) & set(names2),
        "remainingItemCount": p1["metadata"].get("remainingItemCount"),
        "same_resourceVersion": p1["metadata"]["resourceVersion"]
        == p2["metadata"]["resourceVersion"],
        "columnDefinitions_on_page_2": len(p2.get("columnDefinitions") or []),
    }
    unpaged = json.loads(api.get(path, base, accept=TABLE).body)
    out["labelSelector"] = {
        "works": len(unpaged["rows"]) == total,
        "rows": len(unpaged["rows"]),
        "json_items": total,
    }
    rv0 = api.get(path, {**base, "resourceVersion": "0", "limit": "3"}, accept=TABLE)
    rv = p1["metadata"]["resourceVersion"]
    exact = api.get(
        path,
        {**base, "resourceVersion": rv, "resourceVersionMatch": "Exact", "limit": "3"},
        accept=TABLE,
    )
    out["resourceVersion"] = {
        "rv=0 (watch cache)": {
            "status": rv0.status,
            "rows": len(json.loads(rv0.body).get("rows") or []) if rv0.status == 200 else None,
            "continue": bool(json.loads(rv0.body).get("metadata", {}).get("continue"))
            if rv0.status == 200
            else None,
        },
        "rv=N&resourceVersionMatch=Exact": {"status": exact.status},
    }
    protobuf_table = api.get(path, base, accept=TABLE.replace(JSON, PROTOBUF))
    out["protobuf_table"] = {
        "status": protobuf_table.status,
        "message": json.loads(protobuf_table.body).get("message", "")[:200]
        if protobuf_table.status != 200
        else "",
    }
    watch_meta = None
    # watch=true in Table form: events after the first lack columnDefinitions; each event's Table has metadata.resourceVersion.
    with api.stream(
        path,
        {
            **base,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "sendInitialEvents": "true",
            "resourceVersionMatch": "NotOlderThan",
            "timeoutSeconds": "5",
        },
        TABLE,
        15,
    ) as resp:
        ctype = resp.getheader("Content-Type")
        lines = _first_lines(resp, time.monotonic() + 12, lambda ls: b'"BOOKMARK"' in ls[-1])
    events = [json.loads(x) for x in lines if x.strip()]
    types: dict[str, int] = {}
    for e in events:
        types[e["type"]] = types.get(e["type"], 0) + 1
    bookmark = next((e for e in events if e["type"] == "BOOKMARK"), None)
    out["watch_sendInitialEvents"] = {
        "status": resp.status,
        "content_type": ctype,
        "events": types,
        "initial_rows": sum(
            len(e["object"].get("rows") or []) for e in events if e["type"] == "ADDED"
        ),
        "columnDefinitions_in_event": [
            len(e["object"].get("columnDefinitions") or []) for e in events[:3]
        ],
        "event_table_has_resourceVersion": all(
            e["object"].get("metadata", {}).get("resourceVersion") for e in events
        ),
        "bookmark": bookmark,
    }
    with api.stream(
        path,
        {"labelSelector": selector, "watch": "true", "resourceVersion": rv, "timeoutSeconds": "1"},
        METADATA_ONE,
        10,
    ) as resp:
        watch_meta = {"status": resp.status, "content_type": resp.getheader("Content-Type")}
    out["metadata_watch_as_PartialObjectMetadata"] = watch_meta
    return out


# --- capture ---------------------------------------------------------------------------------


def _capture_pod(name: str, node: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": CAPTURE_NS,
            "labels": {CAPTURE_LABEL: "1"},
            "ownerReferences": [owner],
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "node-exporter",
                    "image": "quay.io/prometheus/node-exporter:v1.9.1",
                    "ports": [{"name": "metrics", "containerPort": 9100, "hostPort": 9100}],
                }
            ],
        },
    }


def _wait(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("capture: the cluster did not get there in time")
        time.sleep(0.2)


def capture(api: Api, path: str, selector: str, out: Path, nodes: list[str]) -> list[str]:
    """Small real answers, byte for byte; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name: str, data: bytes) -> None:
        (out / name).write_bytes(data)
        written.append(str(out / name))

    for name, accept, extra in (
        ("list_pods_table.json", TABLE, {"includeObject": "None"}),
        ("list_pods_table_metadata.json", TABLE, {"includeObject": "Metadata"}),
        ("list_pods_metadata.json", METADATA_LIST, {}),
    ):
        r = api.get(
            path, {"labelSelector": selector, "limit": "3", **extra}, accept=accept, gzip_ok=False
        )
        assert r.status == 200, r.body[:300]
        save(name, r.body)

    ns_path = f"/api/v1/namespaces/{CAPTURE_NS}"
    if api.get(ns_path, gzip_ok=False).status == 200:
        api.request("DELETE", ns_path, gzip_ok=False)
        _wait(lambda: api.get(ns_path, gzip_ok=False).status == 404, 60)
    api.ok(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CAPTURE_NS}},
    )
    try:
        ds = api.ok(
            "POST",
            f"/apis/apps/v1/namespaces/{CAPTURE_NS}/daemonsets",
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": "node-exporter"},
                "spec": {
                    "selector": {"matchLabels": {CAPTURE_LABEL: "1"}},
                    "template": {
                        "metadata": {"labels": {CAPTURE_LABEL: "1"}},
                        "spec": {"containers": [{"name": "c", "image": "x"}]},
                    },
                },
            },
        )
        ds_owner = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "name": "node-exporter",
            "uid": ds["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        # kwok completes Running pods owned by a Job (testbed/kwok-stages.yaml pod-complete): a done phase.
        job_owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "capture-job",
            "uid": "00000000-0000-0000-0000-000000000001",
            "controller": True,
        }
        pods = f"{ns_path}/pods"
        api.ok("POST", pods, _capture_pod("node-exporter-steady", nodes[0], ds_owner))

        def phase(name: str) -> str:
            r = api.get(f"{pods}/{name}", gzip_ok=False)
            return (
                json.loads(r.body).get("status", {}).get("phase", "") if r.status == 200 else "gone"
            )

        _wait(lambda: phase("node-exporter-steady") == "Running")
        rv = json.loads(api.get(pods, {"labelSelector": f"{CAPTURE_LABEL}=1"}, gzip_ok=False).body)[
            "metadata"
        ]["resourceVersion"]
        streams: dict[str, bytes] = {}

        def watch(name: str, include: str) -> None:
            q = {
                "labelSelector": f"{CAPTURE_LABEL}=1",
                "watch": "true",
                "allowWatchBookmarks": "true",
                "resourceVersion": rv,
                "includeObject": include,
                "timeoutSeconds": "12",
            }
            with api.stream(pods, q, TABLE, 30) as resp:
                streams[name] = resp.read()

        threads = [
            threading.Thread(target=watch, args=("watch_pods_table.jsonl", "None")),
            threading.Thread(target=watch, args=("watch_pods_table_metadata.jsonl", "Metadata")),
        ]
        for t in threads:
            t.start()
        time.sleep(1)
        api.ok("POST", pods, _capture_pod("node-exporter-moved", nodes[1], ds_owner))
        api.ok("POST", pods, _capture_pod("capture-job-pod", nodes[2], job_owner))
        _wait(
            lambda: (
                phase("node-exporter-moved") == "Running"
                and phase("capture-job-pod") == "Succeeded"
            )
        )
        api.ok("DELETE", f"{pods}/node-exporter-moved", params={"gracePeriodSeconds": "30"})
        _wait(lambda: phase("node-exporter-moved") == "gone")
        api.ok("DELETE", f"{pods}/capture-job-pod", params={"gracePeriodSeconds": "0"})
        for t in threads:
            t.join(40)
        for name, data in sorted(streams.items()):
            save(name, data)
        # A watch-list (sendInitialEvents): the initial rows, then the BOOKMARK that ends them.
        q = {
            "labelSelector": f"{CAPTURE_LABEL}=1",
            "watch": "true",
            "allowWatchBookmarks": "true",
            "sendInitialEvents": "true",
            "resourceVersionMatch": "NotOlderThan",
            "includeObject": "None",
            "timeoutSeconds": "2",
        }
        with api.stream(pods, q, TABLE, 30) as resp:
            save("watch_pods_table_initial.jsonl", resp.read())
    finally:
        api.request("DELETE", ns_path, gzip_ok=False)
    return written


# --- report ----------------------------------------------------------------------------------


def _fmt_kept(k: dict[str, float]) -> str:
    if not k:
        return ""
    return ", ".join(
        f"{f} {'ok' if v == 1 else 'LOST' if v == 0 else f'{v:.0%}'}" for f, v in k.items()
    )


def markdown(report: dict[str, Any]) -> str:
    n = report["extrapolate"]
    lines = [
        f"kube-apiserver {report['server_version']}, {report['pods']} pods (`{report['namespace']}` `{report['selector']}`), "
        f"pages of {report['page_limit']}, {report['repeat']} LISTs per form (median wall), decode = best of CPU runs into `Pod` objects; "
        f"load average {report['loadavg']}; protobuf: {report['protobuf']}",
        "",
        f"| form | body B/pod | gzip B/pod | gzip pages | LIST wall (s) | decode µs/pod | gunzip µs/pod | body at {n:,} | gzip at {n:,} | LIST wall at {n:,} (s) | decode CPU at {n:,} (s) | fields vs full JSON |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in report["forms"]:
        if r["status"] != 200:
            lines.append(
                f"| {r['form']} | HTTP {r['status']}: {r['error'][:90]} | | | | | | | | | | |"
            )
            continue
        dec = "; ".join(f"{k} {v:.2f}" for k, v in r["decode_us_per_pod"].items()) or "not decoded"
        dec_n = "; ".join(f"{k} {v * n / 1e6:.1f}" for k, v in r["decode_us_per_pod"].items()) or ""
        scale = n / r["pods"] if r["pods"] else 0
        lines.append(
            f"| {r['form']} | {r['body_per_pod']:.0f} | {r['wire_per_pod']:.0f} | {r['gzip_pages']}/{r['pages']} | {r['list_median']:.3f} | {dec} | {r['gunzip_us_per_pod']:.2f} | "
            f"{r['body_per_pod'] * n / 1e6:.0f} MB | {r['wire_per_pod'] * n / 1e6:.1f} MB | {r['list_median'] * scale:.1f} | {dec_n} | {_fmt_kept(r['fields_kept'])} |"
        )
    lines += [
        "",
        "Field selectors (one request each; they filter, they do not project):",
        "",
        "| fieldSelector | form | HTTP | pods | body B/pod | note |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for f in report["field_selectors"]:
        lines.append(
            f"| `{f['fieldSelector']}` | {f['form']} | {f['status']} | {f.get('pods', '')} | {f.get('body_per_pod') or ''} | {f.get('message', '')} |"
        )
    lines += [
        "",
        "Table form:",
        "",
        "```json",
        json.dumps(report["table_features"], indent=1),
        "```",
    ]
    if report.get("captured"):
        lines += ["", "Captured: " + ", ".join(report["captured"])]
    return "\n".join(lines)


def default_kubeconfig() -> Path:
    if os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
    state = Path(os.environ.get("TESTBED_STATE_DIR") or REPO / "testbed" / "state")
    return state / "kubeconfig"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="default: $KUBECONFIG, else $TESTBED_STATE_DIR or testbed/state kubeconfig",
    )
    ap.add_argument("--namespace", default="monitoring")
    ap.add_argument(
        "--selector",
        default="app.kubernetes.io/name=node-exporter",
        help="the Service selector, as labelSelector",
    )
    ap.add_argument(
        "--page-limit", type=int, default=500, help="LIST page size (the reflector's; 0 = unpaged)"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="full LISTs per form (median) and decode runs (best)"
    )
    ap.add_argument(
        "--extrapolate", type=int, default=100_000, help="pods to extrapolate to, linearly per pod"
    )
    ap.add_argument(
        "--proto-dir",
        type=Path,
        default=None,
        help="a tree with k8s.io/api and k8s.io/apimachinery (default: the Go module cache via go mod download)",
    )
    ap.add_argument("--no-protobuf-decode", action="store_true")
    ap.add_argument(
        "--capture",
        type=Path,
        default=None,
        help="also write small real Table/metadata answers into this directory",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    args.repeat = max(1, min(args.repeat, 20))

    api = Api(args.kubeconfig or default_kubeconfig())
    version = json.loads(api.get("/version").body)["gitVersion"]
    path = f"/api/v1/namespaces/{args.namespace}/pods"
    work = Path(tempfile.mkdtemp(prefix="pod-forms-"))
    try:
        pb = "skipped" if args.no_protobuf_decode else load_protobuf(version, args.proto_dir, work)
        forms = [
            Form(
                "json",
                JSON,
                {},
                {"msgspec (k8s_parse.PODS)": decode_json_full},
                "the exporter today",
            ),
            Form(
                "metadata",
                METADATA_LIST,
                {},
                {"msgspec": decode_metadata},
                "PartialObjectMetadataList",
            ),
            Form(
                "table-none",
                TABLE,
                {"includeObject": "None"},
                {"msgspec": decode_table(args.namespace)},
                "cells only",
            ),
            Form(
                "table-none-big-pages",
                TABLE,
                {"includeObject": "None"},
                {"msgspec": decode_table(args.namespace)},
                "pages of 4 x --page-limit: kube-apiserver gzips only bodies of 128 KiB or more",
            ),
            Form(
                "table-metadata",
                TABLE,
                {"includeObject": "Metadata"},
                {"msgspec": decode_table(args.namespace)},
                "cells + PartialObjectMetadata",
            ),
        ]
        pb_forms = [
            Form("protobuf", PROTOBUF, {}, {}, "PodList"),
            Form(
                "protobuf-metadata",
                METADATA_LIST.replace(JSON, PROTOBUF),
                {},
                {},
                "PartialObjectMetadataList",
            ),
            Form(
                "protobuf-table",
                TABLE.replace(JSON, PROTOBUF),
                {"includeObject": "None"},
                {},
                "Table has no protobuf",
            ),
        ]
        if isinstance(pb, Protobuf):
            global _PB_CONTINUE
            _PB_CONTINUE = protobuf_continue(pb)
            pb_forms[0].decoders = {
                "protobuf-full": decode_protobuf(pb, slim=False),
                "protobuf-slim": decode_protobuf(pb, slim=True),
            }
            pb_forms[1].decoders = {"protobuf-full": decode_protobuf_metadata(pb)}
            pb_note = f"{pb.source}, python protobuf {pb.implementation}"
        else:
            pb_note = f"bytes only ({pb}); unpaged (no continue token without a decoder)"
        results = []
        baseline: dict[str, Pod] | None = None
        for form in forms + pb_forms:
            limit = args.page_limit if (form.decoders or form.accept.startswith(JSON)) else 0
            if form.name == "table-none-big-pages":
                limit = 4 * args.page_limit
            res, pods = measure(api, path, args.selector, form, limit, args.repeat, baseline)
            if baseline is None:
                baseline = {p.name: p for p in pods}
            results.append(res)
        assert baseline, f"no pods match {args.selector} in {args.namespace}"
        nodes = sorted({p.node_name for p in baseline.values() if p.node_name})
        report: dict[str, Any] = {
            "server_version": version,
            "namespace": args.namespace,
            "selector": args.selector,
            "pods": len(baseline),
            "page_limit": args.page_limit,
            "repeat": args.repeat,
            "extrapolate": args.extrapolate,
            "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "protobuf": pb_note,
            "forms": [
                {
                    **r.__dict__,
                    "body_per_pod": r.body_per_pod,
                    "wire_per_pod": r.wire_per_pod,
                    "list_median": r.list_median,
                }
                for r in results
            ],
            "field_selectors": field_selectors(api, path, args.selector, nodes),
            "table_features": table_features(api, path, args.selector, len(baseline)),
        }
        if args.capture:
            report["captured"] = capture(api, path, args.selector, args.capture, nodes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
