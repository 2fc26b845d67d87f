"""Which Services the exporter looks at.

With no configuration: every Service some Prometheus discovers through
Kubernetes service discovery, plus every Endpoints object marked over
capacity (truncated, whether or not anyone scrapes it yet). Explicit
`--service` flags add to that; namespace and label filters narrow it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from coverage_exporter.model.objects import ClusterSnapshot, Service, ServiceKey


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    op: str
    """"=", "!=", "in", "notin", "exists" or "!exists"."""
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" match objects without the label, as in Kubernetes.
        return not present or value not in self.values


_KEY = r"(?:[A-Za-z0-9.\-_]+/)?[A-Za-z0-9]([A-Za-z0-9._\-]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9]([A-Za-z0-9._\-]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s*\((.*)\)$")
_EQ_RE = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_EXISTS_RE = re.compile(rf"^(!?)\s*({_KEY})$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses: `a in (x,y),b` -> 2 parts."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_label_selector(text: str) -> tuple[LabelRequirement, ...]:
    """A label selector as kubectl takes it: `a=b,c!=d,e,!f,g in (x,y),h notin (z)`.
    Raises ValueError naming the part it cannot read: a selector that is
    silently misread would empty the scope and report full coverage."""
    requirements = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            continue
        m = _SET_RE.match(part)
        if m:
            values = frozenset(v.strip() for v in m.group(4).split(",") if v.strip())
            if not values or not all(re.fullmatch(_VALUE, v) for v in values):
                raise ValueError(f"label selector {text!r}: bad value list in {part!r}")
            requirements.append(LabelRequirement(m.group(1), m.group(3), values))
            continue
        m = _EQ_RE.match(part)
        if m:
            op = "!=" if m.group(3) == "!=" else "="
            requirements.append(LabelRequirement(m.group(1), op, frozenset({m.group(4)})))
            continue
        m = _EXISTS_RE.match(part)
        if m:
            requirements.append(LabelRequirement(m.group(2), "!exists" if m.group(1) else "exists"))
            continue
        raise ValueError(
            f"label selector {text!r}: cannot read {part!r} "
            "(expected key, !key, key=value, key!=value, key in (a,b) or key notin (a,b))"
        )
    return tuple(requirements)


def parse_service_key(text: str) -> ServiceKey:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"expected NAMESPACE/NAME, got {text!r}")
    return (namespace, name)


@dataclass(frozen=True, slots=True)
class Scope:
    services: frozenset[ServiceKey] = frozenset()
    namespaces: frozenset[str] = frozenset()
    """Empty: every namespace."""
    label_selector: tuple[LabelRequirement, ...] = field(default=())

    def admits(self, service: Service) -> bool:
        if self.namespaces and service.namespace not in self.namespaces:
            return False
        return all(r.matches(service.labels) for r in self.label_selector)


def over_capacity_services(snapshot: ClusterSnapshot) -> list[ServiceKey]:
    """Services whose Endpoints carry the over-capacity annotation, whatever
    its value ("truncated"; "warning" on v1.21)."""
    return sorted(k for k, e in snapshot.endpoints.items() if e.over_capacity is not None)


def services_in_scope(
    scope: Scope, snapshot: ClusterSnapshot, discovered: Iterable[ServiceKey]
) -> list[Service]:
    """Services to compare, sorted; keys without a Service object are left
    out (nothing says what they should hold)."""
    keys = set(scope.services) | set(discovered)
    keys.update(over_capacity_services(snapshot))
    services = (snapshot.services.get(k) for k in keys)
    return sorted((s for s in services if s and scope.admits(s)), key=lambda s: s.key)
