"""The one-shot commands behind `gatelb apply`, `plan`, `delete`, `flush` and `status` (the CLI
only parses arguments and prints what these return).

apply/plan/delete are one round of the same reconciler the daemon runs, with a one-shot source:
they adopt the table the state record describes (so a change to one of 10,000 load balancers is
an increment, not a reload), and record the result. Exit codes: 0 success, 2 invalid input
(nothing applied), 1 apply or system failure; `plan`: 0 nothing would change, 3 something would
(like `terraform plan -detailed-exitcode`). `plan` and `status` only read: they take no lock and
work while the daemon runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatelb.agent.client import DaemonError, daemon_status
from gatelb.agent.engine import DataplaneSync
from gatelb.agent.lock import TableOwned, table_lock
from gatelb.agent.reconciler import Reconciler, one_round
from gatelb.agent.record import stored_state
from gatelb.agent.statefile import StateStore, StoredState, released_after
from gatelb.agent.status import build_status, counters_for
from gatelb.dataplane import compile_full
from gatelb.dataplane.changes import describe_changes
from gatelb.dataplane.render import render_delete
from gatelb.kernel.addresses import HostAddresses
from gatelb.kernel.conntrack import flush_flows
from gatelb.kernel.foreign import hazards
from gatelb.kernel.nft import Nft, NftCli, NftError
from gatelb.model import DesiredState, IPAddress, ResolvedState, ValidationError, ValidationErrors, printable
from gatelb.sources.base import Source
from gatelb.sources.static import StaticSource

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_PLAN_CHANGES = 0, 1, 2, 3


class CommandError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    store: StateStore
    nft: Nft
    host_address: Callable[[IPAddress], bool] | None = None  # None: any address may be a VIP
    # Ownership of the table in this network namespace while a command writes (agent/lock.py).
    owner: Callable[[], contextlib.AbstractContextManager[None]] = table_lock

    @classmethod
    def create(cls, state_dir: Path, allow_host_addresses: bool = False) -> Context:
        return cls(StateStore(state_dir), NftCli(), None if allow_host_addresses else HostAddresses())


def read_input(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise CommandError(f"cannot read {path}: {err.strerror}", EXIT_INVALID) from err


@contextlib.contextmanager
def _owning(ctx: Context) -> Iterator[None]:
    try:
        with ctx.owner():
            yield
    except TableOwned as err:
        raise CommandError(f"{err}; nothing changed", EXIT_FAILED) from err


def apply_source(ctx: Context, source: Source, dry_run: bool = False, want_nft_text: bool = False,
                 describe: bool = True) -> dict[str, Any]:
    """Validate, allocate, compile and apply (or only plan) what `source` holds, as one round of
    the reconciler. Returns a report for printing.

    want_nft_text: put in report["nftText"] the complete nft script equivalent to what was
    applied (a full load may have sent its bulk elements over netlink instead of as text)."""
    if dry_run:
        return _apply_source(ctx, source, dry_run, want_nft_text, describe)
    with _owning(ctx):
        return _apply_source(ctx, source, dry_run, want_nft_text, describe)


def _apply_source(ctx: Context, source: Source, dry_run: bool, want_nft_text: bool,
                  describe: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    stored = ctx.store.load()
    reconciler = Reconciler([source], DataplaneSync(ctx.nft, indexed=True),
                            flush_udp=None if dry_run else flush_flows, recorded=stored.addresses(time.time()),
                            host_address=ctx.host_address)
    previous = stored.applied
    adopted = previous is not None and reconciler.adopt(previous.services, previous.generation)
    round_report, load_s = asyncio.run(one_round(reconciler, [source], dry_run=dry_run))
    if round_report is None:
        raise CommandError(f"nft rejected the transaction; the kernel is unchanged:\n{reconciler.last_error}",
                           EXIT_FAILED)
    if round_report.rejected:
        errors = "\n".join(str(e) for errs in round_report.rejected.values() for e in errs)
        raise CommandError(f"invalid configuration, nothing applied:\n{errors}", EXIT_INVALID)
    resolved = ResolvedState(tuple(reconciler.services[n] for n in sorted(reconciler.services)))
    before = previous.services if adopted and previous is not None else None
    report: dict[str, Any] = {"changes": describe_changes(before, resolved) if describe else [],
                              "incremental": adopted,
                              "timings": {"parse_s": load_s, "ipam_s": round_report.prepare_s}}
    if not adopted and previous is not None:
        report["note"] = "kernel table differs from the last recorded apply: a full reload is needed"
    if dry_run:
        report["script"] = round_report.script
        return report
    result = round_report.result
    state = reconciler.last_state
    assert state is not None
    try:
        released = released_after(stored.allocations, stored.released, state.addresses, time.time())
        ctx.store.save(stored_state(state, (source.name,), previous.health if previous else {}, daemon=False,
                                    released=released))
    except OSError as err:
        raise CommandError(
            f"applied to the kernel (generation {state.generation}), but the state file {ctx.store.path} "
            f"could not be written: {err.strerror or err}. The kernel serves the new configuration; the next "
            "apply will reload it in full.", EXIT_FAILED) from err
    report["timings"].update(compile_s=result.compile_s if result else 0.0,
                             apply_s=result.apply_s if result else 0.0, total_s=time.perf_counter() - t0)
    report["script"] = result.script if result else ""
    report["full"] = bool(result and result.full)
    if want_nft_text:
        report["nftText"] = compile_full(resolved, state.generation) if report["full"] else report["script"]
    return report


def would_change(report: dict[str, Any]) -> bool:
    """Whether a plan report shows any change to the kernel (plan's exit code 3)."""
    return bool(report.get("changes") or report.get("script") or report.get("note"))


def apply_path(ctx: Context, path: str, dry_run: bool = False, want_nft_text: bool = False,
               describe: bool = True, allow_empty: bool = False) -> dict[str, Any]:
    """`-f FILE`, `-f DIR` or `-f -` (stdin). A content without any load balancer that would
    remove every applied one is refused unless `allow_empty` (a truncated file must not wipe the
    gateway)."""
    from gatelb.sources.file import FileSource

    if path == "-":
        source = FileSource.from_text(read_input(path), "<stdin>")
    else:
        if not Path(path).exists():
            raise CommandError(f"cannot read {path}: No such file or directory", EXIT_INVALID)
        source = FileSource(Path(path).absolute(), watch=False)
    if not allow_empty:
        source.load()  # run() reads again, but only hashes: nothing is parsed twice
        applied = ctx.store.load().applied
        if source.load_balancer_count == 0 and not source.errors and applied is not None and applied.load_balancers:
            raise CommandError(
                f"{path} defines no load balancer: applying it would remove all {len(applied.load_balancers)} "
                "applied ones; pass --allow-empty if that is what you want", EXIT_INVALID)
    return apply_source(ctx, source, dry_run, want_nft_text, describe)


def delete_names(ctx: Context, names: set[str], pool_names: set[str], must_exist: bool = False) -> dict[str, Any]:
    """Remove the named L4LBs (and IPPools) from what is applied; everything else stays.
    `must_exist` (`gatelb delete NAME`): a name that is not applied is an error (exit 2), and
    nothing is deleted."""
    applied = ctx.store.load().applied
    if applied is None:
        raise CommandError("nothing is applied (no record in the state directory)", EXIT_FAILED)
    if must_exist:
        known = {lb.name for lb in applied.load_balancers}
        missing = sorted(names - known)
        if missing:
            listed = ", ".join(printable(n) for n in missing)
            raise CommandError(f"L4LB {listed} not found (nothing deleted); `gatelb status` lists the applied ones",
                               EXIT_INVALID)
    remaining = DesiredState(
        pools=tuple(p for p in applied.pools if p.name not in pool_names),
        load_balancers=tuple(lb for lb in applied.load_balancers if lb.name not in names),
    )
    source = StaticSource(applied.sources[0] if applied.sources else "<deleted>", remaining)
    return apply_source(ctx, source)


def names_in(text: str, source: str) -> tuple[set[str], set[str]]:
    from gatelb.sources.standalone import load_text

    try:
        desired = load_text(text, source)
    except (ValidationErrors, ValidationError) as err:
        raise CommandError(f"invalid configuration, nothing deleted:\n{err}", EXIT_INVALID) from err
    return {lb.name for lb in desired.load_balancers}, {p.name for p in desired.pools}


def flush(ctx: Context) -> None:
    with _owning(ctx):
        try:
            ctx.nft.apply(render_delete())
        except NftError as err:
            raise CommandError(f"nft failed: {err}", EXIT_FAILED) from err
    stored = ctx.store.load()
    # Keep the allocations: a later apply gives every L4LB its old address back.
    ctx.store.save(StoredState(allocations=stored.allocations, pools=stored.pools, applied=None,
                               released=stored.released))


def status(ctx: Context, name: str | None = None, backends: bool | None = True) -> dict[str, Any]:
    """From the running daemon when there is one (its memory and one counter read), else from the
    state record and the kernel's counter sets. `backends`: see build_status."""
    try:
        live = daemon_status(ctx.store.directory, name, backends)
    except DaemonError as err:
        raise CommandError(str(err), EXIT_FAILED) from err
    if live is not None:
        return live
    stored = ctx.store.load()
    applied = stored.applied
    chosen = None if name is None or applied is None else [s for s in applied.services.services if s.name == name]
    counters = counters_for(ctx.nft, chosen)
    # Other tables' base chains that can drop or rewrite traffic to our VIPs (kernel/foreign.py).
    foreign = [h.as_dict() for h in hazards(ctx.nft.query_json)]
    if applied is None:
        if name is not None:
            raise CommandError(f"no load balancer named {name!r} (nothing is applied)", EXIT_FAILED)
        data = build_status(DesiredState(), {}, ResolvedState(), counters, None, {})
        data["foreignRules"] = foreign
        return data
    lbs = applied.load_balancers
    if name is not None:
        lbs = tuple(lb for lb in lbs if lb.name == name)
        if not lbs:
            raise CommandError(f"no load balancer named {name!r}", EXIT_FAILED)
    desired = DesiredState(applied.pools, lbs)
    data = build_status(desired, stored.allocations, applied.services, counters, applied.generation,
                        applied.health, True if name is not None else backends)
    data["foreignRules"] = foreign
    data["sources"] = list(applied.sources)
    data["errors"] = list(applied.errors)
    if applied.info:
        data["info"] = applied.info
    return data


def trace(ctx: Context, source: str, destination: str, protocol: str) -> dict[str, Any]:
    """`gatelb trace`: the model's path for one packet, checked against the kernel."""
    from gatelb.agent.trace import run_trace
    from gatelb.dataplane.trace import Packet, parse_endpoint
    from gatelb.model import Protocol

    try:
        # ADDRESS, or ADDRESS:PORT ([ADDRESS]:PORT): maglev's flow hash needs the source port.
        sport: int | None = None
        try:
            src = ipaddress.ip_address(source)
        except ValueError:
            src, sport = parse_endpoint(source)
        dst, port = parse_endpoint(destination)
    except ValueError as err:
        raise CommandError(f"--from/--to: {err}", EXIT_INVALID) from err
    stored = ctx.store.load()
    if stored.applied is None:
        raise CommandError("nothing is applied (no record in the state directory): nothing to trace", EXIT_FAILED)
    return run_trace(stored, Packet(src, dst, port, Protocol(protocol), sport), ctx.nft.generation())


def diagnose(ctx: Context, name: str | None, window_s: float, limit: int) -> dict[str, Any]:
    """`gatelb diagnose`: causes of uneven or missing traffic, with evidence."""
    from gatelb.agent.diagnose import diagnose as run

    if not 0 < window_s <= 600:
        raise CommandError(f"--window: {window_s} is not a window in seconds (0-600]", EXIT_INVALID)
    try:
        return run(ctx.store.load(), name, window_s, ctx.nft.generation(), ctx.nft.read_counters, limit)
    except LookupError as err:
        raise CommandError(str(err.args[0]), EXIT_FAILED) from err
