"""Smoke test of bench/report_html.py at 2,000 nodes (the smallest size
with truncated Endpoints): it runs end to end and its figures say what the
report must do at any size. No timing assertions; the 100k figures are in
bench/README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_report_bench_2k(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.report_html",
            "--nodes",
            "2000",
            "--repeat",
            "1",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    # 2,000 nodes: the two node-wide Services lose 1,000 each somewhere
    # (node-exporter in its truncated Endpoints, the kubelet in its
    # mirrored slice).
    assert out["missing_rows"] == 2000
    assert out["page_bytes"] > out["page_gzip_bytes"] > 0
    assert out["http"]["revalidate_status"] == 304
    # The next cycle with the same report re-rendered only the header.
    assert out["http"]["services_renders"] == 1
    browser = out["browser"]
    assert browser["console_errors"] == []
    assert browser["requests"] == sorted([(tmp_path / "report.html").as_uri(), out["http"]["url"]])
    assert browser["filter_name_visible_rows"] >= 1
    assert browser["filter_stage_matching"] == "showing 1000 of 2000 missing targets"
    assert (tmp_path / "report.png").stat().st_size > 0
