"""What build this is, for scrape_coverage_build_info.

The revision is the git commit the package was built from: the image build
writes it to coverage_exporter/REVISION (Dockerfile, build-arg REVISION);
a pip install from a source tree without that file says "unknown" rather
than guessing.
"""

from __future__ import annotations

import platform
from functools import cache
from importlib import resources

from coverage_exporter import __version__

VERSION = __version__
PYTHON_VERSION = platform.python_version()


@cache
def revision() -> str:
    try:
        text = resources.files("coverage_exporter").joinpath("REVISION").read_text()
    except (FileNotFoundError, OSError):
        return "unknown"
    return text.strip() or "unknown"


def labels() -> tuple[str, str, str]:
    """(version, revision, python_version), the build_info label values."""
    return (VERSION, revision(), PYTHON_VERSION)
