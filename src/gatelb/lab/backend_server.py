"""A test backend: TCP greeting + echo, UDP echo, and HTTP, on IPv4 and IPv6, in one asyncio process.

``python -m gatelb.lab.backend_server --name be1 --tcp 8080 --udp 8080 --http 80 [--http-status 200]
[--status-file PATH] [--watch-stdin]``

Every answer starts with ``<name> <peer-ip>`` so a client learns which backend it reached and which
source address the backend saw (to check that DNAT keeps the client's address):

- TCP: on connect, one line ``<name> <peer-ip>\\n``, then everything received is echoed back, for as
  long as the client keeps the connection (tests hold one open across a configuration change);
- UDP: every datagram is answered with ``<name> <peer-ip> <payload>``;
- HTTP/1.1 (keep-alive): any GET/HEAD gets ``<name> <peer-ip>\\n`` with the status from
  --status-file when that file exists and holds a number (read on every request, so a test can flip
  a backend to 500 for health checks), else --http-status.

Prints ``ready`` on stdout once every socket listens (the lab waits for that line, never sleeps).
Stops on SIGTERM/SIGINT, and with --watch-stdin also when stdin reaches end of file, i.e. when the
process that started it is gone and cannot stop it any more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import cast

# Two sockets per service rather than one dual-stack socket: asyncio sets IPV6_V6ONLY on its own,
# and separate sockets report IPv4 peers as plain dotted quads.
HOSTS = ("0.0.0.0", "::")
MAX_HEADER_LINES = 100
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Config:
    name: str
    tcp: int | None
    udp: int | None
    http: int | None
    http_status: int
    status_file: Path | None


def peer_ip(peername: object) -> str:
    host = peername[0] if isinstance(peername, tuple) else str(peername)
    return str(host).removeprefix("::ffff:")


async def serve_tcp(cfg: Config, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(f"{cfg.name} {peer_ip(writer.get_extra_info('peername'))}\n".encode())
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self.transport.sendto(f"{self.name} {peer_ip(addr)} ".encode() + data, addr)


def current_status(cfg: Config) -> int:
    if cfg.status_file is not None:
        with contextlib.suppress(OSError, ValueError):
            return int(cfg.status_file.read_text().strip())
    return cfg.http_status


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]] | None:
    """Request line and headers of the next request, or None when the client closed."""
    line = await reader.readline()
    if not line.strip():
        return None
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        key, _, value = raw.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)
    return line.decode("latin-1").strip(), headers


def render_response(cfg: Config, request_line: str, peer: str, keep_alive: bool) -> bytes:
    status = current_status(cfg)
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    body = f"{cfg.name} {peer}\n".encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode()
    return head if request_line.startswith("HEAD ") else head + body


async def serve_http(cfg: Config, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = peer_ip(writer.get_extra_info("peername"))
    try:
        while True:
            request = await asyncio.wait_for(read_request(reader), REQUEST_TIMEOUT_S)
            if request is None:
                break
            request_line, headers = request
            closing = headers.get("connection", "").lower() == "close"
            keep_alive = request_line.endswith("HTTP/1.1") and not closing
            writer.write(render_response(cfg, request_line, peer, keep_alive))
            await writer.drain()
            if not keep_alive:
                break
    except (ConnectionError, OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def udp_socket(host: str, port: int) -> socket.socket:
    """A bound UDP socket; IPv6 ones are v6-only, else "::" would collide with "0.0.0.0"
    (create_datagram_endpoint, unlike start_server, leaves dual-stack on)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    return sock


async def start_servers(cfg: Config) -> list[asyncio.AbstractServer | asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    started: list[asyncio.AbstractServer | asyncio.BaseTransport] = []
    if cfg.tcp:
        started.append(await asyncio.start_server(lambda r, w: serve_tcp(cfg, r, w), list(HOSTS), cfg.tcp,
                                                  reuse_address=True))
    if cfg.http:
        started.append(await asyncio.start_server(lambda r, w: serve_http(cfg, r, w), list(HOSTS), cfg.http,
                                                  reuse_address=True))
    if cfg.udp:
        for host in HOSTS:
            sock = udp_socket(host, cfg.udp)
            transport, _ = await loop.create_datagram_endpoint(lambda: UdpEcho(cfg.name), sock=sock)
            started.append(transport)
    return started


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` when stdin reaches end of file (a thread: a blocking read is the simplest wait).

    os.read on the descriptor, not sys.stdin: a daemon thread blocked inside the buffered reader
    holds its lock, and interpreter shutdown then waits a full second for it."""
    def run() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=run, name="stdin-watch", daemon=True).start()


async def run(cfg: Config, watch: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = await start_servers(cfg)
    print("ready", flush=True)
    if watch:
        watch_stdin(loop, stop)
    await stop.wait()
    for item in started:
        item.close()


def parse_args(argv: list[str] | None) -> tuple[Config, bool]:
    p = argparse.ArgumentParser(prog="gatelb.lab.backend_server", description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="announced in every answer, e.g. be1")
    p.add_argument("--tcp", type=int, help="TCP greeting+echo port")
    p.add_argument("--udp", type=int, help="UDP echo port")
    p.add_argument("--http", type=int, help="HTTP port")
    p.add_argument("--http-status", type=int, default=200, help="status when no --status-file says otherwise")
    p.add_argument("--status-file", type=Path, help="file whose content, when present, is the HTTP status")
    p.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches end of file")
    a = p.parse_args(argv)
    return Config(a.name, a.tcp, a.udp, a.http, a.http_status, a.status_file), a.watch_stdin


def main(argv: list[str] | None = None) -> int:
    cfg, watch = parse_args(argv)
    asyncio.run(run(cfg, watch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
