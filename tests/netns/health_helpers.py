"""A private network namespace for health-probe tests, and a way to run asyncio code inside it.

The namespace has `lo` up and a link (dum0) holding 192.0.2.1/24 and 2001:db8::1/64, with permanent
neighbour entries for 192.0.2.66 and 2001:db8::66: packets to those go out of dum0 and
vanish, which is a silent drop (a connect timeout) without touching anything outside the namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
BLACKHOLE_V4 = "192.0.2.66"
BLACKHOLE_V6 = "2001:db8::66"


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@contextmanager
def probe_namespace(tag: str) -> Iterator[str]:
    name = f"glbh{tag}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        _ip(name, "link", "set", "lo", "up")
        # A veth pair with both ends here (this kernel has no dummy links): frames sent out of
        # dum0 arrive at dum1 addressed to another MAC and are dropped there.
        _ip(name, "link", "add", "dum0", "type", "veth", "peer", "name", "dum1")
        _ip(name, "link", "set", "dum1", "up")
        _ip(name, "link", "set", "dum0", "up")
        _ip(name, "addr", "add", "192.0.2.1/24", "dev", "dum0")
        _ip(name, "addr", "add", "2001:db8::1/64", "dev", "dum0", "nodad")
        for addr in (BLACKHOLE_V4, BLACKHOLE_V6):
            _ip(name, "neigh", "add", addr, "lladdr", "02:00:00:00:00:66", "dev", "dum0", "nud", "permanent")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_in_netns(ns: str, coro: Coroutine[Any, Any, T], limit_s: float = 30.0) -> T:
    """asyncio.run(coro) on a thread that entered `ns` (setns changes only the calling thread, so
    the test process itself stays where it is); every socket the coroutine opens lives in `ns`."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            box["result"] = asyncio.run(asyncio.wait_for(coro, limit_s))
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=main, name=f"netns-{ns}")
    thread.start()
    thread.join(limit_s + 5)
    if thread.is_alive():
        raise TimeoutError(f"coroutine in {ns} still running after {limit_s} s")
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]
