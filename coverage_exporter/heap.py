"""What the exporter's processes ask of glibc's allocator.

A no-op where the C library is not glibc (musl, macOS): nothing here is
needed for correctness, only for a resident size that follows the live
data."""

from __future__ import annotations

import contextlib
import ctypes


def _libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    return None


def trim() -> None:
    """Hand freed heap back to the OS. The big transient buffers of a first
    cycle (list pages, target pieces) leave the heap fragmented; without a
    trim RSS stays at the first cycle's peak for good. It walks the whole
    heap (~100 ms at 100k nodes) with the GIL released: run it in a thread."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)
