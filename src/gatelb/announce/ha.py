"""The role of one member of an active-standby GatewayGroup: a pure state machine.

VRRP (keepalived) elects; this machine turns the election and the state sync into actions, in the
order they must run. Its rules (docs/ha.md):

- **A member that is not synced is not eligible.** It starts SYNCING, with its VRRP instance held
  in FAULT (the track file) so keepalived cannot make it MASTER, and asks the peer for its state
  (`conntrackd -n`). Only once the resync is done (or no peer answered: there is no state to get)
  does it become eligible: a returning member never attracts traffic without the current state.
- **No preemption.** Eligibility only lets keepalived decide; the active member holds a priority
  bonus (HOLD, through the track file), so a member that returns stays STANDBY while the other is
  MASTER (keepalived preempts: an active member that loses its upstream falls below a healthy
  standby and hands over, see gatelb.announce.keepalived_config).
- **Commit before traffic.** On MASTER the member commits the replicated state into its kernel
  (`conntrackd -c`, then the primary's housekeeping), and only then lifts its guard (the nftables
  drop of forwarded traffic that protects a non-active member) and announces over BGP.
- **Release first.** On anything but MASTER (BACKUP, FAULT, STOP) an active member first withdraws
  and puts the guard back, then shortens its kernel's timers and syncs again (ineligible until
  done): it follows. It holds the addresses only while keepalived does, so two actives at once would need two
  VRRP masters, which VRRP resolves on a shared segment (the lower priority steps down).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Role(enum.StrEnum):
    SYNCING = "syncing"  # asking the peer for its state; not eligible
    STANDBY = "standby"  # synced, eligible, not MASTER
    ACTIVE = "active"  # MASTER, state committed, guard lifted, announcing


class Action(enum.StrEnum):
    INELIGIBLE = "ineligible"  # track file: FAULT (keepalived cannot become MASTER)
    ELIGIBLE = "eligible"  # track file: 0
    HOLD = "hold"  # track file: the active member's bonus (a returning member does not preempt it)
    RESYNC = "resync"  # conntrackd -n: ask the peer for its whole state, then report Synced
    COMMIT = "commit"  # conntrackd -c (external cache into the kernel), -f, -R, -B
    UNGUARD = "unguard"  # forwarded traffic accepted
    ANNOUNCE = "announce"  # BGP prefixes announced
    WITHDRAW = "withdraw"  # BGP prefixes withdrawn
    GUARD = "guard"  # forwarded traffic dropped before conntrack sees it
    DEMOTE = "demote"  # conntrackd -t: shorten the kernel's timers (its entries are the new active's now)


MASTER = "MASTER"


@dataclass(frozen=True, slots=True)
class Member:
    role: Role
    vrrp: str = "INIT"  # the last state keepalived reported
    state_sync: bool = True
    synced: bool = False

    @property
    def active(self) -> bool:
        return self.role is Role.ACTIVE


def start(state_sync: bool) -> tuple[Member, list[Action]]:
    """A member that starts (or restarts): guarded and ineligible until it has the state."""
    if not state_sync:
        return Member(Role.STANDBY, state_sync=False, synced=True), [Action.GUARD, Action.WITHDRAW,
                                                                       Action.ELIGIBLE]
    return Member(Role.SYNCING), [Action.GUARD, Action.WITHDRAW, Action.INELIGIBLE, Action.RESYNC]


def synced(m: Member) -> tuple[Member, list[Action]]:
    """The resync asked for by RESYNC is complete."""
    if m.role is Role.SYNCING:
        return replace(m, role=Role.STANDBY, synced=True), [Action.ELIGIBLE]
    return replace(m, synced=True), []


def sync_lost(m: Member) -> tuple[Member, list[Action]]:
    """conntrackd restarted: a standby's external cache is gone, so it must sync again before it
    may take over; an active member keeps serving (its kernel holds the state) and refills the
    peer."""
    if m.role is Role.ACTIVE or not m.state_sync:
        return m, []
    return replace(m, role=Role.SYNCING, synced=False), [Action.INELIGIBLE, Action.RESYNC]


def vrrp(m: Member, state: str) -> tuple[Member, list[Action]]:
    """keepalived reported `state` (MASTER, BACKUP, FAULT, STOP) for the group's instance."""
    m = replace(m, vrrp=state)
    if state == MASTER:
        if m.role is Role.STANDBY:
            commit = [Action.COMMIT] if m.state_sync else []
            return replace(m, role=Role.ACTIVE), [Action.HOLD, *commit, Action.UNGUARD, Action.ANNOUNCE]
        return m, []  # SYNCING: ineligible, so keepalived steps down at once; nothing was taken
    if m.role is Role.ACTIVE:
        if not m.state_sync:
            return replace(m, role=Role.STANDBY), [Action.WITHDRAW, Action.GUARD, Action.ELIGIBLE]
        # its external cache is stale (it was the one sending): it follows again once resynced
        return replace(m, role=Role.SYNCING, synced=False), [Action.WITHDRAW, Action.GUARD, Action.DEMOTE,
                                                              Action.INELIGIBLE, Action.RESYNC]
    return m, []
