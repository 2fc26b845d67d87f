"""Flag values spelled as Prometheus and its exporters spell them.

- durations as Prometheus's model.ParseDuration reads them (`90s`, `1m`,
  `1h30m`, `2d`; units y w d h m s ms, largest first, whole numbers); a
  bare number is still read as seconds, as this exporter's flags always
  were;
- sizes as kingpin's Bytes flags read them (alecthomas/units
  ParseBase2Bytes, which Prometheus uses for --storage.tsdb.retention.size):
  `256MiB`, `512KB` (K, M, G... are powers of 1024 with or without the i),
  `1.5GiB`; a bare whole number is still read as bytes;
- booleans from the environment as Go's strconv.ParseBool reads them, plus
  yes/no/on/off; anything else is an error, never a silent false.

tests/local/test_flagtypes.py checks the two parsers against Prometheus's own
code (testbed/oracle, built from the Go module proxy) on the same inputs.
"""

from __future__ import annotations

import math
import re

# prometheus/common model/time.go unitMap: position (largest first), nanoseconds.
_DURATION_UNITS = {
    "ms": (7, 1_000_000),
    "s": (6, 1_000_000_000),
    "m": (5, 60 * 1_000_000_000),
    "h": (4, 3600 * 1_000_000_000),
    "d": (3, 24 * 3600 * 1_000_000_000),
    "w": (2, 7 * 24 * 3600 * 1_000_000_000),
    "y": (1, 365 * 24 * 3600 * 1_000_000_000),
}
_MAX_INT64 = (1 << 63) - 1
_MAX_UINT64 = (1 << 64) - 1
_BARE_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_BARE_BYTES = re.compile(r"[0-9]+")


def _isdigit(c: str) -> bool:
    return "0" <= c <= "9"


def parse_prometheus_duration(text: str) -> int:
    """Nanoseconds, or ValueError with Prometheus's own message: model.ParseDuration."""
    if text == "0":
        return 0
    if text == "":
        raise ValueError("empty duration string")
    orig, s = text, text
    total, last_pos = 0, 0
    while s:
        if not _isdigit(s[0]):
            raise ValueError(f"not a valid duration string: {orig!r}")
        i = 0
        while i < len(s) and _isdigit(s[i]):
            i += 1
        value = int(s[:i])
        if value > _MAX_UINT64:  # strconv.ParseUint(.., 10, 0) fails
            raise ValueError(f"not a valid duration string: {orig!r}")
        s = s[i:]
        i = 0
        while i < len(s) and not _isdigit(s[i]):
            i += 1
        if i == 0:
            raise ValueError(f"not a valid duration string: {orig!r}")
        unit, s = s[:i], s[i:]
        if unit not in _DURATION_UNITS:
            raise ValueError(f"unknown unit {unit!r} in duration {orig!r}")
        pos, mult = _DURATION_UNITS[unit]
        if pos <= last_pos:  # units go from the largest to the smallest
            raise ValueError(f"not a valid duration string: {orig!r}")
        last_pos = pos
        if value > (1 << 63) // mult:
            raise ValueError("duration out of range")
        total += value * mult
        if total > _MAX_INT64:
            raise ValueError("duration out of range")
    return total


def parse_seconds(text: str) -> float:
    """A duration flag's value in seconds: a Prometheus duration, or a bare
    number of seconds. ValueError with a message fit for the user."""
    if _BARE_SECONDS.fullmatch(text):
        return float(text)
    try:
        return parse_prometheus_duration(text) / 1e9
    except ValueError as err:
        raise ValueError(
            f"{err} (a duration: 90s, 1m, 1h30m, 2d; or a number of seconds)"
        ) from None


# alecthomas/units MakeUnitMap("iB", "B", 1024) and MakeUnitMap("B", "B", 1024).
_SCALE = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
_BYTES_IB = {"B": 1.0} | {p + "iB": float(v) for p, v in _SCALE.items()}
_BYTES_B = {"B": 1.0} | {p + "B": float(v) for p, v in _SCALE.items()}
_LEADING_INT_LIMIT = ((1 << 63) - 10) // 10


def _leading_int(s: str) -> tuple[int, str]:
    x, i = 0, 0
    while i < len(s) and _isdigit(s[i]):
        if x >= _LEADING_INT_LIMIT:
            raise ValueError("overflow")
        x = x * 10 + ord(s[i]) - ord("0")
        i += 1
    return x, s[i:]


def _parse_unit(text: str, units: dict[str, float]) -> int:
    """alecthomas/units ParseUnit: a signed sum of decimal numbers with units."""
    orig, s, total, negative = text, text, 0.0, False
    if s and s[0] in "+-":
        negative, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if s == "":
        raise ValueError(f"units: invalid {orig}")
    while s:
        if not (s[0] == "." or _isdigit(s[0])):
            raise ValueError(f"units: invalid {orig}")
        before = len(s)
        try:
            x, s = _leading_int(s)
        except ValueError:
            raise ValueError(f"units: invalid {orig}") from None
        g = float(x)
        pre = before != len(s)
        post = False
        if s and s[0] == ".":
            s = s[1:]
            before = len(s)
            try:
                x, s = _leading_int(s)
            except ValueError:
                raise ValueError(f"units: invalid {orig}") from None
            g += x / 10.0 ** (before - len(s))
            post = before != len(s)
        if not pre and not post:
            raise ValueError(f"units: invalid {orig}")
        i = 0
        while i < len(s) and not (s[i] == "." or _isdigit(s[i])):
            i += 1
        unit, s = s[:i], s[i:]
        if unit not in units:
            raise ValueError(f"units: unknown unit {unit} in {orig}")
        total += g * units[unit]
    if negative:
        total = -total
    if total < float(-(1 << 63)) or total > float(_MAX_INT64):
        raise ValueError("units: overflow parsing unit")
    # float64(1<<63-1) is 2**63, which that check lets through, and Go's
    # int64() of 2**63 is -2**63 on amd64 (what Prometheus then holds: a
    # negative size, which the flags refuse).
    return math.trunc(total) if total < 2.0**63 else -(1 << 63)


def parse_base2_bytes(text: str) -> int:
    """Bytes, as alecthomas/units ParseBase2Bytes reads them (KB and KiB
    are both 1024; kB is refused)."""
    try:
        return _parse_unit(text, _BYTES_IB)
    except ValueError:
        return _parse_unit(text, _BYTES_B)


def parse_bytes(text: str) -> int:
    """A size flag's value: 256MiB, 1GB, 1.5GiB, or a bare number of bytes."""
    if _BARE_BYTES.fullmatch(text):
        return int(text)
    try:
        return parse_base2_bytes(text)
    except ValueError as err:
        raise ValueError(f"{err} (a size: 512KiB, 256MiB, 1GiB; or a number of bytes)") from None


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_bool(text: str) -> bool:
    """strconv.ParseBool's spellings, and yes/no/on/off in any case."""
    value = text.strip()
    if value in _TRUE or value.lower() in ("yes", "on"):
        return True
    if value in _FALSE or value.lower() in ("no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (true or false, 1 or 0, yes or no, on or off)")


def format_seconds(seconds: float) -> str:
    """A duration as Prometheus prints one (model.Duration.String: 1h30m, 90s
    is 1m30s), for log fields."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = ""
    for unit, size in (("y", 31_536_000_000), ("w", 604_800_000), ("d", 86_400_000),
                       ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):  # fmt: skip
        if ms >= size:
            out += f"{ms // size}{unit}"
            ms %= size
    return out
