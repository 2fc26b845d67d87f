"""The command line run for real: `--version` and `audit --help` in a
process of their own, and `audit` against an apiserver port that refuses
(the pure flag tests are in tests/unit/test_cli.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from coverage_exporter import cli, exit_codes


def test_audit_that_cannot_reach_the_cluster_could_not_judge(tmp_path, capsys) -> None:
    # A cluster named but not answering: not a usage error, and the JSON
    # document is printed all the same, with its sources and the error.
    from testbed.procs import free_ports

    port = free_ports(1)[0]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    code = cli.main(["audit", "--kubeconfig", str(kubeconfig), "--output", "json"])
    out, err = capsys.readouterr()
    assert code == exit_codes.CANNOT_JUDGE == 3
    doc = json.loads(out)
    assert doc["version"] == 1 and doc["services"] == [] and doc["complete"] is False
    sources = {s["source"]: s for s in doc["sources"]}
    # Kubernetes, and discovery (on by default) through the same API.
    assert sources.keys() == {"kubernetes", "discovery"}
    for source in sources.values():
        assert source["up"] is False
        assert f"cannot connect to 127.0.0.1:{port}: connection refused" in source["error"]
    assert "ssl:" not in err and "SSLContext" not in err


def test_version_names_the_revision() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coverage_exporter.cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    first, *rest = done.stdout.splitlines()
    from coverage_exporter import __version__, build

    assert first == f"coverage-exporter, version {__version__} (revision: {build.revision()})"
    assert rest[0].startswith("  python version: 3.") and rest[1].startswith("  platform: ")


def test_audit_help_groups_flags_and_gives_exit_codes_and_examples() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coverage_exporter.cli", "audit", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "100", "PATH": ""},
    )
    text = done.stdout
    assert done.returncode == 0 and text.startswith("usage: coverage-exporter audit [flags]")
    groups = re.findall(r"^([A-Z][A-Za-z ]+):$", text, flags=re.M)
    assert groups == [
        "Output", "Finding Prometheus servers", "Prometheus servers",
        "Prometheus credentials and TLS", "Kubernetes", "Scope", "Runbooks", "Limits", "Logging",
    ]  # fmt: skip
    for code in (0, 1, 2, 3):
        assert re.search(rf"^  {code}  \w", text, flags=re.M), code
    assert "usage error" in text and "could not judge" in text
    assert "examples:" in text and "coverage-exporter audit\n" in text  # discovery: no flag
    assert "--prometheus-url thanos=" in text
    # Every flag listed has a description, more than its environment variable.
    audit = cli.build_parser()._subparsers._group_actions[0].choices["audit"]  # type: ignore[union-attr]
    listed = [a for a in audit._actions if a.help != "==SUPPRESS=="]
    assert len(listed) > 25
    for action in listed:
        words = (action.help or "").split("(default")[0].split("[env")[0].split()
        assert len(words) >= 3, action.option_strings
        assert action.option_strings[-1] in text
