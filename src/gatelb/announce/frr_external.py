"""An FRR that already runs on the gateway and is not gatelb's (`gatelb run --frr-vty-socket DIR`):
gatelb starts nothing and only adds its part (gatelb.announce.frr_part) through that FRR's vtysh,
one vtysh run per change.

- Before the first change (and whenever the BGPPeers change, or after a failed run or check) it
  reads the running configuration: what of gatelb's is there already (a previous run's part:
  adopted, corrected) and what the checks need (ASN, neighbors, import check, prefixes the user
  originates), which run on every change against the configuration read last.
- What it applied last is also written to `<state-dir>/frr-external.conf`, for the operator;
  nothing goes to the user's startup file (no `write memory`). A restarted bgpd (a new vty
  socket) has lost the part: it counts as gone, and the part is added again.
- Stop: its networks and route-maps are removed (the router withdraws at once through the
  user's session); with graceful restart on some BGPPeer they are left in place, the user's FRR
  keeps announcing them, and the next run adopts them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from gatelb.announce.decide import BGPPlan
from gatelb.announce.frr import COMMAND_TIMEOUT_S, VTYSH, FrrError, run_vtysh
from gatelb.announce.frr_part import (
    Part,
    Running,
    adopting,
    changes,
    check_plan,
    check_running,
    parse_running,
    part,
)


class ExternalFrr:
    def __init__(self, vty_socket: Path, state_file: Path) -> None:
        self.directory = vty_socket
        self.state_file = state_file
        self.applied: Part | None = None
        self._checked: tuple[object, ...] | None = None  # the peers the last check was for
        self._socket: tuple[int, int] | None = None  # bgpd's vty socket when the configuration was read
        self._running: Running | None = None  # the user's configuration as read last
        self.timings: dict[str, float] = {}

    def _socket_id(self) -> tuple[int, int] | None:
        try:
            st = (self.directory / "bgpd.vty").stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def running(self) -> bool:
        """Whether the bgpd read last is still there: a restarted one (a new socket) has lost
        gatelb's part (gatelb never writes the user's startup file), so it counts as gone."""
        now = self._socket_id()
        return now is not None and (self._socket is None or now == self._socket)

    def vtysh(self, *commands: str) -> str:
        return run_vtysh(self.directory, commands, VTYSH)

    def _batch(self, commands: list[str]) -> None:
        done = subprocess.run([VTYSH, "--vty_socket", str(self.directory)], input="\n".join(commands) + "\n",
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
        if done.returncode != 0 or "% " in done.stdout:
            self.applied = None  # unknown: the next apply reads the running configuration again
            raise FrrError(f"vtysh --vty_socket {self.directory}: {(done.stderr + done.stdout).strip()[-800:]}")

    def read(self) -> Running:
        self._socket = None
        if not self.running():
            raise FrrError(f"BGP announcements (--frr-vty-socket {self.directory}): no bgpd there "
                           f"({self.directory / 'bgpd.vty'} is missing): is that FRR running, is this its vty "
                           f"socket directory?")
        socket = self._socket_id()
        running = parse_running(self.vtysh("show running-config"))
        self._socket = socket
        return running

    def apply(self, plan: BGPPlan | None) -> bool:
        """Make gatelb's part the one for `plan` (None: none). Returns False when nothing needed
        doing; raises FrrError (with every problem, naming the object and field) and changes
        nothing when the user's FRR does not fit the plan."""
        if plan is None and self.applied is None and not self.running():
            return False  # no BGP wanted and no FRR there: nothing of ours to remove
        key = (plan.asn, tuple((pp.peer.name, pp.peer.my_asn, pp.peer.peer_address) for pp in plan.peers)) \
            if plan is not None else None
        base = self.applied
        if base is None or key != self._checked or self._running is None:
            self._running = self.read()
            base = self._running.ours
            self._checked = key
        if plan is not None:
            # against the configuration read last (pure: no vtysh run per health change), so that
            # a new VIP the user already originates is refused too
            errors = [*check_plan(plan), *check_running(plan, self._running, str(self.directory))]
            if errors:
                self._running = None  # read again on the retry: the user may have fixed it meanwhile
                raise FrrError("\n".join(str(e) for e in errors))
        asn = plan.asn if plan is not None else base.asn
        new = part(plan, asn)
        commands = changes(base if base is self.applied else adopting(base, new), new)
        if not commands:
            self.applied = new
            return False
        self._batch(commands)
        self.applied = new
        self.timings = {"commands": len(commands)}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text("\n".join(new.lines()) + "\n")
        os.replace(tmp, self.state_file)
        return True

    def withdraw(self) -> Part:
        """Remove gatelb's whole part (what it applied, or what the running configuration shows
        of it); what was removed."""
        ours = self.applied if self.applied is not None else self.read().ours
        commands = changes(ours, Part(ours.asn))
        if commands:
            self._batch(commands)
        self.applied = Part(ours.asn)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        return ours
