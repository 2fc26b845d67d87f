"""Config loading through the official client, credentials refreshed per request."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes import kubeconfig as kubeconfig_module
from coverage_exporter.sources.kubernetes.kubeconfig import (
    KubeAuth,
    KubeconfigError,
    credential_files,
    exec_plugin,
    load_configuration,
)
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


def test_the_exec_plugin_is_named_by_its_command(tmp_path: Path) -> None:
    """What a refresh that hangs names (KubeAuth.plugin)."""
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws\x1b[31m"}}
    path = write_kubeconfig(tmp_path / "kc", user)
    assert exec_plugin(str(path)) == "aws\\x1b[31m"
    assert exec_plugin(str(write_kubeconfig(tmp_path / "kc2", {"token": "abc"}))) is None


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


async def test_a_request_cancelled_as_its_credential_refresh_ends_is_cancelled(
    tmp_path: Path,
) -> None:
    """A cancel that lands in the few loop turns between the refresh's end
    (in its thread) and the request resuming must still cancel the request.
    It did not when the refresh was waited for with asyncio.wait_for: on
    Python 3.11 (the image's) wait_for returns the result to a task cancelled
    once its awaitable is done (CPython gh-86296, fixed in 3.12), the cancel
    is lost, and Reflector.stop waited forever on a reflector that went on to
    watch (test_pod_watches_are_capped_and_counted hung 3 runs in 6).
    Every turn from the refresh's end on is tried."""
    path = write_kubeconfig(tmp_path / "kc", {"token": "abc"})
    for turns in range(6):
        auth = KubeAuth.from_configuration(load_configuration(kubeconfig=str(path)))
        request = asyncio.create_task(auth.authorization())
        # Loop turns counted on purpose: the window is a few turns wide.
        while auth._refreshing is None or not auth._refreshing.done():  # noqa: ASYNC110
            await asyncio.sleep(0)
        for _ in range(turns):
            await asyncio.sleep(0)
        if request.done():
            break  # past the window: the request returned before the cancel
        request.cancel()
        await asyncio.wait([request])
        assert request.cancelled(), f"cancel lost {turns} turns after the refresh ended"
    else:
        raise AssertionError("the request never returned: the window was not passed")


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


# --- errors as kubectl gives them -------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"kubeconfig {path}: no such file or directory$"),
        ("clusters: [a\n  b: c", r"kubeconfig {path}: not YAML at line 2, column 4: "),
        ("just a string\n", r"kubeconfig {path}: not a kubeconfig: it holds a string, not a "
                            r"mapping with clusters, contexts and users"),
        ("- a\n- b\n", r"it holds a list"),
        ("clusters: c\n", r'kubeconfig {path}: "clusters" must be a list, not a string'),
        ("users: [{user: {token: t}}]\n", r"kubeconfig {path}: users\[0\] has no name"),
        ("contexts: [{name: x, context: yes}]\n",
         r'kubeconfig {path}: contexts\[0\] \("x"\): "context" must be a mapping'),
    ],
)  # fmt: skip
def test_a_bad_kubeconfig_is_told_as_kubectl_tells_it(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "kc"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KubeconfigError, match=message.format(path=re.escape(str(path)))) as err:
        load_configuration(kubeconfig=str(path))
    # Never the client's own words for it, nor a Python type error.
    text = str(err.value)
    assert "Invalid kube-config file" not in text and "object" not in text


def test_an_unknown_context_names_the_known_ones(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", {"token": "abc"})
    with pytest.raises(KubeconfigError, match=r'context "nope" does not exist \(contexts: main, '
                                               r"other\)"):  # fmt: skip
        load_configuration(kubeconfig=str(path), context="nope")


def test_token_files_of_merged_kubeconfigs_without_the_clients_private_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # $KUBECONFIG lists two files: the first to define a name wins, and a
    # relative tokenFile is relative to the file that defines the user.
    first = tmp_path / "a" / "kc"
    first.parent.mkdir()
    write_kubeconfig(first, {"tokenFile": "token"})
    second = tmp_path / "b" / "kc"
    second.parent.mkdir()
    cfg = yaml.safe_load(first.read_text())
    cfg["users"] = [{"name": "u", "user": {"tokenFile": "other-token"}}]
    cfg["current-context"] = "other"
    second.write_text(yaml.safe_dump(cfg))
    (first.parent / "token").write_text("t\n")
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{second}")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    configuration = load_configuration()
    files = credential_files(configuration)
    assert str(first.parent / "token") in files
    assert str(second.parent / "other-token") not in files
    assert {str(first), str(second)} <= set(files)


def test_no_private_api_of_the_kubernetes_client_is_used() -> None:
    # A renamed private function would silently turn token-file rotation off:
    # only the client's public functions and attributes are used.
    package = Path(kubeconfig_module.__file__).parent.parent
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                base = ast.unparse(node.value)
                assert not base.startswith(("k8s_config", "kubernetes", "loader")), (
                    f"{path.name}:{node.lineno}: {base}.{node.attr}"
                )
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kubernetes"):
                assert all(not a.name.startswith("_") for a in node.names), path.name
                assert ".config.kube_config" not in (node.module or ""), path.name


# --- proxies, as client-go reads them ---------------------------------------------


def _auth(tmp_path: Path, cluster: dict[str, Any]) -> KubeAuth:
    path = write_kubeconfig(tmp_path / "kc", {"token": "abc"}, cluster)
    return KubeAuth.from_configuration(load_configuration(kubeconfig=str(path)))


def test_https_proxy_reaches_the_api_server_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert (
        _auth(tmp_path, {"server": "https://kube.example:6443"}).proxy == "http://proxy.corp:3128"
    )
    monkeypatch.setenv("NO_PROXY", ".example")
    assert _auth(tmp_path, {"server": "https://kube.example:6443"}).proxy is None
    # The cluster's proxy-url wins over the environment.
    cluster = {"server": "https://kube.example:6443", "proxy-url": "http://other:8080"}
    assert _auth(tmp_path, cluster).proxy == "http://other:8080"
    # Loopback is never proxied.
    monkeypatch.delenv("NO_PROXY")
    assert _auth(tmp_path, {"server": "https://127.0.0.1:6443"}).proxy is None


def test_a_proxy_aiohttp_cannot_speak_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.corp:1080")
    with pytest.raises(SourceError, match=r"HTTPS_PROXY/HTTP_PROXY is socks5://proxy.corp:1080: "
                                          r"only http:// and https:// proxies"):  # fmt: skip
        _auth(tmp_path, {"server": "https://kube.example:6443"})
