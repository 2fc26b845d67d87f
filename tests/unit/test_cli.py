"""Flags, their environment variables, the errors a user sees and the
exit codes `audit` gives them. What needs a process or a socket (--version,
--help as printed, an apiserver that refuses) is in tests/local/test_cli.py."""

from __future__ import annotations

import dataclasses

import pytest

from coverage_exporter import cli, defaults, exit_codes
from coverage_exporter.app import Settings
from coverage_exporter.flagtypes import parse_seconds


def main(argv: list[str]) -> int:
    """cli.main, with argparse's own exit (a bad flag) as its code."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_env_names_follow_the_flags() -> None:
    assert cli.env_name("--web.listen-address") == "COVERAGE_EXPORTER_WEB_LISTEN_ADDRESS"
    assert cli.env_name("--prometheus-url") == "COVERAGE_EXPORTER_PROMETHEUS_URL"


def test_environment_sets_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "COVERAGE_EXPORTER_PROMETHEUS_URL", "a=http://127.0.0.1:1, http://127.0.0.1:2"
    )
    monkeypatch.setenv("COVERAGE_EXPORTER_INTERVAL", "15")
    monkeypatch.setenv("COVERAGE_EXPORTER_PROMETHEUS_INSECURE_SKIP_VERIFY", "true")
    args = cli.build_parser().parse_args(["serve", "--interval", "30"])
    assert args.interval == 30.0
    assert args.prometheus_insecure_skip_verify is True
    settings = Settings.from_args(args)
    assert [(p.name, p.url) for p in settings.prometheus] == [
        ("a", "http://127.0.0.1:1"),
        ("127.0.0.1:2", "http://127.0.0.1:2"),
    ]
    assert settings.prometheus[0].insecure_skip_verify is True


def test_scope_flags() -> None:
    args = cli.build_parser().parse_args(
        [
            "audit",
            "--service",
            "monitoring/node-exporter",
            "--namespace",
            "monitoring",
            "--service-selector",
            "team=infra",
        ]
    )
    scope = Settings.from_args(args).scope
    assert scope.services == frozenset({("monitoring", "node-exporter")})
    assert scope.namespaces == frozenset({"monitoring"})
    assert [r.key for r in scope.label_selector] == ["team"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["audit", "--service", "no-slash"], "NAMESPACE/NAME"),
        (["audit", "--prometheus-url", "ftp://x"], "http"),
        (
            [
                "audit",
                "--prometheus-url",
                "a=http://127.0.0.1:1",
                "--prometheus-url",
                "a=http://127.0.0.1:2",
            ],
            "unique",
        ),
        (["audit", "--log-level", "loud"], "log-level"),
    ],
)
def test_bad_input_is_a_usage_error_with_a_message(argv, message, capsys) -> None:
    assert main(argv) == exit_codes.USAGE == 2
    assert message in capsys.readouterr().err


def test_audit_without_any_kubeconfig_is_a_usage_error(tmp_path, monkeypatch, capsys) -> None:
    # Nothing names a cluster: the flags or the environment must change.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["audit"]) == exit_codes.USAGE
    assert "no Kubernetes configuration found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag",
    [
        "--source-deadline=0",
        "--source-deadline=nan",
        "--max-response-bytes=0",
        "--kubernetes-max-pod-watches=-1",
        "--kubernetes-watch-idle-timeout=0",
        "--web.max-connections=0",
        "--web.header-timeout=0",
    ],
)
def test_bounds_must_make_sense(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--prometheus-url=http://p:9090", flag])
    assert code == exit_codes.USAGE
    assert flag.split("=")[0].lstrip("-") in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "nodes_in_worker", "targets_in_worker"),
    [
        ([], True, True),
        (["--kubernetes-decode-in-process"], False, True),
        (["--prometheus-decode-in-process"], True, False),
    ],
)
def test_decoding_workers_follow_their_flags(
    flags: list[str], nodes_in_worker: bool, targets_in_worker: bool
) -> None:
    from coverage_exporter.app import Exporter
    from coverage_exporter.sources.kubernetes.node_decoder import NodePageDecoder

    args = cli.build_parser().parse_args(["audit", *flags])
    exporter = Exporter(Settings.from_args(args))
    assert isinstance(exporter.kubernetes._node_decoder, NodePageDecoder) is nodes_in_worker
    assert (exporter._decoder is not None) is targets_in_worker


def test_each_default_is_the_flags_and_the_codes_alike(tmp_path) -> None:
    """A default is kept once (coverage_exporter/defaults.py): what --help
    says is what the code does when the flag is not given."""
    import inspect

    from coverage_exporter.app import Guards
    from coverage_exporter.cycle import CycleRunner
    from coverage_exporter.sources.kubernetes.operator import OperatorSource
    from coverage_exporter.sources.kubernetes.source import KubernetesSource
    from coverage_exporter.sources.prometheus.fleet_file import load_fleet_file
    from coverage_exporter.sources.prometheus.source import PrometheusEndpoint

    def default(fn: object, name: str) -> object:
        return inspect.signature(fn).parameters[name].default  # type: ignore[arg-type]

    args = cli.build_parser().parse_args(["serve"])
    # --source-deadline alone differs: audit's is fixed, serve's follows
    # --interval (tests/local/test_slow_source.py).
    audit = cli.build_parser().parse_args(["audit"])
    assert Guards.from_args(audit) == Guards()
    assert Guards.from_args(args) == dataclasses.replace(
        Guards(), source_deadline=defaults.SOURCE_DEADLINE_SHARE_OF_INTERVAL * args.interval
    )
    settings = Settings.from_args(args)
    assert (
        settings.stale_after_seconds == Settings.__dataclass_fields__["stale_after_seconds"].default
    )
    assert settings.operator_refresh_seconds == default(OperatorSource, "refresh_seconds")
    assert PrometheusEndpoint("http://127.0.0.1:1").timeout_seconds == args.prometheus_timeout
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("servers: [{url: 'http://127.0.0.1:1'}]\n")
    assert load_fleet_file(str(fleet))[0].timeout_seconds == args.prometheus_timeout
    assert default(CycleRunner, "missing_info_limit") == args.missing_target_series_limit
    assert default(CycleRunner, "stale_after_seconds") == args.prometheus_stale_after
    assert args.source_deadline is None
    assert default(CycleRunner, "source_deadline") == parse_seconds(defaults.SOURCE_DEADLINE)
    assert default(CycleRunner, "pod_sync_timeout") == args.kubernetes_sync_timeout
    assert default(KubernetesSource, "max_pod_watches") == args.kubernetes_max_pod_watches
    assert default(KubernetesSource, "watch_idle_seconds") == args.kubernetes_watch_idle_timeout
    assert default(KubernetesSource, "pod_form") == args.kubernetes_pod_form
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    # Shown as the flag takes it, and parsed by the flag's own parser.
    assert "how long one request to Prometheus may take (default: 2m)" in " ".join(
        help_text.split()
    )
    assert args.prometheus_timeout == 120.0
    assert (
        "(default: serve: 75% of --interval and at least 5s, so that a cycle ends within "
        "it; audit: 2m)" in " ".join(help_text.split())
    )
    assert Guards().limits.max_body_bytes == args.max_response_bytes == 256 << 20


# --- Prometheus's dialect ---------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "interval", "timeout", "max_bytes"),
    [
        (["--interval", "1m", "--prometheus-timeout", "90s", "--max-response-bytes", "512MiB"],
         60.0, 90.0, 512 << 20),
        (["--interval", "1h30m", "--prometheus-timeout", "250ms", "--max-response-bytes", "1GB"],
         5400.0, 0.25, 1 << 30),
        # Bare numbers, as the flags took them before: seconds and bytes.
        (["--interval", "60", "--prometheus-timeout", "120", "--max-response-bytes", "1048576"],
         60.0, 120.0, 1 << 20),
        ([], 60.0, 120.0, 256 << 20),
    ],
)  # fmt: skip
def test_durations_and_sizes_as_prometheus_spells_them(
    flags: list[str], interval: float, timeout: float, max_bytes: int
) -> None:
    args = cli.build_parser().parse_args(["serve", *flags])
    assert (args.interval, args.prometheus_timeout, args.max_response_bytes) == (
        interval,
        timeout,
        max_bytes,
    )


@pytest.mark.parametrize("value", ["1min", "1s1m", "-1m", "1.5m", "0s", "inf"])
def test_a_bad_duration_is_a_usage_error(value: str, capsys) -> None:
    assert main(["serve", "--interval", value]) == exit_codes.USAGE
    err = capsys.readouterr().err
    assert "--interval" in err


def test_durations_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVERAGE_EXPORTER_INTERVAL", "2m")
    monkeypatch.setenv("COVERAGE_EXPORTER_MAX_RESPONSE_BYTES", "64MiB")
    args = cli.build_parser().parse_args(["serve"])
    assert (args.interval, args.max_response_bytes) == (120.0, 64 << 20)


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("COVERAGE_EXPORTER_PROMETHEUS_INSECURE_SKIP_VERIFY", "ture", "not a boolean"),
        ("COVERAGE_EXPORTER_INTERVAL", "1min", "unknown unit"),
        ("COVERAGE_EXPORTER_MAX_RESPONSE_BYTES", "1kB", "unknown unit"),
        ("COVERAGE_EXPORTER_LOG_FORMAT", "xml", "not one of logfmt, json"),
        ("COVERAGE_EXPORTER_LOG_LEVEL", "loud", "one of debug, info, warn, error"),
    ],
)
def test_a_bad_environment_value_is_a_usage_error_naming_the_variable(
    variable: str, value: str, reason: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # Never a silent default: "ture" was read as false before.
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == exit_codes.USAGE
    err = capsys.readouterr().err
    assert f"{variable}={value!r}" in err and reason in err


def test_help_and_version_work_whatever_the_environment(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COVERAGE_EXPORTER_INTERVAL", "nonsense")
    assert main(["--version"]) == 0
    assert main(["serve", "--help"]) == 0


@pytest.mark.parametrize("level", ["debug", "info", "warn", "error", "WARN", "warning"])
def test_promslog_level_names(level: str) -> None:
    args = cli.build_parser().parse_args(["audit", "--log.level", level])
    assert args.log_level == ("warn" if level.lower().startswith("warn") else level.lower())


def test_the_log_level_variable_is_the_new_flags_only(monkeypatch, capsys) -> None:
    # It used to feed the deprecated --log-level as well, which then warned
    # about a flag nobody had given.
    monkeypatch.setenv("COVERAGE_EXPORTER_LOG_LEVEL", "warn")
    args = cli.build_parser().parse_args(["serve"])
    assert (args.log_level, args.log_level_deprecated) == ("warn", None)
    assert cli.env_name("--log-level") == "COVERAGE_EXPORTER_LOG_LEVEL"  # why it must not read it


def test_environment_names_are_unique_per_command() -> None:
    parser = cli.build_parser()
    for command in ("serve", "audit"):
        sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        flags = [a.option_strings[0] for a in sub._actions if a.option_strings[0] != "-h"]
        read = [cli.env_name(f) for f in flags if f != "--log-level"]
        assert len(read) == len(set(read)), command
