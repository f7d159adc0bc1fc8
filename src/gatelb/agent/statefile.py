"""The state file: what must survive a restart (address allocations, what was applied).

One JSON file, `<state-dir>/state.json`, versioned. It is replaced atomically (temp file in the
same directory, fsync, rename, fsync of the directory), so a crash leaves either the old or the
new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatelb.agent.applied import AppliedRecord, JsonMemo

VERSION = 2  # 2: `applied` is an AppliedRecord (1: free-form, with the source text)
FILE_NAME = "state.json"
DEFAULT_STATE_DIR = "/var/lib/gatelb"
ENV_STATE_DIR = "GATELB_STATE_DIR"


class StateFileError(RuntimeError):
    """The state file exists but cannot be used. The message names the file."""


@dataclass(frozen=True)
class StoredState:
    allocations: dict[str, str] = field(default_factory=dict)  # load balancer name -> frontend IP
    pools: dict[str, str | None] = field(default_factory=dict)  # load balancer name -> IPPool name
    applied: AppliedRecord | None = None


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
    )


class StateStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME

    def load(self) -> StoredState:
        """The stored state; an empty one when there is no file yet (first run)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return StoredState()
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
        self.directory.mkdir(parents=True, exist_ok=True)
        self._replace(text.encode())

    def _replace(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; `gatelb status` may read it unprivileged
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
