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
- State changes go to a FIFO gatelb reads (`INSTANCE "name" MASTER 254`); the health penalty
  comes from one track file per instance (watched by keepalived, no reload).
"""

from __future__ import annotations

from pathlib import Path

from gatelb.announce.l2 import L2Plan, VrrpInstance

ADVERT_INT_S = "0.1"
GARP_REPEAT = 2
GARP_SECOND_SET_S = 2
GARP_REFRESH_S = 60


def track_file(directory: Path, instance: VrrpInstance) -> Path:
    return directory / "track" / instance.name


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


def render(plan: L2Plan, node: str, directory: Path) -> str:
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
    for inst in plan.instances:
        out += [
            f"track_file {inst.name} {{",
            f"    file {track_file(directory, inst)}",
            "    weight 1",
            "}",
        ]
    for inst in plan.instances:
        out += _instance(inst, directory)
    return "\n".join(out) + "\n"


def tracks(plan: L2Plan, directory: Path) -> dict[Path, str]:
    """The content of every track file: the health penalty of each instance."""
    return {track_file(directory, inst): f"{inst.track}\n" for inst in plan.instances}
