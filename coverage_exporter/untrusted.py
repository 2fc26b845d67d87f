"""What every answer from Kubernetes or Prometheus goes through before the
exporter believes it: bounded JSON decoding and text made safe to print.

An answer is untrusted even from a healthy server: a proxy, a misconfigured
ingress or a hostile endpoint can send anything. Whatever it sends must end
as one source error with one clean log line, never as a crash, a traceback,
or bytes that rewrite a terminal or break a series.
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")

EXCERPT_CHARS = 200
"""How much of a server's error text reaches a log line or a series."""


class Decoder(Generic[T]):
    """msgspec.json.Decoder whose only failure is msgspec.DecodeError.

    msgspec raises RecursionError on deeply nested input (about 10 KB of
    '[' is enough), even inside fields it skips; callers that handle
    DecodeError would let that one escape and end the process.
    """

    __slots__ = ("_decoder",)

    def __init__(self, type_: type[T]) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)

    def decode(self, data: Any) -> T:
        try:
            return self._decoder.decode(data)
        except RecursionError:
            raise msgspec.DecodeError("JSON nested too deeply") from None


# C0 and C1 controls (ESC starts ANSI sequences, CR/LF forge log lines),
# DEL, and the Unicode line/paragraph separators and bidi overrides.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or f"\\x{ord(char):02x}"


def printable(text: str | bytes | bytearray | memoryview, limit: int = EXCERPT_CHARS) -> str:
    """Untrusted text fit for a log line, a label value or a terminal: at
    most `limit` characters (plus a mark when cut), invalid UTF-8 replaced,
    control characters and ANSI escapes written as visible escapes."""
    if not isinstance(text, str):
        # Decode a little more than shown: a cut may split a character.
        text = bytes(text[: limit * 4 + 4]).decode("utf-8", "replace")
    escaped = _UNSAFE.sub(_escape, text[: limit + 1].strip())
    if len(escaped) > limit or len(text) > limit + 1:
        return escaped[:limit] + " [...]"
    return escaped
