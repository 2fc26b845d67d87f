"""A Prometheus server's loaded configuration (`/api/v1/status/config`),
reduced to what the coverage model reads: its external labels (where it
stands in its fleet, model.topology) and its scrape jobs with Kubernetes
discovery of role endpoints or endpointslice (which Services each pool is
meant to scrape, model.intent).

Prometheus answers with the configuration as YAML inside JSON, every
default filled in. vmagent (v1.151.0 `app/vmagent/main.go`) answers the
same path in the same envelope with its -promscrape.config as it parsed
it: defaults left out, and its own relabeling extensions (a regex as a
list, `if:` filters, actions such as `keep_if_equal`). Anything
unexpected in it is a SourceError, never an exception that ends a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from coverage_exporter import untrusted
from coverage_exporter.model.objects import (
    ROLE_ENDPOINTS,
    ROLE_ENDPOINTSLICE,
    RelabelRule,
    ScrapeJob,
)
from coverage_exporter.sources.errors import SourceError

CONFIG_PATH = "/api/v1/status/config"
_ROLES = (ROLE_ENDPOINTS, ROLE_ENDPOINTSLICE)


class _ConfigData(msgspec.Struct):
    yaml: str


class _ConfigResponse(msgspec.Struct):
    status: str
    data: _ConfigData | None = None
    error: str = ""


# untrusted.Decoder: deep nesting is a DecodeError, not a RecursionError.
_DECODER = untrusted.Decoder(_ConfigResponse)


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    external_labels: Mapping[str, str]
    jobs: tuple[ScrapeJob, ...]


def parse_config_response(body: bytes) -> LoadedConfig:
    try:
        response = _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise SourceError(f"undecodable configuration answer: {exc}") from None
    if response.status != "success" or response.data is None:
        raise SourceError(f"configuration answer with status {response.status!r}")
    return parse_config_yaml(response.data.yaml)


def parse_config_yaml(text: str) -> LoadedConfig:
    try:
        # CSafeLoader where libyaml is there: an Operator config of a few
        # hundred jobs parses in milliseconds instead of a second.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise SourceError(f"configuration is not YAML: {str(exc)[:200]}") from None
    except RecursionError:
        raise SourceError("configuration nested too deeply") from None
    if not isinstance(doc, dict):
        raise SourceError("configuration is not a mapping")
    glob = doc.get("global") or {}
    labels = glob.get("external_labels") or {} if isinstance(glob, dict) else {}
    external = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    jobs: list[ScrapeJob] = []
    for raw in doc.get("scrape_configs") or ():
        if isinstance(raw, dict):
            jobs.extend(_jobs(raw))
    return LoadedConfig(external, tuple(jobs))


def _jobs(raw: dict[str, Any]) -> list[ScrapeJob]:
    name = raw.get("job_name")
    if not isinstance(name, str):
        return []
    relabel = tuple(r for r in (_rule(x) for x in raw.get("relabel_configs") or ()) if r)
    out = []
    for sd in raw.get("kubernetes_sd_configs") or ():
        if not isinstance(sd, dict) or sd.get("role") not in _ROLES:
            continue
        namespaces = sd.get("namespaces") or {}
        names = namespaces.get("names") if isinstance(namespaces, dict) else None
        selectors = tuple(
            str(s["label"])
            for s in sd.get("selectors") or ()
            if isinstance(s, dict) and s.get("role") == "service" and s.get("label")
        )
        out.append(
            ScrapeJob(
                name=name,
                role=str(sd["role"]),
                namespaces=tuple(str(n) for n in names) if names else None,
                relabel=relabel,
                service_label_selectors=selectors,
            )
        )
    # One job, one pool: two SD blocks of different roles in one job are
    # rare; the first decides the pool's role.
    return out[:1]


def _rule(raw: object) -> RelabelRule | None:
    if not isinstance(raw, dict):
        return None
    sources = raw.get("source_labels") or ()
    try:
        modulus = int(raw.get("modulus") or 0)
    except (TypeError, ValueError):
        modulus = 0
    regex = raw.get("regex", "(.*)")
    if isinstance(regex, list):
        # vmagent writes a regex without groups as the list of its
        # alternatives (lib/promrelabel MultiLineRegex), and reads such a
        # list back as them joined with "|".
        regex = "|".join(str(r) for r in regex)
    return RelabelRule(
        action=str(raw.get("action") or "replace"),
        source_labels=tuple(str(s) for s in sources) if isinstance(sources, list) else (),
        separator=str(raw.get("separator", ";")),
        regex=str(regex),
        target_label=str(raw.get("target_label") or ""),
        replacement=str(raw.get("replacement", "$1")),
        modulus=modulus,
        conditional=raw.get("if") is not None,
    )
