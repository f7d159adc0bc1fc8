"""Read-only looks at the kernel around our table, for `gatelb diagnose` and `gatelb trace`:
conntrack entries of one frontend, the route and neighbour entry towards a backend, other tables'
base chains that could drop or rewrite traffic, and one element of an interval set.

Nothing here changes anything: only list/get/show commands run. Each reader returns what it found
or raises InspectError with the command and its message, so a missing tool is reported as such.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gatelb.dataplane.layout import Key
from gatelb.dataplane.render import element_texts
from gatelb.dataplane.ruleset import FAMILY, TABLE
from gatelb.model import IPAddress, Protocol

TIMEOUT_S = 10.0


class InspectError(RuntimeError):
    pass


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which(argv[0]) or next(
        (p for p in (f"/usr/sbin/{argv[0]}", f"/sbin/{argv[0]}") if shutil.which(p)), None)
    if binary is None:
        raise InspectError(f"{argv[0]}: command not found")
    try:
        return subprocess.run([binary, *argv[1:]], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise InspectError(f"{' '.join(argv)}: no answer within {TIMEOUT_S:.0f} s") from err


# --- conntrack ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    client: str
    backend: str  # reply source: the backend the flow was DNATed to
    backend_port: int
    state: str  # TCP state (ESTABLISHED, SYN_SENT, ...); "" for UDP
    replied: bool  # the backend has answered at least once


_KV = re.compile(r"(\w+)=(\S+)")


def frontend_flows(vip: IPAddress, port: int, protocol: Protocol) -> list[Flow]:
    """conntrack entries whose original destination is this frontend (`conntrack -L` filtered by
    the kernel on the VIP, port and protocol: never the whole table)."""
    argv = ["conntrack", "-L", "-f", "ipv6" if vip.version == 6 else "ipv4", "-p", protocol.value,
            "--orig-dst", str(vip), "--orig-port-dst", str(port)]
    proc = _run(argv)
    if proc.returncode != 0:
        raise InspectError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    flows = []
    for line in proc.stdout.splitlines():
        words = line.split()
        if len(words) < 4:
            continue
        state = words[3] if protocol is Protocol.TCP and "=" not in words[3] else ""
        pairs = _KV.findall(line)
        srcs = [v for k, v in pairs if k == "src"]
        sports = [v for k, v in pairs if k == "sport"]
        if len(srcs) < 2 or len(sports) < 2:
            continue
        flows.append(Flow(srcs[0], srcs[1], int(sports[1]), state, "[UNREPLIED]" not in line))
    return flows


# --- routes and neighbours ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reach:
    """How the gateway reaches one address: the route, and the neighbour entry of the next hop."""

    address: str
    route: str | None  # "dev br-be" / "via 198.51.100.1 dev eth1"; None: no route
    error: str = ""
    next_hop: str | None = None
    neighbour: str | None = None  # REACHABLE, STALE, FAILED, INCOMPLETE, ... ; None: no entry
    local: bool = False

    @property
    def ok(self) -> bool:
        return self.route is not None and (self.local or self.neighbour not in ("FAILED", "INCOMPLETE"))


def reach(address: IPAddress) -> Reach:
    proc = _run(["ip", "-j", "route", "get", str(address)])
    if proc.returncode != 0:
        return Reach(str(address), None, proc.stderr.strip().removeprefix("RTNETLINK answers: "))
    routes: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    if not routes:
        return Reach(str(address), None, "no route")
    r = routes[0]
    if r.get("type") in ("unreachable", "blackhole", "prohibit"):
        return Reach(str(address), None, f"{r['type']} route")
    dev = str(r.get("dev", ""))
    hop = str(r.get("gateway") or address)
    text = f"via {r['gateway']} dev {dev}" if r.get("gateway") else f"dev {dev}"
    if r.get("type") == "local" or dev == "lo":
        return Reach(str(address), text, local=True)
    proc = _run(["ip", "-j", "neigh", "show", hop, "dev", dev])
    neigh: list[dict[str, Any]] = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    states = neigh[0].get("state", []) if neigh else []
    return Reach(str(address), text, next_hop=hop, neighbour=str(states[0]) if states else None)


# --- other tables ------------------------------------------------------------------------------

WATCHED_HOOKS = ("forward", "prerouting", "input", "ingress")
_VERDICT = re.compile(r"\b(drop|reject|dnat|snat|redirect|masquerade|queue)\b")
_NET = re.compile(r"(?<![\w:.])((?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,2})?"
                  r"|[0-9a-fA-F]*:[0-9a-fA-F:]+(?:/\d{1,3})?)(?![\w:.])")
_PORT = re.compile(r"\b[ds]port\s+(?:\{\s*)?([\d, -]+)")


@dataclass(frozen=True, slots=True)
class ForeignRule:
    text: str
    verdict: str  # drop, reject, dnat, ...
    chain: str  # where it is (the base chain, or a chain it jumps to)


@dataclass(frozen=True)
class ForeignChain:
    family: str
    table: str
    chain: str
    hook: str
    priority: int
    policy: str
    rules: tuple[ForeignRule, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return f"table {self.family} {self.table} chain {self.chain} (hook {self.hook}, priority {self.priority})"


def foreign_chains() -> list[ForeignChain]:
    """Base chains of every other table on the hooks our traffic passes, with their rules that
    drop, reject or rewrite addresses (following jumps one level, within the table)."""
    proc = _run(["nft", "-j", "list", "chains"])
    if proc.returncode != 0:
        raise InspectError(f"nft list chains: {proc.stderr.strip()}")
    out = []
    for obj in json.loads(proc.stdout).get("nftables", []):
        c = obj.get("chain")
        if not c or "hook" not in c or c.get("hook") not in WATCHED_HOOKS:
            continue
        if c.get("family") == FAMILY and c.get("table") == TABLE:
            continue
        if c.get("family") not in ("ip", "ip6", "inet", "netdev"):
            continue
        rules = _chain_rules(c["family"], c["table"], c["name"], depth=1)
        out.append(ForeignChain(c["family"], c["table"], c["name"], c["hook"], int(c.get("prio", 0)),
                                str(c.get("policy", "accept")), tuple(rules)))
    return out


def _chain_rules(family: str, table: str, chain: str, depth: int) -> list[ForeignRule]:
    proc = _run(["nft", "list", "chain", family, table, chain])
    if proc.returncode != 0:
        return []
    rules: list[ForeignRule] = []
    for raw in proc.stdout.splitlines():
        line = raw.strip()
        if not line or line.startswith(("table ", "chain ", "type ", "}")) or line.endswith("{"):
            continue
        if m := _VERDICT.search(line):
            rules.append(ForeignRule(line, m.group(1), chain))
        elif depth > 0 and (j := re.search(r"\b(?:jump|goto)\s+(\S+)", line)):
            rules += _chain_rules(family, table, j.group(1), depth - 1)
    return rules


def rule_matches(rule: str, addresses: Sequence[IPAddress], ports: Sequence[int]) -> bool:
    """Whether a rule's text names one of `addresses` (or a network holding one) or `ports`, or
    matches everything (a bare verdict): a read of the text, not an evaluation of the rule."""
    nets = []
    for text in _NET.findall(rule):
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    named_ports = {int(p) for group in _PORT.findall(rule) for p in re.findall(r"\d+", group)}
    if any(a in n for a in addresses for n in nets if a.version == n.version):
        return True
    if any(p in named_ports for p in ports):
        return True
    bare = re.sub(r"\b(counter|packets \d+ bytes \d+|log[^;]*)\b", "", rule).strip()
    return bare in ("drop", "reject") or bare.startswith("reject with")


# --- interval-set elements -----------------------------------------------------------------------


def get_interval_element(set_name: str, key: Key) -> str | None:
    """`nft get element` of one point in an interval set of our table: the element (range) that
    holds it, as nft prints it, or None when no element does."""
    text = next(element_texts([(key, None)]))
    proc = _run(["nft", "get", "element", FAMILY, TABLE, set_name, f"{{ {text} }}"])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise InspectError(f"nft get element {set_name}: {proc.stderr.strip()}")
    m = re.search(r"elements = \{ (.*?) \}", proc.stdout, re.S)
    return m.group(1).strip() if m else None


def set_elements(set_name: str) -> list[str]:
    """The elements of one (small, per-service) set of our table, as nft prints them; [] when the
    set does not exist. Never used on the global sets: at 10,000 services those are large."""
    proc = _run(["nft", "-j", "list", "set", FAMILY, TABLE, set_name])
    if proc.returncode != 0:
        return []
    for obj in json.loads(proc.stdout).get("nftables", []):
        s = obj.get("set")
        if s is not None:
            out = []
            for e in s.get("elem") or []:
                inner = e.get("elem", {}).get("val") if isinstance(e, dict) and "elem" in e else e
                out.append(str(inner))
            return out
    return []
