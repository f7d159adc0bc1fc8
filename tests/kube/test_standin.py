"""The Kubernetes API stand-in behaves like the real API server where gatelb depends on it.

Every test talks real HTTP on 127.0.0.1 through kubernetes_asyncio, the library gatelb uses.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, ApiextensionsV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.utils import FailToCreateError

from tests.k8s_standin.client import apply, create_namespace, run
from tests.k8s_standin.server import StandinServer

MERGE = "application/merge-patch+json"


def svc(name: str, port: int = 80) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"type": "LoadBalancer", "ports": [{"port": port}]}}


async def raw_list(core: CoreV1Api) -> dict[str, Any]:
    resp = await core.list_service_for_all_namespaces(_preload_content=False)
    return json.loads(await resp.read())  # type: ignore[no-any-return]


async def watch_events(core: CoreV1Api, rv: str | None, count: int, **kw: Any) -> list[dict[str, Any]]:
    """The first `count` events of a watch from `rv` (raw JSON lines, as gatelb reads them)."""
    args: dict[str, Any] = {"watch": True, "timeout_seconds": 5, "_preload_content": False, **kw}
    if rv is not None:
        args["resource_version"] = rv
    resp = await core.list_service_for_all_namespaces(**args)
    events = []
    async for line in resp.content:
        events.append(json.loads(line))
        if len(events) == count:
            break
    resp.close()
    return events


def test_list_carries_the_global_resource_version() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        await create_namespace(client, "other")
        a = await core.create_namespaced_service("default", svc("a"))
        b = await core.create_namespaced_service("other", svc("b"))
        assert int(b.metadata.resource_version) > int(a.metadata.resource_version)
        listed = await raw_list(core)
        assert [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
        assert listed["metadata"]["resourceVersion"] == b.metadata.resource_version
        only = await core.list_namespaced_service("other")
        assert [i.metadata.name for i in only.items] == ["b"]

    run(body)


def test_watch_from_list_version_sees_added_modified_deleted_in_order() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        await core.create_namespaced_service("default", svc("before"))
        rv = (await raw_list(core))["metadata"]["resourceVersion"]
        await core.create_namespaced_service("default", svc("web"))
        await core.patch_namespaced_service("web", "default", {"spec": {"ports": [{"port": 81}]}})
        await core.delete_namespaced_service("web", "default")
        events = await watch_events(core, rv, 3)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "web"), ("MODIFIED", "web"), ("DELETED", "web")]
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert versions == sorted(versions) and versions[0] > int(rv)
        assert events[1]["object"]["spec"]["ports"] == [{"port": 81}]

    run(body)


def test_watch_without_version_starts_with_current_objects_then_follows_live() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        await core.create_namespaced_service("default", svc("old"))
        resp = await core.list_service_for_all_namespaces(watch=True, timeout_seconds=5, _preload_content=False)
        first = json.loads(await resp.content.readline())
        await core.create_namespaced_service("default", svc("new"))
        second = json.loads(await resp.content.readline())
        resp.close()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "old")
        assert (second["type"], second["object"]["metadata"]["name"]) == ("ADDED", "new")

    run(body)


def test_bookmarks_only_when_allowed_and_carry_the_latest_version() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        made = await core.create_namespaced_service("default", svc("a"))
        events = await watch_events(core, made.metadata.resource_version, 1, allow_watch_bookmarks=True)
        assert events[0]["type"] == "BOOKMARK"
        assert events[0]["object"]["metadata"]["resourceVersion"] == made.metadata.resource_version
        quiet = await watch_events(core, made.metadata.resource_version, 1, timeout_seconds=1)
        assert quiet == []  # no bookmark asked for: the stream ends at its timeout with nothing

    run(body, bookmark_interval=0.1)


def test_too_old_resource_version_is_410_gone() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        first = await core.create_namespaced_service("default", svc("s0"))
        for i in range(1, 5):
            await core.create_namespaced_service("default", svc(f"s{i}"))
        events = await watch_events(core, first.metadata.resource_version, 1)
        assert events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
        recent = (await raw_list(core))["metadata"]["resourceVersion"]
        await core.create_namespaced_service("default", svc("s5"))
        assert (await watch_events(core, recent, 1))[0]["type"] == "ADDED"  # inside the window
        server.store.compact()
        assert (await watch_events(core, recent, 1))[0]["object"]["code"] == 410

    run(body, history=2)


def test_status_subresource_and_main_resource_do_not_touch_each_other() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        await core.create_namespaced_service("default", svc("web"))
        status = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "VIP"}]}}}
        out = await core.patch_namespaced_service_status("web", "default", status)
        assert out.status.load_balancer.ingress[0].ip == "203.0.113.1"
        # A status change through the main resource is ignored, a spec change through status too.
        await core.patch_namespaced_service("web", "default", {"status": {"loadBalancer": {}}})
        await core.patch_namespaced_service_status("web", "default", {"spec": {"type": "ClusterIP"}})
        got = await core.read_namespaced_service("web", "default")
        assert got.status.load_balancer.ingress[0].ip == "203.0.113.1"
        assert got.spec.type == "LoadBalancer"

    run(body)


def test_stale_resource_version_is_409_conflict() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        made = await core.create_namespaced_service("default", svc("web"))
        stale = made.metadata.resource_version
        await core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"a": "b"}}})
        with pytest.raises(ApiException) as err:
            await core.patch_namespaced_service(
                "web", "default", {"metadata": {"resourceVersion": stale, "labels": {"a": "c"}}})
        assert err.value.status == 409
        with pytest.raises(ApiException) as err:
            await core.create_namespaced_service("default", svc("web"))
        assert err.value.status == 409  # AlreadyExists
        with pytest.raises(ApiException) as err:
            await core.read_namespaced_service("nope", "default")
        assert err.value.status == 404

    run(body)


def test_events_are_created_and_listed() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        ev = {"metadata": {"generateName": "web."}, "reason": "IPAllocated", "message": "203.0.113.1",
              "type": "Normal", "involvedObject": {"kind": "Service", "namespace": "default", "name": "web"}}
        made = await core.create_namespaced_event("default", ev)
        assert made.metadata.name.startswith("web.")
        listed = await core.list_namespaced_event("default")
        assert [(e.reason, e.involved_object.name) for e in listed.items] == [("IPAllocated", "web")]

    run(body)


def test_lease_update_is_optimistic() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        coord = CoordinationV1Api(client)
        lease = {"metadata": {"name": "gatelb"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
        made = await coord.create_namespaced_lease("kube-system", lease)
        taken = {"metadata": {"name": "gatelb", "resourceVersion": made.metadata.resource_version},
                 "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15}}
        await coord.replace_namespaced_lease("gatelb", "kube-system", taken)
        with pytest.raises(ApiException) as err:  # a second contender with the same old version loses
            await coord.replace_namespaced_lease("gatelb", "kube-system", taken)
        assert err.value.status == 409
        assert (await coord.read_namespaced_lease("gatelb", "kube-system")).spec.holder_identity == "b"

    run(body)


def test_custom_resources_with_status() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        custom = CustomObjectsApi(client)
        pool = {"apiVersion": "gatelb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "public"},
                "spec": {"addresses": ["203.0.113.0/28"]}}
        await custom.create_cluster_custom_object("gatelb.io", "v1alpha1", "ippools", pool)
        lb = {"apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB", "metadata": {"name": "web"},
              "spec": {"frontend": {"port": 80}}}
        await custom.create_namespaced_custom_object("gatelb.io", "v1alpha1", "default", "l4lbs", lb)
        await custom.patch_namespaced_custom_object_status(
            "gatelb.io", "v1alpha1", "default", "l4lbs", "web", {"status": {"state": "Active"}},
            _content_type=MERGE)
        got = await custom.get_namespaced_custom_object("gatelb.io", "v1alpha1", "default", "l4lbs", "web")
        assert got["status"] == {"state": "Active"} and got["spec"]["frontend"] == {"port": 80}
        # The CRD's defaults are filled in, as the real server does.
        assert got["spec"]["algorithm"] == "random" and got["spec"]["state"] == "active"
        pools = await custom.list_cluster_custom_object("gatelb.io", "v1alpha1", "ippools")
        assert [p["metadata"]["name"] for p in pools["items"]] == ["public"]

    run(body)


def test_drop_watches_ends_open_streams() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core = CoreV1Api(client)
        resp = await core.list_service_for_all_namespaces(watch=True, timeout_seconds=30, _preload_content=False)
        server.drop_watches()
        assert await resp.content.readline() == b""  # end of stream, long before the timeout
        resp.close()

    run(body)


# -- what the real API server enforces, where gatelb depends on it -----------------------------

L4LB_PATH = ("gatelb.io", "v1alpha1")


def l4lb(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB", "metadata": {"name": name},
            "spec": {"frontend": {"port": 80}, **spec}}


def status_of(err: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    return json.loads(err.value.body)  # type: ignore[no-any-return]


def test_a_new_cluster_has_its_namespaces_and_a_create_in_a_missing_one_is_404() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        core, coord = CoreV1Api(client), CoordinationV1Api(client)
        names = {n.metadata.name for n in (await core.list_namespace()).items}
        assert names == {"default", "kube-system", "kube-public", "kube-node-lease"}
        lease = {"metadata": {"name": "gatelb-ipam"}, "spec": {"holderIdentity": "a"}}
        with pytest.raises(ApiException) as err:
            await coord.create_namespaced_lease("gatelb-system", lease)
        assert err.value.status == 404
        assert status_of(err) == {  # what kube-apiserver v1.36 answers, byte for byte in content
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": 'namespaces "gatelb-system" not found', "reason": "NotFound",
            "details": {"name": "gatelb-system", "kind": "namespaces"}, "code": 404}
        with pytest.raises(ApiException) as err:  # a read there is a plain "not found" of the object
            await coord.read_namespaced_lease("gatelb-ipam", "gatelb-system")
        assert status_of(err)["message"] == 'leases "gatelb-ipam" not found'
        await apply(client, "rbac.yaml")  # creates gatelb-system (and the ServiceAccount, the roles)
        made = await coord.create_namespaced_lease("gatelb-system", lease)
        assert made.metadata.namespace == "gatelb-system"

    run(body)


def test_unknown_fields_in_custom_resources_are_400_strict_decoding_errors() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        custom = CustomObjectsApi(client)
        with pytest.raises(ApiException) as err:
            await custom.create_namespaced_custom_object(*L4LB_PATH, "default", "l4lbs",
                                                         l4lb("web", backends=["198.51.100.1:80"]))
        assert err.value.status == 400 and status_of(err)["reason"] == "BadRequest"
        assert status_of(err)["message"] == ('L4LB in version "v1alpha1" cannot be handled as a L4LB: '
                                             'strict decoding error: unknown field "spec.backends"')
        await custom.create_namespaced_custom_object(*L4LB_PATH, "default", "l4lbs", l4lb("web"))
        with pytest.raises(ApiException) as err:  # the status subresource too
            await custom.patch_namespaced_custom_object_status(
                *L4LB_PATH, "default", "l4lbs", "web", {"status": {"state": "Active", "ip": "1.2.3.4"}},
                _content_type=MERGE)
        assert 'unknown field "status.ip"' in status_of(err)["message"]
        # Warn and Ignore prune instead (Warn with a Warning header), as the real server does.
        await custom.create_namespaced_custom_object(*L4LB_PATH, "default", "l4lbs",
                                                     l4lb("pruned", typo=1), field_validation="Ignore")
        got = await custom.get_namespaced_custom_object(*L4LB_PATH, "default", "l4lbs", "pruned")
        assert "typo" not in got["spec"]
        resp = await custom.create_namespaced_custom_object(*L4LB_PATH, "default", "l4lbs", l4lb("warned", typo=1),
                                                            field_validation="Warn", _preload_content=False)
        assert resp.status == 201 and 'unknown field \\"spec.typo\\"' in resp.headers["Warning"]
        resp.close()

    run(body)


def test_custom_resources_are_validated_against_the_crd_schema_with_field_paths() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        custom = CustomObjectsApi(client)
        cases = [
            (l4lb("a", frontend={"port": 70000}),
             'spec.frontend.port: Invalid value: 70000: spec.frontend.port in body should be less than or '
             "equal to 65535"),
            (l4lb("b", algorithm="fastest"),
             'spec.algorithm: Unsupported value: "fastest": supported values: "random", "roundrobin", "sourcehash", '
             '"maglev"'),
            (l4lb("c", frontend={"port": "http"}),
             'spec.frontend.port: Invalid value: "http": spec.frontend.port in body must be of type integer: "http"'),
            ({**l4lb("d"), "spec": {}}, "spec.frontend: Required value"),
        ]
        for obj, want in cases:
            with pytest.raises(ApiException) as err:
                await custom.create_namespaced_custom_object(*L4LB_PATH, "default", "l4lbs", obj)
            name = obj["metadata"]["name"]
            assert err.value.status == 422 and status_of(err)["reason"] == "Invalid"
            assert status_of(err)["message"] == f'L4LB.gatelb.io "{name}" is invalid: {want}'
        pool = {"apiVersion": "gatelb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "p"},
                "spec": {"addresses": []}}
        with pytest.raises(ApiException) as err:
            await custom.create_cluster_custom_object(*L4LB_PATH, "ippools", pool)
        cause = status_of(err)["details"]["causes"][0]
        assert cause["field"] == "spec.addresses" and "should have at least 1 items" in cause["message"]
        # A patch is validated as the object it makes.
        await custom.create_namespaced_custom_object(*L4LB_PATH, "default", "l4lbs", l4lb("ok"))
        with pytest.raises(ApiException) as err:
            await custom.patch_namespaced_custom_object(*L4LB_PATH, "default", "l4lbs", "ok",
                                                        {"spec": {"nat": "snat"}}, _content_type=MERGE)
        assert "spec.nat: Unsupported value" in status_of(err)["message"]

    run(body)


def test_crds_are_applied_through_the_api_and_storage_initialises_with_429() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        custom = CustomObjectsApi(client)
        with pytest.raises(ApiException) as err:
            await custom.list_cluster_custom_object(*L4LB_PATH, "ippools")
        assert err.value.status == 404  # no CRDs yet
        await apply(client, "crds.yaml")
        with pytest.raises(ApiException) as err:
            await custom.list_cluster_custom_object(*L4LB_PATH, "ippools")
        assert err.value.status == 429 and status_of(err)["message"] == "storage is (re)initializing"
        assert err.value.headers["Retry-After"] == "1"
        await asyncio.sleep(0.3)
        assert (await custom.list_cluster_custom_object(*L4LB_PATH, "ippools"))["items"] == []
        crd = await ApiextensionsV1Api(client).read_custom_resource_definition("l4lbs.gatelb.io")
        assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"

    run(body, crds=False, crd_init_s=0.3)


def test_forbid_answers_the_real_403() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        server.forbid("create", "leases", "coordination.k8s.io", "kube-system")
        with pytest.raises(ApiException) as err:
            await CoordinationV1Api(client).create_namespaced_lease("kube-system", {"metadata": {"name": "x"}})
        assert err.value.status == 403 and status_of(err)["reason"] == "Forbidden"
        assert status_of(err)["message"] == (
            'leases.coordination.k8s.io is forbidden: User "system:serviceaccount:gatelb-system:gatelb" cannot '
            'create resource "leases" in API group "coordination.k8s.io" in the namespace "kube-system"')
        server.allow_all()
        await CoordinationV1Api(client).create_namespaced_lease("kube-system", {"metadata": {"name": "x"}})

    run(body)


def test_deploy_files_apply_as_documented() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await apply(client, "crds.yaml", "rbac.yaml")
        kinds = {o["kind"] for o in server.store.objects.values()}
        assert {"CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                "Role", "RoleBinding"} <= kinds
        with pytest.raises(FailToCreateError):  # creating again: every object already exists (409)
            await apply(client, "rbac.yaml")

    run(body, crds=False)
