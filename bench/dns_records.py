"""Time from a change to the record on the server, at 1 and 1,000 load balancers with hostnames:
the DNS updater (the consumer `gatelb run` runs) against a real BIND 9 on loopback.

    python -m bench.dns_records [--sizes 1,1000] [--repeat 5]

For each size: a first round creates every record (one UPDATE); then, `repeat` times, one load
balancer's address changes and we time set(SyncedState) -> the new address answered by named
(dnspython query, polled every millisecond). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import dns.asyncquery
import dns.message

from gatelb.dns.updater import DNSUpdater
from gatelb.lab import bind
from gatelb.model import Backend, DNSProvider, LoadBalancer, ObjectRef, Protocol, Service, SyncedState

ZONE = "lb.example."
BASE = int(ipaddress.ip_address("198.18.0.0"))


def state(n: int, moved: int, generation: int, provider: DNSProvider) -> SyncedState:
    lbs, addresses, services = {}, {}, {}
    backend = (Backend(ipaddress.ip_address("198.19.0.1"), 80),)
    for i in range(n):
        name = f"lb{i}"
        ip = ipaddress.ip_address(BASE + i + (n * generation if i == moved else 0))
        lbs[name] = LoadBalancer(name, 80, frontend_ip=ip, hostnames=(f"{name}.lb.example",))
        addresses[name] = ip
        services[name] = Service(name, ip, Protocol.TCP, 80, backend)
    return SyncedState(generation, lbs, {n: ObjectRef("file", "bench.yaml") for n in lbs}, addresses, (), {},
                       services, {}, config={provider.ref: provider})


async def answer(port: int, name: str) -> list[str]:
    resp = await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1)
    return [str(r) for rr in resp.answer for r in rr]


async def measure(n: int, repeat: int, named: bind.Named) -> dict[str, object]:
    p = DNSProvider("bench", zone=ZONE, servers=(("127.0.0.1", named.port),), tsig_key_name="gatelb",
                    tsig_secret=named.key[2], ttl=30, owner_id="bench", repair_interval_s=3600)
    updater = DNSUpdater(None)
    task = asyncio.create_task(updater.run())
    t0 = time.perf_counter()
    updater.set(state(n, -1, 0, p))
    while await answer(named.port, f"lb{n - 1}.{ZONE}") != [str(ipaddress.ip_address(BASE + n - 1))]:
        await asyncio.sleep(0.001)
    first = time.perf_counter() - t0
    times = []
    for g in range(1, repeat + 1):
        moved = (g * 7919) % n
        want = [str(ipaddress.ip_address(BASE + moved + n * g))]
        t0 = time.perf_counter()
        updater.set(state(n, moved, g, p))
        while await answer(named.port, f"lb{moved}.{ZONE}") != want:
            await asyncio.sleep(0.001)
        times.append(time.perf_counter() - t0)
    task.cancel()
    return {"load_balancers": n, "first_sync_s": round(first, 4),
            "change_to_record_ms": {"median": round(statistics.median(times) * 1000, 2),
                                    "max": round(max(times) * 1000, 2)}, "repeat": repeat}


async def main_async(sizes: list[int], repeat: int) -> dict[str, object]:
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            named = bind.Named(Path(d), ZONE, bind.tsig_keygen("gatelb"), "127.0.0.1", bind.free_port())
            with named:
                named.start()
                results.append(await measure(n, repeat, named))
    return {"benchmark": "dns_records", "results": results, "loadavg": os.getloadavg(), "cpus": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,1000")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async([int(s) for s in args.sizes.split(",")], args.repeat)), indent=1))


if __name__ == "__main__":
    main()
