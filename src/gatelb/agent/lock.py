"""One writer per state directory: the daemon, or a one-shot apply/delete/flush, never both.

An flock on `<state-dir>/lock` is released by the kernel when the holder dies, so a crash never
leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StateLocked(RuntimeError):
    pass


@contextmanager
def state_lock(directory: Path, wait: bool = False) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "another process"
            raise StateLocked(
                f"{directory} is in use by {holder}; stop it or use another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"gatelb pid {os.getpid()}".encode())
        yield
    finally:
        os.close(fd)
