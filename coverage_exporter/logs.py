"""`--log.level` and `--log.format logfmt|json`, as Prometheus and its
exporters write their logs (promslog): time, level, source, msg, then the
values as fields of their own, so that Loki and the like filter on them:

    log.info("listed", extra=fields(resource="nodes", objects=100000, pages=200))
    time=... level=info ... msg=listed resource=nodes objects=100000 pages=200

The message says what happened, in words that do not change; every value
is a field (tests/local/test_logs.py fails on a log call that formats
values into its message).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from coverage_exporter import untrusted

# promslog's levels; "warning", this exporter's spelling before, reads as warn.
LEVELS = ("debug", "info", "warn", "error")
FORMATS = ("logfmt", "json")
_LEVEL_NAMES = {"WARNING": "warn", "CRITICAL": "error"}
_PYTHON_LEVELS = {"debug": "DEBUG", "info": "INFO", "warn": "WARNING", "error": "ERROR"}
# Libraries whose debug lines are about themselves (asyncio's selector and
# slow callbacks, aiohttp's connections, the kubernetes client's config
# loading): they speak at warn and above whatever --log.level says.
QUIET_LIBRARIES = ("asyncio", "aiohttp", "kubernetes", "urllib3", "hpack")
_FIELDS = "_log_fields"
# Long enough for an error with its URL; a field is one value, not a dump.
FIELD_CHARS = 1000


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """`extra=` for a log call: its values as fields of their own."""
    return {_FIELDS: values}


def _time(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any) -> str:
    """A field's value as text; control characters and ANSI escapes written
    as visible escapes (values come from the cluster and from clients)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "NaN"
    return untrusted.printable(str(value), FIELD_CHARS)


def _fields(record: logging.LogRecord) -> dict[str, str]:
    out = {
        "time": _time(record),
        "level": _LEVEL_NAMES.get(record.levelname, record.levelname.lower()),
        "source": f"{record.module}.py:{record.lineno}",
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in getattr(record, _FIELDS, {}).items():
        # A field never overwrites the fixed ones.
        out.setdefault(key, _text(value))
    if record.exc_info:
        out["err"] = logging.Formatter().formatException(record.exc_info)
    return out


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n\t'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False)


def normalized_level(level: str) -> str:
    """`level` as promslog names it; ValueError when it is none of them."""
    name = level.lower()
    name = "warn" if name == "warning" else name
    if name not in LEVELS:
        raise ValueError(f"--log.level must be one of {', '.join(LEVELS)}, got {level!r}")
    return name


def configure(level: str, fmt: str) -> None:
    """Raises ValueError naming the flag when a value is not known."""
    name = normalized_level(level)
    if fmt not in FORMATS:
        raise ValueError(f"--log.format must be logfmt or json, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter() if fmt == "logfmt" else JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_PYTHON_LEVELS[name])
    for library in QUIET_LIBRARIES:
        quiet = max(logging.WARNING, logging.getLevelName(_PYTHON_LEVELS[name]))
        logging.getLogger(library).setLevel(quiet)
    _configured[:] = [name, fmt]


_configured = ["info", "logfmt"]


def configured() -> tuple[str, str]:
    """The level and format last configured: what a child process is given."""
    return _configured[0], _configured[1]
