"""Informers against the API stand-in over real HTTP: list, watch, resume, relist on 410, bookmarks,
and the per-object change reports (a relist reports only the difference)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api

from gatelb.sources.kubernetes.api import SERVICES, KubeApi, Obj
from gatelb.sources.kubernetes.changes import same_version
from gatelb.sources.kubernetes.informer import Informer
from tests.k8s_standin.client import run
from tests.k8s_standin.server import StandinServer


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


Change = tuple[str, str]  # (what, key): "added", "modified" or "deleted"


@contextlib.asynccontextmanager
async def informing(client: ApiClient, **kw: Any) -> AsyncIterator[tuple[Informer, list[Change]]]:
    changes: list[Change] = []

    def record(kind: str, key: str, old: Obj | None, new: Obj | None) -> None:
        assert kind == "services"
        assert old is None or key == f"{old['metadata']['namespace']}/{old['metadata']['name']}"
        assert new is None or new is inf.objects[key]  # the cache is updated first
        assert new is not None or key not in inf.objects
        changes.append(("added" if old is None else "deleted" if new is None else "modified", key))

    inf = Informer(KubeApi(client), SERVICES, record, **kw)
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 5)
        yield inf, changes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def svc(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}


def names(inf: Informer) -> list[str]:
    return sorted(inf.objects)


def test_list_then_watch_follows_changes() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        await core.create_namespaced_service("default", svc("a"))
        async with informing(client) as (inf, changes):
            assert names(inf) == ["default/a"] and changes == [("added", "default/a")]
            await core.create_namespaced_service("default", svc("b"))
            await core.patch_namespaced_service("a", "default", {"metadata": {"labels": {"x": "y"}}})
            await core.delete_namespaced_service("b", "default")
            await wait_until(lambda: len(changes) == 4)
            assert changes[1:] == [("added", "default/b"), ("modified", "default/a"), ("deleted", "default/b")]
            assert names(inf) == ["default/a"]
            assert inf.objects["default/a"]["metadata"]["labels"] == {"x": "y"}
            assert inf.counts["lists"] == 1
        # The watch started at the list's version, not from scratch.
        watches = [p for m, p in server.requests if "watch=" in p]
        assert "resourceVersion=" in watches[0] and "allowWatchBookmarks=" in watches[0]

    run(body)


def test_dropped_watch_resumes_from_last_version_without_relisting() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        async with informing(client) as (inf, _):
            await core.create_namespaced_service("default", svc("a"))
            await wait_until(lambda: names(inf) == ["default/a"])
            server.drop_watches()
            await core.create_namespaced_service("default", svc("b"))  # while no watch is open
            await wait_until(lambda: names(inf) == ["default/a", "default/b"])
            assert inf.counts["lists"] == 1 and inf.counts["watches"] >= 2 and inf.counts["gone"] == 0

    run(body)


def test_server_side_watch_timeout_resumes() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        async with informing(client, watch_timeout_s=1) as (inf, _):
            await wait_until(lambda: inf.counts["watches"] >= 2, timeout=5)
            await core.create_namespaced_service("default", svc("late"))
            await wait_until(lambda: names(inf) == ["default/late"])
            assert inf.counts["lists"] == 1

    run(body)


def test_410_gone_relists() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        await core.create_namespaced_service("default", svc("a"))
        await core.create_namespaced_service("default", svc("keep"))
        await core.create_namespaced_service("default", svc("edit"))
        async with informing(client) as (inf, changes):
            # A gap the server no longer remembers: the watch is down, changes, a compaction.
            server.pause_watches()
            await core.delete_namespaced_service("a", "default")
            await core.create_namespaced_service("default", svc("b"))
            await core.patch_namespaced_service("edit", "default", {"metadata": {"labels": {"x": "y"}}})
            server.store.compact()
            changes.clear()
            server.resume_watches()
            await wait_until(lambda: inf.counts["gone"] == 1 and inf.counts["lists"] == 2)
            assert names(inf) == ["default/b", "default/edit", "default/keep"]
            # The relist reports the difference only: nothing for the unchanged "keep".
            assert sorted(changes) == [("added", "default/b"), ("deleted", "default/a"), ("modified", "default/edit")]
            await core.create_namespaced_service("default", svc("c"))
            await wait_until(lambda: names(inf) == ["default/b", "default/c", "default/edit", "default/keep"])

    run(body)


def test_bookmarks_advance_the_version() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        async with informing(client) as (inf, changes):
            other = await core.create_namespaced_service("default", svc("x"))
            await wait_until(lambda: inf.counts["bookmarks"] >= 2)
            assert inf.resource_version == other.metadata.resource_version
            assert changes == [("added", "default/x")]  # a bookmark is no change

    run(body, bookmark_interval=0.1)


def test_same_version() -> None:
    a: Obj = {"metadata": {"name": "a", "resourceVersion": "5"}, "spec": {"x": 1}}
    assert same_version(a, {"metadata": {"name": "a", "resourceVersion": "5"}, "spec": {"x": 2}})
    assert not same_version(a, {"metadata": {"name": "a", "resourceVersion": "6"}, "spec": {"x": 1}})
    assert same_version({"spec": {"x": 1}}, {"spec": {"x": 1}})  # no version: compared whole
    assert not same_version({"spec": {"x": 1}}, {"spec": {"x": 2}})
    assert not same_version(None, a) and not same_version(a, None) and same_version(None, None)


def test_optional_kind_without_its_crd_is_synced_empty_and_read_once_installed() -> None:
    """MetalLB's kinds on a cluster without MetalLB: no objects, synced (the agent is not held
    back), and followed once the CRD appears; the CRD removed again: its objects are gone."""
    import yaml

    from gatelb.sources.kubernetes.api import IPADDRESSPOOLS
    from tests.k8s_standin.store import CRD_RID
    from tests.kube.test_kube_announce import METALLB_CRDS

    async def body(server: StandinServer, client: ApiClient) -> None:
        seen: list[tuple[str, bool]] = []
        inf = Informer(KubeApi(client), IPADDRESSPOOLS,
                       lambda kind, key, old, new: seen.append((key, new is not None)))
        inf.absent_retry_s = 0.1
        task = asyncio.create_task(inf.run())
        try:
            await asyncio.wait_for(inf.synced.wait(), 5)
            assert inf.absent and inf.objects == {} and inf.problem is None
            crd = next(d for d in yaml.safe_load_all(METALLB_CRDS.read_text())
                       if d["metadata"]["name"] == "ipaddresspools.metallb.io")
            server.store.create(server.store.resources[CRD_RID], "", crd)
            server.store.initializing.clear()
            res = server.store.resources["metallb.io/v1beta1/ipaddresspools"]
            server.store.create(res, "default", {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                                                 "metadata": {"name": "p"}, "spec": {"addresses": ["203.0.113.0/30"]}})
            await wait_until(lambda: seen == [("default/p", True)])
            assert not inf.absent
            server.store.delete(server.store.resources[CRD_RID], "", "ipaddresspools.metallb.io")
            server.drop_watches()  # as the real server ends the watches of a deleted CRD
            await wait_until(lambda: seen[-1] == ("default/p", False) and inf.absent)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(body)
