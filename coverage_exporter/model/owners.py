"""The controller owner of pods read in the apiserver's Table form.

A Table row has no ownerReferences (issue #12). The model needs them for one
thing: which DaemonSets own a Service's pods (model.coverage
`_owning_daemonsets`, `_daemonset_expected`). It is inferred here from what
the DaemonSet controller does when it creates a pod (kubernetes v1.36,
pkg/controller/controller_utils.go `getPodsPrefix`, `GetPodFromTemplate`;
k8s.io/apiserver pkg/storage/names `SimpleNameGenerator`):

- the pod's generateName is ``<daemonset name>-``, cut to 58 characters,
  and the apiserver appends 5 random characters (util/rand: [a-z0-9]
  consonants and digits);
- the pod is created in the DaemonSet's namespace with the template's labels.

So a pod of namespace N named P is taken as owned by DaemonSet D of N when
P == prefix(D) + 5 characters of [a-z0-9] and the Service's selector is a
subset of D's template labels (D's pods are selected by the Service). A
name that two DaemonSets' prefixes fit (names equal on 58 characters) is
left unowned: better no owner than a wrong one.

Residual risk: a pod created by something else (a bare pod, another
controller) that is named exactly like a DaemonSet pod of its namespace and
is selected by the same Service is counted as that DaemonSet's pod. Its node
then joins the DaemonSet's expected nodes, which it already is when the
DaemonSet's placement covers that node; the expected count stays the
controller's desiredNumberScheduled or more. Conversely a DaemonSet pod
whose DaemonSet is not in the snapshot (another namespace watched off, not
listed yet) has no owner, as with the full objects of an unknown DaemonSet.
Pods read in full form keep their real owner and are never touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from msgspec.structs import replace

from coverage_exporter.model.objects import DaemonSet, Pod, ServiceKey

GENERATED_NAME_MAX_BASE = 58
"""SimpleNameGenerator: 63-character names, 5 of them random."""
_SUFFIX = re.compile(r"[a-z0-9]{5}")

DaemonSetPrefixes = Mapping[str, Mapping[str, DaemonSet | None]]
"""namespace -> generateName prefix -> its DaemonSet (None: ambiguous)."""


def pod_prefix(daemonset_name: str) -> str:
    return (daemonset_name + "-")[:GENERATED_NAME_MAX_BASE]


def daemonset_prefixes(daemonsets: Mapping[ServiceKey, DaemonSet]) -> DaemonSetPrefixes:
    """Built once per DaemonSet cache generation, shared by every pod scope."""
    out: dict[str, dict[str, DaemonSet | None]] = {}
    for daemonset in daemonsets.values():
        by_prefix = out.setdefault(daemonset.namespace, {})
        prefix = pod_prefix(daemonset.name)
        by_prefix[prefix] = None if prefix in by_prefix else daemonset
    return out


def _selects(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    return labels is not None and all(labels.get(k) == v for k, v in selector.items())


def infer_daemonset_owners(
    pods: Iterable[Pod],
    namespace: str,
    selector: Mapping[str, str],
    prefixes: DaemonSetPrefixes,
) -> tuple[Pod, ...]:
    """The pods of one scope, those without an owner given the DaemonSet
    owner their name and labels imply (new Pod objects: the reflector's
    cached ones stay as parsed, so its change detection still works)."""
    candidates = {
        prefix: d
        for prefix, d in prefixes.get(namespace, {}).items()
        if d is not None and _selects(selector, d.template_labels)
    }
    if not candidates:
        return tuple(pods)
    out: list[Pod] = []
    for pod in pods:
        if pod.owner_kind is None and len(pod.name) > 5:
            daemonset = candidates.get(pod.name[:-5])
            if daemonset is not None and _SUFFIX.fullmatch(pod.name, len(pod.name) - 5):
                pod = replace(pod, owner_kind="DaemonSet", owner_name=daemonset.name)
        out.append(pod)
    return tuple(out)


# --- owners confirmed from metadata (issue #19 item 8) ------------------------------
#
# A DaemonSet owns pods whose names its controller did not make: pods it
# adopted (created by hand or by another tool with its labels: the
# controller takes any orphan its selector matches, ControllerRef), pods
# renamed, pods of another DaemonSet controller (OpenKruise's Advanced
# DaemonSet, kind DaemonSet of apps.kruise.io). The name says nothing then,
# and a scope of such pods alone would fall back to "the selected pods",
# where a node without a pod goes unseen. Their ownerReferences say it: the
# source reads them for those pods only (sources/kubernetes/source.py,
# `confirm_owners`), in the Table form with includeObject=Metadata, and
# keeps them here as OwnerFacts.

PodKey = tuple[str, str]
"""(namespace, pod name)."""
Owner = tuple[str | None, str | None]
"""(kind, name) of the pod's controller ownerReference; (None, None): none."""
OwnerFacts = Mapping[PodKey, Owner]

CONFIRM_PROBE = 1
"""Pods confirmed first in a scope where no pod has a known owner and
nothing says a DaemonSet is behind it (a Deployment's pods look so too):
one, and the rest only if it is a DaemonSet's."""


def owners_to_confirm(
    pods: Iterable[Pod],
    namespace: str,
    selector: Mapping[str, str],
    prefixes: DaemonSetPrefixes,
    facts: OwnerFacts,
) -> list[str]:
    """The names of the scope's pods whose owner must be read from their
    metadata (pods as infer_daemonset_owners left them, facts applied):
    those without an owner and without a fact, when a DaemonSet of the
    namespace selects them (their names do not show it), or when a pod of
    the scope was confirmed a DaemonSet's; else, in a scope where no pod
    has an owner at all, CONFIRM_PROBE of them. Sorted by name."""
    pods = list(pods)
    unknown = sorted(
        p.name for p in pods if p.owner_kind is None and (namespace, p.name) not in facts
    )
    if not unknown:
        return []
    if _candidates(namespace, selector, prefixes):
        return unknown
    confirmed = [facts[(namespace, p.name)] for p in pods if (namespace, p.name) in facts]
    if any(kind == "DaemonSet" for kind, _ in confirmed):
        return unknown
    if confirmed or any(p.owner_kind is not None for p in pods):
        return []
    return unknown[:CONFIRM_PROBE]


def apply_owner_facts(pods: Iterable[Pod], namespace: str, facts: OwnerFacts) -> tuple[Pod, ...]:
    """The pods with the owner their metadata gave, where it was read (it
    wins over a name's inference: it is the controller's own word)."""
    if not facts:
        return tuple(pods)
    out: list[Pod] = []
    for pod in pods:
        fact = facts.get((namespace, pod.name))
        if fact is not None and (pod.owner_kind, pod.owner_name) != fact:
            pod = replace(pod, owner_kind=fact[0], owner_name=fact[1])
        out.append(pod)
    return tuple(out)


def _candidates(namespace: str, selector: Mapping[str, str], prefixes: DaemonSetPrefixes) -> bool:
    """Some DaemonSet of the namespace makes pods this selector takes."""
    return any(
        d is not None and _selects(selector, d.template_labels)
        for d in prefixes.get(namespace, {}).values()
    )
