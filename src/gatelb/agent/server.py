"""The daemon's HTTP endpoints: one supervised task serving

    --metrics-address HOST:PORT (TCP, default 127.0.0.1:9469; `off`: none)
        /metrics   Prometheus text format (agent/metrics.py)
        /healthz   200 or 503 with a JSON body (kube-proxy's semantics)
    <state-dir>/gatelb.sock (unix socket, mode 0600: root's, like the state directory)
        the same, plus /status[?name=NAME][&backends=1|0|auto]: what `gatelb status` prints, from the daemon's memory

The TCP listener binds exactly the address asked and nothing else; `gatelb status` finds the
daemon through the state directory, so it works with the metrics port off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gatelb.agent.metrics import Metrics
from gatelb.agent.runtime import event

DEFAULT_METRICS_ADDRESS = "127.0.0.1:9469"

StatusFn = Callable[[str | None, bool | None], Awaitable[dict[str, Any] | None]]
_BACKENDS = {"1": True, "0": False, "auto": None}


def parse_address(text: str) -> tuple[str, int] | None:
    """`HOST:PORT`, `[V6]:PORT` or `off` (None). ValueError naming the problem otherwise."""
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--metrics-address: {text!r} is not HOST:PORT (or 'off')")
    host = host.removeprefix("[").removesuffix("]")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--metrics-address: {port!r} is not a port (1-65535)")
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError as err:
        raise ValueError(f"--metrics-address: {host!r} is not an IP address") from err
    return host, int(port)


class Server:
    def __init__(self, metrics: Metrics, status: StatusFn, address: tuple[str, int] | None,
                 socket_path: Path | None) -> None:
        self._metrics = metrics
        self._status = status
        self._address = address
        self._socket = socket_path
        self._scrape_lock = asyncio.Lock()

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        # One scrape at a time: concurrent scrapers share the kernel dump's cost instead of
        # multiplying it.
        async with self._scrape_lock:
            body = await asyncio.to_thread(self._metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok, body = self._metrics.health()
        return web.Response(status=200 if ok else 503, text=json.dumps(body), content_type="application/json")

    async def _status_page(self, request: web.Request) -> web.Response:
        name = request.query.get("name")
        data = await self._status(name, _BACKENDS.get(request.query.get("backends", "1"), True))
        if data is None:
            return web.Response(status=404, text=json.dumps({"error": f"no load balancer named {name!r}"}),
                                content_type="application/json")
        text = await asyncio.to_thread(json.dumps, data)
        return web.Response(text=text, content_type="application/json")

    def _app(self, with_status: bool) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        if with_status:
            app.router.add_get("/status", self._status_page)
        return app

    async def run(self) -> None:
        runners: list[web.AppRunner] = []
        try:
            if self._address is not None:
                host, port = self._address
                runner = web.AppRunner(self._app(with_status=False), access_log=None)
                await runner.setup()
                runners.append(runner)
                try:
                    await web.TCPSite(runner, host, port, reuse_address=True).start()
                except OSError as err:
                    raise OSError(f"--metrics-address {host}:{port}: {err.strerror or err}") from err
                event(logging.INFO, "metrics-listening", address=f"{host}:{port}")
            if self._socket is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._socket.unlink()  # a previous run's; the state lock says none runs now
                runner = web.AppRunner(self._app(with_status=True), access_log=None)
                await runner.setup()
                runners.append(runner)
                await web.UnixSite(runner, str(self._socket)).start()
                os.chmod(self._socket, 0o600)
            await asyncio.Event().wait()
        finally:
            for r in runners:
                await r.cleanup()
            if self._socket is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._socket.unlink()
