"""--log.level and --log.format: what `serve` and `audit` write to stderr."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys

import pytest

from coverage_exporter import build, logs, runbooks
from coverage_exporter.exposition.metrics import ExporterState, render


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """`serve` with a kubeconfig that does not exist: it logs the start, the
    error, and exits."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "coverage_exporter.cli", "serve", "--kubeconfig=/nonexistent"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_logfmt_is_the_default_and_quotes_values() -> None:
    done = run()
    assert done.returncode == 1
    line = next(ln for ln in done.stderr.splitlines() if "level=error" in ln)
    assert line.startswith("time=")
    assert ' msg="kubeconfig /nonexistent' in line
    assert "logger=coverage_exporter" in line


def test_json_lines_carry_the_same_fields() -> None:
    done = run("--log.format=json")
    records = [json.loads(ln) for ln in done.stderr.splitlines() if ln.startswith("{")]
    assert records, done.stderr
    error = next(r for r in records if r["level"] == "error")
    assert set(error) >= {"time", "level", "source", "logger", "msg"}
    assert error["time"].endswith("Z")


def test_level_filters_and_the_old_flag_still_works() -> None:
    quiet = run("--log.level=error")
    assert "level=info" not in quiet.stderr and "level=error" in quiet.stderr
    old = run("--log-level=debug")
    assert "--log-level is deprecated" in old.stderr


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--log.level=loud", "--log.level must be"), ("--log.format=xml", "--log.format must be")],
)
def test_bad_values_exit_2(flag: str, message: str) -> None:
    done = run(flag)
    assert done.returncode == 2
    assert message in done.stderr


def test_logfmt_escapes_quotes_and_newlines() -> None:
    record = logging.LogRecord("x", logging.WARNING, "f.py", 3, 'a "b"\nc', None, None)
    line = logs.LogfmtFormatter().format(record)
    assert 'msg="a \\"b\\"\\nc"' in line
    assert "level=warn " in line


def test_build_info_carries_version_revision_and_python() -> None:
    text = render(ExporterState(report=None)).decode()
    version, revision, python = build.labels()
    assert (
        f'scrape_coverage_build_info{{python_version="{python}",revision="{revision}",'
        f'version="{version}"}} 1.0'
    ) in text
    assert python.count(".") == 2
    assert "Computed once per collection cycle" in text


def test_runbook_base_url_is_configurable() -> None:
    try:
        runbooks.set_base_url("https://wiki.example.com/runbooks")
        assert runbooks.runbook_url("ScrapeCoverageTargetsMissing") == (
            "https://wiki.example.com/runbooks/ScrapeCoverageTargetsMissing.md"
        )
        with pytest.raises(ValueError, match="runbook-base-url"):
            runbooks.set_base_url("docs/runbooks")
    finally:
        runbooks.set_base_url(None)
    assert runbooks.runbook_url("x") == runbooks.DEFAULT_BASE_URL + "x.md"
