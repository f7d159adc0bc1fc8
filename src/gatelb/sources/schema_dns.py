"""The DNSProvider document: its pydantic schema and the parser the file loader (CONFIG_KINDS) and
the Kubernetes source (CONFIG_RESOURCES) share.

Only RFC 2136 exists as a provider; any other key under `spec` is an unknown provider, said so in
those words rather than as a bare unknown field.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from gatelb.model import ConfigObject, DNSProvider, SecretRef
from gatelb.sources import errors as pyd_errors
from gatelb.sources.schema import (
    Metadata,
    Strict,
    _bounds,
    _none_is_empty,
    _ranged,
    hostname_problem,
    normal_hostname,
    parse_port_text,
    show,
)

PROVIDERS = ("rfc2136",)
# dnspython's names for the TSIG algorithms BIND and Knot both sign with.
ALGORITHMS = ("hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224", "hmac-sha1", "hmac-md5")
TTL_MAX = 604800  # a week: longer is never what a load balancer's name wants
TIMEOUT_MS_MIN, TIMEOUT_MS_MAX = 50, 60000
REPAIR_S_MIN, REPAIR_S_MAX = 1, 86400

TTL = Annotated[int, _ranged(1, TTL_MAX, "a TTL", " seconds"), _bounds(1, TTL_MAX)]


class SecretRefSpec(Strict):
    namespace: str
    name: str
    key: str = "secret"


class RFC2136Spec(Strict):
    server: str | None = None
    servers: Annotated[list[str], BeforeValidator(_none_is_empty)] = []
    zone: str
    tsig_key_name: str
    tsig_algorithm: Literal[ALGORITHMS] = "hmac-sha256"  # type: ignore[valid-type]
    tsig_secret: str | None = None
    tsig_secret_file: str | None = None
    tsig_secret_ref: SecretRefSpec | None = None
    timeout: Annotated[int, _ranged(TIMEOUT_MS_MIN, TIMEOUT_MS_MAX, None, " ms"),
                       _bounds(TIMEOUT_MS_MIN, TIMEOUT_MS_MAX)] = 2000


class DNSProviderSpec(Strict):
    rfc2136: RFC2136Spec
    ttl: TTL = 300
    owner_id: str = Field(default="gatelb", alias="ownerID")
    repair_interval: Annotated[int, _ranged(REPAIR_S_MIN, REPAIR_S_MAX, None, " seconds"),
                               _bounds(REPAIR_S_MIN, REPAIR_S_MAX)] = 60


class DNSProviderDocument(Strict):
    api_version: Literal["gatelb.io/v1alpha1"]
    kind: Literal["DNSProvider"]
    metadata: Metadata
    spec: DNSProviderSpec


def _server(text: str) -> tuple[str, int] | str:
    """'198.51.100.53', '198.51.100.53:5353', '[2001:db8::53]:53', 'ns1.example' -> (host, port),
    or the problem."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        host = inner
        if rest:
            if not rest.startswith(":"):
                return f"{text!r} is not host or host:port"
            port = parse_port_text(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = parse_port_text(port_text, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if hostname_problem(normal_hostname(host)) and host != "localhost":
            return f"{text!r} is not an address or a host name"
    return host, port


def _secret_problem(secret: str) -> str | None:
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        return "malformed key: not base64 (tsig-keygen and keymgr print the secret in base64)"
    if len(raw) < 8:
        return f"malformed key: {len(raw)} bytes is too short for an HMAC key"
    return None


def parse_dns_provider(raw: dict[str, Any]) -> tuple[ConfigObject | None, list[tuple[str, str]]]:
    spec = raw.get("spec")
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in PROVIDERS and k not in ("ttl", "ownerID", "repairInterval")]
        if unknown:
            return None, [(f"spec.{k}", f"unknown provider (supported: {', '.join(PROVIDERS)})")
                          for k in unknown]
    try:
        doc = DNSProviderDocument.model_validate(raw)
    except pydantic.ValidationError as exc:
        return None, list(pyd_errors.translate(exc))
    r = doc.spec.rfc2136
    problems: list[tuple[str, str]] = []
    zone = normal_hostname(r.zone)
    if zone_problem := hostname_problem(zone):
        problems.append(("spec.rfc2136.zone", zone_problem))
    given = ([("spec.rfc2136.server", r.server)] if r.server else []) + [
        (f"spec.rfc2136.servers[{i}]", s) for i, s in enumerate(r.servers)]
    if not given:
        problems.append(("spec.rfc2136.server", "required (server or servers)"))
    servers: list[tuple[str, int]] = []
    for path, text in given:
        try:
            parsed = _server(text)
        except PydanticCustomError as exc:  # from parse_port_text, already in our words
            parsed = exc.message()
        if isinstance(parsed, str):
            problems.append((path, parsed))
        else:
            servers.append(parsed)
    secrets = [(name, v) for name, v in (("tsigSecret", r.tsig_secret), ("tsigSecretFile", r.tsig_secret_file),
                                         ("tsigSecretRef", r.tsig_secret_ref)) if v is not None]
    if len(secrets) != 1:
        what = "none given" if not secrets else f"{' and '.join(n for n, _ in secrets)} given"
        problems.append(("spec.rfc2136.tsigSecret", f"exactly one of tsigSecret, tsigSecretFile, tsigSecretRef "
                                                     f"is required ({what})"))
    if r.tsig_secret is not None and (why := _secret_problem(r.tsig_secret)):
        problems.append(("spec.rfc2136.tsigSecret", why))
    key_name = normal_hostname(r.tsig_key_name)
    if not key_name or any(not part for part in key_name.split(".")):
        problems.append(("spec.rfc2136.tsigKeyName", f"{show(r.tsig_key_name)} is not a key name"))
    owner = doc.spec.owner_id
    if not owner or any(c in owner for c in ',="\\') or not owner.isprintable():
        problems.append(("spec.ownerID", f"{show(owner)} must be non-empty, printable, without , = \" or \\"))
    if problems:
        return None, problems
    ref = r.tsig_secret_ref
    return DNSProvider(
        name=doc.metadata.name, zone=zone + ".", servers=tuple(servers), tsig_key_name=key_name,
        tsig_algorithm=r.tsig_algorithm, tsig_secret=r.tsig_secret, tsig_secret_file=r.tsig_secret_file,
        tsig_secret_ref=SecretRef(ref.namespace, ref.name, ref.key) if ref else None,
        ttl=doc.spec.ttl, owner_id=owner, repair_interval_s=float(doc.spec.repair_interval),
        timeout_s=r.timeout / 1000,
    ), []
