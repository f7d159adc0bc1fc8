"""One writer per state directory, and one owner of the table per network namespace: the daemon,
or a one-shot apply/delete/flush, never both.

An flock on `<state-dir>/lock` is released by the kernel when the holder dies, so a crash never
leaves a stale lock behind; so is the namespace's owner socket (below).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gatelb.agent.statefile import StateFileError, check_directory


class StateLocked(RuntimeError):
    pass


@contextmanager
def state_lock(directory: Path, wait: bool = False) -> Iterator[None]:
    """Raises StateLocked when another process holds it, StateFileError when the directory or
    the lock file cannot be trusted (statefile.check_directory; a symbolic link is never
    followed, so a link planted at `lock` truncates nothing)."""
    check_directory(directory, create=True)
    path = directory / "lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StateFileError(f"{path}: is a symbolic link; refusing to follow it (remove it)") from err
        raise StateFileError(f"{path}: cannot open: {err.strerror}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise StateLocked(
                f"{directory} is in use by {holder}; stop it or use another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"gatelb pid {os.getpid()}".encode())
        yield
    finally:
        os.close(fd)


# -- one owner of the table per network namespace -------------------------------------------------
#
# The table lives in the network namespace, not in a state directory: two gatelb processes with
# different state directories in one namespace would replace each other's table. The owner holds
# an abstract unix socket, whose name the kernel scopes to the network namespace exactly like the
# table: released when the holder dies (nothing stale, no file), and seen across mount and PID
# namespaces (two containers on the host network see each other; a lock file under /run would
# not, each with its own /run). The holder is named through SO_PEERCRED. The price: any process
# in the namespace may bind the name first; the refusal then names it (pid and uid).

OWNER_NAME = b"\0gatelb/table/inet/gatelb"


class TableOwned(RuntimeError):
    pass


def _holder() -> str:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(OWNER_NAME)
        pid, uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return "another process"
    finally:
        probe.close()
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid} (uid {uid})"
    words = [a.decode(errors="replace") for a in argv if a]
    if not any("gatelb" in w for w in words):
        return f"pid {pid} (uid {uid}, not gatelb: {' '.join(words)[:120]})"
    state = next((words[i + 1] for i, w in enumerate(words[:-1]) if w == "--state-dir"), None)
    command = "gatelb run" if "run" in words else "a gatelb command"
    return f"{command} pid {pid}" + (f" (state dir {state})" if state else "")


@contextmanager
def table_lock() -> Iterator[None]:
    """Own table inet gatelb in this network namespace while the block runs (the daemon for its
    lifetime, a one-shot command while it writes); raises TableOwned when someone else does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(OWNER_NAME)
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise TableOwned(
                f"table inet gatelb in this network namespace is owned by {_holder()}; one gatelb per "
                "network namespace: stop it, or give it this configuration (its state directory)") from None
        sock.listen(64)
        yield
    finally:
        sock.close()
