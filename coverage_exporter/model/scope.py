"""Which Services the exporter looks at.

With no configuration: every Service some Prometheus discovers through
Kubernetes service discovery, plus every Endpoints object marked over
capacity (truncated, whether or not anyone scrapes it yet). Explicit
`--service` flags add to that; namespace and label filters narrow it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from coverage_exporter.model.objects import ClusterSnapshot, Service, ServiceKey


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    op: str
    """"=", "!=", "exists" or "!exists"."""
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


def parse_label_selector(text: str) -> tuple[LabelRequirement, ...]:
    """Equality-based selectors as kubectl takes them: `a=b,c!=d,e,!f`."""
    requirements = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if "!=" in part:
            key, value = part.split("!=", 1)
            requirements.append(LabelRequirement(key.strip(), "!=", value.strip()))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            requirements.append(LabelRequirement(key.strip(), "=", value.strip()))
        elif part.startswith("!"):
            requirements.append(LabelRequirement(part[1:].strip(), "!exists"))
        else:
            requirements.append(LabelRequirement(part, "exists"))
    for r in requirements:
        if not r.key:
            raise ValueError(f"invalid label selector {text!r}: empty key")
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
