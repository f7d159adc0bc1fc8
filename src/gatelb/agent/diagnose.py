"""`gatelb diagnose`: why a load balancer's traffic is uneven or does not arrive, with evidence.

For one load balancer (or all, most uneven first) it samples the kernel's per-backend
new-connection counters twice over a window, compares the split with what the slot table
(weights) and health predict, and looks for the known causes: backends down or draining, weights,
ClientIP affinity with few clients, source hash with few sources, long-lived connections on the
backends that existed before a scale-up (conntrack), a kernel that does not match the desired
state, no route or neighbour entry to a backend, another table that drops or rewrites the
traffic. Every finding is one line naming its evidence and what to do. Read only.

A finding is a *problem* (something is broken: exit 1) or a *cause* that explains the split as
configured behaviour (weights, affinity, source hash, long-lived connections, draining: exit 0).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from gatelb.agent.statefile import StoredState
from gatelb.agent.trace import compare_service, health_of
from gatelb.dataplane.layout import FAMILY_SETS, SETS, Key, counter_shard
from gatelb.dataplane.ruleset import affinity_set_names
from gatelb.dataplane.selection import slot_shares
from gatelb.dataplane.slots import slot_sequence
from gatelb.dataplane.trace import BackendHealth, idle_state, sourcehash_slot
from gatelb.kernel import inspect, nlget
from gatelb.kernel.counters import TableCounters
from gatelb.model import Algorithm, Backend, IPAddress, LoadBalancer, NoBackendAction, Service

DEFAULT_WINDOW_S = 2.0
# Fewer new connections than this in the window: too few to call the split uneven.
MIN_SAMPLE = 20
# Established flows: fewer than this are not called concentrated.
MIN_ESTABLISHED = 6


@dataclass
class Finding:
    cause: str  # backend-down, draining, no-backend, weights, affinity, sourcehash, long-lived, stale-rules,
    #             no-route, foreign-table, unanswered, uneven, not-programmed, disabled
    problem: bool
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"cause": self.cause, "problem": self.problem, "text": self.text}


@dataclass
class BackendFacts:
    backend: Backend
    serving: bool
    state: str
    reason: str
    since: float | None
    slots: int = 0
    expected: float = 0.0  # share of new connections the slot table predicts
    new: int = 0  # new connections in the window
    lifetime: int = 0  # new connections since the backend was configured (the counter)
    established: int = 0
    unreplied: int = 0
    pinned_clients: int = 0  # affinity entries pointing here

    def to_json(self) -> dict[str, Any]:
        return {"backend": str(self.backend), "weight": self.backend.weight, "state": self.state,
                "reason": self.reason, "since": self.since, "slots": self.slots,
                "expected": round(self.expected, 4), "newConnections": self.new,
                "lifetimeNewConnections": self.lifetime, "established": self.established,
                "unreplied": self.unreplied, "affinityClients": self.pinned_clients}


@dataclass
class LBReport:
    lb: LoadBalancer
    svc: Service | None
    window_s: float
    backends: list[BackendFacts] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    unevenness: float = 0.0
    clients: int = 0  # distinct sources in conntrack for this frontend

    @property
    def problems(self) -> int:
        return sum(1 for f in self.findings if f.problem)

    @property
    def new_total(self) -> int:
        return sum(b.new for b in self.backends)

    def to_json(self) -> dict[str, Any]:
        svc = self.svc
        return {"name": self.lb.name,
                "frontend": {"ip": str(svc.vip) if svc else None, "port": self.lb.port,
                             "protocol": self.lb.protocol.value},
                "algorithm": self.lb.algorithm.value,
                "sessionAffinity": self.lb.affinity.timeout_seconds if self.lb.affinity else None,
                "windowSeconds": self.window_s, "newConnections": self.new_total,
                "unevenness": round(self.unevenness, 4), "distinctClients": self.clients,
                "problems": self.problems,
                "backends": [b.to_json() for b in self.backends],
                "findings": [f.to_json() for f in self.findings]}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _tvd(observed: list[int], expected: list[float]) -> float:
    """Total variation distance between observed counts and expected shares (0: same split)."""
    total = sum(observed)
    if total == 0 or not expected:
        return 0.0
    return 0.5 * sum(abs(o / total - e) for o, e in zip(observed, expected, strict=True))


def _deviates(observed: int, total: int, p: float) -> bool:
    """Off by more than three standard deviations of a binomial draw (plus one for small counts)."""
    return abs(observed - total * p) > 3 * math.sqrt(total * p * (1 - p)) + 1


def _when(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "?"


# --- gathering -----------------------------------------------------------------------------------

CounterSample = Callable[[], Mapping[tuple[str, int], int]]


def counter_keys(svc: Service) -> list[Key]:
    return [(svc.vip, svc.protocol, b.address, b.port) for b in (*svc.backends, *svc.idle_backends)]


def sample_service(svc: Service) -> dict[tuple[str, int], int]:
    """New connections so far per backend (address text, port) of one service: netlink gets of its
    own conns elements only (in the shard of each backend)."""
    by_shard: dict[str, list[Key]] = {}
    conns = FAMILY_SETS[svc.family].conns
    for key in counter_keys(svc):
        by_shard.setdefault(conns[counter_shard(key[2])], []).append(key)  # type: ignore[arg-type]
    got = {k: e for name, keys in by_shard.items() for k, e in nlget.get_elements(SETS[name], keys).items()}
    out = {}
    for key, element in got.items():
        if element is not None and element.counter is not None:
            out[(str(key[2]), cast(int, key[3]))] = element.counter.packets
    return out


def from_table(counters: TableCounters, svc: Service) -> dict[tuple[str, int], int]:
    # lookup() reads both forms: text keys (nft JSON) and the netlink reader's raw keys.
    return {(str(b.address), b.port): counters.lookup(svc.vip, svc.protocol, b.address, b.port)[1]
            for b in (*svc.backends, *svc.idle_backends)}


@dataclass
class NamespaceFacts:
    """Facts shared by every load balancer of one run, gathered once."""

    generation: int | None
    foreign: list[inspect.ForeignChain] | None
    foreign_error: str = ""
    reach: dict[IPAddress, inspect.Reach] = field(default_factory=dict)

    def reach_of(self, address: IPAddress) -> inspect.Reach:
        if address not in self.reach:
            self.reach[address] = inspect.reach(address)
        return self.reach[address]


def namespace_facts(generation: int | None) -> NamespaceFacts:
    try:
        return NamespaceFacts(generation, inspect.foreign_chains())
    except inspect.InspectError as err:
        return NamespaceFacts(generation, None, str(err))


# --- one load balancer ---------------------------------------------------------------------------


def examine(lb: LoadBalancer, svc: Service | None, before: Mapping[tuple[str, int], int],
            after: Mapping[tuple[str, int], int], window_s: float,
            health: Mapping[tuple[str, IPAddress, int], BackendHealth], ns: NamespaceFacts,
            applied_generation: int, errors: tuple[str, ...] = ()) -> LBReport:
    report = LBReport(lb, svc, window_s)
    if not lb.active:
        report.findings.append(Finding("disabled", False, f"{lb.name} is disabled (state: disable): nothing is "
                                       "programmed for it. Set state: active to serve it."))
        return report
    if svc is None:
        mine = [e for e in errors if lb.name in e]
        why = f": {mine[0]}" if mine else " (see `gatelb status` for errors)"
        report.findings.append(Finding("not-programmed", True, f"{lb.name} is not programmed{why}. Fix the "
                                       "configuration and apply it again."))
        return report

    counts = slot_shares(svc)
    total_slots = sum(counts) or 1
    for b, n in zip(svc.backends, counts, strict=True):
        h = health.get((lb.name, b.address, b.port))
        report.backends.append(BackendFacts(b, True, h.state if h and h.state != "unknown" else "up",
                                            h.reason if h else "", h.since if h else None, n, n / total_slots))
    for b in svc.idle_backends:
        h = health.get((lb.name, b.address, b.port))
        state, reason = idle_state(b, h)
        report.backends.append(BackendFacts(b, False, state, reason, h.since if h else None))
    for f in report.backends:
        k = (str(f.backend.address), f.backend.port)
        f.lifetime = after.get(k, 0)
        f.new = max(0, after.get(k, 0) - before.get(k, 0))

    flows = _flows(report, svc)
    _affinity(report, svc)
    _causes(report, svc, flows)
    _kernel(report, svc, ns, applied_generation)
    _reach(report, ns)
    _foreign(report, svc, ns)
    observed = [f.new for f in report.backends] if report.new_total else [f.established for f in report.backends]
    even = [1 / len(report.backends)] * len(report.backends) if report.backends else []
    report.unevenness = _tvd(observed, even)
    return report


def _flows(report: LBReport, svc: Service) -> list[inspect.Flow]:
    try:
        flows = inspect.frontend_flows(svc.vip, svc.port, svc.protocol)
    except inspect.InspectError as err:
        report.findings.append(Finding("conntrack", False, f"conntrack could not be read ({err}): established "
                                       "connections were not examined. Install conntrack-tools."))
        return []
    by = {(str(f.backend.address), f.backend.port): f for f in report.backends}
    for flow in flows:
        facts = by.get((flow.backend, flow.backend_port))
        if facts is None:
            continue
        if flow.state == "ESTABLISHED" or (not flow.state and flow.replied):
            facts.established += 1
        if not flow.replied:
            facts.unreplied += 1
    report.clients = len({f.client for f in flows})
    return flows


def _affinity(report: LBReport, svc: Service) -> None:
    by = {f.backend.key: f for f in report.backends}
    for backend, set_name in affinity_set_names(svc):
        by[backend.key].pinned_clients = len(inspect.set_elements(set_name))


def _causes(report: LBReport, svc: Service, flows: list[inspect.Flow]) -> None:
    serving = [f for f in report.backends if f.serving]
    idle = [f for f in report.backends if not f.serving]
    n = report.new_total
    for f in idle:
        took = f" It still took {f.new} new connections in the window: the kernel is not up to date." if f.new else ""
        held = f" {f.established} established connections stay on it until they close." if f.established else ""
        if f.state == "draining":
            report.findings.append(Finding("draining", False, f"{f.backend} is draining ({f.reason}): it takes no "
                                           f"new connections by configuration.{held}{took}"))
        else:
            since = f" since {_when(f.since)}" if f.since else ""
            report.findings.append(Finding("backend-down", True, f"{f.backend} is down{since} ({f.reason}): it takes "
                                           f"no new connections.{held}{took} Fix the backend (is its service "
                                           "running and listening?) or remove it from the L4LB."))
    if not serving:
        what = "get a TCP reset / ICMP unreachable" if svc.no_backend is NoBackendAction.REJECT else "are dropped"
        report.findings.append(Finding("no-backend", True, f"no backend of {report.lb.name} takes new connections: "
                                       f"new connections {what}."))
        return

    weights = [f.backend.weight for f in serving]
    if len(set(weights)) > 1:
        top = max(serving, key=lambda f: f.expected)
        seen = f"; it took {_pct(top.new / n)} of the {n} new connections in the window" if n else ""
        report.findings.append(Finding("weights", False, f"weights {':'.join(map(str, weights))}: {top.backend} has "
                                       f"{top.slots} of {sum(f.slots for f in serving)} slots "
                                       f"({_pct(top.expected)} of new connections){seen}. This is as configured; "
                                       "change the weights if it is not what you want."))

    explained = False
    if svc.affinity is not None:
        pinned = sum(f.pinned_clients for f in serving)
        few = pinned < 4 * len(serving)
        if few or (n >= MIN_SAMPLE and _uneven_window(serving, n)):
            split = ", ".join(f"{f.backend} {f.pinned_clients}" for f in serving)
            nat = (" (one address may be many users behind a NAT)" if pinned and report.clients <= pinned else "")
            report.findings.append(Finding(
                "affinity", False, f"session affinity (ClientIP, {svc.affinity.timeout_seconds} s): the affinity "
                f"sets hold {pinned} distinct client(s){nat}: {split}. Each client keeps its backend until it is "
                f"silent for {svc.affinity.timeout_seconds} s, so with few clients the split follows the clients, "
                "not the weights. Lower timeoutSeconds or remove sessionAffinity if clients need not stick."))
            explained = True
    if svc.algorithm is Algorithm.SOURCEHASH:
        sources = sorted({f.client for f in flows})
        sequence = slot_sequence(weights)
        hit: Tally[str] = Tally()
        for s in sources:
            try:
                addr = ipaddress.ip_address(s)
            except ValueError:
                continue
            hit[str(serving[sequence[sourcehash_slot(addr, len(sequence))]].backend)] += 1
        unused = [str(f.backend) for f in serving if str(f.backend) not in hit]
        if sources and (len(sources) < 4 * len(serving) or unused):
            spread = ", ".join(f"{b} {c}" for b, c in hit.most_common())
            none = f"; {', '.join(unused)} get none" if unused else ""
            report.findings.append(Finding(
                "sourcehash", False, f"source hash with {len(sources)} distinct source(s) in conntrack: they hash to "
                f"{spread}{none}. Every connection from one address goes to the same backend; with few sources "
                "(or clients behind one NAT) the split follows the sources. Use algorithm: random if clients "
                "need not stick."))
            explained = True

    established = sum(f.established for f in serving)
    if established >= MIN_ESTABLISHED:
        # Not a binomial test: established connections are not independent draws (they are what
        # is left of every earlier moment), and a scale-up leaves whole backends empty.
        light = [f for f in serving if established * f.expected >= 3 and f.established < established * f.expected / 2]
        heavy = [f for f in serving if f.established > established * f.expected and f not in light]
        if light and _tvd([f.established for f in serving], [f.expected for f in serving]) >= 0.2:
            heavy_txt = ", ".join(f"{f.backend} {f.established} (lifetime {f.lifetime} new)" for f in heavy)
            light_txt = ", ".join(f"{f.backend} {f.established} of {_pct(f.expected)} expected (lifetime "
                                  f"{f.lifetime} new{', up since ' + _when(f.since) if f.since else ''})"
                                  for f in light)
            report.findings.append(Finding(
                "long-lived", False, f"long-lived connections: {established} established connections are "
                f"concentrated on {heavy_txt}; {light_txt}. A connection stays on the backend it opened on, so "
                "backends added later (a scale-up) or back from down get only new connections. They even out as "
                "clients reconnect; to rebalance sooner, have clients reconnect (restart them, or a maximum "
                "connection age in the client or server)."))
            explained = True

    for f in serving:
        if f.unreplied and f.unreplied >= f.established:
            report.findings.append(Finding(
                "unanswered", True, f"{f.backend} does not answer: {f.unreplied} connection(s) to it in conntrack "
                "never got a reply (UNREPLIED). Check the backend host, the route back to the gateway, and "
                "firewalls on the way (see the other findings)."))

    if n >= MIN_SAMPLE and not explained:
        off = [f for f in serving if _deviates(f.new, n, f.expected)]
        if off:
            detail = ", ".join(f"{f.backend} {f.new} ({_pct(f.new / n)}, expected {_pct(f.expected)})" for f in off)
            report.findings.append(Finding(
                "uneven", True, f"the {n} new connections in the window do not follow the slot table: {detail}, "
                "beyond chance. Check the other findings (stale rules, firewalls); if there are none, the kernel "
                "selects differently from the desired state: run `gatelb trace` against the frontend."))


def _uneven_window(serving: list[BackendFacts], n: int) -> bool:
    return any(_deviates(f.new, n, f.expected) for f in serving)


def _kernel(report: LBReport, svc: Service, ns: NamespaceFacts, applied_generation: int) -> None:
    view = compare_service(svc, ns.generation, applied_generation)
    if view.mismatches:
        shown = "; ".join(view.mismatches[:5]) + (f"; and {len(view.mismatches) - 5} more"
                                                  if len(view.mismatches) > 5 else "")
        report.findings.append(Finding("stale-rules", True, f"the kernel does not match the desired state "
                                       f"({len(view.mismatches)} of {view.checked} elements checked): {shown}. "
                                       "Run `gatelb apply` again (or restart `gatelb run`) to reprogram it."))


def _reach(report: LBReport, ns: NamespaceFacts) -> None:
    for f in report.backends:
        r = ns.reach_of(f.backend.address)
        if r.route is None:
            report.findings.append(Finding("no-route", True, f"no route from the gateway to {f.backend.address} "
                                           f"({r.error}): connections DNATed to {f.backend} go nowhere. Add a route "
                                           "to the backend network."))
        elif not r.ok:
            report.findings.append(Finding("no-route", True, f"the neighbour (ARP/NDP) entry of {r.next_hop} on the "
                                           f"way to {f.backend} is {r.neighbour} ({r.route}): the host does not "
                                           "answer. Check that it is up, its address, and the link or VLAN."))


def _foreign(report: LBReport, svc: Service, ns: NamespaceFacts) -> None:
    if ns.foreign is None:
        return
    addresses = [svc.vip, *(f.backend.address for f in report.backends)]
    ports = [svc.port, *(f.backend.port for f in report.backends)]
    for chain in ns.foreign:
        routed = chain.hook in ("forward", "prerouting", "ingress")
        if chain.policy == "drop" and routed:
            report.findings.append(Finding("foreign-table", True, f"{chain} has policy drop: traffic to {svc.vip}:"
                                           f"{svc.port} and its backends is dropped unless a rule there accepts it. "
                                           "Add an accept rule for it in that table, or change the policy."))
        for rule in chain.rules:
            if not inspect.rule_matches(rule.text, addresses, ports):
                continue
            where = f" (in chain {rule.chain})" if rule.chain != chain.chain else ""
            rewrite = rule.verdict in ("dnat", "snat", "redirect", "masquerade")
            does = "rewrites" if rewrite else "drops" if rule.verdict in ("drop", "reject") else "diverts"
            report.findings.append(Finding(
                "foreign-table", True, f"{chain}{where} {does} traffic of this load balancer: `{rule.text}`. "
                "gatelb does not own that table; change or remove the rule there (nft list table "
                f"{chain.family} {chain.table})."))


# --- the command ----------------------------------------------------------------------------------


def diagnose(stored: StoredState, name: str | None, window_s: float, generation: int | None,
             read_table: Callable[[], TableCounters], limit: int = 20) -> dict[str, Any]:
    applied = stored.applied
    if applied is None:
        raise LookupError("nothing is applied (no record in the state directory): nothing to diagnose")
    lbs = {lb.name: lb for lb in applied.load_balancers}
    services = applied.services.by_name()
    health = health_of(applied)
    if name is not None:
        if name not in lbs:
            known = ", ".join(sorted(lbs)[:10]) or "none"
            raise LookupError(f"no L4LB named {name!r} is applied (known: {known})")
        chosen = [lbs[name]]
    else:
        chosen = [lbs[n] for n in sorted(lbs)]

    ns = namespace_facts(generation)
    # One service: its own counter elements; many: one dump of the counter sets per sample.
    single = len(chosen) == 1 and chosen[0].name in services
    if single:
        svc = services[chosen[0].name]
        before_one = sample_service(svc)
        time.sleep(window_s)
        samples = {svc.name: (before_one, sample_service(svc))}
    else:
        t0 = read_table()
        time.sleep(window_s)
        t1 = read_table()
        samples = {n: (from_table(t0, s), from_table(t1, s)) for n, s in services.items()}
    if not single and len(chosen) > limit:
        # Deep checks for the most uneven (and the ones with idle backends) only.
        def rough(lb: LoadBalancer) -> float:
            s = services.get(lb.name)
            if s is None:
                return 1.0
            b, a = samples.get(lb.name, ({}, {}))
            new = [a.get(k, 0) - b.get(k, 0) for k in a]
            return (1.0 if s.idle_backends else 0.0) + _tvd(new, [1 / len(new)] * len(new) if new else [])
        chosen = sorted(chosen, key=rough, reverse=True)[:limit]
    reports = [examine(lb, services.get(lb.name), *samples.get(lb.name, ({}, {})), window_s, health, ns,
                       applied.generation, applied.errors) for lb in chosen]
    reports.sort(key=lambda r: (-r.problems, -r.unevenness, r.lb.name))
    out: dict[str, Any] = {
        "apiVersion": "gatelb.io/v1alpha1", "kind": "Diagnosis", "windowSeconds": window_s,
        "generation": {"kernel": generation, "applied": applied.generation},
        "examined": len(reports), "loadBalancers": [r.to_json() for r in reports],
        "problems": sum(r.problems for r in reports),
    }
    if ns.foreign_error:
        out["notes"] = [f"other tables were not examined: {ns.foreign_error}"]
    return out
