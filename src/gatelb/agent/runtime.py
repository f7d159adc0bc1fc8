"""What every long-running gatelb process shares: structured logging and a task supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Coroutine, Iterable
from typing import Any

log = logging.getLogger("gatelb")


# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "fields"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    fields.update(getattr(record, "fields", {}))
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": round(record.created, 6), "level": record.levelname.lower(),
                                "msg": record.getMessage()}
        data.update(_fields(record))
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if k != "errors")
        text = f"{time.strftime('%H:%M:%S')} {record.levelname.lower():5} {record.getMessage()} {extra}".rstrip()
        if "errors" in fields:
            text += "".join(f"\n    {e}" for e in fields["errors"])
        return text


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


async def supervise(coroutines: dict[str, Coroutine[Any, Any, Any]], stop: asyncio.Event) -> bool:
    """Run the named tasks until `stop` is set. A task that ends on its own is a bug or a fatal
    error: it is logged and everything stops, so that the service manager restarts the process
    rather than leaving it half alive. Returns False when that happened."""
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
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    return not died
