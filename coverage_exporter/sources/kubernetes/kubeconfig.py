"""Where the Kubernetes API is and how to authenticate to it.

The official `kubernetes` client only loads the configuration: it knows
every kubeconfig variant (exec plugins, token files, client certificates,
in-cluster service-account tokens that rotate). The HTTP itself is done by
`sources.k8s_api` with aiohttp, which this module feeds with a base URL,
an SSL context and a fresh Authorization header per request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

from kubernetes import config as k8s_config
from kubernetes.client import Configuration

from coverage_exporter import untrusted
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.errors import SourceError

log = logging.getLogger("coverage_exporter.kubernetes")

_SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"


def load_configuration(
    kubeconfig: str | None = None,
    context: str | None = None,
    in_cluster: bool | None = None,
) -> Configuration:
    """Load a client Configuration.

    in_cluster=None picks like kubectl does in a pod: an explicit kubeconfig
    wins, then the service account when running in a pod, then $KUBECONFIG
    or ~/.kube/config. Raises SourceError with the paths tried.
    """
    configuration = Configuration()
    tried: list[str] = []
    if (
        kubeconfig is None
        and in_cluster is not False
        and (in_cluster or os.environ.get(_SERVICE_HOST_ENV))
    ):
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            log.info("kubernetes: using in-cluster config, API at %s", configuration.host)
            return configuration
        except k8s_config.ConfigException as exc:
            if in_cluster:
                raise SourceError(f"in-cluster Kubernetes config not usable: {exc}") from exc
            tried.append(f"in-cluster ({exc})")
    path = kubeconfig or os.path.expanduser(k8s_config.KUBE_CONFIG_DEFAULT_LOCATION)
    # $KUBECONFIG may list several files; the client merges them itself.
    if kubeconfig is None and not any(
        os.path.exists(os.path.expanduser(p)) for p in path.split(os.pathsep) if p
    ):
        tried.append(f"kubeconfig {path} (not found)")
        raise SourceError(
            "no Kubernetes configuration found; tried: "
            + "; ".join(tried)
            + ". Pass --kubeconfig, set $KUBECONFIG, or run in a pod with a service account."
        )
    try:
        k8s_config.load_kube_config(
            config_file=path,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except Exception as exc:
        # A file the client cannot make sense of (not YAML, a boolean where
        # a URL belongs) raises whatever its parser happens to raise
        # (ScannerError, AttributeError, TypeError...; found by tests/fuzz).
        detail = untrusted.printable(str(exc), 300)
        raise SourceError(f"kubeconfig {path} (context {context or 'current'}): {detail}") from None
    if not configuration.host:
        raise SourceError(f"kubeconfig {path}: context has no server URL")
    log.info("kubernetes: using kubeconfig %s, API at %s", path, configuration.host)
    return configuration


def ssl_context(configuration: Configuration) -> ssl.SSLContext | bool:
    """SSL settings for aiohttp from a kubeconfig: CA, client certificate,
    and insecure-skip-tls-verify. Raises SourceError for unusable files."""
    if not configuration.host.startswith("https"):
        return True  # plain http: aiohttp ignores it
    return httpclient.ssl_context(
        ca_file=configuration.ssl_ca_cert or None,
        cert_file=configuration.cert_file or None,
        key_file=configuration.key_file or None,
        insecure_skip_verify=not configuration.verify_ssl,
    )


def credential_files(
    configuration: Configuration, kubeconfig: str | None = None, context: str | None = None
) -> tuple[str, ...]:
    """Files whose change means the credentials changed: the kubeconfig
    files, the user's tokenFile, and the CA, certificate and key files.

    The client reads tokenFile once at load and never again (client-go
    re-reads it every minute), so it is found here to be watched.
    """
    paths = [
        p for p in (configuration.ssl_ca_cert, configuration.cert_file, configuration.key_file) if p
    ]
    if kubeconfig is None and not os.environ.get(_SERVICE_HOST_ENV):
        kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser(
            k8s_config.KUBE_CONFIG_DEFAULT_LOCATION
        )
    if kubeconfig:
        files = [os.path.expanduser(p) for p in kubeconfig.split(os.pathsep) if p]
        paths.extend(files)
        paths.extend(_token_files(files, context))
    return tuple(dict.fromkeys(paths))


def _token_files(files: list[str], context: str | None) -> list[str]:
    try:
        # The loader only reads and merges the files here: no exec plugin
        # runs until credentials are asked for.
        loader = k8s_config.kube_config._get_kube_config_loader(
            filename=os.pathsep.join(files), active_context=context, persist_config=False
        )
        user = loader._user
        token_file = user.safe_get("tokenFile") if user is not None else None
    except Exception:
        return []
    if not token_file:
        return []
    base = os.path.dirname(os.path.abspath(user.path)) if getattr(user, "path", None) else ""
    return [os.path.join(base, os.path.expanduser(token_file))]


def _fingerprint(paths: tuple[str, ...]) -> tuple[object, ...]:
    stamps: list[object] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


@dataclass
class KubeAuth:
    """What every request needs: base URL, TLS, and the current credentials.

    Credentials rotate without a restart: the configuration is loaded again
    when one of its files changed (checked every `check_seconds`: tokenFile,
    client certificate and key, CA bundle, the kubeconfig itself), and after
    the API answered 401 (an exec plugin's token that the server no longer
    takes, a revoked token): `invalidate()` makes the next request reload,
    which runs the exec plugin again.
    """

    configuration: Configuration
    host: str = ""
    ssl: ssl.SSLContext | bool = True
    server_hostname: str | None = None
    proxy: str | None = None
    reload: Callable[[], Configuration] | None = None
    """Loads a fresh Configuration (None: credentials fixed, as in tests)."""
    files: tuple[str, ...] = ()
    check_seconds: float = 10.0
    reloads_total: int = 0
    _stamp: tuple[object, ...] = ()
    _checked: float = 0.0
    _stale: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def __post_init__(self) -> None:
        self._stamp = _fingerprint(self.files)
        self._checked = time.monotonic()

    @classmethod
    def from_configuration(
        cls,
        configuration: Configuration,
        *,
        reload: Callable[[], Configuration] | None = None,
        files: tuple[str, ...] = (),
    ) -> KubeAuth:
        return cls(
            configuration=configuration,
            reload=reload,
            files=files,
            **_connection(configuration),
        )

    def invalidate(self) -> None:
        """The server refused the credentials: reload them before the next
        request."""
        if self.reload is not None:
            self._stale = True

    async def authorization(self) -> str | None:
        """The Authorization header value, or None (client certificates).

        kubernetes 37 stores the token under api_key["BearerToken"] (value
        already prefixed "Bearer ...") and "authorization" is only an alias;
        get_api_key_with_prefix calls refresh_api_key_hook first, which
        re-reads rotated service-account tokens and re-runs exec plugins
        when their token expired. The hook may run a subprocess or read a
        file, so it runs in a thread; the lock keeps two refreshes from
        racing on the shared Configuration.
        """
        async with self._lock:
            await self._reload_if_changed()
            value = await asyncio.to_thread(
                self.configuration.get_api_key_with_prefix, "BearerToken", "authorization"
            )
        # The client keeps a tokenFile's trailing newline, which no HTTP
        # header may carry (client-go trims it too).
        return value.strip() if value else value

    async def _reload_if_changed(self) -> None:
        if self.reload is None:
            return
        now = time.monotonic()
        changed = False
        if now - self._checked >= self.check_seconds:
            self._checked = now
            stamp = _fingerprint(self.files)
            changed, self._stamp = stamp != self._stamp, stamp
        if not (changed or self._stale):
            return
        why = "credential files changed" if changed else "the API refused the credentials"
        self._stale = False
        try:
            configuration = await asyncio.to_thread(self.reload)
            connection = _connection(configuration)
        except (SourceError, OSError, ValueError) as exc:
            log.warning("kubernetes: %s, but reloading them failed: %s", why, exc)
            return
        self.configuration = configuration
        for name, value in connection.items():
            setattr(self, name, value)
        self.reloads_total += 1
        log.info("kubernetes: %s: credentials reloaded", why)


class _Connection(TypedDict):
    host: str
    ssl: ssl.SSLContext | bool
    server_hostname: str | None
    proxy: str | None


def _connection(configuration: Configuration) -> _Connection:
    return {
        "host": configuration.host.rstrip("/"),
        "ssl": ssl_context(configuration),
        "server_hostname": getattr(configuration, "tls_server_name", None) or None,
        "proxy": configuration.proxy or None,
    }
