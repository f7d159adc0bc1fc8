"""The addresses this host (network namespace) holds, for the rule that a VIP must not be one of
them: a VIP on the gateway's own address and port 22 takes over its SSH, from outside and for
local processes.

Read with `ip -j addr show` on first use (the constructor does no I/O) and again on refresh().
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

from gatelb.model import IPAddress


class HostAddresses:
    def __init__(self, argv: tuple[str, ...] = ("ip", "-j", "addr", "show")) -> None:
        self._argv = argv
        self._addresses: frozenset[IPAddress] | None = None

    def refresh(self) -> None:
        self._addresses = None

    @property
    def addresses(self) -> frozenset[IPAddress]:
        if self._addresses is None:
            self._addresses = read_addresses(self._argv)
        return self._addresses

    def __call__(self, ip: IPAddress) -> bool:
        return ip in self.addresses


def read_addresses(argv: tuple[str, ...] = ("ip", "-j", "addr", "show")) -> frozenset[IPAddress]:
    """Every address on every interface. An `ip` that fails or is missing gives an empty set:
    the check is a safety net, not a reason to stop serving."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True)
        links = json.loads(done.stdout or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return frozenset()
    return parse(links)


def parse(links: list[dict[str, object]]) -> frozenset[IPAddress]:
    out: set[IPAddress] = set()
    for link in links:
        infos = link.get("addr_info", [])
        for info in infos if isinstance(infos, list) else []:
            try:
                out.add(ipaddress.ip_address(str(info.get("local", "")).partition("%")[0]))
            except (AttributeError, ValueError):
                continue
    return frozenset(out)
