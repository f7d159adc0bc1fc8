"""The stand-in inside a network namespace, driven from the test process.

A network namespace has its own loopback, so a stand-in on the host's 127.0.0.1 is unreachable
from gatelb running in the lab's gw namespace (where it must run: its nft rules, conntrack flushes
and health probes all belong there, and the host namespace is never touched). So the stand-in
runs on an asyncio loop in a thread of the test process that has joined the namespace with
setns(2) (a per-thread operation for network namespaces): its listening socket, and the
kubernetes_asyncio client the test uses on the same loop, live on the namespace's 127.0.0.1.
`call` runs a coroutine there and returns its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import yaml
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config import new_client_from_config_dict

from tests.k8s_standin.server import StandinServer

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def _join_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class StandinInNetns:
    def __init__(self, netns: str, host: str = "127.0.0.1", **kw: Any) -> None:
        self.netns = netns
        self.host = host  # another address of the namespace: reachable from other namespaces
        self.server = StandinServer(**kw)
        self._kw = kw
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: ApiClient | None = None
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[str] = concurrent.futures.Future()

    def start(self, timeout: float = 10.0) -> str:
        self._thread = threading.Thread(target=self._main, name=f"standin-{self.netns}", daemon=True)
        self._thread.start()
        return self._ready.result(timeout)

    def _main(self) -> None:
        try:
            _join_netns(self.netns)
            self._loop = asyncio.new_event_loop()
            url = self._loop.run_until_complete(self._setup())
        except BaseException as err:
            self._ready.set_exception(err)
            return
        self._ready.set_result(url)
        self._loop.run_forever()
        self._loop.run_until_complete(self._teardown())
        self._loop.close()

    async def _setup(self) -> str:
        url = await self.server.start(self.host)
        self._client = await new_client_from_config_dict(self.server.kubeconfig())
        return url

    async def _teardown(self) -> None:
        if self._client is not None:
            await self._client.close()
        await self.server.stop()

    def call(self, fn: Callable[[StandinServer, ApiClient], Awaitable[T]], timeout: float = 10.0) -> T:
        assert self._loop is not None and self._client is not None
        client = self._client

        async def wrapped() -> T:
            return await fn(self.server, client)

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout)

    def kubeconfig_yaml(self) -> str:
        return yaml.safe_dump(self.server.kubeconfig())

    def close(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
