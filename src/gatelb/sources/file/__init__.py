"""The file source: one YAML/JSON file or a directory of them (loader.py parses and validates,
index.py runs the checks across objects incrementally, directory.py is the Source)."""

from gatelb.sources.file.directory import FileSource

__all__ = ["FileSource"]
