"""Every target the Makefile declares does something (`make rules`,
`make dashboards` and `make bench` used to be declared and empty)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tools.chart import REPO

MAKEFILE = (REPO / "Makefile").read_text()
PHONY = re.search(r"^\.PHONY: (.+)$", MAKEFILE, flags=re.M)
TARGETS = PHONY.group(1).split() if PHONY else []


def test_the_targets_are_declared() -> None:
    assert {"demo", "test", "unit", "rules", "dashboards", "bench"} <= set(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_every_declared_target_runs_commands(target: str) -> None:
    done = subprocess.run(
        ["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), f"make {target} does nothing"


def test_rules_and_dashboards_regenerate_every_generated_file() -> None:
    for target, generator in (("rules", "alerts.generate"), ("dashboards", "dashboards.generate")):
        commands = subprocess.run(
            ["make", "-n", target], cwd=REPO, capture_output=True, text=True
        ).stdout
        for module in (generator, "tools.chart files", "tools.mixin"):
            assert f"-m {module}" in commands, (target, module)
