"""IncrementalAllocator gives exactly what allocate() gives."""

from __future__ import annotations

import ipaddress
import random

import pytest

from gatelb.ipam.lb import IncrementalAllocator, allocate
from gatelb.model import (
    AddressRange,
    Backend,
    DesiredState,
    IPAddress,
    IPPool,
    LoadBalancer,
    ValidationErrors,
)

POOLS = (
    IPPool("a", (AddressRange(ipaddress.ip_address("203.0.113.0"), ipaddress.ip_address("203.0.113.7")),)),
    IPPool("b", (AddressRange(ipaddress.ip_address("203.0.113.16"), ipaddress.ip_address("203.0.113.19")),),
           auto_assign=False),
)


def random_lb(rng: random.Random, name: str) -> LoadBalancer:
    explicit = None
    if rng.random() < 0.3:
        explicit = ipaddress.ip_address(rng.choice(["203.0.113.1", "203.0.113.2", "203.0.113.17", "203.0.113.5"]))
    return LoadBalancer(
        name=name, port=rng.choice([80, 443]), frontend_ip=explicit,
        pool=rng.choice([None, None, "a", "b"]),
        backends=(Backend(ipaddress.ip_address("198.51.100.11"), 8080),),
    )


@pytest.mark.parametrize("seed", range(120))
def test_incremental_allocation_equals_full(seed: int) -> None:
    rng = random.Random(seed)
    inc = IncrementalAllocator()
    lbs: dict[str, LoadBalancer] = {}
    recorded: dict[str, IPAddress] = {}
    for _ in range(12):
        for name in rng.sample([f"lb{i}" for i in range(10)], rng.randint(1, 3)):
            if name in lbs and rng.random() < 0.3:
                del lbs[name]
            else:
                lbs[name] = random_lb(rng, name)
        desired = DesiredState(POOLS, tuple(lbs[n] for n in sorted(lbs)))
        try:
            expected = allocate(desired, recorded)
        except ValidationErrors as err:
            with pytest.raises(ValidationErrors) as got:
                inc.allocate(desired, recorded)
            assert str(got.value) == str(err)
            continue
        got_alloc = inc.allocate(desired, recorded)
        assert got_alloc.addresses == expected.addresses
        assert got_alloc.pool_of == expected.pool_of
        recorded = dict(expected.addresses)
