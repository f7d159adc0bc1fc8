"""Printing reports and status for people (rich tables) and programs (JSON / YAML)."""

from __future__ import annotations

import json
import time
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table


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
        print(json.dumps(data, indent=2))
        return
    if output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return
    # Not a terminal (a pipe, a log): rich would wrap at 80 columns; this table wants more.
    console = Console(width=None if Console().is_terminal else 150)
    gen = data["generation"]
    if not gen["inSync"]:
        console.print(
            f"[yellow]warning: kernel generation {gen['kernel']} != applied {gen['applied']}"
            " (table missing or changed outside gatelb)[/yellow]"
        )
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col, justify in (("NAME", "left"), ("FRONTEND / BACKEND", "left"), ("STATE", "left"),
                         ("MODE", "left"), ("NEW", "right"), ("PACKETS", "right"), ("BYTES", "right"),
                         ("SINCE / WHY", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "SINCE / WHY")  # type: ignore[arg-type]
    for lb in data["loadBalancers"]:
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
        table.add_row(f"[bold]{lb['name']}[/bold]", front, state, " ".join(mode),
                      str(c["newConnections"]), _human(c["packets"]), _human(c["bytes"]), "")
        for b in lb["backends"]:
            style = {"up": "green", "down": "red", "draining": "yellow"}.get(b["state"], "white")
            bc = b["counters"]
            why = b.get("reason") or ""
            if b.get("since"):
                why = f"{time.strftime('%H:%M:%S', time.localtime(b['since']))} {why}".strip()
            table.add_row("", f"  {_endpoint(b['address'], b['port'])}", f"[{style}]{b['state']}[/{style}]",
                          f"weight {b['weight']}", str(bc["newConnections"]), _human(bc["packets"]),
                          _human(bc["bytes"]), why)
    console.print(table)
