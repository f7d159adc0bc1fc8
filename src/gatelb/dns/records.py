"""The records load balancers want, and the ownership registry's TXT format. Pure.

Ownership follows external-dns's TXT registry (its "new" format, the only one since v0.18): the
record `web.lb.example. A` is ours when `a-web.lb.example. TXT` says
`heritage=external-dns,external-dns/owner=<ownerID>,external-dns/resource=<kind/namespace/name>`.
Records external-dns wrote are adopted by giving gatelb the same owner ID. Its legacy format (a
TXT at the record's own name) is read as proof of ownership too, so records of external-dns
before v0.12 migrate the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gatelb.model import DNSProvider, ObjectRef, SyncedState

RECORD_TYPES = ("A", "AAAA")
HERITAGE = "external-dns"

Key = tuple[str, str]  # (absolute lowercase name with the trailing dot, "A" | "AAAA")


@dataclass(frozen=True, slots=True)
class RRSet:
    name: str
    rtype: str
    values: tuple[str, ...]  # sorted
    ttl: int

    @property
    def key(self) -> Key:
        return (self.name, self.rtype)


@dataclass(frozen=True, slots=True)
class Wanted:
    """One record set the load balancers ask for, and who asks (for the TXT, status, Events)."""

    rrset: RRSet
    resource: str  # external-dns/resource: "service/default/web", "l4lb/web"
    origins: tuple[ObjectRef, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    origin: ObjectRef | None
    text: str

    def __str__(self) -> str:
        return self.text


def fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


def txt_name(key: Key) -> str:
    """external-dns's new-format registry name: the type, lowercase, and '-' before the first label."""
    name, rtype = key
    return f"{rtype.lower()}-{name}"


def txt_text(owner: str, resource: str) -> str:
    return f"heritage={HERITAGE},external-dns/owner={owner},external-dns/resource={resource}"


def parse_txt(text: str) -> dict[str, str] | None:
    """The labels of a registry TXT (one string, or the strings of one rdata joined), or None
    when it is not one."""
    labels: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            return None
        labels[key.strip()] = value.strip()
    return labels if labels.get("heritage") == HERITAGE else None


def owner_of(text: str) -> str | None:
    labels = parse_txt(text)
    return labels.get("external-dns/owner") if labels is not None else None


def resource_of(ref: ObjectRef, lb_name: str) -> str:
    if ref.kind == "file":  # a standalone file: the L4LB's own name (the file path is no resource)
        return f"l4lb/{lb_name}"
    return f"{ref.kind.lower()}/{ref.key}"


def zone_of(name: str, zones: Mapping[str, str]) -> str | None:
    """The provider (by name) whose zone is the longest suffix of `name`; zones: zone -> provider."""
    best: str | None = None
    for zone in zones:
        if (name == zone or name.endswith("." + zone)) and (best is None or len(zone) > len(best)):
            best = zone
    return zones[best] if best is not None else None


def can_be_served(state: SyncedState, name: str) -> bool:
    """A record exists while its load balancer is active, has an address and is programmed in the
    kernel. Backends being up is not required: clients of a name that flaps with backend health
    would cache the NXDOMAIN, while a VIP without a backend answers at once (reject)."""
    lb = state.load_balancers.get(name)
    return lb is not None and lb.active and name in state.addresses and name in state.services


def providers_by_zone(providers: Mapping[str, DNSProvider]) -> tuple[dict[str, str], list[Problem]]:
    zones: dict[str, str] = {}
    problems = []
    for name in sorted(providers):
        zone = providers[name].zone
        if zone in zones:
            problems.append(Problem(providers[name].ref, f"DNSProvider {name}: spec.rfc2136.zone: {zone} is "
                                                         f"already managed by DNSProvider {zones[zone]}; ignored"))
            continue
        zones[zone] = name
    return zones, problems


def desired_records(state: SyncedState, providers: Mapping[str, DNSProvider]) -> tuple[
        dict[str, dict[Key, Wanted]], list[Problem]]:
    """Provider name -> the record sets wanted in its zone, and the hostnames no zone takes."""
    zones, problems = providers_by_zone(providers)
    values: dict[Key, set[str]] = {}
    ttls: dict[Key, int] = {}
    asked: dict[Key, list[tuple[ObjectRef, str]]] = {}
    owner_zone: dict[Key, str] = {}
    for lb_name in sorted(state.load_balancers):
        lb = state.load_balancers[lb_name]
        if not lb.hostnames or not can_be_served(state, lb_name):
            continue
        ip = state.addresses[lb_name]
        origin = state.origins.get(lb_name, ObjectRef("L4LB", lb_name))
        for host in lb.hostnames:
            name = fqdn(host)
            provider = zone_of(name, zones)
            if provider is None:
                problems.append(Problem(origin, f"{origin}: hostname {host} is in no DNSProvider's zone "
                                                f"({', '.join(sorted(zones)) or 'none configured'}); no record"))
                continue
            key = (name, "A" if ip.version == 4 else "AAAA")
            values.setdefault(key, set()).add(str(ip))
            ttl = lb.dns_ttl or providers[provider].ttl
            ttls[key] = min(ttls.get(key, ttl), ttl)
            asked.setdefault(key, []).append((origin, lb_name))
            owner_zone[key] = provider
    out: dict[str, dict[Key, Wanted]] = {name: {} for name in providers}
    for key, ips in values.items():
        refs = asked[key]
        origins = tuple(sorted({r for r, _ in refs}, key=str))
        resource = min(resource_of(r, lb) for r, lb in refs)
        rrset = RRSet(key[0], key[1], tuple(sorted(ips)), ttls[key])
        out[owner_zone[key]][key] = Wanted(rrset, resource, origins)
    return out, problems
