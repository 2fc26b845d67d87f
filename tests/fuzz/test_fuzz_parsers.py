"""Fuzzing of every parser of untrusted input with hypothesis: Prometheus
targets, scrape pools, configuration answers and /metrics counts, Kubernetes list pages and watch
events, kubeconfig files, command-line flags, HTTP request heads.

The property is the same everywhere: whatever the bytes, the parser either
returns something well-formed or raises its one documented error (which
the source turns into source_up 0). Anything else (RecursionError,
OverflowError, KeyError, ...) ends the process or a cycle, and is a bug.

Inputs are seeded with the captures of REAL answers in tests/fixtures
(tests/fixtures/capture.py records them from the testbed), mutated byte by
byte, plus arbitrary JSON. Runs are bounded (max_examples) so that the
suite stays fast; raise HYPOTHESIS_PROFILE=long for a deeper search.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coverage_exporter import cli, untrusted
from coverage_exporter.app import Guards, Settings
from coverage_exporter.health import SOURCE_KUBERNETES, SourceHealth
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes import parse as k8s_parse
from coverage_exporter.sources.kubernetes import pod_table
from coverage_exporter.sources.kubernetes.api import ApiError
from coverage_exporter.sources.kubernetes.kubeconfig import load_configuration
from coverage_exporter.sources.kubernetes.reflector import Reflector
from coverage_exporter.sources.prometheus.config import parse_config_response
from coverage_exporter.sources.prometheus.source import (
    TargetStream,
    parse_discovered_target_counts,
    parse_pool_target_counts,
    parse_scrape_pools,
    parse_targets,
)
from coverage_exporter.web import server as http

FIXTURES = Path(__file__).parent.parent / "fixtures"

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def seeds(*patterns: str) -> list[bytes]:
    found = sorted({p for pattern in patterns for p in FIXTURES.glob(pattern)})
    assert found, f"no fixtures match {patterns}"
    return [p.read_bytes() for p in found]


PROMETHEUS_TARGETS = seeds(
    "prometheus/*targets*.json",
    "captured/prometheus-*/targets*.json",
    # vmagent, Prometheus --agent and Thanos Query (testbed/scrapers.py).
    "captured/scrapers/*/targets*.json",
)
PROMETHEUS_POOLS = seeds(
    "prometheus/*scrape_pools*.json", "captured/prometheus-*/scrape_pools.json"
)
PROMETHEUS_METRICS = seeds(
    "prometheus/*metrics*.txt",
    "captured/prometheus-*/metrics.txt",
    "captured/scrapers/*/metrics.txt",
)
K8S_LISTS = seeds("captured/kubernetes/list_*.json", "captured/kubernetes/pod_forms/list_*.json")
K8S_OBJECTS = seeds("kubernetes/*.json")
K8S_EVENTS = seeds(
    "captured/kubernetes/watch_*.jsonl", "captured/kubernetes/pod_forms/watch_*.jsonl"
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A seed with a few byte-level edits: cut, inserted, replaced,
    duplicated spans; or a seed's JSON with a subtree replaced."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["cut", "insert", "replace", "truncate", "nest"]))
        if edit == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "replace":
            data[at] = draw(st.integers(0, 255))
        elif edit == "truncate":
            del data[at:]
        else:
            depth = draw(st.integers(1, 9000))
            data[at:at] = b"[" * depth + b"]" * depth
    return bytes(data)


def any_json(top: dict[str, Any] | None = None) -> st.SearchStrategy[bytes]:
    return json_values.map(lambda v: json.dumps(v if top is None else {**top, "x": v}).encode())


# --- Prometheus ------------------------------------------------------------------------


@given(st.one_of(mutated(PROMETHEUS_TARGETS), any_json()), st.sampled_from([None, "pool"]))
def test_targets_parse_or_fail_as_a_source_error(body: bytes, pool: str | None) -> None:
    try:
        result = parse_targets(body, pool)
    except SourceError:
        return
    for name, targets in result.items():
        assert isinstance(name, str)
        assert targets.active >= len(targets.targets)


@given(st.sampled_from(PROMETHEUS_TARGETS), st.lists(st.integers(1, 4096), min_size=1))
def test_targets_decoded_in_pieces_equal_the_whole(body: bytes, cuts: list[int]) -> None:
    """However the body arrives, streamed decoding gives the same targets
    (or the same failure: Thanos Query's partial answer)."""
    try:
        whole = parse_targets(body)
    except SourceError as exc:
        whole, failure = {}, str(exc)
    else:
        failure = None
    stream = TargetStream(piece_bytes=64)
    at = 0
    for size in cuts:
        stream.feed(body[at : at + size])
        at += size
    stream.feed(body[at:])
    if failure is not None:
        with pytest.raises(SourceError) as raised:
            stream.finish()
        assert str(raised.value) == failure
        return
    pieces = stream.finish()
    assert {p: (r.active, r.targets) for p, r in pieces.items()} == {
        p: (r.active, r.targets) for p, r in whole.items()
    }


@given(st.one_of(mutated(PROMETHEUS_POOLS), any_json({"status": "success"})))
def test_scrape_pools_parse_or_fail_as_a_source_error(body: bytes) -> None:
    try:
        pools = parse_scrape_pools(body)
    except SourceError:
        return
    assert all(isinstance(p, str) for p in pools)


@given(
    st.one_of(
        any_json({"status": "success"}),
        st.builds(
            lambda text: json.dumps({"status": "success", "data": {"yaml": text}}).encode(),
            st.text(max_size=200),
        ),
        st.binary(max_size=200),
    )
)
def test_configuration_answers_parse_or_fail_as_a_source_error(body: bytes) -> None:
    with contextlib.suppress(SourceError):
        parse_config_response(body)


counts_lines = st.builds(
    lambda line, job, value: line.format(job=job) + f" {value}",
    st.sampled_from(
        [
            'prometheus_target_scrape_pool_targets{{scrape_job="{job}"}}',
            'prometheus_sd_discovered_targets{{config="{job}",name="scrape"}}',
        ]
    ),
    st.text(max_size=20),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["+Inf", "-Inf", "NaN", "1e400", "0x1", "", "3 1700000000000"]),
        st.text(max_size=10),
    ),
)


@given(
    st.one_of(
        mutated(PROMETHEUS_METRICS).map(lambda b: b.decode("utf-8", "replace")),
        st.lists(counts_lines, max_size=10).map("\n".join),
        st.text(),
    )
)
def test_pool_counts_are_whole_non_negative_numbers_or_absent(text: str) -> None:
    for parse in (parse_pool_target_counts, parse_discovered_target_counts):
        counts = parse(text)
        if counts is not None:
            assert all(isinstance(v, int) and v >= 0 for v in counts.values())


# --- Kubernetes --------------------------------------------------------------------------

PARSERS = [
    k8s_parse.NODES,
    k8s_parse.SERVICES,
    k8s_parse.ENDPOINTS,
    k8s_parse.ENDPOINTSLICES,
    k8s_parse.PODS,
    k8s_parse.DAEMONSETS,
    # The Table parser after a LIST (columns known) and before one.
    pod_table.PodTableParser("ns"),
    pod_table.PodTableParser("ns"),
]
PARSERS[-2].parse_page(seeds("captured/kubernetes/pod_forms/list_pods_table.json")[0])


@given(
    st.one_of(mutated(K8S_LISTS), any_json({"kind": "List", "items": []})),
    st.sampled_from(PARSERS),
)
def test_list_pages_parse_or_fail_as_a_parse_error(body: bytes, parser: Any) -> None:
    try:
        page = parser.parse_page(body)
    except k8s_parse.ParseError:
        return
    assert all(isinstance(e, str) for e in page.errors)


@given(st.one_of(mutated(K8S_OBJECTS), any_json()), st.sampled_from(PARSERS))
def test_objects_parse_or_fail_as_a_parse_error(body: bytes, parser: Any) -> None:
    with contextlib.suppress(k8s_parse.ParseError):
        parser.parse(body)
    parser.identify(body)  # never raises


class _NoApi:
    """The reflector's API client: never called by _handle_event."""


@given(
    st.one_of(
        mutated(K8S_EVENTS),
        st.builds(
            lambda kind, obj: json.dumps({"type": kind, "object": obj}).encode(),
            st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR", "X"]),
            json_values,
        ),
    ),
    st.sampled_from(PARSERS),
)
def test_watch_events_update_the_cache_or_fail_cleanly(line: bytes, parser: Any) -> None:
    reflector: Reflector[Any, Any] = Reflector(
        _NoApi(),  # type: ignore[arg-type]
        "/x",
        parser,
        SourceHealth(SOURCE_KUBERNETES),
    )
    for event in line.splitlines() or [line]:
        with contextlib.suppress(k8s_parse.ParseError, ApiError):
            reflector._handle_event(event)
    assert all(k is not None for k in reflector.cache)


KUBECONFIG_KEYS = st.sampled_from(
    ["server", "token", "tokenFile", "certificate-authority", "client-certificate",
     "client-key", "insecure-skip-tls-verify", "tls-server-name", "proxy-url", "username",
     "password", "certificate-authority-data", "client-certificate-data", "client-key-data"]
)  # fmt: skip
# Never "exec" or "auth-provider": a fuzzer must not run arbitrary commands.
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30))


@given(
    st.dictionaries(KUBECONFIG_KEYS, scalars, max_size=6),
    st.dictionaries(KUBECONFIG_KEYS, scalars, max_size=6),
    st.one_of(st.none(), st.text(max_size=8)),
    st.booleans(),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_kubeconfig_loads_or_fails_as_a_source_error(
    tmp_path: Path,
    cluster: dict[str, Any],
    user: dict[str, Any],
    context: str | None,
    broken: bool,
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "main",
    }
    text = yaml.safe_dump(config)
    if broken:
        text = text[: len(text) // 2] + "\t: ["
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    try:
        configuration = load_configuration(kubeconfig=str(path), context=context)
    except SourceError:
        return
    assert configuration.host


FLAGS = st.sampled_from(
    ["--prometheus-url", "--service", "--namespace", "--service-selector",
     "--missing-node-info-limit", "--interval", "--source-deadline", "--max-response-bytes",
     "--kubernetes-max-pod-watches", "--kubernetes-watch-idle-timeout", "--prometheus-timeout",
     "--web.listen-address", "--web.max-connections", "--web.header-timeout",
     "--prometheus-bearer-token-file", "--prometheus-basic-auth-user", "--output"]
)  # fmt: skip
flag_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["http://p:9090", "a=http://p:9090", "ns/name", "-1", "0", "nan", "1e9"]),
)


@given(st.lists(st.tuples(FLAGS, flag_values), max_size=6), st.sampled_from(["serve", "audit"]))
def test_flags_parse_or_fail_with_a_message(pairs: list[tuple[str, str]], command: str) -> None:
    argv = [command, *(f"{flag}={value}" for flag, value in pairs)]
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2
        return
    try:
        Settings.from_args(args)
        if command == "serve":
            http.parse_listen_address(args.listen_address)
        Guards.from_args(args)
    except ValueError:
        return


# argparse prints usage to stderr on every SystemExit above; keep it quiet.
@pytest.fixture(autouse=True)
def _quiet_argparse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(argparse.ArgumentParser, "print_usage", lambda *a, **k: None)
    monkeypatch.setattr(argparse.ArgumentParser, "_print_message", lambda *a, **k: None)


# --- HTTP request heads and printable text ------------------------------------------------


@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda line, headers: (line + "\r\n" + headers + "\r\n\r\n").encode("latin-1"),
            st.text(st.characters(max_codepoint=255), max_size=40),
            st.text(st.characters(max_codepoint=255), max_size=80),
        ),
    )
)
def test_request_heads_parse_or_get_a_4xx(head: bytes) -> None:
    try:
        _, target, version, headers = http._parse_head(head + b"\r\n\r\n")
    except http._BadRequest as bad:
        assert 400 <= bad.status < 500
        return
    assert target.startswith("/") and version.startswith("HTTP/1.")
    with contextlib.suppress(http._BadRequest):
        http._content_length(headers)


@given(st.one_of(st.text(), st.binary()), st.integers(1, 300))
def test_printable_text_is_one_line_without_controls(text: str | bytes, limit: int) -> None:
    out = untrusted.printable(text, limit)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    assert "\u2028" not in out and "\u2029" not in out
    assert len(out) <= limit + len(" [...]")


def test_the_event_loop_is_not_needed_by_the_parsers() -> None:
    """The parsers above run in worker threads (asyncio.to_thread)."""
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
