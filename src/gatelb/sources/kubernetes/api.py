"""The few Kubernetes API calls gatelb makes, on kubernetes_asyncio, with raw JSON objects.

Objects stay plain dicts (camelCase, exactly as the API server sent them): the translation and
the pydantic schema work on those, and skipping the generated model classes saves the cost of
deserialising every watch event twice.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import (
    ApiClient,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    DiscoveryV1Api,
)
from kubernetes_asyncio.client.exceptions import ApiException

Obj = dict[str, Any]
GROUP, VERSION = "gatelb.io", "v1alpha1"
MERGE = "application/merge-patch+json"


class Gone(Exception):
    """410: the resourceVersion is older than the server's history; relist."""


class WatchError(Exception):
    """An ERROR event other than 410 inside a watch stream."""


@dataclass(frozen=True)
class Kind:
    name: str  # our name for it, also the informer's
    plural: str
    group: str = ""  # "" for core objects
    version: str = "v1"
    namespaced: bool = True

    @property
    def custom(self) -> bool:
        return self.group == GROUP


SERVICES = Kind("services", "services")
ENDPOINTSLICES = Kind("endpointslices", "endpointslices", "discovery.k8s.io")
NODES = Kind("nodes", "nodes", namespaced=False)
NAMESPACES = Kind("namespaces", "namespaces", namespaced=False)
IPPOOLS = Kind("ippools", "ippools", GROUP, VERSION, namespaced=False)
L4LBS = Kind("l4lbs", "l4lbs", GROUP, VERSION)
WATCHED = (SERVICES, ENDPOINTSLICES, NODES, NAMESPACES, IPPOOLS, L4LBS)


async def connect(kubeconfig: str | None) -> ApiClient:
    """A client from a kubeconfig file, or the in-cluster service account when None."""
    from kubernetes_asyncio import config

    if kubeconfig is None:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return ApiClient()
    return await config.new_client_from_config(config_file=kubeconfig)


class KubeApi:
    def __init__(self, client: ApiClient) -> None:
        # Typed as Any on purpose: the library's annotations ask for model objects and omit
        # `_content_type`, but it serialises plain dicts and honours `_content_type` at run time,
        # and raw dicts are what we want (see the module docstring).
        self._core: Any = CoreV1Api(client)
        self._discovery: Any = DiscoveryV1Api(client)
        self._custom: Any = CustomObjectsApi(client)
        self._coord: Any = CoordinationV1Api(client)

    # -- list / watch --------------------------------------------------------------------------

    async def _call(self, kind: Kind, **kw: Any) -> Any:
        kw["_preload_content"] = False
        if kind.custom:
            return await self._custom.list_cluster_custom_object(kind.group, kind.version, kind.plural, **kw)
        fn = {
            "services": self._core.list_service_for_all_namespaces,
            "endpointslices": self._discovery.list_endpoint_slice_for_all_namespaces,
            "nodes": self._core.list_node,
            "namespaces": self._core.list_namespace,
        }[kind.name]
        return await fn(**kw)

    async def list(self, kind: Kind) -> tuple[list[Obj], str]:
        """Every object and the list's resourceVersion (where a watch must start)."""
        body = await _json(await self._call(kind))
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    async def watch(self, kind: Kind, resource_version: str, timeout_s: int) -> AsyncIterator[tuple[str, Obj]]:
        """(type, object) from `resource_version` on, BOOKMARKs included, until the server ends the
        stream (after `timeout_s`, or when the connection drops). Raises Gone on 410."""
        resp = await self._call(kind, watch=True, resource_version=resource_version,
                                allow_watch_bookmarks=True, timeout_seconds=timeout_s,
                                _request_timeout=timeout_s + 30)
        if resp.status == 410:
            resp.close()
            raise Gone("410 Gone")
        if not 200 <= resp.status <= 299:
            await _json(resp)  # raises with the server's message
        try:
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise Gone(str(status.get("message")))
                    raise WatchError(f"{status.get('code')} {status.get('reason')}: {status.get('message')}")
                yield str(event["type"]), event["object"]
        finally:
            resp.close()

    # -- writes --------------------------------------------------------------------------------

    async def patch_service(self, namespace: str, name: str, body: Obj, status: bool = False) -> Obj:
        fn = self._core.patch_namespaced_service_status if status else self._core.patch_namespaced_service
        resp = await fn(name, namespace, body, _content_type=MERGE, _preload_content=False)
        return await _json(resp)

    async def patch_l4lb_status(self, namespace: str, name: str, body: Obj) -> Obj:
        return await _json(await self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, L4LBS.plural, name, body, _content_type=MERGE, _preload_content=False))

    async def create_event(self, namespace: str, body: Obj) -> None:
        await _json(await self._core.create_namespaced_event(namespace, body, _preload_content=False))

    async def read_lease(self, namespace: str, name: str) -> Obj | None:
        try:
            return await _json(await self._coord.read_namespaced_lease(name, namespace, _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def create_lease(self, namespace: str, body: Obj) -> Obj:
        return await _json(await self._coord.create_namespaced_lease(namespace, body, _preload_content=False))

    async def replace_lease(self, namespace: str, name: str, body: Obj) -> Obj:
        """PUT with the resourceVersion in `body`: 409 (ApiException) when someone else wrote first."""
        return await _json(await self._coord.replace_namespaced_lease(name, namespace, body, _preload_content=False))


async def _json(resp: Any) -> Obj:
    """The body of an unpreloaded response; ApiException for a non-2xx status (kubernetes_asyncio
    only raises by itself when it preloads)."""
    try:
        data = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status <= 299:
        try:
            message = json.loads(data).get("message", "")
        except ValueError:
            message = data[:200].decode(errors="replace")
        raise ApiException(status=resp.status, reason=message)
    return json.loads(data)  # type: ignore[no-any-return]
