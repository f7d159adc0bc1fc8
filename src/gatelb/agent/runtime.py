"""What every long-running gatelb process shares: structured logging, the file descriptor limit,
and a task supervisor under which the process always either works or exits.

Logs: one line per record, logfmt (`time=... level=warn msg="..." key=value`, values quoted when
they need it, control characters escaped) or JSON with the same fields; `time` is RFC 3339 in UTC
with microseconds in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import resource
import sys
import threading
from collections.abc import Coroutine, Iterable
from typing import Any

from gatelb.model import printable

log = logging.getLogger("gatelb")

SHUTDOWN_S = 10.0  # after a stop, tasks get this long to end; then the process exits regardless

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "fields"}
_LEVELS = {"WARNING": "warn", "CRITICAL": "crit"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    fields.update(getattr(record, "fields", {}))
    return fields


def rfc3339(unix: float) -> str:
    """2026-12-01T15:24:45.123456Z"""
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | float) -> float:
    """The UNIX time of a log record's `time` (RFC 3339, or a number from older logs)."""
    if isinstance(text, int | float):
        return float(text)
    try:
        return float(text)
    except ValueError:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _level(record: logging.LogRecord) -> str:
    return _LEVELS.get(record.levelname, record.levelname.lower())


def _base(record: logging.LogRecord) -> dict[str, Any]:
    data: dict[str, Any] = {"time": rfc3339(record.created), "level": _level(record), "msg": record.getMessage()}
    for key, value in _fields(record).items():
        data.setdefault(key, value)
    if record.exc_info:
        data.setdefault("exception", logging.Formatter().formatException(record.exc_info))
    return data


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_base(record), default=str)


def logfmt_value(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        text = json.dumps(value, default=str, separators=(",", ":"))
    if text and not any(c in text for c in ' "=\\') and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{printable(escaped)}"'


class TextFormatter(logging.Formatter):
    """logfmt."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{printable(str(k))}={logfmt_value(v)}" for k, v in _base(record).items())


FEW = 5


def names_or_count(names: Iterable[str], few: int = FEW) -> str:
    """What changed, for a log line: the names when there are few, else how many."""
    listed = sorted(names)
    if not listed:
        return "nothing"
    if len(listed) <= few:
        return ",".join(listed)
    return f"{len(listed)} load balancers ({','.join(listed[:few])}, ...)"


def event(level: int, msg: str, **fields: Any) -> None:
    log.log(level, msg, extra={"fields": {"event": msg, **fields}})


def setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def raise_nofile() -> tuple[int, int]:
    """Raise the soft file descriptor limit to the hard one (systemd's default soft limit is
    1,024; health probes and netlink need more). Returns (before, after); unchanged when not
    allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 1 << 20:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            return soft, hard
        except (ValueError, OSError):
            pass
    return soft, soft


def exit_after(seconds: float, code: int = 1) -> threading.Thread:
    """A last resort once the process decided to stop: if it has not exited after `seconds` (a task
    that ignores cancellation, a thread stuck in a system call), end it anyway."""
    def later() -> None:
        threading.Event().wait(seconds)
        event(logging.CRITICAL, "shutdown-forced", after_s=seconds)
        logging.shutdown()
        os._exit(code)

    thread = threading.Thread(target=later, name="exit-watchdog", daemon=True)
    thread.start()
    return thread


async def supervise(coroutines: dict[str, Coroutine[Any, Any, Any]], stop: asyncio.Event,
                    grace_s: float = SHUTDOWN_S) -> bool:
    """Run the named tasks until `stop` is set. A task that ends on its own is a bug or a fatal
    error: it is logged and everything stops, so that the service manager restarts the process
    rather than leaving it half alive. Tasks get `grace_s` to end once cancelled; those that do
    not are logged and left behind. Returns False when a task died or did not end."""
    died: list[str] = []

    def on_done(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        event(logging.CRITICAL, "task-died", task=task.get_name(),
              error=repr(error) if error else "returned unexpectedly")
        died.append(task.get_name())
        stop.set()

    tasks = [asyncio.create_task(coro, name=name) for name, coro in coroutines.items()]
    for t in tasks:
        t.add_done_callback(on_done)
    await stop.wait()
    for t in tasks:
        t.remove_done_callback(on_done)
        t.cancel()
    _, stuck = await asyncio.wait(tasks, timeout=grace_s)
    if stuck:
        event(logging.CRITICAL, "shutdown-stuck", tasks=sorted(t.get_name() for t in stuck), after_s=grace_s)
    for t in tasks:
        if t.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                t.result()
    return not died and not stuck
