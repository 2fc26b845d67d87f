"""`--log.level` and `--log.format logfmt|json`, as Prometheus and its
exporters write their logs (time, level, source, msg, then the rest)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("logfmt", "json")
_LEVEL_NAMES = {"WARNING": "warn", "CRITICAL": "error"}


def _time(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, str]:
    fields = {
        "time": _time(record),
        "level": _LEVEL_NAMES.get(record.levelname, record.levelname.lower()),
        "source": f"{record.module}.py:{record.lineno}",
        "logger": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        fields["err"] = logging.Formatter().formatException(record.exc_info)
    return fields


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


def configure(level: str, fmt: str, level_flag: str = "--log.level") -> None:
    """Raises ValueError naming the flag when a value is not known."""
    if level.lower() not in LEVELS:
        raise ValueError(f"{level_flag} must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"--log.format must be logfmt or json, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter() if fmt == "logfmt" else JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _configured[:] = [level, fmt]


_configured = ["info", "logfmt"]


def configured() -> tuple[str, str]:
    """The level and format last configured: what a child process is given."""
    return _configured[0], _configured[1]
