"""The raw documents (IPPool, L4LB; DNSProvider in schema_dns.py) as pydantic models: the one schema of our API.

The standalone YAML file uses it today; the Kubernetes CRDs will be derived from it later
(`model_json_schema(by_alias=True)`), so every field is declared here with its camelCase name,
and unknown fields are rejected (`extra="forbid"`).

Values whose syntax matters (addresses, ranges, ports) are parsed right here by validators that
raise `problem(...)` with our own wording, so the error already says what is wrong in the user's
terms and `errors.py` only has to translate pydantic's structural errors (missing, unknown field,
wrong type). Range limits are also written into the JSON schema, so the API server will enforce
the same bounds.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from gatelb.model import AddressRange, IPAddress, IPNetwork
from gatelb.validate import special_address, special_range

# Tags of the two shapes a backend entry may take. They show up in pydantic's error locations and
# are dropped from the paths we print (errors.TAGS), so they must never collide with a field name.
STRING_FORM = "<ip:port>"
OBJECT_FORM = "<object>"

PORT_MIN, PORT_MAX = 1, 65535
WEIGHT_MAX = 1000
AFFINITY_MAX_S = 86400
CHECK_MS_MIN, CHECK_MS_MAX = 10, 3_600_000
RISE_FALL_MAX = 100

# Kubernetes object names (DNS-1123 subdomain), so the same names work once these are CRDs.
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_MAX = 253
_STATUS_ITEM_RE = re.compile(r"(\d{3})(?:-(\d{3}))?")


def problem(text: str) -> PydanticCustomError:
    """A validation failure whose message is already in our wording (see errors.py)."""
    return PydanticCustomError("gatelb", "{problem}", {"problem": text})


def show(value: Any) -> str:
    """How a bad input value appears in a message: strings quoted, structures by their kind."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _require_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise problem(f"expected {what} as a string, got {show(value)}")
    return value


# --- scalar parsers ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> IPAddress:
    """ipaddress.ip_address, about ten times faster for IPv4 (inet_pton does the strict parsing:
    dotted quad, no leading zeros), which matters at 100,000 backends. Raises ValueError."""
    if "%" in text:  # ipaddress accepts IPv6 zone ids; a VIP or backend never has one
        raise ValueError(text)
    if ":" not in text:
        try:
            return ipaddress.IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
        except OSError:
            raise ValueError(text) from None
    return ipaddress.ip_address(text)


def parse_ip(value: Any) -> IPAddress:
    text = _require_str(value, "an IP address")
    try:
        return _address(text)
    except ValueError:
        raise problem(f"{text!r} is not an IP address") from None


def parse_port_text(text: str, whole: str) -> int:
    if not text.isdecimal():
        raise problem(f"{whole!r}: {text!r} is not a port (1-65535)")
    port = int(text)
    if not PORT_MIN <= port <= PORT_MAX:
        raise problem(f"{whole!r}: {port} is not a port (1-65535)")
    return port


def parse_host_port(value: Any) -> tuple[IPAddress, int]:
    """'198.51.100.11:8080' or '[2001:db8:2::11]:8080'."""
    if not isinstance(value, str):
        raise problem(f"expected 'ip:port' or {{address, port}}, got {show(value)}")
    text = value
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:  # an IPv6 address without brackets: the port cannot be told apart
            raise problem(f"{text!r} is not ip:port (write IPv6 backends as [address]:port)")
    if not sep:
        raise problem(f"{text!r} is not ip:port")
    try:
        ip = _address(host)
    except ValueError:
        raise problem(f"{text!r}: {host!r} is not an IP address") from None
    return ip, parse_port_text(port, text)


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise problem(f"{text!r} is not a CIDR (address/prefix length)") from err
        raise problem(f"{text!r} has host bits set (did you mean {loose}?)") from err


def parse_cidr(value: Any) -> IPNetwork:
    return _network(_require_str(value, "a CIDR"))


def parse_vip(value: Any) -> IPAddress:
    """A load balancer's own address: any IP but loopback, unspecified, link-local, multicast,
    broadcast (validate.SPECIAL_NETWORKS)."""
    ip = parse_ip(value)
    why = special_address(ip)
    if why is not None:
        raise problem(why)
    return ip


def parse_pool_entry(value: Any) -> AddressRange:
    """A pool range without special addresses (validate.SPECIAL_NETWORKS)."""
    r = _parse_pool_entry(value)
    why = special_range(r)
    if why is not None:
        raise problem(why)
    return r


def _parse_pool_entry(value: Any) -> AddressRange:
    """'203.0.113.0/28', '203.0.113.100-203.0.113.110' or one address."""
    text = _require_str(value, "an address range").strip()
    if "-" in text:
        first_text, _, last_text = (part.strip() for part in text.partition("-"))
        try:
            first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text)
        except ValueError:
            raise problem(f"{text!r} is not an address range (first-last)") from None
        if first.version != last.version:
            raise problem(f"{text!r} mixes IPv4 and IPv6")
        if int(first) > int(last):
            raise problem(f"{text!r}: the start is after the end")
        return AddressRange(first, last)
    if "/" in text:
        net = _network(text)
        return AddressRange(net.network_address, net.broadcast_address)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise problem(f"{text!r} is not a CIDR, a range (first-last) or an address") from None
    return AddressRange(ip, ip)


def parse_statuses(value: Any) -> tuple[tuple[int, int], ...]:
    """'200-399', '200,204,300-399' or 200."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _require_str(value, "HTTP status codes")
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        m = _STATUS_ITEM_RE.fullmatch(item.strip())
        lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
        if not m or not 100 <= lo <= hi <= 599:
            raise problem(f"{text!r} is not a list of HTTP status codes (like 200-399 or 200,204)")
        ranges.append((lo, hi))
    return tuple(ranges)


_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
HOSTNAME_MAX = 253


def hostname_problem(text: str) -> str | None:
    """Why `text` (already lowercased, trailing dot removed) is not a DNS name we write, or None."""
    labels = text.split(".")
    if labels and labels[0] == "*":  # a wildcard record (*.apps.lb.example), as external-dns allows
        labels = labels[1:]
    if not text or len(text) > HOSTNAME_MAX or len(labels) < 2 or not all(_LABEL_RE.fullmatch(x) for x in labels):
        return (f"{text!r} is not a valid DNS name (dot-separated labels of letters, digits and '-', "
                f"1-63 characters each, at least two labels, at most {HOSTNAME_MAX} characters)")
    return None


def normal_hostname(text: str) -> str:
    return text.strip().lower().removesuffix(".")


def parse_hostname(value: Any) -> str:
    name = normal_hostname(_require_str(value, "a DNS name"))
    why = hostname_problem(name)
    if why:
        raise problem(why)
    return name


def _check_name(value: str) -> str:
    if len(value) > _NAME_MAX or not _NAME_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a valid name (lowercase letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most {_NAME_MAX} characters)"
        )
    return value


def _ranged(lo: int, hi: int, what: str | None, unit: str = "") -> Any:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            bounds = f"({lo}-{hi}{unit})"
            raise problem(f"{value} is not {what} {bounds}" if what else f"{value} is out of range {bounds}")
        return value

    return AfterValidator(check)


def _bounds(lo: int, hi: int) -> Any:
    return Field(json_schema_extra={"minimum": lo, "maximum": hi})


def _none_is_empty(value: Any) -> Any:
    # `backend:` with every entry commented out is YAML null; mean "no entries", not a type error.
    return [] if value is None else value


# --- annotated field types --------------------------------------------------------------------

Name = Annotated[str, AfterValidator(_check_name), Field(json_schema_extra={"maxLength": _NAME_MAX})]
Port = Annotated[int, _ranged(PORT_MIN, PORT_MAX, "a port"), _bounds(PORT_MIN, PORT_MAX)]
Weight = Annotated[int, _ranged(0, WEIGHT_MAX, "a weight"), _bounds(0, WEIGHT_MAX)]
AffinitySeconds = Annotated[int, _ranged(1, AFFINITY_MAX_S, None, " seconds"), _bounds(1, AFFINITY_MAX_S)]
Millis = Annotated[int, _ranged(CHECK_MS_MIN, CHECK_MS_MAX, None, " ms"), _bounds(CHECK_MS_MIN, CHECK_MS_MAX)]
Count = Annotated[int, _ranged(1, RISE_FALL_MAX, None), _bounds(1, RISE_FALL_MAX)]
IPField = Annotated[IPAddress, PlainValidator(parse_ip), WithJsonSchema({"type": "string"})]
VIPField = Annotated[IPAddress, PlainValidator(parse_vip), WithJsonSchema({"type": "string"})]
CIDRField = Annotated[IPNetwork, PlainValidator(parse_cidr), WithJsonSchema({"type": "string"})]
PoolEntry = Annotated[AddressRange, PlainValidator(parse_pool_entry), WithJsonSchema({"type": "string"})]
Statuses = Annotated[
    tuple[tuple[int, int], ...],
    PlainValidator(parse_statuses),
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]
Hostname = Annotated[str, PlainValidator(parse_hostname), WithJsonSchema({"type": "string"})]
HostPort = Annotated[
    tuple[IPAddress, int],
    PlainValidator(parse_host_port),
    WithJsonSchema({"type": "string", "pattern": r"^(\[[0-9a-fA-F:.]+\]|[0-9.]+):[0-9]+$"}),
]


class Strict(BaseModel):
    # strict: YAML's types are taken as given (no "80" -> 80), as the API server will do.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, alias_generator=to_camel)


class Metadata(Strict):
    name: Name
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


# --- IPPool -----------------------------------------------------------------------------------


class LabelExpressionSpec(Strict):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = []


class LabelSelectorSpec(Strict):
    """A Kubernetes label selector (metav1.LabelSelector)."""

    match_labels: dict[str, str] = {}
    match_expressions: list[LabelExpressionSpec] = []


class ServiceAllocationSpec(Strict):
    """Which Kubernetes Services may take addresses from a pool (MetalLB's serviceAllocation).
    Lower priority numbers are preferred; pools without a priority come after those with one."""

    priority: int | None = None
    namespaces: list[str] = []
    namespace_selectors: list[LabelSelectorSpec] = []
    service_selectors: list[LabelSelectorSpec] = []


class IPPoolSpec(Strict):
    addresses: Annotated[list[PoolEntry], Field(min_length=1)]
    auto_assign: bool = True
    avoid_buggy_ips: bool = Field(default=False, alias="avoidBuggyIPs")
    # Kubernetes only: the standalone file has no Services, so it ignores this.
    service_allocation: ServiceAllocationSpec | None = None


class IPPoolDocument(Strict):
    api_version: Literal["gatelb.io/v1alpha1"]  # == model.API_VERSION (a Literal cannot name it)
    kind: Literal["IPPool"]
    metadata: Metadata
    spec: IPPoolSpec


# --- L4LB -------------------------------------------------------------------------------------


class FrontendSpec(Strict):
    ip: VIPField | None = None
    port: Port
    # Which family to allocate when `ip` is absent and the backends do not tell (e.g. none yet).
    ip_family: Literal["IPv4", "IPv6"] | None = None


class BackendSpec(Strict):
    address: IPField
    port: Port
    weight: Weight = 1
    drain: bool = False


def _backend_form(value: Any) -> str:
    return OBJECT_FORM if isinstance(value, dict) else STRING_FORM


BackendEntry = Annotated[
    Annotated[HostPort, Tag(STRING_FORM)] | Annotated[BackendSpec, Tag(OBJECT_FORM)],
    Discriminator(_backend_form),
]


class SessionAffinitySpec(Strict):
    type: Literal["ClientIP", "None"] = "None"
    timeout_seconds: AffinitySeconds = 10800


class CheckSpec(Strict):
    """Health check. Absent fields take the model's defaults; times are milliseconds."""

    type: Literal["tcp", "http", "udp", "none"] | None = None
    port: Port | None = None
    timeout: Millis | None = None
    interval: Millis | None = None
    rise: Count | None = None
    fall: Count | None = None
    request_path: str | None = None
    host: str | None = None
    expected_statuses: Statuses | None = None
    payload: str | None = None
    expect: str | None = None


def _kubernetes_protocol(value: Any) -> Any:
    # `TCP` and `UDP` as a Kubernetes Service spells them; nothing else changes case.
    return value.lower() if value in ("TCP", "UDP") else value


ProtocolField = Annotated[Literal["tcp", "udp"], BeforeValidator(_kubernetes_protocol),
                          WithJsonSchema({"type": "string", "enum": ["tcp", "udp", "TCP", "UDP"]})]


class L4LBSpec(Strict):
    state: Literal["active", "disable"] = "active"
    protocol: ProtocolField = "tcp"
    frontend: FrontendSpec
    pool: Name | None = None
    backend: Annotated[list[BackendEntry], BeforeValidator(_none_is_empty)] = []
    algorithm: Literal["random", "roundrobin", "sourcehash", "maglev"] = "random"
    session_affinity: SessionAffinitySpec | None = None
    source_ranges: Annotated[list[CIDRField], BeforeValidator(_none_is_empty)] = []
    nat: Literal["dnat", "fullnat"] = "dnat"
    no_backend: Literal["reject", "drop"] = "reject"
    check: CheckSpec | None = None
    # A/AAAA records for the frontend address, written through the DNSProvider whose zone holds them.
    hostnames: Annotated[list[Hostname], BeforeValidator(_none_is_empty)] = []


class L4LBDocument(Strict):
    api_version: Literal["gatelb.io/v1alpha1"]
    kind: Literal["L4LB"]
    metadata: Metadata
    spec: L4LBSpec


DOCUMENTS: dict[str, type[IPPoolDocument] | type[L4LBDocument]] = {
    "IPPool": IPPoolDocument,
    "L4LB": L4LBDocument,
}
