"""Data-path benchmarks in the network lab (gatelb.lab: client, gw, backends in namespaces).

For each scenario a fresh lab is built, a minimal C HTTP server (bench/tools/httpclose.c, 4
worker processes) listens on 8080 in every backend, and the gw gets the scenario's ruleset:

  direct          no rules on the gw: the client talks to the backends' own addresses, routed by
                  the gw (no NAT, no conntrack) -- the path without a load balancer
  direct+ct       the same, with connection tracking switched on in the gw (one `ct state` rule,
                  no NAT): separates what conntrack costs from what the load balancer adds
  gatelb N        `gatelb apply` in the gw: the measured L4LB 203.0.113.10:80 -> be1..beB:8080,
                  plus N-1 filler L4LBs x 10 backends (198.18.0.0/16 -> 198.19.0.0/16, never hit),
                  plus one L4LB 203.0.113.11:5201 -> be1:5201 for iperf3
  kp-iptables N   the same services in kube-proxy's iptables layout (iptables-restore), the measured
                  service in the middle of KUBE-SERVICES (kube-proxy's order is a map's, i.e. random;
                  the middle is the expected position). Its "pod CIDR" is set to the client's network
                  so that, like gatelb's `nat: dnat`, it does one DNAT and no masquerade.

Figures per scenario (rounds interleaved across scenarios, each round starting one scenario later,
and each scenario measured once the CPUs are idle again after the previous lab's teardown --
bounded, since others share the machine; median (min-max) over rounds):
  - new connections/s: wrk with `Connection: close`, so every request is a new TCP connection;
    wrk's request latency p50/p99 (wrk starts its clock after connect);
  - connect latency p50/p99: bench.connprobe, sequential connects timed one by one;
  - bulk throughput: iperf3 (one stream, client -> server).

    python -m bench.data_path                      # N = 1 and 10000, 5 rounds
    python -m bench.data_path --quick              # N = 1 and 50, short runs: the smoke test
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import gen
from bench.common import (
    PYTHON,
    REPO,
    Results,
    exit_on_signals,
    gatelb_cmd,
    iptables_restore,
    log,
    parse_sizes,
    ratio,
    require_root,
    summarize,
    wait_quiet,
)
from gatelb.lab import Lab
from gatelb.lab.procs import LineReader
from gatelb.lab.topology import CLIENT_V4, backend_v4

VIP = "203.0.113.10"
VIP_PORT = 80
IPERF_VIP = "203.0.113.11"
IPERF_PORT = 5201
BACKEND_PORT = 8080
LAB_POOL = ("lab", "203.0.113.0/24")
CLIENT_NET = "192.0.2.0/24"
SERVER_SRC = REPO / "bench" / "tools" / "httpclose.c"
SERVER_WORKERS = 4
# Switches conntrack on in the gw without NAT or filtering: every real gateway tracks connections.
CONNTRACK_ONLY = ("table inet glbbench {\n chain track { type filter hook forward priority 0; policy accept;\n"
                  "  ct state established,related counter accept\n }\n}\n")


@dataclass(frozen=True)
class Scenario:
    kind: str  # direct | direct+ct | gatelb | kp-iptables
    n: int = 0

    @property
    def label(self) -> str:
        return self.kind if self.kind.startswith("direct") else f"{self.kind} N={self.n}"


@dataclass
class Params:
    backends: int
    wrk_seconds: float
    wrk_connections: int
    probe_count: int
    iperf_seconds: float


@dataclass
class Figures:
    rate: list[float] = field(default_factory=list)
    wrk_p50_ms: list[float] = field(default_factory=list)
    wrk_p99_ms: list[float] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    connect_p50_us: list[float] = field(default_factory=list)
    connect_p99_us: list[float] = field(default_factory=list)
    gbps: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: summarize(v) if k != "errors" else v for k, v in self.__dict__.items()}


# ---------------------------------------------------------------------------------------------
# Rulesets


def _lab_services(backends: int) -> tuple[gen.BenchService, gen.BenchService]:
    web = gen.BenchService("web", VIP, VIP_PORT, tuple((backend_v4(i), BACKEND_PORT)
                                                       for i in range(1, backends + 1)), pool=LAB_POOL[0])
    iperf = gen.BenchService("iperf", IPERF_VIP, IPERF_PORT, ((backend_v4(1), IPERF_PORT),),
                             pool=LAB_POOL[0])
    return web, iperf


def scenario_services(n: int, backends: int) -> list[gen.BenchService]:
    """The measured service in the middle of N-1 fillers, and the iperf3 service last."""
    web, iperf = _lab_services(backends)
    fillers = gen.services(max(0, n - 1))
    mid = len(fillers) // 2
    return [*fillers[:mid], web, *fillers[mid:], iperf]


# ---------------------------------------------------------------------------------------------
# Tools


def build_server(workdir: Path) -> list[str]:
    """The backend server's command (without its arguments): the C one, else the Python fallback."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        log("no C compiler: using the Python httpclose, which caps the connection rate much lower")
        return [PYTHON, str(SERVER_SRC.with_suffix(".py"))]
    binary = workdir / "httpclose"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(SERVER_SRC)], check=True, capture_output=True,
                   text=True)
    return [str(binary)]


def _start_servers(lab: Lab, server: list[str], backends: int) -> None:
    procs = [lab.popen(f"be{i}", [*server, str(BACKEND_PORT), str(SERVER_WORKERS)]) for i in
             range(1, backends + 1)]
    for i, proc in enumerate(procs, start=1):
        assert proc.stdout is not None
        if LineReader(proc.stdout.fileno()).readline(10.0) != "ready":
            raise RuntimeError(f"httpclose did not start in be{i}")


def _load(lab: Lab, sc: Scenario, params: Params, workdir: Path) -> float:
    """Program the gw for the scenario; returns how long that took (seconds)."""
    if sc.kind == "direct":
        return 0.0
    if sc.kind == "direct+ct":
        lab.run("gw", ["nft", "-f", "-"], input=CONNTRACK_ONLY)
        return 0.0
    svcs = scenario_services(sc.n, params.backends)
    start = time.perf_counter()
    if sc.kind == "gatelb":
        path = workdir / f"dp-gatelb-{sc.n}.yaml"
        if not path.exists():
            path.write_text(gen.gatelb_yaml(svcs, extra_pools=[LAB_POOL]))
        state = Path(tempfile.mkdtemp(prefix="glbb-state-", dir=workdir))
        start = time.perf_counter()
        lab.run("gw", ["env", f"GATELB_STATE_DIR={state}", *gatelb_cmd("apply", "-f", str(path), "-q")],
                timeout=600)
    elif sc.kind == "kp-iptables":
        text = gen.kube_proxy_iptables(svcs, pod_cidr=CLIENT_NET)
        restore, _ = iptables_restore()
        start = time.perf_counter()
        lab.run("gw", [restore], input=text, timeout=900)
    else:
        raise ValueError(sc.kind)
    return time.perf_counter() - start


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m[1]) * _WRK_UNITS[m[2]] if m else float("nan")


def parse_wrk(out: str) -> dict[str, float]:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = sum(int(x) for x in err.groups()) if err else 0
    errors += int(non2xx[1]) if non2xx else 0
    nan = float("nan")
    return {"rate": float(rate[1]) if rate else nan, "p50_ms": _wrk_ms(p50[1]) if p50 else nan,
            "p99_ms": _wrk_ms(p99[1]) if p99 else nan, "errors": errors}


def _target(sc: Scenario) -> tuple[str, int, str, int]:
    """(web address, port, iperf3 address, port) the client aims at in this scenario."""
    if sc.kind.startswith("direct"):
        return backend_v4(1), BACKEND_PORT, backend_v4(1), IPERF_PORT
    return VIP, VIP_PORT, IPERF_VIP, IPERF_PORT


def _iperf(lab: Lab, target: str, port: int, seconds: float) -> float:
    # --forceflush: iperf3 block-buffers its "Server listening" line when stdout is a pipe.
    server = lab.popen("be1", ["iperf3", "-s", "-1", "--forceflush", "-p", str(port)])
    assert server.stdout is not None
    reader = LineReader(server.stdout.fileno())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = reader.readline(max(0.1, deadline - time.monotonic()))
        if line is None or "listening" in line:
            break
    out = lab.run("client", ["iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-J"],
                  timeout=seconds + 30).stdout
    server.wait(timeout=10)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def _wrk_args(sc: Scenario, params: Params, workdir: Path) -> list[str]:
    """wrk with one thread per backend. On the direct path a small Lua script points thread i at
    backend i, so both paths spread the same load over the same servers."""
    addr, port, _, _ = _target(sc)
    args = ["wrk", f"-t{params.backends}", f"-c{max(params.wrk_connections, params.backends)}",
            f"-d{params.wrk_seconds:g}s", "--latency", "-H", "Connection: close"]
    if sc.kind.startswith("direct"):
        script = workdir / "spread.lua"
        hosts = ", ".join(f'"{backend_v4(i)}"' for i in range(1, params.backends + 1))
        script.write_text(f"local targets = {{ {hosts} }}\nlocal i = 0\n"
                          "function setup(thread)\n  i = i + 1\n"
                          f'  thread.addr = wrk.lookup(targets[(i - 1) % #targets + 1], "{port}")[1]\n'
                          "end\n")
        args += ["-s", str(script)]
    return [*args, f"http://{addr}:{port}/"]


def measure(sc: Scenario, params: Params, server: list[str], workdir: Path, figs: Figures) -> None:
    with Lab(backends=params.backends) as lab:
        # Our own namespace: more ephemeral ports, so a long wrk run never runs out of them.
        lab.run("client", ["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65000"])
        _start_servers(lab, server, params.backends)
        figs.load_s.append(_load(lab, sc, params, workdir))
        addr, port, iperf_addr, iperf_port = _target(sc)
        warm = _probe(lab, addr, port, 50)
        if warm["ok"] == 0:
            raise RuntimeError(f"{sc.label}: no connection to {addr}:{port} succeeds")
        wrk = lab.run("client", _wrk_args(sc, params, workdir), timeout=params.wrk_seconds + 60).stdout
        w = parse_wrk(wrk)
        figs.rate.append(w["rate"])
        figs.wrk_p50_ms.append(w["p50_ms"])
        figs.wrk_p99_ms.append(w["p99_ms"])
        figs.errors.append(int(w["errors"]))
        pr = _probe(lab, addr, port, params.probe_count)
        figs.connect_p50_us.append(float(pr["p50_us"]))
        figs.connect_p99_us.append(float(pr["p99_us"]))
        figs.gbps.append(_iperf(lab, iperf_addr, iperf_port, params.iperf_seconds))


def _probe(lab: Lab, addr: str, port: int, count: int) -> dict[str, Any]:
    out = lab.run("client", [PYTHON, "-m", "bench.connprobe", "--target", addr, "--port", str(port),
                             "--count", str(count), "--max-seconds", "60"], timeout=120).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------


def tables(res: Results, scenarios: list[Scenario], figs: dict[Scenario, Figures], params: Params) -> None:
    direct = figs.get(Scenario("direct"))
    base_rate = summarize(direct.rate).median if direct else float("nan")
    base_gbps = summarize(direct.gbps).median if direct else float("nan")
    t = res.table(
        "Data path: new TCP connections through a VIP, 1 vs N load balancers, against the direct path",
        ["scenario", "new conn/s (wrk)", "vs direct", "wrk latency p50", "wrk latency p99",
         "connect p50", "connect p99", "errors"],
        note=f"wrk -t{params.backends} -c{params.wrk_connections} -d{params.wrk_seconds:g}s with "
             f"`Connection: close` (one request per connection) to a minimal C server ({SERVER_WORKERS} "
             f"workers) in each of {params.backends} backends; the VIP spreads connections over them, the "
             "direct path points wrk thread i at backend i. connect: "
             f"{params.probe_count} sequential connects to the VIP, or to be1 directly (bench.connprobe). "
             "Median (min-max) over rounds.",
    )
    for sc in scenarios:
        f = figs[sc]
        rate = summarize(f.rate)
        t.rows.append([sc.label, rate.fmt("", 0), ratio(rate.median, base_rate),
                       summarize(f.wrk_p50_ms).fmt("ms", 2), summarize(f.wrk_p99_ms).fmt("ms", 2),
                       summarize(f.connect_p50_us).fmt("us", 0), summarize(f.connect_p99_us).fmt("us", 0),
                       str(sum(f.errors))])
    s = res.table("Data path: N load balancers against 1 (same layout)",
                  ["layout", "N", "conn/s ratio N/1", "connect p50 ratio", "connect p99 ratio"])
    for kind in ("gatelb", "kp-iptables"):
        ones = [sc for sc in scenarios if sc.kind == kind and sc.n == 1]
        for sc in scenarios:
            if sc.kind == kind and sc.n > 1 and ones:
                one, big = figs[ones[0]], figs[sc]
                def r(attr: str, one: Figures = one, big: Figures = big) -> str:
                    return ratio(summarize(getattr(big, attr)).median, summarize(getattr(one, attr)).median)

                s.rows.append([kind, str(sc.n), r("rate"), r("connect_p50_us"), r("connect_p99_us")])
    b = res.table("Data path: bulk TCP throughput (iperf3, one stream)",
                  ["scenario", "Gbit/s", "vs direct", "ruleset load time"],
                  note=f"iperf3 -t {params.iperf_seconds:g}, client -> be1 (direct) or via the VIP "
                       f"{IPERF_VIP}:{IPERF_PORT} -> be1.")
    for sc in scenarios:
        f = figs[sc]
        g = summarize(f.gbps)
        b.rows.append([sc.label, g.fmt("", 2), ratio(g.median, base_gbps),
                       summarize(f.load_s).fmt("s", 2) if not sc.kind.startswith("direct") else "-"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,10000", help="numbers of load balancers (default 1,10000)")
    p.add_argument("--layouts", default="gatelb,kp-iptables", help="default gatelb,kp-iptables")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backends", type=int, default=3)
    p.add_argument("--wrk-seconds", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=32, help="wrk concurrent connections")
    p.add_argument("--probe-count", type=int, default=2000)
    p.add_argument("--iperf-seconds", type=float, default=3.0)
    p.add_argument("--quick", action="store_true", help="smoke run: N = 1 and 50, one short round")
    a = p.parse_args(argv)
    require_root()
    exit_on_signals()
    if a.quick:
        sizes, rounds = [1, 50], 1
        params = Params(a.backends, 1.0, 8, 100, 1.0)
    else:
        sizes, rounds = parse_sizes(a.sizes), a.rounds
        params = Params(a.backends, a.wrk_seconds, a.connections, a.probe_count, a.iperf_seconds)
    layouts = [k for k in a.layouts.split(",") if k]
    scenarios = [Scenario("direct"), Scenario("direct+ct"), *(Scenario(k, n) for k in layouts for n in sizes)]
    shown = argv if argv is not None else sys.argv[1:]
    res = Results("data_path", ["python -m bench.data_path", *shown])
    figs = {sc: Figures() for sc in scenarios}
    with tempfile.TemporaryDirectory(prefix="glbb-dp-") as tmp:
        workdir = Path(tmp)
        server = build_server(workdir)
        for r in range(rounds):
            # Each round starts one scenario later, so no scenario always follows the same one.
            for sc in scenarios[r % len(scenarios):] + scenarios[:r % len(scenarios)]:
                waited = wait_quiet()
                log(f"data path round {r + 1}/{rounds}: {sc.label} (waited {waited:.1f} s for idle CPUs)")
                res.sample_load()
                measure(sc, params, server, workdir, figs[sc])
                f = figs[sc]
                log(f"  {f.rate[-1]:.0f} conn/s, connect p50 {f.connect_p50_us[-1]:.0f} us, "
                    f"p99 {f.connect_p99_us[-1]:.0f} us, {f.gbps[-1]:.2f} Gbit/s, load {f.load_s[-1]:.2f} s")
    tables(res, scenarios, figs, params)
    res.data = {"params": params.__dict__, "client": CLIENT_V4, "server": " ".join(server),
                "scenarios": {sc.label: figs[sc].to_json() for sc in scenarios}}
    json_path, md_path = res.write()
    print(res.markdown())
    log(f"results: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
