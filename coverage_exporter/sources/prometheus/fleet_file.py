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
```

The keys follow Prometheus's own configuration (`authorization`,
`basic_auth`, `tls_config`) so that they read as users already know them.
The file is read strictly, because a key dropped in silence fails open: an
unknown key at any level is refused by name, `insecure_skip_verify` must
be a real boolean (the string "false" was true), and secrets are read from
files only (an inline `credentials` or `password` was dropped, and the
server was asked with an empty password).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from coverage_exporter import defaults
from coverage_exporter.flagtypes import parse_seconds
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
    "tls_config": {"ca_file", "cert_file", "key_file", "insecure_skip_verify"},
}
_INLINE_SECRETS = {"authorization": "credentials", "basic_auth": "password"}


def load_fleet_file(
    path: str, default_timeout: float = parse_seconds(defaults.PROMETHEUS_TIMEOUT)
) -> list[PrometheusEndpoint]:
    """Raises ValueError with a message naming the file and the entry."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"--prometheus-fleet-file {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ValueError(f"--prometheus-fleet-file {path}: not YAML: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("servers"), list):
        raise ValueError(
            f"--prometheus-fleet-file {path}: expected a mapping with a 'servers' list"
        )
    return [_server(path, i, raw, default_timeout) for i, raw in enumerate(doc["servers"])]


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
    auth = _mapping(where, raw, "authorization")
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
            timeout_seconds=float(timeout),
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


def _mapping(where: str, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: '{key}' must be a mapping")
    inline = _INLINE_SECRETS.get(key)
    if inline is not None and inline in value:
        raise ValueError(
            f"{where}: {key}.{inline} inline is not read; put the secret in a file "
            f"and name it with {key}.{inline.removesuffix('s')}_file"
        )
    unknown = sorted(set(map(str, value)) - _SECTION_KEYS[key])
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
