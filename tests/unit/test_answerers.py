"""model.answerers on plain data: one URL, one server or several."""

from __future__ import annotations

from coverage_exporter.model.answerers import AnswererCheck, labels_token, process_token

A = process_token("2026-12-07T21:17:26.646339368Z", "prometheus-k8s-0")
B = process_token("2026-12-07T21:17:26.650081221Z", "prometheus-k8s-1")
LA = labels_token({"prometheus": "monitoring/k8s", "prometheus_replica": "prometheus-k8s-0"}, None)
LB = labels_token({"prometheus": "monitoring/k8s", "prometheus_replica": "prometheus-k8s-1"}, None)


def test_one_server_stays_one_server() -> None:
    check = AnswererCheck()
    for _ in range(5):
        assert check.observe([A, A, A], [LA]) == ""


def test_two_processes_within_one_cycle() -> None:
    reason = AnswererCheck().observe([A, B, A], [LA])
    assert "prometheus-k8s-0" in reason and "prometheus-k8s-1" in reason
    assert "several Prometheus pods" in reason and "discovery" in reason


def test_a_restart_is_not_several_servers_but_a_return_is() -> None:
    check = AnswererCheck()
    assert check.observe([A], [LA]) == ""
    assert check.observe([B], [LA]) == ""  # restarted: a new process, for good
    assert check.observe([B], [LA]) == ""
    assert check.observe([A], [LA]) != ""  # the old one answers again: two behind the URL


def test_external_labels_that_alternate_across_cycles() -> None:
    check = AnswererCheck()
    assert check.observe([], [LA]) == ""
    assert check.observe([], [LB]) == ""
    assert "prometheus_replica=prometheus-k8s-1" in check.observe([], [LA])


def test_shards_differ_in_their_hashmod_rule() -> None:
    labels = {"prometheus": "monitoring/k8s"}
    s0, s1 = labels_token(labels, (0, 2)), labels_token(labels, (1, 2))
    assert "shard 1 of 2" in AnswererCheck().observe([], [s0, s1])


def test_the_verdict_holds_until_enough_clean_cycles() -> None:
    check = AnswererCheck(clear_after=3)
    assert check.observe([A, B], []) != ""
    assert check.observe([A], []) != ""
    assert check.observe([A], []) != ""
    assert check.observe([A], []) == ""


def test_no_tokens_tell_nothing() -> None:
    """Thanos Query serves neither runtimeinfo nor its configuration."""
    check = AnswererCheck()
    assert check.observe([], []) == "" and check.observe(["", ""], [""]) == ""
    assert labels_token({}, None) == ""
    assert process_token("t") == "started t"
