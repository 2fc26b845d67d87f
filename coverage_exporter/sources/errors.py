"""What a source fails with, and how much one answer may cost.

Shared by the HTTP sources and the decoding worker processes, which must
not import aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass

from coverage_exporter import defaults, untrusted
from coverage_exporter.flagtypes import parse_bytes
from coverage_exporter.health import ERROR_MESSAGE_CHARS


class SourceError(Exception):
    """A source could not deliver data; the message says why, for the log.

    The message is made printable here, once for every source: it often
    quotes the server (an error body, a pool name from its answer), and it
    reaches log lines, the audit table and its JSON."""

    def __init__(self, message: str = "") -> None:
        super().__init__(untrusted.printable(message, ERROR_MESSAGE_CHARS))


MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one answer may cost; exceeding a limit is a source error.

    Sizes count bytes AFTER decompression: a 260 KB gzip body can inflate
    to gigabytes, so the compressed size bounds nothing.
    """

    max_body_bytes: int = parse_bytes(defaults.MAX_RESPONSE_SIZE)
    """One body held whole (--max-response-bytes)."""
    max_stream_bytes: int = 8192 * MiB
    """One target list decoded while it arrives (memory stays at a few
    pieces of 4 MB): 100k targets are ~500 MB, so the cap is generous."""

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0 or self.max_stream_bytes <= 0:
            raise ValueError("response size limits must be positive")


DEFAULT_LIMITS = Limits()


class BodyTooLarge(SourceError):
    """An answer passed its size limit; it was cut off, not read further."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes (after decompression); cut off")
        self.limit = limit

    def __reduce__(self) -> tuple[type[BodyTooLarge], tuple[int]]:
        # Raised in the target decoding worker too, and pickled back.
        return (BodyTooLarge, (self.limit,))
