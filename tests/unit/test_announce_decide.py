"""The announcement decision (gatelb.announce.decide), the announcement schema's errors, and the
rendered FRR configuration (golden file)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from gatelb.announce.decide import Attributes, decide
from gatelb.announce.frr_config import TAG_MAX, daemon_files, quick_changes, render, tags
from gatelb.model import (
    AddressRange,
    Backend,
    BGPPeer,
    ConfigObject,
    IPPool,
    LBState,
    LoadBalancer,
    Protocol,
    Service,
    SyncedState,
    ValidationErrors,
)
from gatelb.sources.file.loader import collect_text, load_text

GOLDEN = Path(__file__).parent / "golden"
ip = ipaddress.ip_address
net = ipaddress.ip_network

CONFIG = """\
apiVersion: gatelb.io/v1alpha1
kind: BFDProfile
metadata: {name: fast}
spec: {receiveInterval: 100, transmitInterval: 100, detectMultiplier: 3}
---
apiVersion: gatelb.io/v1alpha1
kind: BGPPeer
metadata: {name: upstream}
spec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.129, bfdProfile: fast, holdTime: 3s,
       keepaliveTime: 1s, connectTime: 1s}
---
apiVersion: gatelb.io/v1alpha1
kind: BGPPeer
metadata: {name: backup}
spec: {myASN: 64512, peerASN: 64501, peerAddress: 2001:db8:1::1, peerPort: 1179, password: s3cret, nodes: [gw1],
       enableGracefulRestart: true}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: public}
spec: {ipAddressPools: [public]}
---
apiVersion: gatelb.io/v1alpha1
kind: BGPAdvertisement
metadata: {name: tagged}
spec: {ipAddressPools: [public], peers: [upstream], localPref: 200, communities: ["65535:65282", "large:64512:1:2"]}
---
apiVersion: gatelb.io/v1alpha1
kind: BGPAdvertisement
metadata: {name: aggregated}
spec: {ipAddressPools: [other], aggregationLength: 28}
---
apiVersion: gatelb.io/v1alpha1
kind: L2Advertisement
metadata: {name: lan}
spec: {ipAddressPools: [lan], interfaces: [up0]}
---
apiVersion: gatelb.io/v1alpha1
kind: GatewayGroup
metadata: {name: edge}
spec: {interface: lan0, members: [{name: gw1, address: 198.51.100.1}, {name: gw2, address: 198.51.100.2}]}
"""

POOLS = (IPPool("public", (AddressRange(ip("203.0.113.0"), ip("203.0.113.63")),
                           AddressRange(ip("2001:db8:100::"), ip("2001:db8:100::ff")))),
         IPPool("other", (AddressRange(ip("203.0.113.64"), ip("203.0.113.127")),)),
         IPPool("lan", (AddressRange(ip("198.51.100.200"), ip("198.51.100.210")),)))


def config_objects(text: str = CONFIG) -> dict[object, ConfigObject]:
    out = collect_text(text)
    assert not out.errors, [str(e) for e in out.errors]
    return dict(out.config)


def service(name: str, vip: str, up: int = 1) -> Service:
    backends = tuple(Backend(ip(f"198.51.100.{10 + i}"), 8080) for i in range(up))
    return Service(name, ip(vip), Protocol.TCP, 80, backends)


def state(services: list[Service], config: dict[object, ConfigObject] | None = None,
          disabled: tuple[str, ...] = ()) -> SyncedState:
    lbs = {s.name: LoadBalancer(s.name, 80) for s in services}
    lbs.update({n: LoadBalancer(n, 80, state=LBState.DISABLE) for n in disabled})
    pool_of = {s.name: next(p.name for p in POOLS if p.contains(s.vip)) for s in services}
    return SyncedState(generation=1, load_balancers=lbs, origins={}, addresses={s.name: s.vip for s in services},
                       pools=POOLS, pool_of=pool_of, services={s.name: s for s in services if s.name not in disabled},
                       errors={}, config=config if config is not None else config_objects())  # type: ignore[arg-type]


def test_servable_vips_go_to_the_peers_their_advertisements_name() -> None:
    st = state([service("web", "203.0.113.10"), service("web-udp", "203.0.113.10", up=0),
                service("down", "203.0.113.11", up=0), service("v6", "2001:db8:100::10"),
                service("agg", "203.0.113.70"), service("agg2", "203.0.113.75"),
                service("l2", "198.51.100.201")])
    plan, errors = decide(st, "gw1")
    assert errors == []
    assert plan.bgp is not None and plan.bgp.asn == 64512
    by_peer = {pp.peer.name: dict(pp.prefixes) for pp in plan.bgp.peers}
    # the IPv4 peer: web (one of its two services has a backend), the aggregate of `other` once,
    # with the tagged advertisement's attributes merged into the public one's for web
    assert by_peer["upstream"] == {
        net("203.0.113.10/32"): Attributes(200, ("65535:65282", "large:64512:1:2")),
        net("203.0.113.64/28"): Attributes(),
    }
    assert by_peer["backup"] == {net("2001:db8:100::10/128"): Attributes()}  # IPv6 prefixes only
    assert [c.vip for c in plan.l2] == [ip("198.51.100.201")]
    assert plan.l2[0].interfaces == ("up0",)
    assert ip("203.0.113.11") not in plan.servable  # all backends down: withdrawn


def test_nodes_limit_peers_and_a_disabled_lb_is_never_announced() -> None:
    st = state([service("web", "203.0.113.10")], disabled=("web",))
    plan, errors = decide(st, "gw2")
    assert errors == []
    assert plan.bgp is not None
    assert [pp.peer.name for pp in plan.bgp.peers] == ["upstream"]  # backup peers from gw1 only
    assert plan.bgp.peers[0].prefixes == ()


def test_without_announcement_objects_there_is_no_plan() -> None:
    plan, errors = decide(state([service("web", "203.0.113.10")], config={}), "gw1")
    assert plan.empty and errors == []


@pytest.mark.parametrize(("extra", "message"), [
    ("apiVersion: gatelb.io/v1alpha1\nkind: BGPAdvertisement\nmetadata: {name: x}\n"
     "spec: {ipAddressPools: [nope]}\n", "BGPAdvertisement x: spec.ipAddressPools[0]: unknown IPPool 'nope'"),
    ("apiVersion: gatelb.io/v1alpha1\nkind: BGPAdvertisement\nmetadata: {name: x}\n"
     "spec: {peers: [upstream, ghost]}\n", "BGPAdvertisement x: spec.peers[1]: unknown BGPPeer 'ghost'"),
    ("apiVersion: gatelb.io/v1alpha1\nkind: BGPPeer\nmetadata: {name: x}\n"
     "spec: {myASN: 64512, peerASN: 1, peerAddress: 192.0.2.1, bfdProfile: slow}\n",
     "BGPPeer x: spec.bfdProfile: unknown BFDProfile 'slow'"),
    ("apiVersion: gatelb.io/v1alpha1\nkind: BGPPeer\nmetadata: {name: x}\n"
     "spec: {myASN: 64999, peerASN: 1, peerAddress: 192.0.2.1}\n",
     "BGPPeer x: spec.myASN: 64999 differs from BGPPeer backup's 64512: a gateway speaks BGP with one AS number"),
    ("apiVersion: gatelb.io/v1alpha1\nkind: BGPPeer\nmetadata: {name: x}\n"
     "spec: {myASN: 64512, peerASN: 1, peerAddress: 192.0.2.129}\n",
     "BGPPeer x: spec.peerAddress: 192.0.2.129 is already BGPPeer upstream's"),
])
def test_references_across_objects_are_checked(extra: str, message: str) -> None:
    plan, errors = decide(state([service("web", "203.0.113.10")], config_objects(CONFIG + "---\n" + extra)), "gw1")
    assert plan.empty
    assert any(str(e).startswith(message) for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize(("doc", "message"), [
    ("kind: BGPPeer\nmetadata: {name: p}\nspec: {myASN: 0, peerASN: 64500, peerAddress: 192.0.2.1}",
     "BGPPeer p: spec.myASN: 0 is not an AS number (1-4294967295)"),
    ("kind: BGPPeer\nmetadata: {name: p}\nspec: {myASN: 1, peerASN: 4294967296, peerAddress: 192.0.2.1}",
     "BGPPeer p: spec.peerASN: 4294967296 is not an AS number (1-4294967295)"),
    ("kind: BGPPeer\nmetadata: {name: p}\nspec: {myASN: 1, peerASN: 2, peerAddress: 192.0.2.1, holdTime: 2s}",
     "BGPPeer p: spec.holdTime: 2 s is not a hold time (0, or 3-65535 s)"),
    ("kind: BGPPeer\nmetadata: {name: p}\nspec: {myASN: 1, peerASN: 2, peerAddress: 192.0.2.1, holdTime: 9s, "
     "keepaliveTime: 9s}", "BGPPeer p: spec.keepaliveTime: 9 s must be lower than spec.holdTime (9 s)"),
    ("kind: BGPPeer\nmetadata: {name: p}\nspec: {myASN: 1, peerASN: 2, peerAddress: 192.0.2.1, holdTime: 9x}",
     "BGPPeer p: spec.holdTime: '9x' is not a duration (such as '90s' or '1m30s')"),
    ("kind: BGPPeer\nmetadata: {name: p}\nspec: {myASN: 1, peerASN: 2, peerAddress: 192.0.2.300}",
     "BGPPeer p: spec.peerAddress: '192.0.2.300' is not an IP address"),
    ("kind: BFDProfile\nmetadata: {name: b}\nspec: {receiveInterval: 9}",
     "BFDProfile b: spec.receiveInterval: 9 is out of range (10-60000 ms)"),
    ("kind: BFDProfile\nmetadata: {name: b}\nspec: {transmitInterval: 60001}",
     "BFDProfile b: spec.transmitInterval: 60001 is out of range (10-60000 ms)"),
    ("kind: BFDProfile\nmetadata: {name: b}\nspec: {detectMultiplier: 1}",
     "BFDProfile b: spec.detectMultiplier: 1 is out of range (2-255)"),
    ("kind: BGPAdvertisement\nmetadata: {name: a}\nspec: {communities: ['65536:1']}",
     "BGPAdvertisement a: spec.communities[0]: '65536:1' is not a community"),
    ("kind: BGPAdvertisement\nmetadata: {name: a}\nspec: {nodeSelectors: []}",
     "BGPAdvertisement a: spec.nodeSelectors: unknown field"),
    ("kind: L2Advertisement\nmetadata: {name: l}\nspec: {interfaces: ['a/b']}",
     "L2Advertisement l: spec.interfaces[0]: 'a/b' is not an interface name"),
    ("kind: GatewayGroup\nmetadata: {name: g}\nspec: {interface: lan0, members: []}",
     "GatewayGroup g: spec.members: needs at least 1 entry"),
])
def test_field_errors_name_object_and_field(doc: str, message: str) -> None:
    with pytest.raises(ValidationErrors) as exc:
        load_text("apiVersion: gatelb.io/v1alpha1\n" + doc + "\n")
    assert any(str(e).startswith(message) for e in exc.value.errors), str(exc.value)


def test_durations_and_defaults() -> None:
    cfg = config_objects("apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: p}\n"
                         "spec: {myASN: 1, peerASN: 2, peerAddress: 192.0.2.1, holdTime: 1m30s}\n")
    (peer,) = cfg.values()
    assert isinstance(peer, BGPPeer)
    assert (peer.hold_time_s, peer.keepalive_s, peer.connect_time_s, peer.peer_port) == (90, 30, None, 179)


def test_golden_frr_configuration() -> None:
    """The exact text handed to frr-reload; regenerate with GATELB_REGEN_GOLDEN=1 after an intended change."""
    st = state([service("web", "203.0.113.10"), service("api", "203.0.113.12"), service("v6", "2001:db8:100::10"),
                service("agg", "203.0.113.70")])
    plan, errors = decide(st, "gw1")
    assert errors == []
    text = render(plan.bgp, "gw1", "/var/lib/gatelb/frr/frr.log")
    path = GOLDEN / "announce-gw1.frr"
    if os.environ.get("GATELB_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_a_peer_with_nothing_to_announce_denies_everything() -> None:
    plan, _ = decide(state([]), "gw2")
    text = render(plan.bgp, "gw2", "/x/frr.log")
    assert "route-map gatelb-upstream-out deny 65535" in text
    assert "  network " not in text and "permit" not in text
    assert render(None, "gw2", "/x/frr.log").count("router bgp") == 0


def test_a_change_of_servable_vips_is_a_few_vtysh_commands() -> None:
    def text(*vips: str) -> str:
        plan, _ = decide(state([service(f"s{i}", v) for i, v in enumerate(vips)]), "gw2")
        return render(plan.bgp, "gw2", "/x/frr.log")

    old, new = text("203.0.113.10", "203.0.113.11", "203.0.113.12"), text("203.0.113.10", "203.0.113.12")
    assert quick_changes(old, new) == [
        "configure terminal",
        "router bgp 64512", "address-family ipv4 unicast", "no network 203.0.113.11/32", "exit-address-family", "exit",
    ]
    (line,) = [x.strip() for x in old.splitlines() if "network 203.0.113.11/32" in x]
    assert quick_changes(new, old) == [
        "configure terminal", "router bgp 64512", "address-family ipv4 unicast", line, "exit-address-family", "exit"]
    assert quick_changes(old, old) == []
    # anything else (here a new peer's timers) goes through frr-reload.py
    assert quick_changes(old, old.replace("timers 1 3", "timers 2 6")) is None


def test_a_new_group_of_prefixes_adds_its_route_map_entries_in_the_same_vtysh_run() -> None:
    """gw1: 203.0.113.70 (pool other, aggregated /28) goes to upstream only, with its own tag."""
    def text(*vips: str) -> str:
        plan, _ = decide(state([service(f"s{i}", v) for i, v in enumerate(vips)]), "gw1")
        return render(plan.bgp, "gw1", "/x/frr.log")

    old, new = text("203.0.113.10"), text("203.0.113.10", "203.0.113.70")
    commands = quick_changes(old, new)
    assert commands is not None
    (network,) = [c for c in commands if c.startswith("network ")]
    tag = network.rsplit("-", 1)[1]
    assert network == f"network 203.0.113.64/28 route-map gatelb-tag-{tag}"
    # the entries come before the network that needs them, and go after it when it goes
    assert commands.index(f"route-map gatelb-tag-{tag} permit 10") < commands.index(network)
    assert f" match tag {tag}" in commands and f" set tag {tag}" in commands
    back = quick_changes(new, old)
    assert back is not None and all(c.startswith("no route-map") for c in back[-2:])
    assert back.index("no network 203.0.113.64/28") < len(back) - 2
    # an attribute change of an existing entry goes through frr-reload.py
    assert quick_changes(new, new.replace("set local-preference 200", "set local-preference 300")) is None


def test_tags_come_from_what_they_stand_for_and_survive_other_changes() -> None:
    plan, _ = decide(state([service("web", "203.0.113.10"), service("api", "203.0.113.12"),
                            service("agg", "203.0.113.70")]), "gw1")
    assert plan.bgp is not None
    tagged = tags(plan.bgp)
    # web and api go to the same peers with the same attributes: one tag; agg's /28 has its own
    assert tagged[net("203.0.113.10/32")] == tagged[net("203.0.113.12/32")] != tagged[net("203.0.113.64/28")]
    fewer, _ = decide(state([service("web", "203.0.113.10"), service("agg", "203.0.113.70")]), "gw1")
    assert fewer.bgp is not None
    assert tags(fewer.bgp) == {p: t for p, t in tagged.items() if p != net("203.0.113.12/32")}
    assert all(1 <= t <= TAG_MAX for t in tagged.values())
    assert "prefix-list" not in render(plan.bgp, "gw1", "/x/frr.log")


def test_graceful_restart_and_startup_files() -> None:
    plan, _ = decide(state([service("web", "203.0.113.10"), service("v6", "2001:db8:100::10")]), "gw1")
    text = render(plan.bgp, "gw1", "/x/frr.log")
    assert " neighbor 2001:db8:1::1 graceful-restart" in text.splitlines()
    assert " neighbor 192.0.2.129 graceful-restart" not in text.splitlines()  # upstream has no option
    assert " bgp graceful-restart preserve-fw-state" in text.splitlines()
    assert "check-control-plane-failure" not in text  # our BFD shares fate with bgpd: C bit clear
    files = daemon_files(text)
    assert files["zebra"] == "frr defaults traditional\nhostname gw1\nlog file /x/frr.log informational\n"
    assert files["bfdd"].startswith(files["zebra"]) and "\nbfd\n profile fast\n" in files["bfdd"]
    assert "router bgp" not in files["bfdd"] and "\nbfd\n" not in files["bgpd"]
    assert "router bgp 64512" in files["bgpd"] and "route-map gatelb-tag-" in files["bgpd"]
    # every rendered line but `end` and the vtysh-only service line is in exactly one daemon's part
    body = lambda t: [x for x in t.splitlines()[3:]]  # noqa: E731
    assert sorted(body(files["bgpd"]) + body(files["bfdd"])) == sorted(
        x for x in text.splitlines()[5:] if x != "end")
    plan, _ = decide(state([service("web", "203.0.113.10")]), "gw2")  # gw2: only upstream, no option
    assert "graceful-restart" not in render(plan.bgp, "gw2", "/x/frr.log")
