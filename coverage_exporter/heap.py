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


# mallopt's parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_BUFFER_BYTES = 64 << 20


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


def reuse_buffers() -> None:
    """Keep freed buffers of up to 64 MB in the heap for the next ones. A
    decoding worker inflates one answer after another into buffers of
    megabytes (a Node list page is 7.5 MB once inflated, 200 of them at
    100k nodes). Left to its defaults, glibc maps each such buffer afresh
    and hands it back when freed, and every page of it faults in again:
    the Node worker spent ~4.0 s of CPU on the list instead of ~2.7 s, and
    the list took 6.0 s instead of 4.5-5.0 s (bench/analysis.md). The
    target worker trims its heap after each answer all the same (trim)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.mallopt(_M_MMAP_THRESHOLD, _BUFFER_BYTES)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * _BUFFER_BYTES)
