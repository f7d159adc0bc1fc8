"""RFC 2136 dynamic updates signed with TSIG (RFC 8945), through dnspython, and the queries that
read records back.

One change set is one UPDATE message. Its prerequisite section holds what the planner says makes
each change safe (gatelb.dns.planner): the server applies all of the message or none of it, so a
record that someone else wrote since we looked fails the prerequisite instead of being replaced.

Servers are tried in order. Only a server that does not answer (timeout, connection refused)
passes the message on to the next; an answer from a server is its answer, except REFUSED and
NOTAUTH, which a secondary gives for updates it does not take: the next server is asked, and if
none accepts, the first refusal is the error (it is the primary's).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections.abc import Sequence

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.tsig
import dns.update

from gatelb.dns.planner import Change, Op
from gatelb.dns.records import txt_name

PREREQUISITE_RCODES = {dns.rcode.YXDOMAIN, dns.rcode.YXRRSET, dns.rcode.NXRRSET, dns.rcode.NXDOMAIN}
NEXT_SERVER_RCODES = {dns.rcode.REFUSED, dns.rcode.NOTAUTH}


class DNSError(Exception):
    """An update or a query did not succeed; the message says what the server (or none) said."""


class Unreachable(DNSError):
    """No server answered."""


class Rejected(DNSError):
    """A server answered and did not apply the update (key, policy, zone)."""


class PrerequisiteFailed(DNSError):
    """A prerequisite did not hold: some record set is not as we believed; nothing was changed."""


def txt_rdata(text: str) -> dns.rdata.Rdata:
    data = text.encode()
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)


def txt_of(rdata: dns.rdata.Rdata) -> str:
    return b"".join(rdata.strings).decode(errors="replace")  # type: ignore[attr-defined]


def _txt_set(text: str) -> dns.rdataset.Rdataset:
    rds = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.TXT)
    rds.add(txt_rdata(text))
    return rds


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def build_update(zone: str, changes: Sequence[Change], keyring: dict[dns.name.Name, dns.tsig.Key] | None = None,
                 keyname: dns.name.Name | None = None) -> dns.update.UpdateMessage:
    """The UPDATE message for `changes` (pure: tests read its text)."""
    msg = dns.update.UpdateMessage(zone, keyring=keyring, keyname=keyname)
    for c in changes:
        name, tname = _name(c.key[0]), _name(txt_name(c.key))
        rtype = c.key[1]
        if c.op is Op.CREATE:
            msg.absent(name, rtype)
            msg.absent(name, "CNAME")
            msg.absent(tname, "TXT")
        else:
            assert c.proof is not None
            msg.present(_name(c.proof[0]), _txt_set(c.proof[1]))
            msg.delete(name, rtype)
            if _name(c.proof[0]) != tname:  # adopted from the legacy format: the new one replaces it
                msg.delete(_name(c.proof[0]), txt_rdata(c.proof[1]))
        if c.op is Op.DELETE:
            msg.delete(tname, "TXT")
        if c.new is not None and c.txt is not None:
            msg.add(name, c.new.ttl, rtype, *c.new.values)
            if c.op is Op.UPDATE:
                msg.delete(tname, "TXT")
            msg.add(tname, c.new.ttl, txt_rdata(c.txt))
    return msg


class Client:
    """One zone on its servers, with one TSIG key. The constructor does no I/O."""

    def __init__(self, zone: str, servers: Sequence[tuple[str, int]], key_name: str, algorithm: str,
                 secret: str, timeout_s: float = 2.0) -> None:
        self.zone = zone
        self.servers = tuple(servers)
        self.timeout_s = timeout_s
        self.keyname = _name(key_name)
        self.keyring = {self.keyname: dns.tsig.Key(self.keyname, base64.b64decode(secret), algorithm)}
        self.key_text = key_name
        self.last_server: str | None = None

    async def _address(self, host: str) -> str:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
            return str(infos[0][4][0])

    def _where(self, host: str, port: int) -> str:
        return f"{host}:{port}" if port != 53 else host

    async def update(self, changes: Sequence[Change]) -> str:
        """Send the changes as one message; the server that applied them."""
        msg = build_update(self.zone, changes, self.keyring, self.keyname)
        unreachable: list[str] = []
        refused: DNSError | None = None
        for host, port in self.servers:
            where = self._where(host, port)
            try:
                resp = await dns.asyncquery.tcp(msg, await self._address(host), timeout=self.timeout_s, port=port)
            except dns.tsig.PeerError as err:  # the server rejected our signature
                refused = refused or Rejected(f"{where}: TSIG {type(err).__name__.removeprefix('Peer')}: the "
                                              f"server does not accept key {self.key_text} (check tsigKeyName, "
                                              f"tsigSecret and tsigAlgorithm against the server's key)")
                continue
            except (dns.exception.DNSException, OSError, EOFError) as err:
                unreachable.append(f"{where}: {_describe(err)}")
                continue
            rcode = resp.rcode()
            if rcode == dns.rcode.NOERROR:
                self.last_server = where
                return where
            text = dns.rcode.to_text(rcode)
            if rcode in PREREQUISITE_RCODES:
                raise PrerequisiteFailed(f"{where}: {text}: a record set is not as expected")
            rejected = Rejected(f"{where}: {text}: {_explain(rcode, self.zone, self.key_text)}")
            if rcode in NEXT_SERVER_RCODES:
                refused = refused or rejected
                continue
            raise rejected
        if refused is not None:
            raise refused
        raise Unreachable("no DNS server answered: " + "; ".join(unreachable))

    async def query(self, name: str, rtype: str) -> tuple[int, list[dns.rdata.Rdata]]:
        """The record set `name rtype` on the first server that answers: (TTL, rdatas), with no
        rdatas when it is absent."""
        q = dns.message.make_query(name, rtype)
        q.flags &= ~dns.flags.RD
        problems: list[str] = []
        for host, port in self.servers:
            where = self._where(host, port)
            try:
                resp, _ = await dns.asyncquery.udp_with_fallback(q, await self._address(host),
                                                                 timeout=self.timeout_s, port=port)
            except (dns.exception.DNSException, OSError, EOFError) as err:
                problems.append(f"{where}: {_describe(err)}")
                continue
            rcode = resp.rcode()
            if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                problems.append(f"{where}: {dns.rcode.to_text(rcode)} for {name} {rtype}")
                continue
            wanted = dns.rdatatype.from_text(rtype)
            for rrset in resp.answer:
                if rrset.rdtype == wanted and rrset.name == _name(name):
                    return rrset.ttl, list(rrset)
            return 0, []
        raise Unreachable("no DNS server answered: " + "; ".join(problems))


def _describe(err: BaseException) -> str:
    if isinstance(err, dns.exception.Timeout):
        return "timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    return str(err) or type(err).__name__


def _explain(rcode: dns.rcode.Rcode, zone: str, key: str) -> str:
    if rcode == dns.rcode.REFUSED:
        return f"updates to {zone} refused for key {key} (the server's update-policy or allow-update)"
    if rcode == dns.rcode.NOTAUTH:
        return f"the server is not authoritative for {zone}, or rejected key {key}"
    if rcode == dns.rcode.NOTZONE:
        return f"a name is outside {zone}"
    return f"the server did not apply the update to {zone}"



