"""Label and field selectors as kube-apiserver parses them (=, ==, !=, in,
notin, exists, !exists), for the fake's LISTs and WATCHes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str
    """"=", "!=", "in", "notin", "exists", "!exists"."""
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


Selector = tuple[Requirement, ...]

_SET = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def parse(text: str) -> Selector:
    """A selector's requirements, ANDed. Raises ValueError (the fake's 400)."""
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    out = []
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        m = _SET.match(part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            out.append(Requirement(m.group(1), m.group(2), values))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            out.append(Requirement(key.strip(), "!=", (value.strip(),)))
        elif "==" in part:
            key, value = part.split("==", 1)
            out.append(Requirement(key.strip(), "=", (value.strip(),)))
        elif "=" in part:
            key, value = part.split("=", 1)
            out.append(Requirement(key.strip(), "=", (value.strip(),)))
        elif part.startswith("!"):
            out.append(Requirement(part[1:].strip(), "!exists"))
        else:
            out.append(Requirement(part, "exists"))
    for r in out:
        if not r.key or " " in r.key:
            raise ValueError(f"unable to parse requirement: {text!r}")
    return tuple(out)


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in selector)
