"""Issue 13, "input that must be refused", through the real `gatelb` command in a lab's gw
namespace: a VIP on the gateway's own address (unless --allow-host-addresses), special
addresses, header injection in checks, and a symbolic link planted in the state directory."""

from __future__ import annotations

from gatelb.lab.topology import GW_CLIENT_V4

from .gatelb_helpers import Gatelb, backends, config, gatelb_cli, l4lb, module_lab, pool  # noqa: F401 - fixtures


def test_a_vip_on_the_gateways_own_address_is_refused_unless_allowed(gl: Gatelb) -> None:
    text = "---\n".join([pool("own", ("192.0.2.0/28",)),
                         l4lb("ssh", frontend={"ip": GW_CLIENT_V4, "port": 22}, backend=backends())])
    out = gl.apply(text)
    assert out.code == 2, out
    assert f"L4LB ssh: spec.frontend.ip: {GW_CLIENT_V4} is an address of this host" in out.stderr, out
    assert gl.table() == ""  # nothing applied
    plan = gl.plan(text)
    assert plan.code == 2 and "address of this host" in plan.stderr, plan
    allowed = gl.cli("apply", "--allow-host-addresses", "-f", str(gl.write(text)))
    assert allowed.code == 0, allowed
    assert GW_CLIENT_V4 in gl.table()


def test_automatic_allocation_skips_the_gateways_own_address(gl: Gatelb) -> None:
    # 192.0.2.0 (the network's .0) and .1 (the gw's): the first free one is .2.
    gl.apply_ok("---\n".join([pool("own", ("192.0.2.1-192.0.2.3",)), l4lb("web", frontend={"port": 80},
                                                                         backend=backends())]))
    assert gl.vip("web") == "192.0.2.2"


def test_special_addresses_and_header_injection_are_refused(gl: Gatelb) -> None:
    for text, needle in (
        (config(l4lb("web", frontend={"ip": "127.0.0.1", "port": 80}, backend=backends())),
         "L4LB web: spec.frontend.ip: 127.0.0.1 is a loopback address"),
        ("---\n".join([pool("all", ("0.0.0.0/0",))]), "IPPool all: spec.addresses[0]: 0.0.0.0/0 includes"),
        (config(l4lb("web", frontend={"ip": "203.0.113.10", "port": 80}, backend=backends(),
                     check={"type": "http", "requestPath": "/\r\nX-Evil: 1"})), "L4LB web: spec.check.requestPath"),
    ):
        out = gl.apply(text)
        assert out.code == 2 and needle in out.stderr and "\r\n" not in out.stderr, out


def test_a_symlink_at_the_lock_is_never_followed(gl: Gatelb) -> None:
    victim = gl.config_dir / "precious.txt"
    victim.write_text("keep me")
    gl.state_dir.mkdir(mode=0o700, parents=True)
    (gl.state_dir / "lock").symlink_to(victim)
    text = config(l4lb("web", frontend={"ip": "203.0.113.10", "port": 80}, backend=backends()))
    out = gl.apply(text)
    assert out.code == 1 and "symbolic link" in out.stderr, out
    assert gl.plan(text).code == 3  # plan takes no lock at all
    assert victim.read_text() == "keep me"
