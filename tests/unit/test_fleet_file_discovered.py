"""The fleet file's `discovered` entries: credentials for the servers
discovery finds, per Operator object or for the selected pods."""

from __future__ import annotations

from pathlib import Path

import pytest

from coverage_exporter.sources.prometheus.fleet_file import (
    SERVICE_ACCOUNT_TOKEN,
    Credentials,
    load_fleet,
)


def fleet(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_credentials_per_object_and_for_selected_pods(tmp_path: Path) -> None:
    loaded = load_fleet(
        str(
            fleet(
                tmp_path,
                "discovered:\n"
                "  - prometheus: monitoring/k8s\n"
                "    authorization: {service_account_token: true}\n"
                "    tls_config: {ca_file: /ca.crt, server_name: prometheus-k8s.monitoring.svc}\n"
                "  - agent: monitoring/agent\n"
                "    basic_auth: {username: u, password_file: /pw}\n"
                "    timeout: 30\n"
                "  - pod_selector: true\n"
                "    authorization: {credentials_file: /tok}\n",
            )
        )
    )
    assert loaded.servers == []
    assert loaded.discovered == {
        "Prometheus monitoring/k8s": Credentials(
            bearer_token_file=SERVICE_ACCOUNT_TOKEN,
            ca_file="/ca.crt",
            server_name="prometheus-k8s.monitoring.svc",
        ),
        "PrometheusAgent monitoring/agent": Credentials(
            basic_auth_user="u", basic_auth_password_file="/pw", timeout_seconds=30.0
        ),
        "pod selector": Credentials(bearer_token_file="/tok"),
    }


def test_servers_alone_still_load(tmp_path: Path) -> None:
    loaded = load_fleet(str(fleet(tmp_path, "servers: [{url: 'http://a:9090'}]\n")))
    assert [s.name for s in loaded.servers] == ["a:9090"] and loaded.discovered == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("discovered: [{authorization: {credentials_file: /t}}]", "exactly one of prometheus"),
        ("discovered: [{prometheus: k8s}]", "NAMESPACE/NAME"),
        ("discovered: [{prometheus: a/b, agent: a/b}]", "exactly one of"),
        ("discovered: [{pod_selector: yes please}]", "pod_selector must be true"),
        (
            "discovered: [{prometheus: a/b, authorization: "
            "{credentials_file: /t, service_account_token: true}}]",
            "not both",
        ),
        ("discovered: [{prometheus: a/b, timeout: 0}]", "positive number of seconds"),
        ("discovered: [{prometheus: a/b}, {prometheus: a/b}]", "Prometheus a/b twice"),
        ("discovered: [{prometheus: a/b, colour: red}]", "unknown keys colour"),
        ("servers: []\nextra: 1", "unknown keys extra"),
    ],
)
def test_bad_entries_are_refused_naming_them(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_fleet(str(fleet(tmp_path, text)))
