"""The record planner (desired record sets vs what we own), the records wanted from a synced
state, and the UPDATE message the change set becomes (prerequisites included)."""

from __future__ import annotations

import ipaddress

from gatelb.dns.planner import Op, Owned, plan
from gatelb.dns.records import RRSet, Wanted, desired_records, owner_of, txt_name, txt_text
from gatelb.dns.rfc2136 import build_update
from gatelb.model import Backend, DNSProvider, LoadBalancer, ObjectRef, Protocol, Service, SyncedState
from gatelb.sources.schema_dns import parse_dns_provider

ZONE = "lb.example."
WEB = ("web.lb.example.", "A")
REF = (ObjectRef("L4LB", "web"),)


def want(key: tuple[str, str], *ips: str, ttl: int = 30, resource: str = "l4lb/web") -> Wanted:
    return Wanted(RRSet(key[0], key[1], tuple(sorted(ips)), ttl), resource, REF)


def owned(key: tuple[str, str], *ips: str, ttl: int = 30, resource: str = "l4lb/web", owner: str = "edge-1") -> Owned:
    rr = RRSet(key[0], key[1], tuple(sorted(ips)), ttl) if ips else None
    return Owned(rr, (txt_name(key), txt_text(owner, resource)))


def test_txt_registry_format_is_external_dns() -> None:
    assert txt_name(WEB) == "a-web.lb.example."
    assert txt_name(("web.lb.example.", "AAAA")) == "aaaa-web.lb.example."
    text = txt_text("edge-1", "service/default/web")
    assert text == "heritage=external-dns,external-dns/owner=edge-1,external-dns/resource=service/default/web"
    assert owner_of(text) == "edge-1"
    assert owner_of("v=spf1 -all") is None and owner_of("heritage=other,external-dns/owner=x") is None


def test_plan_creates_updates_deletes_and_keeps_conflicts() -> None:
    api, old, taken = ("api.lb.example.", "A"), ("old.lb.example.", "A"), ("taken.lb.example.", "A")
    desired = {WEB: want(WEB, "203.0.113.20"), api: want(api, "203.0.113.11", resource="l4lb/api"),
               taken: want(taken, "203.0.113.12", resource="l4lb/taken")}
    have = {WEB: owned(WEB, "203.0.113.10"), old: owned(old, "203.0.113.9", resource="l4lb/old")}
    cs = plan(ZONE, "edge-1", desired, have, {taken: "exists without our ownership record"})
    assert [str(c) for c in cs.changes] == [
        "create api.lb.example. A 203.0.113.11",
        "update web.lb.example. A 203.0.113.20",
        "delete old.lb.example. A",
    ]
    assert [str(c) for c in cs.conflicts] == [
        "taken.lb.example. A: exists without our ownership record; not changed (wanted by L4LB web)"]
    update = cs.changes[1]
    assert update.proof == (txt_name(WEB), txt_text("edge-1", "l4lb/web"))


def test_plan_is_empty_when_everything_matches_and_repairs_what_differs() -> None:
    assert plan(ZONE, "edge-1", {WEB: want(WEB, "203.0.113.10")}, {WEB: owned(WEB, "203.0.113.10")}, {}).changes == ()
    # TTL, a missing record set (deleted behind our back) and an adopted TXT all need an update
    for have in (owned(WEB, "203.0.113.10", ttl=60), owned(WEB), owned(WEB, "203.0.113.10", resource="service/x/y")):
        (change,) = plan(ZONE, "edge-1", {WEB: want(WEB, "203.0.113.10")}, {WEB: have}, {}).changes
        assert change.op is Op.UPDATE and change.proof == have.proof


def test_update_message_prerequisites_protect_what_is_not_ours() -> None:
    api = ("api.lb.example.", "A")
    cs = plan(ZONE, "edge-1", {WEB: want(WEB, "203.0.113.20"), api: want(api, "203.0.113.11", resource="l4lb/api")},
              {WEB: owned(WEB, "203.0.113.10"), ("old.lb.example.", "A"): owned(("old.lb.example.", "A"), "1.2.3.4",
                                                                                  resource="l4lb/old")}, {})
    text = build_update(ZONE, cs.changes).to_text()
    prereq, update = text.split(";PREREQ\n")[1].split(";UPDATE\n")
    assert prereq.splitlines() == [
        "api.lb.example. NONE A",
        "api.lb.example. NONE CNAME",
        "a-api.lb.example. NONE TXT",
        'a-web.lb.example. 0 IN TXT "heritage=external-dns,external-dns/owner=edge-1,external-dns/resource=l4lb/web"',
        'a-old.lb.example. 0 IN TXT "heritage=external-dns,external-dns/owner=edge-1,external-dns/resource=l4lb/old"',
    ]
    assert update.split(";ADDITIONAL")[0].splitlines() == [
        "api.lb.example. 30 IN A 203.0.113.11",
        'a-api.lb.example. 30 IN TXT "heritage=external-dns,external-dns/owner=edge-1,external-dns/resource=l4lb/api"',
        "web.lb.example. ANY A",
        "web.lb.example. 30 IN A 203.0.113.20",
        "a-web.lb.example. ANY TXT",
        'a-web.lb.example. 30 IN TXT "heritage=external-dns,external-dns/owner=edge-1,external-dns/resource=l4lb/web"',
        "old.lb.example. ANY A",
        "a-old.lb.example. ANY TXT",
    ]


def _state(lbs: list[LoadBalancer], served: set[str], origins: dict[str, ObjectRef]) -> SyncedState:
    addresses = {lb.name: lb.frontend_ip for lb in lbs if lb.frontend_ip}
    services = {n: Service(n, addresses[n], Protocol.TCP, 80, (Backend(ipaddress.ip_address("198.51.100.11"), 80),))
                for n in served}
    return SyncedState(1, {lb.name: lb for lb in lbs}, origins, addresses, (), {}, services, {})  # type: ignore[arg-type]


def test_desired_records_join_families_and_ports_and_skip_what_is_not_served() -> None:
    ip = ipaddress.ip_address
    p = DNSProvider("lab", zone=ZONE, ttl=30, owner_id="edge-1")
    svc = ObjectRef("Service", "default/web")
    lbs = [LoadBalancer("web-tcp-80-v4", 80, frontend_ip=ip("203.0.113.10"), hostnames=("web.lb.example",)),
           LoadBalancer("web-tcp-443-v4", 443, frontend_ip=ip("203.0.113.10"), hostnames=("web.lb.example",),
                        dns_ttl=10),
           LoadBalancer("web-v6", 80, frontend_ip=ip("2001:db8:100::1"), hostnames=("web.lb.example",), family=6),
           LoadBalancer("idle", 80, frontend_ip=ip("203.0.113.11"), hostnames=("idle.lb.example",)),
           LoadBalancer("elsewhere", 80, frontend_ip=ip("203.0.113.12"), hostnames=("x.other.example",))]
    state = _state(lbs, {"web-tcp-80-v4", "web-tcp-443-v4", "web-v6", "elsewhere"},
                   {n: svc for n in ("web-tcp-80-v4", "web-tcp-443-v4", "web-v6")})
    desired, problems = desired_records(state, {"lab": p})
    assert desired["lab"] == {
        WEB: Wanted(RRSet(*WEB, ("203.0.113.10",), 10), "service/default/web", (svc,)),
        ("web.lb.example.", "AAAA"): Wanted(RRSet("web.lb.example.", "AAAA", ("2001:db8:100::1",), 30),
                                            "service/default/web", (svc,)),
    }
    assert [str(x) for x in problems] == [
        "L4LB elsewhere: hostname x.other.example is in no DNSProvider's zone (lb.example.); no record"]


def test_provider_documents_name_object_and_field() -> None:
    def errors(spec: dict[str, object]) -> list[tuple[str, str]]:
        return parse_dns_provider({"apiVersion": "gatelb.io/v1alpha1", "kind": "DNSProvider",
                                   "metadata": {"name": "lab"}, "spec": spec})[1]

    base = {"server": "198.51.100.53", "zone": ZONE, "tsigKeyName": "gatelb", "tsigSecret": "c2VjcmV0c2VjcmV0"}
    assert errors({"rfc2136": base}) == []
    assert errors({"route53": {}}) == [("spec.route53", "unknown provider (supported: rfc2136)")]
    assert errors({"rfc2136": {**base, "tsigSecret": "x"}}) == [
        ("spec.rfc2136.tsigSecret", "malformed key: not base64 (tsig-keygen and keymgr print the secret in base64)")]
    assert errors({"rfc2136": {**base, "server": "198.51.100.53:0"}}) == [
        ("spec.rfc2136.server", "'198.51.100.53:0': 0 is not a port (1-65535)")]
    assert errors({"rfc2136": {**base, "tsigSecretFile": "/k"}})[0][0] == "spec.rfc2136.tsigSecret"
    obj, _ = parse_dns_provider({"apiVersion": "gatelb.io/v1alpha1", "kind": "DNSProvider", "metadata": {"name": "lab"},
                                 "spec": {"rfc2136": {**base, "servers": ["[2001:db8::53]:5353", "ns2.lb.example"]}}})
    assert isinstance(obj, DNSProvider)
    assert obj.servers == (("198.51.100.53", 53), ("2001:db8::53", 5353), ("ns2.lb.example", 53))
