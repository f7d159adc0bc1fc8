"""UDP services use their own backend map: nft adds an implicit `meta l4proto tcp` to a dnat rule
whose map data is declared `tcp dport`, so sharing be4 with TCP would never DNAT UDP."""

from __future__ import annotations

import ipaddress

from gatelb.dataplane import compile_ruleset
from gatelb.dataplane.render import GLOBAL_SETS, REGULAR_CHAINS
from gatelb.model import Algorithm, Backend, Protocol, ResolvedState, Service


def service(protocol: Protocol, algorithm: Algorithm = Algorithm.RANDOM, family: int = 4) -> Service:
    vip = ipaddress.ip_address("203.0.113.1" if family == 4 else "2001:db8:100::1")
    backend = ipaddress.ip_address("198.51.100.11" if family == 4 else "2001:db8:2::11")
    return Service(f"{protocol.value}-{family}", vip, protocol, 53, (Backend(backend, 8080),), algorithm)


def test_udp_maps_are_declared_with_udp_data() -> None:
    assert GLOBAL_SETS["beu4"].endswith(": ip daddr . udp dport; }")
    assert GLOBAL_SETS["beu6"].endswith(": ip6 daddr . udp dport; }")
    assert GLOBAL_SETS["be4"].endswith(": ip daddr . tcp dport; }")


def test_udp_and_tcp_services_use_separate_maps_and_chains() -> None:
    for family in (4, 6):
        for algorithm in Algorithm:
            rs = compile_ruleset(ResolvedState((service(Protocol.TCP, algorithm, family),
                                                service(Protocol.UDP, algorithm, family))))
            assert len(rs.elements[f"be{family}"]) == 1 and len(rs.elements[f"beu{family}"]) == 1
            # the chains the two services jump to: per-service (round robin) or from the skeleton
            targets = [str(d).removeprefix("goto ") for d in rs.elements[f"svc{family}"].values()]
            chains = {**REGULAR_CHAINS, **{k: list(v) for k, v in rs.chains.items()}}
            rules = [r for t in targets for r in chains[t]]
            assert sum(f"map @beu{family}" in r for r in rules) == 1, rules
            assert sum(f"map @be{family}" in r for r in rules) == 1, rules
