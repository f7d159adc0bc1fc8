"""The announcement kinds in a cluster: gatelb.io BFDProfile, BGPPeer, BGPAdvertisement,
L2Advertisement, and MetalLB's metallb.io objects of the same kinds, as the file loader's model
objects. Pure: raw objects in, model objects or problems out.

Each object goes through the standalone parser (sources.schema_announce, the file loader's
CONFIG_KINDS) after the Kubernetes-only fields are worked out here, against the cluster:

- `nodeSelectors` (MetalLB's; a list of label selectors, any may match): the names of the Node
  objects whose labels match become `nodes`, so the gateway started with `--node NAME` peers or
  announces when the Node NAME matches. A BGPPeer that matches no node keeps existing (an
  advertisement may name it) with a `nodes` entry no node has; an advertisement that matches
  none applies nowhere and is left out. Node label changes re-evaluate every object.
- `ipAddressPoolSelectors`: the pools (IPPool and MetalLB IPAddressPool objects) whose labels
  match are added to `ipAddressPools`; matching none with no `ipAddressPools` means no pool (not
  every pool, which is what an empty list says), so the advertisement is left out.
- `passwordSecret` (BGPPeer, MetalLB's meaning): a Secret of type kubernetes.io/basic-auth whose
  key `password` is the TCP MD5 password, in the peer's namespace (metallb-system for MetalLB's
  peers; gatelb.io peers are cluster-scoped, so gatelb's own namespace, `--lease-namespace`). A
  missing Secret, another type or a missing key is an error on the peer naming the field.
- Fields gatelb does not honour are rejected by name, never ignored: a
  non-empty `vrf`, `dynamicASN`, `interface`, `enableGracefulRestart: true`,
  `dualStackAddressFamily: true` (and any field the
  schema does not know, as unknown). `disableMP` is accepted with either value: gatelb announces
  IPv4 prefixes to IPv4 peers and IPv6 to IPv6 peers only (what `disableMP: true` does).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from gatelb.ipam.services import Selector
from gatelb.model import BGPAdvertisement, BGPPeer, ConfigObject, L2Advertisement
from gatelb.sources import errors as pyd_errors
from gatelb.sources.file.loader import ConfigParser
from gatelb.sources.kubernetes.api import GROUP, METALLB, VERSION, Kind
from gatelb.sources.schema import LabelSelectorSpec, show

Obj = dict[str, Any]
Problems = list[tuple[str, str]]

NO_NODE = "(no node matches spec.nodeSelectors)"  # not a valid node name: no --node equals it

# Informer kind name -> (what to watch, the document kind). MetalLB's BGPPeer is read as v1beta2
# (its storage version since 0.14; the API server converts v1beta1 objects), the others as v1beta1.
KINDS: dict[str, tuple[Kind, str]] = {
    "dnsproviders": (Kind("dnsproviders", "dnsproviders", GROUP, VERSION, namespaced=False), "DNSProvider"),
    "bfdprofiles": (Kind("bfdprofiles", "bfdprofiles", GROUP, VERSION, namespaced=False), "BFDProfile"),
    "bgppeers": (Kind("bgppeers", "bgppeers", GROUP, VERSION, namespaced=False), "BGPPeer"),
    "bgpadvertisements": (Kind("bgpadvertisements", "bgpadvertisements", GROUP, VERSION, namespaced=False),
                          "BGPAdvertisement"),
    "l2advertisements": (Kind("l2advertisements", "l2advertisements", GROUP, VERSION, namespaced=False),
                         "L2Advertisement"),
    "metallb.bfdprofiles": (Kind("metallb.bfdprofiles", "bfdprofiles", METALLB, "v1beta1", optional=True),
                            "BFDProfile"),
    "metallb.bgppeers": (Kind("metallb.bgppeers", "bgppeers", METALLB, "v1beta2", optional=True), "BGPPeer"),
    "metallb.bgpadvertisements": (Kind("metallb.bgpadvertisements", "bgpadvertisements", METALLB, "v1beta1",
                                       optional=True), "BGPAdvertisement"),
    "metallb.l2advertisements": (Kind("metallb.l2advertisements", "l2advertisements", METALLB, "v1beta1",
                                      optional=True), "L2Advertisement"),
}

_SELECTORS = pydantic.TypeAdapter(list[LabelSelectorSpec])


@dataclass(frozen=True)
class Context:
    """What the Kubernetes-only fields are evaluated against."""

    node_labels: Mapping[str, Mapping[str, str]]  # Node name -> labels
    pool_labels: Mapping[str, Mapping[str, str]]  # pool name (IPPool, IPAddressPool) -> labels
    secrets: Mapping[str, Obj] = dataclasses.field(default_factory=dict)  # "namespace/name" -> Secret
    namespace: str = "gatelb-system"  # where the Secrets of cluster-scoped (gatelb.io) peers are
    unreadable: Mapping[str, str] = dataclasses.field(default_factory=dict)  # namespace -> why Secrets are not read


@dataclass(frozen=True)
class Parsed:
    obj: ConfigObject | None  # None: invalid (problems), or applies nowhere (left_out)
    problems: Problems
    left_out: str = ""  # why a valid object gives nothing


def _selectors(spec: Obj, field: str, problems: Problems) -> list[Selector] | None:
    """The selectors of `field` (popped from spec), or None when absent or empty."""
    raw = spec.pop(field, None)
    if raw is None or raw == []:
        return None
    try:
        parsed = _SELECTORS.validate_python(raw)
    except pydantic.ValidationError as exc:
        for path, text in pyd_errors.translate(exc):
            problems.append((f"spec.{field}{path if path.startswith('[') else '.' + path}", text))
        return None
    return [Selector(tuple(sorted(s.match_labels.items())),
                     tuple((e.key, e.operator, tuple(e.values)) for e in s.match_expressions)) for s in parsed]


def _matching(selectors: list[Selector], labels: Mapping[str, Mapping[str, str]]) -> tuple[str, ...]:
    return tuple(sorted(name for name, have in labels.items() if any(s.matches(have) for s in selectors)))


def _not_honoured(kind: str, spec: Obj, problems: Problems) -> None:
    """MetalLB fields gatelb does not act on: an error naming them (ignoring one would announce
    where the user said not to, or without the password the router wants)."""
    if kind == "BGPPeer":
        spec.pop("disableMP", None)  # see the module docstring
        if spec.get("dualStackAddressFamily") is False:  # MetalLB's default, and gatelb's behaviour
            del spec["dualStackAddressFamily"]
        if spec.get("enableGracefulRestart") is False:
            del spec["enableGracefulRestart"]
        if spec.get("vrf") == "":
            del spec["vrf"]
        why = {
            "vrf": "not supported: gatelb's FRR peers from the default VRF",
            "dynamicASN": "not supported: give spec.peerASN",
            "interface": "not supported: BGP unnumbered; give spec.peerAddress",
            "enableGracefulRestart": "not supported yet (BGP graceful restart)",
            "dualStackAddressFamily": "not supported: IPv4 prefixes go to IPv4 peers, IPv6 to IPv6 peers",
        }
        for name, text in why.items():
            if name in spec:
                value = spec.pop(name)
                problems.append((f"spec.{name}", text if isinstance(value, dict) else f"{show(value)}: {text}"))


BASIC_AUTH = "kubernetes.io/basic-auth"


def _password_secret(raw: Obj, spec: Obj, ctx: Context, problems: Problems) -> None:
    """spec.passwordSecret -> spec.password, from the Secret (MetalLB's semantics)."""
    ref = spec.pop("passwordSecret", None)
    if ref is None:
        return
    field = "spec.passwordSecret"
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not ref["name"]:
        problems.append((f"{field}.name", "a Secret name is required"))
        return
    namespace = (raw.get("metadata") or {}).get("namespace") or ctx.namespace
    if ref.get("namespace") not in (None, "", namespace):
        problems.append((f"{field}.namespace", f"{show(ref['namespace'])}: the Secret must be in the peer's "
                                                f"namespace {namespace}"))
        return
    if spec.get("password"):
        problems.append((field, "give spec.password or spec.passwordSecret, not both"))
        return
    where = f"{namespace}/{ref['name']}"
    secret = ctx.secrets.get(where)
    if secret is None:
        why = ctx.unreadable.get(namespace)
        problems.append((field, f"Secret {where} not found" + (f" (Secrets in {namespace} cannot be read: {why})"
                                                               if why else "")))
        return
    if secret.get("type") != BASIC_AUTH:
        problems.append((field, f"Secret {where} is of type {show(secret.get('type') or 'Opaque')}; "
                                f"it must be {BASIC_AUTH}"))
        return
    value = (secret.get("data") or {}).get("password")
    try:
        password = base64.b64decode(value, validate=True).decode() if isinstance(value, str) else None
    except (ValueError, UnicodeDecodeError):
        problems.append((field, f"Secret {where}: key password is not text"))
        return
    if not password:
        problems.append((field, f"Secret {where} has no key password (or it is empty)"))
        return
    spec["password"] = password


def parse(raw: Obj, ctx: Context, parser: ConfigParser) -> Parsed:
    """One gatelb.io or metallb.io object -> its model object, through `parser` (the file
    loader's for its kind) once the Kubernetes-only fields are taken out."""
    kind = str(raw.get("kind"))
    spec = dict(raw.get("spec") or {}) if isinstance(raw.get("spec"), dict) else raw.get("spec")
    problems: Problems = []
    nodes = pools = None
    if isinstance(spec, dict):
        if kind == "BGPPeer":
            _password_secret(raw, spec, ctx, problems)
        _not_honoured(kind, spec, problems)
        if kind in ("BGPPeer", "BGPAdvertisement", "L2Advertisement"):  # elsewhere an unknown field
            nodes = _selectors(spec, "nodeSelectors", problems)
            if nodes is not None and spec.get("nodes"):
                problems.append(("spec.nodeSelectors", "give spec.nodes or spec.nodeSelectors, not both"))
        if kind in ("BGPAdvertisement", "L2Advertisement"):
            pools = _selectors(spec, "ipAddressPoolSelectors", problems)
    doc = {"apiVersion": raw.get("apiVersion"), "kind": kind,
           "metadata": {"name": (raw.get("metadata") or {}).get("name")}, "spec": spec}
    obj, more = parser(doc)
    problems += more
    if obj is None or problems:
        return Parsed(None, problems)
    if nodes is not None:
        matched = _matching(nodes, ctx.node_labels)
        if isinstance(obj, BGPPeer):
            obj = dataclasses.replace(obj, nodes=matched or (NO_NODE,))
        elif not matched:
            return Parsed(None, [], "spec.nodeSelectors match no node")
        elif isinstance(obj, BGPAdvertisement | L2Advertisement):
            obj = dataclasses.replace(obj, nodes=matched)
    if pools is not None and isinstance(obj, BGPAdvertisement | L2Advertisement):
        chosen = tuple(dict.fromkeys((*obj.ip_address_pools, *_matching(pools, ctx.pool_labels))))
        if not chosen:
            return Parsed(None, [], "spec.ipAddressPoolSelectors match no pool")
        obj = dataclasses.replace(obj, ip_address_pools=chosen)
    return Parsed(obj, [])
