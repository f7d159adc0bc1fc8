"""Child processes of the lab: reading their output with a deadline, and stopping them for sure."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time


class LineReader:
    """Reads text lines from a pipe with a deadline.

    select() plus os.read() on the raw descriptor: a buffered file object could hold a complete
    line in its buffer while select() reports the descriptor idle, and the wait would then hang.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""
        self._eof = False

    def readline(self, timeout: float) -> str | None:
        """The next line without its newline; None at end of file; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if self._eof:
                return self._take(len(self._buf)) if self._buf else None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete line within {timeout} s (got {self._buf[:200]!r})")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                self._eof = not chunk
                self._buf += chunk
        return self._take(self._buf.index(b"\n") + 1).rstrip("\n")

    def _take(self, n: int) -> str:
        line, self._buf = self._buf[:n], self._buf[n:]
        return line.decode(errors="replace")


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process group `proc` leads (it was started with start_new_session=True).

    Only while `proc` has not been reaped: until then its pid, and so its group id, cannot have been
    reused by a process that is not ours.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def stop_process(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 2.0) -> None:
    """Signal the process group, wait up to `timeout` s, then SIGKILL it; always reaps `proc`."""
    signal_group(proc, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait(5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
