"""What the exporter's processes ask of glibc's allocator.

A no-op where the C library is not glibc (musl, macOS): nothing here is
needed for correctness, only for a resident size that follows the live
data."""

from __future__ import annotations

import contextlib
import ctypes

_M_MMAP_THRESHOLD = -3

LARGE_BUFFER_BYTES = 4 << 20
"""Allocations from this size up get their own mapping, handed back to the
OS the moment they are freed."""


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


def map_large_buffers() -> None:
    """Give buffers of LARGE_BUFFER_BYTES and more their own mappings, for
    good. glibc's default threshold moves up to the largest buffer freed
    (up to 32 MB): after the first 19 MB Endpoints page at 100k nodes, every
    7.5 MB Node page and 2 MB target list came from the heap, and the holes
    they left kept the collector's peak 25-50 MB higher (311-356 MB against
    292-313 MB in the same runs). Below 4 MB the page faults of fresh
    mappings cost seconds of a 100k first cycle (1 MB: 9.4 s against 6.9 s)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)
