"""HTTP in front of `Store`: the URL layout, verbs and watch streams of the kube-apiserver.

Served paths (``{g}/{v}`` for API groups, ``v1`` for the core group)::

    /api/v1[/namespaces/{ns}]/{plural}[/{name}[/status]]
    /apis/{g}/{v}[/namespaces/{ns}]/{plural}[/{name}[/status]]

Verbs: GET (one object, a list, or ``?watch=true``), POST, PUT, PATCH (merge and strategic merge
patches are both applied as JSON merge patches), DELETE. Errors are `Status` objects, with the
real server's reasons, messages and details (see store.py: missing namespaces, CRD schemas, 409,
429 while a new CRD's storage initialises). ``?fieldValidation=`` Strict (default), Warn or Ignore.

Watch: ``resourceVersion`` (absent or "0": the current objects as ADDED first), ``timeoutSeconds``
(the server ends the stream, as the real one does), ``allowWatchBookmarks=true`` (a BOOKMARK with the
latest version every `bookmark_interval` seconds). A too-old version gets HTTP 200 with one ERROR
event carrying a 410 Status, which is what the real server sends. `drop_watches()` ends every open
stream at once, like a load balancer in front of the API server resetting connections.

No authentication and no RBAC: it listens on loopback only, for tests. `forbid()` makes chosen
requests answer the real server's 403, to test what a user with a too small Role sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from tests.k8s_standin.store import ApiError, Obj, Resource, Store, Watcher

MAX_WATCH_S = 1800
DENIED_USER = "system:serviceaccount:gatelb-system:gatelb"


def _verb(method: str, name: str | None, watch: bool) -> str:
    if method == "GET":
        return "get" if name else ("watch" if watch else "list")
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


def _parse(path: str, store: Store) -> tuple[Resource, str | None, str | None, str | None]:
    """(resource, namespace, name, subresource) of a request path; raises 404 otherwise."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        gv, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
    res = store.resources.get(f"{gv}/{rest[0]}")
    if res is None or (namespace is not None and not res.namespaced):
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return res, namespace, name, sub


class StandinServer:
    def __init__(self, history: int = 1000, bookmark_interval: float = 1.0, crds: bool = True,
                 crd_init_s: float = 0.5) -> None:
        self.store = Store(history, crds=crds, crd_init_s=crd_init_s)
        self.bookmark_interval = bookmark_interval
        self.forbidden: list[tuple[str, str, str, str | None]] = []  # (verb, resource, group, namespace)
        self.requests: list[tuple[str, str]] = []  # (method, path?query): what clients asked
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Event] = set()
        self._open: asyncio.Event | None = None  # cleared: new watches wait (pause_watches)
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def drop_watches(self) -> None:
        for stop in list(self._streams):
            stop.set()

    def pause_watches(self) -> None:
        """End every open watch and hold new ones until resume_watches(), like an API server
        restart: what happens meanwhile (e.g. a compaction) is seen when clients come back."""
        self._gate().clear()
        self.drop_watches()

    def resume_watches(self) -> None:
        self._gate().set()

    def _gate(self) -> asyncio.Event:
        if self._open is None:
            self._open = asyncio.Event()
            self._open.set()
        return self._open

    def forbid(self, verb: str, resource: str, group: str = "", namespace: str | None = None) -> None:
        """Answer `verb` on `resource` ("services/status" for a subresource) of API `group`, in
        `namespace` (None: everywhere) with the real server's 403, as for a ServiceAccount whose
        Role lacks that rule."""
        self.forbidden.append((verb, resource, group, namespace))

    def allow_all(self) -> None:
        self.forbidden.clear()

    def _check_access(self, verb: str, res: Resource, namespace: str | None, name: str | None,
                      sub: str | None) -> None:
        resource = f"{res.plural}/{sub}" if sub else res.plural
        for v, r, g, ns in self.forbidden:
            if v == verb and r == resource and g == res.group and (ns is None or ns == namespace):
                what = f'{res.plural}.{res.group}' if res.group else res.plural
                what = f'{what} "{name}"' if name else what
                scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
                raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{DENIED_USER}" cannot {verb} '
                                                 f'resource "{resource}" in API group "{res.group}"{scope}',
                               {"name": name, "group": res.group, "kind": res.plural})

    def kubeconfig(self) -> dict[str, Any]:
        """A kubeconfig (as a dict) pointing at this server."""
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": "standin"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
        }

    # -- handlers -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        try:
            res, namespace, name, sub = _parse(request.path, self.store)
            watch = request.method == "GET" and name is None and request.query.get("watch", "").lower() in ("true", "1")
            self._check_access(_verb(request.method, name, watch), res, namespace, name, sub)
            self.store.ready(res)
            if watch:
                return await self._watch(request, res, namespace)
            body = await self._dispatch(request, res, namespace, name, sub)
            headers = {"Warning": ", ".join('299 - "{}"'.format(w.replace('"', '\\"')) for w in self.store.warnings)} \
                if request.method in ("POST", "PUT", "PATCH") and self.store.warnings else None
            return web.json_response(body, headers=headers, status=201 if request.method == "POST" else 200)
        except ApiError as err:
            return web.json_response(err.status(), status=err.code, headers=err.headers)

    async def _dispatch(self, request: web.Request, res: Resource, namespace: str | None,
                        name: str | None, sub: str | None) -> Obj:
        store, method, ns = self.store, request.method, namespace or ""
        validation = request.query.get("fieldValidation", "Strict")
        if validation not in ("Strict", "Warn", "Ignore"):
            raise ApiError(400, "BadRequest", f"fieldValidation must be Ignore, Warn or Strict, not {validation!r}")
        if method == "GET" and name is None:
            items, rv = store.list(res, namespace)
            return {"kind": f"{res.kind}List", "apiVersion": res.group_version,
                    "metadata": {"resourceVersion": str(rv)}, "items": items}
        if method == "GET":
            assert name is not None
            return store.get(res, ns, name)
        if method == "POST" and name is None:
            if res.namespaced and namespace is None:
                raise ApiError(405, "MethodNotAllowed", "create needs a namespace in the path")
            return store.create(res, ns, await self._body(request), validation)
        if name is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection is not supported")
        if method == "PUT":
            return store.update(res, ns, name, await self._body(request), sub, validation)
        if method == "PATCH":
            kind = request.content_type
            if kind not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                raise ApiError(415, "UnsupportedMediaType", f"the stand-in does not apply {kind} patches")
            return store.patch(res, ns, name, await self._body(request), sub, validation)
        if method == "DELETE":
            return store.delete(res, ns, name)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    @staticmethod
    async def _body(request: web.Request) -> Obj:
        try:
            body = json.loads(await request.read())
        except ValueError as err:
            raise ApiError(400, "BadRequest", f"body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "body is not a JSON object")
        return body

    async def _watch(self, request: web.Request, res: Resource, namespace: str | None) -> web.StreamResponse:
        q = request.query
        since_text = q.get("resourceVersion", "")
        since = None if since_text in ("", "0") else int(since_text)
        timeout = min(float(q.get("timeoutSeconds", MAX_WATCH_S)), MAX_WATCH_S)
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        await self._gate().wait()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            watcher, first = self.store.watch(res, namespace, since)
        except ApiError as err:  # 410 arrives as an ERROR event in a 200 stream
            await self._send(resp, {"type": "ERROR", "object": err.status()})
            return resp
        stop = asyncio.Event()
        self._streams.add(stop)
        try:
            for ev in first:
                await self._send(resp, {"type": ev.type, "object": ev.obj})
            await self._follow(resp, res, watcher, stop, timeout, bookmarks)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(watcher)
            self._streams.discard(stop)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    async def _follow(self, resp: web.StreamResponse, res: Resource, watcher: Watcher, stop: asyncio.Event,
                      timeout: float, bookmarks: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        while not stop.is_set():
            now = loop.time()
            wait = min(deadline, next_bookmark if bookmarks else deadline) - now
            if now >= deadline:
                return
            get = asyncio.ensure_future(watcher.queue.get())
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({get, stopped}, timeout=max(wait, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            for f in (get, stopped):
                if f not in done:
                    f.cancel()
            if get in done and (ev := get.result()) is not None:
                await self._send(resp, {"type": ev.type, "object": ev.obj})
            elif bookmarks and loop.time() >= next_bookmark:
                next_bookmark = loop.time() + self.bookmark_interval
                await self._send(resp, {"type": "BOOKMARK", "object": {
                    "kind": res.kind, "apiVersion": res.group_version,
                    "metadata": {"resourceVersion": str(self.store.rv)}}})

    @staticmethod
    async def _send(resp: web.StreamResponse, event: Obj) -> None:
        await resp.write(json.dumps(event).encode() + b"\n")
