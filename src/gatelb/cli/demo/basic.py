"""`gatelb demo`, act "basic": a gateway in front of three HTTP backends, all in network namespaces.

It builds the lab network, starts `gatelb run` in the gateway namespace, sends real connections
from a client namespace and shows where they went: spread, weights, affinity, the client's
address preserved, an IPv6 VIP, and failover when a backend dies. Everything it creates is
removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console

from gatelb.cli.demo.show import show_spread
from gatelb.lab.results import ClientResult
from gatelb.lab.topology import Lab

CONFIG = """\
apiVersion: gatelb.io/v1alpha1
kind: IPPool
metadata: {name: demo}
spec:
  addresses: ["203.0.113.0/28", "2001:db8:100::/124"]
---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {name: web}
spec:
  frontend: {ip: 203.0.113.10, port: 80}
  backend: [198.51.100.11:80, 198.51.100.12:80, 198.51.100.13:80]
  algorithm: random
  check: {type: http, requestPath: /, interval: 200, timeout: 200, fall: 2, rise: 2}
---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {name: web-weighted}
spec:
  frontend: {ip: 203.0.113.11, port: 80}
  backend:
    - {address: 198.51.100.11, port: 80, weight: 1}
    - {address: 198.51.100.12, port: 80, weight: 1}
    - {address: 198.51.100.13, port: 80, weight: 2}
  algorithm: roundrobin
  check: {type: tcp, interval: 200, timeout: 200, fall: 2}
---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {name: web-sticky}
spec:
  frontend: {port: 80}          # no ip: allocated from the pool
  backend: [198.51.100.11:80, 198.51.100.12:80, 198.51.100.13:80]
  sessionAffinity: {type: ClientIP, timeoutSeconds: 30}
  check: {type: tcp, interval: 200, timeout: 200, fall: 2}
---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {name: web-v6}
spec:
  frontend: {port: 80}
  backend: ["[2001:db8:2::11]:80", "[2001:db8:2::12]:80", "[2001:db8:2::13]:80"]
  check: {type: tcp, interval: 200, timeout: 200, fall: 2}
"""


class Demo:
    def __init__(self, lab: Lab, console: Console, connections: int) -> None:
        self.lab = lab
        self.console = console
        self.n = connections
        self.state_dir = lab.tmpdir / "state"
        self.config = lab.tmpdir / "gatelb.yaml"
        self.log_path = lab.tmpdir / "gatelb.log"

    def gatelb(self, *args: str) -> str:
        done = self.lab.run("gw", [sys.executable, "-m", "gatelb.cli.main", "--state-dir", str(self.state_dir),
                                   *args], timeout=60)
        return done.stdout

    def events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait_for(self, predicate: str, timeout: float = 10.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e.get("event") == predicate:
                    return e
            time.sleep(0.05)
        raise RuntimeError(f"gatelb did not log {predicate!r} within {timeout} s:\n{self.log_path.read_text()}")

    def address_of(self, name: str) -> str:
        """The VIP gatelb allocated, from `gatelb status` (the daemon records it within a second)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (self.state_dir / "state.json").exists():
                for lb in json.loads(self.gatelb("status", "-o", "json"))["loadBalancers"]:
                    if lb["name"] == name and lb["frontend"]["ip"]:
                        return str(lb["frontend"]["ip"])
            time.sleep(0.1)
        raise RuntimeError(f"{name} has no address in `gatelb status`")

    def show(self, title: str, result: ClientResult) -> None:
        show_spread(self.console, title, result)

    def run(self) -> None:
        c = self.console
        c.rule("[bold]gatelb demo: one gateway[/bold]")
        c.print(f"lab {self.lab.lab_id}: client 192.0.2.10 -> gateway -> be1..be3 (198.51.100.11-13), HTTP on :80")
        self.lab.start_backends()
        self.config.write_text(CONFIG)
        with open(self.log_path, "w") as log:
            self.lab.popen("gw", [sys.executable, "-m", "gatelb.cli.main", "--state-dir", str(self.state_dir),
                                  "run", "-f", str(self.config), "--log-format", "json"],
                           stdin=None, stdout=log, stderr=log)
        sync = self.wait_for("sync")
        c.print(f"gatelb run: first sync (full, {sync['changes']} objects) in {sync['duration_ms']} ms\n")

        self.show(f"web 203.0.113.10:80, random: {self.n} new connections",
                  self.lab.connect_many("http", "203.0.113.10", 80, self.n))
        self.show(f"web-weighted 203.0.113.11:80, round robin, weights 1:1:2: {self.n} connections",
                  self.lab.connect_many("http", "203.0.113.11", 80, self.n))
        sticky = self.address_of("web-sticky")
        self.show(f"web-sticky {sticky}:80 (allocated), ClientIP affinity: {self.n // 3} connections",
                  self.lab.connect_many("http", sticky, 80, self.n // 3))
        v6 = self.address_of("web-v6")
        self.show(f"web-v6 [{v6}]:80 (allocated): {self.n // 3} connections",
                  self.lab.connect_many("http", v6, 80, self.n // 3))

        c.rule("failover")
        c.print("killing be2 (SIGKILL)...")
        killed_at = time.time()
        self.lab.kill_backend(2)
        deadline = time.monotonic() + 5
        down_at = None
        while down_at is None and time.monotonic() < deadline:
            for e in self.events():
                if e.get("event") == "sync" and float(str(e.get("wall_time", 0))) > killed_at \
                        and "health" in str(e.get("trigger")):
                    down_at = float(str(e["wall_time"]))
                    break
            time.sleep(0.05)
        if down_at is not None:
            c.print(f"gatelb took be2 out of the data path {1000 * (down_at - killed_at):.0f} ms after it died\n")
        self.show(f"web after be2 died: {self.n} connections",
                  self.lab.connect_many("http", "203.0.113.10", 80, self.n))
        c.print("restarting be2...")
        self.lab.start_backend(2)
        time.sleep(1.0)
        self.show(f"web after be2 came back: {self.n} connections",
                  self.lab.connect_many("http", "203.0.113.10", 80, self.n))

        c.rule("gatelb status")
        c.file.write(self.gatelb("status"))  # as gatelb prints it (columns wider than the console)


def run_basic_act(console: Console, connections: int) -> None:
    with Lab(backends=3) as lab:
        Demo(lab, console, connections).run()
