"""Profile one exporter collection (`audit`) against the fake API.

Runs `coverage-exporter audit` under pyinstrument (CPU, wall-clock
sampling) while sampling the process's RSS every 50 ms, then prints the
pyinstrument text report and an RSS timeline annotated with the requests
the fake server saw, so the memory peak can be tied to a phase.

    python -m bench.profile_exporter --nodes 100000 [--workdir DIR]

Outputs in the workdir: profile.txt, profile.html, rss.tsv.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import run as bench_run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=15000)
    ap.add_argument("--workdir")
    ap.add_argument("--no-pyinstrument", action="store_true", help="only the RSS timeline")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="coverage-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fake = bench_run.FakeApi(args.nodes, workdir, lifetime=1800)
    try:
        kubeconfig = workdir / "kubeconfig"
        bench_run.write_kubeconfig(kubeconfig, fake.base)
        # warm the fake server's caches first (not profiled)
        subprocess.run(
            [*bench_run.exporter_cmd(), *bench_run.audit_args(kubeconfig, fake.prometheus_urls)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=900,
            cwd=bench_run.REPO,
            env=bench_run.exporter_env(),
        )
        start_idx = fake.requests_log(10**12)[0]
        cli = [
            "-m",
            "coverage_exporter.cli",
            *bench_run.audit_args(kubeconfig, fake.prometheus_urls),
        ]
        if args.no_pyinstrument:
            cmd = [bench_run.PY, *cli]
        else:
            cmd = [
                bench_run.PY,
                "-m",
                "pyinstrument",
                "-r",
                "text",
                "--show-all",
                "-o",
                str(workdir / "profile.txt"),
                *cli,
            ]
        t0 = time.time()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "audit.log", "w"),
            cwd=bench_run.REPO,
            env=bench_run.exporter_env(),
        )
        samples = []

        def sampler():
            while proc.poll() is None:
                try:
                    samples.append((time.time() - t0, bench_run.proc_rss_mb(proc.pid)))
                except (FileNotFoundError, ProcessLookupError):
                    break
                time.sleep(0.05)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        proc.wait(timeout=1800)
        th.join()
        _, reqs = fake.requests_log(start_idx)
    finally:
        fake.stop()
    with open(workdir / "rss.tsv", "w") as f:
        for t, rss in samples:
            f.write(f"{t:.2f}\t{rss:.0f}\n")
    peak_t, peak = max(samples, key=lambda s: s[1]) if samples else (0, 0)
    print(f"peak RSS {peak:.0f} MB at t={peak_t:.1f}s of {samples[-1][0] if samples else 0:.1f}s")
    print("RSS timeline (every ~2 s) with requests started in that window:")
    last = -10.0
    for t, rss in samples:
        if t - last >= 2:
            window = [r for r in reqs if last < r["t"] - t0 <= t]
            kinds = {}
            for r in window:
                key = r["path"].split("?")[0]
                if "targets" in key:
                    key = "targets " + r["path"].split("scrapePool=")[-1][:60]
                kinds[key] = kinds.get(key, 0) + 1
            print(f"  t={t:6.1f}s rss={rss:6.0f} MB  {json.dumps(kinds)[:300]}")
            last = t
    if (workdir / "profile.txt").exists():
        print((workdir / "profile.txt").read_text()[:20000])
    print(f"workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
