"""Runs the role machine (gatelb.announce.ha) of this member of an active-standby group: feeds
it keepalived's reports and the resync's end, and carries its actions out in order (conntrackd,
the guard, the track file, the BGP announcements through the announcer).

Threads: `ensure()` runs in the announcer's apply thread, `handle()` in the announcer's HA
worker thread (one at a time, in the order keepalived reported); a lock keeps the machine's
transitions and their actions together. The resync wait holds no lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from gatelb.announce import guard
from gatelb.announce.conntrackd import Conntrackd, ConntrackdError
from gatelb.announce.conntrackd_config import render as render_conntrackd
from gatelb.announce.decide import L2Claim
from gatelb.announce.ha import Action, Member, Role, start, sync_lost, synced, vrrp
from gatelb.announce.keepalived import Keepalived, KeepalivedError, read_links
from gatelb.announce.keepalived_config import (
    ACTIVE_BONUS,
    HA_PRIORITIES,
    HaInstance,
    bgp_track_file,
    ha_priority,
    ha_vrid,
    track_file,
)
from gatelb.announce.l2 import FAULT, Link, _interface_for
from gatelb.announce.log import event
from gatelb.model import GatewayGroup, IPAddress

RESYNC_MAX_S = 2.0  # no answer from the peer in this time: it has no state to give (down, or first boot)
RESYNC_SETTLE_S = 0.2  # after the peer's first answer: its bulk update is sent at once
POLL_S = 0.05


def instance_name(group: GatewayGroup) -> str:
    return f"gatelb-ha-{group.name}"[:31]  # keepalived's name limit is generous; keep it readable


def ha_instance(group: GatewayGroup, node: str, claims: Iterable[L2Claim], links: Mapping[str, Link],
                peers: Iterable[IPAddress] = ()) -> HaInstance:
    """This member's VRRP instance of `group`: the backend gateway and the L2 VIPs move with it;
    its uplinks (tracked) are the interfaces on the subnet of a BGP peer (`peers`: their addresses)
    and those of the L2 VIPs, other than the group's own interface."""
    assert group.backend_gateway is not None  # the schema requires it in active-standby
    addresses = [f"{group.backend_gateway} dev {group.interface}"]
    uplinks: set[str] = set()
    for claim in claims:
        for iface in claim.interfaces or ((_interface_for(claim.vip, links) or group.interface),):
            addresses.append(f"{claim.vip}/{claim.vip.max_prefixlen} dev {iface}")
            uplinks.add(iface)
    peers = tuple(peers)
    for peer in peers:
        if (via := _interface_for(peer, links)) is not None:  # none for a multi-hop peer: its session counts
            uplinks.add(via)
    uplinks.discard(group.interface)  # keepalived already puts the instance in FAULT when it fails
    names = tuple(m.name for m in group.members)
    rank = names.index(node)
    return HaInstance(instance_name(group), group.name, group.interface, ha_vrid(group.name),
                      HA_PRIORITIES[min(rank, len(HA_PRIORITIES) - 1)], names, tuple(addresses),
                      tuple(sorted(uplinks)), bool(peers))


class HaController:
    def __init__(self, node: str, directory: Path, keepalived: Keepalived, on_announce: Callable[[], None],
                 post: Callable[[str], None], bgp_established: Callable[[], bool | None] = lambda: None) -> None:
        self.node = node
        self.conntrackd = Conntrackd(directory)
        self.keepalived = keepalived
        self._on_announce = on_announce  # wakes the announcer (BGP prefixes on or off)
        self._post = post  # queues an event for handle() (thread-safe)
        self._lock = threading.RLock()
        self.group: GatewayGroup | None = None
        self.instance: HaInstance | None = None
        self.member: Member | None = None
        self.announcing = False
        self.track = FAULT
        self._bgp_established = bgp_established  # any BGP session established (None: no BGP)
        self.bgp_down = True  # until FRR says otherwise: a member that starts has no session yet
        self.uplinks_down: list[str] = []  # keepalived tracks them itself; this is for the status
        self._moving: tuple[IPAddress, ...] = ()
        self.sync: dict[str, Any] = {}
        self.transitions: list[dict[str, Any]] = []  # the last few, for status

    @property
    def active(self) -> bool:
        return self.member is not None and self.member.active

    def tracks(self) -> dict[Path, str]:
        if self.instance is None:
            return {}
        out = {track_file(self.keepalived.directory, self.instance): f"{self.track}\n"}
        if self.instance.bgp:
            out[bgp_track_file(self.keepalived.directory, self.instance)] = f"{int(self.bgp_down)}\n"
        return out

    def ensure(self, group: GatewayGroup, instance: HaInstance) -> None:
        """Called before keepalived is (re)configured: conntrackd runs with this group's file, the
        guard covers the moving addresses, and a (re)started conntrackd restarts the sync."""
        with self._lock:
            self.group, self.instance = group, instance
            moving = tuple(sorted({_ip(a) for a in instance.addresses}, key=lambda a: (a.version, int(a))))
            restarted = False
            if group.state_sync:
                restarted = self.conntrackd.apply(render_conntrackd(group, self.node, self.conntrackd.directory))
            if self.member is None:
                self._moving = moving
                self.member, actions = start(group.state_sync)
                self._note("start", actions)
                self._run(actions)
            elif restarted:
                self.member, actions = sync_lost(self.member)
                self._note("conntrackd-restarted", actions)
                self._run(actions)
            if moving != self._moving:
                self._moving = moving
                if not self.active:
                    guard.apply(guard.render(moving))

    def handle(self, what: str) -> None:
        """One event: `vrrp:STATE`, `resync`, `watch`."""
        if what == "resync":
            self._resync()
            return
        if what == "watch":
            self._watch()
            return
        with self._lock:
            if self.member is None or not what.startswith("vrrp:"):
                return
            state = what.split(":", 1)[1]
            before = self.member.role
            self.member, actions = vrrp(self.member, state)
            if actions or before is not self.member.role:
                self._note(f"vrrp {state}", actions)
            self._run(actions)

    def _note(self, why: str, actions: list[Action]) -> None:
        assert self.member is not None
        entry = {"time": time.time(), "why": why, "role": str(self.member.role), "actions": [str(a) for a in actions]}
        self.transitions = [*self.transitions[-9:], entry]
        event(logging.INFO, "ha-role", node=self.node, group=self.group.name if self.group else "",
              role=str(self.member.role), vrrp=self.member.vrrp, cause=why, actions=entry["actions"],
              wall_time=entry["time"])

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            t0 = time.perf_counter()
            if action is Action.GUARD:
                guard.apply(guard.render(self._moving))
            elif action is Action.UNGUARD:
                guard.apply(guard.removal())
            elif action in (Action.ELIGIBLE, Action.INELIGIBLE, Action.HOLD):
                self.track = {Action.ELIGIBLE: 0, Action.INELIGIBLE: FAULT, Action.HOLD: ACTIVE_BONUS}[action]
                if self.instance is not None:
                    self.keepalived.prepare()
                    self.keepalived.write_tracks(self.tracks())
            elif action is Action.COMMIT:
                self._commit()
            elif action in (Action.ANNOUNCE, Action.WITHDRAW):
                self.announcing = action is Action.ANNOUNCE
                self._on_announce()
            elif action is Action.DEMOTE:
                self._quiet(self.conntrackd.command, "-t")
            elif action is Action.RESYNC:
                self._post("resync")  # waits: in the worker, without the lock
            if action is not Action.RESYNC:
                event(logging.DEBUG, "ha-action", action=str(action),
                      duration_ms=round((time.perf_counter() - t0) * 1000, 2))

    def _commit(self) -> None:
        t0 = time.perf_counter()
        before = self._quiet(self.conntrackd.stats) or {}
        # the upstream primary-backup.sh sequence: commit the external cache into the kernel, flush
        # both caches, refill the internal one from the kernel, send it to the peer in bulk
        self.conntrackd.command("-c")
        committed_ms = round((time.perf_counter() - t0) * 1000, 1)
        for flag in ("-f", "-R", "-B"):
            self._quiet(self.conntrackd.command, flag)
        event(logging.INFO, "ha-commit", entries=before.get("external"), commit_ms=committed_ms,
              total_ms=round((time.perf_counter() - t0) * 1000, 1), wall_time=time.time())

    def _resync(self) -> None:
        """`conntrackd -n`, then wait for the peer's bulk update (or its silence)."""
        t0 = time.monotonic()
        answered = False
        try:
            base = self.conntrackd.stats().get("recv_pckts", 0)
            self.conntrackd.command("-n")
            first: float | None = None
            while time.monotonic() - t0 < RESYNC_MAX_S:
                time.sleep(POLL_S)
                if self.conntrackd.stats().get("recv_pckts", 0) > base:
                    first = first or time.monotonic()
                    if time.monotonic() - first >= RESYNC_SETTLE_S:
                        answered = True
                        break
        except (ConntrackdError, OSError) as err:
            event(logging.ERROR, "ha-resync-failed", error=str(err))
            time.sleep(1.0)
            self._post("resync")
            return
        with self._lock:
            if self.member is None or self.member.role is not Role.SYNCING:
                return
            stats = self._quiet(self.conntrackd.stats) or {}
            self.sync.update(last_resync=time.time(), peer_answered=answered)
            self.member, actions = synced(self.member)
            self._note("synced" if answered else "no answer from the peer: nothing to sync", actions)
            event(logging.INFO, "ha-synced", answered=answered, external=stats.get("external"),
                  duration_ms=round((time.monotonic() - t0) * 1000, 1))
            self._run(actions)

    def _watch(self) -> None:
        """Every second: the BGP sessions (the upstream penalty), conntrackd alive (restarted, and
        resynced, if not), the sync counters."""
        group, instance = self.group, self.instance
        if group is None or instance is None:
            return
        self._watch_bgp(instance)
        if not group.state_sync:
            return
        if not self.conntrackd.running():
            event(logging.ERROR, "conntrackd-died")
            with self._lock:
                self.conntrackd.applied = None
                self.ensure(group, instance)
            return
        stats = self._quiet(self.conntrackd.stats)
        if stats:
            if stats.get("recv_pckts", 0) > self.sync.get("recv_pckts", 0):
                self.sync["last_received"] = time.time()
            self.sync.update(stats)

    def _watch_bgp(self, instance: HaInstance) -> None:
        with contextlib.suppress(KeepalivedError, OSError, ValueError):  # only for the status
            links = read_links()
            self.uplinks_down = [i for i in instance.uplinks if i in links and not links[i].up]
        try:
            established = self._bgp_established() if instance.bgp else None
        except Exception as err:  # FRR not answering (restarting, busy) is no verdict on the sessions
            event(logging.WARNING, "ha-bgp-state-unknown", error=str(err))
            return
        down = established is False
        if down != self.bgp_down:
            with self._lock:
                self.bgp_down = down
                event(logging.INFO, "ha-upstream", bgp_established=not down, wall_time=time.time(),
                      priority=self.priority())
                self.keepalived.prepare()
                self.keepalived.write_tracks(self.tracks())

    def priority(self) -> int | None:
        """The priority keepalived advertises for this member (None: FAULT), from what gatelb
        knows: the role track, the BGP penalty and the uplinks' link state (read every second)."""
        if self.instance is None:
            return None
        return ha_priority(self.instance.priority, self.track, len(self.uplinks_down),
                           self.instance.bgp and self.bgp_down)

    def _quiet(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (ConntrackdError, OSError) as err:
            event(logging.WARNING, "conntrackd-command-failed", error=str(err))
            return None

    def stop(self) -> None:
        with self._lock:
            self.conntrackd.stop()
            self.member = None
            self.announcing = False

    def info(self) -> dict[str, Any]:
        group, m = self.group, self.member
        if group is None or m is None:
            return {}
        peer = next((x.name for x in group.members if x.name != self.node), "")
        active = self.node if m.active else (peer if m.vrrp == "BACKUP" else None)
        inst = self.instance
        upstream = {"uplinks": list(inst.uplinks) if inst else [], "uplinksDown": list(self.uplinks_down),
                    "bgp": bool(inst and inst.bgp),
                    "bgpEstablished": None if not (inst and inst.bgp) else not self.bgp_down}
        return {"group": group.name, "mode": group.mode, "node": self.node, "role": str(m.role), "vrrp": m.vrrp,
                "members": [x.name for x in group.members], "active": active,
                "addresses": {x.name: str(x.address) for x in group.members},
                "backendGateway": str(group.backend_gateway) if group.backend_gateway else None,
                "priority": self.priority(), "upstream": upstream,
                "stateSync": group.state_sync, "sync": dict(self.sync), "transitions": self.transitions}


def _ip(address: str) -> IPAddress:
    import ipaddress

    return ipaddress.ip_interface(address.split()[0]).ip
