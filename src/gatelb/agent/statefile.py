"""The state file: what must survive a restart (address allocations, what was applied).

One JSON file, `<state-dir>/state.json`, versioned. It is replaced atomically (temp file in the
same directory, fsync, rename, fsync of the directory), so a crash leaves either the old or the
new file, never a torn one.

Hardening: the directory is created 0700 and must be owned by this user (or root) and writable
by nobody else; state files are opened with O_NOFOLLOW (a symbolic link planted at
`<state-dir>/state.json` or `lock` is refused, never followed) and created 0600: the record
shows the whole configuration, and every reader (`status`, `plan`) needs the privileges that
reading nftables takes anyway.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatelb.addresses import ip_address
from gatelb.agent.applied import AppliedRecord, JsonMemo
from gatelb.model import IPAddress

VERSION = 2  # 2: `applied` is an AppliedRecord (1: free-form, with the source text)
FILE_NAME = "state.json"
DEFAULT_STATE_DIR = "/var/lib/gatelb"
ENV_STATE_DIR = "GATELB_STATE_DIR"


class StateFileError(RuntimeError):
    """The state file exists but cannot be used. The message names the file."""


RELEASED_KEEP_S = 24 * 3600.0  # how long the address of a removed load balancer is remembered


@dataclass(frozen=True)
class Released:
    """The address a load balancer had when it went away: it gets it back if it returns within
    RELEASED_KEEP_S (and nobody took the address meanwhile), across restarts too."""

    ip: str
    at: float  # UNIX time of the release


@dataclass(frozen=True)
class StoredState:
    allocations: dict[str, str] = field(default_factory=dict)  # load balancer name -> frontend IP
    pools: dict[str, str | None] = field(default_factory=dict)  # load balancer name -> IPPool name
    applied: AppliedRecord | None = None
    released: dict[str, Released] = field(default_factory=dict)  # removed load balancers' addresses

    def addresses(self, now: float | None = None, keep_s: float = RELEASED_KEEP_S) -> dict[str, IPAddress]:
        """The recorded allocations as addresses (with `now`: also the releases younger than
        keep_s, to give back). A damaged entry only loses its pinning: IPAM allocates afresh."""
        out: dict[str, IPAddress] = {}
        for name, text in (self.allocations if now is None else self.hints(now, keep_s)).items():
            try:
                out[name] = ip_address(text)
            except ValueError:
                continue
        return out

    def hints(self, now: float, keep_s: float = RELEASED_KEEP_S) -> dict[str, str]:
        """The addresses to give back: current allocations, and releases younger than keep_s."""
        out = {n: r.ip for n, r in self.released.items() if now - r.at < keep_s}
        out.update(self.allocations)
        return out


def released_after(before: Mapping[str, str], released: Mapping[str, Released], now: Mapping[str, object],
                   at: float, keep_s: float = RELEASED_KEEP_S) -> dict[str, Released]:
    """The releases to record after a sync that left `now` allocated, when `before` was: the
    earlier ones not expired and not back, plus every name that lost its address now."""
    out = {n: r for n, r in released.items() if n not in now and at - r.at < keep_s}
    for name, ip in before.items():
        if name not in now:
            out[name] = Released(ip, at)
    return out


def _released(value: Any, path: Path) -> dict[str, Released]:
    if not isinstance(value, dict):
        raise StateFileError(f"{path}: 'released' must map names to {{ip, at}}")
    out: dict[str, Released] = {}
    for name, item in value.items():
        ok = isinstance(item, dict) and isinstance(item.get("ip"), str) and isinstance(item.get("at"), int | float)
        if not ok:
            raise StateFileError(f"{path}: 'released' must map names to {{ip, at}} ({name!r} does not)")
        out[str(name)] = Released(item["ip"], float(item["at"]))
    return out


def state_dir(cli_value: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Path:
    """--state-dir, else $GATELB_STATE_DIR, else /var/lib/gatelb."""
    environ = os.environ if env is None else env
    return Path(cli_value or environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR)


def _str_map(value: Any, key: str, path: Path, nullable: bool) -> dict[str, Any]:
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and (isinstance(v, str) or (nullable and v is None)) for k, v in value.items()
    )
    if not ok:
        raise StateFileError(f"{path}: {key!r} must map names to {'names' if nullable else 'addresses'}")
    return dict(value)


def _decode(data: Any, path: Path) -> StoredState:
    if not isinstance(data, dict):
        raise StateFileError(f"{path}: expected a JSON object")
    version = data.get("version")
    if version not in (1, VERSION):
        raise StateFileError(f"{path}: unsupported version {version!r} (this gatelb reads version {VERSION})")
    raw = data.get("applied")
    if raw is not None and not isinstance(raw, dict):
        raise StateFileError(f"{path}: 'applied' must be an object or null")
    applied = None
    if raw is not None and version == VERSION:
        try:
            applied = AppliedRecord.from_json(raw)
        except (KeyError, TypeError, ValueError) as err:
            raise StateFileError(f"{path}: 'applied' is damaged ({type(err).__name__}: {err}); move the file "
                                 "away to start afresh (allocations will be redone)") from err
    # A version-1 record is dropped (the next sync is a full one); its allocations are kept.
    return StoredState(
        allocations=_str_map(data.get("allocations", {}), "allocations", path, nullable=False),
        pools=_str_map(data.get("pools", {}), "pools", path, nullable=True),
        applied=applied,
        released=_released(data.get("released", {}), path),
    )


def check_directory(directory: Path, create: bool = False) -> None:
    """Refuse a state directory another user could tamper with: owned by someone other than us
    (or root), or writable by group or others. `create`: make it (0711) when missing: nobody else
    may list or change it, but the routing daemons gatelb starts under their own user (FRR's
    bgpd, keepalived scripts) must be able to enter it to reach their own subdirectory."""
    if create:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o711)
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return
    except OSError as err:
        raise StateFileError(f"{directory}: cannot use as state directory: {err.strerror}") from err
    if not stat.S_ISDIR(st.st_mode):
        raise StateFileError(f"{directory}: not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise StateFileError(f"{directory}: owned by uid {st.st_uid}, not by this user ({os.geteuid()}) or root; "
                             "refusing a state directory someone else controls")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise StateFileError(f"{directory}: writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                             f"chmod go-w {directory}")


def read_private(path: Path) -> bytes | None:
    """The content of a state file, never through a symbolic link; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StateFileError(f"{path}: is a symbolic link; refusing to follow it (remove it)") from err
        raise StateFileError(f"{path}: cannot read: {err.strerror}") from err
    with os.fdopen(fd, "rb") as f:
        return f.read()


class StateStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME

    def load(self) -> StoredState:
        """The stored state; an empty one when there is no file yet (first run)."""
        check_directory(self.directory)
        try:
            data = read_private(self.path)
            if data is None:
                return StoredState()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise StateFileError(f"{self.path}: cannot read: {err}") from err
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise StateFileError(
                f"{self.path}: corrupt (not JSON: {err.msg} at line {err.lineno}, column {err.colno}); "
                "move it away to start afresh (allocations will be redone)"
            ) from err
        return _decode(data, self.path)

    def save(self, state: StoredState, memo: JsonMemo | None = None) -> None:
        """Replace the file atomically. Raises TypeError if the record is not JSON-serialisable
        (before anything is written), OSError when the disk refuses. With `memo` (the daemon's
        writer), services and load balancers unchanged since the last save are not encoded again."""
        document = {
            "version": VERSION,
            "allocations": dict(sorted(state.allocations.items())),
            "pools": dict(sorted(state.pools.items())),
            "released": {n: {"ip": r.ip, "at": r.at} for n, r in sorted(state.released.items())},
            # Last: with a memo its text is spliced in after encoding the rest.
            "applied": state.applied.to_json() if state.applied is not None and memo is None else None,
        }
        try:
            # No indent: only then does json use its C encoder (10x faster at 10,000 services).
            text = json.dumps(document, allow_nan=False, separators=(",", ":"))
            if state.applied is not None and memo is not None:
                assert text.endswith('"applied":null}')
                text = text[:-len("null}")] + state.applied.to_json_text(memo) + "}"
            text += "\n"
        except (TypeError, ValueError) as err:
            raise TypeError(f"state for {self.path} is not JSON-serialisable: {err}") from err
        check_directory(self.directory, create=True)
        self._replace(text.encode())

    def _replace(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
