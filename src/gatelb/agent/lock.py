"""One writer per state directory: the daemon, or a one-shot apply/delete/flush, never both.

An flock on `<state-dir>/lock` is released by the kernel when the holder dies, so a crash never
leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
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
