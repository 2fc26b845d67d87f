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


_M_ARENA_MAX = -8
"""mallopt's parameter number, from glibc's malloc.h."""


def one_arena() -> None:
    """One malloc arena for the whole process. glibc gives each thread that
    allocates an arena of its own (up to 8 per core), and memory freed in
    one is reused only by that one. The collector's threads (the target
    decoder's reader, which decodes every answer; the comparison, run by
    asyncio.to_thread) each grew one, and under full re-reads at 100k
    nodes the collector crept from 254 MB to ~430 MB; with one arena it
    stays near 300 MB (bench/analysis.md). Those threads allocate while
    they hold the GIL, so they hardly ever contend for the one arena. Call
    it before the first thread starts: arenas already made stay."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.mallopt(_M_ARENA_MAX, 1)
