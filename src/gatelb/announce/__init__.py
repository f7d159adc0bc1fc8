"""Announcing VIPs to the network: a consumer of the one reconciler.

    set(SyncedState) -> decide (pure: what this gateway announces where) -> the announcer's task
        -> FRR (BGP, BFD): render the configuration, frr-reload.py applies the difference
        -> keepalived (L2: VRRP elects one ARP/NDP owner per VIP): render, SIGHUP; health
           changes only rewrite track files

`Announcer.set()` is cheap (it computes the plan and wakes the task when the plan changed); the
FRR work runs in `run()`, a supervised task, in a thread. FRR is started only once a plan needs
BGP, keepalived once a plan has L2 VIPs. Cancelling `run()` (SIGTERM) shuts every BGP neighbor
down first (a Cease notification: the routers withdraw our routes at once), then stops FRR, and
stops keepalived (priority-0 adverts: the other members take the VIPs over at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gatelb.announce import guard
from gatelb.announce.conntrackd import ConntrackdError
from gatelb.announce.decide import EMPTY, BGPPlan, Plan, decide
from gatelb.announce.frr import FrrError, FrrInstance
from gatelb.announce.frr_config import render
from gatelb.announce.frr_external import ExternalFrr
from gatelb.announce.guard import GuardError
from gatelb.announce.ha_control import HaController, ha_instance
from gatelb.announce.keepalived import Keepalived, KeepalivedError, parse_notify, read_links
from gatelb.announce.keepalived_config import render as render_keepalived
from gatelb.announce.keepalived_config import tracks
from gatelb.announce.l2 import EMPTY_L2, FAULT, L2Plan, Link, VrrpInstance, interface_for, plan_l2
from gatelb.announce.l2_speaker import L2Election, L2Speaker, SpeakerError
from gatelb.announce.log import event
from gatelb.announce.notes import Note, Snapshot, diff
from gatelb.announce.peers import PeerState, VipIndex, parse_states
from gatelb.model import (
    HA_ACTIVE_ACTIVE,
    GatewayGroup,
    IPAddress,
    IPNetwork,
    L2Advertisement,
    NatMode,
    SyncedState,
    ValidationError,
)

WATCH_S = 1.0  # how often the FRR daemons' liveness is checked
RETRY_S = 2.0
STANDBY_PREPEND = 3


def _effective(priority: int, track: int) -> int:
    """The priority keepalived advertises (0: FAULT, the instance steps down)."""
    return 0 if track <= FAULT else min(254, max(1, priority + track))


class Announcer:
    def __init__(self, node: str, directory: Path, frr: FrrInstance | None = None,
                 l2_directory: Path | None = None, election: L2Election | None = None,
                 external: ExternalFrr | None = None) -> None:
        self.node = node
        # An FRR gatelb does not run (--frr-vty-socket): only gatelb's part is added to it
        self.external = external
        # Kubernetes: the L2 owner of each VIP is elected with Leases (the election's own task), and
        # this gateway adds the VIPs it owns and sends the gratuitous ARP itself; no keepalived.
        self.election = election
        self.speaker = L2Speaker((l2_directory or directory.parent / "keepalived").parent / "l2")
        self.l2_owned: dict[IPAddress, tuple[str, ...]] = {}
        if election is not None:
            election.on_change = self._wake_soon
        # Notes about what changed (announced, withdrawn, session, failover) go to `report`: the
        # Kubernetes source makes Events of them. None: nobody listens, nothing is computed.
        self.report: Callable[[list[Note]], None] | None = None
        self._snap = Snapshot()
        self._lbs_of: dict[IPAddress, tuple[str, ...]] = {}
        self.frr = frr or FrrInstance(directory, node)
        self.keepalived = Keepalived(l2_directory or directory.parent / "keepalived")
        self.plan: Plan = EMPTY
        self.errors: list[ValidationError] = []
        self._seen = False
        self._wake = asyncio.Event()
        self._announced: tuple[IPNetwork, ...] = ()
        self._frr_up = False
        self._group: GatewayGroup | None = None
        self._dnat: list[str] = []
        self._l2_advs: dict[str, L2Advertisement] = {}
        self.l2: L2Plan = EMPTY_L2
        self.l2_errors: list[str] = []
        self.l2_states: dict[str, str] = {}  # instance -> MASTER/BACKUP/FAULT (keepalived's FIFO)
        self._fifo: int | None = None
        self._buffer = b""
        # active-standby (docs/ha.md): created when this gateway's group asks for it
        self.ha: HaController | None = None
        self._ha_events: asyncio.Queue[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # BGP peers' session and BFD state as FRR reports them (read every WATCH_S), and which
        # peers each VIP of the applied plan goes to: `gatelb status`, the metrics
        self.peer_states: dict[str, PeerState] = {}
        self._index = VipIndex(None)
        self._l2_by_vip: tuple[L2Plan | None, dict[str, VrrpInstance]] = (None, {})

    def where(self, vip: str | None) -> dict[str, Any]:
        """Where `vip` is announced and how (`gatelb status`, per load balancer): the BGP peers
        with their session and BFD state, the L2 instance with this gateway's VRRP state."""
        if vip is None:
            return {"bgp": [], "l2": None}
        bgp = []
        for prefix, peer in self._index.lookup(vip):
            st = self.peer_states.get(peer)
            bgp.append({"peer": peer, "prefix": prefix, "address": st.address if st else None,
                        "session": st.session if st else "unknown", "bfd": st.bfd if st else None})
        if self._l2_by_vip[0] is not self.l2:
            self._l2_by_vip = (self.l2, {str(v): i for i in self.l2.instances for v in i.vips})
        l2 = None
        if (inst := self._l2_by_vip[1].get(vip)) is not None:
            state = self.l2_states.get(inst.name, "unknown")
            l2 = {"interface": inst.interface, "instance": inst.name, "state": state,
                  "owner": self.node if state == "MASTER" else None,
                  "servableHere": all(str(v) != vip for v in inst.unservable)}
        return {"bgp": bgp, "l2": l2}

    def _read_peers(self) -> None:
        """The peers' session and BFD state from FRR (a thread: one vtysh run); logs changes."""
        bgp = self.plan.bgp
        if bgp is None or not self._frr_up:
            self.peer_states = {}
            return
        # an FRR not ours may run no bfdd: asked about BFD only where a BGPPeer names a profile
        bfd = ["show bfd peers json"] if self.external is None or any(pp.bfd for pp in bgp.peers) else []
        out = self._vtysh("show bgp neighbors json", *bfd)
        states = parse_states(bgp, out)
        for name, st in states.items():
            old = self.peer_states.get(name)
            if old is None or (old.session, old.bfd) != (st.session, st.bfd):
                event(logging.INFO, "bgp-session", peer=name, address=st.address, session=st.session, bfd=st.bfd,
                      wall_time=time.time())
        self.peer_states = states

    def _vtysh(self, *commands: str) -> str:
        return self.external.vtysh(*commands) if self.external is not None else self.frr.vtysh(*commands)

    def _frr_died(self) -> bool:
        if self.external is not None:
            return not self.external.running()
        return len(self.frr.running()) < 3

    def _wake_soon(self) -> None:
        self._wake.set()

    def info(self) -> dict[str, Any]:
        """For the state record (`gatelb status`): the BGP peers' state, where each L2 VIP is
        owned, the HA role."""
        ha = {"ha": self.ha.info()} if self.ha is not None and self.ha.info() else {}
        g = self._group
        if g is not None and g.mode == HA_ACTIVE_ACTIVE:  # every member serves: no role to report
            ha = {"ha": {"group": g.name, "mode": g.mode, "node": self.node, "members": [m.name for m in g.members],
                         "selection": "maglev", "dnat": self._dnat}}
        if self.peer_states:
            ha["bgp"] = {"node": self.node, "peers": [s.as_dict() for _, s in sorted(self.peer_states.items())]}
        if self.election is not None:
            if not self.plan.l2 and not self.l2_errors and not self.l2_owned:
                return ha
            return {**ha, "l2": {"node": self.node, "election": "leases", "owned": sorted(map(str, self.l2_owned)),
                                 "interfaces": {str(v): list(i) for v, i in sorted(self.l2_owned.items(), key=str)},
                                 **self.election.info(), "errors": self.l2_errors}}
        if self.l2.empty and not self.l2_errors:
            return ha
        instances: dict[str, dict[str, Any]] = {}
        for i in self.l2.instances:
            instances[i.name] = {
                "interface": i.interface, "vrid": i.vrid, "priority": _effective(i.priority, i.track),
                "preferred": i.preferred, "state": self.l2_states.get(i.name, "unknown"),
                "vips": [str(v) for v in i.vips], "unservable": [str(v) for v in i.unservable]}
        owned = sorted(v for i in instances.values() if i["state"] == "MASTER" for v in i["vips"])
        return {**ha, "l2": {"node": self.node, "owned": owned, "instances": instances, "errors": self.l2_errors}}

    def set(self, state: SyncedState) -> None:
        from gatelb.announce.decide import group_of

        group = group_of(state.config_of(GatewayGroup).values(), self.node)
        if group != self._group:
            self._wake.set()  # an HA change (mode, backend gateway) changes no plan
        self._group = group
        # dnat in active-active breaks unless the backends route their answers back symmetrically
        # (docs/ha.md): status names those load balancers
        self._dnat = sorted(n for n, svc in state.services.items() if svc.nat is NatMode.DNAT)
        self._l2_advs = state.config_of(L2Advertisement)
        if self.report is not None:
            lbs: dict[IPAddress, list[str]] = {}
            for name in sorted(state.services):
                lbs.setdefault(state.services[name].vip, []).append(name)
            self._lbs_of = {vip: tuple(names) for vip, names in lbs.items()}
        plan, errors = decide(state, self.node, l2_groups=self.election is None)
        if errors:
            if [str(e) for e in errors] != [str(e) for e in self.errors]:
                event(logging.ERROR, "announce-config-invalid", errors=[str(e) for e in errors],
                      keeping="the last good announcements")
            self.errors = errors
            return
        if self.errors:
            event(logging.INFO, "announce-config-valid-again")
        self.errors = []
        if plan != self.plan or not self._seen:
            self.plan, self._seen = plan, True
            self._wake.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ha_events = asyncio.Queue()
        worker = asyncio.create_task(self._ha_worker())
        try:
            while True:
                try:  # not wait_for: in Python 3.11 it can lose a cancellation (a stop never ends)
                    async with asyncio.timeout(WATCH_S):
                        await self._wake.wait()
                except TimeoutError:
                    if self._frr_up and self._frr_died():
                        if self.external is not None:  # the user's FRR: its part is added again once it is back
                            if self.external.applied is not None:
                                event(logging.ERROR, "frr-external-gone", vty_socket=str(self.external.directory))
                            self.external.applied = None
                        else:
                            event(logging.ERROR, "frr-daemon-died", running=self.frr.running())
                        self._wake.set()
                    if (not self.l2.empty or self.ha is not None) and not self.keepalived.running():
                        event(logging.ERROR, "keepalived-died")
                        if self.ha is not None:  # whatever it held, this member is no longer elected
                            self._ha_post("vrrp:STOP")
                        self._wake.set()
                    if self.l2_errors:
                        self._wake.set()  # an interface may have appeared
                    if self.ha is not None:
                        self._ha_post("watch")
                    if self._frr_up:
                        try:
                            await asyncio.to_thread(self._read_peers)
                        except (FrrError, OSError, ValueError) as err:
                            event(logging.WARNING, "bgp-state-unreadable", error=str(err)[:300])
                    self._notify()
                    continue
                self._wake.clear()
                try:
                    await asyncio.to_thread(self._apply, self.plan)
                except (FrrError, KeepalivedError, ConntrackdError, GuardError, SpeakerError, OSError) as err:
                    event(logging.ERROR, "announce-failed", error=str(err))
                    await asyncio.sleep(RETRY_S)
                    self._wake.set()
                self._watch_fifo()
                self._notify()
        finally:
            worker.cancel()
            self._unwatch_fifo()
            if self._frr_up or not self.l2.empty or self.ha is not None or self.l2_owned:
                await asyncio.shield(asyncio.to_thread(self._withdraw))

    def _snapshot(self) -> Snapshot:
        if self.election is not None:
            l2 = dict(self.l2_owned)
        else:
            l2 = {v: (i.interface,) for i in self.l2.instances if self.l2_states.get(i.name) == "MASTER"
                  for v in i.vips}
        bgp: dict[IPAddress, tuple[str, ...]] = {}
        if self._frr_up and self.plan.bgp is not None and (self._group is None or not self._group.ha
                                                           or (self.ha is not None and self.ha.announcing)):
            for vip in self.plan.servable:
                peers = tuple(pp.peer.name for pp in self.plan.bgp.peers
                              if any(vip in prefix for prefix, _ in pp.prefixes))
                if peers:
                    bgp[vip] = peers
        ha = self.ha.info() if self.ha is not None else {}
        sessions = {name: st.session for name, st in self.peer_states.items()}
        return Snapshot(l2, bgp, sessions, (ha["group"], ha["role"]) if ha else None)

    def _notify(self) -> None:
        if self.report is None:
            return
        snap = self._snapshot()
        notes = diff(self.node, self._snap, snap, self._lbs_of)
        self._snap = snap
        if notes:
            self.report(notes)

    async def _ha_worker(self) -> None:
        """The HA role's actions, one event at a time, in keepalived's order (a thread: they run
        conntrackd and nft)."""
        assert self._ha_events is not None
        while True:
            what = await self._ha_events.get()
            if self.ha is None:
                continue
            try:
                await asyncio.to_thread(self.ha.handle, what)
            except (ConntrackdError, GuardError, KeepalivedError, OSError) as err:
                event(logging.ERROR, "ha-failed", event_=what, error=str(err))

    def _ha_post(self, what: str) -> None:
        if self._loop is not None and self._ha_events is not None:
            self._loop.call_soon_threadsafe(self._ha_events.put_nowait, what)

    def _ha_wake(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _watch_fifo(self) -> None:
        if self._fifo is None and (not self.l2.empty or self.ha is not None) and self.keepalived.fifo.exists():
            self._fifo = self.keepalived.open_fifo()
            asyncio.get_running_loop().add_reader(self._fifo, self._read_fifo)

    def _unwatch_fifo(self) -> None:
        if self._fifo is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fifo)
            os.close(self._fifo)
            self._fifo = None

    def _read_fifo(self) -> None:
        assert self._fifo is not None
        try:
            self._buffer += os.read(self._fifo, 65536)
        except BlockingIOError:
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            parsed = parse_notify(raw.decode(errors="replace"))
            if parsed is None:
                continue
            name, state, priority = parsed
            if self.ha is not None and self.ha.instance is not None and name == self.ha.instance.name:
                if state == "MASTER_RX_LOWER_PRI":
                    continue
                self.l2_states[name] = state
                assert self._ha_events is not None
                self._ha_events.put_nowait(f"vrrp:{state}")
                continue
            if state == "MASTER_RX_LOWER_PRI":  # a notice while MASTER (a lower advert was seen)
                state = "MASTER"
            if self.l2_states.get(name) == state:
                continue
            self.l2_states[name] = state
            inst = next((i for i in self.l2.instances if i.name == name), None)
            event(logging.INFO, "l2-state", instance=name, state=state, priority=priority,
                  vips=[str(v) for v in inst.vips] if inst else [], wall_time=time.time())

    def _apply_ha(self, plan: Plan, group: GatewayGroup) -> None:
        """Active-standby: one VRRP instance for the group carries the backend gateway and every L2
        VIP (the L2 spreading does not apply: the active member serves everything)."""
        links = read_links()
        if self.ha is None:
            self.ha = HaController(self.node, self.keepalived.directory.parent / "conntrackd", self.keepalived,
                                   self._ha_wake, self._ha_post, self._bgp_established)
        peers = [pp.peer.peer_address for pp in plan.bgp.peers] if plan.bgp is not None else []
        inst = ha_instance(group, self.node, plan.l2, links, peers)
        self.ha.ensure(group, inst)  # guard and track in place before keepalived may elect
        reloaded = self.keepalived.apply(render_keepalived(EMPTY_L2, self.node, self.keepalived.directory, inst),
                                         self.ha.tracks())
        if reloaded:
            event(logging.INFO, "ha-configured", group=group.name, instance=inst.name, vrid=inst.vrid,
                  priority=inst.priority, addresses=list(inst.addresses))
        self.l2 = EMPTY_L2

    def _bgp_established(self) -> bool | None:
        """Whether a BGP session of this member is established (None: it has no BGP peers); the
        HA instance's upstream penalty (gatelb.announce.keepalived_config)."""
        bgp = self.plan.bgp
        if bgp is None or not bgp.peers:
            return None
        if not self._frr_up:
            return False
        states = json.loads(self._vtysh("show bgp neighbors json") or "{}")
        wanted = {str(pp.peer.peer_address) for pp in bgp.peers}
        return any(isinstance(v, dict) and v.get("bgpState") == "Established" for k, v in states.items()
                   if k in wanted)

    def _apply_l2_leases(self, plan: Plan, election: L2Election) -> None:
        """Kubernetes: tell the election what this gateway may own, and hold exactly what it owns."""
        links: dict[str, Link] = read_links() if plan.l2 else {}
        errors: list[str] = []
        for name in sorted(self._l2_advs):
            for i, iface in enumerate(self._l2_advs[name].interfaces):
                if iface not in links and any(c.advertisement == name for c in plan.l2):
                    errors.append(str(ValidationError(L2Advertisement.KIND, name, f"spec.interfaces[{i}]",
                                                      f"no interface {iface!r} on gateway {self.node}")))
        wanted: dict[IPAddress, tuple[tuple[str, ...], bool]] = {}
        interfaces: dict[IPAddress, tuple[str, ...]] = {}
        for claim in plan.l2:
            ifaces = claim.interfaces
            if not ifaces:
                found = interface_for(claim.vip, links)
                if found is None:
                    errors.append(str(ValidationError(L2Advertisement.KIND, claim.advertisement, "spec.interfaces", (
                        f"{claim.vip} is on no subnet of gateway {self.node}'s interfaces "
                        f"({', '.join(sorted(links)) or 'none'}): name the interface"))))
                    continue
                ifaces = (found,)
            adv = self._l2_advs.get(claim.advertisement)
            wanted[claim.vip] = (adv.nodes if adv is not None else (), claim.servable)
            interfaces[claim.vip] = ifaces
        if errors != self.l2_errors:
            if errors:
                event(logging.ERROR, "announce-config-invalid", errors=errors,
                      keeping="the VIPs whose interface is known")
            else:
                event(logging.INFO, "announce-config-valid-again")
        self.l2_errors = errors
        election.want(wanted)
        owned = {v: interfaces[v] for v in election.owned() if v in interfaces}
        added, removed = self.speaker.apply(owned)
        if added or removed:
            event(logging.INFO, "l2-announce", election="leases", node=self.node,
                  taken=sorted(f"{v} on {i}" for v, i in added), released=sorted(f"{v} on {i}" for v, i in removed),
                  owned=len(owned), wall_time=time.time())
        self.l2_owned = owned

    def _apply_l2(self, plan: Plan) -> None:
        group = self._group
        if group is not None and group.ha:  # also in Kubernetes mode, from a file given with -f
            self._apply_ha(plan, group)
            return
        if self.ha is not None:  # the group is no longer active-standby
            self.ha.stop()
            guard.apply(guard.removal())
            self.ha = None
        if self.election is not None and group is None:  # a GatewayGroup (from -f) elects with VRRP
            self._apply_l2_leases(plan, self.election)
            return
        links: dict[str, Link] = read_links() if plan.l2 else {}
        l2, errors = plan_l2(plan.l2, self._group, self._l2_advs, self.node, links)
        if errors:
            texts = [str(e) for e in errors]
            if texts != self.l2_errors:
                event(logging.ERROR, "announce-config-invalid", errors=texts, keeping="the last good L2 announcements")
            self.l2_errors = texts
            return
        if self.l2_errors:
            event(logging.INFO, "announce-config-valid-again")
        self.l2_errors = []
        if l2.empty:
            if not self.l2.empty or self.keepalived.running():
                self.keepalived.stop()
                event(logging.INFO, "keepalived-stopped")
            self.l2 = l2
            return
        directory = self.keepalived.directory
        reloaded = self.keepalived.apply(render_keepalived(l2, self.node, directory), tracks(l2, directory))
        for inst in l2.instances:  # a state the FIFO has not told yet: the addresses tell
            if inst.name not in self.l2_states and inst.interface in links:
                held = {a.ip for a in links[inst.interface].addresses}
                self.l2_states[inst.name] = "MASTER" if inst.vips[0] in held else "BACKUP"
        if reloaded or l2 != self.l2:
            event(logging.INFO, "l2-announce", instances=[i.name for i in l2.instances],
                  vips=sum(len(i.vips) for i in l2.instances), reloaded=reloaded,
                  unservable=[str(v) for i in l2.instances for v in i.unservable][:50])
        self.l2 = l2

    def _apply(self, plan: Plan) -> None:
        self._apply_l2(plan)
        bgp = plan.bgp
        if bgp is None and not self._frr_up and (self.external is None or self.external.applied is not None):
            return  # (an FRR not ours is looked at once: a previous run's part is removed)
        if bgp is not None and self._group is not None and self._group.ha and not (self.ha and self.ha.announcing):
            # a standby announces a clearly worse path (our ASN prepended STANDBY_PREPEND times): the
            # router already holds it when BFD drops the active member, so the failover needs no
            # UPDATE; its guard drops whatever arrives before it has committed the state
            bgp = replace(bgp, peers=tuple(replace(pp, prefixes=tuple(
                (p, replace(a, as_path_prepend=STANDBY_PREPEND)) for p, a in pp.prefixes)) for pp in bgp.peers))
        t0 = time.perf_counter()
        if self.external is not None:
            self._apply_external(bgp, t0)
            return
        text = render(bgp, self.node, str(self.frr.log_file))
        render_ms = round((time.perf_counter() - t0) * 1000, 1)
        self.frr.timings = {}
        started = False
        if not self._frr_up or len(self.frr.running()) < 3:
            self.frr.start(text)  # fresh daemons read `text` as their startup files
            self._frr_up = started = True
        changed = self.frr.apply(text) or started
        self._index = VipIndex(bgp)
        now = bgp.prefixes if bgp is not None else ()
        if changed:
            self._log_announce(bgp, now, t0, render_ms=render_ms, **self.frr.timings)
        self._announced = now

    def _log_announce(self, bgp: BGPPlan | None, now: tuple[IPNetwork, ...], t0: float, **timings: Any) -> None:
        """The `announce` event of an apply that changed what FRR announces: what came and went."""
        added = sorted(set(now) - set(self._announced), key=str)
        withdrawn = sorted(set(self._announced) - set(now), key=str)
        event(logging.INFO, "announce", prefixes=len(now), added=[str(p) for p in added[:50]],
              withdrawn=[str(p) for p in withdrawn[:50]], peers=[pp.peer.name for pp in bgp.peers] if bgp else [],
              duration_ms=round((time.perf_counter() - t0) * 1000, 1), **timings, wall_time=time.time())

    def _apply_external(self, bgp: BGPPlan | None, t0: float) -> None:
        assert self.external is not None
        self.external.timings = {}
        changed = self.external.apply(bgp)
        self._frr_up = bgp is not None
        self._index = VipIndex(bgp)
        now = bgp.prefixes if bgp is not None else ()
        if changed:
            self._log_announce(bgp, now, t0, frr="external", **self.external.timings)
        self._announced = now

    def _withdraw_external(self) -> None:
        assert self.external is not None
        bgp = self.plan.bgp
        keep = [pp.peer.name for pp in bgp.peers if pp.peer.graceful_restart] if bgp is not None else []
        self._frr_up = False
        self.peer_states = {}
        if keep:
            event(logging.INFO, "frr-external-kept", graceful_restart=keep, vty_socket=str(self.external.directory),
                  keeping="gatelb's networks in that FRR: the next gatelb run adopts them", wall_time=time.time())
            return
        try:
            removed = self.external.withdraw()
        except (FrrError, OSError) as err:
            event(logging.ERROR, "withdraw-failed", vty_socket=str(self.external.directory), error=str(err)[:500])
            return
        event(logging.INFO, "withdrawn", peers=[pp.peer.name for pp in bgp.peers] if bgp else [],
              networks=len(removed.networks), route_maps=len(removed.maps), frr="external", wall_time=time.time())

    def _withdraw(self) -> None:
        if self.ha is not None:
            self.ha.stop()
        if self.l2_owned or self.election is not None:
            with contextlib.suppress(SpeakerError, OSError):
                self.speaker.stop()
            self.l2_owned = {}
        if not self.l2.empty or self.keepalived.running():
            self.keepalived.stop()
            event(logging.INFO, "keepalived-stopped", wall_time=time.time())
        if self.external is not None:
            if self._frr_up or (self.external.applied is not None and self.external.applied.networks):
                self._withdraw_external()
            return
        if not self._frr_up:
            return
        bgp = self.plan.bgp
        keep = [pp for pp in bgp.peers if pp.peer.graceful_restart] if bgp is not None else []
        with contextlib.suppress(FrrError, OSError):
            if bgp is not None:
                gone = [pp for pp in bgp.peers if not pp.peer.graceful_restart]
                self.frr.shutdown_neighbors(bgp.asn, [str(pp.peer.peer_address) for pp in gone])
                if gone:
                    event(logging.INFO, "withdrawn", peers=[pp.peer.name for pp in gone], wall_time=time.time())
        self.frr.stop(graceful_restart=bool(keep))
        self._frr_up = False
        self.peer_states = {}
        if keep:
            event(logging.INFO, "frr-stopped", graceful_restart=[pp.peer.name for pp in keep],
                  keeping="the routes at these peers (stale) until gatelb is back or their restart timer ends",
                  wall_time=time.time())
        else:
            event(logging.INFO, "frr-stopped")
