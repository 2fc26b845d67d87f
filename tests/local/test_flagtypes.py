"""Durations and sizes parsed exactly as Prometheus parses them: the same
inputs given to coverage_exporter/flagtypes.py and to Prometheus's own Go
code (tests/oracle, built by testbed/build.sh oracle from the versions the
Prometheus 3 build uses), accepted or refused alike, to the same value."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coverage_exporter import flagtypes
from tools.chart import cache_dir, versions


@pytest.fixture(scope="module")
def oracle() -> Iterator[subprocess.Popen[str]]:
    binary = cache_dir() / "oracle" / versions()["PROMETHEUS3_MODULE"] / "oracle"
    assert binary.exists(), "run bash testbed/build.sh oracle"
    process = subprocess.Popen(
        [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield process
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=10)


def ask(oracle: subprocess.Popen[str], kind: str, text: str) -> int | None:
    assert oracle.stdin is not None and oracle.stdout is not None
    oracle.stdin.write(json.dumps([kind, text]) + "\n")
    oracle.stdin.flush()
    answer = json.loads(oracle.stdout.readline())
    return answer["value"] if answer["ok"] else None


def ours(parse, text: str) -> int | None:
    try:
        return parse(text)
    except ValueError:
        return None


# Prometheus's own cases (prometheus/common model/time_test.go), and edges.
DURATIONS = [
    "0", "0w", "0s", "324ms", "3s", "5m", "1h", "4d", "4d1h", "14d", "3w", "3w2d1h",
    "10y", "1y1w1d1h1m1s1ms", "1", "1y1m1d", "1.5d", "d", "294y", "200y10400w",
    "107675d", "2584200h", "", "1m30s", "90s", "1s1m", "1ms1s", "1h1h", "-1s", "+1s",
    " 1s", "1s ", "1 s", "1µs", "1us", "1ns", "01m", "1M", "1S", "292y", "106751d",
    "18446744073709551616s", "18446744073709551615s", "9223372036854775807ms",
    "1e3s", "0x10s", "\uff11s",  # a fullwidth digit one
]  # fmt: skip
SIZES = [
    "0", "1B", "1KB", "1KiB", "1kB", "1kiB", "256MiB", "256MB", "1.5GiB", "1GB512MB",
    ".5KiB", "5.KiB", "1", "", "-1KiB", "+1KiB", "1 KiB", "1EiB", "8EiB", "7EiB",
    "1TB", "1PiB", "1Mib", "1mb", "10b", "0.0001B", "1e3B", "B", ".B",
]  # fmt: skip


@pytest.mark.parametrize("text", DURATIONS)
def test_durations_as_prometheus(oracle: subprocess.Popen[str], text: str) -> None:
    assert ours(flagtypes.parse_prometheus_duration, text) == ask(oracle, "duration", text)


@pytest.mark.parametrize("text", SIZES)
def test_sizes_as_prometheus(oracle: subprocess.Popen[str], text: str) -> None:
    assert ours(flagtypes.parse_base2_bytes, text) == ask(oracle, "bytes", text)


DIGITS = list("0123456789")
DURATION_ALPHABET = st.sampled_from(
    [*DIGITS, "ms", "s", "m", "h", "d", "w", "y", ".", "-", "us", " ", "x"]
)
SIZE_ALPHABET = st.sampled_from(
    [*DIGITS, "B", "KB", "KiB", "MB", "MiB", "GiB", "kB", "EiB", ".", "-", "+", " "]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(DURATION_ALPHABET, max_size=12).map("".join))
def test_durations_agree_with_prometheus_on_any_input(
    oracle: subprocess.Popen[str], text: str
) -> None:
    assert ours(flagtypes.parse_prometheus_duration, text) == ask(oracle, "duration", text)


@settings(max_examples=500, deadline=None)
@given(st.lists(SIZE_ALPHABET, max_size=10).map("".join))
def test_sizes_agree_with_prometheus_on_any_input(
    oracle: subprocess.Popen[str], text: str
) -> None:
    assert ours(flagtypes.parse_base2_bytes, text) == ask(oracle, "bytes", text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("1m", 60.0), ("1h30m", 5400.0), ("250ms", 0.25), ("2d", 172800.0),
     # A bare number is seconds, as these flags always took them.
     ("60", 60.0), ("0.5", 0.5), ("0", 0.0)],
)  # fmt: skip
def test_duration_flags_take_prometheus_durations_and_seconds(text: str, seconds: float) -> None:
    assert flagtypes.parse_seconds(text) == seconds


def test_bad_durations_say_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"unknown unit \"'?min'?\"|unknown unit 'min'"):
        flagtypes.parse_seconds("1min")
    with pytest.raises(ValueError, match="a duration: 90s, 1m"):
        flagtypes.parse_seconds("1s1m")


@pytest.mark.parametrize(
    ("text", "size"),
    [("256MiB", 256 << 20), ("256MB", 256 << 20), ("1GiB", 1 << 30), ("512KiB", 512 << 10),
     ("1.5GiB", 3 << 29), ("268435456", 268435456)],
)  # fmt: skip
def test_size_flags_take_units_and_bytes(text: str, size: int) -> None:
    assert flagtypes.parse_bytes(text) == size


@pytest.mark.parametrize(("seconds", "text"), [(60, "1m"), (90, "1m30s"), (0.25, "250ms"),
                                               (5400, "1h30m"), (300, "5m"), (0, "0s")])
def test_durations_print_as_prometheus_prints_them(seconds: float, text: str) -> None:
    assert flagtypes.format_seconds(seconds) == text
    assert flagtypes.parse_seconds(text) == seconds


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("TRUE", True), ("True", True), ("t", True), ("yes", True),
     ("on", True), ("0", False), ("false", False), ("F", False), ("no", False), ("OFF", False)],
)  # fmt: skip
def test_booleans(text: str, value: bool) -> None:
    assert flagtypes.parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "ture", "2", "enabled", "tRUE"])
def test_an_unknown_boolean_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        flagtypes.parse_bool(text)
