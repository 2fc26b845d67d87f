"""Read the metric contract (docs/metrics.md) and check PromQL against it.

Shared by the rule and dashboard tests and by the e2e tests that run the
dashboard's queries: one parser, one notion of "a metric name in a query".
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
METRICS_DOC = REPO / "docs" / "metrics.md"
RECORDING_SECTION = "## Recording rules (alerts/)"

# Series Prometheus itself writes for every target; not the exporter's to document.
PROMETHEUS_BUILTINS = frozenset({"up"})

_TABLE_NAME = re.compile(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def documented_metrics(doc: Path = METRICS_DOC) -> dict[str, set[str]]:
    """Metric names in the tables of docs/metrics.md, split into exporter and recorded."""
    exporter: set[str] = set()
    recorded: set[str] = set()
    target = exporter
    in_table = False  # only tables headed `| name |` list metrics
    for line in doc.read_text().splitlines():
        if line.startswith("## "):
            target = recorded if line.strip() == RECORDING_SECTION else exporter
        if not line.startswith("|"):
            in_table = False
        elif re.match(r"^\|\s*name\s*\|", line):
            in_table = True
        elif in_table and (m := _TABLE_NAME.match(line)):
            target.add(m.group(1))
    return {"exporter": exporter, "recorded": recorded}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads.

    Good enough for the project's own queries: strings, label matchers and
    grouping clauses are cut out first, then an identifier that is not a
    function call, keyword or duration is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("", text)
    text = _GROUPING.sub("", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end():].lstrip()
        word = m.group(0)
        if rest.startswith("(") or word in _KEYWORDS or text[m.start() - 1 : m.start()] == "$":
            continue
        names.add(word)
    return names


_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
     "group_left", "group_right", "inf", "nan", "Inf", "NaN"}
)


def find_promtool() -> str:
    """promtool from $PROMTOOL or PATH; alerts/install-tools.sh puts it there."""
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path:
        raise FileNotFoundError("promtool not found: run alerts/install-tools.sh")
    return path


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_promtool(), *map(str, args)], capture_output=True, text=True, timeout=300
    )


def check_expressions(exprs: Iterable[str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """Parse expressions with `promtool check rules`, each as a recording rule.

    promtool 2.42 has no command that only parses a query; a rule file it
    checks parses every expression with the real PromQL parser.
    """
    rules = [{"record": f"check:expr_{i}:test", "expr": e} for i, e in enumerate(exprs)]
    path = workdir / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    return promtool("check", "rules", path)
