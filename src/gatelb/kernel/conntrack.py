"""Deleting conntrack entries, so UDP flows leave a backend that went away.

A UDP "connection" has no end: while a client keeps sending, its conntrack entry keeps the NAT
binding to the old backend forever, black-holing the flow. Deleting the entry makes the next
packet a new flow, which the NAT chain sends to a live backend. TCP needs none of this: a dead
backend's connections fail on their own, and draining ones must be left alone.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable

from gatelb.dataplane.changes import Flow


def flush_flows(flows: Iterable[Flow], netns: str | None = None) -> int:
    """Delete the conntrack entries of each (protocol, vip, port, backend, backend port).
    Returns how many `conntrack -D` calls found something to delete."""
    binary = shutil.which("conntrack") or "/usr/sbin/conntrack"
    prefix = ["ip", "netns", "exec", netns] if netns else []
    hits = 0
    for f in flows:
        argv = [
            *prefix, binary, "-D", "-f", "ipv6" if f.vip.version == 6 else "ipv4",
            "-p", f.protocol.value,
            "--orig-dst", str(f.vip), "--orig-port-dst", str(f.port),
            "--reply-src", str(f.backend.address), "--reply-port-src", str(f.backend.port),
        ]
        # Exit status 1 means "0 flow entries deleted": not an error for us.
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if proc.returncode == 0:
            hits += 1
    return hits
