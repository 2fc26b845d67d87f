"""The image's lock file (requirements/image.txt, `make lock`): every
runtime dependency of pyproject.toml pinned with hashes, nothing else
rooted there, and the Dockerfile installing exactly that (issue 21 item 17)."""

from __future__ import annotations

import re
import tomllib

from tests.local.test_image import REPO, stages
from tools import lock


def dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_lock_matches_pyproject_and_carries_hashes() -> None:
    text = lock.LOCK.read_text()
    assert lock.drift(dependencies(), text) == []
    # Compiled for the image's interpreter.
    assert "with Python 3.11" in text.splitlines()[1]


def test_drift_is_caught_both_ways() -> None:
    deps, text = dependencies(), lock.LOCK.read_text()
    # A requirement nothing here uses, so never in the lock.
    assert "orjson" not in lock.pins(text)
    assert lock.drift([*deps, "orjson>=3.10"], text) == [
        "orjson>=3.10: not in the lock (run make lock)"
    ]
    (aiohttp,) = [d for d in deps if d.startswith("aiohttp")]
    assert lock.drift([d for d in deps if d != aiohttp], text) == [
        "aiohttp: locked for pyproject.toml, which no longer requires it (run make lock)"
    ]
    assert lock.drift([d if d != aiohttp else "aiohttp>=99" for d in deps], text) == [
        f"aiohttp>=99: the lock pins aiohttp=={lock.pins(text)['aiohttp'].version} (run make lock)"
    ]
    (isal,) = [d for d in deps if d.startswith("isal")]
    without_marker = isal.split(";")[0]
    assert lock.drift([d if d != isal else without_marker for d in deps], text) == [
        f"{without_marker}: the lock's marker differs (run make lock)"
    ]
    unhashed = re.sub(r"(?m)^(aiohttp==\S+) \\\n(\s+--hash=\S+( \\)?\n)+", r"\1\n", text)
    assert lock.drift(deps, unhashed) == ["aiohttp: no hashes in the lock (run make lock)"]


def test_dockerfile_installs_the_lock_with_hashes_then_the_package_alone() -> None:
    build, _ = stages()
    copied = [rest.split()[:-1] for word, rest in build if word == "COPY"]
    assert any(str(lock.LOCK.relative_to(REPO)) in sources for sources in copied)
    (run,) = [rest for word, rest in build if word == "RUN"]
    installs = re.findall(r"pip install ([^&]+)", run)
    assert len(installs) == 2, run
    assert set(installs[0].split()) >= {"--require-hashes", "--no-deps", "-r"}
    assert str(lock.LOCK.relative_to(REPO)) in installs[0]
    assert "--no-deps" in installs[1].split() and "/src" in installs[1].split()
