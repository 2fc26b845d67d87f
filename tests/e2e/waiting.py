"""Waiting for the real servers of the e2e tests to reach a state."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], what: str, timeout: float = 120, every: float = 1) -> T:
    """The first truthy result of check(); fails naming `what` after timeout.
    Errors a server gives while it settles (refused connections, a missing
    series) are retried, and the last one is named on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except (OSError, AssertionError, KeyError, ValueError) as err:
            last = err
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
