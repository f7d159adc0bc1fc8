"""Kubernetes translation: one EndpointSlice change at N Services, incremental vs whole.

N Services of type LoadBalancer (one TCP port) with one EndpointSlice of 10 ready endpoints
each, loaded into a ChangeTracker (and 3 nodes, for nodeport mode). Measured per change:

  incremental   ChangeTracker.on_change(one slice) + take() + translate_service() of each dirty
                Service (+ service_request(), which the Service IPAM would need) -- what the
                Kubernetes source does per event
  whole         to_model() over the whole cluster -- what the agent did per event before

Pure Python, no root, no network:

    python -m bench.kube_translate                      # N = 1000, 10000, pod mode
    python -m bench.kube_translate --sizes 1000 --mode nodeport --repeats 500
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import statistics
import time
from typing import Any

from gatelb.model import IPAddress
from gatelb.sources.kubernetes.changes import ENDPOINTSLICES, NODES, SERVICES, ChangeTracker
from gatelb.sources.kubernetes.translate import BackendMode, Options, to_model

ENDPOINTS = 10


def service(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"s{i}", "namespace": f"ns{i % 50}", "resourceVersion": "1"},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                                         "nodePort": 30000 + i % 2000}]}}


def endpoint_slice(i: int, generation: int) -> dict[str, Any]:
    base = (i * ENDPOINTS + generation) % (1 << 20)
    return {"metadata": {"name": f"s{i}-abcde", "namespace": f"ns{i % 50}", "resourceVersion": str(generation + 1),
                         "labels": {"kubernetes.io/service-name": f"s{i}"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [str(ipaddress.ip_address(0x0A000000 + base + j))],
                           "conditions": {"ready": True}, "nodeName": f"n{j % 3}"} for j in range(ENDPOINTS)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def node(n: int) -> dict[str, Any]:
    return {"metadata": {"name": f"n{n}", "resourceVersion": "1"},
            "status": {"addresses": [{"type": "InternalIP", "address": f"198.51.100.{n + 1}"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def key(i: int, suffix: str = "") -> str:
    return f"ns{i % 50}/s{i}{suffix}"


def address(i: int) -> tuple[IPAddress, ...]:
    return (ipaddress.ip_address(0xCB000000 + i),)


def loaded(n: int, options: Options) -> tuple[ChangeTracker, dict[str, tuple[IPAddress, ...]]]:
    tracker = ChangeTracker(options)
    for m in range(3):
        tracker.on_change(NODES, f"n{m}", None, node(m))
    for i in range(n):
        tracker.on_change(SERVICES, key(i), None, service(i))
        tracker.on_change(ENDPOINTSLICES, key(i, "-abcde"), None, endpoint_slice(i, 0))
    assigned = {key(i): address(i) for i in range(n)}
    tracker.take()
    return tracker, assigned


def one_change(tracker: ChangeTracker, assigned: dict[str, tuple[IPAddress, ...]], new: dict[str, Any]) -> int:
    """One slice event through to the translated Service; returns how many were translated."""
    k = f"{new['metadata']['namespace']}/{new['metadata']['name']}"
    tracker.on_change(ENDPOINTSLICES, k, tracker.objects(ENDPOINTSLICES).get(k), new)
    dirty = tracker.take()
    keys = tracker.service_keys(dirty)
    for k in keys:
        tracker.translate_service(k, assigned.get(k, ()))
        tracker.service_request(k)
    return len(keys)


def measure(n: int, options: Options, repeats: int, whole_repeats: int) -> dict[str, float]:
    tracker, assigned = loaded(n, options)
    samples = []
    gc.collect()
    for r in range(repeats):
        new = endpoint_slice((r * 7919) % n, r + 1)  # what the watch decoded: not ours to time
        t0 = time.perf_counter_ns()
        translated = one_change(tracker, assigned, new)
        samples.append((time.perf_counter_ns() - t0) / 1e3)
        assert translated == 1
    whole = []
    cluster = tracker.cluster
    for _ in range(whole_repeats):
        t0 = time.perf_counter_ns()
        to_model(cluster, options, assigned)
        whole.append((time.perf_counter_ns() - t0) / 1e6)
    samples.sort()
    return {"median_us": statistics.median(samples), "p95_us": samples[int(len(samples) * 0.95) - 1],
            "max_us": samples[-1], "whole_ms": statistics.median(whole)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--mode", choices=[m.value for m in BackendMode], default=BackendMode.POD.value)
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--whole-repeats", type=int, default=3)
    args = parser.parse_args()
    options = Options(backend_mode=BackendMode(args.mode))
    print(f"one EndpointSlice change ({ENDPOINTS} endpoints), {args.mode} mode, {args.repeats} changes per size")
    print(f"{'services':>9} {'incremental median':>19} {'p95':>9} {'max':>9} {'whole to_model':>15}")
    for n in (int(s) for s in args.sizes.split(",")):
        r = measure(n, options, args.repeats, args.whole_repeats)
        print(f"{n:>9} {r['median_us']:>16.1f} us {r['p95_us']:>6.1f} us {r['max_us']:>6.0f} us "
              f"{r['whole_ms']:>12.1f} ms")


if __name__ == "__main__":
    main()
