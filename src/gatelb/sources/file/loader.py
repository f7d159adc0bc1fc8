"""Parsing and validation of the file source: YAML/JSON text of IPPool and L4LB documents -> model.

`load_text` is the one function that turns raw input into the validated model. It collects every
problem of every document before raising, so the user can fix them all in one go. `collect_text`
does the per-document part only (no cross-object checks), for the directory source, which runs
those checks incrementally across files (sources/file/index.py).

`CachedLoader` adds a per-document cache, for `gatelb run` on a file of 10,000 documents:
re-reading it costs about two seconds of YAML parsing and validation; a change usually touches
one document. The file is split into its YAML documents as text (a line `---` always starts a
document: block scalars cannot contain one at column 0), and documents whose text is unchanged
reuse the objects validated last time. Only documents of a configuration that loaded without
errors are cached. Anything unusual (directives, content on the `---` line, JSON input) simply
takes the uncached path.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from gatelb.model import (
    Affinity,
    Algorithm,
    Backend,
    CheckType,
    ConfigObject,
    DesiredState,
    HealthCheck,
    IPPool,
    LBState,
    LoadBalancer,
    NatMode,
    NoBackendAction,
    ObjectRef,
    Protocol,
    ValidationError,
    ValidationErrors,
)
from gatelb.sources import errors as pyd_errors
from gatelb.sources import schema_announce
from gatelb.sources.schema import (
    DOCUMENTS,
    BackendSpec,
    CheckSpec,
    IPPoolDocument,
    L4LBDocument,
    L4LBSpec,
    show,
)
from gatelb.sources.schema_dns import parse_dns_provider
from gatelb.validate import check_load_balancer, check_state

KINDS = " or ".join(DOCUMENTS)
_HTTP_ONLY = ("request_path", "host", "expected_statuses")
_UDP_ONLY = ("payload", "expect")

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """Safe loader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: let the base class report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        result: dict[Any, Any] = super().construct_mapping(node, deep)
        return result


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _parse_json(text: str, source_name: str) -> list[Any]:
    """JSON input: one document, an array of documents, or a `kind: List` (kubectl's -o json).

    JSON is valid YAML, so PyYAML would read it too, but the json module is about ten times
    faster, which matters for generated configurations of thousands of load balancers.
    """
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        where = f"{source_name} line {exc.lineno}, column {exc.colno}"
        err = ValidationError("document", "1", "", f"malformed JSON at {where}: {exc.msg}")
        raise ValidationErrors([err]) from exc
    except _DuplicateKey as exc:
        err = ValidationError("document", "1", "", f"malformed JSON in {source_name}: duplicate key {exc.args[0]!r}")
        raise ValidationErrors([err]) from exc
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("kind") == "List" and isinstance(data.get("items"), list):
        return list(data["items"])
    return [data]


def _parse(text: str, source_name: str) -> list[Any]:
    if text.lstrip()[:1] in ("{", "["):
        return _parse_json(text, source_name)
    return _parse_yaml(text, source_name)


@dataclass(frozen=True)
class Broken:
    """A document that is not YAML, in the list of documents (add_document reports it), so that
    the other documents of the file are still checked and every error comes in one pass."""

    error: ValidationError


def _yaml_error(exc: yaml.YAMLError, source_name: str, number: int, line_offset: int = 0) -> ValidationError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source_name} line {mark.line + 1 + line_offset}, column {mark.column + 1}" if mark else source_name
    what = getattr(exc, "problem", None) or str(exc)
    return ValidationError("document", str(number), "", f"malformed YAML at {where}: {what}")


def _parse_yaml(text: str, source_name: str) -> list[Any]:
    documents: list[Any] = []
    try:
        documents.extend(yaml.load_all(text, Loader=Loader))  # Loader is a SafeLoader
    except yaml.YAMLError as exc:
        chunks = split_documents(text)
        if chunks is None:  # cannot be split safely: the first error is all we can say
            raise ValidationErrors([_yaml_error(exc, source_name, len(documents) + 1)]) from exc
        return _parse_chunks(text, chunks, source_name)
    return documents


def _parse_chunks(text: str, chunks: list[str], source_name: str) -> list[Any]:
    """Each `---` document on its own: the broken ones become Broken, the others are checked."""
    out: list[Any] = []
    position = 0
    for number, chunk in enumerate(chunks, start=1):
        start = text.find(chunk, position)
        position = max(start, position) + len(chunk)
        try:
            out.append(yaml.load(chunk, Loader=Loader))  # Loader is a SafeLoader
        except yaml.YAMLError as exc:
            out.append(Broken(_yaml_error(exc, source_name, number, text.count("\n", 0, max(start, 0)))))
    return out


# --- raw documents -> model -------------------------------------------------------------------


@dataclass
class Collected:
    pools: dict[str, IPPool] = field(default_factory=dict)
    lbs: dict[str, LoadBalancer] = field(default_factory=dict)
    config: dict[ObjectRef, ConfigObject] = field(default_factory=dict)  # CONFIG_KINDS
    defined_in: dict[tuple[str, str], int] = field(default_factory=dict)
    broken_pools: set[str] = field(default_factory=set)
    errors: list[ValidationError] = field(default_factory=list)


def label(raw: dict[Any, Any], number: int) -> tuple[str, str]:
    """How errors name a document: `L4LB web` when it says so, else `document 3`."""
    kind, metadata = raw.get("kind"), raw.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if (kind in DOCUMENTS or kind in CONFIG_KINDS) and isinstance(name, str) and name:
        return kind, name
    return "document", str(number)


# The configuration kinds that are neither IPPool nor L4LB (announcements, DNS providers...):
# kind -> a parser of the raw document that returns the model object, or None and the problems
# as (field path, text). Each parser lives in the sources layer next to its pydantic schema.
ConfigParser = Callable[[dict[str, Any]], tuple[ConfigObject | None, list[tuple[str, str]]]]
CONFIG_KINDS: dict[str, ConfigParser] = {"DNSProvider": parse_dns_provider}
CONFIG_KINDS.update(schema_announce.PARSERS)  # BGPPeer, BFDProfile, BGP/L2Advertisement, GatewayGroup


def _kind_problem(raw: Any) -> tuple[str, str] | None:
    if not isinstance(raw, dict):
        return "", f"expected a mapping with apiVersion, kind, metadata and spec, got {show(raw)}"
    if "kind" not in raw:
        return "kind", f"required ({kinds_text()})"
    if raw["kind"] not in DOCUMENTS and raw["kind"] not in CONFIG_KINDS:
        return "kind", f"unknown kind {show(raw['kind'])} (expected {kinds_text()})"
    return None


def kinds_text() -> str:
    kinds = [*DOCUMENTS, *sorted(CONFIG_KINDS)]
    return " or ".join(kinds) if len(kinds) < 3 else f"one of {', '.join(kinds)}"


def _pool(doc: IPPoolDocument) -> IPPool:
    spec = doc.spec
    return IPPool(doc.metadata.name, tuple(spec.addresses), spec.auto_assign, spec.avoid_buggy_ips)


def _backends(spec: L4LBSpec) -> tuple[Backend, ...]:
    return tuple(
        Backend(b.address, b.port, b.weight, b.drain) if isinstance(b, BackendSpec) else Backend(*b)
        for b in spec.backend
    )


def _family(spec: L4LBSpec, backends: tuple[Backend, ...], problems: list[tuple[str, str]]) -> int:
    front = spec.frontend
    wanted = int(front.ip_family[-1]) if front.ip_family else None
    if front.ip is not None:
        if wanted is not None and wanted != front.ip.version:
            problems.append(
                ("spec.frontend.ipFamily", f"{front.ip_family} does not match spec.frontend.ip {front.ip}")
            )
        return front.ip.version
    if wanted is not None:
        return wanted
    # No address and no family given: the backends tell; with none either, IPv4.
    return backends[0].address.version if backends else 4


def _affinity(spec: L4LBSpec, problems: list[tuple[str, str]]) -> Affinity | None:
    sa = spec.session_affinity
    if sa is None:
        return None
    if "type" not in sa.model_fields_set and "timeout_seconds" in sa.model_fields_set:
        # Without this, a lone timeoutSeconds would silently mean "no affinity".
        problems.append(("spec.sessionAffinity.type", "required with timeoutSeconds (ClientIP or None)"))
    return Affinity(sa.timeout_seconds) if sa.type == "ClientIP" else None


def _check(check: CheckSpec | None, protocol: Protocol, problems: list[tuple[str, str]]) -> HealthCheck:
    default_type = CheckType.TCP if protocol is Protocol.TCP else CheckType.NONE
    if check is None:
        return HealthCheck(type=default_type)
    ctype = CheckType(check.type) if check.type else default_type
    aliases = {"request_path": "requestPath", "expected_statuses": "expectedStatuses"}
    for names, needs in ((_HTTP_ONLY, CheckType.HTTP), (_UDP_ONLY, CheckType.UDP)):
        for name in names:
            if name in check.model_fields_set and ctype is not needs:
                path = f"spec.check.{aliases.get(name, name)}"
                problems.append(
                    (path, f"only used by {needs.value} checks (spec.check.type is {ctype.value})")
                )
    if check.request_path is not None and not check.request_path.startswith("/"):
        problems.append(("spec.check.requestPath", f"{check.request_path!r} must start with /"))
    # Both go onto the wire in the request: a CR/LF would inject headers (or a second request).
    if check.request_path is not None and any(c.isspace() or not c.isprintable() for c in check.request_path):
        problems.append(("spec.check.requestPath",
                         f"{check.request_path!r} contains whitespace or control characters (encode them: %20)"))
    if check.host is not None and (not check.host or any(c.isspace() or not c.isprintable() for c in check.host)):
        problems.append(("spec.check.host", f"{check.host!r} is not a host name (whitespace or control characters)"))
    d = HealthCheck()
    return HealthCheck(
        type=ctype,
        port=check.port,
        interval_ms=check.interval if check.interval is not None else d.interval_ms,
        timeout_ms=check.timeout if check.timeout is not None else d.timeout_ms,
        rise=check.rise if check.rise is not None else d.rise,
        fall=check.fall if check.fall is not None else d.fall,
        request_path=check.request_path if check.request_path is not None else d.request_path,
        host=check.host,
        expected_statuses=check.expected_statuses or d.expected_statuses,
        payload=check.payload,
        expect=check.expect,
    )


def _load_balancer(doc: L4LBDocument) -> tuple[LoadBalancer, list[tuple[str, str]]]:
    spec = doc.spec
    problems: list[tuple[str, str]] = []
    protocol = Protocol(spec.protocol)
    backends = _backends(spec)
    lb = LoadBalancer(
        name=doc.metadata.name,
        port=spec.frontend.port,
        protocol=protocol,
        frontend_ip=spec.frontend.ip,
        pool=spec.pool,
        backends=backends,
        algorithm=Algorithm(spec.algorithm),
        affinity=_affinity(spec, problems),
        source_ranges=tuple(spec.source_ranges),
        nat=NatMode(spec.nat),
        state=LBState(spec.state),
        check=_check(spec.check, protocol, problems),
        no_backend=NoBackendAction(spec.no_backend),
        family=_family(spec, backends, problems),
        hostnames=tuple(dict.fromkeys(spec.hostnames)),
    )
    return lb, problems


def add_document(raw: Any, number: int, out: Collected) -> None:
    if isinstance(raw, Broken):
        out.errors.append(raw.error)
        return
    bad_kind = _kind_problem(raw)
    if bad_kind is not None:
        out.errors.append(ValidationError("document", str(number), *bad_kind))
        return
    kind, name = label(raw, number)
    fail = out.errors.append
    first = out.defined_in.setdefault((kind, name), number)
    if first != number and kind != "document":
        fail(
            ValidationError(
                kind, name, "metadata.name", f"{kind} {name} is already defined in document {first}"
            )
        )
    if raw["kind"] in CONFIG_KINDS:
        obj, problems = CONFIG_KINDS[raw["kind"]](raw)
        for path, text in problems:
            fail(ValidationError(kind, name, path, text))
        if obj is not None and not problems and first == number:
            out.config[obj.ref] = obj
        return
    try:
        doc = DOCUMENTS[raw["kind"]].model_validate(raw)
    except pydantic.ValidationError as exc:
        for path, text in pyd_errors.translate(exc):
            fail(ValidationError(kind, name, path, text))
        if kind == "IPPool":
            out.broken_pools.add(name)
        return
    if first != number:
        return
    if isinstance(doc, IPPoolDocument):
        out.pools[name] = _pool(doc)
        return
    lb, problems = _load_balancer(doc)
    for path, text in problems:
        fail(ValidationError(kind, name, path, text))
    if not problems:
        out.lbs[name] = lb


def add_valid(obj: IPPool | LoadBalancer, number: int, out: Collected) -> None:
    """Record an object that validated before (CachedLoader), with add_document's
    bookkeeping of names, so duplicates are still found."""
    kind = "IPPool" if isinstance(obj, IPPool) else "L4LB"
    first = out.defined_in.setdefault((kind, obj.name), number)
    if first != number:
        out.errors.append(ValidationError(
            kind, obj.name, "metadata.name", f"{kind} {obj.name} is already defined in document {first}"))
        return
    if isinstance(obj, IPPool):
        out.pools[obj.name] = obj
    else:
        out.lbs[obj.name] = obj


def desired_from(out: Collected) -> DesiredState:
    return DesiredState(
        pools=tuple(out.pools[n] for n in sorted(out.pools)),
        load_balancers=tuple(out.lbs[n] for n in sorted(out.lbs)),
    )


def collect_text(text: str, source_name: str = "<input>") -> Collected:
    """Parse and validate every document on its own (fields, one L4LB's consistency, names
    defined twice in this text), without the checks across objects (sources/file/index.py)."""
    out = Collected()
    try:
        documents = _parse(text, source_name)
    except ValidationErrors as exc:
        out.errors.extend(exc.errors)
        return out
    for number, raw in enumerate(documents, start=1):
        if raw is not None:
            add_document(raw, number, out)
    for name in sorted(out.lbs):
        out.errors += check_load_balancer(out.lbs[name])
    return out


def load_text(text: str, source_name: str = "<input>") -> DesiredState:
    """Parse and validate; raise ValidationErrors listing every problem found."""
    out = Collected()
    for number, raw in enumerate(_parse(text, source_name), start=1):
        if raw is not None:  # an empty document (e.g. a trailing `---`)
            add_document(raw, number, out)
    desired = desired_from(out)
    errors = out.errors + check_state(desired, known_pools=out.broken_pools)
    if errors:
        raise ValidationErrors(errors)
    return desired


def load_file(path: str | os.PathLike[str]) -> DesiredState:
    """Read a file and `load_text` it. OSError (missing, unreadable) is left to the caller."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationErrors(
            [ValidationError("file", str(p), "", f"not UTF-8 text ({exc.reason})")]
        ) from exc
    return load_text(text, str(p))


# --- per-document cache ----------------------------------------------------------------------

# A line that is only a document marker (`---` or `...`, maybe with a comment).
_MARKER_LINE = re.compile(r"^(?:---|\.\.\.)[ \t]*(?:#[^\n]*)?(?:\n|$)", re.MULTILINE)
# Directives, or content on the marker line (`--- !tag`, `--- {a: 1}`): leave those to the parser.
_UNSAFE = re.compile(r"^(?:%|---[ \t]*[^ \t\n#])", re.MULTILINE)


# Anything but bare `---` separators: take the careful (regex) path.
_UNUSUAL = ("\n%", "\n--- ", "\n---\t", "\n---#", "\n...", "\r")


def split_documents(text: str) -> list[str] | None:
    """The documents of a YAML stream as text, or None when splitting by lines is not safe."""
    if not text.startswith(("%", "...", "--- ")) and not any(m in text for m in _UNUSUAL):
        # The common shape (`---` lines between documents): str.split is ten times faster than
        # the regexes below on a 10,000-document file.
        body = text[4:] if text.startswith("---\n") else text
        if body.rstrip().endswith("\n---"):
            body = body.rstrip()[: -len("\n---")] + "\n"
        chunks = body.split("\n---\n")
        return [c for i, c in enumerate(chunks) if i > 0 or _has_content(c)]
    if _UNSAFE.search(text):
        return None
    chunks = _MARKER_LINE.split(text)
    # Text before the first marker that holds no content is not a document.
    return [c for i, c in enumerate(chunks) if i > 0 or _has_content(c)]


def _has_content(chunk: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in chunk.splitlines())


class CachedLoader:
    def __init__(self) -> None:
        self._objects: dict[str, IPPool | LoadBalancer] = {}
        self.hits = 0
        self.misses = 0

    def load(self, text: str, source_name: str) -> DesiredState:
        """Like load_text (same result, same errors), faster for small changes."""
        done = self._collect(text, source_name)
        if done is None:
            return load_text(text, source_name)
        out, fresh_lbs, parsed = done
        desired = desired_from(out)
        errors = list(out.errors)
        for lb in fresh_lbs:
            errors += check_load_balancer(lb)  # cached ones passed this already
        errors += check_state(desired, known_pools=out.broken_pools, per_object=False)
        if errors:
            raise ValidationErrors(errors)
        self._objects = parsed
        return desired

    def collect(self, text: str, source_name: str) -> Collected:
        """Like collect_text (the same objects and errors, in the same order for one document),
        faster for small changes. Documents are cached when the text had no problem of its own."""
        done = self._collect(text, source_name)
        if done is None:
            self._objects = {}
            return collect_text(text, source_name)
        out, fresh_lbs, parsed = done
        for lb in fresh_lbs:
            out.errors += check_load_balancer(lb)
        self._objects = parsed if not out.errors else {}
        return out

    @property
    def documents(self) -> int:
        """How many documents the cache holds."""
        return len(self._objects)

    def _collect(
        self, text: str, source_name: str
    ) -> tuple[Collected, list[LoadBalancer], dict[str, IPPool | LoadBalancer]] | None:
        """The documents, reusing cached ones; None when the text must take the plain path."""
        chunks = None if text.lstrip()[:1] in ("{", "[") else split_documents(text)
        if chunks is None:
            return None
        out = Collected()
        fresh_lbs: list[LoadBalancer] = []
        parsed: dict[str, IPPool | LoadBalancer] = {}
        self.hits = self.misses = 0
        for number, chunk in enumerate(chunks, start=1):
            cached = self._objects.get(chunk)
            if cached is not None:
                self.hits += 1
                add_valid(cached, number, out)
                parsed[chunk] = cached
                continue
            self.misses += 1
            try:
                raw = yaml.load(chunk, Loader=Loader)  # a SafeLoader subclass
            except yaml.YAMLError:
                return None  # the plain path gives the precise message and document number
            if raw is None:
                continue
            add_document(raw, number, out)
            obj = _added_by(raw, number, out)
            if obj is not None:
                parsed[chunk] = obj
                if isinstance(obj, LoadBalancer):
                    fresh_lbs.append(obj)
        return out, fresh_lbs, parsed


def _added_by(raw: object, number: int, out: Collected) -> IPPool | LoadBalancer | None:
    """The object document `number` just added, if it added one."""
    if not isinstance(raw, dict):
        return None
    kind, name = label(raw, number)
    if out.defined_in.get((kind, name)) != number:
        return None
    if kind == "IPPool":
        return out.pools.get(name)
    # A configuration kind (DNSProvider web) must not cache the L4LB web under its text.
    return out.lbs.get(name) if kind == "L4LB" else None

