"""The fleet file (`--prometheus-fleet-file`): every Prometheus server to
compare, each with its own credentials, TLS and, where the automatic
recognition cannot tell, its place among shards and replicas.

```yaml
servers:
  - name: k8s-0                      # the `server` label; default host:port
    url: https://prometheus-k8s-0.example:9090
    authorization: {credentials_file: /var/run/secrets/prom-token}
    # or basic_auth: {username: u, password_file: /path}
    tls_config: {ca_file: /ca.crt, cert_file: /c.crt, key_file: /c.key,
                 insecure_skip_verify: false}
    timeout: 60                      # seconds per request
    scraper: monitoring/k8s          # optional topology, see model.topology
    replica: a
    shard: 0
    shards: 2
    kind: prometheus                 # optional: prometheus, prometheus_agent,
                                     # vmagent, thanos_query (docs/scrapers.md)
discovered:                          # credentials of servers discovery finds
  - prometheus: monitoring/k8s       # or agent: NS/NAME, or pod_selector: true
    authorization: {service_account_token: true}   # or credentials_file: PATH
    tls_config: {ca_file: /ca.crt, server_name: prometheus-k8s.monitoring.svc}
```

The keys follow Prometheus's own configuration (`authorization`,
`basic_auth`, `tls_config`) so that they read as users already know them.
Servers found by discovery are read without credentials unless an entry of
`discovered` names their object (or `pod_selector: true` for the pods the
selector finds).
The file is read strictly, because a key dropped in silence fails open: an
unknown key at any level is refused by name, `insecure_skip_verify` must
be a real boolean (the string "false" was true), and secrets are read from
files only (an inline `credentials` or `password` was dropped, and the
server was asked with an empty password).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coverage_exporter import defaults
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.model.discovery import PROMETHEUS, PROMETHEUS_AGENT, SELECTED
from coverage_exporter.model.topology import Declared
from coverage_exporter.sources.prometheus.server_kind import parse_kind
from coverage_exporter.sources.prometheus.source import PrometheusEndpoint

_SERVER_KEYS = {
    "name",
    "url",
    "authorization",
    "basic_auth",
    "tls_config",
    "timeout",
    "scraper",
    "replica",
    "shard",
    "shards",
    "kind",
}
_SECTION_KEYS = {
    "authorization": {"type", "credentials_file"},
    "basic_auth": {"username", "password_file"},
    "tls_config": {"ca_file", "cert_file", "key_file", "insecure_skip_verify", "server_name"},
}
_INLINE_SECRETS = {"authorization": "credentials", "basic_auth": "password"}


SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
"""The exporter's own ServiceAccount token, for `service_account_token: true`
(kube-rbac-proxy in front of Prometheus asks for one)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to read the servers discovery finds for one object."""

    bearer_token_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    server_name: str | None = None
    timeout_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Fleet:
    servers: list[PrometheusEndpoint] = field(default_factory=list)
    discovered: dict[str, Credentials] = field(default_factory=dict)
    """FoundServer.credentials (`Prometheus ns/name`, SELECTED) -> how."""


def load_fleet_file(
    path: str, default_timeout: float = parse_seconds(defaults.PROMETHEUS_TIMEOUT)
) -> list[PrometheusEndpoint]:
    """The servers only (see load_fleet)."""
    return load_fleet(path, default_timeout).servers


def load_fleet(
    path: str, default_timeout: float = parse_seconds(defaults.PROMETHEUS_TIMEOUT)
) -> Fleet:
    """Raises ValueError with a message naming the file and the entry."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"--prometheus-fleet-file {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ValueError(f"--prometheus-fleet-file {path}: not YAML: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or not (
        isinstance(doc.get("servers"), list) or isinstance(doc.get("discovered"), list)
    ):
        raise ValueError(
            f"--prometheus-fleet-file {path}: expected a mapping with a 'servers' list "
            "and/or a 'discovered' list"
        )
    unknown = sorted(set(doc) - {"servers", "discovered"})
    if unknown:
        raise ValueError(f"--prometheus-fleet-file {path}: unknown keys {', '.join(unknown)}")
    servers = [
        _server(path, i, raw, default_timeout) for i, raw in enumerate(doc.get("servers") or [])
    ]
    discovered: dict[str, Credentials] = {}
    for i, raw in enumerate(doc.get("discovered") or []):
        key, creds = _discovered(path, i, raw)
        if key in discovered:
            raise ValueError(f"--prometheus-fleet-file {path}: discovered[{i}]: {key} twice")
        discovered[key] = creds
    return Fleet(servers, discovered)


_DISCOVERED_KEYS = {
    "prometheus",
    "agent",
    "pod_selector",
    "authorization",
    "basic_auth",
    "tls_config",
    "timeout",
}


def _discovered(path: str, index: int, raw: Any) -> tuple[str, Credentials]:
    where = f"--prometheus-fleet-file {path}: discovered[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - _DISCOVERED_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(map(str, unknown))}")
    named = [k for k in ("prometheus", "agent", "pod_selector") if raw.get(k) is not None]
    if len(named) != 1:
        raise ValueError(f"{where}: name exactly one of prometheus, agent, pod_selector")
    if named == ["pod_selector"]:
        if raw["pod_selector"] is not True:
            raise ValueError(f"{where}: pod_selector must be true")
        key = SELECTED
    else:
        ref = raw[named[0]]
        if not isinstance(ref, str) or ref.count("/") != 1 or "" in ref.split("/"):
            raise ValueError(f"{where}: {named[0]} must be NAMESPACE/NAME")
        key = f"{PROMETHEUS if named == ['prometheus'] else PROMETHEUS_AGENT} {ref}"
    auth, basic, tls, skip_verify = _auth_sections(where, raw, frozenset({"service_account_token"}))
    sa_token = auth.get("service_account_token", False)
    if not isinstance(sa_token, bool):
        raise ValueError(f"{where}: authorization.service_account_token must be true or false")
    token = _opt_str(auth.get("credentials_file"))
    if sa_token:
        if token:
            raise ValueError(f"{where}: credentials_file or service_account_token, not both")
        token = SERVICE_ACCOUNT_TOKEN
    if token and basic:
        raise ValueError(f"{where}: authorization and basic_auth are mutually exclusive")
    timeout = raw.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ValueError(f"{where}: timeout must be a positive number of seconds")
    return key, Credentials(
        bearer_token_file=token,
        basic_auth_user=_opt_str(basic.get("username")),
        basic_auth_password_file=_opt_str(basic.get("password_file")),
        ca_file=_opt_str(tls.get("ca_file")),
        cert_file=_opt_str(tls.get("cert_file")),
        key_file=_opt_str(tls.get("key_file")),
        insecure_skip_verify=skip_verify,
        server_name=_opt_str(tls.get("server_name")),
        timeout_seconds=None if timeout is None else float(timeout),
    )


def _server(path: str, index: int, raw: Any, default_timeout: float) -> PrometheusEndpoint:
    where = f"--prometheus-fleet-file {path}: servers[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - _SERVER_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(map(str, unknown))}")
    url = raw.get("url")
    if not isinstance(url, str):
        raise ValueError(f"{where}: 'url' is required")
    auth, basic, tls, skip_verify = _auth_sections(where, raw)
    timeout = raw.get("timeout", default_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ValueError(f"{where}: 'timeout' must be a number of seconds, got {timeout!r}")
    try:
        return PrometheusEndpoint(
            url=url,
            name=str(raw.get("name") or ""),
            bearer_token_file=_opt_str(auth.get("credentials_file")),
            basic_auth_user=_opt_str(basic.get("username")),
            basic_auth_password_file=_opt_str(basic.get("password_file")),
            ca_file=_opt_str(tls.get("ca_file")),
            cert_file=_opt_str(tls.get("cert_file")),
            key_file=_opt_str(tls.get("key_file")),
            insecure_skip_verify=skip_verify,
            server_name=_opt_str(tls.get("server_name")),
            timeout_seconds=float(timeout),
            found_by="fleet file",
            declared=Declared(
                scraper=_opt_str(raw.get("scraper")),
                replica=_opt_str(raw.get("replica")),
                shard=_opt_int(where, raw, "shard"),
                shards=_opt_int(where, raw, "shards"),
                kind=None if raw.get("kind") is None else parse_kind(str(raw["kind"])),
            ),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _auth_sections(
    where: str, raw: dict[str, Any], auth_extra: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], bool]:
    """The authorization, basic_auth and tls_config sections of an entry
    (servers and discovered alike), read strictly, and tls_config's
    insecure_skip_verify, a real boolean only."""
    auth = _mapping(where, raw, "authorization", auth_extra)
    basic = _mapping(where, raw, "basic_auth")
    tls = _mapping(where, raw, "tls_config")
    kind = auth.get("type", "Bearer")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise ValueError(f"{where}: authorization.type must be Bearer, got {kind!r}")
    skip_verify = tls.get("insecure_skip_verify", False)
    if not isinstance(skip_verify, bool):
        raise ValueError(
            f"{where}: tls_config.insecure_skip_verify must be true or false, "
            f"not {type(skip_verify).__name__} {skip_verify!r}"
        )
    return auth, basic, tls, skip_verify


def _mapping(
    where: str, raw: dict[str, Any], key: str, extra: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """raw[key], refused when it holds a key this file does not read; extra:
    keys only this kind of entry reads (service_account_token, `discovered`)."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: '{key}' must be a mapping")
    inline = _INLINE_SECRETS.get(key)
    if inline is not None and inline in value:
        raise ValueError(
            f"{where}: {key}.{inline} inline is not read; put the secret in a file "
            f"and name it with {key}.{inline.removesuffix('s')}_file"
        )
    unknown = sorted(set(map(str, value)) - _SECTION_KEYS[key] - extra)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(f'{key}.{k}' for k in unknown)}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_int(where: str, raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: '{key}' must be a non-negative integer")
    return value
