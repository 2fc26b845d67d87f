"""A release that can be published: everything up to the push.

No registry can be reached from here, so what a release job does is
checked short of pushing: the versions agree and are SemVer, the chart
packages under that version, the workflow that builds the amd64 and arm64
image passes actionlint (testbed/build.sh actionlint, with shellcheck on
its scripts) and builds the image the chart and the plain manifests name,
and the wheel and sdist build and install with pipx.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from tools import chart, release

REPO = chart.REPO
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck: installed by scripts/setup.sh (Debian package)"
    binary = chart.tool("actionlint", "ACTIONLINT_VERSION")
    return subprocess.run(
        [str(binary), "-no-color", f"-shellcheck={shellcheck}", "-pyflakes=", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def chart_image() -> str:
    """The image the chart's default values run, without its tag."""
    docs = yaml.safe_load_all(chart.template([], "x", "default"))
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["image"]


def test_every_place_states_one_semver_version() -> None:
    stated = release.stated_versions()
    assert len(stated) == 5
    assert set(stated.values()) == {release.version()}
    assert release.SEMVER.match(release.version())
    # The guard itself: stricter than Helm, which reads "0.1" as 0.1.0.
    for bad in ("0.1", "v0.1.0", "0.1.0.1", "01.2.3"):
        assert not release.SEMVER.match(bad), bad
    assert release.SEMVER.match("1.2.3-rc.1+build.5")


def test_a_version_stated_twice_differently_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def disagreeing() -> dict[str, str]:
        return {"pyproject.toml project.version": "0.2.0", "Chart.yaml appVersion": "0.1.0"}

    monkeypatch.setattr(release, "stated_versions", disagreeing)
    with pytest.raises(SystemExit, match=r"differs between places:\n  pyproject.toml"):
        release.version()


def test_chart_packages_under_its_semver_version(tmp_path: Path) -> None:
    assert chart.main(["package", str(tmp_path)]) == 0
    version = release.version()
    package = tmp_path / f"coverage-exporter-{version}.tgz"
    assert package.is_file(), list(tmp_path.iterdir())
    shown = subprocess.run(
        [str(chart.helm()), "show", "chart", str(package)], capture_output=True, text=True
    )
    meta = yaml.safe_load(shown.stdout)
    assert (meta["version"], meta["appVersion"]) == (version, version)
    # The committed rules and dashboard travel in the package.
    with tarfile.open(package) as tar:
        names = set(tar.getnames())
    files = {f"coverage-exporter/files/{p.name}" for p in chart.chart_files()}
    assert files <= names and len(files) == 2


def test_release_workflow_passes_actionlint() -> None:
    done = actionlint(WORKFLOW)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    # An input docker/build-push-action does not have, an unknown context
    # property, and a shell bug in a run: step.
    text = WORKFLOW.read_text()
    text = text.replace("platforms: linux/amd64", "platform: linux/amd64")
    text = text.replace("${{ github.actor }}", "${{ github.actorr }}")
    text = text.replace('>> "$GITHUB_OUTPUT"', ">> $GITHUB_OUTPUT", 1)
    broken = tmp_path / ".github" / "workflows" / "release.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text)
    done = actionlint(broken)
    assert done.returncode == 1
    assert 'input "platform" is not defined' in done.stdout
    assert "actorr" in done.stdout
    assert "shellcheck reported issue in this script: SC2086" in done.stdout


def test_workflow_builds_the_chart_image_for_amd64_and_arm64() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    steps = doc["jobs"]["image"]["steps"]
    (build,) = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action@")]
    options = build["with"]
    assert set(options["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert (options["context"], options["file"]) == (".", "Dockerfile")
    assert (REPO / options["file"]).is_file()
    assert any(s.get("uses", "").startswith("docker/setup-qemu-action@") for s in steps)
    image = doc["env"]["IMAGE"]
    assert options["tags"].startswith("${{ env.IMAGE }}:")
    assert chart_image().rsplit(":", 1)[0] == image
    # The build arguments the Dockerfile declares, and the revision among them.
    args = dict(line.split("=", 1) for line in options["build-args"].split("\n") if line)
    declared = {
        line.split()[1].split("=")[0]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("ARG ")
    }
    assert set(args) <= declared and "REVISION" in args
    # The chart is pushed from the same version the tag names.
    assert "needs.versions.outputs.version" in yaml.safe_dump(doc["jobs"]["chart"])


def test_plain_manifests_name_the_chart_image() -> None:
    docs = yaml.safe_load_all(chart.DEPLOY.read_text())
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == chart_image()
    assert container["image"] == f"ghcr.io/coverage-exporter/coverage-exporter:{release.version()}"


def test_wheel_and_sdist_build_and_pipx_installs_them(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    version = release.version()
    wheel = dist / f"coverage_exporter-{version}-py3-none-any.whl"
    sdist = dist / f"coverage_exporter-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), list(dist.iterdir())
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"coverage_exporter-{version}.dist-info/METADATA").decode()
        entry_points = zf.read(f"coverage_exporter-{version}.dist-info/entry_points.txt").decode()
    report = {"coverage_exporter/exposition/report.css", "coverage_exporter/exposition/report.js"}
    assert report <= names
    assert not any(n.startswith(("tests/", "testbed/", "tools/", "bench/")) for n in names)
    assert "coverage-exporter = coverage_exporter.cli:main" in entry_points
    assert "Requires-Dist: isal>=1.6; platform_machine ==" in meta
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "LICENSE", "coverage_exporter/cli.py"} <= members

    # pipx builds the sdist into a wheel of its own and installs it in a venv.
    home = tmp_path / "pipx"
    env = {
        **os.environ,
        "PIPX_HOME": str(home),
        "PIPX_BIN_DIR": str(home / "bin"),
        "PIPX_MAN_DIR": str(home / "man"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    pipx = [sys.executable, "-m", "pipx"]
    done = subprocess.run(
        [*pipx, "install", str(sdist)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    installed = home / "bin" / "coverage-exporter"
    shown = subprocess.run([str(installed), "--version"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"coverage-exporter, version {version} (revision: " in shown.stdout
