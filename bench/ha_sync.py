"""State-sync cost of an active-standby pair: conntrackd's CPU and bandwidth at a given rate of
new connections through the active member, and the sync lag.

The HaLab scenario (gatelb.lab.ha: FRR router, two gateways running `gatelb run --node gw1|gw2`
with one file, conntrackd FTFW between them, three backends, `nat: dnat`). gw1 is active, gw2
standby. For each offered rate:

  1. the client namespace opens new TCP connections to the VIP at that rate, open loop, from a
     raw socket (bench/ha_sync_tools.py `load`: SYN, the backend's kernel SYN-ACKs, the client's
     kernel RSTs: four conntrack state changes per connection, NEW, SYN_RECV, CLOSE and the
     DESTROY 10 s later, all replicated), plus one probe connection every 0.2 s;
  2. gw2 captures every conntrackd datagram arriving on its lan0 (`capture`, kernel timestamps);
  3. over the steady part of the run: the CPU time of both conntrackd processes (/proc/PID/stat),
     the datagrams and bytes gw1's conntrackd sent (`conntrackd -s`), the entries gw1's kernel
     created (its internal cache's `connections created`);
  4. sync lag of each probe: its SYN leaving the client -> the first datagram carrying its entry
     arriving at gw2 (conntrackd puts it into its external cache as it reads it; whether it keeps
     up is the standby's CPU figure, and the external cache matching the active's internal one);
  5. 11 s of rest (the CLOSE entries expire) before the next rate.

    python -m bench.ha_sync                     # 1,000 / 5,000 / 10,000 / 20,000 new connections/s
    python -m bench.ha_sync --rates 10000 --seconds 8
    python -m bench.ha_sync --quick             # 1,000/s for 3 s: the smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make `import bench` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Results, log, require_root, summarize
from gatelb.announce.conntrackd import Conntrackd, parse_stats
from gatelb.lab.bgp import ROUTER_BFDD, ROUTER_BGPD
from gatelb.lab.daemon import LabDaemon
from gatelb.lab.ha import CONFIG, WEB, HaLab

SOURCES = [f"192.0.2.{i}" for i in range(11, 19)]  # the load's client addresses
PROBES = [f"192.0.2.{i}" for i in range(20, 60)]  # one probe address after the other
PROBE_EVERY_S = 0.2
WARMUP_S = 1.0
REST_S = 11.0  # nf_conntrack_tcp_timeout_close is 10 s
HEADERS = 14 + 20 + 8  # Ethernet, IPv4, UDP around each conntrackd datagram
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def created(text: str) -> int:
    """`connections created` of the internal cache in `conntrackd -s`."""
    m = re.search(r"cache internal:.*?connections created:\s*(\d+)", text, re.S)
    return int(m.group(1)) if m else 0


def lost(text: str) -> int:
    """`Lost msgs` in `conntrackd -s` (FTFW sequence gaps seen by the receiver)."""
    m = re.search(r"(\d+)\s+Lost msgs", text)
    return int(m.group(1)) if m else 0


class Member:
    def __init__(self, lab: HaLab, name: str) -> None:
        self.lab, self.name = lab, name
        self.conntrackd = Conntrackd(lab.tmpdir / name / "state" / "conntrackd")

    def pid(self) -> int:
        pid = self.conntrackd.pid()
        if pid is None:
            raise RuntimeError(f"{self.name}: conntrackd is not running")
        return pid

    def stats_text(self) -> str:
        return self.lab.run(self.name, ["/usr/sbin/conntrackd", "-C", str(self.conntrackd.config_file), "-s"]).stdout


def sample(gw1: Member, gw2: Member) -> dict[str, Any]:
    t1, t2 = gw1.stats_text(), gw2.stats_text()
    return {"t": time.time(), "cpu1": cpu_s(gw1.pid()), "cpu2": cpu_s(gw2.pid()), "stats1": parse_stats(t1),
            "stats2": parse_stats(t2), "created1": created(t1)}


def one_rate(lab: HaLab, gw1: Member, gw2: Member, rate: float, seconds: float, run: int) -> dict[str, Any]:
    n_probes = int(seconds / PROBE_EVERY_S) + 1
    base = str(40000 + 1000 * run)
    cap = lab.python("gw2", "bench.ha_sync_tools", "capture", "--interface", "lan0", "--probe-sources",
                     ",".join(PROBES), "--probes", str(n_probes), "--seconds", str(seconds + 2.0), "--probe-base", base)
    time.sleep(0.3)  # the capture socket is bound
    before_standby = gw2.stats_text()
    before = parse_stats(gw1.stats_text())
    load = lab.python("client", "bench.ha_sync_tools", "load", "--target", WEB, "--port", "80", "--sources",
                      ",".join(SOURCES), "--rate", str(rate), "--seconds", str(seconds), "--probe-sources",
                      ",".join(PROBES), "--probe-every", str(PROBE_EVERY_S), "--probe-base", base)
    time.sleep(WARMUP_S)
    a = sample(gw1, gw2)
    time.sleep(max(0.5, seconds - WARMUP_S - 1.0))
    b = sample(gw1, gw2)
    sent = json.loads((load.communicate(timeout=seconds + 30)[0] or b"{}").decode().strip().splitlines()[-1])
    seen = json.loads((cap.communicate(timeout=seconds + 30)[0] or b"{}").decode().strip().splitlines()[-1])
    window = b["t"] - a["t"]
    lags = [(seen["seen"][str(k)] - at) * 1000 for k, _addr, _port, at in sent["probes"] if str(k) in seen["seen"]]
    end1, end2 = gw1.stats_text(), gw2.stats_text()
    d_sent = b["stats1"].get("sent_bytes", 0) - a["stats1"].get("sent_bytes", 0)
    d_pk = b["stats1"].get("sent_pckts", 0) - a["stats1"].get("sent_pckts", 0)
    d_recv = b["stats2"].get("recv_bytes", 0) - a["stats2"].get("recv_bytes", 0)
    row = {
        "offered_per_s": rate,
        "sent_per_s": sent["sent"] / sent["elapsed_s"], "send_failures": sent["send_failures"],
        "created_per_s": (b["created1"] - a["created1"]) / window,
        "cpu_active_pct": (b["cpu1"] - a["cpu1"]) / window * 100,
        "cpu_standby_pct": (b["cpu2"] - a["cpu2"]) / window * 100,
        "sync_datagrams_per_s": d_pk / window,
        "sync_payload_mbit_s": d_sent * 8 / window / 1e6,
        "sync_wire_mbit_s": (d_sent + d_pk * HEADERS) * 8 / window / 1e6,
        "standby_recv_mbit_s": d_recv * 8 / window / 1e6,
        "lag_ms": {k: v for k, v in summarize(lags).__dict__.items() if k != "values"} if lags else None,
        "lag_p99_ms": sorted(lags)[int(len(lags) * 0.99) - 1] if lags else None,
        "probes": len(sent["probes"]), "probes_seen": len(lags),
        # the capture's own count against what gw1's conntrackd sent over the whole run: a capture
        # that missed datagrams (Python, on a busy machine) misses probes or sees a later message
        "captured_datagrams": seen["datagrams"],
        "sent_datagrams_run": parse_stats(end1).get("sent_pckts", 0) - before.get("sent_pckts", 0),
        "lost_msgs_standby": lost(end2) - lost(before_standby),
        "internal_active_end": parse_stats(end1).get("internal"), "external_standby_end": parse_stats(end2).get(
            "external"),
        "load_average": os.getloadavg(),
        "stats_active": end1, "stats_standby": end2,
    }
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="1000,5000,10000,20000", help="offered new connections/s, comma-separated")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each rate's run")
    p.add_argument("--quick", action="store_true", help="1,000/s for 3 s: checks that the benchmark works")
    a = p.parse_args(argv)
    require_root()
    rates = [1000.0] if a.quick else [float(r) for r in a.rates.split(",")]
    seconds = 3.0 if a.quick else a.seconds
    shown = argv if argv is not None else sys.argv[1:]
    res = Results("ha_sync", ["python -m bench.ha_sync", *shown])
    rows = []
    with HaLab() as lab:
        lab.start_backends(udp=None, http=None)
        lab.start_router(ROUTER_BGPD, ROUTER_BFDD)
        lab.run("client", ["sh", "-c", "; ".join(f"ip addr add {s}/26 dev eth0" for s in SOURCES + PROBES)])
        with LabDaemon(lab, CONFIG, name="gw1", ns="gw1", extra_args=("--node", "gw1")) as d1:
            d1.wait_event("ha-role", where=lambda e: e["role"] == "active", timeout=15)
            with LabDaemon(lab, CONFIG, name="gw2", ns="gw2", extra_args=("--node", "gw2")) as d2:
                d2.wait_event("ha-role", where=lambda e: e["role"] == "standby", timeout=15)
                for what, ok in (("gw1's BGP session", lambda: d1.status()["info"]["ha"]["upstream"]["bgpEstablished"]),
                                 ("gw2's BGP session", lambda: d2.status()["info"]["ha"]["upstream"]["bgpEstablished"]),
                                 ("the VIP via gw1", lambda: lab.router_next_hops(f"{WEB}/32") == {"192.0.2.130"})):
                    deadline = time.monotonic() + 30
                    while ok() is not True:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{what}: not within 30 s")
                        time.sleep(0.2)
                gw1, gw2 = Member(lab, "gw1"), Member(lab, "gw2")
                for i, rate in enumerate(rates):
                    if i:
                        time.sleep(REST_S)
                    row = one_rate(lab, gw1, gw2, rate, seconds, i)
                    rows.append(row)
                    lag = row["lag_ms"]
                    log(f"{rate:.0f}/s offered: {row['sent_per_s']:.0f}/s sent, {row['created_per_s']:.0f}/s created "
                        f"on gw1; conntrackd CPU {row['cpu_active_pct']:.1f} % (active) "
                        f"{row['cpu_standby_pct']:.1f} % (standby); sync {row['sync_wire_mbit_s']:.2f} Mbit/s, "
                        f"{row['sync_datagrams_per_s']:.0f} datagrams/s; lag median "
                        f"{lag['median'] if lag else float('nan'):.2f} ms, p99 {row['lag_p99_ms'] or float('nan'):.2f}"
                        f" ms ({row['probes_seen']}/{row['probes']} probes); load {row['load_average']}")
    report(res, rows, seconds)
    json_path, md_path = res.write()
    print(res.markdown())
    log(f"results: {json_path} and {md_path}")
    return 0


def report(res: Results, rows: list[dict[str, Any]], seconds: float) -> None:
    note = (f"HaLab, gw1 active, gw2 standby, conntrackd FTFW over the LAN; new TCP connections from a raw-socket "
            f"client (SYN / SYN-ACK / RST: 4 replicated state changes each), {seconds:.0f} s per rate, figures over "
            f"the last {seconds - WARMUP_S - 1:.0f} s; CPU in % of one core; lag = probe SYN sent -> the datagram "
            "with its entry received by gw2 (kernel timestamp).")
    t = res.table("State sync: conntrackd's cost per rate of new connections",
                  ["offered/s", "created/s (gw1)", "CPU active", "CPU standby", "sync Mbit/s (wire)", "datagrams/s",
                   "lag median", "lag p99", "lag max", "probes seen", "load"], note)
    for r in rows:
        lag = r["lag_ms"] or {}
        t.rows.append([f"{r['offered_per_s']:.0f}", f"{r['created_per_s']:.0f}", f"{r['cpu_active_pct']:.1f} %",
                       f"{r['cpu_standby_pct']:.1f} %", f"{r['sync_wire_mbit_s']:.2f}",
                       f"{r['sync_datagrams_per_s']:.0f}", f"{lag.get('median', float('nan')):.2f} ms",
                       f"{r['lag_p99_ms'] or float('nan'):.2f} ms", f"{lag.get('max', float('nan')):.2f} ms",
                       f"{r['probes_seen']}/{r['probes']}", " ".join(f"{x:.1f}" for x in r["load_average"])])
    res.data = {"rows": [{k: v for k, v in r.items() if not k.startswith("stats_")} for r in rows],
                "stats_last": {k: v for k, v in rows[-1].items() if k.startswith("stats_")} if rows else {}}


if __name__ == "__main__":
    sys.exit(main())
