"""Where runbook links point: a base URL, configurable with --runbook-base-url.

The default is the runbooks' page in the project's repository for this
release (docs/runbooks/ there), so that a pip user's `audit` prints links
that open; a company that mirrors the runbooks sets its own base (the
chart's runbookBaseUrl). Every link the exporter makes, in the audit and
in the HTML report, is made by `runbook_url`; the alert rules' default
`runbook_url` annotations are made from DEFAULT_BASE_URL (alerts/rules.py).
The pages a finding names are data of the finding (model/findings.py).
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


def runbook_url(page: str) -> str:
    """The URL of a runbook page, e.g. runbook_url("ScrapeCoverageTargetsMissing"),
    or of a section of one ("causes.md#unmaintained")."""
    page, hash_, anchor = page.partition("#")
    return f"{_base_url}{page.removesuffix('.md')}.md{hash_}{anchor}"
