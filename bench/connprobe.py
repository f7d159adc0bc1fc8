"""Connection latency: open COUNT new TCP connections one after another and time each connect().

    python -m bench.connprobe --target ADDR --port P --count N [--timeout S] [--max-seconds S]

Prints one JSON line: {"count", "ok", "failed", "p50_us", "p90_us", "p99_us", "max_us", "rate_per_s"}.

One at a time on purpose: the figure is the path's latency (SYN out, DNAT on the gateway, SYN-ACK
back), not the machine's throughput, which wrk measures. Each socket is closed with SO_LINGER 0
(a RST) so that neither this namespace nor the gateway's conntrack table fills with TIME_WAIT
entries over thousands of connections. Connect is a blocking call with a timeout; the Python
overhead around it is the same on every path compared.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time

LINGER_RST = struct.pack("ii", 1, 0)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def probe(target: str, port: int, count: int, timeout: float, max_seconds: float) -> dict[str, float | int]:
    lat: list[float] = []
    failed = 0
    started = time.perf_counter()
    deadline = started + max_seconds
    for _ in range(count):
        if time.perf_counter() > deadline:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        t0 = time.perf_counter()
        try:
            s.connect((target, port))
            lat.append(time.perf_counter() - t0)
        except OSError:
            failed += 1
        finally:
            s.close()
    elapsed = time.perf_counter() - started
    lat.sort()
    us = [v * 1e6 for v in lat]
    return {"count": len(lat) + failed, "ok": len(lat), "failed": failed,
            "p50_us": percentile(us, 0.50), "p90_us": percentile(us, 0.90), "p99_us": percentile(us, 0.99),
            "max_us": us[-1] if us else float("nan"), "rate_per_s": (len(lat) + failed) / elapsed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=30.0)
    a = p.parse_args()
    print(json.dumps(probe(a.target, a.port, a.count, a.timeout, a.max_seconds)))


if __name__ == "__main__":
    main()
