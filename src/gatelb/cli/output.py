"""Printing reports and status for people (rich tables) and programs (JSON / YAML)."""

from __future__ import annotations

import json
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


def print_status(data: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
        return
    if output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return
    console = Console()
    gen = data["generation"]
    if not gen["inSync"]:
        console.print(
            f"[yellow]warning: kernel generation {gen['kernel']} != applied {gen['applied']}"
            " (table missing or changed outside gatelb)[/yellow]"
        )
    table = Table(title="gatelb load balancers", show_lines=True)
    for col in ("L4LB", "frontend", "state", "algorithm", "affinity", "backends", "new conns", "pkts", "bytes"):
        table.add_column(col)
    for lb in data["loadBalancers"]:
        fe = lb["frontend"]
        ip = fe["ip"] or "-"
        front = f"[{ip}]:{fe['port']}/{lb['protocol']}" if ":" in ip else f"{ip}:{fe['port']}/{lb['protocol']}"
        aff = lb["sessionAffinity"]
        rows = []
        for b in lb["backends"]:
            style = {"up": "green", "down": "red", "draining": "yellow"}.get(b["state"], "white")
            addr = f"[{b['address']}]" if ":" in b["address"] else b["address"]
            c = b["counters"]
            why = f" ({b['reason']})" if b["state"] != "up" and b.get("reason") else ""
            rows.append(
                f"[{style}]{addr}:{b['port']} w{b['weight']} {b['state']}{why}[/{style}] "
                f"new={c['newConnections']} pkts={_human(c['packets'])} bytes={_human(c['bytes'])}"
            )
        c = lb["counters"]
        table.add_row(
            lb["name"], front, lb["state"], lb["algorithm"],
            f"ClientIP {aff['timeoutSeconds']}s" if aff else "-",
            "\n".join(rows) or "-",
            str(c["newConnections"]), _human(c["packets"]), _human(c["bytes"]),
        )
    console.print(table)
