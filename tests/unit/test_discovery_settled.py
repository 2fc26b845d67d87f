"""When a fresh server's discovery counts as delivered (pure: the counts
its /metrics told, the pools it runs, how long the counts held still)."""

from __future__ import annotations

from coverage_exporter.sources.prometheus.source import _SETTLE_SECONDS, discovery_settled

POOLS = ("serviceMonitor/monitoring/node-exporter/0", "serviceMonitor/monitoring/kubelet/0")


def test_every_pool_counted_above_zero_and_held_still_is_settled() -> None:
    counts = dict.fromkeys(POOLS, 100)
    assert discovery_settled(counts, POOLS, _SETTLE_SECONDS)
    assert discovery_settled(counts, POOLS, _SETTLE_SECONDS * 30)


def test_counts_that_moved_recently_are_not_settled() -> None:
    assert not discovery_settled(dict.fromkeys(POOLS, 100), POOLS, _SETTLE_SECONDS - 0.5)
    assert not discovery_settled(dict.fromkeys(POOLS, 100), POOLS, 0.0)


def test_a_pool_counted_zero_is_not_settled_however_long() -> None:
    """Prometheus counts every pool at zero from its first discovery send,
    before its Kubernetes informers listed anything."""
    counts = {POOLS[0]: 100, POOLS[1]: 0}
    assert not discovery_settled(counts, POOLS, 3600.0)


def test_a_pool_it_runs_but_does_not_count_is_not_settled() -> None:
    """Before its first scrape reload it counts no pool; vmagent never
    counts a pool without targets."""
    assert not discovery_settled({POOLS[0]: 100}, POOLS, 3600.0)
    assert not discovery_settled({}, POOLS, 3600.0)


def test_no_counts_or_no_pools_is_not_settled() -> None:
    assert not discovery_settled(None, POOLS, 3600.0)
    assert not discovery_settled({}, (), 3600.0)
