"""What one /api/v1/targets read costs a real Prometheus 3.16 (issue #24),
without a testbed: a standalone Prometheus with five file_sd pools whose
targets carry role endpoints' 19 meta labels (relabelled to namespace,
service, node, endpoint), every scrape failing at a closed loopback proxy.

1. Allocation per read: go_memstats_alloc_bytes_total around one read,
   less what one /metrics read allocates itself, median of --reps; a pool
   read plain and gzipped, and the small API answers the exporter reads
   each cycle plain and gzipped.
2. A full re-read four pools at a time, one at a time, and an idle window:
   the peak of go_memstats_heap_inuse_bytes during each, sampled every
   --sample-ms, over its level just before; --rounds interleaved rounds.

    .venv/bin/python -m bench.prometheus_read_cost --sizes 2000,2000,2000,2000,2000
    .venv/bin/python -m bench.prometheus_read_cost --sizes 2000,2000,2000,2000,10

Prints figures only (bench/analysis.md, "The full re-read's heap, round
two", quotes them); no threshold anywhere. Loopback only; the Prometheus
is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testbed.cluster import find_binaries
from testbed.procs import free_ports

POOLS = ("kubelet", "kubelet-cadvisor", "kubelet-probes", "kubelet-resource", "node-exporter")
MB = 2**20


def write_config(directory: Path, sizes: list[int]) -> Path:
    jobs = []
    for pool, size in zip(POOLS, sizes, strict=True):
        groups = []
        for i in range(size):
            node = f"kwok-node-{i:06d}"
            ip = f"10.{128 + i // 65536}.{(i // 256) % 256}.{i % 256}"
            meta = {
                "namespace": "kube-system",
                "service_name": "kubelet",
                "endpoints_name": "kubelet",
                "endpoint_node_name": node,
                "endpoint_address_target_kind": "Node",
                "endpoint_address_target_name": node,
                "endpoint_port_name": "https-metrics",
                "endpoint_port_protocol": "TCP",
                "endpoint_ready": "true",
            }
            for kind in ("endpoints", "service"):
                for name, value in (
                    ("app_kubernetes_io_managed_by", "prometheus-operator"),
                    ("k8s_app", "kubelet"),
                ) + ((("app_kubernetes_io_name", "kubelet"),) if kind == "endpoints" else ()):
                    meta[f"{kind}_label_{name}"] = value
                    meta[f"{kind}_labelpresent_{name}"] = "true"
            labels = {f"__meta_kubernetes_{k}": v for k, v in meta.items()}
            groups.append({"targets": [f"{ip}:10250"], "labels": labels})
        sd = directory / f"{pool}.json"
        sd.write_text(json.dumps(groups))
        relabel = [
            {"source_labels": [f"__meta_kubernetes_{src}"], "target_label": dst}
            for src, dst in (
                ("namespace", "namespace"),
                ("service_name", "service"),
                ("endpoint_node_name", "node"),
                ("endpoint_port_name", "endpoint"),
            )
        ]
        jobs.append(
            {
                "job_name": pool,
                "scrape_interval": "1m",
                "scrape_timeout": "5s",
                "proxy_url": "http://127.0.0.1:1",
                "file_sd_configs": [{"files": [str(sd)]}],
                "relabel_configs": relabel,
            }
        )
    config = directory / "prometheus.yml"
    config.write_text(json.dumps({"scrape_configs": jobs}))  # JSON is YAML
    return config


class Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, encoding: str = "gzip") -> bytes:
        request = urllib.request.Request(self.url + path, headers={"Accept-Encoding": encoding})
        with urllib.request.urlopen(request, timeout=120) as answer:
            return bytes(answer.read())

    def gauge(self, name: str) -> float:
        text = self.get("/metrics", "identity").decode()
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        if not found:
            raise SystemExit(f"no {name} on /metrics")
        return float(found.group(1))

    def allocated_by(self, read: Callable[[], object]) -> float:
        before = self.gauge("go_memstats_alloc_bytes_total")
        read()
        after = self.gauge("go_memstats_alloc_bytes_total")
        return (after - before) - (self.gauge("go_memstats_alloc_bytes_total") - after)

    def peak_growth(self, read: Callable[[], object], every: float) -> float:
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(self.gauge("go_memstats_heap_inuse_bytes"))
                time.sleep(every)

        before = self.gauge("go_memstats_heap_inuse_bytes")
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            read()
            time.sleep(1.0)
        finally:
            stop.set()
            sampler.join()
        return max(samples) - before


def targets_path(pool: str) -> str:
    return f"/api/v1/targets?state=active&scrapePool={pool}"


def measure(server: Server, sizes: list[int], reps: int, rounds: int, every: float) -> None:
    largest = POOLS[sizes.index(max(sizes))]
    smallest = POOLS[sizes.index(min(sizes))]
    print(f"pools {dict(zip(POOLS, sizes, strict=True))}")
    for pool in dict.fromkeys((largest, smallest)):
        for encoding in ("identity", "gzip"):
            body = server.get(targets_path(pool), encoding)
            cost = statistics.median(
                server.allocated_by(lambda p=pool, e=encoding: server.get(targets_path(p), e))
                for _ in range(reps)
            )
            print(f"  {pool} {encoding}: answer {len(body)} B, allocated {cost / MB:.2f} MB")
    for path in (
        "/api/v1/scrape_pools",
        "/api/v1/status/flags",
        "/api/v1/status/config",
        "/api/v1/status/runtimeinfo",
    ):
        costs = {
            encoding: statistics.median(
                server.allocated_by(lambda e=encoding, p=path: server.get(p, e))
                for _ in range(reps)
            )
            for encoding in ("identity", "gzip")
        }
        print(f"  {path}: " + ", ".join(f"{e} {c / MB:.2f} MB" for e, c in costs.items()))

    def four_at_once() -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda p: server.get(targets_path(p)), POOLS))

    def one_at_a_time() -> None:
        for p in POOLS:
            server.get(targets_path(p))

    ways: dict[str, Callable[[], object]] = {
        "idle": lambda: time.sleep(1.5),
        "four at once": four_at_once,
        "one at a time": one_at_a_time,
    }
    growth: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            time.sleep(3)
            growth[name].append(server.peak_growth(way, every) / MB)
    for name, values in growth.items():
        print(
            f"  full re-read, {name}: heap_inuse peak over before, median "
            f"{statistics.median(values):.1f} MB (range {min(values):.1f}-{max(values):.1f})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="2000,2000,2000,2000,2000", help="targets per pool, 5")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--sample-ms", type=float, default=20)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if len(sizes) != len(POOLS):
        ap.error(f"--sizes takes {len(POOLS)} numbers")
    binary = find_binaries(("3",)).prometheus["3"]
    with tempfile.TemporaryDirectory(prefix="read-cost-") as tmp:
        directory = Path(tmp)
        config = write_config(directory, sizes)
        (port,) = free_ports(1)
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            server = Server(f"http://127.0.0.1:{port}")
            wait_for_pools(server, sizes)
            time.sleep(65)  # every target scraped (and failed) once: lastError set
            measure(server, sizes, args.reps, args.rounds, args.sample_ms / 1000)
        finally:
            process.terminate()
            process.wait(timeout=60)


def wait_for_pools(server: Server, sizes: list[int], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    want = dict(zip(POOLS, sizes, strict=True))
    while time.monotonic() < deadline:
        try:
            text = server.get("/metrics", "identity").decode()
        except OSError:
            time.sleep(1)
            continue
        counts = {
            m.group(1): float(m.group(2))
            for m in re.finditer(
                r'^prometheus_target_scrape_pool_targets\{scrape_job="([^"]+)"\} (\S+)$', text, re.M
            )
        }
        if all(counts.get(p) == n for p, n in want.items()):
            return
        time.sleep(1)
    raise SystemExit("the pools did not fill in time")


if __name__ == "__main__":
    main()
