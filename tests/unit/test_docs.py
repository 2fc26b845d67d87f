"""Docs that match the code: the test files they cite exist, and the memory
figures the chart quotes are bench/RESULTS.md's."""

from __future__ import annotations

import re

from tools.chart import CHART, REPO

DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").rglob("*.md")),
    CHART / "README.md",
    CHART / "values.yaml",
    REPO / "alerts" / "README.md",
    REPO / "dashboards" / "README.md",
    REPO / "testbed" / "README.md",
    REPO / "mixin" / "mixin.libsonnet",
]


def test_every_cited_test_file_exists() -> None:
    code = [*(REPO / "tests").rglob("*.py"), *(REPO / "coverage_exporter").rglob("*.py")]
    sources = [*DOCS, *sorted(code)]
    cited = 0
    for path in sources:
        for name in re.findall(r"\btests/[A-Za-z0-9_/]+\.(?:py|yml)\b", path.read_text()):
            cited += 1
            assert (REPO / name).is_file(), f"{path.relative_to(REPO)} cites {name}"
    assert cited > 30


def peak_rss() -> dict[str, int]:
    """Nodes ("1,000") -> the exporter's peak RSS in MB, from bench/RESULTS.md."""
    text = (REPO / "bench" / "RESULTS.md").read_text()
    header = next(line for line in text.splitlines() if "exporter peak RSS MB" in line)
    column = [c.strip() for c in header.strip("|").split("|")].index("exporter peak RSS MB")
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > column and re.fullmatch(r"[0-9,]+", cells[0]):
            out[cells[0]] = int(cells[column])
        if out and not line.startswith("|"):
            break
    return out


def test_the_charts_memory_figures_are_the_benchmarks() -> None:
    rss = peak_rss()
    assert {"1,000", "15,000", "100,000"} <= rss.keys()
    readme = (CHART / "README.md").read_text()
    values = (CHART / "values.yaml").read_text()
    for nodes, label in (("1,000", "1k"), ("15,000", "15k"), ("100,000", "100k")):
        figure = rss[nodes]
        assert re.search(rf"{figure} MB at {label} nodes|{figure} MB at {label}\b", readme), (
            f"charts/coverage-exporter/README.md: {label} should say {figure} MB"
        )
        assert re.search(rf"{label}(?: nodes)? {figure} MB", values), (
            f"values.yaml: {label} should say {figure} MB"
        )


def test_the_install_section_starts_with_helm_install_from_the_clone() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    first_block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block.startswith("helm install coverage-exporter ./charts/coverage-exporter ")
    # And the chart in the clone renders as it is (files/ is committed).
    assert (CHART / "files" / "rules.yaml.tpl").is_file()


def test_the_readme_gives_the_exit_codes_of_audit_help() -> None:
    from coverage_exporter import exit_codes

    readme = (REPO / "README.md").read_text()
    for code, meaning in ((exit_codes.FULL_COVERAGE, "full coverage"), (exit_codes.GAPS, "gaps"),
                          (exit_codes.USAGE, "usage error"),
                          (exit_codes.CANNOT_JUDGE, "could not judge")):  # fmt: skip
        assert re.search(rf"\| `{code}` \| {meaning}", readme), (code, meaning)
        assert re.search(rf"^  {code}  {meaning}", exit_codes.HELP, flags=re.M), (code, meaning)
