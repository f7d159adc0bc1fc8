"""Active-active (docs/ha.md): the GatewayGroup fields, the configuration-wide switch to maglev
(through the real file source and reconciler, against the fake nft), the compiled pick rule, the
tracer's flow hash (byte layout of nft's registers) and the status line."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from rich.console import Console

from gatelb.agent.engine import DataplaneSync
from gatelb.agent.reconciler import Reconciler
from gatelb.cli.output import _print_ha
from gatelb.dataplane.ruleset import compile_service
from gatelb.dataplane.trace import Packet, TraceInput, flow_key, flow_slot, jhash, trace
from gatelb.kernel.fake import FakeNft
from gatelb.model import Algorithm, Backend, GatewayGroup, Protocol, Service, SyncedState, ValidationErrors
from gatelb.resolve import consistent_selection
from gatelb.sources.file import FileSource
from gatelb.sources.file.loader import collect_text, load_text

ip = ipaddress.ip_address

GROUP = """\
apiVersion: gatelb.io/v1alpha1
kind: GatewayGroup
metadata: {name: edge}
spec:
  mode: active-active
  interface: lan0
  members: [{name: gw1, address: 198.51.100.2}, {name: gw2, address: 198.51.100.3}, {name: gw3, address: 198.51.100.4}]
"""

L4LBS = """\
apiVersion: gatelb.io/v1alpha1
kind: IPPool
metadata: {name: public}
spec: {addresses: ["203.0.113.0/28"]}
---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {name: web}
spec:
  frontend: {ip: 203.0.113.10, port: 80}
  backend: ["198.51.100.11:8080", "198.51.100.12:8080"]
---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {name: rr}
spec:
  frontend: {ip: 203.0.113.10, port: 81}
  backend: ["198.51.100.11:8080", "198.51.100.12:8080"]
  algorithm: roundrobin
---
apiVersion: gatelb.io/v1alpha1
kind: L4LB
metadata: {name: sticky}
spec:
  frontend: {ip: 203.0.113.10, port: 82}
  backend: ["198.51.100.11:8080", "198.51.100.12:8080"]
  algorithm: sourcehash
"""


def test_the_group_parses_with_any_number_of_members() -> None:
    out = collect_text(GROUP)
    assert not out.errors, [str(e) for e in out.errors]
    (g,) = [o for o in out.config.values() if isinstance(o, GatewayGroup)]
    assert (g.mode, len(g.members), g.ha, g.backend_gateway) == ("active-active", 3, False, None)
    assert consistent_selection(out.config.values())
    assert not consistent_selection([GatewayGroup("edge", "lan0", g.members)])


@pytest.mark.parametrize("extra, message", [
    ("  backendGateway: 198.51.100.1/24\n", "GatewayGroup edge: spec.backendGateway: active-active has no active "
                                            "member to hold it"),
    ("  stateSync: true\n", "GatewayGroup edge: spec.stateSync: not built for active-active"),
])
def test_active_standby_fields_are_refused_with_the_field_named(extra: str, message: str) -> None:
    with pytest.raises(ValidationErrors) as exc:
        load_text(GROUP + extra)
    assert any(str(e).startswith(message) for e in exc.value.errors), str(exc.value)


class Recorder:
    def __init__(self) -> None:
        self.states: list[SyncedState] = []

    def set(self, state: SyncedState) -> None:
        self.states.append(state)


def test_an_active_active_group_makes_every_per_member_pick_maglev_and_its_removal_undoes_it(tmp_path: Path) -> None:
    (tmp_path / "lbs.yaml").write_text(L4LBS)
    (tmp_path / "group.yaml").write_text(GROUP)

    async def go() -> None:
        src = FileSource(tmp_path, watch=False)
        rec = Recorder()
        nft = FakeNft()
        r = Reconciler([src], DataplaneSync(nft, indexed=True), consumers=[rec])
        await src.run(r.notifier(src))
        await r.round()
        algorithms = {n: s.algorithm for n, s in rec.states[-1].services.items()}
        assert algorithms == {"web": Algorithm.MAGLEV, "rr": Algorithm.MAGLEV, "sticky": Algorithm.SOURCEHASH}
        assert nft.table is not None
        assert "jhash ip saddr . ip daddr . meta l4proto . tcp sport . tcp dport mod 257" in nft.table.chains[
            "pick4_maglev_257"][0]

        (tmp_path / "group.yaml").unlink()
        src.refresh([str(tmp_path / "group.yaml")])
        r.notifier(src)("file")
        await r.round()
        algorithms = {n: s.algorithm for n, s in rec.states[-1].services.items()}
        assert algorithms == {"web": Algorithm.RANDOM, "rr": Algorithm.ROUNDROBIN, "sticky": Algorithm.SOURCEHASH}
    asyncio.run(go())


def svc(vip: str, *backends: str, weights: tuple[int, ...] | None = None) -> Service:
    bes = tuple(Backend(ip(b), 8080, weights[i] if weights else 1) for i, b in enumerate(backends))
    return Service("web", ip(vip), Protocol.TCP, 80, bes, algorithm=Algorithm.MAGLEV)


def test_the_pick_rule_hashes_the_flow_with_the_pinned_seed() -> None:
    rs = compile_service(svc("203.0.113.10", "198.51.100.11", "198.51.100.12"))
    assert rs.chains["pick4_maglev_257"] == (
        "dnat ip to ip daddr . meta l4proto . th dport . jhash ip saddr . ip daddr . meta l4proto . tcp sport . "
        "tcp dport mod 257 seed 0x676c6231 map @be4",)
    assert len(rs.elements["be4"]) == 257
    v6 = compile_service(svc("2001:db8::10", "2001:db8:1::1", "2001:db8:1::2"))
    assert v6.chains["pick6_maglev_257"] == (
        "dnat ip6 to ip6 daddr . meta l4proto . th dport . jhash ip6 saddr . tcp sport mod 257 seed 0x676c6231 "
        "map @be6",)
    one = compile_service(svc("203.0.113.10", "198.51.100.11"))
    assert len(one.elements["be4"]) == 1 and "pick4_maglev_1" in one.chains  # not a skeleton chain


def test_the_flow_key_is_what_nft_leaves_in_its_registers() -> None:
    key = flow_key(ip("192.0.2.10"), 41000, ip("203.0.113.10"), 80, Protocol.TCP)
    assert key == bytes([192, 0, 2, 10, 203, 0, 113, 10, 6, 0, 0, 0, 0xA0, 0x28, 0, 0, 0, 80, 0, 0])
    key6 = flow_key(ip("2001:db8::1"), 41000, ip("2001:db8::10"), 80, Protocol.UDP)
    assert key6 == ip("2001:db8::1").packed + bytes([0xA0, 0x28, 0, 0])
    # the slot is the kernel's reciprocal_scale of the hash (tests/netns/test_active_active.py checks the
    # kernel's own choices against it)
    assert flow_slot(Packet(ip("192.0.2.10"), ip("203.0.113.10"), 80, Protocol.TCP, 41000), 1021) == (
        jhash(key, 0x676C6231) * 1021) >> 32


def test_the_tracer_names_the_backend_once_it_knows_the_source_port() -> None:
    s = svc("203.0.113.10", "198.51.100.11", "198.51.100.12", "198.51.100.13")
    view = TraceInput({"web": s})
    blind = trace(view, Packet(ip("192.0.2.10"), s.vip, 80))
    assert blind.chosen is None and "give the source port" in blind.explanation
    chosen = {trace(view, Packet(ip("192.0.2.10"), s.vip, 80, Protocol.TCP, p)).chosen for p in range(40000, 40300)}
    assert chosen == set(s.backends)  # source ports spread flows over every backend
    t = trace(view, Packet(ip("192.0.2.10"), s.vip, 80, Protocol.TCP, 40000))
    assert t.slot is not None and "Maglev" in t.explanation
    assert all(abs(c.share - 1 / 3) < 0.01 for c in t.candidates)


def test_status_line_of_an_active_active_member() -> None:
    console = Console(record=True, width=200)
    _print_ha(console, {"group": "edge", "mode": "active-active", "node": "gw2", "members": ["gw1", "gw2"],
                        "selection": "maglev"})
    assert console.export_text().strip() == (
        "ha edge (active-active): members gw1, gw2, every one serving; this member gw2; flows to backends by maglev "
        "(the same on every member)")
    console = Console(record=True, width=300)
    _print_ha(console, {"group": "edge", "mode": "active-active", "node": "gw2", "members": ["gw1", "gw2"],
                        "selection": "maglev", "dnat": ["db", "web"]})
    assert "ha: warning: nat: dnat in active-active (db, web): the backends' answers must come back" in (
        console.export_text())
