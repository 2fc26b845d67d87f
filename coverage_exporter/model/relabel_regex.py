"""Relabel regexes as Prometheus compiles and applies them.

Prometheus (model/relabel/relabel.go, `NewRegexp`) compiles every relabel
regex as `^(?s:` + regex + `)$` with Go's regexp, which is RE2: matching
runs in time linear in the input, `.` matches a newline, and `$` is the
end of the text only (Python's `re` also accepts a trailing newline
there). The `replacement` (and a `target_label` with `$`) is filled by
Go's `Regexp.ExpandString`.

Why RE2 and not Python's `re`: the regexes come from every ServiceMonitor
author, and the values they run on are the labels and annotations of
their own Services, any text they write. `re` backtracks: `(x+x+)+y`
against 36 x's took about 40 minutes while holding the GIL, the
collector froze and the liveness probe restarted the pod into the same
rule. RE2 answers in microseconds, as it does in Prometheus itself.

A regex that RE2 does not compile (look-around, back-references) is
None: the caller treats the rule as unknown, never as a match or a miss.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import re2

_OPTIONS = re2.Options()
# Compile errors are answered with None; RE2's own log line on stderr
# would repeat the tenant's pattern unescaped.
_OPTIONS.log_errors = False


class RelabelRegex:
    """One compiled relabel regex, matched on whole values."""

    __slots__ = ("_names", "_regexp")

    def __init__(self, regexp: re2._Regexp) -> None:
        self._regexp = regexp
        self._names: dict[str, int] = dict(regexp.groupindex)

    def matches(self, value: str) -> bool:
        """Prometheus's `MatchString` (the pattern is anchored)."""
        encoded = _utf8(value)
        return encoded is not None and self._regexp.search(encoded) is not None

    def expand(self, template: str, value: str) -> str | None:
        """`template` filled from the match on `value`, as Go's
        `ExpandString` does; None when `value` does not match."""
        encoded = _utf8(value)
        if encoded is None:
            return None
        match = self._regexp.search(encoded)
        if match is None:
            return None
        # Go works on bytes: a group's span is a byte range of the UTF-8
        # text, always on character boundaries.
        groups = [
            None if match.span(i)[0] < 0 else encoded[slice(*match.span(i))].decode()
            for i in range(self._regexp.groups + 1)
        ]
        return _expand(template, groups, self._names)


def _utf8(text: str) -> bytes | None:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate: no Go string holds one
        return None


@lru_cache(maxsize=4096)
def compile_relabel_regex(regex: str) -> RelabelRegex | None:
    """The regex as Prometheus compiles it, or None where RE2 refuses it."""
    if _any_byte_escape(regex):
        return None
    try:
        return RelabelRegex(re2.compile(f"^(?s:{regex})$", _OPTIONS))
    except (re2.error, UnicodeEncodeError):
        return None


def _any_byte_escape(regex: str) -> bool:
    """`\\C` (any byte) outside `\\Q...\\E`: RE2 in C++ takes it, Go's
    regexp refuses it, so Prometheus never loads such a rule."""
    at = 0
    while (at := regex.find("\\", at)) >= 0:
        escaped = regex[at + 1 : at + 2]
        if escaped == "C":
            return True
        if escaped == "Q":
            end = regex.find("\\E", at + 2)
            if end < 0:
                return False
            at = end
        at += 2
    return False


def _name_char(char: str) -> bool:
    """Go's unicode.IsLetter, unicode.IsDigit or '_'."""
    return char == "_" or char.isalpha() or unicodedata.category(char) == "Nd"


def _extract(template: str, at: int) -> tuple[str, int | None, int] | None:
    """Go's `extract`: the name after a '$' at `at` (`name` or `{name}`),
    its group number when it is a plain number without a leading zero,
    and where the rest starts; None when malformed."""
    brace = at < len(template) and template[at] == "{"
    start = at + brace
    end = start
    while end < len(template) and _name_char(template[end]):
        end += 1
    if end == start:
        return None
    name = template[start:end]
    if brace:
        if end >= len(template) or template[end] != "}":
            return None
        end += 1
    number: int | None = None
    if name.isascii() and name.isdigit() and not (name[0] == "0" and len(name) > 1):
        # Go gives up past nine digits and takes the name as a name then.
        number = int(name) if len(name) <= 9 else None
    return name, number, end


def _expand(template: str, groups: list[str | None], names: dict[str, int]) -> str:
    """Go's `Regexp.expand`: `$$` is a '$', `$name` takes the longest name
    (`$1x` is `${1x}`), an unknown or unmatched group is empty, and a
    malformed `$` stays as it is."""
    out: list[str] = []
    pos = 0
    while True:
        dollar = template.find("$", pos)
        if dollar < 0:
            out.append(template[pos:])
            return "".join(out)
        out.append(template[pos:dollar])
        pos = dollar + 1
        if template.startswith("$", pos):
            out.append("$")
            pos += 1
            continue
        found = _extract(template, pos)
        if found is None:
            out.append("$")
            continue
        name, number, pos = found
        index = number if number is not None else names.get(name)
        if index is not None and index < len(groups):
            out.append(groups[index] or "")
