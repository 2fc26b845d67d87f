"""HTTP plumbing shared by the sources: TLS contexts, credentials, sessions.

Generic on purpose: nothing here knows about Prometheus or Kubernetes.
"""

from __future__ import annotations

import base64
import ssl

import aiohttp

from coverage_exporter.sources.health import SourceError


def ssl_context(
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    insecure_skip_verify: bool = False,
) -> ssl.SSLContext:
    """A client TLS context; verification stays on unless explicitly skipped.

    Built once per source: loading CA bundles is blocking file I/O.
    """
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
        if insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SourceError(f"cannot build TLS context: {exc}") from exc
    return ctx


def read_secret_file(path: str) -> str:
    """A token or password from a file, read again at every call so that a
    rotated secret is picked up; surrounding whitespace is dropped, as
    Prometheus does for its own credentials files."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read secret file {path}: {exc}") from exc


def auth_headers(
    *,
    bearer_token_file: str | None = None,
    basic_auth_user: str | None = None,
    basic_auth_password_file: str | None = None,
) -> dict[str, str]:
    """The Authorization header for one round of requests (files re-read)."""
    if bearer_token_file:
        return {"Authorization": f"Bearer {read_secret_file(bearer_token_file)}"}
    if basic_auth_user is not None:
        password = read_secret_file(basic_auth_password_file) if basic_auth_password_file else ""
        # UTF-8 like Go's SetBasicAuth (aiohttp's BasicAuth defaults to latin-1).
        credentials = f"{basic_auth_user}:{password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(credentials).decode("ascii")}
    return {}


def new_session(*, connection_limit: int = 8) -> aiohttp.ClientSession:
    """A session for one source. Must be called inside a running event loop.

    trust_env stays off: proxy variables meant for other tools must not
    silently reroute requests that carry credentials.
    """
    connector = aiohttp.TCPConnector(limit=connection_limit)
    return aiohttp.ClientSession(connector=connector, trust_env=False)
