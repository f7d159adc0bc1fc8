"""`FileSource`: one YAML/JSON file, or a directory of them, as a strict Source (sources/base.py).

A directory means every `*.yaml`, `*.yml` and `*.json` directly in it (not recursive), in name
order, like `kubectl apply -f DIR`; hidden files (`.name`) and editor or config-management temp
files (`name.yaml~`, `.name.yaml.swp`, `#name.yaml#`, `name.yaml.tmp`) are not configuration.

Work is proportional to what changed:

- an event for one file re-reads that file only; its bytes are hashed, and an unchanged hash
  stops there. A changed file is parsed and validated on its own (loader.collect_text, or the
  per-document cache for a file of many documents), then replaces that file's content in the
  Index, which re-runs the checks across files for the names, frontends and pools it touched;
- collect() compares, for the L4LB names touched since the last commit only, the current object
  with the committed one, and returns those that differ (None for removed ones); pools only when
  a pool changed; the errors of every file that has any (few), and an empty tuple for each file
  whose errors were reported and are gone.

An event for a name of Kubernetes' atomic writer (`..data`, `..data_tmp`, `..2026_...`: a
ConfigMap volume whose files are `name -> ..data/name` and whose `..data` symlink is swapped by
rename) re-reads every file of the directory, following the links afresh, and applies what hashes
differently; so every swap is applied, however close together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

from gatelb.model import (
    ConfigObject,
    DesiredState,
    IPPool,
    LoadBalancer,
    ObjectRef,
    OriginKind,
    ValidationError,
    ValidationErrors,
)
from gatelb.sources.base import AddressView, Contribution, Notify
from gatelb.sources.file.index import FileContent, Index
from gatelb.sources.file.loader import CachedLoader

SUFFIXES = (".yaml", ".yml", ".json")
_TEMP_SUFFIXES = (".swp", ".swx", ".tmp", "~", "#")
# watchfiles: yield once nothing new came for STEP_MS, at the latest after DEBOUNCE_MS.
STEP_MS = 5
DEBOUNCE_MS = 200
# A file of at least this many documents keeps a per-document cache (loader.CachedLoader).
CACHE_MIN_DOCUMENTS = 16
RETRY_MISSING_S = 1.0
# A content that removes every load balancer, or more than half of at least MASS_MIN, in one step
# waits this long (unchanged) before it is handed over.
HOLD_S = 2.0
MASS_MIN = 4

log = logging.getLogger("gatelb.sources.file")


def mass_removal(before: int, after: int) -> bool:
    """Whether going from `before` to `after` load balancers in one step is held back."""
    return before > 0 and after < before and (after == 0 or (before >= MASS_MIN and after * 2 < before))


def is_config_name(name: str) -> bool:
    """Whether a directory entry named `name` is configuration (by name alone)."""
    return not name.startswith((".", "#")) and name.endswith(SUFFIXES) and not name.endswith(_TEMP_SUFFIXES)


def is_atomic_writer_name(name: str) -> bool:
    """`..data`, `..data_tmp`, `..2026_12_01_10_00_00.123`: the kubelet's ConfigMap/Secret writer."""
    return name.startswith("..data") or (name.startswith("..") and name[2:3].isdigit())


def file_ref(key: str) -> ObjectRef:
    return ObjectRef(OriginKind.FILE.value, key)


def error_lines(errors: Mapping[ObjectRef, tuple[ValidationError, ...]], single: str | None = None) -> list[str]:
    """Errors for people: each prefixed with its file, unless it is the `single` file's or names
    the file itself."""
    lines: list[str] = []
    for ref in sorted(errors, key=str):
        for err in errors[ref]:
            if ref.key == single or err.kind == OriginKind.FILE.value:
                lines.append(str(err))
            else:
                lines.append(f"{ref.key}: {err}")
    return lines


class FileSource:
    """The standalone source. `path` is a file or a directory; with watch=False (and always for
    from_text) run() loads once and returns. The constructor does no I/O."""

    def __init__(self, path: Path, watch: bool = True, hold_s: float = HOLD_S) -> None:
        self._path = Path(path)
        self._watch = watch
        self._hold_s = hold_s
        self._held_at: float | None = None  # since when a mass removal is held back (monotonic)
        self._text: str | None = None  # from_text: the content of the one "file" named path
        self._index = Index()
        self._digests: dict[str, bytes] = {}
        self._caches: dict[str, CachedLoader] = {}
        self._is_dir = False
        self._synced = False
        self._committed: dict[str, tuple[LoadBalancer, str]] = {}  # name -> (object, file)
        self._committed_pools: tuple[IPPool, ...] = ()
        self._committed_config: dict[ObjectRef, ConfigObject] = {}
        self._committed_once = False
        self._dirty: set[str] = set()  # L4LB names that may differ from the committed ones
        self._pools_dirty = False
        self._reported: set[str] = set()  # files whose errors went out and were not cleared by a commit
        self._notifier: Notify | None = None
        self.parsed = 0  # files parsed and validated so far (for tests and benchmarks)
        self.read = 0  # files read so far

    @classmethod
    def from_text(cls, text: str, name: str = "<stdin>") -> FileSource:
        """A one-shot source of one text (standard input for `gatelb apply -f -`)."""
        source = cls(Path(name), watch=False)
        source._text = text
        return source

    # -- Source -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"file {self._path}"

    @property
    def strict(self) -> bool:
        return True

    @property
    def synced(self) -> bool:
        return self._synced

    def rescan(self) -> list[str]:
        """SIGHUP: read every file again (links resolved again) and notify if anything changed.
        Runs on the event loop, so nothing reads the index meanwhile: about 1.5 s for a directory
        of 10,000 files, a price paid only when asked for. Returns the files that changed."""
        if not self._synced:
            return []
        changed = self._scan()
        if self._notifier is not None:
            self._notify(self._notifier, changed, "signal")
        return changed

    async def run(self, notify: Notify) -> None:
        self._notifier = notify
        if not self._watch or self._text is not None:
            await asyncio.to_thread(self._scan)
            self._synced = True
            notify("loaded")
            return
        first = True
        self._is_dir = _is_dir(self._path)  # what to watch depends on it
        while True:
            dirs = self._watch_dirs()
            if not dirs:  # not even the parent exists: look again now and then
                if first:
                    self._scan()
                    self._synced, first = True, False
                    notify("loaded")
                await asyncio.sleep(RETRY_MISSING_S)
                self._notify(notify, self._scan(), "file")
                continue
            async with _watching(dirs) as batches:
                if first:
                    await asyncio.to_thread(self._scan)
                    self._synced, first = True, False
                    notify("loaded")
                else:  # the watched directory came (back): catch up with what happened meanwhile
                    self._notify(notify, self._scan(), "file")
                async for batch in batches:
                    files, rescan, restart = self._classify(batch)
                    if rescan or restart:
                        self._notify(notify, self._scan(), "file")
                    elif files:
                        self._notify(notify, self.refresh(files), "file")
                    if restart or dirs != self._watch_dirs():
                        break

    def collect(self, view: AddressView | None = None) -> Contribution | None:
        if not self._synced:
            return None
        idx = self._index
        news = bool(idx.touched)
        self._absorb()
        if self._holding(news):
            return None
        errors: dict[ObjectRef, tuple[ValidationError, ...]] = {
            file_ref(f): idx.errors_of(f) for f in sorted(idx.error_files)}
        if not self._committed_once:
            self._dirty.clear()
            self._pools_dirty = False
            self._reported |= idx.error_files
            names = sorted(idx.lbs)
            idx.config_touched = False
            return Contribution(
                load_balancers={n: idx.lbs[n] for n in names}, pools=idx.pool_tuple(), errors=errors,
                origins={n: file_ref(idx.lb_file[n]) for n in names}, full=True, config=dict(idx.config))
        changed: dict[str, LoadBalancer | None] = {}
        origins: dict[str, ObjectRef] = {}
        for name in sorted(self._dirty):
            now, before = idx.lbs.get(name), self._committed.get(name)
            if now is None:
                if before is not None:
                    changed[name] = None
                continue
            file = idx.lb_file[name]
            if before is None or before[1] != file or (before[0] is not now and before[0] != now):
                changed[name] = now
                origins[name] = file_ref(file)
        self._dirty = set(changed)
        pools = None
        if self._pools_dirty:
            current = idx.pool_tuple()
            if current != self._committed_pools:
                pools = current
            else:
                self._pools_dirty = False
        for f in self._reported - idx.error_files:
            errors[file_ref(f)] = ()
        self._reported |= idx.error_files
        config: dict[ObjectRef, ConfigObject | None] = {}
        if idx.config_touched:
            config = {ref: obj for ref, obj in idx.config.items() if self._committed_config.get(ref) != obj}
            config.update({ref: None for ref in self._committed_config if ref not in idx.config})
            if not config:
                idx.config_touched = False
        contribution = Contribution(load_balancers=changed, pools=pools, errors=errors, origins=origins,
                                    config=config)
        return None if contribution.empty else contribution

    def _holding(self, news: bool) -> bool:
        """Whether to hold back the current content (see the module docstring). `news`: it
        changed since the last collect(), which restarts the wait."""
        before, after = len(self._committed), len(self._index.lbs)
        if (self._hold_s <= 0 or not self._committed_once or self._index.error_files
                or not mass_removal(before, after)):
            if self._held_at is not None:
                self._held_at = None
                log.info("reload-hold-ended", extra={"fields": {
                    "event": "reload-hold-ended", "source": self.name, "load_balancers": after}})
            return False
        now = time.monotonic()
        if self._held_at is None or news:
            self._held_at = now
            log.warning("reload-held", extra={"fields": {
                "event": "reload-held", "source": self.name, "load_balancers_before": before,
                "load_balancers_now": after, "hold_s": self._hold_s,
                "why": "the content lost most of its load balancers in one step; applied only if it stays "
                       "so (gatelb run --allow-empty applies it at once)"}})
            self._wake_after(self._hold_s)
            return True
        if now - self._held_at < self._hold_s:
            self._wake_after(self._hold_s - (now - self._held_at))
            return True
        log.warning("reload-hold-over", extra={"fields": {
            "event": "reload-hold-over", "source": self.name, "removing": before - after,
            "held_s": round(now - self._held_at, 3)}})
        self._held_at = None
        return False

    def _wake_after(self, delay: float) -> None:
        notify = self._notifier
        if notify is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # collected outside an event loop (tests, one-shot): the caller asks again
            return
        loop.call_later(max(delay, 0.0) + 0.01, notify, "file: held removal")

    @property
    def load_balancer_count(self) -> int:
        """How many load balancers the current content defines (errors or not)."""
        return len(self._index.lbs)

    def commit(self, contribution: Contribution) -> None:
        if contribution.full:
            self._committed = {}
            self._committed_once = True
            self._reported = set()
        for name, lb in contribution.load_balancers.items():
            if lb is None:
                self._committed.pop(name, None)
            else:
                origin = contribution.origins.get(name)
                self._committed[name] = (lb, origin.key if origin is not None else "")
        if contribution.pools is not None:
            self._committed_pools = contribution.pools
        if contribution.full:
            self._committed_config = {}
        for ref, obj in contribution.config.items():
            if obj is None:
                self._committed_config.pop(ref, None)
            else:
                self._committed_config[ref] = obj
        for ref, errs in contribution.errors.items():
            if errs:
                self._reported.add(ref.key)
            else:
                self._reported.discard(ref.key)

    # -- one-shot use and inspection --------------------------------------------------------

    def load(self) -> None:
        """Read everything now (what run() does first), without an event loop."""
        self._scan()
        self._synced = True

    @property
    def errors(self) -> dict[ObjectRef, tuple[ValidationError, ...]]:
        """Every current problem, by file."""
        return {file_ref(f): self._index.errors_of(f) for f in sorted(self._index.error_files)}

    def error_lines(self) -> list[str]:
        return error_lines(self.errors, None if self._is_dir else str(self._path))

    def desired(self) -> DesiredState:
        """The current content as a DesiredState; ValidationErrors (of every file) if any."""
        errors = [e for errs in self.errors.values() for e in errs]
        if errors:
            raise ValidationErrors(errors)
        idx = self._index
        return DesiredState(pools=idx.pool_tuple(), load_balancers=tuple(idx.lbs[n] for n in sorted(idx.lbs)))

    def files(self) -> list[str]:
        """The files read, in name order."""
        return sorted(self._index.files)

    # -- reading ----------------------------------------------------------------------------

    def refresh(self, files: Iterable[str]) -> list[str]:
        """Re-read these files (keys as listed: DIR/NAME); the ones whose content changed."""
        return [f for f in files if self._read(f)]

    def _scan(self) -> list[str]:
        """Read everything afresh (links resolved again); the files whose content changed."""
        if self._text is not None:
            return [self._path.name] if self._apply(str(self._path), self._text.encode()) else []
        key = str(self._path)
        self._is_dir = _is_dir(self._path)
        if not self._is_dir:
            gone = [f for f in self._index.files if f != key]
            for f in gone:
                self._forget(f)
            return gone + ([key] if self._read(key) else [])
        try:
            names = sorted(e.name for e in os.scandir(self._path) if is_config_name(e.name) and _is_file(e))
        except OSError as err:
            return self._unreadable(key, err)
        wanted = [str(self._path / n) for n in names]
        gone = [f for f in self._index.files if f not in set(wanted)]
        for f in gone:
            self._forget(f)
        return gone + [f for f in wanted if self._read(f)]

    def _unreadable(self, key: str, err: OSError) -> list[str]:
        """The path itself cannot be read: nothing else is configuration, and that is an error."""
        gone = [f for f in self._index.files if f != key and self._forget(f)]
        return [*gone, key] if self._broken(key, err) else gone

    def _read(self, key: str) -> bool:
        self.read += 1
        try:
            data = Path(key).read_bytes()
        except FileNotFoundError as err:
            # In a directory, a file that went away takes its objects along; a single file
            # that went away is an error (the last good content stays in force).
            return self._forget(key) if self._is_dir else self._broken(key, err)
        except OSError as err:
            return self._broken(key, err)
        return self._apply(key, data)

    def _broken(self, key: str, err: OSError) -> bool:
        problem = f"cannot read: {err.strerror or err}"
        digest = b"error:" + problem.encode()
        if self._digests.get(key) == digest:
            return False
        self._digests[key] = digest
        self._caches.pop(key, None)
        self._index.replace(key, FileContent(errors=(ValidationError(OriginKind.FILE.value, key, "", problem),)))
        return True

    def _forget(self, key: str) -> bool:
        self._digests.pop(key, None)
        self._caches.pop(key, None)
        if key not in self._index.files:
            return False
        self._index.replace(key, None)
        return True

    def _apply(self, key: str, data: bytes) -> bool:
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if self._digests.get(key) == digest:
            return False
        self._digests[key] = digest
        self._index.replace(key, self._parse(key, data))
        return True

    def _parse(self, key: str, data: bytes) -> FileContent:
        self.parsed += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._caches.pop(key, None)
            problem = f"not UTF-8 text ({exc.reason})"
            return FileContent(errors=(ValidationError(OriginKind.FILE.value, key, "", problem),))
        loader = self._caches.pop(key, None) or CachedLoader()
        out = loader.collect(text, key)
        if loader.documents >= CACHE_MIN_DOCUMENTS:
            self._caches[key] = loader
        names = frozenset(k for k in out.defined_in if k[0] != "document")
        return FileContent(lbs=out.lbs, pools=out.pools, names=names, errors=tuple(out.errors), config=out.config)

    def _absorb(self) -> None:
        idx = self._index
        if idx.touched:
            self._dirty |= idx.touched
            idx.touched = set()
        if idx.pools_touched:
            self._pools_dirty = True
            idx.pools_touched = False

    # -- watching ---------------------------------------------------------------------------

    def _base(self) -> Path:
        """The directory whose entries matter: the directory itself, or the file's directory."""
        absolute = Path(os.path.abspath(self._path))
        return absolute if self._is_dir else absolute.parent

    def _watch_dirs(self) -> tuple[Path, ...]:
        """The base and its parent (to see the base removed and created again); for a file that is
        a link into another directory, that directory too."""
        base = self._base()
        wanted = [base, base.parent]
        if not self._is_dir:
            target = Path(os.path.realpath(self._path)).parent
            if target not in wanted:
                wanted.append(target)
        return tuple(d for d in dict.fromkeys(wanted) if d.is_dir())

    def _classify(self, batch: Iterable[tuple[object, str]]) -> tuple[list[str], bool, bool]:
        """(files to re-read, re-read everything, watch again) for one batch of events."""
        base = self._base()
        files: dict[str, None] = {}
        rescan = restart = False
        for _, raw in batch:
            p = Path(raw)
            if p == base:
                restart = True
            elif p.parent == base:
                if is_atomic_writer_name(p.name):
                    rescan = True
                elif self._is_dir and is_config_name(p.name):
                    files[str(self._path / p.name)] = None
                elif not self._is_dir and p.name == self._path.name:
                    rescan = True
            elif not self._is_dir and p.parent != base.parent:
                rescan = True  # the directory the file links into
        return list(files), rescan, restart

    def _notify(self, notify: Notify, changed: list[str], why: str) -> None:
        if not changed:
            return
        what = f"file {changed[0]}" if len(changed) == 1 else f"{len(changed)} files"
        notify(f"{why}: {what}")


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()  # follows links (a ConfigMap's entries are links)
    except OSError:
        return False


@contextlib.asynccontextmanager
async def _watching(dirs: tuple[Path, ...]) -> AsyncIterator[AsyncIterator[set[tuple[object, str]]]]:
    """watchfiles.awatch over `dirs`, already watching when the body starts (so nothing between
    the body's first read and the first event is missed), stopped on exit."""
    from watchfiles import awatch

    stop = asyncio.Event()
    changes = awatch(*dirs, recursive=False, step=STEP_MS, debounce=DEBOUNCE_MS, watch_filter=None,
                     stop_event=stop)
    first = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)  # runs the generator up to its first wait: the watch is in place

    async def batches() -> AsyncIterator[set[tuple[object, str]]]:
        nonlocal first
        while True:
            try:
                batch = await first
            except StopAsyncIteration:
                return
            first = asyncio.ensure_future(anext(changes))
            yield {(c, p) for c, p in batch}

    try:
        yield batches()
    finally:
        stop.set()
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await first
        await changes.aclose()
