"""Flags, their environment variables and the errors a user sees."""

from __future__ import annotations

import pytest

from coverage_exporter import cli
from coverage_exporter.app import Settings


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
def test_bad_input_exits_2_with_a_message(argv, message, capsys) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_audit_without_any_kubeconfig_cannot_collect(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["audit"]) == 2
    assert "kube" in capsys.readouterr().err.lower()


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
    try:
        code = cli.main(["serve", "--prometheus-url=http://p:9090", flag])
    except SystemExit as exit_:  # refused by the flag's type, with usage
        code = exit_.code
    assert code == 2
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
    assert Guards.from_args(args) == Guards()
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
    assert default(CycleRunner, "source_deadline") == args.source_deadline
    assert default(CycleRunner, "pod_sync_timeout") == args.kubernetes_sync_timeout
    assert default(KubernetesSource, "max_pod_watches") == args.kubernetes_max_pod_watches
    assert default(KubernetesSource, "watch_idle_seconds") == args.kubernetes_watch_idle_timeout
    assert default(KubernetesSource, "pod_form") == args.kubernetes_pod_form
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    assert "seconds one request to Prometheus may take (default: 120)" in " ".join(
        help_text.split()
    )
