"""Tables the demo acts print: where connections went."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from gatelb.lab.results import ClientResult


def failures_text(result: ClientResult) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(result.failures.items()))


def show_spread(console: Console, title: str, result: ClientResult) -> None:
    """Connections per backend, with a bar; failures on their own row."""
    console.print(f"[bold]{title}[/bold]", highlight=False)  # above the table: a title wraps to its width
    table = Table()
    table.add_column("backend")
    table.add_column("connections", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    ok = max(1, result.ok)
    for backend in sorted(result.per_backend):
        count = result.per_backend[backend]
        share = count / ok
        table.add_row(backend, str(count), f"{share:.0%}", "█" * round(share * 40))
    if result.failed:
        table.add_row("[red]failed[/red]", str(result.failed), "", failures_text(result))
    console.print(table)
    if result.sources:
        console.print(f"  backends saw client address(es): {', '.join(sorted(result.sources))}\n")


def show_paths(console: Console, title: str, result: ClientResult, gateway_of: dict[str, str]) -> None:
    """Connections per gateway and backend. With full NAT the backend sees the address of the
    gateway that took the connection, so `gateway_of` (that address -> gateway name) tells the path."""
    paths = Counter((gateway_of.get(a.seen_source or "", a.seen_source or "?"), a.backend or "?")
                    for a in result.attempts if a.ok)
    backends = sorted({b for _, b in paths})
    console.print(f"[bold]{title}[/bold]", highlight=False)
    table = Table()
    table.add_column("via")
    for b in backends:
        table.add_column(b, justify="right")
    table.add_column("total", justify="right")
    table.add_column("")
    ok = max(1, result.ok)
    for gw in sorted({g for g, _ in paths}):
        total = sum(n for (g, _), n in paths.items() if g == gw)
        table.add_row(gw, *(str(paths.get((gw, b), 0)) for b in backends), str(total),
                      "█" * round(total / ok * 40))
    if result.failed:
        table.add_row("[red]failed[/red]", *("" for _ in backends), str(result.failed), failures_text(result))
    console.print(table)
