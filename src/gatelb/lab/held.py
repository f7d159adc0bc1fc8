"""One long-lived TCP connection from inside a namespace, driven from the test process."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from gatelb.lab.procs import LineReader, stop_process


class ConnectionLost(ConnectionError):
    """The held connection failed (reset, closed, timed out); `kind` is the client's failure kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"held connection failed: {kind}")


class HeldConnection:
    """A TCP connection kept open by a ``gatelb.lab.client hold`` process in the client namespace.

    Created by `Lab.hold`, which waits for the greeting: `backend` and `seen_source` say which
    backend accepted the connection and which client address it saw. `exchange(text)` sends one
    line and returns the backend's echo (or raises `ConnectionLost`), so a test can check that an
    established connection still works after the load balancer's configuration changed.
    """

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        self._proc = proc
        self._timeout = timeout
        assert proc.stdout is not None
        self._reader = LineReader(proc.stdout.fileno())
        self.backend = ""
        self.seen_source = ""

    def wait_connected(self) -> None:
        first = self._read()
        self.backend = str(first["backend"])
        self.seen_source = str(first["seen_source"])

    def exchange(self, text: str = "ping") -> str:
        """Send `text` (one line, no newline) and return what the backend echoed."""
        if "\n" in text:
            raise ValueError("exchange() sends exactly one line")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(text.encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError as exc:
            raise ConnectionLost("closed") from exc
        return str(self._read()["echo"])

    def close(self) -> None:
        stop_process(self._proc)

    def _read(self) -> dict[str, Any]:
        # The client's own socket timeout fires first; the margin covers interpreter start-up.
        line = self._reader.readline(self._timeout + 10)
        if line is None:
            raise ConnectionLost("client exited")
        doc: dict[str, Any] = json.loads(line)
        if "error" in doc:
            raise ConnectionLost(str(doc["error"]))
        return doc

    def __enter__(self) -> HeldConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
