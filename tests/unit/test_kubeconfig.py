"""Config loading through the official client, credentials refreshed per request."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes.kubeconfig import KubeAuth, load_configuration
from coverage_exporter.sources.kubernetes.source import KubernetesSource


def write_kubeconfig(
    path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None
) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "http://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": "main", "context": {"cluster": "c", "user": "u"}},
            {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "x"}},
        ],
        "current-context": "main",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_no_config_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In a "pod" without service-account files, and without any kubeconfig.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setattr(
        "kubernetes.config.incluster_config.SERVICE_TOKEN_FILENAME", str(tmp_path / "no-token")
    )
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setattr("kubernetes.config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="no Kubernetes configuration found") as err:
        load_configuration()
    assert "in-cluster" in str(err.value) and "missing" in str(err.value)


def test_explicit_missing_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="missing"):
        load_configuration(kubeconfig=str(tmp_path / "missing"))


def test_in_cluster_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(SourceError, match="in-cluster"):
        load_configuration(in_cluster=True)


def test_unknown_context(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", {"token": "abc"})
    with pytest.raises(SourceError, match="nope"):
        load_configuration(kubeconfig=str(path), context="nope")


async def test_static_token(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", {"token": "abc"})
    auth = KubeAuth.from_configuration(load_configuration(kubeconfig=str(path), context="other"))
    assert auth.host == "http://127.0.0.1:6443"
    assert await auth.authorization() == "Bearer abc"


async def test_token_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    path = write_kubeconfig(tmp_path / "kc", {"tokenFile": str(tmp_path / "token")})
    auth = KubeAuth.from_configuration(load_configuration(kubeconfig=str(path)))
    assert (await auth.authorization() or "").strip() == "Bearer from-file"


async def test_exec_plugin_token_is_refreshed_when_expired(tmp_path: Path) -> None:
    # An exec credential plugin that hands out a new token per call, each
    # already expired: every request must run it again.
    counter = tmp_path / "count"
    counter.write_text("0")
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1\n"
        "p.write_text(str(n))\n"
        "json.dump({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
        " 'status': {'token': f'tok-{n}', 'expirationTimestamp': '2000-01-01T00:00:00Z'}},"
        " sys.stdout)\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
    }
    path = write_kubeconfig(tmp_path / "kc", user)
    auth = KubeAuth.from_configuration(load_configuration(kubeconfig=str(path)))
    first = await auth.authorization()
    second = await auth.authorization()
    assert first is not None and first.startswith("Bearer tok-")
    assert second != first


async def test_refresh_hook_is_called(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", {"token": "abc"})
    configuration = load_configuration(kubeconfig=str(path))
    calls: list[int] = []

    def hook(cfg: Any) -> None:
        calls.append(1)
        cfg.api_key["BearerToken"] = f"Bearer rotated-{len(calls)}"

    configuration.refresh_api_key_hook = hook
    auth = KubeAuth.from_configuration(configuration)
    assert await auth.authorization() == "Bearer rotated-1"
    assert await auth.authorization() == "Bearer rotated-2"


def test_tls_settings(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "kc",
        {"token": "abc"},
        {
            "server": "https://127.0.0.1:6443",
            "insecure-skip-tls-verify": True,
            "tls-server-name": "kubernetes",
        },
    )
    auth = KubeAuth.from_configuration(load_configuration(kubeconfig=str(path)))
    assert isinstance(auth.ssl, ssl.SSLContext)
    assert auth.ssl.verify_mode == ssl.CERT_NONE
    assert auth.server_hostname == "kubernetes"


async def test_bad_ca_file_is_a_source_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    path = write_kubeconfig(
        tmp_path / "kc",
        {"token": "abc"},
        {"server": "https://127.0.0.1:6443", "certificate-authority": str(bad)},
    )
    source = KubernetesSource(kubeconfig=str(path))
    with pytest.raises(SourceError, match="TLS"):
        await source.start()
