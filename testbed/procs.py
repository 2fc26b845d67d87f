"""Process and HTTP helpers shared by the testbed: free loopback ports,
detached processes tracked by pid, readiness polling without proxies."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"

# Proxy variables would route the children's (and our own) loopback traffic
# elsewhere; the testbed must never talk to anything but 127.0.0.0/8.
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports; sockets stay open until all are chosen so
    the kernel cannot hand out the same port twice."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_refuses(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((LOOPBACK, port)) != 0


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(
    url: str,
    *,
    token: str | None = None,
    ctx: ssl.SSLContext | None = None,
    timeout: float = 3,
) -> tuple[int, bytes]:
    """GET without any proxy; (0, b"") when nothing answers."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers) if ctx is not None else _opener
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def http_post(url: str, *, timeout: float = 10) -> int:
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def insecure_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def spawn(
    argv: Sequence[str], log: Path, cwd: Path, env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Starts a detached process (own session, so it outlives the CLI that
    started it and a Ctrl-C in the terminal does not reach it); env adds to
    the proxy-free environment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, env={**clean_env(), **(env or {})}, start_new_session=True,
        )


def pid_alive(pid: int, exe: str) -> bool:
    """True if pid runs and is still the program we started (pids get reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return bool(cmdline) and cmdline[0].decode(errors="replace") == exe


def terminate(pid: int, exe: str, timeout: float = 20, force: bool = False) -> None:
    """SIGTERM (or SIGKILL when force), then SIGKILL after timeout."""
    if not pid_alive(pid, exe):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid, exe):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not pid_alive(pid, exe):
            return
        time.sleep(0.1)


def _reap(pid: int) -> None:
    # Our own children stay zombies until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_for(
    check: Callable[[], bool], what: str, timeout: float, alive: Callable[[], bool] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: process exited while waiting for it to be ready")
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of pid (a supervisor's operator)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _hex_addr(h: str) -> str:
    """Address of a /proc/net/tcp{,6} column ("0100007F:1F90") as text."""
    ip_hex, port_hex = h.split(":")
    raw = bytes.fromhex(ip_hex)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return f"{ip}:{int(port_hex, 16)}"


def socket_peers(pid: int) -> set[str]:
    """Remote ends ("ip:port") of the TCP sockets pid holds, listeners excluded."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    peers = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if cols[9] in inodes and cols[3] != "0A":  # 0A = LISTEN
                    peers.add(_hex_addr(cols[2]))
    return peers


def is_loopback(peer: str) -> bool:
    return ipaddress.ip_address(peer.rsplit(":", 1)[0]).is_loopback
