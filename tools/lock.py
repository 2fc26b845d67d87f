"""The image's lock file, requirements/image.txt: pyproject.toml's runtime
dependencies resolved and pinned with hashes by pip-tools (`make lock`).

    python -m tools.lock --check   # exit 1, saying why, when it drifted

pip-compile keeps the markers of direct requirements and resolves the rest
for the interpreter it runs on: run it with Python 3.11, the image's. It
writes the hashes of every file of each pinned release, so one lock serves
the amd64 and the arm64 image.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "image.txt"
PYPROJECT = REPO / "pyproject.toml"
ROOT = "coverage-exporter (pyproject.toml)"
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;\s*(.+?))?\s*\\?$")


@dataclass
class Pin:
    version: str
    marker: str | None
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def pins(text: str) -> dict[str, Pin]:
    """The lock's entries by canonical name."""
    out: dict[str, Pin] = {}
    current: Pin | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not line[:1].isspace() and (m := _ENTRY.match(stripped)):
            current = Pin(m.group(2), m.group(3))
            out[canonicalize_name(m.group(1))] = current
        elif current and stripped.startswith("--hash="):
            current.hashes.append(stripped.removeprefix("--hash=").rstrip(" \\"))
        elif current and stripped.startswith("#"):
            via = stripped.lstrip("# ").removeprefix("via").strip()
            if via:
                current.via.append(via)
    return out


def drift(dependencies: list[str], text: str) -> list[str]:
    """Why the lock no longer matches these runtime dependencies; [] when it does."""
    locked = pins(text)
    problems = []
    wanted = set()
    for dep in dependencies:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        wanted.add(name)
        pin = locked.get(name)
        if pin is None:
            problems.append(f"{dep}: not in the lock (run make lock)")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{dep}: the lock pins {name}=={pin.version} (run make lock)")
        elif str(req.marker or "") != str(Marker(pin.marker) if pin.marker else ""):
            problems.append(f"{dep}: the lock's marker differs (run make lock)")
    for name, pin in locked.items():
        if ROOT in pin.via and name not in wanted:
            problems.append(
                f"{name}: locked for pyproject.toml, which no longer requires it (run make lock)"
            )
        if not pin.hashes:
            problems.append(f"{name}: no hashes in the lock (run make lock)")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["--check"]:
        print(__doc__, file=sys.stderr)
        return 2
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    problems = drift(deps, LOCK.read_text())
    for problem in problems:
        print(f"{LOCK.relative_to(REPO)}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
