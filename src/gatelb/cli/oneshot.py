"""The one-shot commands: apply, plan, delete, flush, status.

Each loads the state file, works out the change, applies it as one transaction and records the
result. Exit codes: 0 success, 2 invalid input (nothing applied), 1 apply or system failure.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gatelb.agent.applied import services_from_json, services_to_json
from gatelb.agent.engine import DataplaneSync, SyncResult
from gatelb.agent.pipeline import Prepared, prepare
from gatelb.agent.statefile import StateStore, StoredState
from gatelb.agent.status import build_status
from gatelb.dataplane import compile_full
from gatelb.dataplane.changes import describe_changes, udp_flows_to_flush
from gatelb.dataplane.render import render_delete
from gatelb.kernel.conntrack import flush_flows
from gatelb.kernel.nft import Nft, NftCli, NftError
from gatelb.model import ResolvedState, ValidationError, ValidationErrors
from gatelb.sources.standalone import load_text

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class CommandError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    store: StateStore
    nft: Nft

    @classmethod
    def create(cls, state_dir: Path) -> Context:
        return cls(StateStore(state_dir), NftCli())


def _previous(stored: StoredState) -> tuple[ResolvedState | None, int]:
    applied = stored.applied or {}
    if not applied.get("services") and not applied.get("generation"):
        return None, 0
    return services_from_json(applied.get("services", [])), int(applied.get("generation", 0))


def _prepare_or_exit(text: str, source: str, stored: StoredState) -> Prepared:
    try:
        return prepare(text, source, stored.allocations)
    except (ValidationErrors, ValidationError) as err:
        raise CommandError(f"invalid configuration, nothing applied:\n{err}", EXIT_INVALID) from err


def read_input(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise CommandError(f"cannot read {path}: {err.strerror}", EXIT_INVALID) from err


def _record(prepared: Prepared, result: SyncResult, text: str, source: str) -> StoredState:
    return StoredState(
        allocations={k: str(v) for k, v in prepared.allocation.addresses.items()},
        pools=dict(prepared.allocation.pool_of),
        applied={
            "generation": result.generation,
            "source": source,
            "sourceText": text,
            "services": services_to_json(prepared.resolved),
            "appliedAt": time.time(),
        },
    )


def apply_text(
    ctx: Context, text: str, source: str, dry_run: bool = False, want_nft_text: bool = False,
    describe: bool = True,
) -> dict[str, Any]:
    """Validate, compile and apply (or only plan). Returns a report for printing.

    want_nft_text: put in report["nftText"] the complete nft script equivalent to what was
    applied (a full load may have sent its bulk elements over netlink instead of as text)."""
    stored = ctx.store.load()
    t0 = time.perf_counter()
    prepared = _prepare_or_exit(text, source, stored)
    previous, generation = _previous(stored)
    sync = DataplaneSync(ctx.nft)
    adopted = previous is not None and sync.adopt(previous, generation)
    changes = describe_changes(previous if adopted else None, prepared.resolved) if describe else []
    report: dict[str, Any] = {"changes": changes, "incremental": adopted, "timings": dict(prepared.timings)}
    if not adopted and previous is not None:
        report["note"] = "kernel table differs from the last recorded apply: a full reload is needed"
    if dry_run:
        report["script"] = sync.preview(prepared.resolved)
        return report
    try:
        result = sync.sync(prepared.resolved)
    except NftError as err:
        raise CommandError(f"nft rejected the transaction; the kernel is unchanged:\n{err}", EXIT_FAILED) from err
    ctx.store.save(_record(prepared, result, text, source))
    if adopted and previous is not None:
        flows = udp_flows_to_flush(previous.by_name(), prepared.resolved)
        report["conntrackFlushed"] = flush_flows(flows) if flows else 0
    report["timings"].update(compile_s=result.compile_s, apply_s=result.apply_s,
                             total_s=time.perf_counter() - t0)
    report["script"] = result.script
    report["full"] = result.full
    if want_nft_text:
        report["nftText"] = compile_full(prepared.resolved, result.generation) if result.full else result.script
    return report


def delete_names(ctx: Context, names: set[str], pool_names: set[str]) -> dict[str, Any]:
    """Remove the named L4LBs (and IPPools) from what is applied; everything else stays."""
    stored = ctx.store.load()
    applied = stored.applied or {}
    remaining = [
        doc
        for doc in yaml.safe_load_all(applied.get("sourceText", "") or "")
        if isinstance(doc, dict) and not _named(doc, names, pool_names)
    ]
    text = yaml.safe_dump_all(remaining, sort_keys=False) if remaining else ""
    return apply_text(ctx, text, applied.get("source", "<deleted>"))


def _named(doc: dict[str, Any], names: set[str], pools: set[str]) -> bool:
    name = (doc.get("metadata") or {}).get("name")
    return (doc.get("kind") == "L4LB" and name in names) or (doc.get("kind") == "IPPool" and name in pools)


def names_in(text: str, source: str) -> tuple[set[str], set[str]]:
    try:
        desired = load_text(text, source)
    except (ValidationErrors, ValidationError) as err:
        raise CommandError(f"invalid configuration, nothing deleted:\n{err}", EXIT_INVALID) from err
    return {lb.name for lb in desired.load_balancers}, {p.name for p in desired.pools}


def flush(ctx: Context) -> None:
    try:
        ctx.nft.apply(render_delete())
    except NftError as err:
        raise CommandError(f"nft failed: {err}", EXIT_FAILED) from err
    stored = ctx.store.load()
    # Keep the allocations: a later apply gives every L4LB its old address back.
    ctx.store.save(StoredState(allocations=stored.allocations, pools=stored.pools, applied=None))


def status(ctx: Context) -> dict[str, Any]:
    stored = ctx.store.load()
    applied = stored.applied or {}
    text = applied.get("sourceText", "")
    try:
        desired = load_text(text, applied.get("source", "<state>"))
    except (ValidationErrors, ValidationError) as err:
        raise CommandError(f"the recorded configuration no longer loads: {err}", EXIT_FAILED) from err
    resolved = services_from_json(applied.get("services", []))
    counters = ctx.nft.read_counters()
    return build_status(
        desired, stored.allocations, resolved, counters, applied.get("generation"), applied.get("health", {})
    )


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
