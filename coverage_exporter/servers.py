"""The Prometheus servers a cycle reads: those given (`--prometheus-url`, the
fleet file) and those discovery finds (sources.kubernetes.discovery, model.discovery),
kept in step with the cluster from one cycle to the next.

- A server found is read from the next cycle; one that goes (scaled down,
  its object deleted) is closed and forgotten, never reported down.
- One found but not readable (no pod yet, pod not Ready, no IP, listenLocal)
  is kept as a server that never answers: its replica's coverage is unknown.
- A pod replaced (a new UID or IP) is a new server under the same name: its
  predecessor's answers are forgotten.
- A server given explicitly and found too (same scheme, host and port) is
  read once, as given; a given URL whose answers come from several servers
  (model.answerers) is not judged at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from coverage_exporter.health import SourceHealth
from coverage_exporter.logs import fields
from coverage_exporter.model.answerers import AnswererCheck, labels_token
from coverage_exporter.model.discovery import (
    Discovery,
    DiscoveryFinding,
    FoundServer,
    fleet_changes,
    without_explicit,
)
from coverage_exporter.model.objects import PrometheusSnapshot
from coverage_exporter.model.topology import Declared, hashmod_shard
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.prometheus.config import LoadedConfig
from coverage_exporter.sources.prometheus.source import PrometheusEndpoint, PrometheusSource

log = logging.getLogger("coverage_exporter.servers")

S = TypeVar("S")

GIVEN_BY_FLAG = "--prometheus-url"
GIVEN_BY_FILE = "fleet file"


class SeveralServers(SourceError):
    """A given URL answered from different servers: nothing it said counts."""


@dataclass(frozen=True, slots=True)
class _Key:
    """What a discovered server is read as: any change makes a new source."""

    url: str
    pod_uid: str
    identity: object
    credentials: str


def _key(server: FoundServer) -> _Key | None:
    if not server.readable:
        return None
    return _Key(server.url, server.pod_uid, server.identity, server.credentials)


class FoundBy(Protocol):
    """What Followed needs of sources.kubernetes.discovery.DiscoverySource."""

    def synced(self) -> bool: ...

    def discovery(self) -> Discovery: ...


class Followed(Generic[S]):
    """Discovery's side of the fleet: what was found, and the source each
    found server that can be read is read through (S: a TargetSource)."""

    def __init__(
        self,
        discovery: FoundBy,
        make: Callable[[FoundServer], S],
        given_urls: Sequence[str],
        given_names: Sequence[str],
    ) -> None:
        self._discovery = discovery
        self._make = make
        self._given_urls = list(given_urls)
        self._given_names = set(given_names)
        self.found: dict[str, FoundServer] = {}
        self.sources: dict[str, S] = {}
        """Readable found servers -> their TargetSource."""
        self._said: set[str] = set()
        """Findings and notices already logged (each once while it holds)."""
        self._read_uid: dict[str, str] = {}
        """The pod UID each server name was last read at: a replacement seen
        first Pending, without an IP (the StatefulSet controller creates it
        before it runs), is still a new pod when it is read."""

    @property
    def placeholders(self) -> list[FoundServer]:
        """Found servers that cannot be read now."""
        return [s for s in self.found.values() if not s.readable]

    def follow(self) -> tuple[list[S], set[str]]:
        """Bring the found servers in step with discovery. Returns the
        sources to close and the server names whose past answers must be
        forgotten. Before discovery's first full list nothing changes."""
        if not self._discovery.synced():
            return [], set()
        result = self._discovery.discovery()
        self._say_findings(result)
        servers, given = without_explicit(result.servers, self._given_urls)
        for server in given:
            if self._first(f"given:{server.name}"):
                log.info(
                    "server found is also given explicitly: read once, as given",
                    extra=fields(server=server.name, discovery=server.found_by, url=server.url),
                )
        clash = [s for s in servers if s.name in self._given_names]
        for server in clash:
            if self._first(f"clash:{server.name}"):
                log.warning(
                    "server found has the name of a server given explicitly: not read twice "
                    "under one name; rename the given one",
                    extra=fields(server=server.name, discovery=server.found_by, url=server.url),
                )
        servers = [s for s in servers if s.name not in self._given_names]
        changes = fleet_changes(self.found, servers)
        close: list[S] = []
        forget: set[str] = set()
        for server in changes.removed:
            log.info(
                "server gone: no longer judged",
                extra=fields(server=server.name, discovery=server.found_by),
            )
            self._drop(server.name, close, forget)
            self._read_uid.pop(server.name, None)
        for old, new in (*changes.replaced, *changes.updated):
            if _key(old) != _key(new):
                self._drop(old.name, close, forget)
                self._add(new)
            if old.pod_uid != new.pod_uid or old.readable != new.readable or old.url != new.url:
                self._say_state(new)
        for server in changes.added:
            self._add(server)
            self._say_state(server, added=True)
        self.found = {s.name: s for s in servers}
        for name in result.leaving:
            if self._first(f"leaving:{name}"):
                log.info(
                    "pod of a shard or replica its object no longer asks for (or of a deleted "
                    "object): not judged while it goes",
                    extra=fields(pod=name),
                )
        return close, forget

    def _add(self, server: FoundServer) -> None:
        if server.readable:
            self.sources[server.name] = self._make(server)

    def _drop(self, name: str, close: list[S], forget: set[str]) -> None:
        source = self.sources.pop(name, None)
        if source is not None:
            close.append(source)
        forget.add(name)

    def _say_state(self, server: FoundServer, added: bool = False) -> None:
        ident = server.identity
        place = (
            {"shard": ident.shard, "shards": ident.shards, "replica": ident.replica}
            if ident
            else {}
        )
        about = {"server": server.name, "discovery": server.found_by, **place}
        last_uid = self._read_uid.get(server.name, "")
        replaced = bool(last_uid and server.pod_uid and server.pod_uid != last_uid)
        if server.readable and server.pod_uid:
            self._read_uid[server.name] = server.pod_uid
        if not server.readable:
            log.warning(
                "server found cannot be read: its replica's coverage is unknown",
                extra=fields(**about, why=server.unreadable),
            )
        elif added:
            log.info("server found", extra=fields(**about, url=server.url))
        elif replaced:
            log.info("server's pod replaced: read anew", extra=fields(**about, url=server.url))
        else:
            log.info("server found is read again", extra=fields(**about, url=server.url))

    def _say_findings(self, result: Discovery) -> None:
        now = {f"finding:{f.subject}:{f.reason}": f for f in result.findings}
        for key, finding in now.items():
            if self._first(key):
                log.warning(
                    "discovery cannot use an object",
                    extra=fields(
                        subject=finding.subject, reason=finding.reason, detail=finding.message
                    ),
                )
        # A finding that went away may be said again when it returns.
        self._said -= {k for k in self._said if k.startswith("finding:") and k not in now}

    def _first(self, key: str) -> bool:
        """True the first time `key` is said (until it is forgotten)."""
        if key in self._said:
            return False
        self._said.add(key)
        return True

    def findings(self) -> tuple[DiscoveryFinding, ...]:
        return self._discovery.discovery().findings if self._discovery.synced() else ()


def config_token(config: LoadedConfig | None) -> str:
    """model.answerers' token for a loaded configuration."""
    if config is None:
        return ""
    return labels_token(dict(config.external_labels), hashmod_shard(config.jobs))


class CheckedSource:
    """A given server read as the TargetSource it wraps, after checking at
    each configuration read that one server answers its URL
    (model.answerers): `PROBES` runtimeinfo reads on connections of their
    own, and the loaded configuration's external labels and shard."""

    PROBES = 3

    def __init__(self, inner: PrometheusSource) -> None:
        self.inner = inner
        self.endpoint: PrometheusEndpoint = inner.endpoint
        self.health: SourceHealth = inner.health
        self._check = AnswererCheck()

    @property
    def declared(self) -> Declared:
        return self.inner.declared

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def pool_active_counts(self) -> Mapping[str, int]:
        return self.inner.pool_active_counts

    @property
    def discovery_settled(self) -> bool:
        return self.inner.discovery_settled

    async def read_config(self) -> LoadedConfig | None:
        config = await self.inner.read_config()
        processes = await self.inner.runtime_tokens(self.PROBES)
        reason = self._check.observe(processes, [config_token(config)])
        if reason:
            raise SeveralServers(f"prometheus {self.inner.endpoint.name}: {reason}")
        return config

    async def collect(
        self, pools_to_refresh: Collection[str] | None = None, *, one_pool_at_a_time: bool = False
    ) -> PrometheusSnapshot:
        return await self.inner.collect(pools_to_refresh, one_pool_at_a_time=one_pool_at_a_time)

    async def pool_target_counts(self) -> dict[str, int] | None:
        return await self.inner.pool_target_counts()

    async def close(self) -> None:
        await self.inner.close()
