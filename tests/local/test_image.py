"""The image, without a Docker engine: hadolint on the Dockerfile, and the
Dockerfile's own build steps run into a clean venv, then `serve` started the
way the chart runs the container: UID 65532, read-only root, only /tmp
(an emptyDir in the chart, a tmpfs here) writable.

The steps are read from the Dockerfile (its build stage's ENV, COPY and RUN
lines), not restated here, so a change to the Dockerfile changes what runs.
The base image's `python` is Debian bookworm's Python 3.11, as here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from coverage_exporter import __version__

REPO = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = REPO / "Dockerfile"
DEBIAN_PYTHON = Path("/usr/bin/python3")
REVISION = "0123456789abcdef0123456789abcdef01234567"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, rest in stage:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(REPO / ".venv" / "bin")) or "hadolint"
    labels = [
        "org.opencontainers.image.source:url",
        "org.opencontainers.image.licenses:spdx",
        # Build arguments: hadolint sees "${VERSION}", not the value.
        "org.opencontainers.image.version:text",
        "org.opencontainers.image.revision:text",
        "org.opencontainers.image.created:text",
        "org.opencontainers.image.title:text",
    ]
    cmd = [hadolint, "--no-color", "--failure-threshold", "info"]
    for label in labels:
        cmd += ["--require-label", label]
    done = subprocess.run([*cmd, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_hadolint_finds_what_it_should(tmp_path: Path) -> None:
    # Guards the guard: a shell-form entrypoint and a missing label are findings.
    broken = DOCKERFILE.read_text().replace(
        'ENTRYPOINT ["/opt/coverage-exporter/bin/coverage-exporter"]',
        "ENTRYPOINT /opt/coverage-exporter/bin/coverage-exporter",
    )
    (tmp_path / "Dockerfile").write_text(broken)
    hadolint = shutil.which("hadolint", path=str(REPO / ".venv" / "bin")) or "hadolint"
    done = subprocess.run(
        [hadolint, "--no-color", str(tmp_path / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "DL3025" in done.stdout


def test_image_is_pinned_non_root_and_exec_form() -> None:
    build, runtime = stages()
    args = dict(
        rest.split("=", 1) for word, rest in instructions()[:2] if word == "ARG" and "=" in rest
    )
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"])
    assert all(rest.startswith("${PYTHON_IMAGE}") for word, rest in (build[0], runtime[0]))
    user = [rest for word, rest in runtime if word == "USER"]
    assert user == ["65532:65532"]
    (entrypoint,) = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/opt/coverage-exporter/bin/coverage-exporter"]
    (last_run,) = [rest for word, rest in runtime if word == "RUN"]
    assert "rm -f /bin/sh" in last_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs the build stage's steps; returns the directory that stands for
    the image's filesystem (src/, opt/coverage-exporter/)."""
    if os.geteuid() != 0:
        pytest.skip("the read-only run needs root for a mount namespace (CI runs as root)")
    root = tmp_path_factory.mktemp("image")
    build, _ = stages()
    workdir = next(rest for word, rest in build if word == "WORKDIR")
    src = root / workdir.lstrip("/")
    src.mkdir(parents=True)
    for word, rest in build:
        if word == "COPY":
            *sources, _dest = rest.split()
            for name in sources:
                path = REPO / name
                if path.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "REVISION")
                    shutil.copytree(path, src / name, ignore=ignore)
                else:
                    (src / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, src / name)
    (run,) = [rest for word, rest in build if word == "RUN"]
    venv = root / "opt" / "coverage-exporter"
    run = run.replace("/opt/coverage-exporter", str(venv)).replace(" /src", f" {src}")
    # `python` of the base image: Debian's 3.11.
    bindir = root / "base-bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(DEBIAN_PYTHON)
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(root / "home"),
        "REVISION": REVISION,
        **env_of(build),
    }
    done = subprocess.run(
        ["/bin/sh", "-ec", run], cwd=src, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The runtime stage copies only the venv: drop the sources, so the run
    # below proves the venv does not reach back into them.
    shutil.rmtree(src)
    # Modes as in an image layer: root-owned, readable by all, writable by none else.
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            readable = 0o055 if path.is_dir() or mode & 0o100 else 0o044
            path.chmod((mode | readable) & ~0o022)
    return root


def test_serve_runs_as_65532_on_a_read_only_tree(built: Path) -> None:
    _, runtime = stages()
    venv = built / "opt" / "coverage-exporter"
    (entrypoint,) = [json.loads(rest) for word, rest in runtime if word == "ENTRYPOINT"]
    entrypoint = [e.replace("/opt/coverage-exporter", str(venv)) for e in entrypoint]
    (cmd,) = [json.loads(rest) for word, rest in runtime if word == "CMD"]
    uid, gid = next(rest for word, rest in runtime if word == "USER").split(":")
    kubeconfig = built / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        'clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]\n'
        "users: [{name: u, user: {token: x}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
    )
    kubeconfig.chmod(0o644)
    port = free_port()
    newroot = built.parent / (built.name + "-root")
    newroot.mkdir()
    env = {k: v for k, v in env_of(runtime).items()}
    env["PATH"] = env["PATH"].replace("/opt/coverage-exporter", str(venv))
    exporter = [
        *entrypoint, *cmd, f"--kubeconfig={kubeconfig}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    # A private mount namespace: / read-only, a fresh tmpfs on /tmp, and
    # the "image" (which lives under the real /tmp) bound read-only at its
    # own path inside it; then chroot and drop to the image's USER.
    env_args = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    script = f"""
        set -e
        mount --rbind / {newroot}
        mount -o remount,bind,ro {newroot}
        mount -o remount,bind,ro {newroot}/dev/shm
        mount -t tmpfs -o size=64m,mode=1777 tmpfs {newroot}/tmp
        mkdir -p {newroot}{built}
        mount --bind {built} {newroot}{built}
        mount -o remount,bind,ro {newroot}{built}
        exec chroot {newroot} /usr/bin/env -i {env_args} \\
            setpriv --reuid={uid} --regid={gid} --clear-groups --no-new-privs \\
            {" ".join(shlex.quote(a) for a in exporter)}
    """
    log = built.parent / "image-serve.log"
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert f'revision="{REVISION}"' in metrics
        # Kubernetes points at a closed port: the source is down, and says so.
        down = r'scrape_coverage_source_up\{[^}]*source="kubernetes"[^}]*\} 0\.0'
        assert re.search(down, metrics)
        # The process runs as the image's user, not as root.
        pids = subprocess.run(
            ["pgrep", "-f", f"127.0.0.1:{port}"], capture_output=True, text=True
        ).stdout.split()
        uids = {
            line.split()[1]
            for pid in pids
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("Uid:")
        }
        assert uids == {uid}, uids
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert "Read-only file system" not in log.read_text()


def test_version_names_the_revision_the_image_was_built_from(built: Path) -> None:
    venv = built / "opt" / "coverage-exporter"
    done = subprocess.run(
        [str(venv / "bin" / "coverage-exporter"), "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first == f"coverage-exporter, version {__version__} (revision: {REVISION})"
