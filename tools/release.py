"""The release's version: one number, in every place that states it.

    python -m tools.release version   # print it; exit 1 when two places disagree

The release workflow (.github/workflows/release.yml) runs this before it
builds anything and refuses a tag that names another version. Standard
library only: the workflow runs it before installing anything.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# semver.org's regular expression for a SemVer 2.0.0 version (Helm takes these).
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


def _field(path: Path, pattern: str) -> str:
    m = re.search(pattern, path.read_text(), flags=re.M)
    if not m:
        raise SystemExit(f"{path.relative_to(REPO)}: no match for {pattern}")
    return m.group(1)


def stated_versions() -> dict[str, str]:
    """Where the version is written -> what it says there."""
    chart = REPO / "charts" / "coverage-exporter" / "Chart.yaml"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {
        "pyproject.toml project.version": pyproject["project"]["version"],
        "coverage_exporter/__init__.py __version__": _field(
            REPO / "coverage_exporter" / "__init__.py", r'^__version__ = "([^"]+)"'
        ),
        "Chart.yaml version": _field(chart, r'^version: "?([^"\s]+)"?'),
        "Chart.yaml appVersion": _field(chart, r'^appVersion: "?([^"\s]+)"?'),
        "Dockerfile ARG VERSION": _field(REPO / "Dockerfile", r"^ARG VERSION=(\S+)"),
    }


def version() -> str:
    """The one version; SystemExit naming the places when they disagree or
    it is not SemVer."""
    stated = stated_versions()
    found = set(stated.values())
    if len(found) != 1:
        lines = "\n".join(f"  {where}: {v}" for where, v in stated.items())
        raise SystemExit(f"the version differs between places:\n{lines}")
    (value,) = found
    if not SEMVER.match(value):
        raise SystemExit(f"version {value!r} is not SemVer 2.0.0 (Helm requires it)")
    return value


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["version"]:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(version())
    return 0


if __name__ == "__main__":
    sys.exit(main())
