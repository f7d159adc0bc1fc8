"""Printing `gatelb trace` and `gatelb diagnose` reports for people (text) and programs (JSON)."""

from __future__ import annotations

import json
from typing import Any


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_trace(report: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(report, indent=2))
        return
    p = report["packet"]
    dst = f"[{p['to']}]" if ":" in p["to"] else p["to"]
    src = p["from"] if p.get("sourcePort") is None else (
        f"[{p['from']}]:{p['sourcePort']}" if ":" in p["from"] else f"{p['from']}:{p['sourcePort']}")
    print(f"packet    {src} -> {dst}:{p['port']}/{p['protocol']}")
    print(f"matches   {report['loadBalancer'] or '(no load balancer)'}")
    sr = report.get("sourceRanges")
    if sr is not None:
        print(f"source    {'allowed by ' + sr['range'] if sr['allowed'] else 'outside sourceRanges'}")
    print(f"verdict   {report['verdict']}: {report['explanation']}")
    if report.get("rule"):
        print(f"rule      {report['rule']}")
    if report["candidates"]:
        tol = report.get("tolerance") or 0
        head = "candidates" + (f" (shares within {_pct(tol)} of the weights: slot table)" if tol else "")
        print(head)
        print(f"  {'backend':<28} {'weight':>6} {'slots':>5} {'share':>7} {'this packet':>11}  state")
        for c in report["candidates"]:
            mark = " <- affinity, expires in "
            aff = c.get("affinity")
            extra = ""
            if aff is not None:
                left = aff.get("expiresSeconds")
                extra = f"{mark}{left:.0f} s" if left is not None else " <- affinity"
            state = c["state"] + (f" ({c['reason']})" if c["reason"] and c["state"] != "up" else "")
            print(f"  {c['backend']:<28} {c['weight']:>6} {c['slots']:>5} {_pct(c['share']):>7} "
                  f"{_pct(c['probability']):>11}  {state}{extra}")
    for note in report.get("notes", []):
        print(f"note      {note}")
    k = report.get("kernel")
    if k is not None:
        agrees = "agrees with the desired state" if k["agrees"] else "DOES NOT agree with the desired state"
        print(f"kernel    {agrees} ({k['elementsChecked']} elements of this service checked, generation "
              f"{k['generation']}, applied {k['appliedGeneration']})")
        for m in k["mismatches"]:
            print(f"  mismatch: {m}")
        ks = k.get("sourceRange")
        if ks is not None:
            held = f"element {ks['element']}" if ks["element"] else "no allow element holds the source"
            print(f"  source range in the kernel: {ks['verdict']} ({held})")
            if ks.get("rule"):
                print(f"  dropped by: {ks['rule']}")
        if k.get("affinity"):
            for backend, left in k["affinity"].items():
                print(f"  affinity entry: {p['from']} -> {backend}"
                      + (f", expires in {left:.0f} s" if left is not None else ""))


def print_diagnosis(report: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(report, indent=2))
        return
    for lb in report["loadBalancers"]:
        fe = lb["frontend"]
        ip = f"[{fe['ip']}]" if fe["ip"] and ":" in fe["ip"] else (fe["ip"] or "-")
        aff = f", affinity {lb['sessionAffinity']} s" if lb["sessionAffinity"] else ""
        print(f"{lb['name']}  {ip}:{fe['port']}/{fe['protocol']}  {lb['algorithm']}{aff}  "
              f"window {lb['windowSeconds']:g} s: {lb['newConnections']} new connections, "
              f"{lb['distinctClients']} client(s) in conntrack, unevenness {lb['unevenness']:.2f}")
        if lb["backends"]:
            print(f"  {'backend':<28} {'weight':>6} {'state':<9} {'expected':>8} {'new':>6} {'share':>6} "
                  f"{'established':>11} {'lifetime':>8}")
            total = lb["newConnections"] or 0
            for b in lb["backends"]:
                share = _pct(b["newConnections"] / total) if total else "-"
                print(f"  {b['backend']:<28} {b['weight']:>6} {b['state']:<9} {_pct(b['expected']):>8} "
                      f"{b['newConnections']:>6} {share:>6} {b['established']:>11} {b['lifetimeNewConnections']:>8}")
        if not lb["findings"]:
            print("  ok: the split follows the weights and health; nothing found")
        for f in lb["findings"]:
            print(f"  {'PROBLEM' if f['problem'] else 'cause  '} {f['cause']}: {f['text']}")
        print()
    for note in report.get("notes", []):
        print(f"note: {note}")
    n = report["problems"]
    print(f"{report['examined']} load balancer(s) examined: "
          + (f"{n} problem(s) found" if n else "no problem found"))
