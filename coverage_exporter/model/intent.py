"""Which scrape pools are meant to scrape a Service, read from each
Prometheus's own loaded configuration.

Why the configuration and not what was discovered: a pool that discovers
nothing (its ServiceAccount lacks `endpointslices` RBAC after the role
switch, a reload that starts from nothing) has no targets to say which
Service it was for, so a comparison driven by discovered targets alone
goes silent exactly then. Why not the Operator's ServiceMonitors: they
exist only where the Operator runs, and the generated configuration says
the same thing for every setup, Operator or not.

A job is meant to scrape a Service when its Kubernetes service discovery
has role `endpoints` or `endpointslice` and covers the Service's namespace,
and every relabel rule that depends only on the Service's own metadata
(namespace, name, labels, annotations) keeps it. Rules on anything else
(ports, addresses, pods, hashmod sharding) are not evaluated: a `keep` on
a port that was renamed is one of the ways a pool loses every target, and
must not make the Service look unscraped. A job with no Service-level rule
at all (namespace-wide) is taken as meant for the Services that have a port
its port rules keep, so that one catch-all job does not claim every
Service of the cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from coverage_exporter.model.objects import RelabelRule, ScrapeJob, Service
from coverage_exporter.model.relabel_regex import RelabelRegex, compile_relabel_regex
from coverage_exporter.model.scope import parse_label_selector

_META = "__meta_kubernetes_"
_SERVICE_LEVEL_PREFIXES = (
    _META + "service_label_",
    _META + "service_labelpresent_",
    _META + "service_annotation_",
    _META + "service_annotationpresent_",
)
_PORT_LABELS = frozenset(
    {
        _META + "endpoint_port_name",
        _META + "endpointslice_port_name",
        _META + "service_port_name",
    }
)
_IDENTITY = frozenset({_META + "service_name", _META + "endpoints_name"})


def sanitize(name: str) -> str:
    """A Kubernetes label or annotation name as Prometheus puts it in a meta
    label: every character outside [a-zA-Z0-9_] becomes '_'."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def service_meta_labels(service: Service) -> dict[str, str]:
    """The meta labels that role endpoints/endpointslice give every target
    of the Service, as far as they depend on the Service alone."""
    labels = {
        _META + "namespace": service.namespace,
        _META + "service_name": service.name,
        _META + "endpoints_name": service.name,
        _META + "endpointslice_label_kubernetes_io_service_name": service.name,
        _META + "endpointslice_labelpresent_kubernetes_io_service_name": "true",
    }
    for key, value in service.labels.items():
        labels[_META + "service_label_" + sanitize(key)] = value
        labels[_META + "service_labelpresent_" + sanitize(key)] = "true"
    for key, value in service.annotations.items():
        labels[_META + "service_annotation_" + sanitize(key)] = value
        labels[_META + "service_annotationpresent_" + sanitize(key)] = "true"
    return labels


_META_CACHE: dict[int, tuple[Service, dict[str, str]]] = {}


def _meta_labels(service: Service) -> Mapping[str, str]:
    """service_meta_labels, built once per Service object (held, so that its
    id is not reused while cached)."""
    hit = _META_CACHE.get(id(service))
    if hit is not None and hit[0] is service:
        return hit[1]
    if len(_META_CACHE) > 200_000:
        _META_CACHE.clear()
    labels = service_meta_labels(service)
    _META_CACHE[id(service)] = (service, labels)
    return labels


def _service_level(label: str) -> bool:
    return (
        label == _META + "namespace"
        or label in _IDENTITY
        or label.startswith(_SERVICE_LEVEL_PREFIXES)
    )


class _Overlay:
    """The Service's meta labels under the labels the rules write: the base
    is shared by every job evaluated against the Service, not copied."""

    __slots__ = ("_base", "_own")

    def __init__(self, base: Mapping[str, str]) -> None:
        self._base = base
        self._own: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        own = self._own.get(key)
        return own if own is not None else self._base[key]

    def __setitem__(self, key: str, value: str) -> None:
        self._own[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self._own or key in self._base

    def pop(self, key: str, default: None = None) -> None:
        # Only what the rules wrote can go; a base label made unknown is
        # recorded in _Evaluation.unknown, which value() reads first.
        self._own.pop(key, default)

    def items(self) -> list[tuple[str, str]]:
        return [*self._base.items(), *self._own.items()]


class _Evaluation:
    """The relabel rules of one job applied to one Service's meta labels.
    Labels are either known (a string) or unknown (not in `known`); a rule
    that reads an unknown label is skipped, and one that writes a label
    from unknown input makes that label unknown."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.known: _Overlay = _Overlay(labels)
        self.unknown: set[str] = set()
        self.decided_by_service = False
        self.port_rules: list[_PortRule] = []
        """The keep/drop rules on the port name."""

    def value(self, sources: Sequence[str], separator: str) -> str | None:
        parts = []
        for label in sources:
            if label in self.unknown:
                return None
            if label in self.known:
                parts.append(self.known[label])
            elif _service_level(label) or not label.startswith("__"):
                # A service label that is absent is the empty string, as in
                # Prometheus; so is a plain target label nobody set.
                parts.append("")
            else:
                return None
        return separator.join(parts)


RuleRef = tuple[int, str]
"""A relabel rule of a job: its index in relabel_configs (from 0) and its action."""


def job_selects(job: ScrapeJob, service: Service) -> bool:
    """True when `job` is meant to scrape `service` (see the module doc)."""
    return _decide(job, service)[0]


def dropping_rule(job: ScrapeJob, service: Service) -> RuleRef | None:
    """The relabel rule of `job` that drops every target of `service`, as
    far as rules on the Service's own metadata and port names tell: the
    Service-level rule that drops it, else a port rule that no port of the
    Service passes. None when no evaluated rule drops it all (the
    namespaces or service selectors of the SD config are not rules)."""
    selected, rule, ev = _decide(job, service)
    if not selected:
        return rule
    if ev is None or not ev.port_rules:
        return None
    return _port_rule_dropping_all(ev.port_rules, service.port_names)


_PortRule = tuple[bool, RelabelRegex, RuleRef]
"""(keep?, regex, the rule) of a keep/drop rule on the port name."""


def _passes(rule: _PortRule, port: str) -> bool:
    return rule[1].matches(port) == rule[0]


def _port_rule_dropping_all(rules: list[_PortRule], ports: tuple[str, ...]) -> RuleRef | None:
    if any(all(_passes(r, port) for r in rules) for port in ports):
        return None
    # The first rule that no port passes; else (each port stopped by a
    # different rule) the first port rule.
    for r in rules:
        if not any(_passes(r, port) for port in ports):
            return r[2]
    return rules[0][2]


def _decide(job: ScrapeJob, service: Service) -> tuple[bool, RuleRef | None, _Evaluation | None]:
    """(meant?, the rule that dropped the Service, the evaluation)."""
    if job.namespaces is not None and service.namespace not in job.namespaces:
        return False, None, None
    for selector in job.service_label_selectors:
        try:
            requirements = parse_label_selector(selector)
        except ValueError:
            continue
        if not all(r.matches(service.labels) for r in requirements):
            return False, None, None
    ev = _Evaluation(_meta_labels(service))
    for index, rule in enumerate(job.relabel):
        outcome = _apply(rule, ev, index)
        if outcome is False:
            # An undecidable rule is no proof that the Service is dropped.
            known = not _undecidable(rule, rule.action.lower())
            return False, (index, rule.action.lower()) if known else None, ev
    if ev.decided_by_service or not ev.port_rules:
        return True, None, ev
    # Namespace-wide job: meant for the Services with a port it keeps.
    if any(all(_passes(r, port) for r in ev.port_rules) for port in service.port_names):
        return True, None, ev
    return False, _port_rule_dropping_all(ev.port_rules, service.port_names), ev


_FILTERS = frozenset({"keep", "drop", "keepequal", "dropequal"})


def _undecidable(rule: RelabelRule, action: str) -> bool:
    """A rule that may drop targets in a way not evaluated here: vmagent's
    `if:` filters and its own filtering actions (keep_if_equal,
    drop_if_contains, ...). The job is then not taken as meant for the
    Service from its configuration: the Service is still compared for it
    once it discovers targets, and a pool wrongly taken as meant would
    report every expected target missing."""
    if rule.conditional:
        return action in _FILTERS or action.startswith(("keep", "drop"))
    return action.startswith(("keep", "drop")) and action not in _FILTERS


def _apply(rule: RelabelRule, ev: _Evaluation, index: int) -> bool | None:
    """False when the rule drops the Service; None otherwise."""
    action = rule.action.lower()
    if _undecidable(rule, action):
        return False
    if rule.conditional:
        # A write that may or may not happen: its label is unknown after.
        if rule.target_label and "$" not in rule.target_label:
            ev.unknown.add(rule.target_label)
            ev.known.pop(rule.target_label, None)
        return None
    pattern = compile_relabel_regex(rule.regex)
    if action in ("keep", "drop"):
        if len(rule.source_labels) == 1 and rule.source_labels[0] in _PORT_LABELS:
            if pattern is not None:
                ev.port_rules.append((action == "keep", pattern, (index, action)))
            return None
        value = ev.value(rule.source_labels, rule.separator)
        if value is None or pattern is None:
            return None
        if any(s != _META + "namespace" for s in rule.source_labels):
            ev.decided_by_service = True
        matched = pattern.matches(value)
        return False if matched != (action == "keep") else None
    if action in ("keepequal", "dropequal"):
        value = ev.value(rule.source_labels, rule.separator)
        target = ev.value((rule.target_label,), rule.separator)
        if value is None or target is None:
            return None
        ev.decided_by_service = True
        return False if (value == target) != (action == "keepequal") else None
    if action in ("replace", "lowercase", "uppercase"):
        _write(rule, ev, pattern, action)
    elif action == "hashmod":
        ev.unknown.add(rule.target_label)
        ev.known.pop(rule.target_label, None)
    elif action == "labelmap" and pattern is not None:
        for name, value in ev.known.items():
            mapped = pattern.expand(rule.replacement, name)
            if mapped is not None:
                ev.known[mapped] = value
    return None


def _write(rule: RelabelRule, ev: _Evaluation, pattern: RelabelRegex | None, action: str) -> None:
    target = rule.target_label
    value = ev.value(rule.source_labels, rule.separator)
    if "$" in target:
        # A target label named from the match: rare, and not tracked.
        return
    if value is None or pattern is None:
        ev.unknown.add(target)
        ev.known.pop(target, None)
        return
    if action == "lowercase":
        ev.known[target] = value.lower()
        return
    if action == "uppercase":
        ev.known[target] = value.upper()
        return
    replaced = pattern.expand(rule.replacement, value)
    if replaced is None:
        return
    ev.known[target] = replaced
    ev.unknown.discard(target)
