"""servers.Followed: the found servers kept in step with discovery, on the
real Operator's captured objects (model.discovery's fixtures)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import pytest

from coverage_exporter.model import discovery as d
from coverage_exporter.servers import Followed
from tests.unit.test_discovery_model import cr, pods


@dataclass
class FakeDiscovery:
    """Stands in for sources.discovery.DiscoverySource: objects and pods
    set by the test, as the source's caches would hold them."""

    objects: list[d.ScraperObject] = field(default_factory=list)
    pods: list[d.ScraperPod] = field(default_factory=list)
    is_synced: bool = True

    def synced(self) -> bool:
        return self.is_synced

    def discovery(self) -> d.Discovery:
        return d.operator_servers(self.objects, self.pods)


@dataclass(frozen=True)
class Source:
    server: d.FoundServer


def said(caplog: pytest.LogCaptureFixture) -> str:
    """Every record's message with its fields (the exporter logs key=value)."""
    return "\n".join(
        r.getMessage() + "".join(f" {k}={v}" for k, v in getattr(r, "_log_fields", {}).items())
        for r in caplog.records
    )


def follower(
    fake: FakeDiscovery, given: tuple[str, ...] = (), names: tuple[str, ...] = ()
) -> Followed[Source]:
    return Followed(fake, Source, list(given), list(names))


def test_nothing_happens_before_discovery_has_listed() -> None:
    fake = FakeDiscovery([cr("k8s")], pods("k8s"), is_synced=False)
    f = follower(fake)
    assert f.follow() == ([], set())
    assert f.found == {} and f.sources == {}


def test_the_fleet_follows_shards_added_then_removed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coverage_exporter.servers")
    fake = FakeDiscovery([cr("k8s")], pods("k8s"))
    f = follower(fake)
    assert f.follow() == ([], set())
    assert sorted(f.sources) == sorted(f.found) and len(f.sources) == 4

    # CR patched to 3 shards: the new shard is unknown until its pods run.
    fake.objects = [replace(cr("k8s"), shards=3)]
    close, forget = f.follow()
    # Every old server's identity changed (3 shards): read anew, as itself.
    assert len(close) == 4 and len(forget) == 4
    assert [s.name for s in f.placeholders] == [
        "monitoring/prometheus-k8s-shard-2-0",
        "monitoring/prometheus-k8s-shard-2-1",
    ]
    assert "cannot be read: its replica's coverage is unknown" in said(caplog)
    assert "why=no pod yet" in said(caplog)

    # Its pods run: read from this cycle, with their shard and replica.
    new = [
        replace(
            p,
            name=p.name.replace("shard-1", "shard-2"),
            owner_name="prometheus-k8s-shard-2",
            labels={**p.labels, d.SHARD_LABEL: "2"},
            ip=p.ip.rsplit(".", 1)[0] + ".50" + p.name[-1],
            uid=p.uid + "-s2",
        )
        for p in pods("k8s")
        if "shard-1" in p.name
    ]
    fake.pods = [*pods("k8s"), *new]
    close, forget = f.follow()
    assert close == [] and forget == {s for s in f.found if "shard-2" in s}
    shard2 = f.sources["monitoring/prometheus-k8s-shard-2-1"].server
    assert shard2.identity is not None
    assert (shard2.identity.shard, shard2.identity.replica) == (2, "prometheus-k8s-1")
    assert f.placeholders == []

    # Back to 2 shards: shard 2's servers are closed and forgotten, not down.
    fake.objects = [cr("k8s")]
    close, forget = f.follow()
    assert {s.server.name for s in close} >= {
        "monitoring/prometheus-k8s-shard-2-0",
        "monitoring/prometheus-k8s-shard-2-1",
    }
    assert "monitoring/prometheus-k8s-shard-2-0" not in f.found
    assert "server gone: no longer judged" in said(caplog)
    assert "not judged while it goes" in said(caplog)  # its pods still exist


def test_a_pod_not_ready_is_unknown_and_a_replaced_one_read_anew(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="coverage_exporter.servers")
    fake = FakeDiscovery([cr("k8s")], pods("k8s"))
    f = follower(fake)
    f.follow()
    name = "monitoring/prometheus-k8s-0"
    fake.pods = [
        replace(p, ready=False) if p.name == "prometheus-k8s-0" else p for p in pods("k8s")
    ]
    close, forget = f.follow()
    assert [s.server.name for s in close] == [name] and forget == {name}
    assert name not in f.sources and [s.name for s in f.placeholders] == [name]

    fake.pods = [
        replace(p, uid="new", ip="127.206.53.77") if p.name == "prometheus-k8s-0" else p
        for p in pods("k8s")
    ]
    close, forget = f.follow()
    assert close == [] and forget == {name}
    assert f.sources[name].server.url == "http://127.206.53.77:9090"

    # Replaced again, at the same IP (kwok hands a freed address to the next
    # pod): a new pod all the same, its predecessor's answers forgotten.
    fake.pods = [
        replace(p, uid="newer", ip="127.206.53.77") if p.name == "prometheus-k8s-0" else p
        for p in pods("k8s")
    ]
    close, forget = f.follow()
    assert [s.server.pod_uid for s in close] == ["new"] and forget == {name}
    assert f.sources[name].server.pod_uid == "newer"
    replaced = [line for line in said(caplog).splitlines() if "replaced: read anew" in line]
    assert len(replaced) == 2 and all("url=http://127.206.53.77:9090" in r for r in replaced)


def test_a_replacement_seen_first_without_an_ip_is_said_replaced_once_it_is_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The StatefulSet's new pod is often listed Pending, without an IP, before
    it runs (seen on the real controllers under load): the pod that is read
    next is still a new pod, and said so, not "read again"."""
    caplog.set_level(logging.INFO, logger="coverage_exporter.servers")
    fake = FakeDiscovery([cr("k8s")], pods("k8s"))
    f = follower(fake)
    f.follow()
    name = "monitoring/prometheus-k8s-0"
    fake.pods = [
        replace(p, uid="new", ip="", ready=False) if p.name == "prometheus-k8s-0" else p
        for p in pods("k8s")
    ]
    f.follow()
    assert name not in f.sources and [s.name for s in f.placeholders] == [name]
    fake.pods = [
        replace(p, uid="new", ip="127.206.53.77") if p.name == "prometheus-k8s-0" else p
        for p in pods("k8s")
    ]
    f.follow()
    assert f.sources[name].server.pod_uid == "new"
    lines = [line for line in said(caplog).splitlines() if f"server={name} " in line]
    assert "replaced: read anew" in lines[-1] and "url=http://127.206.53.77:9090" in lines[-1]
    assert not any("read again" in line for line in lines)


def test_a_server_given_explicitly_is_read_once_as_given(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coverage_exporter.servers")
    fake = FakeDiscovery([cr("k8s")], pods("k8s"))
    first = d.operator_servers([cr("k8s")], pods("k8s")).servers[0]
    f = follower(fake, given=(first.url,), names=("monitoring/prometheus-k8s-1",))
    f.follow()
    assert first.name not in f.found
    assert "monitoring/prometheus-k8s-1" not in f.found  # that name is taken
    assert len(f.sources) == 2
    assert "also given explicitly" in said(caplog) and "rename the given one" in said(caplog)


def test_findings_are_said_once_while_they_hold(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeDiscovery([cr("local")], pods("local"))
    f = follower(fake)
    f.follow()
    f.follow()
    assert said(caplog).count("reason=listen_local") == 1
    fake.objects = []
    f.follow()
    fake.objects = [cr("local")]
    f.follow()
    assert said(caplog).count("reason=listen_local") == 2
