"""The content of several files as one desired state, with the checks across objects kept
incremental: replacing one file costs work proportional to that file (and to the pools when a
pool changes), not to the number of files.

Each file is validated on its own by the loader (fields, one L4LB's consistency, a name defined
twice in the same file). What needs more than one object is checked here, from indexes:

- a name defined in more than one file (L4LB or IPPool), naming every file;
- two active L4LBs on one explicit frontend (address, protocol, port): the first by name keeps it;
- an L4LB naming a pool that no file defines (a pool that is defined but broken counts as known,
  so the L4LB is not reported a second time);
- overlapping pool ranges (check_pools over the pools, which are few, whenever one changes).

After every `replace`, each of these checks is re-run only for the keys (names, frontends, pool
names) that the replaced file touched. Errors are kept per file, because a strict source reports
and rejects per file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from gatelb.model import ConfigObject, IPAddress, IPPool, LoadBalancer, ObjectRef, Protocol, ValidationError
from gatelb.validate import IPPOOL, L4LB, check_pools, frontend_text

FrontendKey = tuple[IPAddress, Protocol, int]
# ("L4LB", name) | ("IPPool", name) | ("frontend", key) | ("ref", pool name) | ("overlap", "")
CheckKey = tuple[str, object]
_CHECK_ORDER = {L4LB: 0, IPPOOL: 1, "overlap": 2, "ref": 3, "frontend": 4}
_OVERLAP: CheckKey = ("overlap", "")
K = TypeVar("K")


@dataclass(frozen=True)
class FileContent:
    """One file after the loader: its valid objects, the names it defines (valid or not), and its
    own problems."""

    lbs: dict[str, LoadBalancer] = field(default_factory=dict)
    pools: dict[str, IPPool] = field(default_factory=dict)
    names: frozenset[tuple[str, str]] = frozenset()  # (kind, name), including broken documents
    errors: tuple[ValidationError, ...] = ()
    config: dict[ObjectRef, ConfigObject] = field(default_factory=dict)  # other kinds (BGPPeer...)


def _frontend(lb: LoadBalancer) -> FrontendKey | None:
    if not lb.active or lb.frontend_ip is None:
        return None
    return (lb.frontend_ip, lb.protocol, lb.port)


class Index:
    def __init__(self) -> None:
        self.files: dict[str, FileContent] = {}
        self._defs: dict[tuple[str, str], set[str]] = {}  # (kind, name) -> files defining it
        # The effective objects (with a name defined twice, the first file's; that is an error).
        self.lbs: dict[str, LoadBalancer] = {}
        self.lb_file: dict[str, str] = {}
        self.pools: dict[str, IPPool] = {}
        self.pool_file: dict[str, str] = {}
        self._frontends: dict[FrontendKey, set[str]] = {}
        self._refs: dict[str, set[str]] = {}  # pool name -> L4LBs naming it
        self._cross: dict[CheckKey, list[tuple[str, ValidationError]]] = {}
        self._cross_by_file: dict[str, dict[CheckKey, list[ValidationError]]] = {}
        self.error_files: set[str] = set()
        # Drained by the owner: L4LB names whose effective object or file may have changed, and
        # whether any pool did.
        self.touched: set[str] = set()
        self.pools_touched = False
        # Configuration objects of other kinds: few, so merged afresh whenever a file with any
        # changes (the first file in name order wins a name defined twice, which is an error).
        self.config: dict[ObjectRef, ConfigObject] = {}
        self.config_touched = False
        self._config_files: set[str] = set()

    # -- updates ----------------------------------------------------------------------------

    def replace(self, file: str, content: FileContent | None) -> None:
        """Put in (or, with None, take out) one file's content."""
        old = self.files.pop(file, None)
        if content is not None:
            self.files[file] = content
        old_names = old.names if old is not None else frozenset()
        new_names = content.names if content is not None else frozenset()
        suspects: set[CheckKey] = set()
        for key in old_names - new_names:
            files = self._defs[key]
            files.discard(file)
            if not files:
                del self._defs[key]
        for key in new_names - old_names:
            self._defs.setdefault(key, set()).add(file)
        for kind, name in old_names | new_names:
            suspects.add((kind, name))
            if kind == IPPOOL:
                suspects.add(("ref", name))  # defined or not any more
        lb_names = set(old.lbs if old else ()) | set(content.lbs if content else ())
        for name in lb_names | {n for k, n in old_names | new_names if k == L4LB}:
            self._settle_lb(name, suspects)
        pool_names = set(old.pools if old else ()) | set(content.pools if content else ())
        for name in pool_names:
            self._settle_pool(name, suspects)
        for check in sorted(suspects, key=_order):
            self._recheck(check)
        self._settle_errors(file)
        if (old is not None and old.config) or (content is not None and content.config):
            self._merge_config(file, content)

    def _merge_config(self, file: str, content: FileContent | None) -> None:
        if content is not None and content.config:
            self._config_files.add(file)
        else:
            self._config_files.discard(file)
        merged: dict[ObjectRef, ConfigObject] = {}
        for f in sorted(self._config_files):
            for ref, obj in self.files[f].config.items():
                merged.setdefault(ref, obj)
        if merged != self.config:
            self.config = merged
            self.config_touched = True

    def _first_with(self, kind: str, name: str, objects: str) -> str | None:
        best: str | None = None
        for f in self._defs.get((kind, name), ()):
            if name in getattr(self.files[f], objects) and (best is None or f < best):
                best = f
        return best

    def _settle_lb(self, name: str, suspects: set[CheckKey]) -> None:
        file = self._first_with(L4LB, name, "lbs")
        new = self.files[file].lbs[name] if file is not None else None
        old = self.lbs.get(name)
        if new is old and self.lb_file.get(name) == file:
            return
        self.touched.add(name)
        if old is not None:
            front = _frontend(old)
            if front is not None:
                self._drop(self._frontends, front, name)
                suspects.add(("frontend", front))
            if old.pool is not None:
                self._drop(self._refs, old.pool, name)
                suspects.add(("ref", old.pool))
            del self.lbs[name], self.lb_file[name]
        if new is not None and file is not None:
            self.lbs[name], self.lb_file[name] = new, file
            front = _frontend(new)
            if front is not None:
                self._frontends.setdefault(front, set()).add(name)
                suspects.add(("frontend", front))
            if new.pool is not None:
                self._refs.setdefault(new.pool, set()).add(name)
                suspects.add(("ref", new.pool))

    def _settle_pool(self, name: str, suspects: set[CheckKey]) -> None:
        file = self._first_with(IPPOOL, name, "pools")
        new = self.files[file].pools[name] if file is not None else None
        if new is self.pools.get(name) and self.pool_file.get(name) == file:
            return
        self.pools_touched = True
        suspects.add(_OVERLAP)
        if new is None or file is None:
            self.pools.pop(name, None)
            self.pool_file.pop(name, None)
        else:
            self.pools[name], self.pool_file[name] = new, file

    @staticmethod
    def _drop(index: dict[K, set[str]], key: K, name: str) -> None:
        names = index.get(key)
        if names is not None:
            names.discard(name)
            if not names:
                del index[key]

    # -- checks -----------------------------------------------------------------------------

    def _recheck(self, key: CheckKey) -> None:
        for file, _ in self._cross.pop(key, ()):
            by_key = self._cross_by_file.get(file)
            if by_key is not None and by_key.pop(key, None) is not None:
                self._settle_errors(file)
        found = list(self._check(key))
        if not found:
            return
        self._cross[key] = found
        for file, err in found:
            self._cross_by_file.setdefault(file, {}).setdefault(key, []).append(err)
            self.error_files.add(file)

    def _check(self, key: CheckKey) -> Iterable[tuple[str, ValidationError]]:
        what, arg = key
        if what not in ("frontend", "ref", "overlap"):  # a kind: its name in one file only
            assert isinstance(arg, str)
            files = sorted(self._defs.get((what, arg), ()))
            if len(files) > 1:
                text = f"{what} {arg} is defined in more than one file: {', '.join(files)}"
                for f in files:
                    yield f, ValidationError(what, arg, "metadata.name", text)
        elif what == "frontend":
            front = cast(FrontendKey, arg)
            names = sorted(self._frontends.get(front, ()))
            if len(names) > 1:
                first = names[0]
                for name in names[1:]:
                    where = "" if self.lb_file[first] == self.lb_file[name] else f" (in {self.lb_file[first]})"
                    yield self.lb_file[name], ValidationError(
                        L4LB, name, "spec.frontend", f"{frontend_text(*front)} is already used by L4LB {first}{where}")
        elif what == "ref":
            assert isinstance(arg, str)
            if (IPPOOL, arg) not in self._defs:
                for name in sorted(self._refs.get(arg, ())):
                    yield self.lb_file[name], ValidationError(L4LB, name, "spec.pool", f"unknown IPPool {arg!r}")
        elif what == "overlap":
            for err in check_pools(self.pools[n] for n in sorted(self.pools)):
                yield self.pool_file[err.name], err

    def _settle_errors(self, file: str) -> None:
        by_key = self._cross_by_file.get(file)
        if by_key is not None and not by_key:
            del self._cross_by_file[file]
            by_key = None
        content = self.files.get(file)
        if by_key or (content is not None and content.errors):
            self.error_files.add(file)
        else:
            self.error_files.discard(file)

    # -- reading ----------------------------------------------------------------------------

    def errors_of(self, file: str) -> tuple[ValidationError, ...]:
        content = self.files.get(file)
        own = content.errors if content is not None else ()
        by_key = self._cross_by_file.get(file, {})
        return own + tuple(e for key in sorted(by_key, key=_order) for e in by_key[key])

    def pool_tuple(self) -> tuple[IPPool, ...]:
        return tuple(self.pools[n] for n in sorted(self.pools))


def _order(key: CheckKey) -> tuple[int, str]:
    return (_CHECK_ORDER.get(key[0], len(_CHECK_ORDER)), str(key[1]))
