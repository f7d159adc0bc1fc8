"""Structured log lines in the daemon's format (the same fields as gatelb.agent.runtime.event,
which this layer may not import)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("gatelb")


def event(level: int, msg: str, **fields: Any) -> None:
    log.log(level, msg, extra={"fields": {"event": msg, **fields}})
