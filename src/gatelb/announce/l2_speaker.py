"""The L2 owner's side of a VIP when the election is not keepalived's (Kubernetes mode: Leases).

`apply({vip: interfaces})` makes exactly the VIPs this gateway owns addresses (/32, /128) of their
interfaces, so the kernel answers ARP and NDP for them (the same choice as with keepalived:
no responder process to keep alive; the other gateways do not have the address and stay
silent), and removes the ones it no longer owns. Each takeover sends a gratuitous ARP /
unsolicited NA at once and again at BURST_S (MetalLB repeats its own for a few seconds too), in
a thread, so that a lost first packet costs the clients a fraction of a second, not their cache
timeout.

What was added is recorded in `<state-dir>/l2/held.json`: a gatelb killed with its VIPs in place
removes them on its next start (or keeps them, if it still owns them), and `stop()` removes every
one. Addresses the host had by itself are never touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from gatelb.announce import garp
from gatelb.announce.log import event
from gatelb.model import IPAddress

BURST_S = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)  # offsets of the repeated announcements after a takeover

Held = frozenset[tuple[IPAddress, str]]


class SpeakerError(RuntimeError):
    pass


class L2Election(Protocol):
    """Who owns which L2 VIP, decided elsewhere (Kubernetes: sources/kubernetes/l2lease.py). The
    announcer says what this gateway may own; the election calls `on_change` when `owned()` changed."""

    on_change: Callable[[], None]

    def want(self, wanted: Mapping[IPAddress, tuple[tuple[str, ...], bool]]) -> None: ...

    def owned(self) -> frozenset[IPAddress]: ...

    def info(self) -> dict[str, Any]: ...


def _ip(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10, check=False)


class L2Speaker:
    def __init__(self, directory: Path, send: Callable[[str, IPAddress], None] = garp.announce,
                 burst_s: tuple[float, ...] = BURST_S) -> None:
        self.directory = directory
        self._send = send
        self._burst = burst_s
        self.held: Held | None = None  # None: not read from the record yet
        self.taken_at: dict[tuple[IPAddress, str], float] = {}  # wall time of each takeover (status)

    @property
    def record(self) -> Path:
        return self.directory / "held.json"

    def _load(self) -> Held:
        try:
            rows = json.loads(self.record.read_text())
            return frozenset((ipaddress.ip_address(v), str(i)) for v, i in rows)
        except (OSError, ValueError, TypeError):
            return frozenset()

    def _save(self, held: Held) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted([str(v), i] for v, i in held)))
        tmp.replace(self.record)

    def apply(self, owned: Mapping[IPAddress, tuple[str, ...]]) -> tuple[Held, Held]:
        """Make the owned VIPs (and only those) addresses of their interfaces; returns what was
        (added, removed)."""
        held = self._load() if self.held is None else self.held
        want: Held = frozenset((v, i) for v, ifaces in owned.items() for i in ifaces)
        removed = held - want
        for vip, iface in sorted(removed, key=str):
            done = _ip(["addr", "del", f"{vip}/{vip.max_prefixlen}", "dev", iface])
            if done.returncode != 0 and "Cannot assign" not in done.stderr and "Cannot find" not in done.stderr:
                event(logging.WARNING, "l2-address-remove-failed", vip=str(vip), interface=iface,
                      error=done.stderr.strip())
            self.taken_at.pop((vip, iface), None)
        added: set[tuple[IPAddress, str]] = set()
        failed = []
        for vip, iface in sorted(want - held, key=str):
            argv = ["addr", "add", f"{vip}/{vip.max_prefixlen}", "dev", iface]
            done = _ip([*argv, "nodad"] if vip.version == 6 else argv)
            if done.returncode != 0 and "File exists" not in done.stderr:
                failed.append(f"{vip} on {iface}: {done.stderr.strip()}")
                continue
            added.add((vip, iface))
            self.taken_at[(vip, iface)] = time.time()
        self.held = frozenset((held - removed) | added)
        self._save(self.held)
        if added:
            threading.Thread(target=self._announce, args=(sorted(added, key=str),), name="garp", daemon=True).start()
        if failed:
            raise SpeakerError("cannot add the owned VIPs: " + "; ".join(failed))
        return frozenset(added), frozenset(removed)

    def _announce(self, targets: list[tuple[IPAddress, str]]) -> None:
        start = time.monotonic()
        for offset in self._burst:
            delay = start + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for vip, iface in targets:
                if self.held is None or (vip, iface) not in self.held:
                    continue  # released meanwhile
                with contextlib.suppress(OSError):  # the link went away: nothing to tell
                    self._send(iface, vip)

    def stop(self) -> None:
        """Remove every VIP this gateway added (SIGTERM: the next owner takes them over)."""
        self.apply({})
