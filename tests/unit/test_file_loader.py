"""File source loader: mapping onto the model, and the exact wording of every error."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatelb.ipam.lb import allocate
from gatelb.model import (
    AddressRange,
    Affinity,
    Algorithm,
    Backend,
    CheckType,
    HealthCheck,
    LBState,
    NatMode,
    NoBackendAction,
    Protocol,
    ValidationErrors,
)
from gatelb.resolve import resolve
from gatelb.sources.file import loader
from gatelb.sources.file.loader import load_file, load_text
from gatelb.sources.schema import IPPoolDocument, L4LBDocument

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.yaml"
API = "gatelb.io/v1alpha1"


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def pool(name: str = "public", *addresses: str, **spec: Any) -> dict[str, Any]:
    spec = {"addresses": list(addresses) or ["203.0.113.0/28"], **spec}
    return {"apiVersion": API, "kind": "IPPool", "metadata": {"name": name}, "spec": spec}


def lb(name: str = "web", **spec: Any) -> dict[str, Any]:
    spec.setdefault("frontend", {"ip": "203.0.113.10", "port": 80})
    spec.setdefault("backend", ["198.51.100.11:8080"])
    return {"apiVersion": API, "kind": "L4LB", "metadata": {"name": name}, "spec": spec}


def text_of(*docs: Any) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def errors_of_text(text: str) -> list[str]:
    with pytest.raises(ValidationErrors) as info:
        load_text(text, "test.yaml")
    messages = [str(e) for e in info.value.errors]
    for m in messages:  # pydantic's own wording and links never reach the user
        assert "Input should" not in m and "pydantic" not in m and "https://" not in m
    return messages


def errors_of(*docs: Any) -> list[str]:
    return errors_of_text(text_of(*docs))


def the_lb(*docs: Any) -> Any:
    state = load_text(text_of(pool(), *docs))
    assert len(state.load_balancers) == 1
    return state.load_balancers[0]


# --- valid input ------------------------------------------------------------------------------


def test_defaults() -> None:
    got = the_lb(lb())
    assert got.name == "web"
    assert (got.frontend_ip, got.port, got.protocol) == (ip("203.0.113.10"), 80, Protocol.TCP)
    assert got.backends == (Backend(ip("198.51.100.11"), 8080),)
    assert got.state is LBState.ACTIVE and got.algorithm is Algorithm.RANDOM
    assert got.nat is NatMode.DNAT and got.no_backend is NoBackendAction.REJECT
    assert got.affinity is None and got.source_ranges == () and got.pool is None
    assert got.check == HealthCheck(type=CheckType.TCP)
    assert got.family == 4


def test_udp_defaults_to_no_check() -> None:
    assert the_lb(lb(protocol="udp")).check.type is CheckType.NONE


def test_every_field_is_mapped() -> None:
    got = the_lb(
        lb(
            state="disable",
            protocol="udp",
            frontend={"port": 53},
            pool="public",
            backend=[
                "[2001:db8:2::11]:53",
                {"address": "2001:db8:2::12", "port": 5353, "weight": 3, "drain": True},
            ],
            algorithm="sourcehash",
            sessionAffinity={"type": "ClientIP", "timeoutSeconds": 60},
            sourceRanges=["2001:db8:3::/48"],
            nat="fullnat",
            noBackend="drop",
            check={
                "type": "udp",
                "timeout": 100,
                "interval": 200,
                "rise": 4,
                "fall": 5,
                "port": 54,
                "payload": "ping",
                "expect": "pong",
            },
        )
    )
    assert got.state is LBState.DISABLE and not got.active
    assert got.frontend_ip is None and got.family == 6 and got.pool == "public"
    assert got.backends == (Backend(ip("2001:db8:2::11"), 53), Backend(ip("2001:db8:2::12"), 5353, 3, True))
    assert got.algorithm is Algorithm.SOURCEHASH and got.affinity == Affinity(60)
    assert got.source_ranges == (ipaddress.ip_network("2001:db8:3::/48"),)
    assert got.nat is NatMode.FULLNAT and got.no_backend is NoBackendAction.DROP
    assert got.check == HealthCheck(CheckType.UDP, 54, 200, 100, 4, 5, payload="ping", expect="pong")


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ("200-399", ((200, 399),)),
        ("200,204,300-399", ((200, 200), (204, 204), (300, 399))),
        (204, ((204, 204),)),
    ],
)
def test_http_check_and_expected_statuses(statuses: object, expected: object) -> None:
    check = {"type": "http", "requestPath": "/healthz", "host": "x.example", "expectedStatuses": statuses}
    got = the_lb(lb(check=check)).check
    assert (got.type, got.request_path, got.host, got.expected_statuses) == (
        CheckType.HTTP,
        "/healthz",
        "x.example",
        expected,
    )


def test_affinity_type_none_means_no_affinity() -> None:
    assert the_lb(lb(sessionAffinity={"type": "None", "timeoutSeconds": 60})).affinity is None
    assert the_lb(lb(sessionAffinity={"type": "ClientIP"})).affinity == Affinity(10800)


def test_pool_mapping() -> None:
    state = load_text(
        text_of(
            pool(
                "public",
                "203.0.113.0/28",
                "203.0.113.100-203.0.113.110",
                "2001:db8:100::/124",
                "203.0.113.50",
                autoAssign=False,
                avoidBuggyIPs=True,
            )
        )
    )
    (p,) = state.pools
    assert p.ranges == (
        AddressRange(ip("203.0.113.0"), ip("203.0.113.15")),
        AddressRange(ip("203.0.113.100"), ip("203.0.113.110")),
        AddressRange(ip("2001:db8:100::"), ip("2001:db8:100::f")),
        AddressRange(ip("203.0.113.50"), ip("203.0.113.50")),
    )
    assert not p.auto_assign and p.avoid_buggy_ips


def test_family_from_ipfamily_and_from_backends() -> None:
    assert the_lb(lb(frontend={"port": 80, "ipFamily": "IPv6"}, backend=[])).family == 6
    assert the_lb(lb(frontend={"port": 80}, backend=["[2001:db8:2::1]:80"])).family == 6
    assert the_lb(lb(frontend={"port": 80}, backend=[])).family == 4


def test_empty_documents_and_null_lists() -> None:
    assert load_text("") == load_text("---\n---\n")
    text = "---\n" + text_of(pool()) + "---\n---\n" + text_of(lb(backend=None, sourceRanges=None))
    (got,) = load_text(text).load_balancers
    assert got.backends == () and got.source_ranges == ()


def test_output_is_sorted_by_name_whatever_the_file_order() -> None:
    state = load_text(text_of(lb("b", frontend={"port": 1}), pool("z", "203.0.113.64/28"), lb("a"), pool()))
    assert [x.name for x in state.load_balancers] == ["a", "b"]
    assert [x.name for x in state.pools] == ["public", "z"]


def test_example_file_loads_allocates_and_resolves() -> None:
    state = load_file(EXAMPLE)
    assert {x.name for x in state.load_balancers} == {"web", "web-tls", "dns", "api-v6", "db"}
    by = {x.name: x for x in state.load_balancers}
    assert by["dns"].protocol is Protocol.UDP and by["api-v6"].family == 6 and by["db"].nat is NatMode.FULLNAT
    assert by["web-tls"].algorithm is Algorithm.ROUNDROBIN and by["api-v6"].affinity is not None
    allocation = allocate(state, {})
    assert allocation.addresses["web"] == allocation.addresses["web-tls"] == ip("203.0.113.10")
    assert allocation.addresses["api-v6"].version == 6 and allocation.pool_of["dns"] == "reserved"
    services = resolve(state, allocation).by_name()
    assert [b.address for b in services["web-tls"].idle_backends] == [ip("198.51.100.13")]


def test_load_file_reads_utf8_and_refuses_other_bytes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(text_of(pool(), lb()))
    assert len(load_file(good).load_balancers) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ValidationErrors, match=r"bad.yaml: not UTF-8 text"):
        load_file(bad)


# --- per-field errors: exact messages ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"frontend": {"ip": "203.0.113.10", "port": 70000}},
            "L4LB web: spec.frontend.port: 70000 is not a port (1-65535)",
        ),
        (
            {"frontend": {"ip": "203.0.113.10", "port": 0}},
            "L4LB web: spec.frontend.port: 0 is not a port (1-65535)",
        ),
        (
            {"frontend": {"ip": "203.0.113.10", "port": "80"}},
            "L4LB web: spec.frontend.port: expected an integer, got '80'",
        ),
        (
            {"frontend": {"ip": "203.0.113.x", "port": 80}},
            "L4LB web: spec.frontend.ip: '203.0.113.x' is not an IP address",
        ),
        ({"frontend": {"ip": "203.0.113.10"}}, "L4LB web: spec.frontend.port: required"),
        (
            {"frontend": {"port": 80, "ipFamily": "ipv6"}},
            "L4LB web: spec.frontend.ipFamily: 'ipv6' is not one of IPv4, IPv6",
        ),
        (
            {"backend": ["198.51.100.11:8080", {"address": "198.51.100.x", "port": 8080}]},
            "L4LB web: spec.backend[1].address: '198.51.100.x' is not an IP address",
        ),
        (
            {"backend": [{"address": "198.51.100.12", "port": 8080, "weight": 1001}]},
            "L4LB web: spec.backend[0].weight: 1001 is not a weight (0-1000)",
        ),
        (
            {"backend": [{"address": "198.51.100.12", "port": 8080, "weight": -1}]},
            "L4LB web: spec.backend[0].weight: -1 is not a weight (0-1000)",
        ),
        (
            {"backend": [{"address": "198.51.100.12", "port": 65536}]},
            "L4LB web: spec.backend[0].port: 65536 is not a port (1-65535)",
        ),
        ({"backend": [{"address": "198.51.100.12"}]}, "L4LB web: spec.backend[0].port: required"),
        (
            {"backend": [{"address": "198.51.100.12", "port": 80, "drain": "yes"}]},
            "L4LB web: spec.backend[0].drain: expected true or false, got 'yes'",
        ),
        (
            {"backend": [{"address": "198.51.100.12", "port": 80, "colour": 1}]},
            "L4LB web: spec.backend[0].colour: unknown field",
        ),
        (
            {"backend": ["198.51.100.11:70000"]},
            "L4LB web: spec.backend[0]: '198.51.100.11:70000': 70000 is not a port (1-65535)",
        ),
        (
            {"backend": ["198.51.100.11:http"]},
            "L4LB web: spec.backend[0]: '198.51.100.11:http': 'http' is not a port (1-65535)",
        ),
        ({"backend": ["198.51.100.11"]}, "L4LB web: spec.backend[0]: '198.51.100.11' is not ip:port"),
        (
            {"backend": ["198.51.100.x:80"]},
            "L4LB web: spec.backend[0]: '198.51.100.x:80': '198.51.100.x' is not an IP address",
        ),
        (
            {"backend": ["2001:db8:2::1:80"]},
            "L4LB web: spec.backend[0]: '2001:db8:2::1:80' is not ip:port (write IPv6 backends as "
            "[address]:port)",
        ),
        ({"backend": [8080]}, "L4LB web: spec.backend[0]: expected 'ip:port' or {address, port}, got 8080"),
        (
            {"backend": "198.51.100.11:8080"},
            "L4LB web: spec.backend: expected a list, got '198.51.100.11:8080'",
        ),
        ({"state": "enabled"}, "L4LB web: spec.state: 'enabled' is not one of active, disable"),
        ({"protocol": "Tcp"}, "L4LB web: spec.protocol: 'Tcp' is not one of tcp, udp"),  # TCP and UDP are accepted
        (
            {"algorithm": "leastconn"},
            "L4LB web: spec.algorithm: 'leastconn' is not one of random, roundrobin, sourcehash, maglev",
        ),
        ({"nat": "snat"}, "L4LB web: spec.nat: 'snat' is not one of dnat, fullnat"),
        ({"noBackend": "ignore"}, "L4LB web: spec.noBackend: 'ignore' is not one of reject, drop"),
        (
            {"sessionAffinity": {"type": "ClientIP", "timeoutSeconds": 0}},
            "L4LB web: spec.sessionAffinity.timeoutSeconds: 0 is out of range (1-86400 seconds)",
        ),
        (
            {"sessionAffinity": {"type": "ClientIP", "timeoutSeconds": 86401}},
            "L4LB web: spec.sessionAffinity.timeoutSeconds: 86401 is out of range (1-86400 seconds)",
        ),
        (
            {"sessionAffinity": {"timeoutSeconds": 60}},
            "L4LB web: spec.sessionAffinity.type: required with timeoutSeconds (ClientIP or None)",
        ),
        (
            {"sessionAffinity": {"type": "clientip"}},
            "L4LB web: spec.sessionAffinity.type: 'clientip' is not one of ClientIP, None",
        ),
        (
            {"sourceRanges": ["192.0.2.1/24"]},
            "L4LB web: spec.sourceRanges[0]: '192.0.2.1/24' has host bits set (did you mean 192.0.2.0/24?)",
        ),
        (
            {"sourceRanges": ["192.0.2.0/33"]},
            "L4LB web: spec.sourceRanges[0]: '192.0.2.0/33' is not a CIDR (address/prefix length)",
        ),
        (
            {"pool": "Public_1"},
            "L4LB web: spec.pool: 'Public_1' is not a valid name (lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters)",
        ),
        ({"colour": "red"}, "L4LB web: spec.colour: unknown field"),
        ({"check": {"timeout": 9}}, "L4LB web: spec.check.timeout: 9 is out of range (10-3600000 ms)"),
        ({"check": {"interval": 5}}, "L4LB web: spec.check.interval: 5 is out of range (10-3600000 ms)"),
        ({"check": {"rise": 0}}, "L4LB web: spec.check.rise: 0 is out of range (1-100)"),
        ({"check": {"fall": 101}}, "L4LB web: spec.check.fall: 101 is out of range (1-100)"),
        ({"check": {"port": 0}}, "L4LB web: spec.check.port: 0 is not a port (1-65535)"),
        ({"check": {"type": "icmp"}}, "L4LB web: spec.check.type: 'icmp' is not one of tcp, http, udp, none"),
        (
            {"check": {"type": "http", "expectedStatuses": "2xx"}},
            "L4LB web: spec.check.expectedStatuses: '2xx' is not a list of HTTP status codes (like 200-399 "
            "or 200,204)",
        ),
        (
            {"check": {"type": "http", "expectedStatuses": "399-200"}},
            "L4LB web: spec.check.expectedStatuses: '399-200' is not a list of HTTP status codes (like "
            "200-399 or 200,204)",
        ),
        (
            {"check": {"type": "http", "expectedStatuses": 600}},
            "L4LB web: spec.check.expectedStatuses: '600' is not a list of HTTP status codes (like 200-399 "
            "or 200,204)",
        ),
        (
            {"check": {"type": "http", "requestPath": "healthz"}},
            "L4LB web: spec.check.requestPath: 'healthz' must start with /",
        ),
        (
            {"check": {"requestPath": "/healthz"}},
            "L4LB web: spec.check.requestPath: only used by http checks (spec.check.type is tcp)",
        ),
        (
            {"check": {"type": "http", "payload": "x"}},
            "L4LB web: spec.check.payload: only used by udp checks (spec.check.type is http)",
        ),
        (
            {"check": {"type": "udp"}},
            "L4LB web: spec.check.type: a udp check needs a udp L4LB (spec.protocol is tcp)",
        ),
        (
            {"frontend": {"ip": "203.0.113.10", "port": 80, "ipFamily": "IPv6"}},
            "L4LB web: spec.frontend.ipFamily: IPv6 does not match spec.frontend.ip 203.0.113.10",
        ),
        (
            {"frontend": {"port": 80}, "backend": ["198.51.100.11:80", "[2001:db8:2::1]:80"]},
            "L4LB web: spec.backend[1].address: 2001:db8:2::1 is IPv6, but the L4LB is IPv4 (one address "
            "family per L4LB)",
        ),
        (
            {"backend": ["[2001:db8:2::1]:80"]},
            "L4LB web: spec.backend[0].address: 2001:db8:2::1 is IPv6, but the L4LB is IPv4 (one address "
            "family per L4LB)",
        ),
        (
            {"sourceRanges": ["2001:db8:3::/48"]},
            "L4LB web: spec.sourceRanges[0]: 2001:db8:3::/48 is IPv6, but the L4LB is IPv4",
        ),
        (
            {"backend": ["198.51.100.11:80", {"address": "198.51.100.11", "port": 80, "weight": 2}]},
            "L4LB web: spec.backend[1]: 198.51.100.11:80 is listed twice (also spec.backend[0])",
        ),
        ({"pool": "private"}, "L4LB web: spec.pool: unknown IPPool 'private'"),
    ],
)
def test_l4lb_field_errors(spec: dict[str, Any], message: str) -> None:
    assert errors_of(pool(), lb(**spec)) == [message]


def test_udp_check_without_payload_is_fine() -> None:
    got = the_lb(lb(protocol="udp", check={"type": "udp"}))
    assert got.check.type is CheckType.UDP and got.check.payload is None


def test_weight_zero_is_accepted() -> None:
    got = the_lb(lb(backend=[{"address": "198.51.100.11", "port": 80, "weight": 0}]))
    assert got.backends[0].weight == 0


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        (
            ["203.0.113.10-203.0.113.1"],
            "IPPool public: spec.addresses[0]: '203.0.113.10-203.0.113.1': the start is after the end",
        ),
        (
            ["203.0.113.1-2001:db8:100::1"],
            "IPPool public: spec.addresses[0]: '203.0.113.1-2001:db8:100::1' mixes IPv4 and IPv6",
        ),
        (
            ["203.0.113.1/28"],
            "IPPool public: spec.addresses[0]: '203.0.113.1/28' has host bits set (did you mean "
            "203.0.113.0/28?)",
        ),
        (
            ["203.0.113.1-x"],
            "IPPool public: spec.addresses[0]: '203.0.113.1-x' is not an address range (first-last)",
        ),
        (
            ["pool"],
            "IPPool public: spec.addresses[0]: 'pool' is not a CIDR, a range (first-last) or an address",
        ),
        ([], "IPPool public: spec.addresses: needs at least 1 entry"),
        (
            ["203.0.113.0/28", "203.0.113.8-203.0.113.20"],
            "IPPool public: spec.addresses[1]: 203.0.113.8-203.0.113.20 overlaps spec.addresses[0] "
            "(203.0.113.0/28)",
        ),
    ],
)
def test_pool_errors(addresses: list[str], message: str) -> None:
    doc = pool()
    doc["spec"]["addresses"] = addresses
    assert errors_of(doc) == [message]


def test_pool_type_errors() -> None:
    assert errors_of(pool(autoAssign="yes"), pool("other", "203.0.113.64/28", avoidBuggyIps=True)) == [
        "IPPool public: spec.autoAssign: expected true or false, got 'yes'",
        "IPPool other: spec.avoidBuggyIps: unknown field, did you mean 'avoidBuggyIPs'?",
    ]


def test_overlapping_pools() -> None:
    assert errors_of(pool("a", "203.0.113.0/28"), pool("b", "203.0.113.64/28", "203.0.113.15")) == [
        "IPPool b: spec.addresses[1]: 203.0.113.15 overlaps IPPool a (203.0.113.0/28)"
    ]
    # Same family only: an IPv6 range never overlaps an IPv4 one.
    load_text(text_of(pool("a", "203.0.113.0/28"), pool("b", "2001:db8:100::/124")))


# --- document-level errors --------------------------------------------------------------------


def test_unknown_kind_names_the_document() -> None:
    bad = lb("x")
    bad["kind"] = "L4LBX"
    assert errors_of(pool(), lb(), bad) == [
        f"document 3: kind: unknown kind 'L4LBX' (expected {loader.kinds_text()})"
    ]


def test_document_shape_errors() -> None:
    no_kind = lb()
    del no_kind["kind"]
    assert errors_of(no_kind, ["a"], "text") == [
        f"document 1: kind: required ({loader.kinds_text()})",
        "document 2: expected a mapping with apiVersion, kind, metadata and spec, got a list",
        "document 3: expected a mapping with apiVersion, kind, metadata and spec, got 'text'",
    ]


def test_document_without_name_and_bad_api_version() -> None:
    doc = lb()
    doc["apiVersion"] = "v1"
    del doc["metadata"]
    assert errors_of(pool(), doc) == [
        "document 2: apiVersion: expected gatelb.io/v1alpha1, got 'v1'",
        "document 2: metadata: required",
    ]


def test_bad_name_and_unknown_metadata() -> None:
    doc = lb("Web")
    doc["metadata"]["namespace"] = "default"
    assert errors_of(pool(), doc) == [
        "L4LB Web: metadata.name: 'Web' is not a valid name (lowercase letters, digits, '-' and '.', "
        "starting and ending with a letter or digit, at most 253 characters)",
        "L4LB Web: metadata.namespace: unknown field",
    ]


def test_all_problems_of_all_documents_are_collected() -> None:
    messages = errors_of(
        pool(autoAssign=1),
        lb("a", frontend={"ip": "203.0.113.10", "port": 70000}),
        lb("b", backend=["nope"]),
        lb("c", pool="missing"),
    )
    assert messages == [
        "IPPool public: spec.autoAssign: expected true or false, got 1",
        "L4LB a: spec.frontend.port: 70000 is not a port (1-65535)",
        "L4LB b: spec.backend[0]: 'nope' is not ip:port",
        "L4LB c: spec.pool: unknown IPPool 'missing'",
    ]


def test_broken_pool_is_not_reported_again_as_unknown() -> None:
    assert errors_of(pool(autoAssign=1), lb(pool="public")) == [
        "IPPool public: spec.autoAssign: expected true or false, got 1"
    ]


def test_duplicate_names_per_kind() -> None:
    assert errors_of(pool(), lb(), lb(frontend={"ip": "203.0.113.10", "port": 443})) == [
        "L4LB web: metadata.name: L4LB web is already defined in document 2"
    ]
    # The same name in two kinds is fine.
    load_text(text_of(pool("web"), lb("web")))


def test_duplicate_frontend_across_active_l4lbs() -> None:
    assert errors_of(pool(), lb("a"), lb("b")) == [
        "L4LB b: spec.frontend: 203.0.113.10 tcp/80 is already used by L4LB a"
    ]
    load_text(text_of(pool(), lb("a"), lb("b", state="disable")))
    load_text(text_of(pool(), lb("a"), lb("b", protocol="udp")))
    load_text(text_of(pool(), lb("a"), lb("b", frontend={"ip": "203.0.113.10", "port": 443})))


# --- YAML syntax ------------------------------------------------------------------------------


def test_malformed_yaml_gives_one_error_with_document_and_line() -> None:
    text = text_of(pool(), lb()) + "---\nkind: L4LB\nspec:\n  frontend: {port: 80\n  backend: []\n"
    messages = errors_of_text(text)
    assert len(messages) == 1
    line = text.splitlines().index("  backend: []") + 1
    assert messages[0].startswith(f"document 3: malformed YAML at test.yaml line {line}, column ")


def test_duplicate_yaml_key_is_an_error() -> None:
    text = "kind: L4LB\nkind: IPPool\n"
    assert errors_of_text(text) == [
        "document 1: malformed YAML at test.yaml line 2, column 1: duplicate key 'kind'"
    ]


def test_schema_exports_json_schema_with_bounds_for_crds() -> None:
    schema = L4LBDocument.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    assert schema["additionalProperties"] is False
    assert defs["FrontendSpec"]["properties"]["port"]["maximum"] == 65535
    assert defs["BackendSpec"]["properties"]["weight"] == {
        "default": 1,
        "maximum": 1000,
        "minimum": 0,
        "title": "Weight",
        "type": "integer",
    }
    assert set(defs["L4LBSpec"]["properties"]) >= {"sessionAffinity", "sourceRanges", "noBackend", "check"}
    assert (
        "avoidBuggyIPs"
        in IPPoolDocument.model_json_schema(by_alias=True)["$defs"]["IPPoolSpec"]["properties"]
    )


# --- issue 13: did you mean, TCP/UDP, every error in one pass ------------------------------------


def test_unknown_fields_suggest_the_nearest_valid_one_at_that_place() -> None:
    text = text_of(lb(frontend={"ip": "203.0.113.1", "prot": 80, "port": 80}, backends=["198.51.100.1:80"],
                      check={"type": "http", "requestpath": "/x"}, bogus=1))
    assert errors_of_text(text) == [
        "L4LB web: spec.frontend.prot: unknown field, did you mean 'port'?",
        "L4LB web: spec.check.requestpath: unknown field, did you mean 'requestPath'?",
        "L4LB web: spec.backends: unknown field, did you mean 'backend'?",
        "L4LB web: spec.bogus: unknown field",
    ]


def test_tcp_and_udp_as_kubernetes_spells_them() -> None:
    for spelling, protocol in (("TCP", Protocol.TCP), ("UDP", Protocol.UDP), ("udp", Protocol.UDP)):
        text = text_of(lb(protocol=spelling))
        assert load_text(text).load_balancers[0].protocol is protocol


def test_a_yaml_syntax_error_does_not_hide_the_other_documents_errors() -> None:
    good_but_invalid = text_of(lb("a", frontend={"ip": "203.0.113.1", "port": 70000}))
    broken = "apiVersion: gatelb.io/v1alpha1\nkind: L4LB\nmetadata: {name: b\nspec: {}\n"
    also_invalid = text_of(lb("c", frontend={"ip": "127.0.0.1", "port": 80}))
    text = "---\n".join([good_but_invalid, broken, also_invalid])
    got = errors_of_text(text)
    assert got[0] == "L4LB a: spec.frontend.port: 70000 is not a port (1-65535)"
    line = 1 + good_but_invalid.count("\n") + 1 + 3  # the line after `metadata: {name: b`
    assert got[1] == f"document 2: malformed YAML at test.yaml line {line}, column 5: did not find expected ',' or '}}'"
    assert got[2].startswith("L4LB c: spec.frontend.ip: 127.0.0.1 is a loopback address")
    assert len(got) == 3
