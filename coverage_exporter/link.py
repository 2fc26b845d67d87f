"""The framing between the exporter's own processes (the HTTP front, the
target decoding worker): each message is a 4-byte big-endian length and a
msgpack payload, over a socketpair. Each link decodes its own message
types; this module only cuts the stream into messages."""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys

MAX_FRAME = 1 << 30
"""A sanity bound between trusted processes (a /report page at 100k
nodes is tens of MB)."""

_LENGTH = struct.Struct(">I")


def child_command(module: str, sock: socket.socket) -> list[str]:
    """How the exporter starts one of its own processes (the HTTP front,
    the target decoding worker): this interpreter, the module, and the fd
    of the child's end of the socketpair, which the caller passes on with
    pass_fds."""
    return [sys.executable, "-m", module, "--fd", str(sock.fileno())]


def inherited_socket(argv: list[str] | None, what: str) -> socket.socket:
    """In the child: its end of the socketpair, named by child_command."""
    parser = argparse.ArgumentParser(description=f"coverage-exporter's {what} (internal)")
    parser.add_argument("--fd", type=int, required=True)
    return socket.socket(fileno=parser.parse_args(argv).fd)


class FrameError(ValueError):
    """The stream is not made of frames: the peer is not what it should be."""


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def send_frame(sock: socket.socket, payload: bytes) -> None:
    """Blocking; the payload is sent as it is, not copied into a frame (a
    request to the decoding worker carries a target list's body)."""
    sock.sendall(_LENGTH.pack(len(payload)))
    sock.sendall(payload)


def _length(head: bytes) -> int:
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise FrameError(f"a frame of {length} bytes")
    return int(length)


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next payload, or None at the end of the stream."""
    try:
        length = _length(await reader.readexactly(_LENGTH.size))
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None


def recv_frame(sock: socket.socket) -> bytearray | None:
    """Blocking: the next payload, or None at the end of the stream."""
    head = _recv_exactly(sock, _LENGTH.size)
    if head is None:
        return None
    return _recv_exactly(sock, _length(bytes(head)))


def _recv_exactly(sock: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    with memoryview(buffer) as view:
        got = 0
        while got < size:
            n = sock.recv_into(view[got:])
            if n == 0:
                return None
            got += n
    return buffer
