"""keepalived's configuration for one gateway, rendered purely from its L2 plan (golden tests).

- VRRP version 3, adverts every 0.1 s (keepalived 2.x takes centiseconds): a backup takes over
  3 adverts plus the skew time (under 0.31 s) after the master's last advert.
- Every instance starts as BACKUP and preempts: a member that comes back takes its own instance
  back, so the VIPs stay spread.
- The VIPs become addresses of the interface (/32, /128) on the MASTER only, so only its MAC
  answers ARP/NDP, and nftables' prerouting DNAT still takes the traffic (the DNAT happens before
  the routing decision that would deliver a local address). The first VIP is the instance's
  `virtual_ipaddress` (keepalived wants one, and carries it in the adverts), the others are
  `virtual_ipaddress_excluded`: adverts stay small whatever the number of VIPs.
- Gratuitous ARP / unsolicited NA: like MetalLB (one at once, then every 1.1 s for 5 s, the
  1.1 s to pass Linux's 1 s neighbour lock time) within keepalived's whole-second timers: two
  at the takeover, two more 2 s later, and one a minute while MASTER so that switches' MAC tables
  (300 s) never age out.
- An active-standby GatewayGroup (docs/ha.md) has one instance of its own, `gatelb-ha-<group>`:
  the backend gateway as its virtual address and the L2 VIPs as excluded ones, the same
  sub-second adverts, and three weights on its priority (`ha_priority` does keepalived's sum):
  - the role track file (weight 1), written by gatelb: FAULT while the member has not synced the
    connection state, `ACTIVE_BONUS` while it is active, 0 otherwise. The bonus replaces
    keepalived's `nopreempt`: with `nopreempt` a lowered priority never moves the MASTER (only
    FAULT does, and FAULT would also drop the last healthy member), so the instance preempts and
    the active member's bonus (more than the members' base difference) keeps a returning member
    BACKUP;
  - `track_interface` on the uplinks (the interfaces towards the BGP peers and the L2 VIPs),
    `UPSTREAM_WEIGHT`: keepalived sees a link go down itself (netlink), at once, even without
    gatelb;
  - the BGP track file (`UPSTREAM_WEIGHT` when no BGP session of the member is established),
    written by gatelb from FRR's neighbour states (a BGP session can fail on a link that stays up).
  An upstream penalty is larger than the bonus plus the base difference, so an active member
  without upstream falls below a healthy standby, which takes over; a standby as badly off never
  does (the same penalty on both keeps the order).
- State changes go to a FIFO gatelb reads (`INSTANCE "name" MASTER 254`); the health penalty
  comes from one track file per instance (watched by keepalived, no reload).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from gatelb.announce.l2 import L2Plan, VrrpInstance

ADVERT_INT_S = "0.1"
GARP_REPEAT = 2
GARP_SECOND_SET_S = 2
GARP_REFRESH_S = 60


# Chosen so that keepalived never clamps a sum (200 + 50 <= 254, 190 - 2 x 90 >= 1): the order of
# the members is then exactly the order of their upstreams' health (tests/unit/test_ha.py).
HA_PRIORITIES = (200, 190)  # by member order: who wins when both start at once
ACTIVE_BONUS = 50  # > the base difference: the active member keeps MASTER against a returning one
UPSTREAM_WEIGHT = -90  # < -(ACTIVE_BONUS + the base difference): no upstream, no longer preferred
PRIORITY_MIN, PRIORITY_MAX = 1, 254  # keepalived clamps the sum of the weights to these


@dataclass(frozen=True, slots=True)
class HaInstance:
    """The VRRP instance of an active-standby group, as this member renders it."""

    name: str  # gatelb-ha-<group>
    group: str
    interface: str
    vrid: int
    priority: int
    members: tuple[str, ...]
    addresses: tuple[str, ...]  # "ADDR/PREFIX dev IFACE": the backend gateway first, then the L2 VIPs
    uplinks: tuple[str, ...] = ()  # the interfaces towards the upstream (track_interface)
    bgp: bool = False  # the member has BGP peers: their sessions are tracked (the BGP track file)


def ha_priority(base: int, track: int, links_down: int = 0, bgp_down: bool = False) -> int | None:
    """The priority keepalived advertises for the HA instance (None: FAULT, it advertises nothing):
    the base plus the role track value plus the upstream penalties, clamped as keepalived does."""
    if track <= -254:
        return None
    total = base + track + UPSTREAM_WEIGHT * (links_down + int(bgp_down))
    return min(PRIORITY_MAX, max(PRIORITY_MIN, total))


def ha_vrid(group: str) -> int:
    """From the group's name alone, so both members agree (1-255)."""
    return 1 + zlib.crc32(group.encode()) % 255


def track_file(directory: Path, instance: VrrpInstance | HaInstance) -> Path:
    return directory / "track" / instance.name


def bgp_track_name(ha: HaInstance) -> str:
    return f"{ha.name}-bgp"


def bgp_track_file(directory: Path, ha: HaInstance) -> Path:
    """Holds 1 while no BGP session of the member is established, else 0 (x UPSTREAM_WEIGHT)."""
    return directory / "track" / bgp_track_name(ha)


def _ha_instance(ha: HaInstance) -> list[str]:
    lines = [
        f"vrrp_instance {ha.name} {{",
        f"    # active-standby GatewayGroup {ha.group}; members {', '.join(ha.members)}",
        "    state BACKUP",
        f"    interface {ha.interface}",
        f"    virtual_router_id {ha.vrid}",
        f"    priority {ha.priority}",
        f"    advert_int {ADVERT_INT_S}",
        "    track_file {",
        f"        {ha.name}",
        *([f"        {bgp_track_name(ha)} weight {UPSTREAM_WEIGHT}"] if ha.bgp else []),
        "    }",
        *(["    track_interface {", *(f"        {i} weight {UPSTREAM_WEIGHT}" for i in ha.uplinks), "    }"]
          if ha.uplinks else []),
        "    virtual_ipaddress {",
        f"        {ha.addresses[0]}",
        "    }",
    ]
    if len(ha.addresses) > 1:
        lines += ["    virtual_ipaddress_excluded {", *(f"        {a}" for a in ha.addresses[1:]), "    }"]
    return [*lines, "}"]


def _prefix(instance: VrrpInstance) -> int:
    return 32 if instance.family == 4 else 128


def _instance(inst: VrrpInstance, directory: Path) -> list[str]:
    addrs = [f"{vip}/{_prefix(inst)} dev {inst.interface}" for vip in inst.vips]
    lines = [
        f"vrrp_instance {inst.name} {{",
        f"    # preferred owner {inst.preferred}; members {', '.join(inst.members)}",
        "    state BACKUP",
        f"    interface {inst.interface}",
        f"    virtual_router_id {inst.vrid}",
        f"    priority {inst.priority}",
        f"    advert_int {ADVERT_INT_S}",
        "    track_file {",
        f"        {inst.name}",
        "    }",
        "    virtual_ipaddress {",
        f"        {addrs[0]}",
        "    }",
    ]
    if len(addrs) > 1:
        lines += ["    virtual_ipaddress_excluded {", *(f"        {a}" for a in addrs[1:]), "    }"]
    return [*lines, "}"]


def render(plan: L2Plan, node: str, directory: Path, ha: HaInstance | None = None) -> str:
    out = [
        f"# keepalived configuration of gateway {node}, rendered by gatelb: do not edit",
        "# (gatelb rewrites it and applies it with SIGHUP)",
        "global_defs {",
        f"    router_id {node}",
        f"    vrrp_notify_fifo {directory / 'notify.fifo'}",
        "    vrrp_version 3",
        f"    vrrp_garp_master_repeat {GARP_REPEAT}",
        f"    vrrp_garp_master_delay {GARP_SECOND_SET_S}",
        f"    vrrp_garp_master_refresh {GARP_REFRESH_S}",
        "    vrrp_garp_master_refresh_repeat 1",
        "    vrrp_higher_prio_send_advert",
        "}",
    ]
    named: list[VrrpInstance | HaInstance] = [*([ha] if ha else []), *plan.instances]
    for inst in named:
        out += [
            f"track_file {inst.name} {{",
            f"    file {track_file(directory, inst)}",
            "    weight 1",
            "}",
        ]
    if ha is not None and ha.bgp:
        out += [f"track_file {bgp_track_name(ha)} {{", f"    file {bgp_track_file(directory, ha)}", "}"]
    if ha is not None:
        out += _ha_instance(ha)
    for inst in plan.instances:
        out += _instance(inst, directory)
    return "\n".join(out) + "\n"


def tracks(plan: L2Plan, directory: Path) -> dict[Path, str]:
    """The content of every track file: the health penalty of each instance."""
    return {track_file(directory, inst): f"{inst.track}\n" for inst in plan.instances}
