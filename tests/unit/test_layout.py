"""dataplane/layout.py is the only declaration of the table's sets and maps: the renderer, the
compiler, the netlink codecs, the engine and the counter readers all agree with it."""

from __future__ import annotations

import ipaddress
import random

import pytest

from gatelb.agent import engine
from gatelb.dataplane import compile_full, compile_ruleset, layout
from gatelb.dataplane.incremental import AppliedRuleset
from gatelb.dataplane.layout import SETS, FieldType, Flag, Role
from gatelb.dataplane.render import GLOBAL_SETS, element_texts, skeleton
from gatelb.dataplane.ruleset import Ruleset
from gatelb.kernel.counters import parse_table
from gatelb.kernel.fake import FakeNft
from gatelb.kernel.nlelements import CODECS, ElementCodec
from gatelb.model import Affinity, Algorithm, NatMode, Protocol, ResolvedState

from .test_dataplane import _random_state, be, example_state, svc

ip = ipaddress.ip_address


def everything_state() -> ResolvedState:
    """Services that between them fill every global set of both families."""
    services = []
    for family, vip, backend, net in ((4, "203.0.113.{}", "198.51.100.{}", "192.0.2.0/25"),
                                      (6, "2001:db8:100::{}", "2001:db8:2::{}", "2001:db8:1::/64")):
        for i, proto in enumerate(Protocol, 1):
            services.append(svc(f"s{family}{proto.value}", vip.format(i), be(backend.format(10 + i)),
                                be(backend.format(20 + i), weight=2), protocol=proto, port=53 + i,
                                nat=NatMode.FULLNAT, source_ranges=(ipaddress.ip_network(net),),
                                idle_backends=(be(backend.format(30 + i)),)))
        services.append(svc(f"rr{family}", vip.format(9), be(backend.format(40)), algorithm=Algorithm.ROUNDROBIN))
        services.append(svc(f"aff{family}", vip.format(8), be(backend.format(41)), affinity=Affinity(60)))
        services.append(svc(f"none{family}", vip.format(7)))
    return ResolvedState(tuple(sorted(services, key=lambda s: s.name)))


def test_skeleton_declares_exactly_the_layout() -> None:
    declared = [line.strip() for line in skeleton().splitlines() if line.strip().startswith(("map ", "set "))]
    assert declared == [s.declaration() for s in SETS.values()]
    assert {name: s.declaration() for name, s in SETS.items()} == GLOBAL_SETS


def test_declarations() -> None:
    assert SETS["svc4"].declaration() == "map svc4 { type ipv4_addr . inet_proto . inet_service : verdict; }"
    assert SETS["allow6"].declaration() == (
        "set allow6 { type ipv6_addr . inet_proto . inet_service . ipv6_addr; flags interval; }")
    assert SETS["flows6_0"].declaration().endswith("tcp dport; counter; }")
    assert layout.affinity_set(6, 30).declaration_body() == "type ipv6_addr; flags dynamic,timeout; timeout 30s;"


def _check_all(rs: Ruleset) -> set[str]:
    for name, elements in rs.elements.items():
        assert name in SETS, f"{name} is filled but not declared in the layout"
        for key, data in elements.items():
            SETS[name].check(key, data)
    return {name for name, elements in rs.elements.items() if elements}


def test_every_set_the_compiler_fills_matches_the_layout() -> None:
    filled = _check_all(compile_ruleset(everything_state()))
    # the generation is the renderer's; of the counter shards, those its backends' addresses pick
    assert {n for n in filled if SETS[n].shard is None} == {
        n for n, s in SETS.items() if s.shard is None} - {layout.GENERATION.name}
    assert {(SETS[n].family, SETS[n].role) for n in filled if SETS[n].shard is not None} == {
        (f, role) for f in (4, 6) for role in (Role.FLOWS, Role.REPLIES, Role.CONNS)}
    _check_all(compile_ruleset(example_state()))
    rng = random.Random(7)
    for _ in range(30):
        state = _random_state(rng)
        _check_all(compile_ruleset(state))
        _check_all(AppliedRuleset.build(state).ruleset())


def test_check_rejects_wrong_shapes() -> None:
    key = (ip("203.0.113.1"), Protocol.TCP, 80)
    SETS["svc4"].check(key, "goto x")
    with pytest.raises(ValueError):
        SETS["svc6"].check(key, "goto x")  # an IPv4 address in an IPv6 set
    with pytest.raises(ValueError):
        SETS["svc4"].check((*key, 0), "goto x")  # arity
    with pytest.raises(ValueError):
        SETS["be4"].check((*key, 0), "goto x")  # be4 data is (address, port)
    with pytest.raises(ValueError):
        SETS["restricted4"].check((*key[:2], 70000))  # not a port
    SETS["allow4"].check((*key, ipaddress.ip_network("192.0.2.0/25")))  # networks in interval sets only
    with pytest.raises(ValueError):
        SETS["restricted4"].check((ipaddress.ip_network("192.0.2.0/25"), *key[1:]))


def test_derived_set_lists() -> None:
    assert set(layout.NETLINK_BULK_SETS) <= set(layout.NETLINK_INCREMENT_SETS)
    assert not any(SETS[n].interval for n in layout.NETLINK_INCREMENT_SETS)
    assert set(CODECS) == set(layout.NETLINK_INCREMENT_SETS)
    shards = range(layout.COUNTER_SHARDS)
    assert [s.name for s in layout.COUNTER_SETS] == [
        f"{kind}{f}_{i}" for f in (4, 6) for kind in ("flows", "replies", "conns") for i in shards]
    assert [(s.role, s.shard) for s in layout.COUNTER_SETS if s.family == 6] == [
        (role, i) for role in (Role.FLOWS, Role.REPLIES, Role.CONNS) for i in shards]
    assert layout.FAMILY_SETS[6].replies == tuple(f"replies6_{i}" for i in shards)
    assert all(Flag.COUNTER in s.flags for s in layout.COUNTER_SETS)
    assert layout.GENERATION.role is Role.GENERATION
    # the engine keeps no list of its own
    assert not hasattr(engine, "ELEMENT_SETS") and not hasattr(engine, "BULK_SETS")
    for family, names in layout.FAMILY_SETS.items():
        fields = [getattr(names, f) for f in names.__slots__]
        every = [n for v in fields for n in (v if isinstance(v, tuple) else (v,))]
        assert {SETS[n].family for n in every} == {family}


@pytest.mark.parametrize("name", layout.NETLINK_INCREMENT_SETS)
def test_netlink_codec_round_trip(name: str) -> None:
    rs = compile_ruleset(everything_state())
    items = list(rs.elements.get(name, {}).items())
    if name == layout.GENERATION.name:
        items = [((0,), None), ((7,), None), ((2**32 - 1,), None)]
    if not items and SETS[name].shard is not None:  # shards share their layout: any filled one's elements
        items = next(list(e.items()) for n, e in rs.elements.items()
                     if e and SETS[n].role is SETS[name].role and SETS[n].family == SETS[name].family)
    assert items, f"no sample elements for {name}"
    codec = CODECS[name]()
    for key, data in items:
        assert codec.decode(codec.encode(key, data)) == (key, data)
        assert codec.decode(codec.encode_key(key)) == (key, None)
        assert codec.decode_key(codec.encode_key(key)[12:]) == key


def test_netlink_codec_refuses_interval_sets_and_bad_elements() -> None:
    with pytest.raises(ValueError):
        ElementCodec(SETS["allow4"])
    codec = CODECS["be4"]()
    with pytest.raises(ValueError):
        codec.encode((ip("203.0.113.1"), Protocol.TCP, 80), (ip("198.51.100.1"), 8080))  # 3 of 4 fields
    with pytest.raises(ValueError):
        codec.encode((ip("203.0.113.1"), Protocol.TCP, 80, 0), "goto x")


def test_field_text_parses_back() -> None:
    samples: dict[FieldType, list[object]] = {
        FieldType.IPV4_ADDR: [ip("198.51.100.1"), ipaddress.ip_network("192.0.2.0/25")],
        FieldType.IPV6_ADDR: [ip("2001:db8::1"), ipaddress.ip_network("2001:db8:1::/64")],
        FieldType.INET_PROTO: list(Protocol),
        FieldType.INET_SERVICE: [1, 80, 65535],
        FieldType.MARK: [0, 7],
        FieldType.U32: [0, 255],
    }
    assert set(samples) == set(FieldType)
    for ftype, values in samples.items():
        for v in values:
            assert ftype.parse(FieldType.text(v)) == v  # type: ignore[arg-type]


def test_element_text() -> None:
    key = (ip("203.0.113.10"), Protocol.TCP, 80, 0)
    assert list(element_texts([(key, (ip("198.51.100.11"), 8080)), (key[:3], "drop"), ((1,), None)])) == [
        "203.0.113.10 . tcp . 80 . 0 : 198.51.100.11 . 8080", "203.0.113.10 . tcp . 80 : drop", "1"]


def test_counter_json_reader_follows_the_layout() -> None:
    elem = {"elem": {"val": {"concat": ["2001:db8:100:0::1", "udp", "2001:db8:2::12", 53]},
                     "counter": {"packets": 3, "bytes": 120}}}
    counters = parse_table([{"table": {}}, {"set": {"name": "flows6_2", "elem": [elem]}},
                            {"set": {"name": "replies6_2", "elem": [elem]}},
                            {"set": {"name": "conns6_2", "elem": [elem]}},
                            {"set": {"name": "generation", "elem": [4]}},
                            {"set": {"name": "fullnat6", "elem": [elem]}}])
    key = ("2001:db8:100::1", "udp", "2001:db8:2::12", 53)
    assert counters.generation == 4
    # both directions together (status), new connections apart
    assert counters.flows[key].bytes == 240 and counters.new_connections == {key: 3}


def test_fake_takes_netlink_elements_for_netlink_sets_only() -> None:
    nft = FakeNft()
    nft.apply(compile_full(example_state()))
    with pytest.raises(KeyError):
        nft.apply_elements([], [("allow4", [((ip("203.0.113.1"), Protocol.TCP, 80,
                                               ipaddress.ip_network("192.0.2.0/24")), None)])])


def test_a_netlink_batch_splits_large_element_lists_below_the_attribute_limit() -> None:
    """1,021 IPv6 backend-map elements (a Maglev table) are about 69 KiB: more than one nested
    attribute's u16 length can say, so the batch splits them by bytes, not only by count."""
    from gatelb.kernel.nlelements import MESSAGE_BYTES, build_batch

    v6 = ipaddress.ip_address("2001:db8::10")
    items = [((v6, Protocol.TCP, 80, slot), (ipaddress.ip_address("2001:db8:2::11"), 8080)) for slot in range(1021)]
    batch, acks = build_batch("gatelb", {"be6": items})
    size = len(CODECS["be6"]().encode(*items[0]))
    assert size * len(items) > 65535 > MESSAGE_BYTES
    assert acks == 2 and len(batch) < 2 * 65535  # two messages, each below the limit


def test_counter_shard_is_what_the_rules_pick() -> None:
    """The forward hook's vmap sends `backend & mask` to count{f}_{s}/reply{f}_{s}, whose rules
    update shard s's sets: the compiler must put each backend's elements in that same shard."""
    from gatelb.dataplane.render import BASE_CHAINS, REGULAR_CHAINS

    rules = BASE_CHAINS["forward_counters"][1]
    for f, addresses in ((4, ("198.51.100.11", "198.51.100.32", "198.51.100.255")),
                         (6, ("2001:db8:2::12", "2001:db8::ffff", "2001:db8::"))):
        ip_kw = "ip" if f == 4 else "ip6"
        mask = ipaddress.ip_address(layout.shard_value(f, layout.COUNTER_SHARDS - 1))
        as_address = ipaddress.IPv4Address if f == 4 else ipaddress.IPv6Address
        for direction, field, chain in (("original", "daddr", "count"), ("reply", "saddr", "reply")):
            rule = next(r for r in rules if f"direction {direction} {ip_kw} {field} & {mask} vmap" in r)
            for text in addresses:
                address = ipaddress.ip_address(text)
                shard_address = as_address(int(address) & int(mask))
                assert f"{shard_address} : goto {chain}{f}_{layout.counter_shard(address)}" in rule
                s = layout.counter_shard(address)
                names = layout.FAMILY_SETS[f]
                sets = [names.conns[s], names.flows[s]] if chain == "count" else [names.replies[s]]
                assert [r.rsplit("@", 1)[1] for r in REGULAR_CHAINS[f"{chain}{f}_{s}"]] == sets
