"""isal is a dependency only where it has wheels (x86_64 and arm64): on
ppc64le or s390x pip would have to build it from source, so there the
exporter installs without it and inflates with zlib. Both halves tested:
the marker, and the fallback path run for real with isal made unimportable
(in every process: the decoding workers are separate interpreters)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent.parent


def isal_requirement() -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (isal,) = [Requirement(d) for d in deps if Requirement(d).name == "isal"]
    return isal


@pytest.mark.parametrize(
    ("system", "machine", "wanted"),
    [
        # Where PyPI has isal wheels (checked against isal 1.9.1's files).
        ("Linux", "x86_64", True),
        ("Linux", "aarch64", True),
        ("Darwin", "arm64", True),
        ("Darwin", "x86_64", True),
        ("Windows", "AMD64", True),
        # Where it has none: the exporter must install without it.
        ("Linux", "ppc64le", False),
        ("Linux", "s390x", False),
        ("Linux", "armv7l", False),
        ("Windows", "ARM64", False),
    ],
)
def test_isal_is_required_only_where_it_has_wheels(system: str, machine: str, wanted: bool) -> None:
    marker = isal_requirement().marker
    assert marker is not None
    env = {"platform_machine": machine, "platform_system": system, "sys_platform": "linux"}
    assert marker.evaluate(env) is wanted


def _shim(tmp_path: Path) -> dict[str, str]:
    """An environment where `import isal` fails, as where it is not installed."""
    shim = tmp_path / "no-isal" / "isal"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("no isal on this platform")\n')
    path = os.pathsep.join([str(shim.parent), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_without_isal_the_exporter_inflates_with_zlib(tmp_path: Path) -> None:
    env = _shim(tmp_path)
    probe = (
        "import aiohttp.compression_utils as c, zlib\n"
        "from coverage_exporter.sources import httpclient, worker_child\n"
        "print(c.ZLibBackend.name, worker_child._zlib.__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # aiohttp's backend (set by httpclient) and the decoding worker's inflate.
    assert done.stdout.split() == ["zlib", "zlib"]
    # And where isal is there, it is used: the probe can tell the difference.
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split()[0] == "isal.isal_zlib"


def test_the_gzip_paths_pass_their_tests_on_zlib(tmp_path: Path) -> None:
    # Every test that inflates gzip: real captured answers decoded in the
    # worker processes and in process, gzip bombs cut off, undecodable
    # bodies refused, the Kubernetes and Prometheus sources end to end.
    tests = [
        "tests/local/test_target_decoder.py",
        "tests/local/test_node_decoder.py",
        "tests/local/test_hostile_prometheus.py",
        "tests/local/test_hostile_kubernetes.py",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "gzip or bomb",
         *tests],
        cwd=REPO,
        env=_shim(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    passed = int(done.stdout.rsplit(" passed", 1)[0].rsplit(maxsplit=1)[-1])
    assert passed >= 4, done.stdout[-500:]
