"""Namespace names of the lab, and removal of the ones a crashed run left behind.

A lab's namespaces are named ``glb<pid>-<token>-<role>`` (role: ``client``, ``gw``, ``be1``...):
the creator's pid is in the name so that a later run can tell an abandoned lab (creator dead) from
one that another engineer's test is using right now (creator alive), and remove only the former.
The pattern is strict on purpose: other ``glb*`` namespaces (other tests' own fixtures) never match.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
PREFIX = "glb"
_NAME = re.compile(rf"^{PREFIX}(?P<pid>[0-9]+)-(?P<token>[0-9a-f]{{4}})-(?P<role>client|gw[0-9]*|be[0-9]+|rtr|sw)$")


@dataclass(frozen=True)
class LabName:
    """The parsed name of one lab namespace."""

    pid: int
    token: str
    role: str

    @property
    def lab_id(self) -> str:
        return f"{PREFIX}{self.pid}-{self.token}"


def new_lab_id() -> str:
    """A fresh ``glb<pid>-<token>`` prefix whose namespaces do not exist yet."""
    for _ in range(16):
        lab_id = f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        if not any(n.startswith(lab_id + "-") for n in list_namespaces()):
            return lab_id
    raise RuntimeError("could not find a free lab namespace prefix")


def parse(name: str) -> LabName | None:
    """The parts of a lab namespace name, or None for any other namespace."""
    m = _NAME.match(name)
    if m is None:
        return None
    return LabName(pid=int(m["pid"]), token=m["token"], role=m["role"])


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``, without the id suffix)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def namespace_pids(names: list[str]) -> dict[str, list[int]]:
    """Pids of the processes living in each namespace of `names` (one pass over /proc, like
    ``ip netns pids`` but for several namespaces at once)."""
    inodes: dict[int, str] = {}
    for ns in names:
        with contextlib.suppress(OSError):
            inodes[(NETNS_DIR / ns).stat().st_ino] = ns
    found: dict[str, list[int]] = {ns: [] for ns in names}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            inode = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except OSError:  # exited meanwhile, or a kernel thread
            continue
        if inode in inodes:
            found[inodes[inode]].append(int(entry.name))
    return found


def delete_namespaces(names: list[str]) -> None:
    """SIGKILL every process inside the namespaces, then delete them.

    Only ever called on namespaces a lab created, where every process was started by that lab; a
    namespace that still holds a process would outlive ``ip netns del`` (unnamed, unreachable).
    """
    if not names:
        return
    for pids in namespace_pids(names).values():
        for pid in pids:
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    script = "".join(f"netns del {ns}\n" for ns in names)
    subprocess.run(["ip", "-force", "-batch", "-"], input=script, capture_output=True, text=True,
                   timeout=30, check=False)


def cleanup_leftovers() -> list[str]:
    """Delete lab namespaces whose creator process is dead; return their names.

    Namespaces of live labs (creator pid alive) and namespaces not named by the lab pattern are
    left alone. The processes inside an abandoned namespace (orphaned backends of the crashed run)
    are killed first, otherwise the namespace would live on unnamed.
    """
    removed = []
    for ns in list_namespaces():
        parsed = parse(ns)
        if parsed is None or pid_alive(parsed.pid):
            continue
        removed.append(ns)
    delete_namespaces(removed)
    return removed

