"""Active health probes: TCP connect, HTTP GET, UDP request/reply, none.

Each probe is one coroutine on non-blocking sockets with a hard timeout over the whole exchange
(connect, request, reply), so thousands of backends need no threads and a slow backend delays
nobody but itself. Probes never raise for network trouble: they return a `ProbeResult` whose
`detail` is a precise human reason ("connect refused", "connect timeout after 2000 ms", "HTTP 500").
Sockets are opened in the caller's network namespace (the agent runs inside the gateway's).

Connections are closed with a TCP reset (SO_LINGER 0), as HAProxy does for its checks: a graceful
close would leave one TIME_WAIT socket on the gateway per probe, which at 10 probes/s over
thousands of backends is millions of sockets. The backend sees a reset instead of a FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gatelb.model import CheckType, HealthCheck, IPAddress

# The status line must fit in this; anything longer is not a sane HTTP server.
MAX_STATUS_LINE = 1024
USER_AGENT = "gatelb-health/1"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str  # "connected", "HTTP 200", "connect refused", "HTTP 500", "no UDP reply after 2000 ms"
    latency_ms: float  # wall time the probe took


class _Phase:
    """What the probe was doing when the deadline hit, for the timeout message."""

    def __init__(self, name: str) -> None:
        self.name = name


async def probe(address: IPAddress, port: int, check: HealthCheck) -> ProbeResult:
    """Run `check` once against a backend at `address`:`port` (`check.port` overrides the port)."""
    target_port = check.port if check.port is not None else port
    if check.type is CheckType.NONE:
        return ProbeResult(True, "no check (type none)", 0.0)
    if check.type is CheckType.TCP:
        return await _timed(lambda phase: _tcp(address, target_port, phase), check.timeout_ms)
    if check.type is CheckType.HTTP:
        return await _timed(lambda phase: _http(address, target_port, check, phase), check.timeout_ms)
    return await _timed(lambda phase: _udp(address, target_port, check, phase), check.timeout_ms)


async def _timed(run: Callable[[_Phase], Awaitable[tuple[bool, str]]], timeout_ms: int) -> ProbeResult:
    phase = _Phase("connect")
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            ok, detail = await run(phase)
    except TimeoutError:
        ok, detail = False, f"{phase.name} timeout after {timeout_ms} ms"
    except OSError as e:
        ok, detail = False, _os_error(phase.name, e)
    return ProbeResult(ok, detail, (time.perf_counter() - start) * 1000)


def _os_error(phase: str, e: OSError) -> str:
    known = {
        errno.ECONNREFUSED: "refused",
        errno.ECONNRESET: "reset by peer",
        errno.EHOSTUNREACH: "host unreachable",
        errno.ENETUNREACH: "network unreachable",
        errno.EPIPE: "closed by peer",
    }
    what = known.get(e.errno or 0) or (e.strerror or type(e).__name__).lower()
    return f"{phase} {what}"


def _socket(address: IPAddress, kind: socket.SocketKind) -> socket.socket:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setblocking(False)
    return sock


def _sockaddr(address: IPAddress, port: int) -> tuple[str, int]:
    return (str(address), port)


def _close_with_reset(sock: socket.socket) -> None:
    # The socket may already be dead (reset by the peer); closing it is all that matters then.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _connect(address: IPAddress, port: int) -> socket.socket:
    sock = _socket(address, socket.SOCK_STREAM)
    try:
        await asyncio.get_running_loop().sock_connect(sock, _sockaddr(address, port))
    except BaseException:
        sock.close()  # never connected: nothing to reset
        raise
    return sock


async def _tcp(address: IPAddress, port: int, phase: _Phase) -> tuple[bool, str]:
    sock = await _connect(address, port)
    _close_with_reset(sock)
    return True, "connected"


async def _http(address: IPAddress, port: int, check: HealthCheck, phase: _Phase) -> tuple[bool, str]:
    sock = await _connect(address, port)
    try:
        loop = asyncio.get_running_loop()
        phase.name = "HTTP request"
        await loop.sock_sendall(sock, _http_request(address, port, check))
        phase.name = "HTTP response"
        line = await _read_line(loop, sock)
    finally:
        _close_with_reset(sock)
    return _judge_status_line(line, check.expected_statuses)


def _http_request(address: IPAddress, port: int, check: HealthCheck) -> bytes:
    host = check.host
    if host is None:
        host = f"[{address}]" if address.version == 6 else str(address)
        if port != 80:
            host = f"{host}:{port}"
    if any(c in text for text in (check.request_path, host) for c in "\r\n\0"):
        # The sources refuse these; a check that got here some other way never injects headers.
        raise ValueError("CR, LF or NUL in the check's requestPath or host")
    return (
        f"GET {check.request_path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """Bytes up to the first CRLF (or what arrived before the peer closed or the limit was hit)."""
    buf = b""
    while b"\n" not in buf and len(buf) < MAX_STATUS_LINE:
        chunk = await loop.sock_recv(sock, MAX_STATUS_LINE - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].rstrip(b"\r")


def _judge_status_line(line: bytes, expected: tuple[tuple[int, int], ...]) -> tuple[bool, str]:
    if not line:
        return False, "HTTP: connection closed before a status line"
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not (parts[1].isdigit() and len(parts[1]) == 3):
        shown = line[:40].decode("ascii", "replace")
        return False, f"HTTP: invalid status line {shown!r}"
    code = int(parts[1])
    return any(lo <= code <= hi for lo, hi in expected), f"HTTP {code}"


async def _udp(address: IPAddress, port: int, check: HealthCheck, phase: _Phase) -> tuple[bool, str]:
    """Send the payload on a connected UDP socket (so ICMP errors are reported on it).

    With `payload` or `expect`, a reply is required (containing `expect` when given). Without
    either, the probe passes unless the backend answers with an ICMP port unreachable before the
    timeout, which is all a payload-less check can know (a crashed server on a live host).
    """
    loop = asyncio.get_running_loop()
    sock = _socket(address, socket.SOCK_DGRAM)
    want_reply = check.payload is not None or check.expect is not None
    try:
        phase.name = "UDP"
        sock.connect(_sockaddr(address, port))  # no packet is sent: only fixes the peer
        await loop.sock_sendall(sock, (check.payload or "").encode())
        phase.name = "UDP reply"
        try:
            async with asyncio.timeout(None if want_reply else check.timeout_ms / 1000 * 0.95):
                reply = await loop.sock_recv(sock, 65535)
        except TimeoutError:
            # Only reachable without `want_reply`: our own, slightly shorter deadline passed
            # quietly, so nothing refused the datagram.
            return True, "UDP: no port unreachable"
    except ConnectionRefusedError:
        return False, "UDP port unreachable"
    finally:
        sock.close()
    if check.expect is not None and check.expect.encode() not in reply:
        return False, f"UDP reply without {check.expect!r} ({len(reply)} bytes)"
    return True, f"UDP reply ({len(reply)} bytes)"
