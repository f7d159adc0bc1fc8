"""Running nft: one atomic transaction per call, and reading back what the kernel holds.

We shell out to `nft -f -` rather than linking libnftables: the cost is the same code either way
(measured: the time is nft's own parsing and evaluation), and a separate process keeps nft's peak
memory (about 400 MB for 10,000 services) out of the long-running agent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from gatelb.dataplane.layout import Data, Key
from gatelb.dataplane.render import ElementAdds, ElementDeletes
from gatelb.dataplane.ruleset import FAMILY, TABLE

from .counters import TableCounters, parse_table

NO_GENERATION = -1  # Nft.generation() of a table whose generation set holds several elements


class Committers:
    """Who committed our own transactions: the pids of the nft processes we start (libmnl binds
    their netlink socket to the pid) and the port ids and thread ids of our netlink batches. The
    kernel names the committer of every nftables transaction in its NEWGEN notification, so the
    monitor (kernel/monitor.py) can tell our commits from everyone else's. An id counts as ours
    for `keep_s` after it was last noted: the monitor looks it up within moments of the commit,
    and a pid the system later gives to another process must not stay ours."""

    def __init__(self, keep_s: float = 120.0) -> None:
        self._seen: dict[int, float] = {}
        self._keep = keep_s
        self._lock = threading.Lock()

    def note(self, *ids: int) -> None:
        now = time.monotonic()
        with self._lock:
            for i in ids:
                if i > 0:
                    self._seen[i] = now
            if len(self._seen) > 4096:
                self._seen = {i: t for i, t in self._seen.items() if now - t < self._keep}

    def __contains__(self, ident: object) -> bool:
        with self._lock:
            seen = self._seen.get(ident)  # type: ignore[call-overload]
        return seen is not None and time.monotonic() - seen < self._keep


OWN_COMMITTERS = Committers()


class NftError(RuntimeError):
    """nft rejected a transaction; the kernel is unchanged (nft transactions are all-or-nothing)."""

    def __init__(self, message: str, script: str = "") -> None:
        super().__init__(message)
        self.script = script


class Nft(Protocol):
    def apply(self, script: str) -> None: ...

    def generation(self) -> int | None:
        """The generation number stored in our table, or None when the table does not exist.
        0 when the set holds none and NO_GENERATION when it holds several: a table changed by
        hand (or an element added to it) must match no record, or a restart would adopt it."""
        ...

    def rule_counts(self) -> dict[str, int] | None:
        """How many rules each chain of our table holds (None when the table does not exist).
        Cheap at any scale: set contents are not listed. With the generation, it tells whether the
        table is still what we applied (`nft flush table` empties the chains, not the sets)."""
        ...

    def list_table_json(self) -> list[dict[str, Any]]:
        """Our table as nft's JSON objects (empty when it does not exist). Slow at scale: not for hot paths."""
        ...

    def read_counters(self) -> TableCounters:
        """Generation, per-backend counters and the frontends in the service maps (for `gatelb status`)."""
        ...

    def query_json(self, *args: str) -> list[dict[str, Any]]:
        """`nft -j ARGS` as nft's JSON objects (empty when nft refuses): for small, read-only
        queries such as other tables' base chains (kernel/foreign.py)."""
        ...

    @property
    def bulk_elements(self) -> bool:
        """Whether load_elements() can add elements outside nft (see kernel/nlelements.py)."""
        ...

    def load_elements(self, elements: Mapping[str, Mapping[Key, Data]]) -> None:
        """Add typed elements (dataplane/layout.py) to sets of our table, as one transaction."""
        ...

    def apply_elements(self, deletes: ElementDeletes, adds: ElementAdds) -> None:
        """One transaction deleting, then adding, set elements (only when bulk_elements)."""
        ...


def _nft_binary() -> str:
    path = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if path is None:
        raise NftError("the nft command was not found; install the nftables package")
    return path


class NftCli:
    """The real thing: the `nft` command, in the network namespace this process runs in."""

    def __init__(self, timeout_s: float = 120.0, netns: str | None = None) -> None:
        self._timeout = timeout_s
        self._binary: str | None = None
        # Tests and benchmarks drive a named namespace from outside; the agent runs inside its own.
        self._prefix = ["ip", "netns", "exec", netns] if netns else []

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if self._binary is None:
            self._binary = _nft_binary()
        # Popen rather than run(): the pid is noted before nft can commit anything (it first reads
        # its whole input), so the monitor never takes our own transaction for someone else's.
        with subprocess.Popen([*self._prefix, self._binary, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            OWN_COMMITTERS.note(proc.pid)
            try:
                out, err = proc.communicate(stdin, timeout=self._timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    @property
    def bulk_elements(self) -> bool:
        # The netlink socket is opened in *this* process's namespace, so only when nft runs here
        # too; GATELB_NFT_ONLY=1 turns it off (for comparisons, or if a kernel ever disagrees).
        return not self._prefix and sys.byteorder == "little" and os.environ.get("GATELB_NFT_ONLY") != "1"

    def load_elements(self, elements: Mapping[str, Mapping[Key, Data]]) -> None:
        from .nlelements import build_batch, send_batch

        batch, acks = build_batch(TABLE, {name: items.items() for name, items in elements.items() if items})
        if acks:
            send_batch(batch, acks)

    def apply_elements(self, deletes: ElementDeletes, adds: ElementAdds) -> None:
        from .nlelements import Batch, send_batch

        batch = Batch(TABLE)
        for name, keys in deletes:
            batch.delete(name, keys)
        for name, items in adds:
            batch.add(name, items)
        if batch.acks:
            send_batch(batch.finish(), batch.acks)

    def apply(self, script: str) -> None:
        if not script:
            return
        proc = self._run(["-f", "-"], stdin=script)
        if proc.returncode != 0:
            raise NftError(_trim(proc.stderr) or f"nft exited with {proc.returncode}", script)

    def generation(self) -> int | None:
        proc = self._run(["-j", "list", "set", FAMILY, TABLE, "generation"])
        if proc.returncode != 0:
            return None
        for obj in json.loads(proc.stdout).get("nftables", []):
            elems = obj.get("set", {}).get("elem")
            if elems:
                return int(elems[0]) if len(elems) == 1 else NO_GENERATION
        return 0

    def rule_counts(self) -> dict[str, int] | None:
        if self.bulk_elements:  # same condition: our netlink socket is in nft's namespace
            from .nlrules import rule_counts

            return rule_counts(TABLE)
        # -t prints no set elements, but nft still fetches them all (seconds at 10,000 services).
        proc = self._run(["-j", "-t", "list", "table", FAMILY, TABLE])
        if proc.returncode != 0:
            return None
        counts: dict[str, int] = {}
        for obj in json.loads(proc.stdout).get("nftables", []):
            if "chain" in obj:
                counts.setdefault(obj["chain"]["name"], 0)
            elif "rule" in obj:
                chain = obj["rule"]["chain"]
                counts[chain] = counts.get(chain, 0) + 1
        return counts

    def read_counters(self) -> TableCounters:
        if self.bulk_elements:  # same condition: our netlink socket is in nft's namespace
            from .nlcounters import read_counters_raw

            return read_counters_raw(TABLE)
        return parse_table(self.list_table_json())

    def list_table_json(self) -> list[dict[str, Any]]:
        return self.query_json("list", "table", FAMILY, TABLE)

    def query_json(self, *args: str) -> list[dict[str, Any]]:
        proc = self._run(["-j", *args])
        if proc.returncode != 0:
            return []
        objs: list[dict[str, Any]] = json.loads(proc.stdout).get("nftables", [])
        return objs


def _trim(stderr: str, limit: int = 4000) -> str:
    """nft echoes the offending line; with 100,000-element lines that must be cut."""
    lines = []
    for line in stderr.strip().splitlines():
        lines.append(line if len(line) <= 300 else line[:300] + " ...")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[:limit] + "\n..."
