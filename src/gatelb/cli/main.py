"""The `gatelb` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/gatelb"


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir or os.environ.get("GATELB_STATE_DIR") or DEFAULT_STATE_DIR)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatelb", description="Layer-4 load balancers on the nftables data path.")
    p.add_argument("--state-dir", help=f"state directory (default: $GATELB_STATE_DIR or {DEFAULT_STATE_DIR})")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("apply", help="validate, compile and apply a file once")
    a.add_argument("-f", "--file", required=True,
                   help="YAML/JSON file of IPPool and L4LB documents, a directory of them, or '-' for stdin")
    a.add_argument("--timings-json", help="write phase timings (seconds) to this file")
    a.add_argument("--dump-nft", help="write the nft transaction that was applied to this file")
    a.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    pl = sub.add_parser("plan", help="print what apply would change, without changing anything")
    pl.add_argument("-f", "--file", required=True, help="file, directory, or '-' for stdin")
    pl.add_argument("--nft", action="store_true", help="also print the nft transaction")

    r = sub.add_parser("run", help="the daemon: apply, then follow file changes, SIGHUP and health checks")
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
    r.add_argument("--node", default="", help="which gateway this is (GatewayGroup members, nodes: lists of "
                   "BGPPeer and advertisements); default: the host name")
    r.add_argument("--log-format", choices=["text", "json"], default="text")
    r.add_argument("--no-health", action="store_true", help="do not run health checks (all backends count as up)")

    s = sub.add_parser("status", help="load balancers, backends, health and counters")
    s.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")

    tr = sub.add_parser("trace", help="which load balancer and backend a packet reaches, checked against the kernel")
    tr.add_argument("--from", dest="source", required=True, metavar="ADDRESS", help="the packet's source address")
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

    d = sub.add_parser("delete", help="remove the L4LBs (and IPPools) named in a file")
    d.add_argument("-f", "--file", required=True)

    sub.add_parser("flush", help="remove everything gatelb programmed (our table only)")

    dm = sub.add_parser("demo", help="build a small network in namespaces and show load balancing live")
    dm.add_argument("--connections", type=int, default=300, help="new connections per experiment")
    return p


def _run(args: argparse.Namespace) -> int:
    """`gatelb run`: one daemon whatever the sources (file or directory, Kubernetes, or both)."""
    from gatelb.agent.daemon import Parts, file_parts, kube_parts, run_daemon

    files = [Path(args.file)] if args.file else []
    if args.kubeconfig or args.in_cluster:
        from gatelb.sources.kubernetes.source import KubeSettings
        from gatelb.sources.kubernetes.translate import BackendMode, Options

        opts = Options(BackendMode(args.backend_mode), default_class=not args.no_default_class)
        settings = KubeSettings(opts, lease_namespace=args.lease_namespace, health=not args.no_health)

        async def make() -> Parts:
            return await kube_parts(args.kubeconfig, settings, files)
    elif files:
        async def make() -> Parts:
            return file_parts(files)
    else:
        print("gatelb run: -f/--file is required (or --kubeconfig / --in-cluster)", file=sys.stderr)
        return 2
    return run_daemon(make, state_dir(args), args.log_format, health=not args.no_health, node=args.node)


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

        return run_demo(args.connections)
    if args.command == "run":
        return _run(args)

    from gatelb.agent import commands
    from gatelb.agent.lock import StateLocked, state_lock
    from gatelb.cli.output import print_report, print_status

    try:
        ctx = commands.Context.create(state_dir(args))
        if args.command == "status":
            print_status(commands.status(ctx), args.output)
            return commands.EXIT_OK
        if args.command in ("trace", "diagnose"):
            return _troubleshoot(ctx, args)
        with state_lock(state_dir(args)):
            if args.command in ("apply", "plan"):
                report = commands.apply_path(ctx, args.file, dry_run=args.command == "plan",
                                            want_nft_text=bool(getattr(args, "dump_nft", None)),
                                            describe=not getattr(args, "quiet", False))
                if args.command == "apply":
                    if args.dump_nft:
                        Path(args.dump_nft).write_text(report.get("nftText", ""))
                    if args.timings_json:
                        Path(args.timings_json).write_text(json.dumps(report["timings"]))
                    if not args.quiet:
                        print_report(report, applied=True)
                else:
                    print_report(report, applied=False, show_nft=args.nft)
            elif args.command == "delete":
                names, pools = commands.names_in(commands.read_input(args.file), args.file)
                print_report(commands.delete_names(ctx, names, pools), applied=True)
            elif args.command == "flush":
                commands.flush(ctx)
                print("flushed: table inet gatelb removed")
    except StateLocked as err:
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
