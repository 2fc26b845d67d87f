"""Where runbook links point: a base URL, configurable with --runbook-base-url.

The default is the runbooks' page in the project's repository for this
release (docs/runbooks/ there), so that a pip user's `audit` prints links
that open; a company that mirrors the runbooks sets its own base (the
chart's runbookBaseUrl). The alert rules carry the same default base
(alerts/rules.py RUNBOOK_BASE_URL; a test keeps them equal).
"""

from __future__ import annotations

DEFAULT_BASE_URL = "https://github.com/coverage-exporter/coverage-exporter/blob/main/docs/runbooks/"

_base_url = DEFAULT_BASE_URL


def set_base_url(url: str | None) -> None:
    global _base_url
    if not url:
        _base_url = DEFAULT_BASE_URL
        return
    if not url.startswith(("http://", "https://", "file://")):
        raise ValueError(f"--runbook-base-url must be an http(s) or file URL, got {url!r}")
    _base_url = url if url.endswith("/") else url + "/"


def base_url() -> str:
    return _base_url


def runbook_url(page: str) -> str:
    """The URL of a runbook page, e.g. runbook_url("ScrapeCoverageTargetsMissing")."""
    return f"{_base_url}{page.removesuffix('.md')}.md"
