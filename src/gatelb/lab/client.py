"""The lab's traffic generator, run inside the client namespace.

``python -m gatelb.lab.client tcp|udp|http --target ADDR --port P --count N [--source ADDR]
[--timeout S] [--concurrency C]`` opens N *new* connections (UDP: N new sockets, one datagram
each), notes for each which backend answered, the source address that backend saw, the latency and
the failure kind, and prints one JSON document (`gatelb.lab.results.ClientResult.to_json`).

With ``--rate R`` the attempts are paced instead (open loop): attempt i starts at i / R seconds
whether or not earlier ones have finished, so a failing backend cannot slow the offered load down,
and each attempt records its start time (`Attempt.at`, UNIX seconds): failover tests line that up
with the moment a backend died.

``python -m gatelb.lab.client udpflow --target ADDR --port P --count N [--rate R]`` is one UDP
*flow*: one socket (so one source port and one conntrack entry) sending N datagrams ``seq <i>`` at
R per second, noting which backend answered each one (or the failure: ``timeout``, ``refused``
for an ICMP port unreachable).

``python -m gatelb.lab.client tcp ... --first-port P`` binds attempt i to source port P + i and
closes it with a reset (SO_LINGER 0: no TIME_WAIT), so that a second run may use the same ports:
what a flow-hash selection test needs (the same 5-tuples before and after a backend change).

``python -m gatelb.lab.client hold --target ADDR --port P [--source ADDR] [--timeout S]`` keeps one
TCP connection open: it prints ``{"backend": .., "seen_source": ..}`` once connected, then for
every line read on stdin sends it and prints ``{"echo": ..}`` (or ``{"error": ..}``) -- one JSON
line per stdin line, until stdin closes. `gatelb.lab.held.HeldConnection` drives it.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gatelb.lab.results import Attempt, ClientResult

Answer = tuple[str, str, int | None]  # backend, seen source, HTTP status


def error_kind(exc: BaseException) -> str:
    """The failure classes tests distinguish (a DNAT to a dead backend: refused; a drop: timeout)."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return "closed"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(exc, ValueError):
        return "bad-answer"
    return f"error:{type(exc).__name__}: {exc}"


def parse_greeting(line: str) -> tuple[str, str]:
    """``<name> <peer-ip>`` -> (name, peer-ip)."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(f"unexpected answer {line!r}")
    return parts[0], parts[1]


def local_addr(source: str | None) -> tuple[str, int] | None:
    return (source, 0) if source else None


async def tcp_from_port(target: str, port: int, source: str | None, local_port: int) -> Answer:
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.bind((source or ("::" if family == socket.AF_INET6 else "0.0.0.0"), local_port))
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (target, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        line = await reader.readuntil(b"\n")
        name, seen = parse_greeting(line.decode())
        return name, seen, None
    finally:
        writer.close()


async def tcp_once(target: str, port: int, source: str | None) -> Answer:
    reader, writer = await asyncio.open_connection(target, port, local_addr=local_addr(source))
    try:
        line = await reader.readuntil(b"\n")
        name, seen = parse_greeting(line.decode())
        return name, seen, None
    finally:
        writer.close()


class _UdpReply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable -> ConnectionRefusedError
        if not self.reply.done():
            self.reply.set_exception(exc)


async def udp_once(target: str, port: int, source: str | None) -> Answer:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _UdpReply, remote_addr=(target, port), local_addr=local_addr(source))
    try:
        transport.sendto(b"ping")
        name, seen = parse_greeting((await proto.reply).decode())
        return name, seen, None
    finally:
        transport.close()


async def http_once(target: str, port: int, source: str | None) -> Answer:
    reader, writer = await asyncio.open_connection(target, port, local_addr=local_addr(source))
    try:
        host = f"[{target}]" if ":" in target else target
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()  # Connection: close -> the server closes after the body
    finally:
        writer.close()
    head, _, body = response.decode(errors="replace").partition("\r\n\r\n")
    status_line = head.split("\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {head[:80]!r}")
    name, seen = parse_greeting(body)
    return name, seen, int(status_line[1])


PROBES: dict[str, Callable[[str, int, str | None], Awaitable[Answer]]] = {
    "tcp": tcp_once, "udp": udp_once, "http": http_once,
}


async def attempt(proto: str, target: str, port: int, source: str | None, timeout: float,
                  local_port: int | None = None) -> Attempt:
    at, start = time.time(), time.monotonic()
    probe = PROBES[proto](target, port, source) if local_port is None else tcp_from_port(target, port, source,
                                                                                         local_port)
    try:
        name, seen, status = await asyncio.wait_for(probe, timeout)
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, EOFError) as exc:
        return Attempt(ok=False, latency_ms=(time.monotonic() - start) * 1000, error=error_kind(exc), at=at)
    return Attempt(ok=True, backend=name, seen_source=seen, status=status,
                   latency_ms=round((time.monotonic() - start) * 1000, 3), at=at)


async def paced(count: int, rate: float, start: Callable[[int], Coroutine[Any, Any, Attempt]]) -> list[Attempt]:
    """Start `start(i)` at i / rate s for i < count (open loop) and gather the attempts in order."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks: list[asyncio.Task[Attempt]] = []
    for i in range(count):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(start(i)))
    return list(await asyncio.gather(*tasks))


async def run_paced(proto: str, target: str, port: int, count: int, rate: float, source: str | None,
                    timeout: float) -> ClientResult:
    attempts = await paced(count, rate, lambda _: attempt(proto, target, port, source, timeout))
    return ClientResult.from_attempts(proto, target, port, attempts, source)


class _UdpFlow(asyncio.DatagramProtocol):
    """Replies of one socket, matched to their datagram by the ``seq <i>`` the backend echoes."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[bytes]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        parts = data.decode(errors="replace").split()  # "<name> <peer-ip> seq <i>"
        if len(parts) >= 4 and parts[2] == "seq" and parts[3].isdigit():
            fut = self.pending.pop(int(parts[3]), None)
            if fut is not None and not fut.done():
                fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error names no datagram: it fails every one still waiting (with a timeout shorter
        # than the pacing period, that is the one just sent).
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()


async def _flow_exchange(transport: asyncio.DatagramTransport, proto: _UdpFlow, seq: int,
                         timeout: float) -> Attempt:
    fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    proto.pending[seq] = fut
    at, start = time.time(), time.monotonic()
    transport.sendto(f"seq {seq}".encode())
    try:
        name, seen = parse_greeting((await asyncio.wait_for(fut, timeout)).decode())
    except (OSError, ValueError, TimeoutError) as exc:
        return Attempt(ok=False, latency_ms=(time.monotonic() - start) * 1000, error=error_kind(exc), at=at)
    finally:
        proto.pending.pop(seq, None)
    return Attempt(ok=True, backend=name, seen_source=seen, latency_ms=round((time.monotonic() - start) * 1000, 3),
                   at=at)


async def udp_flow(target: str, port: int, count: int, rate: float, source: str | None,
                   timeout: float) -> ClientResult:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _UdpFlow, remote_addr=(target, port), local_addr=local_addr(source))
    try:
        attempts = await paced(count, rate, lambda i: _flow_exchange(transport, proto, i, timeout))
    finally:
        transport.close()
    return ClientResult.from_attempts("udpflow", target, port, attempts, source)


async def run_many(proto: str, target: str, port: int, count: int, source: str | None,
                   timeout: float, concurrency: int, first_port: int | None = None) -> ClientResult:
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(i: int) -> Attempt:
        async with gate:
            if first_port is None:
                return await attempt(proto, target, port, source, timeout)
            return await attempt(proto, target, port, source, timeout, first_port + i)

    attempts = await asyncio.gather(*(one(i) for i in range(count)))
    return ClientResult.from_attempts(proto, target, port, list(attempts), source)


def emit(doc: dict[str, object]) -> None:
    print(json.dumps(doc), flush=True)


def hold(target: str, port: int, source: str | None, timeout: float) -> int:
    """One long-lived TCP connection driven line by line from stdin (blocking sockets: one peer)."""
    try:
        sock = socket.create_connection((target, port), timeout, source_address=local_addr(source))
        stream = sock.makefile("rb")
        name, seen = parse_greeting(stream.readline().decode())
    except (OSError, ValueError) as exc:
        emit({"error": error_kind(exc)})
        return 1
    emit({"backend": name, "seen_source": seen})
    for line in sys.stdin:
        try:
            sock.sendall(line.encode())
            echo = stream.readline()
            if not echo:
                raise EOFError
            emit({"echo": echo.decode().rstrip("\n")})
        except (OSError, EOFError) as exc:
            emit({"error": error_kind(exc)})
            return 1
    sock.close()
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gatelb.lab.client", description=__doc__.split("\n")[0])
    p.add_argument("proto", choices=[*PROBES, "udpflow", "hold"])
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--source", help="bind to this local address (e.g. the client's second address)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rate", type=float, help="attempts per second, paced (open loop); udpflow: default 10")
    p.add_argument("--first-port", type=int, help="tcp: attempt i from source port FIRST_PORT + i (closed by a reset)")
    a = p.parse_args(argv)
    if a.first_port is not None and (a.proto != "tcp" or a.rate is not None):
        p.error("--first-port: only for tcp without --rate")
    if a.rate is not None and a.rate <= 0:
        p.error(f"--rate: {a.rate} is not a positive rate")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.proto == "hold":
        return hold(a.target, a.port, a.source, a.timeout)
    if a.proto == "udpflow":
        run = udp_flow(a.target, a.port, a.count, a.rate or 10.0, a.source, a.timeout)
    elif a.rate is not None:
        run = run_paced(a.proto, a.target, a.port, a.count, a.rate, a.source, a.timeout)
    else:
        run = run_many(a.proto, a.target, a.port, a.count, a.source, a.timeout, a.concurrency, a.first_port)
    result = asyncio.run(run)
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
