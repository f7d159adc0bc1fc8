"""The guard of a member that is not active: forwarded traffic dropped before conntrack sees it.

keepalived adds the backend gateway (and sends its gratuitous ARP / unsolicited NA) the moment it
becomes MASTER, before any notification reaches gatelb. A backend's packet of an established
connection arriving in that window would make the kernel create a fresh conntrack entry (TCP
pick-up) that is not NATed and that then blocks the commit of the replicated one. The guard
drops such packets (TCP retransmits them) until gatelb has committed the replicated state; it is
in place whenever the member is not active.

Its own table `inet gatelb-ha`, at priority -310 (before raw, -300, and conntrack, -200), so the
data plane's table is never touched. It lets through what the member itself needs: loopback,
its own local addresses (BGP, health-check replies, the VRRP and conntrackd peers), broadcast and
multicast (VRRP, neighbour discovery); it drops the rest, including traffic to the addresses that
move with the active role.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

from gatelb.model import IPAddress

TABLE = "gatelb-ha"


class GuardError(RuntimeError):
    pass


def render(moving: Iterable[IPAddress]) -> str:
    addrs = sorted(set(moving), key=lambda a: (a.version, int(a)))
    v4 = ", ".join(str(a) for a in addrs if a.version == 4)
    v6 = ", ".join(str(a) for a in addrs if a.version == 6)
    lines = [
        f"add table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "    chain guard {",
        "        type filter hook prerouting priority -310; policy accept;",
        '        iif "lo" accept',
        *([f"        ip daddr {{ {v4} }} drop"] if v4 else []),
        *([f"        ip6 daddr {{ {v6} }} drop"] if v6 else []),
        "        fib daddr type { local, broadcast, multicast } accept",
        "        counter drop",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def removal() -> str:
    return f"add table inet {TABLE}\ndelete table inet {TABLE}\n"


def apply(text: str) -> None:
    done = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise GuardError(f"nft (table {TABLE}): {done.stderr.strip()}")
