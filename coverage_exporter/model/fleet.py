"""The Prometheus servers of one cycle grouped into replicas.

A replica is known when each of its shards has a server that answered
within the expiry bound (see the collector's `--prometheus-stale-after`):
a down shard's share cannot be told apart from a loss, so the replica's
coverage is then unknown, never "covered" and never "missing".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from coverage_exporter.model.objects import ServerIdentity

ReplicaKey = tuple[str, str]
"""(scraper, replica)."""


@dataclass(frozen=True, slots=True)
class ServerState:
    name: str
    identity: ServerIdentity
    known: bool
    """Answered within the expiry bound; its last good targets count."""
    why_unknown: str = ""
    """Set when it answered, but its answer cannot be judged (see
    PrometheusSnapshot.unknown_reason); known is then False."""
    discovering: bool = False
    """It answered, but started too recently for its service discovery to
    have delivered every target (see PrometheusSnapshot.started): known is
    then False, and its empty pools are not losses."""
    found_by: str = ""
    """How the exporter knows of it: the flag, the fleet file, or the
    object or selector discovery found it by (model.discovery)."""


@dataclass(slots=True)
class Replica:
    scraper: str
    replica: str
    shards: int
    servers: list[ServerState] = field(default_factory=list)

    @property
    def key(self) -> ReplicaKey:
        return (self.scraper, self.replica)

    @property
    def known(self) -> bool:
        have = {s.identity.shard for s in self.servers if s.known}
        return all(i in have for i in range(self.shards))

    @property
    def why_unknown(self) -> str:
        """Why its coverage is unknown ("" while known)."""
        if self.known:
            return ""
        reasons = [s.why_unknown for s in self.servers if s.why_unknown]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
        return "a shard of the replica has not answered recently"

    @property
    def discovering(self) -> bool:
        """Unknown only because a shard is still discovering: every shard
        without a known server has one that answered while starting."""
        if self.known:
            return False
        have = {s.identity.shard for s in self.servers if s.known}
        starting = {s.identity.shard for s in self.servers if s.discovering}
        return all(i in have or i in starting for i in range(self.shards))

    @property
    def missing_shards(self) -> list[int]:
        have = {s.identity.shard for s in self.servers if s.known}
        return [i for i in range(self.shards) if i not in have]


@dataclass(slots=True)
class Fleet:
    replicas: dict[ReplicaKey, Replica] = field(default_factory=dict)
    _by_server: dict[str, Replica] = field(default_factory=dict)

    @classmethod
    def build(cls, servers: Sequence[ServerState]) -> Fleet:
        fleet = cls()
        # Unlabelled hashmod shards (how="hashmod"): the k-th server of a
        # shard index belongs to the k-th replica.
        seen: dict[tuple[str, int], int] = {}
        for server in servers:
            ident = server.identity
            replica_name = ident.replica
            if ident.how == "hashmod":
                k = seen.get((ident.scraper, ident.shard), 0)
                seen[(ident.scraper, ident.shard)] = k + 1
                replica_name = f"{ident.replica}#{k}"
            key = (ident.scraper, replica_name)
            replica = fleet.replicas.get(key)
            if replica is None:
                replica = fleet.replicas[key] = Replica(ident.scraper, replica_name, ident.shards)
            replica.shards = max(replica.shards, ident.shards)
            replica.servers.append(server)
            fleet._by_server[server.name] = replica
        return fleet

    @classmethod
    def of_names(cls, names: Iterable[str]) -> Fleet:
        """Independent servers, all known: for callers without a topology."""
        return cls.build([ServerState(n, ServerIdentity.alone(n), True) for n in sorted(names)])

    def server_known(self, server: str) -> bool:
        replica = self.replica_of(server)
        return any(s.known for s in replica.servers if s.name == server)

    def replica_of(self, server: str) -> Replica:
        replica = self._by_server.get(server)
        if replica is None:
            # A server outside the fleet (a caller's shortcut): on its own.
            replica = Replica(
                server, server, 1, [ServerState(server, ServerIdentity.alone(server), True)]
            )
            self.replicas[replica.key] = replica
            self._by_server[server] = replica
        return replica
