"""What the exporter costs the servers it reads (issue #24), measured on the
real ones: the testbed's kube-apiserver v1.36 (kwok Nodes, the real
endpoints, EndpointSlice and mirroring controllers) and a real Prometheus
3.16 running the scrape pools the Prometheus Operator generates for the
kube-prometheus kubelet (4 pools) and node-exporter ServiceMonitors.

One run, in this order, every window measured the same way:

1. the testbed's control plane at N nodes (no testbed Prometheus: the
   harness starts its own), kube-apiserver writing an audit log of reads
   (verb, URI, user agent), the kube-prometheus shape (kubelet Endpoints of
   every node, node-exporter's truncated at 1000; the testbed's
   kubelet-skip-mirror variant removed, the kubelet ServiceMonitor would
   select it too); then an idle window (the background: kwok, controllers);
2. ``prometheus_discovery``: Prometheus 3.16 started, until every pool holds
   its expected active targets, plus --tail;
3. ``exporter_initial_sync``: ``coverage-exporter serve`` (default flags)
   started, until ``/-/ready``, plus --tail;
4. ``prometheus_discovery_warm``: a second Prometheus 3.16 started and
   measured like the first, then stopped: the apiserver has by then served
   the exporter's lists, so the exporter is compared with a Prometheus in
   the same conditions as well as with the first;
5. ``steady_with_exporter`` (--steady long, the exporter at default flags:
   a cycle a minute, a full re-read every 10 min), ``steady_without_exporter``
   (the exporter stopped, same length), and ``full_rereads`` (the exporter
   restarted with ``--prometheus-full-refresh-interval 0 --interval
   --reread-interval``: every cycle re-reads every pool; same length).

For each window: the apiserver's CPU-seconds (/proc/<pid>/stat and
process_cpu_seconds_total), its peak RSS in the window (VmHWM reset through
/proc/<pid>/clear_refs) and heap (go_memstats_heap_inuse_bytes, before and
after), the deltas of apiserver_request_total and
apiserver_request_duration_seconds by verb and resource,
apiserver_watch_events_total and _sizes by kind, the watch cache's and
storage's list counters (which answered the LISTs), and the audit log's
requests per client (user agent) with each LIST's query. For the
Prometheus under test: its CPU-seconds (/proc) and
go_memstats_heap_inuse_bytes sampled every --sample-interval, and its HTTP
requests by handler. Figures are printed and written as JSON (--out); no
threshold is asserted anywhere.

Everything binds 127.0.0.1; scrapes go through the testbed's closed
loopback proxy. Bounded: --max-minutes for the whole run (the testbed is
stopped on the way out, whatever happens). Run under the shared lock:

    flock /tmp/e2e.lock .venv/bin/python -m bench.server_cost --nodes 2000
    flock /tmp/e2e.lock .venv/bin/python -m bench.server_cost --nodes 15000 --steady 10m
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from prometheus_client.parser import text_string_to_metric_families
from testbed import procs, scenarios
from testbed.cluster import Cluster, find_binaries

from bench import dataset
from bench.run import exporter_cmd, exporter_env, exporter_revision, log, proc_cpu
from bench.server_cost_goals import per_goal

CLK_TCK = os.sysconf("SC_CLK_TCK")
EXPORTER_UA = "coverage-exporter/"
PROMETHEUS_UA = "Prometheus/"
# The testbed's node-exporter Service (labels, port name) in place of
# kube-prometheus's; the kubelet ServiceMonitor is kube-prometheus's own.
NODE_EXPORTER_SM = {
    **dataset.NODE_EXPORTER_SM,
    "selector": dict(scenarios.NODE_EXPORTER_LABELS),
    "port": "metrics",
}
KUBELET_POOLS = [f"serviceMonitor/monitoring/kubelet/{i}" for i in range(4)]
NODE_EXPORTER_POOL = "serviceMonitor/monitoring/node-exporter/0"
# Apiserver series kept per window (counters as deltas, gauges before/after).
API_COUNTERS = (
    "apiserver_request_total",
    "apiserver_request_duration_seconds_sum",
    "apiserver_request_duration_seconds_count",
    "apiserver_response_sizes_sum",
    "apiserver_response_sizes_count",
    "apiserver_watch_events_total",
    "apiserver_watch_events_sizes_sum",
    "apiserver_watch_events_sizes_count",
    "apiserver_cache_list_total",
    "apiserver_cache_list_fetched_objects_total",
    "apiserver_cache_list_returned_objects_total",
    "apiserver_storage_list_total",
    "apiserver_storage_list_fetched_objects_total",
    "apiserver_storage_list_returned_objects_total",
    "apiserver_watch_cache_consistent_read_total",
    "apiserver_watch_list_duration_seconds_count",
    "apiserver_watch_list_duration_seconds_sum",
    "process_cpu_seconds_total",
)
API_GAUGES = (
    "process_resident_memory_bytes",
    "go_memstats_heap_inuse_bytes",
    "apiserver_longrunning_requests",
)
# Group the per-series deltas by these labels when printing and in "by".
GROUP_BY = {
    "apiserver_request_total": ("verb", "resource"),
    "apiserver_request_duration_seconds_sum": ("verb", "resource"),
    "apiserver_request_duration_seconds_count": ("verb", "resource"),
    "apiserver_response_sizes_sum": ("verb", "resource"),
    "apiserver_response_sizes_count": ("verb", "resource"),
    "apiserver_watch_events_total": ("resource",),
    "apiserver_watch_events_sizes_sum": ("resource",),
    "apiserver_watch_events_sizes_count": ("resource",),
    "apiserver_cache_list_total": ("resource",),
    "apiserver_cache_list_fetched_objects_total": ("resource",),
    "apiserver_cache_list_returned_objects_total": ("resource",),
    "apiserver_storage_list_total": ("resource",),
    "apiserver_storage_list_fetched_objects_total": ("resource",),
    "apiserver_storage_list_returned_objects_total": ("resource",),
    "apiserver_watch_cache_consistent_read_total": ("resource", "fallback", "success"),
    "apiserver_watch_list_duration_seconds_count": ("resource",),
    "apiserver_watch_list_duration_seconds_sum": ("resource",),
    "apiserver_longrunning_requests": ("verb", "resource"),
    "prometheus_http_requests_total": ("handler",),
    "prometheus_http_request_duration_seconds_sum": ("handler",),
    "prometheus_http_response_size_bytes_sum": ("handler",),
}
# The Prometheus under test: requests, time spent serving them and bytes
# sent, per handler (what the exporter asked for, and what it cost).
PROM_COUNTERS = (
    "prometheus_http_requests_total",
    "prometheus_http_request_duration_seconds_sum",
    "prometheus_http_response_size_bytes_sum",
)


class Timeout(Exception):
    pass


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


# --- /proc -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0, clear_refs 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- metrics -----------------------------------------------------------------


def parse_series(text: str, names: tuple[str, ...]) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, for samples named in names."""
    out: dict[tuple[str, tuple], float] = {}
    wanted = set(names)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def grouped(series: dict[tuple[str, tuple], float]) -> dict[str, dict[str, float]]:
    """name -> "label=value,..." (the GROUP_BY labels) -> summed value; zeros
    left out."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (name, labels), value in series.items():
        keys = GROUP_BY.get(name, ())
        d = dict(labels)
        group = ",".join(f"{k}={d.get(k, '')}" for k in keys) or "all"
        out[name][group] += value
    return {
        n: {g: round(v, 6) for g, v in sorted(groups.items()) if v}
        for n, groups in sorted(out.items())
    }


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


class ApiServer:
    """The testbed's kube-apiserver: its pid, /metrics and audit log."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        pid = cluster.pid("kube-apiserver")
        if pid is None:
            raise RuntimeError("kube-apiserver is not running")
        self.pid = pid
        self.ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
        self.audit = cluster.audit_log_path

    def metrics(self) -> dict[tuple[str, tuple], float]:
        status, body = procs.http_get(
            f"{self.cluster.api_url}/metrics", token=self.cluster.token, ctx=self.ctx, timeout=60
        )
        if status != 200:
            raise RuntimeError(f"kube-apiserver /metrics: HTTP {status}")
        return parse_series(body.decode(), API_COUNTERS + API_GAUGES)

    def audit_offset(self) -> int:
        assert self.audit is not None
        return self.audit.stat().st_size if self.audit.exists() else 0


def audit_requests(path: Path, start: int, end: int) -> dict[str, Any]:
    """Requests in the audit log between two byte offsets, per client (user
    agent up to its first '/'): counts by verb and resource (a LIST counted
    when it completes, a WATCH when its response starts), and each LIST's
    and WATCH's query parameters that decide how the apiserver serves it."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(max(0, end - start))
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    queries: dict[str, Counter[str]] = defaultdict(Counter)
    for line in data.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        verb, stage = ev.get("verb"), ev.get("stage")
        if (verb == "watch") != (stage == "ResponseStarted"):
            continue
        ua = ev.get("userAgent") or "?"
        client = ua.split("/", 1)[0] or "?"
        resource = (ev.get("objectRef") or {}).get("resource") or urlsplit(
            ev.get("requestURI", "")
        ).path
        counts[client][f"{verb} {resource}"] += 1
        if verb in ("list", "watch"):
            q = parse_qs(urlsplit(ev.get("requestURI", "")).query)
            shown = {
                k: q[k][0]
                for k in ("resourceVersion", "resourceVersionMatch", "sendInitialEvents")
                if k in q
            }
            if "limit" in q:
                shown["limit"] = "set"
            if "continue" in q:
                shown["continue"] = "set"
            desc = ",".join(f"{k}={v}" for k, v in sorted(shown.items())) or "(none)"
            queries[client][f"{verb} {resource} {desc}"] += 1
    return {
        "by_client": {c: dict(sorted(v.items())) for c, v in sorted(counts.items())},
        "queries": {c: dict(sorted(v.items())) for c, v in sorted(queries.items())},
    }


# --- the Prometheus under test -------------------------------------------------


def prometheus_config(
    api_url: str, token_file: Path, ca_file: Path, proxy_url: str, scrape_interval: str | None
) -> dict[str, Any]:
    """The Operator's jobs for the kube-prometheus kubelet and node-exporter
    ServiceMonitors (one shard: bench/dataset.py's definition, checked
    against the real Operator's), pointed at the testbed: its apiserver with
    the admin token, every scrape through the closed loopback proxy.
    scrape_interval: every job's interval (None: kube-prometheus's own,
    5 s to 30 s)."""
    jobs = yaml.safe_load(
        "\n".join(dataset.operator_jobs("endpoints", 1, 0, node_exporter_sm=NODE_EXPORTER_SM))
    )
    for job in jobs:
        sd = job["kubernetes_sd_configs"][0]
        sd.pop("kubeconfig_file", None)
        sd["api_server"] = api_url
        sd["authorization"] = {"credentials_file": str(token_file)}
        sd["tls_config"] = {"ca_file": str(ca_file)}
        job["authorization"] = {"credentials_file": str(token_file)}
        job["proxy_url"] = proxy_url
        if scrape_interval:
            job["scrape_interval"] = scrape_interval
            job["scrape_timeout"] = (
                "10s" if parse_duration(scrape_interval) >= 10 else (scrape_interval)
            )
    return {
        "global": {
            "scrape_interval": "30s",
            "scrape_timeout": "10s",
            "evaluation_interval": "30s",
            "external_labels": {
                "prometheus": "monitoring/k8s",
                "prometheus_replica": "prometheus-k8s-0",
            },
        },
        "scrape_configs": jobs,
    }


def expected_pools(n: int) -> dict[str, int]:
    """Active targets per pool with role endpoints: the kubelet Endpoints
    hold every node; node-exporter's is cut at 1000 by the controller."""
    return {
        **{p: n for p in KUBELET_POOLS},
        NODE_EXPORTER_POOL: min(n, scenarios.ENDPOINTS_CAP),
    }


class Prometheus:
    def __init__(self, cluster: Cluster, workdir: Path, name: str, scrape_interval: str | None):
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "prometheus.yml"
        cfg = prometheus_config(
            cluster.api_url,
            cluster.token_file,
            cluster.ca_file,
            cluster.scrape_proxy,
            scrape_interval,
        )
        self.config.write_text(yaml.safe_dump(cfg))
        self.port = procs.free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.binary = find_binaries(("3",)).prometheus["3"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Default flags but the addresses and paths: what is measured is
        # Prometheus as it ships.
        argv = [
            str(self.binary),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc = procs.spawn(argv, self.dir / "prometheus.log", cwd=self.dir)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics_text(self) -> str:
        status, body = procs.http_get(f"{self.url}/metrics", timeout=30)
        if status != 200:
            raise RuntimeError(f"{self.name} /metrics: HTTP {status}")
        return body.decode()

    def pool_targets(self) -> dict[str, float]:
        series = parse_series(self.metrics_text(), ("prometheus_target_scrape_pool_targets",))
        return {dict(labels).get("scrape_job", ""): v for (_, labels), v in series.items()}

    def heap_inuse(self) -> float | None:
        series = parse_series(self.metrics_text(), ("go_memstats_heap_inuse_bytes",))
        return next(iter(series.values()), None)

    def http_requests(self) -> dict[tuple[str, tuple], float]:
        return parse_series(self.metrics_text(), PROM_COUNTERS)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir / "data")


class Exporter:
    def __init__(self, cluster: Cluster, workdir: Path, prom: Prometheus, extra: list[str]):
        self.port = procs.free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            *exporter_cmd(),
            "serve",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--prometheus-url",
            f"prometheus-k8s-0={prom.url}",
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            *extra,
        ]
        self.log_path = workdir / f"exporter-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in exporter_env().items() if "proxy" not in k.lower()}
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent,
                env=env,
                start_new_session=True,
            )

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"exporter exited: {tail}")
        return procs.http_get(f"{self.url}/-/ready", timeout=5)[0] == 200

    def cycles(self) -> float:
        status, body = procs.http_get(f"{self.url}/metrics", timeout=10)
        if status != 200:
            return float("nan")
        for line in body.decode().splitlines():
            if line.startswith("scrape_coverage_cycles_total "):
                return float(line.split()[1])
        return float("nan")

    def cpu(self) -> float:
        assert self.proc is not None
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- windows -------------------------------------------------------------------


class Sampler:
    """Samples callables every `every` seconds in a thread (RSS, heap)."""

    def __init__(self, every: float, probes: dict[str, Callable[[], float | None]]) -> None:
        self.every = every
        self.probes = probes
        self.samples: dict[str, list[float]] = {k: [] for k in probes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, fn in self.probes.items():
                with contextlib.suppress(Exception):
                    v = fn()
                    if v is not None:
                        self.samples[k].append(v)
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


class Run:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, workdir: Path) -> None:
        self.args = args
        self.cluster = cluster
        self.workdir = workdir
        self.api = ApiServer(cluster)
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.windows: dict[str, dict[str, Any]] = {}

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise Timeout(f"--max-minutes {self.args.max_minutes} reached")

    def wait(self, what: str, cond: Callable[[], bool], timeout: float) -> None:
        end = min(time.monotonic() + timeout, self.deadline)
        while not cond():
            if time.monotonic() > end:
                self.check_deadline()
                raise Timeout(f"{what} not reached in {timeout:.0f} s")
            time.sleep(0.1)

    @contextlib.contextmanager
    def window(self, name: str, prom: Prometheus | None = None) -> Iterator[dict[str, Any]]:
        """Measures the apiserver (and prom, if given) from entry to exit;
        the body adds its own figures to the dict it gets."""
        self.check_deadline()
        log(f"window {name}")
        out: dict[str, Any] = {}
        api_pid = self.api.pid
        m0 = self.api.metrics()
        a0 = self.api.audit_offset()
        hwm_reset = reset_peak_rss(api_pid)
        rss0 = status_mb(api_pid, "VmRSS:")
        c0 = cpu_seconds(api_pid)
        probes: dict[str, Callable[[], float | None]] = {
            "api_rss_mb": lambda: status_mb(api_pid, "VmRSS:")
        }
        p0: dict[str, Any] = {}
        if prom is not None and prom.proc is not None:
            probes["prom_heap_inuse"] = prom.heap_inuse
            probes["prom_rss_mb"] = lambda: status_mb(prom.pid, "VmRSS:")
            p0 = {
                "cpu": cpu_seconds(prom.pid),
                "http": prom.http_requests(),
                "hwm_reset": reset_peak_rss(prom.pid),
            }
        t0 = time.monotonic()
        with Sampler(self.args.sample_interval, probes) as sampler:
            yield out
        wall = time.monotonic() - t0
        c1 = cpu_seconds(api_pid)
        m1 = self.api.metrics()
        a1 = self.api.audit_offset()
        counters = {k: v for k, v in delta(m1, m0).items() if k[0] in API_COUNTERS}
        gauges_before = grouped({k: v for k, v in m0.items() if k[0] in API_GAUGES})
        gauges_after = grouped({k: v for k, v in m1.items() if k[0] in API_GAUGES})
        api_rss = sampler.samples["api_rss_mb"]
        out.update(
            {
                "wall_s": round(wall, 3),
                "apiserver": {
                    "cpu_s": round(c1 - c0, 3),
                    "cpu_s_metric": round(
                        sum(v for k, v in counters.items() if k[0] == "process_cpu_seconds_total"),
                        3,
                    ),
                    "rss_mb_start": round(rss0, 1),
                    "rss_mb_end": round(status_mb(api_pid, "VmRSS:"), 1),
                    "rss_mb_peak_sampled": round(max(api_rss, default=rss0), 1),
                    "rss_mb_peak_hwm": round(status_mb(api_pid, "VmHWM:"), 1)
                    if hwm_reset
                    else None,
                    "heap_inuse_mb_start": _mb(gauges_before, "go_memstats_heap_inuse_bytes"),
                    "heap_inuse_mb_end": _mb(gauges_after, "go_memstats_heap_inuse_bytes"),
                    "watches_open_end": gauges_after.get("apiserver_longrunning_requests", {}),
                    "deltas": grouped(counters),
                },
                "audit": audit_requests(self.api.audit, a0, a1) if self.api.audit else None,
            }
        )
        if p0 and prom is not None:
            heap = sampler.samples["prom_heap_inuse"]
            http = grouped(delta(prom.http_requests(), p0["http"]))
            out["prometheus"] = {
                "cpu_s": round(cpu_seconds(prom.pid) - p0["cpu"], 3),
                "heap_inuse_mb_median": round(statistics.median(heap) / 2**20, 1) if heap else None,
                "heap_inuse_mb_max": round(max(heap) / 2**20, 1) if heap else None,
                "heap_inuse_mb_min": round(min(heap) / 2**20, 1) if heap else None,
                "heap_samples": len(heap),
                "rss_mb_peak_hwm": round(status_mb(prom.pid, "VmHWM:"), 1)
                if p0["hwm_reset"]
                else None,
                "http_requests": {
                    k.removeprefix("handler="): v
                    for k, v in http.get("prometheus_http_requests_total", {}).items()
                },
                "http_seconds": {
                    k.removeprefix("handler="): v
                    for k, v in http.get("prometheus_http_request_duration_seconds_sum", {}).items()
                },
                "http_bytes": {
                    k.removeprefix("handler="): v
                    for k, v in http.get("prometheus_http_response_size_bytes_sum", {}).items()
                },
            }
        self.windows[name] = out


def _mb(groups: dict[str, dict[str, float]], name: str) -> float | None:
    v = sum(groups.get(name, {}).values())
    return round(v / 2**20, 1) if v else None


# --- the run ---------------------------------------------------------------------


def kube_prometheus_shape(kube: Any) -> None:
    """Removes the testbed's kubelet-skip-mirror variant (Service, Endpoints
    and its Operator-style slices): the kubelet ServiceMonitor selects
    app.kubernetes.io/name=kubelet, which it carries too."""
    ns, name = scenarios.KUBE_SYSTEM, scenarios.KUBELET_SKIP_MIRROR
    for s in scenarios.list_endpointslices(kube, ns, name):
        kube.delete(
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{s['metadata']['name']}"
        )
    kube.delete(f"/api/v1/namespaces/{ns}/services/{name}")
    kube.delete(f"/api/v1/namespaces/{ns}/endpoints/{name}")


def discovery_window(run: Run, name: str, prom: Prometheus, n: int) -> None:
    want = expected_pools(n)
    with run.window(name) as w:
        t0 = time.monotonic()
        prom.start()
        run.wait(f"{prom.name} ready", lambda: procs.http_get(f"{prom.url}/-/ready")[0] == 200, 120)
        last: dict[str, float] = {}

        def discovered() -> bool:
            nonlocal last
            try:
                last = prom.pool_targets()
            except (RuntimeError, ValueError):
                return False
            return all(last.get(p) == v for p, v in want.items())

        run.wait(f"{prom.name} discovery ({want})", discovered, run.args.discovery_timeout)
        w["discovered_s"] = round(time.monotonic() - t0, 3)
        w["pool_targets"] = last
        time.sleep(run.args.tail)
        w["prometheus_cpu_s"] = round(cpu_seconds(prom.pid), 3)


def sync_window(run: Run, exporter: Exporter, prom: Prometheus) -> None:
    with run.window("exporter_initial_sync") as w:
        t0 = time.monotonic()
        exporter.start()
        run.wait("exporter /-/ready", exporter.ready, run.args.sync_timeout)
        w["ready_s"] = round(time.monotonic() - t0, 3)
        time.sleep(run.args.tail)
        w["exporter_cpu_s"] = round(exporter.cpu(), 3)


def steady_window(run: Run, name: str, prom: Prometheus, exporter: Exporter | None) -> None:
    with run.window(name, prom) as w:
        c0 = exporter.cycles() if exporter else None
        e0 = exporter.cpu() if exporter else None
        end = time.monotonic() + run.args.steady
        while time.monotonic() < end:
            run.check_deadline()
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        if exporter is not None:
            w["exporter_cycles"] = exporter.cycles() - (c0 or 0)
            w["exporter_cpu_s"] = round(exporter.cpu() - (e0 or 0), 3)


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"server cost at {result['nodes']} nodes (revision {result['revision']})"]
    for name, w in result["windows"].items():
        api = w["apiserver"]
        req = api["deltas"].get("apiserver_request_total", {})
        lists = {k: v for k, v in req.items() if k.startswith("verb=LIST")}
        lines.append(
            f"  {name:<26} {w['wall_s']:7.1f} s  apiserver cpu {api['cpu_s']:7.2f} s  "
            f"rss {api['rss_mb_start']:.0f} -> peak {api['rss_mb_peak_hwm'] or 0:.0f} MB  "
            f"heap {api['heap_inuse_mb_start']} -> {api['heap_inuse_mb_end']} MB  LISTs {lists}"
        )
        if w.get("audit"):
            for client, reqs in w["audit"]["by_client"].items():
                if client in ("coverage-exporter", "Prometheus"):
                    lines.append(f"      {client}: {reqs}")
        if "prometheus" in w:
            p = w["prometheus"]
            lines.append(
                f"      prometheus cpu {p['cpu_s']:.2f} s  heap median {p['heap_inuse_mb_median']}"
                f" max {p['heap_inuse_mb_max']} MB  http {p['http_requests']}"
            )
    lines.append("goals: " + json.dumps(result["goals"], indent=1))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument(
        "--steady",
        type=parse_duration,
        default="2m",
        help="length of each steady window (with, without the exporter, re-reads)",
    )
    ap.add_argument("--idle", type=parse_duration, default="20s", help="idle window")
    ap.add_argument(
        "--tail",
        type=parse_duration,
        default="10s",
        help="kept measuring after discovery or sync is done (watches start)",
    )
    ap.add_argument(
        "--reread-interval", default="20s", help="exporter --interval in the full re-read window"
    )
    ap.add_argument(
        "--scrape-interval",
        default="1m",
        help="every pool's scrape interval ('' for kube-prometheus's own, 5-30 s); "
        "scrapes only fail at the loopback proxy here, load that real scrapes "
        "would replace, so it is kept low",
    )
    ap.add_argument(
        "--sample-interval",
        type=parse_duration,
        default="1s",
        help="RSS and Prometheus heap sampling",
    )
    ap.add_argument("--discovery-timeout", type=parse_duration, default="10m")
    ap.add_argument("--sync-timeout", type=parse_duration, default="10m")
    ap.add_argument("--scenario-timeout", type=parse_duration, default="20m")
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=60,
        help="the whole run, testbed included; stops everything when reached",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSON result file")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (logs, audit log)")
    args = ap.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="server-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result: dict[str, Any] = {
        "nodes": args.nodes,
        "revision": exporter_revision(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_average_start": os.getloadavg(),
        "flags": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "windows": {},
    }
    cluster = Cluster(workdir / "testbed", monitoring=False, audit_log=True)
    proms: list[Prometheus] = []
    exporters: list[Exporter] = []
    status = 0
    try:
        log(f"testbed up, {args.nodes} nodes")
        cluster.up()
        kube = scenarios.connect(cluster.kubeconfig)
        t0 = time.monotonic()
        scenarios.apply(kube, args.nodes, timeout=args.scenario_timeout)
        kube_prometheus_shape(kube)
        result["scenario_s"] = round(time.monotonic() - t0, 1)
        kube.close()
        run = Run(args, cluster, workdir)
        run.deadline = started + args.max_minutes * 60
        result["windows"] = run.windows
        with run.window("idle"):
            time.sleep(args.idle)
        prom = Prometheus(cluster, workdir, "prometheus", args.scrape_interval or None)
        proms.append(prom)
        discovery_window(run, "prometheus_discovery", prom, args.nodes)
        exporter = Exporter(cluster, workdir, prom, [])
        exporters.append(exporter)
        sync_window(run, exporter, prom)
        warm = Prometheus(cluster, workdir, "prometheus-warm", args.scrape_interval or None)
        proms.append(warm)
        discovery_window(run, "prometheus_discovery_warm", warm, args.nodes)
        warm.stop()
        steady_window(run, "steady_with_exporter", prom, exporter)
        exporter.stop()
        steady_window(run, "steady_without_exporter", prom, None)
        rereader = Exporter(
            cluster,
            workdir,
            prom,
            ["--prometheus-full-refresh-interval", "0", "--interval", args.reread_interval],
        )
        exporters.append(rereader)
        rereader.start()
        run.wait("re-reading exporter /-/ready", rereader.ready, args.sync_timeout)
        steady_window(run, "full_rereads", prom, rereader)
        rereader.stop()
    except (Timeout, RuntimeError, TimeoutError) as e:
        log(f"stopped early: {e}")
        result["error"] = str(e)
        status = 1
    finally:
        for exp in exporters:
            exp.stop()
        for p in proms:
            p.stop()
        cluster.down(remove_state=False)
        result["total_s"] = round(time.monotonic() - started, 1)
        result["load_average_end"] = os.getloadavg()
        result["goals"] = per_goal(result) if result["windows"] else {}
        text = json.dumps(result, indent=1, sort_keys=False)
        if args.out:
            args.out.write_text(text + "\n")
        for line in summary_lines(result):
            print(line, file=sys.stderr)
        print(text)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
