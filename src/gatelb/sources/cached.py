"""Moved to gatelb.sources.file.loader; this module re-exports it for existing imports."""

from gatelb.model import ValidationError
from gatelb.sources.file.loader import CachedLoader, split_documents

__all__ = ["CachedLoader", "ValidationError", "split_documents"]
