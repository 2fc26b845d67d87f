"""Run the benchmark for one cluster size and print one JSON object.

Everything runs on 127.0.0.1, in separate processes:

1. bench/fake_api.py serves a synthetic N-node cluster and the Prometheus
   servers of an Operator fleet (shards x replicas, one port each).
2. `coverage-exporter audit --output json` (one collection, then exit):
   wall, CPU and peak RSS of the whole process. It also warms the fake
   server's caches so that no later run pays for the server's gzip.
3. `coverage-exporter serve`: first cycle = time from process start until
   /-/ready answers 200; steady state = scrape_coverage_cycle_duration_seconds
   of the following cycles; requests and bytes per cycle from the fake
   server's request log, split per API; the time /metrics takes to answer;
   peak RSS (VmHWM) and CPU seconds read from /proc.
4. `raw`: bench/raw.py replays exactly the non-watch requests of the
   exporter's first serve cycle and discards the bodies.
5. `naive`: bench/naive.py (kubernetes client typed lists + requests
   .json() on the full /api/v1/targets), bounded by --naive-timeout and
   --naive-memory-gb (RLIMIT_AS); when it does not finish, the JSON says so.

Usage: python -m bench.run --nodes 1000 --json (from the repository's root)
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def exporter_env() -> dict[str, str]:
    """The environment of every child: this checkout first on PYTHONPATH, so
    that the exporter measured is the one next to this file (the venv's
    coverage-exporter script may be an editable install of another one)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    return env


def exporter_cmd() -> list[str]:
    """The exporter of this checkout (run with exporter_env())."""
    return [PY, "-m", "coverage_exporter.cli"]


def prometheus_args(urls: list[str]) -> list[str]:
    """One --prometheus-url NAME=URL per Prometheus server."""
    out: list[str] = []
    for u in urls:
        out += ["--prometheus-url", u]
    return out


def audit_args(kubeconfig: Path, urls: list[str]) -> list[str]:
    """`audit` against the fake API, JSON out: what every harness runs."""
    return [
        "audit",
        "--kubeconfig",
        str(kubeconfig),
        *prometheus_args(urls),
        "--output",
        "json",
    ]


def http_get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    assert url.startswith("http://127."), url
    req = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def parse_metrics(text: str) -> dict[str, float]:
    """name{labels} -> value for the exporter's own series we read."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if not line.startswith(("scrape_coverage_", "process_")):
            continue
        try:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
        except ValueError:
            continue
    return out


def tree_pids(pid: int) -> list[int]:
    """pid and its live descendants: the exporter decodes target lists in a
    worker process and serves HTTP from a front process, whose CPU and
    memory are the exporter's too."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_cpu(pid: int) -> float:
    """CPU seconds of pid, its live descendants and its reaped children."""
    fields = _stat_fields(pid)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for child in tree_pids(pid)[1:]:
        with contextlib.suppress(OSError):
            fields = _stat_fields(child)
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def _status_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def proc_hwm_mb(pid: int) -> float:
    """Sum of the peak RSS (VmHWM) of pid and its live descendants: an upper
    bound of their combined peak."""
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += _status_mb(p, "VmHWM:")
    return total


def run_raw(fake: FakeApi, workdir: Path, requests: int) -> dict:
    """One replay of the first cycle's requests (bench/raw.py)."""
    log(f"raw replay of {requests} requests")
    with open(workdir / "raw.json", "w") as so, open(workdir / "raw.log", "a") as se:
        r = measured(
            [
                PY,
                "-m",
                "bench.raw",
                "--base",
                fake.base,
                "--requests",
                str(workdir / "first_cycle_requests.json"),
            ],
            600,
            stdout=so,
            stderr=se,
        )
    replay = json.loads((workdir / "raw.json").read_text() or "{}")
    return {
        **r,
        "download_s": replay.get("wall_s"),
        "requests": replay.get("requests"),
        "bytes": replay.get("bytes"),
    }


class TreePeak:
    """The largest proc_hwm_mb of a process tree, sampled every 50 ms from
    now until stop(): children that end meanwhile (the Node list's worker)
    count while they lived."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, proc_hwm_mb(self.pid))
            if self._done.wait(0.05):
                return

    def stop(self) -> float:
        if not self._done.is_set():
            self._done.set()
            self._thread.join()
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, proc_hwm_mb(self.pid))
        return self.peak


def proc_rss_mb(pid: int) -> float:
    """RSS of pid and its live descendants, summed."""
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += _status_mb(p, "VmRSS:")
    return total


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measured(
    cmd: list[str],
    timeout: float,
    memory_gb: float | None = None,
    stdout=None,
    stderr=None,
    env=None,
) -> dict:
    """Run cmd as a child, return wall/cpu/peak RSS from wait4 (this child
    only), its exit status, and whether it was killed by the timeout."""

    def limit():
        os.setsid()
        if memory_gb:
            lim = int(memory_gb * 1024**3)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=limit,
        cwd=REPO,
        env=env if env is not None else exporter_env(),
    )
    timed_out = threading.Event()

    def killer():
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, killer)
    timer.start()
    # wait4's ru_maxrss is the largest single process, not the sum of the
    # exporter and its workers: sample their VmHWM sum.
    tree_peak = TreePeak(proc.pid)
    try:
        _, status, ru = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        sampled = tree_peak.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "peak_rss_mb": max(ru.ru_maxrss / 1024, sampled),
        "returncode": proc.returncode,
        "timed_out": timed_out.is_set(),
    }


class FakeApi:
    def __init__(
        self,
        nodes: int,
        workdir: Path,
        lifetime: float,
        role: str = "endpoints",
        shards: int | None = None,
        replicas: int | None = None,
        target_churn: bool = False,
    ):
        self.ready_file = workdir / "fake_api.json"
        self.log_path = workdir / "fake_api.log"
        self.ready_file.unlink(missing_ok=True)  # a stale one from an earlier run in this workdir
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "bench.fake_api",
                "--nodes",
                str(nodes),
                "--ready-file",
                str(self.ready_file),
                "--max-lifetime",
                str(lifetime),
                "--role",
                role,
                *(["--shards", str(shards)] if shards else []),
                *(["--replicas", str(replicas)] if replicas else []),
                *(["--target-churn"] if target_churn else []),
            ],
            stdout=open(self.log_path, "w"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + 900
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake_api exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake_api did not start in 900 s")
            time.sleep(0.2)
        self.info = json.loads(self.ready_file.read_text())
        self.port = self.info["port"]
        self.base = f"http://127.0.0.1:{self.port}"  # Kubernetes API and /_bench
        self.servers = self.info["prometheus"]
        self.prometheus_urls = [f"{s['name']}=http://127.0.0.1:{s['port']}" for s in self.servers]

    def requests_log(self, since: int = 0) -> tuple[int, list[dict]]:
        _, body = http_get(f"{self.base}/_bench/requests?since={since}", timeout=120)
        data = json.loads(body)
        return data["next"], data["requests"]

    def server_info(self) -> dict:
        return json.loads(http_get(f"{self.base}/_bench/info")[1])

    def rss_mb(self) -> float:
        return proc_hwm_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_kubeconfig(path: Path, base: str) -> None:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: {base}
users:
- name: bench
  user:
    token: bench-token
contexts:
- name: bench
  context:
    cluster: bench
    user: bench
current-context: bench
"""
    )


def summarize(reqs: list[dict]) -> dict:
    out = {
        "kubernetes": {"requests": 0, "lists": 0, "watches": 0, "bytes": 0, "body_bytes": 0},
        "prometheus": {"requests": 0, "bytes": 0, "body_bytes": 0},
    }
    for r in reqs:
        a = out[r["api"]]
        a["requests"] += 1
        a["bytes"] += r["bytes"]
        a["body_bytes"] += r["body_bytes"]
        if r["api"] == "kubernetes":
            a["watches" if r["watch"] else "lists"] += 1
    return out


def serve_cmd(fake: FakeApi, kubeconfig: Path, port: int, args) -> list[str]:
    cmd = [
        *exporter_cmd(),
        "serve",
        "--kubeconfig",
        str(kubeconfig),
        *prometheus_args(fake.prometheus_urls),
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--interval",
        str(args.interval),
    ]
    if args.prometheus_full_refresh_interval is not None:
        cmd += ["--prometheus-full-refresh-interval", str(args.prometheus_full_refresh_interval)]
    return cmd


def wait_ready(proc: subprocess.Popen, base: str, timeout: float, log_path: Path) -> None:
    """Poll /-/ready every 50 ms until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exporter exited {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            status, _ = http_get(base + "/-/ready", timeout=5)
        except OSError:
            status = 0
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"exporter not ready after {timeout} s")
        time.sleep(0.05)


def stop_tree(proc: subprocess.Popen, seconds: float = 20) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def first_cycle_only(fake: FakeApi, kubeconfig: Path, workdir: Path, args, run: int) -> float:
    """One more `serve` from process start until /-/ready, then stopped:
    another sample of the first cycle (see --repeats)."""
    port = free_port()
    log_path = workdir / f"serve_first_cycle_{run}.log"
    with open(log_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            serve_cmd(fake, kubeconfig, port, args),
            stdout=err,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
            env=exporter_env(),
        )
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}", args.first_cycle_timeout, log_path)
            return time.perf_counter() - t0
        finally:
            stop_tree(proc)


def run_serve(fake: FakeApi, kubeconfig: Path, workdir: Path, args) -> tuple[dict, list[dict]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = serve_cmd(fake, kubeconfig, port, args)
    if args.profile:
        cmd = [
            PY,
            "-m",
            "pyinstrument",
            "-r",
            "html",
            "-o",
            str(workdir / "profile_serve.html"),
            "-m",
            "coverage_exporter.cli",
            *cmd[len(exporter_cmd()) :],
        ]
    log_start = fake.requests_log(10**12)[0]
    err = open(workdir / "serve.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=err,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
        env=exporter_env(),
    )
    result: dict = {}
    # Sampled all along, not read at the end: the Node list's worker lives
    # for the first LIST only, and its HWM goes with it.
    tree_peak = TreePeak(proc.pid)
    try:
        wait_ready(proc, base, args.first_cycle_timeout, workdir / "serve.log")
        result["first_cycle_s"] = time.perf_counter() - t0
        result["first_cycle_cpu_s"] = proc_cpu(proc.pid)
        result["rss_after_first_cycle_mb"] = proc_rss_mb(proc.pid)
        log_first, first_reqs = fake.requests_log(log_start)
        _, body = http_get(base + "/metrics")
        m = parse_metrics(body.decode())
        cycles = m.get("scrape_coverage_cycles_total", 0)
        result["first_cycle_collect_s"] = m.get("scrape_coverage_cycle_duration_seconds")
        # steady state: wait for more cycles, one sample at each cycle end
        marks = []  # (cycles, cycle_duration, cpu, log_index, time)
        marks.append(
            (
                cycles,
                m.get("scrape_coverage_cycle_duration_seconds"),
                proc_cpu(proc.pid),
                log_first,
                time.perf_counter(),
            )
        )
        want = cycles + args.steady_cycles + 1
        deadline = time.monotonic() + args.steady_timeout
        poll_ms = []  # /metrics latency while cycles run (the exporter is busy part of the time)
        while cycles < want and time.monotonic() < deadline:
            time.sleep(0.1)
            t_poll = time.perf_counter()
            _, body = http_get(base + "/metrics")
            poll_ms.append((time.perf_counter() - t_poll) * 1000)
            m = parse_metrics(body.decode())
            c = m.get("scrape_coverage_cycles_total", 0)
            if c > cycles:
                cycles = c
                idx, _ = fake.requests_log(10**12)
                marks.append(
                    (
                        c,
                        m.get("scrape_coverage_cycle_duration_seconds"),
                        proc_cpu(proc.pid),
                        idx,
                        time.perf_counter(),
                    )
                )
        if poll_ms:
            poll_ms.sort()
            result["metrics_during_cycles_ms_p50"] = poll_ms[len(poll_ms) // 2]
            result["metrics_during_cycles_ms_p99"] = poll_ms[
                min(len(poll_ms) - 1, int(len(poll_ms) * 0.99))
            ]
            result["metrics_during_cycles_ms_max"] = poll_ms[-1]
            result["metrics_during_cycles_samples"] = len(poll_ms)
        result["exporter_metrics"] = {
            k: v
            for k, v in m.items()
            if k.startswith("scrape_coverage_source_") or k.startswith("scrape_coverage_cycle")
        }
        # where the exporter put each server, and which replicas it can judge
        result["exporter_topology_metrics"] = {
            k: v
            for k, v in m.items()
            if k.startswith(
                ("scrape_coverage_server_info", "scrape_coverage_replica_coverage_known")
            )
        }
        # skip the first cycle after the first (it may still see settling)
        steady = marks[1:]
        if len(steady) >= 2:
            durations = [d for _, d, _, _, _ in steady[1:] if d is not None]
            n_cycles = steady[-1][0] - steady[0][0]
            result["steady_cycle_s"] = statistics.median(durations) if durations else None
            result["steady_cycle_cpu_s"] = (steady[-1][2] - steady[0][2]) / n_cycles
            result["steady_cycles_measured"] = int(n_cycles)
            _, steady_reqs = fake.requests_log(steady[0][3])
            steady_reqs = steady_reqs[: steady[-1][3] - steady[0][3]]
            s = summarize(steady_reqs)
            # watches are long-lived: count their bytes but not as per-cycle requests
            result["steady_per_cycle"] = {
                api: {k: v / n_cycles for k, v in d.items()} for api, d in s.items()
            }
        else:
            result["steady_cycle_s"] = None
        # every Kubernetes LIST after start-up (the first cycle)
        _, after = fake.requests_log(log_first)
        result["k8s_lists_after_startup"] = sum(
            1 for r in after if r["api"] == "kubernetes" and not r["watch"]
        )
        # /metrics latency
        lat = []
        size = 0
        for _ in range(args.metrics_samples):
            t = time.perf_counter()
            _, body = http_get(base + "/metrics")
            lat.append((time.perf_counter() - t) * 1000)
            size = len(body)
        result["metrics_response_ms_median"] = statistics.median(lat)
        result["metrics_response_ms_max"] = max(lat)
        result["metrics_response_bytes"] = size
        result["peak_rss_mb"] = tree_peak.stop()
        result["total_cpu_s"] = proc_cpu(proc.pid)
    finally:
        tree_peak.stop()
        stop_tree(proc, 60 if args.profile else 20)
        err.close()
    result["first_cycle_requests"] = summarize(first_reqs)
    return result, first_reqs


def exporter_revision() -> str:
    """The commit of the exporter code measured (+dirty with local changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "coverage_exporter"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    ap.add_argument("--interval", type=float, default=5.0, help="exporter --interval")
    ap.add_argument("--steady-cycles", type=int, default=3)
    ap.add_argument(
        "--prometheus-full-refresh-interval",
        type=float,
        help="pass to serve (default: the exporter's); 0 re-reads every scrape pool every cycle",
    )
    ap.add_argument("--steady-timeout", type=float, default=600.0)
    ap.add_argument("--first-cycle-timeout", type=float, default=900.0)
    ap.add_argument("--metrics-samples", type=int, default=20)
    ap.add_argument("--naive-timeout", type=float, default=900.0)
    ap.add_argument("--naive-memory-gb", type=float, default=14.0, help="RLIMIT_AS for naive")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="first cycles and raw replays measured (interleaved; medians reported)",
    )
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-audit", action="store_true")
    ap.add_argument("--profile", action="store_true", help="run serve under pyinstrument (slower)")
    ap.add_argument("--workdir", help="keep logs and request logs here")
    ap.add_argument(
        "--role",
        choices=("endpoints", "endpointslice"),
        default="endpoints",
        help="the Prometheus CR's serviceDiscoveryRole in the data set",
    )
    ap.add_argument(
        "--target-churn",
        action="store_true",
        help="the fake flips one target health in 100 on every other read of a pool, so "
        "that each full re-read finds every pool changed",
    )
    ap.add_argument("--shards", type=int, help="default: 2 from 15k nodes up, else 1")
    ap.add_argument("--replicas", type=int, help="default: 2 from 15k nodes up, else 1")
    args = ap.parse_args(argv)

    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="coverage-bench-"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    # As installed: pip compiles a package's bytecode at install time. This
    # machine sets PYTHONDONTWRITEBYTECODE, so without this every start of
    # the exporter and its workers compiled the checkout's modules afresh
    # (~0.05 s of the collector's start-up alone).
    compileall.compile_dir(REPO / "coverage_exporter", quiet=1)
    out: dict = {"nodes": args.nodes, "exporter_revision": exporter_revision()}
    log(f"starting fake API with {args.nodes} nodes (workdir {workdir})")
    t = time.perf_counter()
    fake = FakeApi(
        args.nodes,
        workdir,
        lifetime=args.first_cycle_timeout + args.steady_timeout + args.naive_timeout + 1800,
        role=args.role,
        shards=args.shards,
        replicas=args.replicas,
        target_churn=args.target_churn,
    )
    try:
        out["fake_api_start_s"] = round(time.perf_counter() - t, 2)
        info = fake.server_info()
        out["dataset"] = info["summary"]
        out["role"] = info["role"]
        out["shards"] = info["shards"]
        out["replicas"] = info["replicas"]
        out["prometheus_servers"] = len(info["servers"])
        out["scrape_pools"] = len(info["scrape_pools"])
        # active targets over every server (replicas count twice, as they scrape twice)
        out["targets_total"] = sum(s["targets"] for s in info["servers"])
        out["targets_per_server"] = {s["name"]: s["targets"] for s in info["servers"]}
        kubeconfig = workdir / "kubeconfig"
        write_kubeconfig(kubeconfig, fake.base)

        if not args.skip_audit:
            log("exporter audit (one collection)")
            with open(workdir / "audit.json", "w") as so, open(workdir / "audit.log", "w") as se:
                a = measured(
                    [*exporter_cmd(), *audit_args(kubeconfig, fake.prometheus_urls)],
                    args.first_cycle_timeout,
                    stdout=so,
                    stderr=se,
                )
            out["audit_s"] = a["wall_s"]
            out["audit_cpu_s"] = a["cpu_s"]
            out["audit_peak_rss_mb"] = a["peak_rss_mb"]
            out["audit_returncode"] = a["returncode"]
            try:
                report = json.loads((workdir / "audit.json").read_text())
                out["audit_services"] = {
                    f"{s['namespace']}/{s['service']}": {
                        "expected": s.get("expected"),
                        "missing_endpoints": len(s.get("endpoints", {}).get("missing", []) or [])
                        if isinstance(s.get("endpoints", {}).get("missing"), list)
                        else s.get("endpoints", {}).get("missing"),
                        "pools_meant": sorted(
                            {p["scrape_pool"] for p in s["prometheus"]["pools"] if p.get("meant")}
                        ),
                        "gaps": [
                            [g["stage"], g["scrape_pool"], g["replica"], g["missing"]]
                            for g in s.get("gaps", [])
                        ],
                    }
                    for s in report.get("services", [])
                }
                # where the exporter put each server in the fleet
                out["audit_replicas"] = [
                    {
                        "scraper": r.get("scraper"),
                        "replica": r.get("replica"),
                        "shards": r.get("shards"),
                        "known": r.get("known"),
                        "servers": {
                            sv.get("server"): {
                                "shard": sv.get("shard"),
                                "topology": sv.get("topology"),
                            }
                            for sv in r.get("servers", [])
                        },
                    }
                    for r in report.get("replicas", [])
                ]
            except (ValueError, KeyError, TypeError, AttributeError):
                out["audit_services"] = None
                out["audit_replicas"] = None

        log("exporter serve")
        serve, first_reqs = run_serve(fake, kubeconfig, workdir, args)
        out["exporter_first_cycle_s"] = serve["first_cycle_s"]
        out["exporter_first_cycle_cpu_s"] = serve["first_cycle_cpu_s"]
        out["exporter_first_cycle_collect_s"] = serve.get("first_cycle_collect_s")
        out["exporter_steady_cycle_s"] = serve.get("steady_cycle_s")
        out["exporter_steady_cycle_cpu_s"] = serve.get("steady_cycle_cpu_s")
        out["exporter_peak_rss_mb"] = serve["peak_rss_mb"]
        out["exporter_rss_after_first_cycle_mb"] = serve["rss_after_first_cycle_mb"]
        out["metrics_response_ms"] = serve["metrics_response_ms_median"]
        out["metrics_response_ms_max"] = serve["metrics_response_ms_max"]
        out["metrics_response_bytes"] = serve["metrics_response_bytes"]
        for k in ("p50", "p99", "max"):
            out[f"metrics_during_cycles_ms_{k}"] = serve.get(f"metrics_during_cycles_ms_{k}")
        out["metrics_during_cycles_samples"] = serve.get("metrics_during_cycles_samples")
        fc = serve["first_cycle_requests"]
        out["k8s_requests_first_cycle"] = fc["kubernetes"]["requests"]
        out["k8s_lists_first_cycle"] = fc["kubernetes"]["lists"]
        out["k8s_watches_first_cycle"] = fc["kubernetes"]["watches"]
        out["k8s_bytes_first_cycle"] = fc["kubernetes"]["bytes"]
        out["k8s_body_bytes_first_cycle"] = fc["kubernetes"]["body_bytes"]
        out["prometheus_requests_first_cycle"] = fc["prometheus"]["requests"]
        out["prometheus_bytes_first_cycle"] = fc["prometheus"]["bytes"]
        out["prometheus_body_bytes_first_cycle"] = fc["prometheus"]["body_bytes"]
        sp = serve.get("steady_per_cycle")
        if sp:
            out["k8s_requests_per_steady_cycle"] = sp["kubernetes"]["requests"]
            out["k8s_lists_per_steady_cycle"] = sp["kubernetes"]["lists"]
            out["k8s_bytes_per_steady_cycle"] = sp["kubernetes"]["bytes"]
            out["prometheus_requests_per_steady_cycle"] = sp["prometheus"]["requests"]
            out["prometheus_bytes_per_steady_cycle"] = sp["prometheus"]["bytes"]
            out["prometheus_body_bytes_per_steady_cycle"] = sp["prometheus"]["body_bytes"]
        else:
            for k in ("k8s_requests_per_steady_cycle", "prometheus_bytes_per_steady_cycle"):
                out[k] = None
        out["steady_cycles_measured"] = serve.get("steady_cycles_measured")
        out["k8s_lists_after_startup"] = serve["k8s_lists_after_startup"]
        out["exporter_self_metrics"] = serve["exporter_metrics"]
        out["exporter_topology_metrics"] = serve["exporter_topology_metrics"]

        # raw baseline
        replay = [
            {
                "method": r["method"],
                "path": r["path"],
                "port": r["port"],
                "server": r["server"],
                "accept": r["accept"],
                "accept_encoding": r["accept_encoding"],
            }
            for r in first_reqs
            if not r["watch"]
        ]
        (workdir / "first_cycle_requests.json").write_text(json.dumps(replay))
        # The first cycle and raw move by 10-20% between runs on this machine
        # (its own speed drifts): --repeats runs of each, interleaved, and
        # the medians reported, every run listed.
        raws = [run_raw(fake, workdir, len(replay))]
        firsts = [serve["first_cycle_s"]]
        for run in range(1, args.repeats):
            log(f"exporter serve, first cycle only (run {run + 1} of {args.repeats})")
            firsts.append(first_cycle_only(fake, kubeconfig, workdir, args, run))
            raws.append(run_raw(fake, workdir, len(replay)))
        out["exporter_first_cycle_s"] = statistics.median(firsts)
        out["exporter_first_cycle_s_runs"] = firsts
        r = sorted(raws, key=lambda x: x["wall_s"])[len(raws) // 2]
        out["raw_s"] = statistics.median(x["wall_s"] for x in raws)
        out["raw_s_runs"] = [x["wall_s"] for x in raws]
        out["raw_download_s"] = r["download_s"]
        out["raw_cpu_s"] = r["cpu_s"]
        out["raw_peak_rss_mb"] = r["peak_rss_mb"]
        out["raw_requests"] = r["requests"]
        out["raw_body_bytes"] = r["bytes"]

        # naive baseline
        if args.skip_naive:
            out["naive_s"] = None
            out["naive_status"] = "skipped"
        else:
            log(f"naive (timeout {args.naive_timeout:.0f} s, RLIMIT_AS {args.naive_memory_gb} GB)")
            with open(workdir / "naive.json", "w") as so, open(workdir / "naive.log", "w") as se:
                n = measured(
                    [
                        PY,
                        "-m",
                        "bench.naive",
                        "--kubeconfig",
                        str(kubeconfig),
                        *prometheus_args(fake.prometheus_urls),
                    ],
                    args.naive_timeout,
                    memory_gb=args.naive_memory_gb,
                    stdout=so,
                    stderr=se,
                )
            out["naive_cpu_s"] = n["cpu_s"]
            out["naive_peak_rss_mb"] = n["peak_rss_mb"]
            if n["timed_out"]:
                out["naive_s"] = None
                out["naive_status"] = f"did not finish in {args.naive_timeout:.0f} s"
            elif n["returncode"] != 0:
                tail = (workdir / "naive.log").read_text()[-400:]
                out["naive_s"] = None
                reason = "MemoryError" if "MemoryError" in tail else f"exit {n['returncode']}"
                out["naive_status"] = (
                    f"failed ({reason}) after {n['wall_s']:.0f} s with RLIMIT_AS {args.naive_memory_gb:g} GB"
                )
            else:
                out["naive_s"] = n["wall_s"]
                out["naive_status"] = "ok"
                with contextlib.suppress(ValueError, KeyError):
                    out["naive_result"] = json.loads((workdir / "naive.json").read_text())[
                        "services"
                    ]
        out["fake_api_peak_rss_mb"] = fake.rss_mb()
    finally:
        fake.stop()
    out["workdir"] = str(workdir)
    text = json.dumps(out, indent=None if args.json else 2, default=str)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
