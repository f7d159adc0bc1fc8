"""Asking the running daemon: `gatelb status` over <state-dir>/gatelb.sock (agent/server.py).

Kept apart from agent/commands.py, and with only the standard library, so that a status
answered by the daemon costs the CLI no import of the reconciler, the compiler or asyncio.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

SOCKET_NAME = "gatelb.sock"  # in the state directory


class DaemonError(Exception):
    """The daemon answered, but not with a status (an unknown name, an internal error)."""


def daemon_status(state_dir: Path, name: str | None = None, backends: bool | None = True,
                  timeout_s: float = 30.0) -> dict[str, Any] | None:
    """The running daemon's status document; None when no daemon listens on the socket."""
    path = state_dir / SOCKET_NAME
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None  # a socket file left by a daemon that was killed
    conn = http.client.HTTPConnection("gatelb")
    conn.sock = sock
    query = "backends=" + {True: "1", False: "0", None: "auto"}[backends]
    if name is not None:
        query += f"&name={quote(name)}"
    try:
        conn.request("GET", f"/status?{query}")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status == 404:
        raise DaemonError(f"no load balancer named {name!r}")
    if response.status != 200:
        raise DaemonError(f"the daemon answered {response.status}: {body[:300]!r}")
    data: dict[str, Any] = json.loads(body)
    return data
