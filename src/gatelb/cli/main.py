"""The `gatelb` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/var/lib/gatelb"


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir or os.environ.get("GATELB_STATE_DIR") or DEFAULT_STATE_DIR)


EXAMPLES = {
    "apply": """examples:
  gatelb apply -f /etc/gatelb/lbs.yaml      # validate, then apply (prints what changed)
  gatelb apply -f /etc/gatelb/              # every *.yaml, *.yml, *.json of a directory
  generate-config | gatelb apply -f -       # standard input

exit codes: 0 applied, 1 failure (nft, state file), 2 invalid input (nothing applied)""",
    "plan": """examples:
  gatelb plan -f lbs.yaml                   # what apply would change
  gatelb plan -f lbs.yaml --nft             # ... and the nft transaction it would send

works while `gatelb run` holds the state directory (it only reads).
exit codes: 0 nothing would change, 3 something would, 2 invalid input, 1 failure""",
    "run": """examples:
  gatelb run -f /etc/gatelb/lbs.yaml                     # follow a file (and SIGHUP)
  gatelb run -f /etc/gatelb/ --log-format json           # a directory, JSON logs
  gatelb run --in-cluster                                # Kubernetes, from a pod
  gatelb run --kubeconfig /etc/gatelb/kubeconfig -f /etc/gatelb/pools.yaml

a content that loses most of its load balancers at once is held for a moment (an editor may be
rewriting it); it is applied if it stays so, or at once with --allow-empty.""",
    "status": """examples:
  gatelb status                             # a table
  gatelb status -o json | jq '.loadBalancers[].name'""",
    "delete": """examples:
  gatelb delete web                         # one L4LB by name (an unknown name is an error: exit 2)
  gatelb delete web api                     # several
  gatelb delete -f old.yaml                 # the L4LBs and IPPools named in a file""",
    "flush": """examples:
  gatelb flush                              # remove table inet gatelb; allocations are kept""",
}


def _sub(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog=EXAMPLES.get(name),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatelb", description="Layer-4 load balancers on the nftables data path.",
                                epilog="`gatelb COMMAND --help` shows each command's options and examples.")
    p.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    p.add_argument("--state-dir", help=f"state directory (default: $GATELB_STATE_DIR or {DEFAULT_STATE_DIR})")
    sub = p.add_subparsers(dest="command", required=True)

    a = _sub(sub, "apply", "validate, compile and apply a file once")
    a.add_argument("-f", "--file", required=True,
                   help="YAML/JSON file of IPPool and L4LB documents, a directory of them, or '-' for stdin")
    a.add_argument("--timings-json", help="write phase timings (seconds) to this file")
    a.add_argument("--dump-nft", help="write the nft transaction that was applied to this file")
    a.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    a.add_argument("--allow-empty", action="store_true",
                   help="apply a content without any load balancer even if that removes every applied one")

    pl = _sub(sub, "plan", "print what apply would change, without changing anything")
    pl.add_argument("-f", "--file", required=True, help="file, directory, or '-' for stdin")
    pl.add_argument("--nft", action="store_true", help="also print the nft transaction")

    r = _sub(sub, "run", "the daemon: apply, then follow file changes, SIGHUP and health checks")
    r.add_argument("-f", "--file", help="YAML/JSON file, or a directory of them (required unless Kubernetes is "
                   "the source)")
    k = r.add_argument_group("Kubernetes (source: the cluster's Services, EndpointSlices and gatelb.io objects)")
    k.add_argument("--kubeconfig", help="kubeconfig file")
    k.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    k.add_argument("--mode", choices=["gateway"], default="gateway", help="program the gateway this runs on")
    k.add_argument("--backend-mode", choices=["nodeport", "pod"], default="nodeport",
                   help="backends: node InternalIP:nodePort, or pod IPs from EndpointSlices")
    k.add_argument("--no-default-class", action="store_true",
                   help="ignore Services without spec.loadBalancerClass (only gatelb.io/gatelb ones)")
    k.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "gatelb-system"),
                   help="namespace of the leader-election Lease (default: $POD_NAMESPACE or gatelb-system)")
    k.add_argument("--l2-lease-duration", type=int, default=2, metavar="SECONDS",
                   help="L2 VIP ownership Leases last this long: an owner's loss is taken over after about "
                        "this (default 2; 1 is the shortest a Lease allows; docs/announce.md)")
    k.add_argument("--metallb-namespace", default="metallb-system",
                   help="read MetalLB's metallb.io objects from this namespace (default metallb-system)")
    r.add_argument("--node", default="", help="which gateway this is (GatewayGroup members, nodes: lists of "
                   "BGPPeer and advertisements); default: the host name")
    r.add_argument("--frr-vty-socket", metavar="DIR",
                   help="use the FRR that already runs on this gateway (its vty socket directory, e.g. "
                        "/var/run/frr): gatelb starts no FRR and only adds its own networks and gatelb-* "
                        "route-maps under your `router bgp`; the neighbors are yours (docs/announce.md)")
    r.add_argument("--log-format", choices=["text", "json"], default="text")
    r.add_argument("--no-health", action="store_true", help="do not run health checks (all backends count as up)")
    r.add_argument("--allow-empty", action="store_true",
                   help="apply a file that lost most of its load balancers at once, without the grace period")
    r.add_argument("--metrics-address", default="127.0.0.1:9469", metavar="HOST:PORT",
                   help="serve /metrics (Prometheus) and /healthz here; 'off' disables (default: 127.0.0.1:9469)")
    r.add_argument("--healthz-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="/healthz answers 503 once a change has waited this long for a sync (default: 30)")

    s = _sub(sub, "status", "load balancers, backends, health and counters")
    s.add_argument("name", nargs="?", help="only this load balancer")
    s.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    s.add_argument("--backends", action="store_true",
                   help="table: list every backend even above 200 load balancers (json/yaml always do)")
    s.add_argument("-w", "--watch", action="store_true", help="refresh until interrupted (Ctrl-C)")
    s.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="with -w: seconds between refreshes")

    c = sub.add_parser("completion", help="print a shell completion script (bash)")
    c.add_argument("shell", choices=["bash"])

    tr = sub.add_parser("trace", help="which load balancer and backend a packet reaches, checked against the kernel")
    tr.add_argument("--from", dest="source", required=True, metavar="ADDRESS",
                    help="the packet's source address, or ADDRESS:PORT (maglev hashes the source port too)")
    tr.add_argument("--to", dest="destination", required=True, metavar="VIP:PORT",
                    help="the frontend ([ADDRESS]:PORT for IPv6)")
    tr.add_argument("--protocol", choices=["tcp", "udp"], default="tcp")
    tr.add_argument("-o", "--output", choices=["text", "json"], default="text")

    dg = sub.add_parser("diagnose", help="why traffic is uneven or missing: causes with evidence (exit 1: a "
                        "problem)")
    dg.add_argument("name", nargs="?", help="one L4LB (default: all, most uneven first)")
    dg.add_argument("--window", type=float, default=2.0, help="seconds between the two counter samples (default 2)")
    dg.add_argument("--limit", type=int, default=20, help="with no NAME: examine at most this many, most uneven "
                    "first (default 20)")
    dg.add_argument("-o", "--output", choices=["text", "json"], default="text")

    d = _sub(sub, "delete", "remove L4LBs by name, or the L4LBs (and IPPools) named in a file")
    d.add_argument("names", nargs="*", metavar="NAME", help="L4LB names")
    d.add_argument("-f", "--file", help="file (or '-') whose L4LB and IPPool names to remove")

    _sub(sub, "flush", "remove everything gatelb programmed (our table only)")

    for parser in (a, pl, r, d):
        parser.add_argument("--allow-host-addresses", action="store_true",
                            help="let a VIP be an address this host holds (refused by default: it would take over "
                                 "the host's own services)")

    dm = sub.add_parser("demo", help="build a small network in namespaces and show load balancing live")
    dm.add_argument("--connections", type=int, default=300, help="new connections per experiment (the bgp act "
                    "makes a fifth as many, at least 20)")
    dm.add_argument("--act", choices=["all", "basic", "bgp", "ha"], default="all",
                    help="basic: one gateway (spread, weights, affinity, IPv6, failover); bgp: two gateways "
                    "announcing over BGP with BFD to an FRR router (ECMP, power loss, withdrawal); ha: an "
                    "active-standby pair keeping connections over a power loss; default all")
    return p


def _run(args: argparse.Namespace) -> int:
    """`gatelb run`: one daemon whatever the sources (file or directory, Kubernetes, or both)."""
    from gatelb.agent.daemon import Parts, file_parts, kube_parts, run_daemon

    files = [Path(args.file)] if args.file else []
    if args.kubeconfig or args.in_cluster:
        from gatelb.sources.kubernetes.source import KubeSettings
        from gatelb.sources.kubernetes.translate import BackendMode, Options

        opts = Options(BackendMode(args.backend_mode), default_class=not args.no_default_class)
        if args.l2_lease_duration < 1:
            print("gatelb run: --l2-lease-duration: a Lease lasts whole seconds, at least 1", file=sys.stderr)
            return 2
        import socket

        settings = KubeSettings(opts, lease_namespace=args.lease_namespace, health=not args.no_health,
                                metallb_namespace=args.metallb_namespace, node=args.node or socket.gethostname(),
                                l2_lease_duration_s=args.l2_lease_duration)

        async def make() -> Parts:
            return await kube_parts(args.kubeconfig, settings, files, allow_empty=args.allow_empty)
    elif files:
        async def make() -> Parts:
            return file_parts(files, allow_empty=args.allow_empty)
    else:
        print("gatelb run: -f/--file is required (or --kubeconfig / --in-cluster)", file=sys.stderr)
        return 2
    if args.frr_vty_socket:
        vty, made = Path(args.frr_vty_socket), make

        async def make() -> Parts:
            parts = await made()
            parts.frr_vty_socket = vty
            return parts
    from gatelb.agent.server import parse_address

    try:
        metrics_address = parse_address(args.metrics_address)
    except ValueError as err:
        print(f"gatelb run: {err}", file=sys.stderr)
        return 2
    return run_daemon(make, state_dir(args), args.log_format, health=not args.no_health, node=args.node,
                      allow_host_addresses=args.allow_host_addresses, metrics_address=metrics_address,
                      healthz_timeout_s=args.healthz_timeout)


class _Version(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs every command 70 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("gatelb")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        parser.exit(message=f"gatelb {text}\n")


def _status(args: argparse.Namespace) -> int:
    """`gatelb status`: the daemon's answer when one runs (without importing the one-shot
    commands: most of the command's time at 1,000 load balancers was imports), else the record."""
    from gatelb.agent.client import DaemonError, daemon_status
    from gatelb.cli.output import print_status, watch

    backends = True if args.backends or args.output != "table" else None

    def fetch() -> dict[str, Any]:
        live = daemon_status(state_dir(args), args.name, backends)
        if live is not None:
            return live
        from gatelb.agent import commands

        return commands.status(commands.Context.create(state_dir(args)), args.name, backends)

    try:
        if args.watch:
            return watch(fetch, args.output, args.interval)
        print_status(fetch(), args.output)
    except DaemonError as err:
        print(f"gatelb status: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        code = getattr(err, "code", None)
        if os.environ.get("GATELB_DEBUG"):
            raise
        print(f"gatelb status: {err if code else f'{type(err).__name__}: {err}'}", file=sys.stderr)
        return code if isinstance(code, int) else 1
    return 0


def _troubleshoot(ctx: object, args: argparse.Namespace) -> int:
    from gatelb.agent import commands
    from gatelb.cli.troubleshoot import print_diagnosis, print_trace

    assert isinstance(ctx, commands.Context)
    if args.command == "trace":
        print_trace(commands.trace(ctx, args.source, args.destination, args.protocol), args.output)
        return commands.EXIT_OK
    report = commands.diagnose(ctx, args.name, args.window, args.limit)
    print_diagnosis(report, args.output)
    return commands.EXIT_FAILED if report["problems"] else commands.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from gatelb.cli.demo import run_demo

        return run_demo(args.connections, args.act)
    if args.command == "run":
        return _run(args)
    if args.command == "status":
        return _status(args)
    if args.command == "completion":
        from gatelb.cli.completion import bash_script

        print(bash_script(build_parser()), end="")
        return 0

    from gatelb.agent import commands
    from gatelb.agent.lock import StateLocked, state_lock
    from gatelb.agent.statefile import StateFileError
    from gatelb.cli.output import print_report

    try:
        ctx = commands.Context.create(state_dir(args), getattr(args, "allow_host_addresses", False))
        if args.command in ("trace", "diagnose"):
            return _troubleshoot(ctx, args)
        if args.command == "plan":  # read-only: no lock, so it works while the daemon runs
            report = commands.apply_path(ctx, args.file, dry_run=True, allow_empty=True)
            print_report(report, applied=False, show_nft=args.nft)
            return commands.EXIT_PLAN_CHANGES if commands.would_change(report) else commands.EXIT_OK
        if args.command == "delete" and bool(args.names) == bool(args.file):
            print("gatelb delete: give L4LB names or -f FILE (one of them)", file=sys.stderr)
            return commands.EXIT_INVALID
        with state_lock(state_dir(args)):
            if args.command == "apply":
                report = commands.apply_path(ctx, args.file, want_nft_text=bool(args.dump_nft),
                                             describe=not args.quiet, allow_empty=args.allow_empty)
                if args.dump_nft:
                    Path(args.dump_nft).write_text(report.get("nftText", ""))
                if args.timings_json:
                    Path(args.timings_json).write_text(json.dumps(report["timings"]))
                if not args.quiet:
                    print_report(report, applied=True)
            elif args.command == "delete" and args.names:
                print_report(commands.delete_names(ctx, set(args.names), set(), must_exist=True), applied=True)
            elif args.command == "delete":
                names, pools = commands.names_in(commands.read_input(args.file), args.file)
                print_report(commands.delete_names(ctx, names, pools), applied=True)
            elif args.command == "flush":
                commands.flush(ctx)
                print("flushed: table inet gatelb removed")
    except (StateLocked, StateFileError) as err:
        print(f"gatelb {args.command}: {err}", file=sys.stderr)
        return commands.EXIT_FAILED
    except commands.CommandError as err:
        print(f"gatelb {args.command}: {err}", file=sys.stderr)
        return err.code
    except Exception as err:
        if os.environ.get("GATELB_DEBUG"):
            raise
        print(f"gatelb {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return commands.EXIT_FAILED
    return commands.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
