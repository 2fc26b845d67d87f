"""The fleet file's `discovered` entries: credentials for the servers
discovery finds, per Operator object or for the selected pods."""

from __future__ import annotations

from pathlib import Path

import pytest

from coverage_exporter.app import DiscoverySettings
from coverage_exporter.model.discovery import SELECTED, FoundServer
from coverage_exporter.model.objects import ServerIdentity
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
        # main's strictness (#21) holds for discovered entries too.
        ("discovered: [{prometheus: a/b, tls_config: {ca: /c}}]", "unknown keys tls_config.ca"),
        (
            "discovered: [{prometheus: a/b, tls_config: {insecure_skip_verify: 'false'}}]",
            "must be true or false",
        ),
        (
            "discovered: [{prometheus: a/b, authorization: {service_account_token: 'true'}}]",
            "service_account_token must be true or false",
        ),
        ("discovered: [{prometheus: a/b, authorization: {credentials: x}}]", "inline is not read"),
        ("discovered: [{prometheus: a/b, basic_auth: {username: u, password: p}}]", "inline"),
        # service_account_token is read for found servers only, never dropped elsewhere.
        (
            "servers: [{url: 'http://a:9090', authorization: {service_account_token: true}}]",
            "unknown keys authorization.service_account_token",
        ),
    ],
)
def test_bad_entries_are_refused_naming_them(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_fleet(str(fleet(tmp_path, text)))


def test_found_servers_get_their_objects_credentials_and_none_by_default(tmp_path: Path) -> None:
    loaded = load_fleet(
        str(
            fleet(
                tmp_path,
                "discovered:\n"
                "  - prometheus: monitoring/k8s\n"
                "    authorization: {service_account_token: true}\n"
                "    tls_config: {server_name: prometheus-k8s.monitoring.svc}\n"
                "    timeout: 30\n",
            )
        )
    )
    settings = DiscoverySettings(credentials=loaded.discovered, timeout_seconds=120)
    ident = ServerIdentity("monitoring/k8s", "prometheus-k8s-1", 1, 2, "discovered")
    k8s = FoundServer(
        name="monitoring/prometheus-k8s-shard-1-1",
        found_by="Prometheus monitoring/k8s",
        url="https://10.0.0.7:9090",
        identity=ident,
        credentials="Prometheus monitoring/k8s",
    )
    endpoint = settings.endpoint(k8s)
    assert (endpoint.url, endpoint.name) == (k8s.url, k8s.name)
    assert endpoint.bearer_token_file == SERVICE_ACCOUNT_TOKEN
    assert endpoint.server_name == "prometheus-k8s.monitoring.svc"
    assert endpoint.timeout_seconds == 30 and endpoint.found_by == k8s.found_by
    declared = endpoint.declared
    assert (declared.scraper, declared.replica, declared.shard, declared.shards, declared.how) == (
        "monitoring/k8s",
        "prometheus-k8s-1",
        1,
        2,
        "discovered",
    )
    # Another object, or the selected pods without an entry: no credentials.
    other = settings.endpoint(
        FoundServer(
            name="x/p-0",
            found_by="pod selector a=b",
            url="http://10.0.0.8:9090",
            credentials=SELECTED,
        )
    )
    assert other.bearer_token_file is None and other.basic_auth_user is None
    assert other.timeout_seconds == 120 and other.declared.scraper is None
