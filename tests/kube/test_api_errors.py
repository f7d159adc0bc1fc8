"""Our client code (KubeApi, LeaseElector, Informer, StatusWriter) against what a real API server
answers when a user has not set things up yet: a missing namespace, a missing permission, missing
CRDs, CRD storage still initialising, write races. Every error names code, reason and the server's
message, and the fix where the user can make one; a lasting failure is a `problem` (readiness).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from gatelb.model import IPAddress
from gatelb.sources.kubernetes.api import (
    IPPOOLS,
    L4LBS,
    ApiError,
    Gone,
    KubeApi,
    Request,
    Trouble,
    WatchError,
    describe,
)
from gatelb.sources.kubernetes.informer import Informer
from gatelb.sources.kubernetes.lease import LeaseElector
from gatelb.sources.kubernetes.status import StatusWriter
from tests.k8s_standin.client import apply, create_namespace, run
from tests.k8s_standin.server import StandinServer

NS_FIX = "create namespace gatelb-system or pass --lease-namespace"


async def wait_for(get: Callable[[], Any], timeout: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := get()):
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(0.02)
    return value


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def records(caplog: pytest.LogCaptureFixture, msg: str, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == msg and r.levelno == level]


def field(record: logging.LogRecord, name: str) -> Any:
    return record.fields[name]  # type: ignore[attr-defined]


def elector(client: ApiClient, identity: str = "gw1", **kw: Any) -> LeaseElector:
    kw = {"renew_s": 0.05, "grace_s": 0.3, "repeat_s": 60.0, **kw}
    return LeaseElector(KubeApi(client), "gatelb-system", "gatelb-ipam", identity, lambda leader: None, **kw)


# -- describe ------------------------------------------------------------------------------------


def test_missing_namespace_names_code_reason_message_and_fix() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        api = KubeApi(client)
        assert await api.read_lease("gatelb-system", "gatelb-ipam") is None
        with pytest.raises(ApiError) as err:
            await api.create_lease("gatelb-system", {"metadata": {"name": "gatelb-ipam"}, "spec": {}})
        p = describe(err.value)
        assert (p.code, p.reason, p.message) == (404, "NotFound", 'namespaces "gatelb-system" not found')
        assert p.request == "create leases.coordination.k8s.io gatelb-system/gatelb-ipam"
        assert p.fix is not None and p.fix.startswith(NS_FIX)
        assert err.value.status == 404  # still an ApiException for code that checks .status
        assert str(err.value) == str(p) and "ApiException()" not in repr(err.value)
        assert str(p).startswith('404 NotFound: namespaces "gatelb-system" not found (create leases')

    run(body)


def test_forbidden_names_the_missing_verb_and_resource() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await apply(client, "rbac.yaml")
        server.forbid("create", "leases", "coordination.k8s.io", "gatelb-system")
        server.forbid("patch", "services/status")
        with pytest.raises(ApiError) as err:
            await KubeApi(client).create_lease("gatelb-system", {"metadata": {"name": "gatelb-ipam"}, "spec": {}})
        p = describe(err.value)
        assert (p.code, p.reason) == (403, "Forbidden") and "cannot create resource" in p.message
        assert p.fix == ("the ServiceAccount gatelb-system/gatelb lacks `create` on leases in gatelb-system "
                         "(API group coordination.k8s.io): grant it as deploy/rbac.yaml does")
        await CoreV1Api(client).create_namespaced_service("default", {
            "metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
        with pytest.raises(ApiError) as err:
            await KubeApi(client).patch_service("default", "web", {"status": {}}, status=True)
        assert describe(err.value).fix is not None
        assert describe(err.value).fix.startswith(  # type: ignore[union-attr]
            "the ServiceAccount gatelb-system/gatelb lacks `patch` on services/status in default")

    run(body)


def test_missing_crds_say_apply_deploy_crds() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        with pytest.raises(ApiError) as err:
            await KubeApi(client).list(IPPOOLS)
        p = describe(err.value)
        assert p.code == 404 and p.request == "list ippools.gatelb.io"
        assert p.fix is not None and "apply deploy/crds.yaml" in p.fix

    run(body, crds=False)


def test_describe_library_and_raw_errors() -> None:
    # The library's own ApiException (preloaded calls): the Status body is parsed.
    lib = ApiException(status=403, reason="Forbidden")
    lib.body = (b'{"kind":"Status","message":"leases.coordination.k8s.io is forbidden: User '
                b'\\"system:serviceaccount:ops:lb\\" cannot update resource \\"leases\\" in API group '
                b'\\"coordination.k8s.io\\" in the namespace \\"ops\\"","reason":"Forbidden","code":403}')
    p = describe(lib)
    assert (p.code, p.reason) == (403, "Forbidden") and p.message.startswith("leases.coordination.k8s.io is")
    assert p.fix is not None and p.fix.startswith("the ServiceAccount ops/lb lacks `update` on leases in ops")
    bare = describe(ApiException(status=500, reason="Internal Server Error"))
    assert (bare.code, bare.reason, bare.message) == (500, "Internal Server Error", "")
    assert describe(Gone("too old resource version: 5 (9)")).code == 410
    watch = describe(WatchError({"code": 500, "reason": "InternalError", "message": "etcd"}, Request("watch", "nodes")))
    assert str(watch) == "500 InternalError: etcd (watch nodes)"
    refused = describe(ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"))
    assert refused.code is None and refused.reason == "ConnectionRefusedError" and "Connect call" in refused.message
    assert describe(TimeoutError()).message == "TimeoutError()"


def test_trouble_warns_then_errors_once_per_repeat_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    t = Trouble("thing", grace_s=10, repeat_s=60, clock=lambda: now[0])
    err = ApiError(404, {"reason": "NotFound", "message": "gone"})
    caplog.set_level(logging.DEBUG, "gatelb.kube")
    for second in range(0, 200, 5):
        now[0] = second
        t.failed(err, "try failed")
        assert (t.problem is None) == (second < 10)
    levels = [(r.levelno, field(r, "failing_for_s")) for r in caplog.records if r.levelno >= logging.WARNING]
    assert levels == [(logging.WARNING, 0), (logging.ERROR, 10), (logging.ERROR, 70), (logging.ERROR, 130),
                      (logging.ERROR, 190)]
    assert t.problem == "thing: 404 NotFound: gone" and t.last_error is not None
    t.ok()
    assert t.problem is None and t.last_error is not None
    assert caplog.records[-1].getMessage() == "thing works again"


# -- the elector ---------------------------------------------------------------------------------


def test_elector_in_a_missing_namespace_errors_with_the_fix_and_reports_a_problem(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        e = elector(client)
        caplog.set_level(logging.INFO, "gatelb.kube")
        async with running(e.run()):
            await asyncio.sleep(0.15)
            assert e.problem is None and not e.is_leader  # within the grace period: only a warning
            problem = await wait_for(lambda: e.problem)
            assert "Lease gatelb-system/gatelb-ipam" in problem and NS_FIX in problem
            await asyncio.sleep(0.3)  # many more retries: still one ERROR (repeat_s is 60 s)
            errors = records(caplog, "lease renewal failed", logging.ERROR)
            assert len(errors) == 1 and NS_FIX in field(errors[0], "error")
            assert len(records(caplog, "lease renewal failed", logging.WARNING)) == 1
            assert e.last_error is not None and e.last_error.code == 404
            # The user creates the namespace: the lone instance becomes the leader, the problem goes.
            await create_namespace(client, "gatelb-system")
            await wait_for(lambda: e.is_leader)
            assert e.problem is None
            assert records(caplog, "leader election on Lease gatelb-system/gatelb-ipam works again", logging.INFO)

    run(body)


def test_elector_forbidden_is_a_problem_with_the_missing_verb() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await apply(client, "rbac.yaml")
        server.forbid("create", "leases", "coordination.k8s.io", "gatelb-system")
        e = elector(client)
        async with running(e.run()):
            problem = await wait_for(lambda: e.problem)
            assert "lacks `create` on leases in gatelb-system" in problem and not e.is_leader

    run(body)


class RacingApi(KubeApi):
    """Someone else writes the Lease between our read and our write, once."""

    def __init__(self, client: ApiClient, other: Callable[[], Any]) -> None:
        super().__init__(client)
        self._other: Callable[[], Any] | None = other
        self.reads = 0

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        lease = await super().read_lease(namespace, name)
        self.reads += 1
        if self._other is not None:
            other, self._other = self._other, None
            await other()
        return lease


def test_409_on_renewal_reads_again_and_decides_anew() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await apply(client, "rbac.yaml")
        coord = CoordinationV1Api(client)
        first = elector(client)
        assert await first.step()  # gw1 holds it

        async def touch() -> None:  # a label change: the lease is still gw1's
            await coord.patch_namespaced_lease("gatelb-ipam", "gatelb-system", {"metadata": {"labels": {"a": "b"}}})

        api = RacingApi(client, touch)
        again = LeaseElector(api, "gatelb-system", "gatelb-ipam", "gw1", lambda leader: None)
        assert await again.step()  # 409 on the PUT, read again, renewed
        assert api.reads == 2

        async def taken() -> None:  # gw2 takes over in between (as after an expiry)
            lease = await coord.read_namespaced_lease("gatelb-ipam", "gatelb-system")
            await coord.replace_namespaced_lease("gatelb-ipam", "gatelb-system", {
                "metadata": {"name": "gatelb-ipam", "resourceVersion": lease.metadata.resource_version},
                "spec": {"holderIdentity": "gw2", "leaseDurationSeconds": 15,
                         "renewTime": lease.spec.renew_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})

        api = RacingApi(client, taken)
        loser = LeaseElector(api, "gatelb-system", "gatelb-ipam", "gw1", lambda leader: None)
        assert not await loser.step()  # 409, read again: gw2 holds a valid lease; no error
        holder = server.store.objects[("coordination.k8s.io/v1/leases", "gatelb-system", "gatelb-ipam")]
        assert holder["spec"]["holderIdentity"] == "gw2"

    run(body)


def test_two_electors_racing_from_scratch_elect_one_and_report_no_problem() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await apply(client, "rbac.yaml")
        a, b = elector(client, "gw1"), elector(client, "gw2")
        results = await asyncio.gather(a.step(), b.step())  # both read None, both create: one 409
        assert sorted(results) == [False, True]
        async with running(a.run()), running(b.run()):
            await asyncio.sleep(0.5)
            assert a.is_leader != b.is_leader and a.problem is None and b.problem is None

    run(body)


# -- informers -----------------------------------------------------------------------------------


def test_informer_without_crds_reports_the_fix_then_syncs_through_the_429_of_new_storage(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        caplog.set_level(logging.INFO, "gatelb.kube")
        inf = Informer(KubeApi(client), IPPOOLS, lambda kind: None, grace_s=0.3)
        async with running(inf.run()):
            problem = await wait_for(lambda: inf.problem)
            assert problem.startswith("list/watch ippools: 404") and "apply deploy/crds.yaml" in problem
            await apply(client, "crds.yaml")
            await asyncio.wait_for(inf.synced.wait(), 5)
            assert inf.problem is None
        seen = [field(r, "error") for r in caplog.records if r.getMessage() == "list/watch failed, retrying"]
        assert any("429 TooManyRequests: storage is (re)initializing" in e for e in seen), seen

    run(body, crds=False, crd_init_s=0.5)


# -- status write-back ---------------------------------------------------------------------------


def test_status_writer_logs_a_refusal_once_per_cause_and_reports_a_problem(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        caplog.set_level(logging.INFO, "gatelb.kube")
        core = CoreV1Api(client)
        for name in ("a", "b", "c"):
            await core.create_namespaced_service("default", {
                "metadata": {"name": name}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
        svcs = [await KubeApi(client).patch_service("default", n, {}) for n in ("a", "b", "c")]
        server.forbid("patch", "services/status")
        writer = StatusWriter(KubeApi(client), grace_s=0.2)
        ip: tuple[IPAddress, ...] = (__import__("ipaddress").ip_address("203.0.113.10"),)
        assert [await writer.service_served(s, ip, ("public",)) for s in svcs] == [False, False, False]
        warned = records(caplog, "write-back failed", logging.WARNING)
        assert len(warned) == 1 and "lacks `patch` on services/status in default" in field(warned[0], "error")
        assert writer.problem is None and writer.last_error is not None and writer.last_error.code == 403
        await asyncio.sleep(0.25)
        assert not await writer.service_served(svcs[0], ip, ("public",))
        assert writer.problem is not None and "status write-back (patch services/status)" in writer.problem
        server.allow_all()
        assert await writer.service_served(svcs[0], ip, ("public",))
        assert writer.problem is None
        # A Service deleted meanwhile is no problem at all.
        await core.delete_namespaced_service("b", "default")
        assert not await writer.service_released({**svcs[1], "status": {"loadBalancer": {"ingress": [{}]}}})
        assert writer.problem is None

    run(body)


def test_refused_event_is_sent_again_later() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        writer = StatusWriter(KubeApi(client))
        svc = {"metadata": {"name": "web", "namespace": "default", "uid": "u"}}
        server.forbid("create", "events")
        assert not await writer.event(svc, "Service", "Warning", "AllocationFailed", "pool exhausted")
        server.allow_all()
        assert await writer.event(svc, "Service", "Warning", "AllocationFailed", "pool exhausted")
        assert await writer.event(svc, "Service", "Warning", "AllocationFailed", "pool exhausted")  # deduplicated
        got = [o for (rid, _, _), o in server.store.objects.items() if rid == "v1/events"]
        assert [e["message"] for e in got] == ["pool exhausted"]

    run(body)


def test_l4lb_status_fits_the_crd_schema_under_strict_decoding() -> None:
    async def body(server: StandinServer, client: ApiClient) -> None:
        await CustomObjectsApi(client).create_namespaced_custom_object(
            "gatelb.io", "v1alpha1", "default", L4LBS.plural,
            {"apiVersion": "gatelb.io/v1alpha1", "kind": "L4LB", "metadata": {"name": "web"},
             "spec": {"frontend": {"port": 80}}})
        obj = server.store.objects[("gatelb.io/v1alpha1/l4lbs", "default", "web")]
        writer = StatusWriter(KubeApi(client))
        import ipaddress

        assert await writer.l4lb_status(obj, "Active", "1/1 backends serving", ipaddress.ip_address("203.0.113.5"))
        assert await writer.l4lb_status(obj, "Error", "bad", None)
        stored = server.store.objects[("gatelb.io/v1alpha1/l4lbs", "default", "web")]["status"]
        assert stored == {"state": "Error", "message": "bad"} and writer.problem is None

    run(body)
