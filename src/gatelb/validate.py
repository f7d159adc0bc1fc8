"""Checks that need more than one field or more than one object, on the model itself.

Pure (model only), so every source (the YAML file, the Kubernetes API) runs the same checks.
Per-field syntax and ranges are checked where the raw input is parsed (sources/schema.py).
Field paths are those of the L4LB / IPPool documents.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from gatelb.model import (
    AddressRange,
    CheckType,
    DesiredState,
    IPAddress,
    IPPool,
    LoadBalancer,
    Protocol,
    ValidationError,
    ValidationErrors,
)

L4LB = "L4LB"
IPPOOL = "IPPool"

# Addresses a VIP or a pool must never use: traffic to them never reaches a gateway's forward
# path, or means something else to every host (a pool of 0.0.0.0/0 once handed out ::1 and 0.0.0.0).
SPECIAL_NETWORKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "unspecified ('this network')"),
    (ipaddress.ip_network("127.0.0.0/8"), "loopback"),
    (ipaddress.ip_network("169.254.0.0/16"), "link-local"),
    (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
    (ipaddress.ip_network("255.255.255.255/32"), "broadcast"),
    (ipaddress.ip_network("::/128"), "unspecified"),
    (ipaddress.ip_network("::1/128"), "loopback"),
    (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped"),
    (ipaddress.ip_network("fe80::/10"), "link-local"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
)


def special_address(ip: IPAddress) -> str | None:
    """Why `ip` cannot be a VIP ("127.0.0.1 is a loopback address (127.0.0.0/8)"), or None."""
    for net, what in SPECIAL_NETWORKS:
        if ip.version == net.version and ip in net:
            return f"{ip} is {_article(what)} {what} address ({net}), which cannot be a load balancer's address"
    return None


def special_range(r: AddressRange) -> str | None:
    """Why the range `r` cannot be (part of) a pool, or None."""
    for net, what in SPECIAL_NETWORKS:
        if r.version == net.version and int(r.first) <= int(net.broadcast_address) \
                and int(net.network_address) <= int(r.last):
            return (f"{range_text(r)} includes {what} addresses ({net}), which cannot be load balancers' "
                    "addresses")
    return None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiouIU" else "a"


def family_name(version: int) -> str:
    return f"IPv{version}"


def range_text(r: AddressRange) -> str:
    """The shortest spelling of a range: an address, a CIDR, or first-last."""
    if r.first == r.last:
        return str(r.first)
    nets = list(ipaddress.summarize_address_range(r.first, r.last))
    return str(nets[0]) if len(nets) == 1 else str(r)


def check_load_balancer(lb: LoadBalancer) -> list[ValidationError]:
    """One L4LB on its own: one address family throughout, no backend twice, a fitting check."""
    errors: list[ValidationError] = []

    def err(path: str, text: str) -> None:
        errors.append(ValidationError(L4LB, lb.name, path, text))

    fam = family_name(lb.family)
    if lb.frontend_ip is not None and lb.frontend_ip.version != lb.family:
        err(
            "spec.frontend.ip",
            f"{lb.frontend_ip} is {family_name(lb.frontend_ip.version)}, the L4LB is {fam}",
        )
    seen: dict[tuple[IPAddress, int], int] = {}
    for i, b in enumerate(lb.backends):
        if b.address.version != lb.family:
            err(
                f"spec.backend[{i}].address",
                f"{b.address} is {family_name(b.address.version)}, but the L4LB is {fam} "
                "(one address family per L4LB)",
            )
        if b.key in seen:
            err(f"spec.backend[{i}]", f"{b} is listed twice (also spec.backend[{seen[b.key]}])")
        seen.setdefault(b.key, i)
    for i, net in enumerate(lb.source_ranges):
        if net.version != lb.family:
            err(f"spec.sourceRanges[{i}]", f"{net} is {family_name(net.version)}, but the L4LB is {fam}")
    if lb.check.type is CheckType.UDP and lb.protocol is not Protocol.UDP:
        err("spec.check.type", f"a udp check needs a udp L4LB (spec.protocol is {lb.protocol.value})")
    return errors


def _duplicate_names(kind: str, names: Iterable[str]) -> Iterator[ValidationError]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            yield ValidationError(kind, name, "metadata.name", f"{kind} {name} is defined more than once")
        seen.add(name)


def check_pools(pools: Iterable[IPPool]) -> list[ValidationError]:
    """No address may belong to two ranges, whether of two pools or of one."""
    entries = sorted(
        (
            (r.version, int(r.first), int(r.last), pool.name, i, r)
            for pool in pools
            for i, r in enumerate(pool.ranges)
        ),
    )
    errors: list[ValidationError] = []
    widest: tuple[int, int, str, int, AddressRange] | None = None  # version, last, pool, index, range
    for version, first, last, name, i, r in entries:
        if widest is not None and widest[0] == version and first <= widest[1]:
            _, _, other, j, other_range = widest
            where = f"spec.addresses[{j}]" if other == name else f"IPPool {other}"
            errors.append(
                ValidationError(
                    IPPOOL,
                    name,
                    f"spec.addresses[{i}]",
                    f"{range_text(r)} overlaps {where} ({range_text(other_range)})",
                )
            )
        if widest is None or widest[0] != version or last > widest[1]:
            widest = (version, last, name, i, r)
    return errors


def _frontend_conflicts(lbs: Iterable[LoadBalancer]) -> Iterator[ValidationError]:
    # Only explicit addresses can clash here: IPAM gives an allocated address to one L4LB alone.
    owner: dict[tuple[IPAddress, Protocol, int], str] = {}
    for lb in lbs:  # DesiredState keeps them sorted by name, so the first one named wins
        if not lb.active or lb.frontend_ip is None:
            continue
        key = (lb.frontend_ip, lb.protocol, lb.port)
        if key in owner:
            yield ValidationError(
                L4LB,
                lb.name,
                "spec.frontend",
                f"{frontend_text(*key)} is already used by L4LB {owner[key]}",
            )
        else:
            owner[key] = lb.name


def frontend_text(ip: IPAddress, protocol: Protocol, port: int) -> str:
    return f"{ip} {protocol.value}/{port}"


def check_state(
    desired: DesiredState, known_pools: Iterable[str] = (), per_object: bool = True
) -> list[ValidationError]:
    """Every cross-object problem. `known_pools` are pools that exist but failed to load, so an
    L4LB naming one of them is not reported a second time as referring to an unknown pool.
    per_object=False skips check_load_balancer (the cached loader ran it for new objects only)."""
    errors = list(_duplicate_names(IPPOOL, (p.name for p in desired.pools)))
    errors += _duplicate_names(L4LB, (lb.name for lb in desired.load_balancers))
    errors += check_pools(desired.pools)
    pool_names = {p.name for p in desired.pools} | set(known_pools)
    for lb in desired.load_balancers:
        if per_object:
            errors += check_load_balancer(lb)
        if lb.pool is not None and lb.pool not in pool_names:
            errors.append(ValidationError(L4LB, lb.name, "spec.pool", f"unknown IPPool {lb.pool!r}"))
    errors += _frontend_conflicts(desired.load_balancers)
    return errors


def validate(desired: DesiredState) -> None:
    """Raise ValidationErrors listing every cross-object problem, if there is any."""
    errors = check_state(desired)
    if errors:
        raise ValidationErrors(errors)
