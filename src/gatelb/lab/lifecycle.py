"""Making sure every lab is torn down: at interpreter exit, and on SIGTERM/SIGHUP/SIGINT.

`Lab` registers itself here while it is up. `install_signal_handlers()` (for `gatelb demo` and
benchmarks) turns SIGTERM and SIGHUP into `SystemExit`, so that ``with Lab() as lab:`` unwinds and
closes the lab exactly as after an exception; SIGINT already raises KeyboardInterrupt. The atexit
hook catches labs that were opened without a ``with`` block.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...


_live: weakref.WeakSet[Closable] = weakref.WeakSet()
_atexit_installed = False
_lock = threading.Lock()
TEARDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def register(lab: Closable) -> None:
    global _atexit_installed
    with _lock:
        _live.add(lab)
        if not _atexit_installed:
            atexit.register(close_all)
            _atexit_installed = True


def unregister(lab: Closable) -> None:
    with _lock:
        _live.discard(lab)


def close_all() -> None:
    """Close every lab still up (atexit hook; also usable from a custom signal handler)."""
    with _lock:
        labs = list(_live)
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.close()


_closing_depth = 0
_deferred: list[int] = []


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _closing_depth:
        _deferred.append(signum)  # raised once the teardown in progress has finished
        return
    _raise_for(signum)


def install_signal_handlers() -> Callable[[], None]:
    """Make SIGTERM and SIGHUP raise SystemExit and SIGINT raise KeyboardInterrupt in the main
    thread, so ``with Lab()`` blocks and ``finally`` clauses run, and a signal arriving while a lab
    tears down waits until the teardown is complete. Returns a function that restores the previous
    handlers. Call from the main thread only (a Python rule for signal handlers)."""
    previous = {sig: signal.getsignal(sig) for sig in TEARDOWN_SIGNALS}
    for sig in TEARDOWN_SIGNALS:
        signal.signal(sig, _on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)

    return restore


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """While a lab tears down, hold the signals our handlers catch (a second Ctrl-C must not stop
    the cleanup half-way); the first one held is raised right after."""
    global _closing_depth
    _closing_depth += 1
    try:
        yield
    finally:
        _closing_depth -= 1
        if not _closing_depth and _deferred:
            signum = _deferred[0]
            _deferred.clear()
            _raise_for(signum)
