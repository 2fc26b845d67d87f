"""`--web.config.file`: TLS and basic auth in the exporter-toolkit format.

The same file node_exporter and every Prometheus exporter built on
prometheus/exporter-toolkit read (docs/web-configuration.md there):

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
      min_version: TLS12
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      alice: $2y$10$...        # bcrypt hash (htpasswd -nBC 10 alice)

Relative paths are relative to the file. Like the toolkit, the file is
re-read when it changes (checked per TLS handshake and per request, by
mtime and size of the file and of every file it names), so certificates
and users rotate without a restart; every field of the new file applies
from the next handshake on (each handshake gets the context of the file as
it is then). TLS on or off is fixed at start: a file that switches it is
refused and the old one kept, with a log line saying so. A file that stops
parsing fails closed: handshakes and requests are refused until it is
fixed, never served without auth.

As in the toolkit: `http_server_config.headers` may set only
Strict-Transport-Security, X-Content-Type-Options (nosniff),
X-Frame-Options (deny, sameorigin), X-XSS-Protection and
Content-Security-Policy, and here their values must be printable ASCII
(a CR or LF would inject headers); bcrypt checks run one at a time, off
the event loop, and their results are cached (100 entries); a password
over 72 bytes is checked on its first 72, as Go's bcrypt does.

One departure from the toolkit: /-/healthy and /-/ready need no basic auth
(PROBE_PATHS says why).

Not supported (refused at start, rather than silently ignored):
cipher_suites, curve_preferences, client_allowed_sans, RequestClientCert
and RequireAnyClientCert (Python's ssl cannot ask for a certificate without
verifying it), http2.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coverage_exporter.logs import fields

log = logging.getLogger("coverage_exporter.webconfig")

_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
}
_UNSUPPORTED_TLS = {"cipher_suites", "curve_preferences", "client_allowed_sans", "cert", "key"}
_HTTP_KEYS = {"headers"}
# The exporter-toolkit's extraHTTPHeaders: the only headers it lets a
# config set, and the values it allows where it lists them.
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
BCRYPT_MAX_BYTES = 72
"""Go's bcrypt (the toolkit's) keys Blowfish with the first 72 bytes;
pyca/bcrypt 5 raises on longer passwords instead."""
PASSWORD_CACHE_SIZE = 100
"""The toolkit's cache size."""
PASSWORD_CHECKS_WAITING = 16
"""bcrypt checks queued behind the running one; past that a request is
answered 503 at once rather than queued (each check costs ~50-100 ms of
CPU at cost 10)."""
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


class WebConfigError(ValueError):
    """The web config file is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    client_auth: ssl.VerifyMode
    min_version: ssl.TLSVersion
    max_version: ssl.TLSVersion | None

    def files(self) -> list[Path]:
        return [p for p in (self.cert_file, self.key_file, self.client_ca_file) if p]

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        if self.max_version is not None:
            ctx.maximum_version = self.max_version
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file is not None:
                ctx.load_verify_locations(cafile=self.client_ca_file)
        except (OSError, ssl.SSLError) as err:
            raise WebConfigError(f"tls_server_config: cannot load certificates: {err}") from err
        ctx.verify_mode = self.client_auth
        return ctx


@dataclass(frozen=True, slots=True)
class WebConfig:
    tls: TLSConfig | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def _mapping(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where}: expected a mapping")
    return value


def _check_keys(section: dict, allowed: set[str], where: str) -> None:
    unsupported = set(section) & _UNSUPPORTED_TLS
    if unsupported:
        raise WebConfigError(f"{where}: not supported by this exporter: {sorted(unsupported)}")
    unknown = set(section) - allowed
    if unknown:
        # The toolkit parses strictly too: a typo must not drop a setting.
        raise WebConfigError(f"{where}: unknown fields {sorted(unknown)}")


def _tls(section: dict, base: Path) -> TLSConfig | None:
    _check_keys(section, _TLS_KEYS, "tls_server_config")
    if not section.get("cert_file") and not section.get("key_file"):
        if section:
            raise WebConfigError("tls_server_config: cert_file and key_file are required")
        return None
    if not section.get("cert_file") or not section.get("key_file"):
        raise WebConfigError("tls_server_config: cert_file and key_file go together")
    auth_type = section.get("client_auth_type") or "NoClientCert"
    if auth_type in ("RequestClientCert", "RequireAnyClientCert"):
        raise WebConfigError(
            f"tls_server_config: client_auth_type {auth_type} is not supported "
            "(a certificate is always verified here); use VerifyClientCertIfGiven "
            "or RequireAndVerifyClientCert"
        )
    if auth_type not in _CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config: invalid client_auth_type {auth_type!r}")
    ca = section.get("client_ca_file")
    if ca and auth_type == "NoClientCert":
        raise WebConfigError(
            "tls_server_config: client_ca_file is set without a client_auth_type that uses it"
        )
    if not ca and auth_type != "NoClientCert":
        raise WebConfigError(
            f"tls_server_config: client_auth_type {auth_type} needs client_ca_file"
        )

    def version(key: str) -> ssl.TLSVersion | None:
        raw = section.get(key)
        if raw is None:
            return None
        if raw not in _VERSIONS:
            raise WebConfigError(f"tls_server_config: {key} must be one of {sorted(_VERSIONS)}")
        return _VERSIONS[raw]

    return TLSConfig(
        cert_file=base / section["cert_file"],
        key_file=base / section["key_file"],
        client_ca_file=base / ca if ca else None,
        client_auth=_CLIENT_AUTH[auth_type],
        # The toolkit's default minimum is TLS 1.2 as well.
        min_version=version("min_version") or ssl.TLSVersion.TLSv1_2,
        max_version=version("max_version"),
    )


def parse(text: str, base: Path) -> WebConfig:
    import yaml  # only needed with --web.config.file

    try:
        doc = _mapping(yaml.safe_load(text), "web config")
    except yaml.YAMLError as err:
        raise WebConfigError(f"web config is not YAML: {err}") from err
    _check_keys(doc, _TOP_KEYS, "web config")
    http = _mapping(doc.get("http_server_config"), "http_server_config")
    _check_keys(http, _HTTP_KEYS, "http_server_config")
    users = {}
    for user, hashed in _mapping(doc.get("basic_auth_users"), "basic_auth_users").items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"basic_auth_users: {user!r} needs a bcrypt hash")
        users[str(user)] = hashed.encode()
    headers = _headers(_mapping(http.get("headers"), "headers"))
    return WebConfig(
        tls=_tls(_mapping(doc.get("tls_server_config"), "tls_server_config"), base),
        users=users,
        headers=headers,
    )


def _headers(section: dict) -> dict[str, str]:
    headers = {}
    for name, value in section.items():
        allowed = _HEADERS.get(name)
        if allowed is None:
            raise WebConfigError(
                f"http_server_config.headers: {name!r} can not be configured "
                f"(allowed: {', '.join(sorted(_HEADERS))})"
            )
        if not isinstance(value, str) or not value.isascii() or not value.isprintable():
            raise WebConfigError(
                f"http_server_config.headers: {name} must be printable ASCII, got {value!r}"
            )
        if allowed and value not in allowed:
            raise WebConfigError(
                f"http_server_config.headers: invalid value for {name}: expected one of "
                f"{list(allowed)}, got {value!r}"
            )
        headers[name] = value
    return headers


def _stamp(paths: list[Path]) -> tuple[tuple[object, ...], ...]:
    out: list[tuple[object, ...]] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), None))
    return tuple(out)


class WebConfigFile:
    """The parsed file, re-read when it or a file it names changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self._lock = threading.Lock()
        self._error: str | None = None
        self._passwords: dict[tuple[str, bytes, bytes], bool] = {}
        """Results of bcrypt checks; good ones kept apart from wrong ones,
        so that a flood of guesses never evicts the scraper's entry."""
        self._good: dict[tuple[str, bytes, bytes], bool] = {}
        self._checking: asyncio.Lock | None = None
        self._waiting = 0
        self.config, self._context = self._load()
        self._stamp = self._current_stamp(self.config)
        self.tls_enabled = self.config.tls is not None

    def _load(self) -> tuple[WebConfig, ssl.SSLContext | None]:
        try:
            text = self.path.read_text()
        except OSError as err:
            raise WebConfigError(f"cannot read web config {self.path}: {err}") from err
        config = parse(text, self.path.parent)
        return config, config.tls.context() if config.tls else None

    def _current_stamp(self, config: WebConfig) -> tuple:
        return _stamp([self.path, *(config.tls.files() if config.tls else [])])

    def refresh(self) -> None:
        """Re-read when changed; on a bad file, remember the error (fail closed)."""
        with self._lock:
            stamp = self._current_stamp(self.config)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                config, context = self._load()
            except WebConfigError as err:
                if self._error != str(err):
                    log.error(
                        "web config does not load; refusing connections until fixed",
                        extra=fields(file=self.path, err=err),
                    )
                self._error = str(err)
                return
            if (config.tls is not None) != self.tls_enabled:
                self._error = "TLS cannot be turned on or off without a restart"
                log.error("web config refused", extra=fields(file=self.path, err=self._error))
                return
            self.config, self._context, self._error = config, context, None
            self._passwords.clear()
            self._good.clear()
            self._stamp = self._current_stamp(config)
            log.info("web config re-read", extra=fields(file=self.path))

    @property
    def error(self) -> str | None:
        return self._error

    def handshake_context(self) -> ssl.SSLContext | None:
        """The context for the next TLS handshake: the file as it is now,
        every field of it (certificates, CA, client_auth_type, versions);
        None while the file is broken (fail closed)."""
        self.refresh()
        return None if self._error is not None else self._context

    async def password_ok(self, user: str, password: str) -> bool | None:
        """True or False; None when too many checks are already waiting."""
        import bcrypt  # only needed with basic_auth_users

        hashed = self.config.users.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = _UNKNOWN_USER_HASH
        secret = password.encode()[:BCRYPT_MAX_BYTES]
        # bcrypt costs ~50-100 ms a check; Prometheus scrapes with the same
        # credentials every interval, so remember results (as the toolkit does).
        key = (user, hashlib.sha256(secret).digest(), hashed)
        cached = self._good.get(key, self._passwords.get(key))
        if cached is not None:
            return known and cached
        if self._waiting >= PASSWORD_CHECKS_WAITING:
            return None
        if self._checking is None:
            self._checking = asyncio.Lock()
        self._waiting += 1
        try:
            # One at a time, as the toolkit does, and in a thread: bcrypt
            # releases the GIL, so the event loop serves meanwhile.
            async with self._checking:
                ok = await asyncio.to_thread(bcrypt.checkpw, secret, hashed)
        finally:
            self._waiting -= 1
        ok = known and ok
        cache = self._good if ok else self._passwords
        if len(cache) >= PASSWORD_CACHE_SIZE:
            del cache[next(iter(cache))]  # the oldest
        cache[key] = ok
        return ok

    async def deny(
        self, headers: Mapping[str, str], path: str
    ) -> tuple[int, bytes, dict[str, str]] | None:
        """None when the request may go on; else (status, body, headers).
        Basic auth on every path but the probes' when users are configured;
        `headers` by lower-case name, `path` without its query."""
        self.refresh()
        if self._error is not None:
            return 500, b"web config is invalid; see the exporter's log\n", {}
        if path in PROBE_PATHS or not self.config.users:
            return None
        verdict = await _authorized(self, headers.get("authorization", ""))
        if verdict is None:
            return 503, b"too many password checks in flight; retry\n", {"Retry-After": "1"}
        if not verdict:
            challenge = {"WWW-Authenticate": 'Basic realm="coverage-exporter"'}
            return 401, b"Unauthorized\n", challenge
        return None

    def response_headers(self) -> dict[str, str]:
        """http_server_config.headers, added to every answer."""
        return dict(self.config.headers)


_UNKNOWN_USER_HASH = b"$2b$10$CfqDHIS01uDs/XdLzEQRPOyOQqdM0ZXXfGwHtNfaYb31OA9T5b1hK"
"""Checked for a user that does not exist, so that timing does not tell
which users do (cost 10, as htpasswd -B makes them; made once with
bcrypt.hashpw, for no password anyone uses)."""

# Answered without credentials. The toolkit asks for them on every path, but
# a kubelet probe cannot read a Secret: the password would sit in clear in
# the pod spec, readable by whoever may read Deployments (Prometheus's own
# request for this: prometheus/prometheus#9166, exporter-toolkit#106, open).
# kube-apiserver grants /livez and /readyz to system:unauthenticated the same
# way. These two answer one bit and a fixed phrase (web/server.py, route);
# TLS, when on, still applies. Exact paths: no prefix or variant matches.
PROBE_PATHS = frozenset({"/-/healthy", "/-/ready"})


async def _authorized(config: WebConfigFile, header: str) -> bool | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    if not sep:
        return False
    return await config.password_ok(user, password)
