"""When a fresh server's discovery counts as delivered (pure: the counts
its /metrics told, the pools it runs, how long the counts held still)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coverage_exporter.sources.prometheus.source import (
    _SETTLE_SECONDS,
    discovery_settled,
    parse_discovered_target_counts,
    parse_pool_target_counts,
)

POOLS = ("serviceMonitor/monitoring/node-exporter/0", "serviceMonitor/monitoring/kubelet/0")
CAPTURED = Path(__file__).parents[1] / "fixtures" / "captured"
# tests/fixtures/capture_settle.py: pools of the real servers it ran.
KEPT, KEEPS_NONE, WAITING = "self", "keeps-none", "waiting"


def test_every_pool_counted_above_zero_and_held_still_is_settled() -> None:
    counts = dict.fromkeys(POOLS, 100)
    assert discovery_settled(counts, None, POOLS, _SETTLE_SECONDS)
    assert discovery_settled(counts, None, POOLS, _SETTLE_SECONDS * 30)


def test_counts_that_moved_recently_are_not_settled() -> None:
    assert not discovery_settled(dict.fromkeys(POOLS, 100), None, POOLS, _SETTLE_SECONDS - 0.5)
    assert not discovery_settled(dict.fromkeys(POOLS, 100), None, POOLS, 0.0)


def test_a_pool_counted_zero_is_not_settled_however_long() -> None:
    """Prometheus counts every pool at zero from its first discovery send,
    before its Kubernetes informers listed anything."""
    counts = {POOLS[0]: 100, POOLS[1]: 0}
    assert not discovery_settled(counts, None, POOLS, 3600.0)
    assert not discovery_settled(counts, {POOLS[0]: 100, POOLS[1]: 0}, POOLS, 3600.0)


def test_a_pool_kept_at_zero_after_its_discovery_delivered_is_settled() -> None:
    """Its rules keep none of what discovery delivered (a hashmod shard, a
    keep that matches nothing): the pool's own verdict, not a wait."""
    counts = {POOLS[0]: 100, POOLS[1]: 0}
    discovered = {POOLS[0]: 100, POOLS[1]: 40}
    assert discovery_settled(counts, discovered, POOLS, _SETTLE_SECONDS)
    assert not discovery_settled(counts, discovered, POOLS, _SETTLE_SECONDS - 0.5)


def test_a_pool_it_runs_but_does_not_count_is_not_settled() -> None:
    """Before its first scrape reload it counts no pool; vmagent never
    counts a pool without targets."""
    assert not discovery_settled({POOLS[0]: 100}, None, POOLS, 3600.0)
    assert not discovery_settled({}, None, POOLS, 3600.0)
    assert not discovery_settled({POOLS[0]: 100}, {POOLS[0]: 100}, POOLS, 3600.0)


def test_no_counts_or_no_pools_is_not_settled() -> None:
    assert not discovery_settled(None, None, POOLS, 3600.0)
    assert not discovery_settled(None, dict.fromkeys(POOLS, 5), POOLS, 3600.0)
    assert not discovery_settled({}, {}, (), 3600.0)


# --- on what the real Prometheus 3.16 and 2.53 wrote ---------------------------------


def captured(version: str, name: str) -> str:
    return (CAPTURED / f"prometheus-{version}" / name).read_text()


@pytest.mark.parametrize("version", ["3", "2"])
def test_a_real_server_whose_pool_keeps_none_is_settled(version: str) -> None:
    """20 s after its start, the real server counts `keeps-none` at zero
    after relabelling and at one before it: delivered. Before the
    discovered count was read, this server waited the grace period out."""
    text = captured(version, "metrics_settle.txt")
    counts, discovered = parse_pool_target_counts(text), parse_discovered_target_counts(text)
    assert counts is not None and counts[KEEPS_NONE] == 0
    assert discovered is not None and discovered[KEEPS_NONE] == 1
    assert discovery_settled(counts, discovered, (KEPT, KEEPS_NONE), _SETTLE_SECONDS)
    assert not discovery_settled(counts, None, (KEPT, KEEPS_NONE), _SETTLE_SECONDS)


@pytest.mark.parametrize("version", ["3", "2"])
def test_a_real_server_whose_api_never_answered_is_not_settled(version: str) -> None:
    """`waiting`'s Kubernetes SD never listed: discovered zero, counted zero
    (3.16) or not at all (2.53, whose scrape manager got no list for it)."""
    text = captured(version, "metrics_settle.txt")
    counts, discovered = parse_pool_target_counts(text), parse_discovered_target_counts(text)
    assert discovered is not None and discovered[WAITING] == 0
    assert not discovery_settled(counts, discovered, (KEPT, KEEPS_NONE, WAITING), 3600.0)


@pytest.mark.parametrize("version", ["3", "2"])
def test_a_real_server_just_started_is_not_settled(version: str) -> None:
    """Its first /metrics answer: every pool discovered at zero (set when its
    configuration was applied), none counted after relabelling."""
    text = captured(version, "metrics_settle_fresh.txt")
    discovered = parse_discovered_target_counts(text)
    assert discovered == dict.fromkeys((KEPT, KEEPS_NONE, WAITING), 0)
    counts = parse_pool_target_counts(text)
    assert not discovery_settled(counts, discovered, (KEPT, KEEPS_NONE), 3600.0)


def test_discovered_counts_are_the_scrape_managers_only() -> None:
    """The notifier's discovery manager writes the same family with
    name="notify": its Alertmanagers are no scrape pool."""
    text = (
        "# TYPE prometheus_sd_discovered_targets gauge\n"
        'prometheus_sd_discovered_targets{config="config-0",name="notify"} 3\n'
        'prometheus_sd_discovered_targets{config="a \\"b\\" \\\\c",name="scrape"} 7\n'
        'prometheus_sd_discovered_targets{config="x",name="scrape"} NaN\n'
    )
    assert parse_discovered_target_counts(text) == {'a "b" \\c': 7}
    assert parse_discovered_target_counts("up 1\n") is None
    assert (
        parse_discovered_target_counts(
            'prometheus_sd_discovered_targets{config="c",name="notify"} 1\n'
        )
        is None
    )
