"""The Helm chart's generated parts, from their single sources.

    python -m tools.chart files            # copy rules and dashboard into the chart
    python -m tools.chart deploy [--check] # render deploy/kubernetes.yaml from the chart
    python -m tools.chart package DIR      # files, then `helm package` into DIR

Why copies made at use time instead of committed ones: the rules
(alerts/rules.py -> alerts/coverage-exporter.rules.yml) and the dashboard
(dashboards/generate.py -> dashboards/coverage-exporter.json) change often,
and Helm's `.Files.Get` reads only files inside the chart. A committed copy
would be a second source that goes stale on every rule change; a symlink
breaks on `helm package` outside the tree and on Windows checkouts. So
charts/coverage-exporter/files/ is ignored by git and filled by `files`
before every lint, template or package (the tests and CI do it); the chart
fails to render, naming this command, when it was not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "coverage-exporter"
SOURCES = {
    REPO / "alerts" / "coverage-exporter.rules.yml": CHART
    / "files"
    / "coverage-exporter.rules.yml",
    REPO / "dashboards" / "coverage-exporter.json": CHART / "files" / "coverage-exporter.json",
}
DEPLOY = REPO / "deploy" / "kubernetes.yaml"
DEPLOY_VALUES = REPO / "deploy" / "values.yaml"
DEPLOY_RELEASE = "coverage-exporter"
DEPLOY_NAMESPACE = "coverage-exporter"
DEPLOY_HEADER = f"""\
# coverage-exporter in its own namespace, read-only on the cluster.
# Generated from charts/coverage-exporter with deploy/values.yaml by
# `python -m tools.chart deploy`. Do not edit: change the chart or the values.
# Prefer the chart (README.md). The alerts for these plain manifests are
# alerts/coverage-exporter.prometheusrule.yaml (or the plain rule file),
# the dashboard dashboards/coverage-exporter.json.
apiVersion: v1
kind: Namespace
metadata:
  name: {DEPLOY_NAMESPACE}
"""


def versions() -> dict[str, str]:
    out = {}
    for line in (REPO / "testbed" / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "coverage-exporter"
    return Path(os.environ.get("COVERAGE_EXPORTER_CACHE", default))


def tool(name: str, version_key: str) -> Path:
    """A binary built by testbed/build.sh, or on PATH when not built there."""
    built = cache_dir() / name / versions()[version_key] / name
    if built.exists():
        return built
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: run `bash testbed/build.sh {name}`")
    return Path(found)


def helm() -> Path:
    return tool("helm", "HELM_VERSION")


def kubeconform_bin() -> Path:
    return tool("kubeconform", "KUBECONFORM_VERSION")


def kubernetes_schemas() -> Path:
    """The strict JSON schemas of the testbed's Kubernetes minor, as PyPI's
    kubernetes-validate ships them (one file per kind: deployment-apps-v1.json)."""
    import kubernetes_validate

    minor = ".".join(versions()["KUBERNETES_VERSION"].lstrip("v").split(".")[:2])
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return root / f"v{minor}.0-local-strict"


def operator_module() -> Path:
    """The Prometheus Operator's module source (its CRDs), from the module cache."""
    version = versions().get("OPERATOR_VERSION", "v0.85.0")
    module = f"github.com/prometheus-operator/prometheus-operator@{version}"
    # testbed/install-deps.sh finds Go the same way (PATH, then /usr/local/go).
    go = shutil.which("go") or "/usr/local/go/bin/go"
    done = subprocess.run(
        [go, "mod", "download", "-json", module],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(done.stdout)["Dir"])


def operator_crds() -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted((operator_module() / "jsonnet" / "prometheus-operator").glob("*-crd.json"))
    ]


def _strict(schema: object) -> None:
    # What kubeconform's own CRD converter does with strict mode: objects
    # that list their properties reject unknown ones, unless the CRD says
    # it keeps unknown fields.
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)


def write_crd_schemas(directory: Path) -> None:
    """JSON schemas of the Operator's CRDs, laid out as kubeconform's
    `{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json` expects."""
    for crd in operator_crds():
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            _strict(schema)
            path = directory / group / f"{kind}_{version['name']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(schema))


def write_kubernetes_schemas(directory: Path) -> None:
    """kubernetes-validate's schemas with their `/api/_definitions.json`
    references made file URLs: that package resolves the absolute path
    itself, kubeconform reads references as they are written."""
    source = kubernetes_schemas()
    directory.mkdir(parents=True, exist_ok=True)
    definitions = (directory / "_definitions.json").resolve()
    ref = definitions.as_uri()
    for path in source.glob("*.json"):
        text = path.read_text().replace('"/api/_definitions.json#', f'"{ref}#')
        (directory / path.name).write_text(text)


def kubeconform(manifests: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """kubeconform -strict on rendered manifests: Kubernetes kinds against
    kubernetes-validate's schemas, the Operator's kinds against its CRDs.
    Never `-ignore-missing-schemas`: an object of an unknown kind fails."""
    crds, kube = workdir / "crd-schemas", workdir / "kubernetes-schemas"
    write_crd_schemas(crds)
    write_kubernetes_schemas(kube)
    cmd = [
        str(kubeconform_bin()),
        "-strict",
        "-summary",
        "-output",
        "text",
        "-schema-location",
        str(kube) + "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
        "-schema-location",
        str(crds) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
        "-",
    ]
    return subprocess.run(cmd, input=manifests, capture_output=True, text=True, timeout=120)


def copy_files() -> None:
    for source, target in SOURCES.items():
        target.parent.mkdir(exist_ok=True)
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)


def template(values: list[Path], release: str, namespace: str, *extra: str) -> str:
    copy_files()
    # helm template assumes Kubernetes v1.20 without a cluster; render for
    # the version the testbed runs, which the chart's kubeVersion admits.
    kube = versions()["KUBERNETES_VERSION"]
    cmd = [str(helm()), "template", release, str(CHART), "--namespace", namespace]
    cmd += ["--kube-version", kube]
    for v in values:
        cmd += ["--values", str(v)]
    cmd += list(extra)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return done.stdout


def render_deploy() -> str:
    body = template([DEPLOY_VALUES], DEPLOY_RELEASE, DEPLOY_NAMESPACE)
    return DEPLOY_HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("files")
    deploy = sub.add_parser("deploy")
    deploy.add_argument("--check", action="store_true", help="exit 1 when deploy/ is stale")
    package = sub.add_parser("package")
    package.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    if args.command == "files":
        copy_files()
    elif args.command == "deploy":
        text = render_deploy()
        if args.check:
            if DEPLOY.read_text() != text:
                print(f"{DEPLOY} is stale: run python -m tools.chart deploy", file=sys.stderr)
                return 1
        else:
            DEPLOY.write_text(text)
    else:
        copy_files()
        subprocess.run(
            [str(helm()), "package", str(CHART), "--destination", str(args.destination)],
            check=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
