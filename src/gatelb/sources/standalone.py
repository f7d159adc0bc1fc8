"""Moved to gatelb.sources.file.loader; this module re-exports it for existing imports."""

from gatelb.sources.file.loader import (
    Collected,
    Loader,
    _load_balancer,
    _pool,
    add_document,
    add_valid,
    collect_text,
    desired_from,
    label,
    load_file,
    load_text,
)

__all__ = [
    "Collected",
    "Loader",
    "_load_balancer",
    "_pool",
    "add_document",
    "add_valid",
    "collect_text",
    "desired_from",
    "label",
    "load_file",
    "load_text",
]
