"""The few Kubernetes API calls gatelb makes, on kubernetes_asyncio, with raw JSON objects.

Objects stay plain dicts (camelCase, exactly as the API server sent them): the translation and
the pydantic schema work on those, and skipping the generated model classes saves the cost of
deserialising every watch event twice.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import (
    ApiClient,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    DiscoveryV1Api,
)
from kubernetes_asyncio.client.exceptions import (
    ApiException as ApiException,  # re-exported: only this module imports the client
)

Obj = dict[str, Any]
GROUP, VERSION = "gatelb.io", "v1alpha1"
METALLB = "metallb.io"  # MetalLB's kinds, read so that a MetalLB user can switch without rewriting them
MERGE = "application/merge-patch+json"
LEASE_GROUP = "coordination.k8s.io"
GRACE_S = 10.0  # failing for longer than this is a problem (ERROR, not ready), not a blip
REPEAT_S = 60.0  # how often a problem that lasts is logged again

log = logging.getLogger("gatelb.kube")


@dataclass(frozen=True)
class Request:
    """What we asked the API server, to name in errors (and in the fix for a 403)."""

    verb: str  # get, list, watch, create, update, patch
    resource: str  # plural, with "/status" for the subresource
    group: str = ""  # "" for core objects
    namespace: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        where = f" {self.namespace}/{self.name or ''}".rstrip("/") if self.namespace else \
            (f" {self.name}" if self.name else "")
        return f"{self.verb} {what}{where}"


class ApiError(ApiException):
    """A non-2xx answer: the code, and the server's `Status` (reason, message, details), and what we
    asked. An ApiException, so `err.status` is the HTTP code as for the library's own errors."""

    def __init__(self, code: int, status: Obj, request: Request | None = None) -> None:
        super().__init__(status=code, reason=str(status.get("reason") or ""))
        self.code = code
        self.status_body = {**status, "code": code}
        self.message = str(status.get("message") or "")
        self.request = request
        self.args = (str(describe(self)),)

    def __str__(self) -> str:
        return str(self.args[0])


class Gone(Exception):
    """410: the resourceVersion is older than the server's history; relist."""


class WatchError(Exception):
    """An ERROR event other than 410 inside a watch stream."""

    def __init__(self, status: Obj, request: Request | None = None) -> None:
        super().__init__(f"{status.get('code')} {status.get('reason')}: {status.get('message')}")
        self.status_body = status
        self.request = request


@dataclass(frozen=True)
class ApiProblem:
    """An API error as a user reads it: code, reason, the server's message, our request, and for
    the errors a user can fix themselves, the fix."""

    code: int | None  # HTTP code; None for an error without an answer (connection refused, timeout)
    reason: str  # the Status reason (NotFound, Forbidden, ...) or the exception's type
    message: str
    request: str | None = None
    fix: str | None = None

    def __str__(self) -> str:
        head = f"{self.code} {self.reason}" if self.code is not None else self.reason
        text = f"{head}: {self.message}" if self.message else head
        if self.request:
            text += f" ({self.request})"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text


_FORBIDDEN = re.compile(r'User "(?P<user>[^"]*)" cannot (?P<verb>\w+) resource "(?P<resource>[^"]+)"'
                        r'(?: in API group "(?P<group>[^"]*)")?(?: in the namespace "(?P<ns>[^"]+)")?')
_NO_NAMESPACE = re.compile(r'^namespaces "(?P<ns>[^"]+)" not found')


def describe(err: BaseException) -> ApiProblem:
    """Code, reason and message of an ApiException (ours or the library's), of the errors this
    module raises (Gone, WatchError), or of any other exception from a call (no code); with the
    fix when it is one a user can make: a missing namespace, a missing permission, missing CRDs."""
    request: Request | None = getattr(err, "request", None)
    if isinstance(err, ApiError | WatchError):
        status = err.status_body
    elif isinstance(err, ApiException):
        status = _status_of(err.body)
        status.setdefault("code", err.status)
        status.setdefault("reason", err.reason or "")
        status.setdefault("message", "" if status.get("reason") == err.reason else str(err.reason or ""))
    elif isinstance(err, Gone):
        status = {"code": 410, "reason": "Expired", "message": str(err)}
    else:
        return ApiProblem(None, type(err).__name__, str(err) or repr(err), None)
    code = status.get("code")
    code = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
    reason, message = str(status.get("reason") or ""), str(status.get("message") or "")
    return ApiProblem(code, reason, message, str(request) if request else None,
                      _fix(code, status, message, request))


def _status_of(body: Any) -> Obj:
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except ValueError:
            text = body.decode(errors="replace") if isinstance(body, bytes) else body
            return {"message": text.strip()[:300]}
        if isinstance(data, dict):
            return data
    return {}


def _fix(code: int | None, status: Obj, message: str, request: Request | None) -> str | None:
    if code == 404:
        details = status.get("details") or {}
        missing = _NO_NAMESPACE.match(message)
        if details.get("kind") == "namespaces" or missing:
            ns = details.get("name") or (missing.group("ns") if missing else None) or \
                (request.namespace if request else None)
            fix = f"create namespace {ns} (kubectl apply -f deploy/rbac.yaml creates gatelb-system)"
            if request is not None and request.resource == "leases":
                fix = f"create namespace {ns} or pass --lease-namespace (kubectl apply -f deploy/rbac.yaml " \
                      "creates gatelb-system)"
            return fix
        if request is not None and request.group == GROUP and request.verb in ("list", "watch"):
            return f"the gatelb CustomResourceDefinitions are not installed: apply deploy/crds.yaml " \
                   f"({request.resource}.{GROUP} is unknown to the API server)"
        return None
    if code == 403:
        parsed = _FORBIDDEN.search(message)
        verb = request.verb if request else (parsed.group("verb") if parsed else None)
        if verb is None:
            return None
        resource = request.resource if request else parsed.group("resource") if parsed else "?"
        group = request.group if request else (parsed.group("group") or "") if parsed else ""
        ns = request.namespace if request else parsed.group("ns") if parsed else None
        user = parsed.group("user") if parsed else ""
        who = "the ServiceAccount" if user.startswith("system:serviceaccount:") or not user else f"user {user}"
        if user.startswith("system:serviceaccount:"):
            who += " " + "/".join(user.split(":")[2:4])
        scope = f"in {ns}" if ns else "cluster-wide"
        api_group = f" (API group {group})" if group else ""
        return f"{who} lacks `{verb}` on {resource} {scope}{api_group}: grant it as deploy/rbac.yaml does"
    if code == 401:
        return "the API server refused the credentials: check the kubeconfig's user or the pod's ServiceAccount token"
    return None


class Trouble:
    """Something we retry (a list, a lease renewal) that keeps failing. The first failure is a
    WARNING; once it has failed for longer than `grace_s` it is a `problem` (for readiness) and an
    ERROR with the described cause, logged again every `repeat_s` (or when the cause changes), not on
    every retry. A success clears it (and says so when it had been reported)."""

    def __init__(self, what: str, grace_s: float = GRACE_S, repeat_s: float = REPEAT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.grace_s, self.repeat_s = grace_s, repeat_s
        self._clock = clock
        self.last_error: ApiProblem | None = None  # the last failure's description, kept after recovery
        self.failing_since: float | None = None  # clock() of the first failure of the current run
        self.failures = 0  # in the current run
        self.last_at = 0.0  # clock() of the last failure
        self._warned = ""
        self._error_at: float | None = None
        self._error_text = ""

    @property
    def problem(self) -> str | None:
        """None while fine (or failing for less than the grace period); else what fails and why."""
        if self.failing_since is None or self._clock() - self.failing_since < self.grace_s:
            return None
        return f"{self.what}: {self.last_error}"

    def failed(self, err: BaseException, msg: str, **fields: Any) -> ApiProblem:
        """Record a failure and log it at the level it deserves (`msg` and `fields` as for a log line)."""
        now = self._clock()
        problem = self.last_error = describe(err)
        self.failures += 1
        self.last_at = now
        if self.failing_since is None:
            self.failing_since = now
        same = f"{problem.code} {problem.reason} {problem.fix}"  # the same cause, whichever object
        failing_for = now - self.failing_since
        if failing_for >= self.grace_s:
            due = self._error_at is None or now - self._error_at >= self.repeat_s or same != self._error_text
            level = logging.ERROR if due else logging.DEBUG
            if due:
                self._error_at, self._error_text = now, same
        else:
            level = logging.WARNING if same != self._warned else logging.DEBUG
        self._warned = same
        log.log(level, msg, extra={"fields": {**fields, "error": str(problem),
                                              "failing_for_s": round(failing_for, 1)}})
        return problem

    def ok(self) -> None:
        """It worked: no longer a problem."""
        if self.failing_since is not None:
            log.info(f"{self.what} works again", extra={"fields": {
                "failures": self.failures, "failed_for_s": round(self._clock() - self.failing_since, 1)}})
        self.failing_since, self.failures, self._warned, self._error_at, self._error_text = None, 0, "", None, ""


@dataclass(frozen=True)
class Kind:
    name: str  # our name for it, also the informer's
    plural: str
    group: str = ""  # "" for core objects
    version: str = "v1"
    namespaced: bool = True
    # Another project's kind (MetalLB's): when its CRD is not installed the kind simply has no
    # objects, instead of holding every informer's first sync (and with it all programming) back.
    optional: bool = False
    namespace: str | None = None  # watched in this namespace only (Secrets), else cluster-wide
    # A 403 is "no objects" (retried), not a failure that holds the first sync back: Secrets that
    # only a BGPPeer's passwordSecret needs; the peer names the missing permission.
    forbidden_ok: bool = False

    @property
    def custom(self) -> bool:
        return self.group not in ("", "discovery.k8s.io")


SERVICES = Kind("services", "services")
ENDPOINTSLICES = Kind("endpointslices", "endpointslices", "discovery.k8s.io")
NODES = Kind("nodes", "nodes", namespaced=False)
NAMESPACES = Kind("namespaces", "namespaces", namespaced=False)
IPPOOLS = Kind("ippools", "ippools", GROUP, VERSION, namespaced=False)
L4LBS = Kind("l4lbs", "l4lbs", GROUP, VERSION)
IPADDRESSPOOLS = Kind("ipaddresspools", "ipaddresspools", METALLB, "v1beta1", optional=True)
WATCHED = (SERVICES, ENDPOINTSLICES, NODES, NAMESPACES, IPPOOLS, L4LBS, IPADDRESSPOOLS)


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
        if kind.plural == "secrets":
            return await self._core.list_namespaced_secret(kind.namespace, **kw)
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
        body = await _json(await self._call(kind), Request("list", kind.plural, kind.group, kind.namespace))
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    async def watch(self, kind: Kind, resource_version: str, timeout_s: int) -> AsyncIterator[tuple[str, Obj]]:
        """(type, object) from `resource_version` on, BOOKMARKs included, until the server ends the
        stream (after `timeout_s`, or when the connection drops). Raises Gone on 410."""
        request = Request("watch", kind.plural, kind.group, kind.namespace)
        resp = await self._call(kind, watch=True, resource_version=resource_version,
                                allow_watch_bookmarks=True, timeout_seconds=timeout_s,
                                _request_timeout=timeout_s + 30)
        if resp.status == 410:
            resp.close()
            raise Gone("410 Gone")
        if not 200 <= resp.status <= 299:
            await _json(resp, request)  # raises with the server's message
        try:
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise Gone(str(status.get("message")))
                    raise WatchError(status, request)
                yield str(event["type"]), event["object"]
        finally:
            resp.close()

    # -- writes --------------------------------------------------------------------------------

    async def patch_service(self, namespace: str, name: str, body: Obj, status: bool = False) -> Obj:
        fn = self._core.patch_namespaced_service_status if status else self._core.patch_namespaced_service
        resp = await fn(name, namespace, body, _content_type=MERGE, _preload_content=False)
        return await _json(resp, Request("patch", "services/status" if status else "services", "", namespace, name))

    async def patch_l4lb_status(self, namespace: str, name: str, body: Obj) -> Obj:
        return await _json(await self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, L4LBS.plural, name, body, _content_type=MERGE, _preload_content=False),
            Request("patch", "l4lbs/status", GROUP, namespace, name))

    async def create_event(self, namespace: str, body: Obj) -> None:
        await _json(await self._core.create_namespaced_event(namespace, body, _preload_content=False),
                    Request("create", "events", "", namespace))

    async def read_secret(self, namespace: str, name: str) -> Obj:
        return await _json(await self._core.read_namespaced_secret(name, namespace, _preload_content=False),
                           Request("get", "secrets", "", namespace, name))

    async def read_lease(self, namespace: str, name: str) -> Obj | None:
        """The Lease, or None when there is none (also when its namespace is missing: the API server
        answers a read there with a plain 404; the create that follows names the namespace)."""
        try:
            return await _json(await self._coord.read_namespaced_lease(name, namespace, _preload_content=False),
                               Request("get", "leases", LEASE_GROUP, namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def list_leases(self, namespace: str) -> builtins.list[Obj]:
        """Every Lease of the namespace (the L2 election reads them all in one request per tick)."""
        body = await _json(await self._coord.list_namespaced_lease(namespace, _preload_content=False),
                           Request("list", "leases", LEASE_GROUP, namespace))
        return list(body.get("items") or [])

    async def create_lease(self, namespace: str, body: Obj) -> Obj:
        """POST: 409 AlreadyExists when someone else created it first, 404 when the namespace is missing."""
        name = (body.get("metadata") or {}).get("name")
        return await _json(await self._coord.create_namespaced_lease(namespace, body, _preload_content=False),
                           Request("create", "leases", LEASE_GROUP, namespace, name))

    async def replace_lease(self, namespace: str, name: str, body: Obj) -> Obj:
        """PUT with the resourceVersion in `body`: 409 (ApiException) when someone else wrote first."""
        return await _json(await self._coord.replace_namespaced_lease(name, namespace, body, _preload_content=False),
                           Request("update", "leases", LEASE_GROUP, namespace, name))


async def _json(resp: Any, request: Request | None = None) -> Obj:
    """The body of an unpreloaded response; ApiError (an ApiException) for a non-2xx status, with the
    server's Status and `request` (kubernetes_asyncio only raises by itself when it preloads)."""
    try:
        data = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status <= 299:
        status = _status_of(data)
        if status.get("kind") != "Status":  # not a Status object (a proxy's page, plain text)
            status = {"message": status.get("message") or ""}
        status.setdefault("reason", getattr(resp, "reason", None) or "")
        raise ApiError(resp.status, {**status, "code": resp.status}, request)
    return json.loads(data)  # type: ignore[no-any-return]
