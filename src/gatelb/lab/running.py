"""A traffic client left running in the background while the test changes the world under it."""

from __future__ import annotations

import subprocess

from gatelb.lab.procs import stop_process
from gatelb.lab.results import ClientResult


class ClientRunFailed(RuntimeError):
    """The background client exited without a result, or overran its time limit."""


class RunningClient:
    """A ``gatelb.lab.client`` process started by `Lab.start_client`; `result()` waits for its JSON.

    The lab stops the process on close() in any case; `result()` stops it at `limit_s`.
    """

    def __init__(self, proc: subprocess.Popen[bytes], limit_s: float) -> None:
        self._proc = proc
        self._limit_s = limit_s
        self._result: ClientResult | None = None

    def result(self) -> ClientResult:
        """Wait for the client to finish (at most the limit given at start) and parse its result."""
        if self._result is not None:
            return self._result
        try:
            out, err = self._proc.communicate(timeout=self._limit_s)
        except subprocess.TimeoutExpired as exc:
            stop_process(self._proc)
            raise ClientRunFailed(f"the background client did not finish within {self._limit_s:.0f} s") from exc
        lines = out.decode(errors="replace").strip().splitlines()
        if self._proc.returncode != 0 or not lines:
            raise ClientRunFailed(f"the background client exited {self._proc.returncode} without a result: "
                                  f"{err.decode(errors='replace').strip()[-2000:]}")
        self._result = ClientResult.from_json(lines[-1])
        return self._result

    def stop(self) -> None:
        stop_process(self._proc)
