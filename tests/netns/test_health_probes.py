"""The asyncio probes against real sockets, IPv4 and IPv6, inside a namespace of our own."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import cast

import pytest

from gatelb.health.probes import ProbeResult, probe
from gatelb.model import CheckType, HealthCheck, IPAddress

from .health_helpers import BLACKHOLE_V4, BLACKHOLE_V6, probe_namespace, run_in_netns

LOOPBACKS = ["127.0.0.1", "::1"]
TIMEOUT_MS = 200  # small: every timeout test waits for it


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    with probe_namespace("p") as name:
        yield name


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def check(kind: CheckType, **kw: object) -> HealthCheck:
    return HealthCheck(type=kind, timeout_ms=TIMEOUT_MS, **kw)  # type: ignore[arg-type]


def free_port(host: str, kind: socket.SocketKind) -> int:
    """A port nothing listens on (bound for a moment, then released)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- TCP -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACKS)
def test_tcp_open_and_refused(ns: str, host: str) -> None:
    async def scenario() -> tuple[ProbeResult, ProbeResult]:
        server = await asyncio.start_server(lambda r, w: w.close(), host, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            opened = await probe(ip(host), port, check(CheckType.TCP))
        closed = await probe(ip(host), port, check(CheckType.TCP))
        return opened, closed

    opened, closed = run_in_netns(ns, scenario())
    assert (opened.ok, opened.detail) == (True, "connected")
    assert (closed.ok, closed.detail) == (False, "connect refused")
    assert closed.latency_ms < TIMEOUT_MS  # a refusal is a fast failure, not a timeout


@pytest.mark.parametrize("host", LOOPBACKS)
def test_tcp_check_port_overrides_backend_port(ns: str, host: str) -> None:
    async def scenario() -> ProbeResult:
        server = await asyncio.start_server(lambda r, w: w.close(), host, 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            dead = free_port(host, socket.SOCK_STREAM)
            return await probe(ip(host), dead, check(CheckType.TCP, port=port))

    assert run_in_netns(ns, scenario()).ok


@pytest.mark.parametrize("host", [BLACKHOLE_V4, BLACKHOLE_V6])
def test_tcp_silent_drop_times_out(ns: str, host: str) -> None:
    result = run_in_netns(ns, probe(ip(host), 80, check(CheckType.TCP)))
    assert (result.ok, result.detail) == (False, f"connect timeout after {TIMEOUT_MS} ms")
    assert TIMEOUT_MS * 0.9 <= result.latency_ms < TIMEOUT_MS + 300  # the deadline is hard


# -- HTTP ------------------------------------------------------------------------------------------


async def http_server(host: str, reply: bytes | None, seen: list[bytes]) -> asyncio.Server:
    """Answers every request with `reply` and closes; `None`: reads the request, never answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            if reply is None:
                await asyncio.sleep(10)
            writer.write(reply or b"")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, 0)


async def probe_http(addr: str, reply: bytes | None, **kw: object) -> tuple[ProbeResult, list[bytes]]:
    seen: list[bytes] = []
    server = await http_server(addr, reply, seen)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await probe(ip(addr), port, check(CheckType.HTTP, **kw))
    return result, seen


OK_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
ERR_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("host", LOOPBACKS)
def test_http_200_is_healthy_and_request_is_well_formed(ns: str, host: str) -> None:
    result, seen = run_in_netns(ns, probe_http(host, OK_200, request_path="/healthz"))
    assert (result.ok, result.detail) == (True, "HTTP 200")
    request = seen[0].decode()
    assert request.startswith("GET /healthz HTTP/1.1\r\n")
    shown = f"[{host}]" if ":" in host else host
    assert f"\r\nHost: {shown}:" in request  # the address (and the non-default port)


@pytest.mark.parametrize("host", LOOPBACKS)
def test_http_500_is_unhealthy(ns: str, host: str) -> None:
    result, _ = run_in_netns(ns, probe_http(host, ERR_500))
    assert (result.ok, result.detail) == (False, "HTTP 500")


def test_http_host_header_and_expected_statuses(ns: str) -> None:
    result, seen = run_in_netns(
        ns, probe_http("127.0.0.1", ERR_500, host="app.example", expected_statuses=((500, 599),))
    )
    assert (result.ok, result.detail) == (True, "HTTP 500")
    assert b"\r\nHost: app.example\r\n" in seen[0]


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "HTTP: invalid status line 'SSH-2.0-OpenSSH_9.2'"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "HTTP: invalid status line 'HTTP/1.1 2x0 OK'"),
        (b"", "HTTP: connection closed before a status line"),
    ],
)
def test_http_garbage_is_unhealthy(ns: str, reply: bytes, detail: str) -> None:
    result, _ = run_in_netns(ns, probe_http("::1", reply))
    assert (result.ok, result.detail) == (False, detail)


def test_http_no_response_times_out(ns: str) -> None:
    result, _ = run_in_netns(ns, probe_http("127.0.0.1", None))
    assert (result.ok, result.detail) == (False, f"HTTP response timeout after {TIMEOUT_MS} ms")


def test_http_refused(ns: str) -> None:
    port = free_port("::1", socket.SOCK_STREAM)
    result = run_in_netns(ns, probe(ip("::1"), port, check(CheckType.HTTP)))
    assert (result.ok, result.detail) == (False, "connect refused")


# -- UDP -------------------------------------------------------------------------------------------


class Echo(asyncio.DatagramProtocol):
    """Replies "pong <payload>" (or stays silent when `silent`)."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport in 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not self.silent and self.transport is not None:
            self.transport.sendto(b"pong " + data, addr)


async def probe_udp(host: str, silent: bool, **kw: object) -> ProbeResult:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: Echo(silent), local_addr=(host, 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        return await probe(ip(host), port, check(CheckType.UDP, **kw))
    finally:
        transport.close()


@pytest.mark.parametrize("host", LOOPBACKS)
def test_udp_echo_with_expected_reply(ns: str, host: str) -> None:
    result = run_in_netns(ns, probe_udp(host, False, payload="ping", expect="pong"))
    assert (result.ok, result.detail) == (True, "UDP reply (9 bytes)")


def test_udp_reply_without_expected_text(ns: str) -> None:
    result = run_in_netns(ns, probe_udp("127.0.0.1", False, payload="ping", expect="PONG"))
    assert (result.ok, result.detail) == (False, "UDP reply without 'PONG' (9 bytes)")


@pytest.mark.parametrize("host", LOOPBACKS)
def test_udp_port_unreachable_is_a_fast_failure(ns: str, host: str) -> None:
    port = free_port(host, socket.SOCK_DGRAM)
    result = run_in_netns(ns, probe(ip(host), port, check(CheckType.UDP, payload="ping")))
    assert (result.ok, result.detail) == (False, "UDP port unreachable")
    assert result.latency_ms < TIMEOUT_MS


def test_udp_silent_server_times_out(ns: str) -> None:
    result = run_in_netns(ns, probe_udp("::1", True, payload="ping"))
    assert (result.ok, result.detail) == (False, f"UDP reply timeout after {TIMEOUT_MS} ms")


@pytest.mark.parametrize("host", LOOPBACKS)
def test_udp_without_payload_passes_unless_refused(ns: str, host: str) -> None:
    quiet = run_in_netns(ns, probe_udp(host, True))
    assert (quiet.ok, quiet.detail) == (True, "UDP: no port unreachable")
    port = free_port(host, socket.SOCK_DGRAM)
    refused = run_in_netns(ns, probe(ip(host), port, check(CheckType.UDP)))
    assert (refused.ok, refused.detail) == (False, "UDP port unreachable")


def test_none_is_always_healthy() -> None:
    result = asyncio.run(probe(ip(BLACKHOLE_V4), 1, check(CheckType.NONE)))
    assert result.ok


def test_failed_and_timed_out_probes_leak_no_sockets(ns: str) -> None:
    async def scenario() -> tuple[int, int]:
        server = await http_server("127.0.0.1", None, [])  # accepts, never answers
        port = server.sockets[0].getsockname()[1]
        async with server:
            before = len(os.listdir("/proc/self/fd"))
            await asyncio.gather(
                *(probe(ip(BLACKHOLE_V4), 80, check(CheckType.TCP)) for _ in range(5)),
                *(probe(ip("127.0.0.1"), port, check(CheckType.HTTP)) for _ in range(5)),
                *(probe(ip("::1"), 9, check(CheckType.UDP, payload="x")) for _ in range(5)),
            )
            server.close()  # drop the server side of the HTTP connections before counting
            await asyncio.sleep(0.05)
            return before, len(os.listdir("/proc/self/fd"))

    before, after = run_in_netns(ns, scenario())
    assert after <= before
