"""State files: never through a symbolic link, 0600, in a directory only we control; special
addresses, CR/LF in checks and control characters in names refused or escaped; VIPs on the
host's own addresses refused unless allowed."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest

from gatelb.agent.lock import state_lock
from gatelb.agent.statefile import StateFileError, StateStore, StoredState
from gatelb.ipam.lb import LBAllocator
from gatelb.kernel.addresses import parse
from gatelb.model import IPPool, LoadBalancer, ValidationError, ValidationErrors
from gatelb.sources.file.loader import load_text
from gatelb.sources.schema import parse_pool_entry

API = "gatelb.io/v1alpha1"


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    (d / "lock").symlink_to(victim)
    with pytest.raises(StateFileError, match="symbolic link"), state_lock(d):
        pass
    assert victim.read_text() == "keep me"


def test_a_symlinked_state_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"version": 2}')
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    (d / "state.json").symlink_to(other)
    with pytest.raises(StateFileError, match="symbolic link"):
        StateStore(d).load()


def test_files_are_private_and_the_directory_made_0711(tmp_path: Path) -> None:
    d = tmp_path / "new" / "state"
    store = StateStore(d)
    store.save(StoredState(allocations={"a": "203.0.113.1"}))
    assert stat.S_IMODE(d.stat().st_mode) == 0o711
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    with state_lock(d):
        assert stat.S_IMODE((d / "lock").stat().st_mode) == 0o600


def test_a_directory_writable_by_others_or_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(StateFileError, match="writable by group or others"):
        StateStore(d).load()
    os.chmod(d, 0o755)
    StateStore(d).load()  # readable by others is fine
    if os.geteuid() == 0:
        os.chown(d, 12345, 12345)
        with pytest.raises(StateFileError, match="owned by uid 12345"):
            StateStore(d).load()


def doc(kind: str, name: str, spec: dict[str, object]) -> str:
    import yaml

    return yaml.safe_dump({"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec})


def errors_of(text: str) -> list[str]:
    with pytest.raises(ValidationErrors) as exc:
        load_text(text)
    return [str(e) for e in exc.value.errors]


@pytest.mark.parametrize("vip", ["127.0.0.1", "::1", "0.0.0.0", "::", "255.255.255.255", "224.0.0.1",
                                 "ff02::1", "169.254.1.1", "fe80::1", "::ffff:7f00:1"])
def test_special_vips_are_refused_naming_the_field(vip: str) -> None:
    got = errors_of(doc("L4LB", "web", {"frontend": {"ip": vip, "port": 80}, "backend": ["198.51.100.1:80"]}))
    assert len(got) == 1 and got[0].startswith(f"L4LB web: spec.frontend.ip: {vip} is a"), got


@pytest.mark.parametrize("entry", ["0.0.0.0/0", "::/0", "127.0.0.0/8", "224.0.0.0/24", "fe80::/64",
                                   "169.254.0.1-169.254.0.9", "255.255.255.255", "126.255.255.250-127.0.0.5"])
def test_pools_with_special_addresses_are_refused(entry: str) -> None:
    got = errors_of(doc("IPPool", "all", {"addresses": ["203.0.113.0/28", entry]}))
    assert len(got) == 1 and got[0].startswith(f"IPPool all: spec.addresses[1]: {entry} includes"), got


def test_ordinary_addresses_pass() -> None:
    for entry in ("203.0.113.0/24", "2001:db8:100::/64", "198.18.0.0/15", "10.0.0.0/8"):
        parse_pool_entry(entry)


@pytest.mark.parametrize(("field", "value"), [("requestPath", "/x\r\nX-Injected: 1"), ("requestPath", "/a b"),
                                              ("host", "example.org\r\nX: y"), ("host", "a\nb")])
def test_cr_lf_in_http_checks_is_refused(field: str, value: str) -> None:
    got = errors_of(doc("L4LB", "web", {"frontend": {"ip": "203.0.113.1", "port": 80},
                                        "backend": ["198.51.100.1:80"], "check": {"type": "http", field: value}}))
    assert len(got) == 1 and got[0].startswith(f"L4LB web: spec.check.{field}: "), got
    assert "\r" not in got[0] and "\n" not in got[0]


def test_control_characters_in_names_are_escaped_in_messages() -> None:
    err = ValidationError("L4LB", "we\x1b[31mb\nL4LB fake: ok", "metadata.name", "bad")
    assert str(err) == "L4LB we\\x1b[31mb\\nL4LB fake: ok: metadata.name: bad"
    got = errors_of(doc("L4LB", "a\u202eb", {"frontend": {"ip": "203.0.113.1", "port": 80}}))
    assert got and all("\u202e" not in g and "\\u202e" in g for g in got), got


def test_the_hosts_own_address_is_refused_as_a_vip_and_never_allocated() -> None:
    host = {ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("203.0.113.2")}
    pool = load_pool()
    alloc = LBAllocator((pool,), host.__contains__)
    explicit = LoadBalancer("ssh", 22, frontend_ip=ipaddress.ip_address("203.0.113.1"))
    auto = LoadBalancer("auto", 80)
    update = alloc.update({"ssh": explicit, "auto": auto})
    assert str(update.errors["ssh"]).startswith("L4LB ssh: spec.frontend.ip: 203.0.113.1 is an address of this host")
    assert alloc.address_of("auto") == ipaddress.ip_address("203.0.113.3")  # .1 and .2 skipped
    # Allowed (no predicate): the same explicit address is accepted.
    assert LBAllocator((pool,)).update({"ssh": explicit}).errors == {}


def load_pool() -> IPPool:
    desired = load_text(doc("IPPool", "p", {"addresses": ["203.0.113.1-203.0.113.9"]}))
    return desired.pools[0]


def test_ip_json_addresses_are_parsed() -> None:
    links = [{"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}, {"local": "::1"}]},
             {"ifname": "eth0", "addr_info": [{"local": "192.0.2.1"}, {"local": "fe80::1"}]}, {"ifname": "x"}]
    assert parse(links) == {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "192.0.2.1", "fe80::1")}
