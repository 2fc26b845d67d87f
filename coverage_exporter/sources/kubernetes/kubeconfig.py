"""Where the Kubernetes API is and how to authenticate to it.

The official `kubernetes` client only loads the configuration, through its
public functions (load_kube_config, load_incluster_config): it knows every
kubeconfig variant (exec plugins, token files, client certificates,
in-cluster service-account tokens that rotate). The HTTP itself is done by
`sources/kubernetes/api.py` with aiohttp, which this module feeds with a base URL,
an SSL context, the proxy (the cluster's proxy-url, else HTTPS_PROXY and
NO_PROXY as client-go reads them: sources/kubernetes/proxy_env.py) and a fresh
Authorization header per request.

Before the client sees a kubeconfig, the files are read and checked here
(read_kubeconfig), so that a missing or malformed file is told as kubectl
tells it, and not as whatever the client's parser raises; the merged
contexts and users also say which tokenFile to watch, without reaching
into the client's private loader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar
from urllib.parse import urlsplit

import yaml
from kubernetes import config as k8s_config
from kubernetes.client import Configuration

from coverage_exporter import untrusted
from coverage_exporter.logs import fields
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes import proxy_env

log = logging.getLogger("coverage_exporter.kubernetes")

T = TypeVar("T")

_SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
_SECTIONS = {"clusters": "cluster", "contexts": "context", "users": "user"}


class KubeconfigError(SourceError):
    """No usable cluster is named: a file that does not exist or is no
    kubeconfig, an unknown context. A usage error for `audit` (exit 2): the
    flags or the environment must change, not the cluster."""


@dataclass(frozen=True)
class Kubeconfig:
    """The files of $KUBECONFIG (or --kubeconfig) merged as client-go merges
    them: the first file to set current-context, or to define a name, wins."""

    paths: tuple[str, ...]
    current_context: str
    entries: dict[str, dict[str, tuple[str, dict[str, Any]]]]
    """section (clusters, contexts, users) -> name -> (file, the entry's body)"""

    def context(self, name: str | None) -> tuple[str, dict[str, Any]]:
        """(name, body) of the context to use; KubeconfigError as kubectl words it."""
        chosen = name or self.current_context
        if not chosen:
            raise KubeconfigError(
                f"kubeconfig {os.pathsep.join(self.paths)}: current-context is not set; "
                "pass --context"
            )
        contexts = self.entries["contexts"]
        if chosen not in contexts:
            known = ", ".join(sorted(contexts)) or "none"
            raise KubeconfigError(
                f'kubeconfig {os.pathsep.join(self.paths)}: context "{chosen}" does not exist '
                f"(contexts: {known})"
            )
        return chosen, contexts[chosen][1]

    def proxy_url(self, context: str | None) -> str | None:
        """The context's cluster's proxy-url, if it has one."""
        try:
            _, body = self.context(context)
        except KubeconfigError:
            return None
        cluster = self.entries["clusters"].get(str(body.get("cluster") or ""))
        url = cluster[1].get("proxy-url") if cluster is not None else None
        return str(url) if url else None

    def user(self, context: str | None) -> tuple[str, dict[str, Any]] | None:
        """(file that defines it, body) of the context's user, if any."""
        try:
            _, body = self.context(context)
        except KubeconfigError:
            return None
        return self.entries["users"].get(str(body.get("user") or ""))


def read_kubeconfig(paths: list[str], explicit: bool) -> Kubeconfig:
    """Read and check the files, and merge them. An explicit --kubeconfig
    must exist; in $KUBECONFIG a missing file is skipped, as kubectl does."""
    merged: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {s: {} for s in _SECTIONS}
    current, read = "", []
    for path in paths:
        doc = _kubeconfig_file(path, explicit)
        if doc is None:
            continue
        read.append(path)
        current = current or str(doc.get("current-context") or "")
        for section, key in _SECTIONS.items():
            for name, body in _entries(path, doc, section, key):
                merged[section].setdefault(name, (path, body))
    return Kubeconfig(tuple(read), current, merged)


def _kubeconfig_file(path: str, explicit: bool) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            text = f.read(16 << 20)
    except FileNotFoundError:
        if explicit:
            raise KubeconfigError(f"kubeconfig {path}: no such file or directory") from None
        return None
    except OSError as exc:
        raise KubeconfigError(f"kubeconfig {path}: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise KubeconfigError(f"kubeconfig {path}: not YAML{where}: {problem}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise KubeconfigError(
            f"kubeconfig {path}: not a kubeconfig: it holds {_kind(doc)}, not a mapping "
            "with clusters, contexts and users"
        )
    return doc


def _entries(
    path: str, doc: dict[str, Any], section: str, key: str
) -> list[tuple[str, dict[str, Any]]]:
    items = doc.get(section)
    if items is None:
        return []
    if not isinstance(items, list):
        raise KubeconfigError(f'kubeconfig {path}: "{section}" must be a list, not {_kind(items)}')
    out = []
    for i, item in enumerate(items):
        where = f"kubeconfig {path}: {section}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise KubeconfigError(f"{where} has no name")
        body = item.get(key)
        if body is not None and not isinstance(body, dict):
            raise KubeconfigError(f'{where} ("{item["name"]}"): "{key}" must be a mapping')
        out.append((item["name"], body or {}))
    return out


def _kind(value: object) -> str:
    names = {str: "a string", list: "a list", int: "a number", float: "a number", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def kubeconfig_paths(kubeconfig: str | None) -> list[str]:
    """--kubeconfig, else $KUBECONFIG (a list), else ~/.kube/config."""
    if kubeconfig:
        return [os.path.expanduser(kubeconfig)]
    listed = os.environ.get("KUBECONFIG", "")
    paths = [os.path.expanduser(p) for p in listed.split(os.pathsep) if p]
    return paths or [os.path.expanduser("~/.kube/config")]


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
            # The client fills proxy from the environment with urllib's rules;
            # proxy() applies client-go's instead.
            configuration.proxy = None
            log.info("using the in-cluster config", extra=fields(api=configuration.host))
            return configuration
        except k8s_config.ConfigException as exc:
            if in_cluster:
                raise KubeconfigError(f"in-cluster Kubernetes config not usable: {exc}") from exc
            tried.append(f"in-cluster ({exc})")
    paths = kubeconfig_paths(kubeconfig)
    path = os.pathsep.join(paths)
    merged = read_kubeconfig(paths, explicit=kubeconfig is not None)
    if not merged.paths:
        tried.append(f"kubeconfig {path} (not found)")
        raise KubeconfigError(
            "no Kubernetes configuration found; tried: "
            + "; ".join(tried)
            + ". Pass --kubeconfig, set $KUBECONFIG, or run in a pod with a service account."
        )
    merged.context(context)  # an unknown or unset context, as kubectl says it
    path = os.pathsep.join(merged.paths)
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
        raise KubeconfigError(f"kubeconfig {path}: context has no server URL")
    # Only the cluster's own proxy-url here (the client also takes one from
    # the environment, with urllib's rules): proxy() applies client-go's.
    configuration.proxy = merged.proxy_url(context)
    log.info("using a kubeconfig", extra=fields(kubeconfig=path, api=configuration.host))
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
    if kubeconfig is not None or not os.environ.get(_SERVICE_HOST_ENV):
        files = kubeconfig_paths(kubeconfig)
        paths.extend(files)
        paths.extend(_token_files(files, context))
    return tuple(dict.fromkeys(paths))


def exec_plugin(kubeconfig: str | None = None, context: str | None = None) -> str | None:
    """The command of the context's user's exec credential plugin, if it
    has one (as credential_files, only when the kubeconfig is in use): what
    a refresh that hangs names."""
    if kubeconfig is None and os.environ.get(_SERVICE_HOST_ENV):
        return None
    try:
        user = read_kubeconfig(kubeconfig_paths(kubeconfig), explicit=False).user(context)
    except KubeconfigError:
        return None
    plugin = user[1].get("exec") if user is not None else None
    command = plugin.get("command") if isinstance(plugin, dict) else None
    if not command or not isinstance(command, str):
        return None
    return untrusted.printable(command, 200)


def _token_files(files: list[str], context: str | None) -> list[str]:
    """The context's user's tokenFile, relative to the file that defines the
    user, as the client resolves it."""
    try:
        user = read_kubeconfig(files, explicit=False).user(context)
    except KubeconfigError:
        return []
    token_file = user[1].get("tokenFile") if user is not None else None
    if not token_file or not isinstance(token_file, str) or user is None:
        return []
    base = os.path.dirname(os.path.abspath(user[0]))
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


EXEC_TIMEOUT_SECONDS = 30.0
"""How long loading the kubeconfig, or refreshing its credentials, may
take: an exec plugin (aws, gcloud, kubelogin) runs there, with no timeout
of its own in the client library. Past it, at start, `serve` and `audit`
fail with a message; during requests (an expired exec token refreshed, a
reload after a 401), the request fails as a source error (KubeAuth). An
IdP round trip takes a second or two; a plugin that waits for a human
(interactive login) never ends here anyway."""


def _consume(work: asyncio.Future[Any]) -> None:
    """A refresh given up on may still end, well or not: no one awaits it."""
    if not work.cancelled():
        work.exception()


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
    plugin: str | None = None
    """The exec credential plugin's command (exec_plugin), named when a
    refresh hangs."""
    files: tuple[str, ...] = ()
    check_seconds: float = 10.0
    reloads_total: int = 0
    _stamp: tuple[object, ...] = ()
    _checked: float = 0.0
    _stale: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _refreshing: asyncio.Future[Any] | None = field(default=None, repr=False)
    """The last credential refresh run in a thread, until it ends."""

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
        plugin: str | None = None,
    ) -> KubeAuth:
        return cls(
            configuration=configuration,
            reload=reload,
            files=files,
            plugin=plugin,
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
        file, so it runs in a thread (_bounded); the lock keeps two
        refreshes from racing on the shared Configuration. SourceError when
        a refresh hangs (an exec plugin past EXEC_TIMEOUT_SECONDS).
        """
        async with self._lock:
            await self._reload_if_changed()
            value = await self._bounded(
                "refreshing the credentials",
                lambda: self.configuration.get_api_key_with_prefix("BearerToken", "authorization"),
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
            configuration = await self._bounded("reloading the credentials", self.reload)
            connection = _connection(configuration)
        except (SourceError, OSError, ValueError) as exc:
            log.warning(
                "credentials to reload, but reloading them failed", extra=fields(why=why, err=exc)
            )
            return
        self.configuration = configuration
        for name, value in connection.items():
            setattr(self, name, value)
        self.reloads_total += 1
        log.info("credentials reloaded", extra=fields(why=why))

    async def _bounded(self, what: str, call: Callable[[], T]) -> T:
        """call() in a thread (it may run an exec plugin), waited for
        EXEC_TIMEOUT_SECONDS at most: past it, SourceError, so that the
        request fails (the source down, its reflectors retrying) and the
        lock is let go, instead of every API call waiting on a hung plugin
        while source_up stays 1. A thread cannot be stopped, nor the
        client library's plugin process reached: until that refresh ends,
        every request fails at once, rather than each starting another
        plugin that may hang too (each a thread of the executor, for good)."""
        hangs = f"exec plugin {self.plugin} hangs?" if self.plugin else "an exec plugin that hangs?"
        pending = self._refreshing
        if pending is not None and not pending.done():
            # The same words at every retry: the reflectors log a repeat at
            # debug level only.
            raise SourceError(
                f"{what}: an earlier credential refresh has not ended "
                f"in {EXEC_TIMEOUT_SECONDS:g}s ({hangs})"
            )
        work = asyncio.ensure_future(asyncio.to_thread(call))
        work.add_done_callback(_consume)
        self._refreshing = work
        try:
            # shield: the thread runs on whatever happens to this wait;
            # `work` must stay pending as long as it does. asyncio.timeout,
            # not wait_for: on Python 3.11 wait_for returns the result to a
            # task cancelled once `work` is done (CPython gh-86296), and a
            # reflector whose stop() was lost that way watched on while
            # stop() waited for it forever.
            async with asyncio.timeout(EXEC_TIMEOUT_SECONDS):
                return await asyncio.shield(work)
        except TimeoutError:
            log.warning(
                "a credential refresh did not end in time (an exec plugin that hangs?); "
                "Kubernetes API requests fail until it does",
                extra=fields(
                    what=what, plugin=self.plugin or "unknown", timeout=f"{EXEC_TIMEOUT_SECONDS:g}s"
                ),
            )
            raise SourceError(
                f"{what} did not finish within {EXEC_TIMEOUT_SECONDS:g}s ({hangs})"
            ) from None


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
        "proxy": proxy(configuration),
    }


def proxy(configuration: Configuration) -> str | None:
    """The cluster's proxy-url, else the environment's as client-go reads it.
    SourceError for a proxy aiohttp cannot speak (socks5), rather than a
    connection that hangs or goes around it."""
    url = configuration.proxy or proxy_env.proxy_for(configuration.host)
    if url is None:
        return None
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        where = "the kubeconfig's proxy-url" if configuration.proxy else "HTTPS_PROXY/HTTP_PROXY"
        raise SourceError(
            f"{where} is {untrusted.printable(url)}: only http:// and https:// proxies are "
            "supported for the Kubernetes API; use an HTTP proxy, or name the API server in "
            "NO_PROXY"
        )
    return url
