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
