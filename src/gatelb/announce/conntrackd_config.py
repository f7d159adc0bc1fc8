"""conntrackd's configuration for one member of an active-standby GatewayGroup, rendered purely
(golden test).

- FTFW (the reliable protocol: sequence numbers, acknowledgements, resends) over UDP unicast to
  the other member's address on the group's interface, the link the members already share.
- The external cache is kept (`DisableExternalCache Off`): the standby holds the peer's state in
  conntrackd, not in its kernel, until it becomes active and commits it (`conntrackd -c`); its
  kernel never holds entries it does not route.
- Everything lives under the member's state directory: the UNIX control socket, the lock file,
  the log. Nothing in /etc, no syslog.
- Flows of the members themselves (BGP, health checks, the sync itself) are not replicated: the
  members' and the backend gateway's addresses are ignored.
"""

from __future__ import annotations

from pathlib import Path

from gatelb.model import GatewayGroup

PORT = 3780  # conntrackd's default
SOCKET_BUFFER = 1249280  # the upstream example's value: room for a burst of updates
COMMIT_TIMEOUT_S = 1800
PURGE_TIMEOUT_S = 5


def socket_path(directory: Path) -> Path:
    return directory / "conntrackd.ctl"


def render(group: GatewayGroup, node: str, directory: Path) -> str:
    me = next(m for m in group.members if m.name == node)
    peer = next(m for m in group.members if m.name != node)
    fam = "IPv4" if me.address.version == 4 else "IPv6"
    own = {m.address for m in group.members} | ({group.backend_gateway.ip} if group.backend_gateway else set())
    ignore = sorted(own, key=lambda a: (a.version, int(a)))
    ignored = ["IPv4_address 127.0.0.1", "IPv6_address ::1",
               *(f"IPv{a.version}_address {a}" for a in ignore)]
    lines = [
        f"# conntrackd configuration of gateway {node} (GatewayGroup {group.name}, peer {peer.name}),",
        "# rendered by gatelb: do not edit",
        "Sync {",
        "    Mode FTFW {",
        "        DisableExternalCache Off",
        f"        CommitTimeout {COMMIT_TIMEOUT_S}",
        f"        PurgeTimeout {PURGE_TIMEOUT_S}",
        "    }",
        "    UDP {",
        f"        {fam}_address {me.address}",
        f"        {fam}_Destination_Address {peer.address}",
        f"        Port {PORT}",
        f"        Interface {group.interface}",
        f"        SndSocketBuffer {SOCKET_BUFFER}",
        f"        RcvSocketBuffer {SOCKET_BUFFER}",
        "        Checksum on",
        "    }",
        "}",
        "General {",
        "    HashSize 32768",
        "    HashLimit 262144",
        f"    LogFile {directory / 'conntrackd.log'}",
        "    Syslog off",
        f"    LockFile {directory / 'conntrackd.lock'}",
        "    UNIX {",
        f"        Path {socket_path(directory)}",
        "    }",
        "    NetlinkBufferSize 2097152",
        "    NetlinkBufferSizeMaxGrowth 8388608",
        "    NetlinkOverrunResync On",
        "    Filter From Userspace {",
        "        Protocol Accept {",
        "            TCP",
        "            UDP",
        "        }",
        "        Address Ignore {",
        *(f"            {line}" for line in ignored),
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"
