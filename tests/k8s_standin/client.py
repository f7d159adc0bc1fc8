"""Run the stand-in and talk to it with the client library gatelb itself uses (kubernetes_asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.config import new_client_from_config_dict
from kubernetes_asyncio.utils import create_from_yaml

from tests.k8s_standin.server import StandinServer

T = TypeVar("T")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


async def apply(client: ApiClient, *files: str) -> None:
    """Create every object of these deploy/ files, in order, through the typed API calls (what
    `kubectl apply -f` does on a cluster that has none of them yet); e.g. "crds.yaml", "rbac.yaml"."""
    for name in files:
        await create_from_yaml(client, str(DEPLOY / name))


async def create_namespace(client: ApiClient, *names: str) -> None:
    for name in names:
        await CoreV1Api(client).create_namespace({"metadata": {"name": name}})


@contextlib.asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[tuple[StandinServer, ApiClient]]:
    """A started stand-in on 127.0.0.1 and an ApiClient configured for it; both closed after."""
    server = StandinServer(**kw)
    await server.start()
    client = await new_client_from_config_dict(server.kubeconfig())
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


def run(test: Callable[[StandinServer, ApiClient], Awaitable[T]], timeout: float = 20.0, **kw: Any) -> T:
    """Run one async test body against a fresh stand-in, bounded by `timeout` seconds."""

    async def main() -> T:
        async with running(**kw) as (server, client):
            return await asyncio.wait_for(test(server, client), timeout)

    return asyncio.run(main())
