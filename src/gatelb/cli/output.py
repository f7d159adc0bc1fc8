"""Printing reports and status for people (rich tables) and programs (JSON / YAML)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# yaml and rich are imported where they are used: `gatelb status` answered by the daemon as JSON
# or above RICH_MAX_ROWS needs neither (each costs tens of ms of start-up).


def print_report(report: dict[str, Any], applied: bool, show_nft: bool = False) -> None:
    changes: list[str] = report.get("changes", [])
    if report.get("note"):
        print(f"note: {report['note']}")
    if not changes and not report.get("script"):
        print("no changes" if applied else "no changes: the kernel already matches")
    for line in changes:
        print(line)
    if applied and report.get("script"):
        mode = "full load" if report.get("full") else "incremental update"
        t = report.get("timings", {})
        print(f"applied ({mode}) in {t.get('total_s', 0) * 1000:.0f} ms")
    if show_nft and report.get("script"):
        print("--- nft transaction ---")
        print(report["script"], end="")


PRETTY_MAX = 500


def _human(n: int) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n}{unit}"
        n //= 1000
    return f"{n}P"


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def print_status(data: dict[str, Any], output: str) -> None:
    if output == "json":
        # Indented output uses json's pure-Python encoder: seconds at 10,000 load balancers. Large
        # outputs are compact (same shape), which is what programs reading them want anyway.
        print(json.dumps(data, indent=2 if len(data["loadBalancers"]) <= PRETTY_MAX else None))
        return
    if output == "yaml":
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")
        return
    # Not a terminal (a pipe, a log): rich would wrap at 80 columns; this table wants more.
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if Console().is_terminal else 150)
    gen = data["generation"]
    if not gen["inSync"]:
        console.print(
            f"[yellow]warning: kernel generation {gen['kernel']} != applied {gen['applied']}"
            " (table missing or changed outside gatelb)[/yellow]"
        )
    info = data.get("info") or {}
    if "leader" in info:
        synced = info.get("informers") or {}
        waiting = sorted(k for k, ok in synced.items() if not ok)
        console.print(f"kubernetes: {'leader' if info['leader'] else 'follower'}; informers "
                      + (f"not synced: {', '.join(waiting)}" if waiting else "synced"))
        if info.get("notInstalled"):
            console.print(f"kubernetes: not installed (not read): {', '.join(info['notInstalled'])}")
    for problem in info.get("problems") or []:
        console.print(f"[red]not ready: {problem}[/red]")
    dns = info.get("dns") or {}
    for name, provider in (dns.get("providers") or {}).items():
        state = "in sync" if provider.get("inSync") else f"[red]{provider.get('lastError') or 'not synced yet'}[/red]"
        console.print(f"dns {name} ({provider.get('zone', '?')}): {provider.get('records', 0)} records, {state}")
    for text in [*(dns.get("conflicts") or []), *(dns.get("problems") or [])]:
        console.print(f"[yellow]dns: {text}[/yellow]")
    _print_ha(console, info.get("ha"))
    _print_bgp(console, info.get("bgp"))
    _print_l2(console, info.get("l2"))
    for error in data.get("errors") or []:
        console.print(f"[yellow]{error}[/yellow]")
    for f in data.get("foreignRules") or []:
        console.print(f"[yellow]warning: table {f['table']} chain {f['chain']} (hook {f['hook']}, priority "
                      f"{f['priority']}) can {f['can']} traffic to our VIPs: {f['why']}[/yellow]")
    rows = list(_status_rows(data["loadBalancers"]))
    if any(lb.get("backendsOmitted") for lb in data["loadBalancers"]):
        console.print(f"{len(data['loadBalancers'])} load balancers: one line each (`gatelb status NAME` or "
                      "--backends for their backends)")
    if len(rows) > RICH_MAX_ROWS:
        # rich lays out every cell of every row (about 90 s for 110,000 rows): plain columns instead.
        _print_plain(rows)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col, justify in zip(COLUMNS, JUSTIFY, strict=True):
        table.add_column(col, justify=justify, no_wrap=col != "SINCE / WHY")  # type: ignore[arg-type]
    for row, style in rows:
        cells = list(row)
        if style == "lb":
            cells[0] = f"[bold]{cells[0]}[/bold]"
        else:
            cells[2] = f"[{style}]{cells[2]}[/{style}]"
        table.add_row(*cells)
    console.print(table)


COLUMNS = ("NAME", "FRONTEND / BACKEND", "STATE", "MODE", "ANNOUNCED", "NEW", "PACKETS", "BYTES", "SINCE / WHY")
JUSTIFY = ("left", "left", "left", "left", "left", "right", "right", "right", "left")


def _announced(where: dict[str, Any] | None) -> str:
    """`bgp upstream,backup(Active) l2 up0`: the peers (with the session state unless
    Established), the L2 interface (`owner` when this gateway answers, else its VRRP state)."""
    if where is None:
        return ""
    parts = []
    if where.get("bgp"):
        peers = [p["peer"] + ("" if p["session"] == "Established" else f"({p['session']})") for p in where["bgp"]]
        parts.append("bgp " + ",".join(dict.fromkeys(peers)))
    if l2 := where.get("l2"):
        parts.append(f"l2 {l2['interface']} ({'owner' if l2['state'] == 'MASTER' else l2['state'].lower()})")
    return " ".join(parts) or "-"


def _print_bgp(console: Console, bgp: Any) -> None:
    """BGP peers of this gateway: session and BFD state, prefixes given."""
    for p in (bgp or {}).get("peers") or []:
        colour = "green" if p["session"] == "Established" else "red"
        bfd = "" if p["bfd"] is None else f", BFD {p['bfd']}"
        since = f" since {time.strftime('%H:%M:%S', time.localtime(p['establishedAt']))}" if p["establishedAt"] else ""
        console.print(f"bgp {p['peer']} {p['address']} (AS {p['asn']}): [{colour}]{p['session']}[/{colour}]{since}"
                      f"{bfd}, {p['prefixes']} prefixes" + (", graceful restart" if p["gracefulRestart"] else ""))
RICH_MAX_ROWS = 300  # rich lays out about 1,000 rows per second here; plain columns above


def _status_rows(lbs: list[dict[str, Any]]) -> Iterator[tuple[tuple[str, ...], str]]:
    """(cells, style) per line: a load balancer ("lb"), then its backends (colour by state)."""
    for lb in lbs:
        fe = lb["frontend"]
        front = f"{_endpoint(fe['ip'], fe['port']) if fe['ip'] else '(no address)'}/{lb['protocol']}"
        mode = [lb["algorithm"]]
        if lb["sessionAffinity"]:
            mode.append(f"affinity {lb['sessionAffinity']['timeoutSeconds']}s")
        if lb["nat"] != "dnat":
            mode.append(lb["nat"])
        if lb["sourceRanges"]:
            mode.append("from " + ",".join(lb["sourceRanges"]))
        c = lb["counters"]
        state = lb["state"] if lb["programmed"] or lb["state"] != "active" else "active (not programmed)"
        counts = lb.get("backendStates") or {}
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) if lb.get("backendsOmitted") else ""
        yield (lb["name"], front, state, " ".join(mode), _announced(lb.get("announced")), str(c["newConnections"]),
               _human(c["packets"]),
               _human(c["bytes"]), f"backends: {summary or 'none'}" if lb.get("backendsOmitted") else ""), "lb"
        for b in lb["backends"]:
            style = {"up": "green", "down": "red", "draining": "yellow"}.get(b["state"], "white")
            bc = b["counters"]
            why = b.get("reason") or ""
            if b.get("since"):
                why = f"{time.strftime('%H:%M:%S', time.localtime(b['since']))} {why}".strip()
            yield ("", f"  {_endpoint(b['address'], b['port'])}", b["state"], f"weight {b['weight']}", "",
                   str(bc["newConnections"]), _human(bc["packets"]), _human(bc["bytes"]), why), style


def _print_plain(rows: list[tuple[tuple[str, ...], str]]) -> None:
    widths = [max(len(col), *(len(r[i]) for r, _ in rows)) for i, col in enumerate(COLUMNS)]
    def line(cells: tuple[str, ...]) -> str:
        return " ".join(c.rjust(w) if j == "right" else c.ljust(w)
                        for c, w, j in zip(cells, widths, JUSTIFY, strict=True)).rstrip()
    out = [line(COLUMNS)] + [line(r) for r, _ in rows]
    sys.stdout.write("\n".join(out) + "\n")


def _print_ha(console: Console, ha: Any) -> None:
    """An active-standby group: the members, who is active, this member's role, priority, upstream
    and sync state; an active-active one: its members."""
    if not ha:
        return
    for line in ha_lines(ha, time.time()):
        console.print(line, markup=False, highlight=False)


def ha_lines(ha: dict[str, Any], now: float) -> list[str]:
    if ha.get("mode") == "active-active":
        lines = [f"ha {ha['group']} (active-active): members {', '.join(ha['members'])}, every one serving; "
                 f"this member {ha['node']}; flows to backends by {ha['selection']} (the same on every member)"]
        if ha.get("dnat"):
            lines.append(f"ha: warning: nat: dnat in active-active ({', '.join(ha['dnat'])}): the backends' "
                         "answers must come back through the member that forwarded the request, or connections "
                         "break (docs/ha.md)")
        return lines
    addresses = ha.get("addresses") or {}
    members = ", ".join(f"{m} ({addresses[m]})" if m in addresses else m for m in ha["members"])
    priority = ha.get("priority")
    lines = [f"ha {ha['group']} ({ha['mode']}): members {members}; active {ha.get('active') or 'unknown'}; "
             f"backend gateway {ha.get('backendGateway')}",
             f"ha this member {ha['node']}: {ha['role']} (vrrp {ha['vrrp']}, priority "
             f"{'FAULT' if priority is None else priority})"]
    up = ha.get("upstream") or {}
    if up:
        bgp = {None: "no BGP", True: "BGP established", False: "NO BGP SESSION ESTABLISHED"}[up.get("bgpEstablished")]
        down = up.get("uplinksDown") or []
        uplinks = ", ".join(f"{i} (DOWN)" if i in down else i for i in up.get("uplinks") or []) or "none found"
        lines.append(f"ha upstream: uplinks {uplinks}; {bgp}")
    if ha.get("stateSync"):
        sync = ha.get("sync") or {}
        last, resync = sync.get("last_received"), sync.get("last_resync")
        ago = f", the last {now - last:.1f} s ago" if last else ", none yet"
        full = f"; last resync {now - resync:.1f} s ago" if resync else ""
        lines.append(f"ha sync: {sync.get('internal', 0)} entries local (sent to the peer), "
                     f"{sync.get('external', 0)} replicated from the peer; {sync.get('sent_pckts', 0)} "
                     f"datagrams sent, {sync.get('recv_pckts', 0)} received{ago}{full}")
    return lines


def _print_l2(console: Console, l2: Any) -> None:
    """L2 announcements: per VRRP instance, whether this gateway owns its VIPs (answers ARP/NDP)."""
    if not l2:
        return
    for error in l2.get("errors") or []:
        console.print(f"[red]l2: {error}[/red]")
    if l2.get("election") == "leases":  # Kubernetes: a Lease per VIP (docs/announce.md)
        mine = l2.get("interfaces") or {}
        for vip, holder in sorted((l2.get("holders") or {}).items()):
            where = f" on {', '.join(mine[vip])}" if vip in mine else ""
            console.print(f"l2 {vip}: owned by {holder}{where} (Lease, {l2.get('leaseDurationSeconds')} s)")
        console.print(f"l2 members alive: {', '.join(l2.get('members') or []) or 'none'}")
    for name, inst in sorted((l2.get("instances") or {}).items()):
        owner = f"owned by {l2['node']}" if inst["state"] == "MASTER" else f"{inst['state'].lower()} on {l2['node']}"
        console.print(f"l2 {inst['interface']} vrid {inst['vrid']} ({name}): {owner}, "
                      f"priority {inst['priority']}, preferred owner {inst['preferred']}: {', '.join(inst['vips'])}"
                      + (f" (no backend up here: {', '.join(inst['unservable'])})" if inst["unservable"] else ""))


def watch(fetch: Callable[[], dict[str, Any]], output: str, interval: float) -> int:
    """`gatelb status -w`: clear the terminal and print again every `interval` seconds."""
    try:
        while True:
            data = fetch()
            if sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")
            print(f"every {interval:g}s: {time.strftime('%H:%M:%S')}  (Ctrl-C to stop)")
            print_status(data, output)
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
