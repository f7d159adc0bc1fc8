"""The standalone source with a per-document cache, for `gatelb run`.

Re-reading a file of 10,000 L4LBs costs about two seconds of YAML parsing and validation; a
change usually touches one document. The file is split into its YAML documents as text (a line
`---` always starts a document: block scalars cannot contain one at column 0), and documents
whose text is unchanged reuse the objects validated last time. Cross-object checks (duplicate
names and frontends, pools) still run over everything, as they are cheap.

Only documents of a configuration that loaded without errors are cached. Anything unusual
(directives, content on the `---` line, JSON input) simply takes the uncached path.
"""

from __future__ import annotations

import re

import yaml

from gatelb.model import DesiredState, IPPool, LoadBalancer, ValidationError, ValidationErrors
from gatelb.validate import check_load_balancer, check_state

from . import standalone

# A line that is only a document marker (`---` or `...`, maybe with a comment).
_MARKER_LINE = re.compile(r"^(?:---|\.\.\.)[ \t]*(?:#[^\n]*)?(?:\n|$)", re.MULTILINE)
# Directives, or content on the marker line (`--- !tag`, `--- {a: 1}`): leave those to the parser.
_UNSAFE = re.compile(r"^(?:%|---[ \t]*[^ \t\n#])", re.MULTILINE)


# Anything but bare `---` separators: take the careful (regex) path.
_UNUSUAL = ("\n%", "\n--- ", "\n---\t", "\n---#", "\n...", "\r")


def split_documents(text: str) -> list[str] | None:
    """The documents of a YAML stream as text, or None when splitting by lines is not safe."""
    if not text.startswith(("%", "...", "--- ")) and not any(m in text for m in _UNUSUAL):
        # The common shape (`---` lines between documents): str.split is ten times faster than
        # the regexes below on a 10,000-document file.
        body = text[4:] if text.startswith("---\n") else text
        if body.rstrip().endswith("\n---"):
            body = body.rstrip()[: -len("\n---")] + "\n"
        chunks = body.split("\n---\n")
        return [c for i, c in enumerate(chunks) if i > 0 or _has_content(c)]
    if _UNSAFE.search(text):
        return None
    chunks = _MARKER_LINE.split(text)
    # Text before the first marker that holds no content is not a document.
    return [c for i, c in enumerate(chunks) if i > 0 or _has_content(c)]


def _has_content(chunk: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in chunk.splitlines())


class CachedLoader:
    def __init__(self) -> None:
        self._objects: dict[str, IPPool | LoadBalancer] = {}
        self.hits = 0
        self.misses = 0

    def load(self, text: str, source_name: str) -> DesiredState:
        """Like standalone.load_text (same result, same errors), faster for small changes."""
        chunks = None if text.lstrip()[:1] in ("{", "[") else split_documents(text)
        if chunks is None:
            return standalone.load_text(text, source_name)
        out = standalone.Collected()
        fresh_lbs: list[LoadBalancer] = []
        parsed: dict[str, IPPool | LoadBalancer] = {}
        self.hits = self.misses = 0
        for number, chunk in enumerate(chunks, start=1):
            cached = self._objects.get(chunk)
            if cached is not None:
                self.hits += 1
                standalone.add_valid(cached, number, out)
                parsed[chunk] = cached
                continue
            self.misses += 1
            try:
                raw = yaml.load(chunk, Loader=standalone.Loader)  # a SafeLoader subclass
            except yaml.YAMLError:
                return standalone.load_text(text, source_name)  # precise message, document number
            if raw is None:
                continue
            standalone.add_document(raw, number, out)
            obj = _added_by(raw, number, out)
            if obj is not None:
                parsed[chunk] = obj
                if isinstance(obj, LoadBalancer):
                    fresh_lbs.append(obj)
        desired = standalone.desired_from(out)
        errors = list(out.errors)
        for lb in fresh_lbs:
            errors += check_load_balancer(lb)  # cached ones passed this already
        errors += check_state(desired, known_pools=out.broken_pools, per_object=False)
        if errors:
            raise ValidationErrors(errors)
        self._objects = parsed
        return desired


def _added_by(raw: object, number: int, out: standalone.Collected) -> IPPool | LoadBalancer | None:
    """The object document `number` just added, if it added one."""
    if not isinstance(raw, dict):
        return None
    kind, name = standalone.label(raw, number)
    if out.defined_in.get((kind, name)) != number:
        return None
    return out.pools.get(name) if kind == "IPPool" else out.lbs.get(name)


__all__ = ["CachedLoader", "ValidationError", "split_documents"]
