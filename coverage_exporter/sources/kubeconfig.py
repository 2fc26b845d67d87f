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
from dataclasses import dataclass, field

from kubernetes import config as k8s_config
from kubernetes.client import Configuration

from coverage_exporter.sources import httpclient
from coverage_exporter.sources.health import SourceError

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
    except (k8s_config.ConfigException, OSError) as exc:
        raise SourceError(f"kubeconfig {path} (context {context or 'current'}): {exc}") from exc
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


@dataclass
class KubeAuth:
    """What every request needs: base URL, TLS, and the current credentials."""

    configuration: Configuration
    host: str = ""
    ssl: ssl.SSLContext | bool = True
    server_hostname: str | None = None
    proxy: str | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def from_configuration(cls, configuration: Configuration) -> KubeAuth:
        return cls(
            configuration=configuration,
            host=configuration.host.rstrip("/"),
            ssl=ssl_context(configuration),
            server_hostname=getattr(configuration, "tls_server_name", None) or None,
            proxy=configuration.proxy or None,
        )

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
            return await asyncio.to_thread(
                self.configuration.get_api_key_with_prefix, "BearerToken", "authorization"
            )
