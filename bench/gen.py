"""Generate the benchmark workload: N load balancers x B backends, as gatelb YAML and, for the
very same services, as the rulesets kube-proxy would load.

Addresses (198.18.0.0/15 is the range reserved for benchmarks, RFC 2544):
  VIPs      198.18.0.0/16 (one per service, from .0.1 up; an IPPool covers the /16)
  backends  198.19.0.0/16 (100,000 endpoints do not fit in a /16, so after 65,534 addresses the
            port moves on: endpoint k is 198.19.0.0 + 1 + k % 65534, port 8080 + k // 65534)
  "pod CIDR" in kube-proxy's rules = the backend network, "service CIDR" = the VIP network.

Reference layouts (shapes taken from kubernetes/kubernetes pkg/proxy/{nftables,iptables}: the
expected rulesets in proxier_test.go), each modelling our L4LB as a ClusterIP-style service whose
cluster IP is the VIP:

  kp-nft-1.36   kube-proxy nftables mode, current: one chain per service holding
                `meta l4proto tcp dnat ip addr . port to numgen random mod N map { 0 : a . p, ... }`,
                reached from the `service-ips` verdict map; hairpin handled by a
                `hairpin-connections` set (one element per endpoint).
  kp-nft-1.31   kube-proxy nftables mode before endpoint chains were squashed (v1.31-v1.35): the
                service chain does `numgen random mod N vmap { 0 : goto endpoint-..., ... }` and each
                endpoint has its own chain (hairpin masquerade mark + `dnat to a:p`).
  kp-iptables   kube-proxy iptables mode for iptables-restore: KUBE-SERVICES -> KUBE-SVC-* with
                `-m statistic --mode random --probability 1/k` rules -> KUBE-SEP-* doing DNAT.
                Large-cluster mode (more than 1,000 endpoints) drops the per-endpoint comments, as
                kube-proxy does.

All are emitted the way the real thing sends them: knftables writes one command per line (`add
chain`, `add rule`, `add element` one element at a time), kube-proxy's iptables mode one
iptables-restore payload.

Run as a script to write the files: `python -m bench.gen --n 1000 --out /tmp/w`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

VIP_NET = ipaddress.IPv4Network("198.18.0.0/16")
BACKEND_NET = ipaddress.IPv4Network("198.19.0.0/16")
BACKEND_HOSTS = BACKEND_NET.num_addresses - 2
BACKEND_BASE_PORT = 8080
NAMESPACE = "bench"
POOL = "bench"
NODE_IP = "192.0.2.2"  # kube-proxy's nodeport-ips element; no traffic ever goes there
MASQ_MARK = "0x4000"


@dataclass(frozen=True)
class BenchService:
    name: str
    vip: str
    port: int
    backends: tuple[tuple[str, int], ...]
    protocol: str = "tcp"
    pool: str = POOL

    @property
    def port_name(self) -> str:
        return f"p{self.port}"

    @property
    def svc_port_name(self) -> str:
        """kube-proxy's ServicePortName string: namespace/name:port."""
        return f"{NAMESPACE}/{self.name}:{self.port_name}"


def lb_name(i: int) -> str:
    return f"lb-{i:05d}"


def vip_of(i: int) -> str:
    return str(VIP_NET.network_address + 1 + i)


def endpoint_of(k: int) -> tuple[str, int]:
    return str(BACKEND_NET.network_address + 1 + k % BACKEND_HOSTS), BACKEND_BASE_PORT + k // BACKEND_HOSTS


def services(n: int, backends: int = 10, port: int = 80) -> list[BenchService]:
    """N services, each with `backends` distinct endpoints; deterministic."""
    if n > VIP_NET.num_addresses - 2:
        raise ValueError(f"at most {VIP_NET.num_addresses - 2} services fit in {VIP_NET}")
    return [
        BenchService(lb_name(i), vip_of(i), port,
                     tuple(endpoint_of(i * backends + j) for j in range(backends)))
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------
# gatelb YAML


def pool_yaml(name: str = POOL, cidr: str = str(VIP_NET)) -> str:
    return (f"apiVersion: gatelb.io/v1alpha1\nkind: IPPool\nmetadata: {{name: {name}}}\n"
            f"spec: {{addresses: [\"{cidr}\"], autoAssign: false}}\n")


def lb_yaml(svc: BenchService) -> str:
    backends = ", ".join(f"\"{a}:{p}\"" for a, p in svc.backends)
    return (f"apiVersion: gatelb.io/v1alpha1\nkind: L4LB\nmetadata: {{name: {svc.name}}}\n"
            f"spec: {{protocol: {svc.protocol}, frontend: {{ip: {svc.vip}, port: {svc.port}}}, "
            f"pool: {svc.pool}, backend: [{backends}]}}\n")


def gatelb_yaml(svcs: Iterable[BenchService], extra_pools: Sequence[tuple[str, str]] = ()) -> str:
    """One multi-document file: the bench pool (covering the VIPs), optional extra pools, the L4LBs.

    Written by hand rather than yaml.dump: at 10,000 documents the dumper alone takes seconds.
    """
    docs = [pool_yaml()] + [pool_yaml(name, cidr) for name, cidr in extra_pools]
    docs += [lb_yaml(s) for s in svcs]
    return "---\n".join(docs)


# ---------------------------------------------------------------------------------------------
# kube-proxy nftables layouts


def _hash8(text: str) -> str:
    """kube-proxy's chain-name hash: base32 of sha256, first 8 characters."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8]


def _hash16(text: str) -> str:
    """kube-proxy's iptables chain-name hash: base32 of sha256, first 16 characters."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def _svc_chain(svc: BenchService) -> str:
    base = f"{NAMESPACE}/{svc.name}/{svc.protocol}/{svc.port_name}"
    return f"service-{_hash8(svc.svc_port_name + svc.protocol)}-{base}"


def _ep_chain(svc: BenchService, addr: str, port: int) -> str:
    ep = f"{addr}:{port}"
    base = f"{NAMESPACE}/{svc.name}/{svc.protocol}/{svc.port_name}"
    return f"endpoint-{_hash8(svc.svc_port_name + svc.protocol + ep)}-{base}__{addr}/{port}"


def _kp_nft_base(t: str, pod_cidr: str, service_cidr: str, hairpin_set: bool) -> list[str]:
    """kube-proxy's fixed skeleton (proxier_test.go baseRules), with our address ranges."""
    lines = [
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
        f"flush table {t}",
        f'add set {t} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}',
        f'add set {t} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}',
        f"add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "destinations that are subject to LoadBalancerSourceRanges" ; }',
        f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }',
        f"add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to services with no endpoints" ; }',
        f"add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "NodePort traffic" ; }',
    ]
    if hairpin_set:
        lines.append(f"add set {t} hairpin-connections {{ "
                     "type ipv4_addr . ipv4_addr . inet_proto . inet_service ; "
                     'comment "service hairpin connections" ; }')
    lines += [
        f"add chain {t} cluster-ips-check",
        f"add chain {t} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}",
        f"add chain {t} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}",
        f"add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}",
        f"add chain {t} filter-input {{ type filter hook input priority 0 ; }}",
        f"add chain {t} filter-output {{ type filter hook output priority 0 ; }}",
        f"add chain {t} firewall-check",
        f"add chain {t} mark-for-masquerade",
        f"add chain {t} masquerading",
        f"add chain {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
        f"add chain {t} nodeport-endpoints-check",
        f"add chain {t} reject-chain {{ "
        'comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }',
        f"add chain {t} services",
        f"add chain {t} service-endpoints-check",
        f"add rule {t} cluster-ips-check ip daddr @cluster-ips reject "
        'comment "Reject traffic to invalid ports of ClusterIPs"',
        f"add rule {t} cluster-ips-check ip daddr {{ {service_cidr} }} drop "
        'comment "Drop traffic to unallocated ClusterIPs"',
        f"add rule {t} filter-prerouting-pre-dnat ct state new jump firewall-check",
        f"add rule {t} filter-forward ct state new jump service-endpoints-check",
        f"add rule {t} filter-forward ct state new jump cluster-ips-check",
        f"add rule {t} filter-input ct state new jump nodeport-endpoints-check",
        f"add rule {t} filter-input ct state new jump service-endpoints-check",
        f"add rule {t} filter-output ct state new jump service-endpoints-check",
        f"add rule {t} filter-output-pre-dnat ct state new jump firewall-check",
        f"add rule {t} filter-output ct state new jump cluster-ips-check",
        f"add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f"add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"add rule {t} masquerading mark and {MASQ_MARK} == 0 return" if not hairpin_set else
        f"add rule {t} masquerading meta mark & {MASQ_MARK} != 0 meta mark set meta mark ^ {MASQ_MARK} "
        "masquerade fully-random",
    ]
    if hairpin_set:
        lines.append(f"add rule {t} masquerading ct status dnat ip saddr . ip daddr . meta l4proto . "
                     "th dport @hairpin-connections masquerade fully-random")
    else:
        lines += [f"add rule {t} masquerading mark set mark xor {MASQ_MARK}",
                  f"add rule {t} masquerading masquerade fully-random"]
    lines += [
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} nodeport-endpoints-check "
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
        f"add rule {t} reject-chain reject",
    ]
    if hairpin_set:
        # 1.36 marks clusterIP traffic from outside the pod network here, once, instead of in
        # every service chain.
        lines.append(f"add rule {t} services ip daddr @cluster-ips ip saddr != {pod_cidr} meta mark set "
                     f'meta mark | {MASQ_MARK} comment "masquerade clusterIP traffic from outside cluster"')
    lines += [
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        f"add element {t} nodeport-ips {{ {NODE_IP} }}",
        f"add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    ]
    return lines


def kube_proxy_nft_136(svcs: Iterable[BenchService], pod_cidr: str = str(BACKEND_NET),
                       service_cidr: str = str(VIP_NET)) -> str:
    """kube-proxy nftables mode as of v1.36: a chain per service with an anonymous numgen map."""
    t = "ip kube-proxy"
    lines = _kp_nft_base(t, pod_cidr, service_cidr, hairpin_set=True)
    for s in svcs:
        chain = _svc_chain(s)
        lines.append(f"add chain {t} {chain}")
        if len(s.backends) == 1:
            a, p = s.backends[0]
            lines.append(f"add rule {t} {chain} meta l4proto {s.protocol} dnat to {a}:{p}")
        else:
            m = " , ".join(f"{i} : {a} . {p}" for i, (a, p) in enumerate(s.backends))
            lines.append(f"add rule {t} {chain} meta l4proto {s.protocol} dnat ip addr . port to "
                         f"numgen random mod {len(s.backends)} map {{ {m} }}")
        for a, p in s.backends:
            lines.append(f"add element {t} hairpin-connections {{ {a} . {a} . {s.protocol} . {p} }}")
        lines.append(f"add element {t} cluster-ips {{ {s.vip} }}")
        lines.append(f"add element {t} service-ips {{ {s.vip} . {s.protocol} . {s.port} : goto {chain} }}")
    return "\n".join(lines) + "\n"


def kube_proxy_nft_131(svcs: Iterable[BenchService], pod_cidr: str = str(BACKEND_NET),
                       service_cidr: str = str(VIP_NET)) -> str:
    """kube-proxy nftables mode v1.31-v1.35: per-endpoint chains behind `numgen ... vmap`."""
    t = "ip kube-proxy"
    lines = _kp_nft_base(t, pod_cidr, service_cidr, hairpin_set=False)
    for s in svcs:
        chain = _svc_chain(s)
        eps = [_ep_chain(s, a, p) for a, p in s.backends]
        # Endpoint chains first: the kernel resolves the vmap's `goto` targets as it goes.
        for ep, (a, p) in zip(eps, s.backends, strict=True):
            lines.append(f"add chain {t} {ep}")
            lines.append(f"add rule {t} {ep} ip saddr {a} jump mark-for-masquerade")
            lines.append(f"add rule {t} {ep} meta l4proto {s.protocol} dnat to {a}:{p}")
        lines.append(f"add chain {t} {chain}")
        lines.append(f"add rule {t} {chain} ip daddr {s.vip} ip saddr != {pod_cidr} jump mark-for-masquerade")
        vmap = " , ".join(f"{i} : goto {ep}" for i, ep in enumerate(eps))
        lines.append(f"add rule {t} {chain} numgen random mod {len(eps)} vmap {{ {vmap} }}")
        lines.append(f"add element {t} cluster-ips {{ {s.vip} }}")
        lines.append(f"add element {t} service-ips {{ {s.vip} . {s.protocol} . {s.port} : goto {chain} }}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# kube-proxy iptables layout

LARGE_CLUSTER_ENDPOINTS = 1000  # kube-proxy's largeClusterEndpointsThreshold


def kube_proxy_iptables(svcs: Sequence[BenchService], pod_cidr: str = str(BACKEND_NET)) -> str:
    """An iptables-restore payload for the nat table, as kube-proxy's iptables mode writes it."""
    large = sum(len(s.backends) for s in svcs) > LARGE_CLUSTER_ENDPOINTS
    chains = [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
              ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
              ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    for s in svcs:
        spn = s.svc_port_name
        svc_chain = f"KUBE-SVC-{_hash16(spn + s.protocol)}"
        chains.append(f":{svc_chain} - [0:0]")
        cip = f'-m comment --comment "{spn} cluster IP"'
        match = f"-m {s.protocol} -p {s.protocol} -d {s.vip} --dport {s.port}"
        rules.append(f"-A KUBE-SERVICES {cip} {match} -j {svc_chain}")
        rules.append(f"-A {svc_chain} {cip} {match} ! -s {pod_cidr} -j KUBE-MARK-MASQ")
        n = len(s.backends)
        comment = "" if large else f"-m comment --comment {spn} "
        for i, (a, p) in enumerate(s.backends):
            sep = f"KUBE-SEP-{_hash16(spn + s.protocol + f'{a}:{p}')}"
            chains.append(f":{sep} - [0:0]")
            if i < n - 1:
                rules.append(f"-A {svc_chain} {comment}-m statistic --mode random "
                             f"--probability {1.0 / (n - i):.10f} -j {sep}")
            else:
                rules.append(f"-A {svc_chain} {comment}-j {sep}")
            rules.append(f"-A {sep} {comment}-s {a} -j KUBE-MARK-MASQ")
            proto = f"-m {s.protocol} -p {s.protocol}"
            rules.append(f"-A {sep} {comment}{proto} -j DNAT --to-destination {a}:{p}")
    rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
                 'the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    return "\n".join(["*nat", *chains, *rules, "COMMIT"]) + "\n"


LAYOUTS = {
    "kp-nft-1.36": kube_proxy_nft_136,
    "kp-nft-1.31": kube_proxy_nft_131,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, required=True, help="number of load balancers")
    p.add_argument("--backends", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="directory for the generated files")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    svcs = services(a.n, a.backends)
    (a.out / "gatelb.yaml").write_text(gatelb_yaml(svcs))
    for name, fn in LAYOUTS.items():
        (a.out / f"{name}.nft").write_text(fn(svcs))
    (a.out / "kp-iptables.rules").write_text(kube_proxy_iptables(svcs))
    print(f"wrote {a.out}/gatelb.yaml, {', '.join(LAYOUTS)} (.nft) and kp-iptables.rules")


if __name__ == "__main__":
    main()
