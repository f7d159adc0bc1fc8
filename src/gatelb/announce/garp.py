"""Gratuitous ARP and unsolicited neighbour advertisements, sent from Python sockets.

keepalived sends its own when it takes a VIP over; the Lease-elected L2 owner (Kubernetes mode,
announce/l2_speaker.py) has no keepalived, so it sends them here. The kernel answers ARP and NDP
for the VIP once it is an address of the interface; these packets only make the switch and the
neighbours' caches follow at once instead of after their entries expire.

- IPv4: an ARP request to the broadcast address with sender = target = the VIP and our MAC
  (RFC 5227's announcement). Linux updates an existing neighbour entry from it whatever
  `arp_accept` says, which is what a takeover needs.
- IPv6: a neighbour advertisement to ff02::1 with the Override flag and the target link-layer
  address option (RFC 4861 7.2.6), hop limit 255 (receivers drop anything else); the kernel
  fills in the ICMPv6 checksum.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from gatelb.model import IPAddress

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
NA_OVERRIDE = 0x20000000
ALL_NODES = "ff02::1"


def arp_announcement(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    eth = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip.packed + b"\x00" * 6 + ip.packed
    return eth + arp


def unsolicited_na(mac: bytes, ip: ipaddress.IPv6Address) -> bytes:
    return struct.pack("!BBHI", 136, 0, 0, NA_OVERRIDE) + ip.packed + bytes([2, 1]) + mac


def interface_mac(interface: str) -> bytes:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((interface, 0))
        return bytes(s.getsockname()[4][:6])


def announce(interface: str, vip: IPAddress) -> None:
    """One gratuitous ARP (IPv4) or unsolicited NA (IPv6) for `vip` out of `interface`."""
    if isinstance(vip, ipaddress.IPv4Address):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
            s.bind((interface, 0))
            mac = bytes(s.getsockname()[4][:6])
            s.send(arp_announcement(mac, vip))
        return
    index = socket.if_nametoindex(interface)
    mac = interface_mac(interface)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.bind((str(vip), 0, 0, index))
        s.sendto(unsolicited_na(mac, vip), (ALL_NODES, 0, 0, index))
