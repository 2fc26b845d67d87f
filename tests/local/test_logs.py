"""--log.level and --log.format: what `serve` and `audit` write to stderr."""

from __future__ import annotations

import ast
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from coverage_exporter import build, logs, runbooks
from coverage_exporter.exposition.metrics import ExporterState, render


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`serve` with a kubeconfig that does not exist: it logs the start, the
    error, and exits."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "coverage_exporter.cli", "serve", "--kubeconfig=/nonexistent"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}", *args]
    environ = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=environ)


def test_logfmt_is_the_default_and_quotes_values() -> None:
    done = run()
    assert done.returncode == 1
    line = next(ln for ln in done.stderr.splitlines() if "level=error" in ln)
    assert line.startswith("time=")
    # The message is constant words; the value is a field of its own.
    assert ' msg="cannot start" err="kubeconfig /nonexistent: no such file or directory"' in line
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
    # promslog's spelling, as the lines themselves write it.
    warn = run("--log.level=warn")
    assert "level=info" not in warn.stderr and "level=error" in warn.stderr
    assert "deprecated" not in warn.stderr


def test_the_log_level_variable_logs_no_deprecation() -> None:
    done = run(env={"COVERAGE_EXPORTER_LOG_LEVEL": "warn"})
    assert "level=error" in done.stderr and "level=info" not in done.stderr
    assert "deprecated" not in done.stderr


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--log.level=loud", "argument --log.level: one of debug, info, warn, error"),
     ("--log.format=xml", "argument --log.format: invalid choice")],
)  # fmt: skip
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


def _record(extra: dict | None = None) -> logging.LogRecord:
    record = logging.LogRecord("coverage_exporter.kubernetes", logging.INFO, "reflector.py", 347,
                               "listed", None, None)  # fmt: skip
    for key, value in (extra or {}).items():
        setattr(record, key, value)
    return record


def test_values_are_fields_of_their_own() -> None:
    record = _record(logs.fields(resource="nodes", objects=100000, pages=200, form="table"))
    line = logs.LogfmtFormatter().format(record)
    assert line.endswith(" msg=listed resource=nodes objects=100000 pages=200 form=table")
    doc = json.loads(logs.JSONFormatter().format(record))
    assert (doc["msg"], doc["resource"], doc["objects"]) == ("listed", "nodes", "100000")
    # A value with spaces or quotes is quoted as logfmt quotes it; a field
    # never overwrites the fixed ones.
    record = _record(logs.fields(err='cannot connect: "refused"', msg="x", level="y"))
    line = logs.LogfmtFormatter().format(record)
    assert 'err="cannot connect: \\"refused\\""' in line
    assert " msg=listed " in line and " level=info " in line


def test_every_log_call_puts_its_values_in_fields() -> None:
    # A message that formats values in ("%s: listed %d objects") hides them
    # from Loki's filters: the values go in fields=, the message stays words.
    from coverage_exporter.logs import __file__ as logs_file

    package = os.path.dirname(logs_file)
    calls = 0
    for root, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                owner, method = node.func.value, node.func.attr
                if not (isinstance(owner, ast.Name) and owner.id == "log"):
                    continue
                if method not in ("debug", "info", "warning", "error", "exception", "log"):
                    continue
                calls += 1
                message = node.args[1 if method == "log" else 0]
                where = f"{os.path.relpath(path, package)}:{node.lineno}"
                assert isinstance(message, ast.Constant), f"{where}: the message is not constant"
                assert len(node.args) == (2 if method == "log" else 1), f"{where}: %-arguments"
    assert calls > 40


def test_debug_is_not_flooded_by_libraries(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        logs.configure("debug", "logfmt")
        logging.getLogger("asyncio").debug("Using selector: EpollSelector")
        logging.getLogger("aiohttp.access").debug("connection made")
        logging.getLogger("coverage_exporter.kubernetes").debug("watching")
        logging.getLogger("asyncio").warning("Executing <Task> took 0.2 seconds")
    finally:
        logs.configure("info", "logfmt")
    err = capsys.readouterr().err
    assert "EpollSelector" not in err and "connection made" not in err
    assert "msg=watching" in err
    assert "took 0.2 seconds" in err  # their warnings still speak

