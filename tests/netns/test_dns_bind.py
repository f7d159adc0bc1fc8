"""Acceptance of issue 12 in file mode: `gatelb run` keeps A records and their external-dns
ownership TXT on a real BIND 9 (named in the lab's gw namespace, a zone with update-policy for a
TSIG key from tsig-keygen), leaves a record it does not own alone and reports it, follows edits,
keeps the data path independent of the DNS server, and says clearly when the key is wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gatelb.lab import bind
from gatelb.lab.topology import Lab

from .gatelb_helpers import (  # noqa: F401 - fixtures `gl` and `lab`
    Daemon,
    Gatelb,
    backends,
    config,
    document,
    gatelb_cli,
    l4lb,
    module_lab,
)

DNS_IP = "198.51.100.53"
ZONE = "lb.example."
OWNER = "edge-1"
TIMEOUT = 20.0


def provider(secret: str, name: str = "lab", **extra: Any) -> str:
    return document("DNSProvider", name, {
        "rfc2136": {"server": DNS_IP, "zone": ZONE, "tsigKeyName": "gatelb", "tsigSecret": secret, "timeout": 500},
        "ttl": 30, "ownerID": OWNER, "repairInterval": 1, **extra})


def lb(name: str, ip: str | None, *hostnames: str) -> str:
    frontend: dict[str, Any] = {"port": 80, **({"ip": ip} if ip else {})}
    return l4lb(name, frontend=frontend, backend=backends(), hostnames=list(hostnames))


def wait(what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


@pytest.fixture
def named(lab: Lab, tmp_path: Path) -> Iterator[bind.Named]:
    if reason := bind.available():
        pytest.skip(reason)
    lab.run("gw", ["ip", "addr", "add", f"{DNS_IP}/32", "dev", "lo"])
    server = bind.Named(tmp_path / "named", ZONE, bind.tsig_keygen("gatelb"), DNS_IP,
                        prefix=["ip", "netns", "exec", lab.ns("gw")])
    try:
        server.start(records=["taken IN A 192.0.2.99"])
        yield server
    finally:
        server.stop()
        lab.run("gw", ["ip", "addr", "del", f"{DNS_IP}/32", "dev", "lo"], check=False)


def ours(resource: str) -> str:
    return f"heritage=external-dns,external-dns/owner={OWNER},external-dns/resource={resource}"


def dns_status(gl: Gatelb) -> dict[str, Any]:
    return dict(gl.status().get("info", {}).get("dns", {}))


def test_records_follow_the_file_and_foreign_records_are_left_alone(gl: Gatelb, lab: Lab,
                                                                     named: bind.Named) -> None:
    secret = named.key[2]
    first = config(provider(secret), lb("web", "203.0.113.10", "web.lb.example"),
                   lb("api", None, "api.lb.example"), lb("taken", "203.0.113.12", "taken.lb.example"))
    with gl.daemon(gl.write(first, "gatelb.yaml")) as daemon:
        # A fixed and an allocated VIP get their records and ownership TXT.
        wait("web A", lambda: named.lookup("web.lb.example.", "A") == ["203.0.113.10"])
        assert named.txt("a-web.lb.example.") == [ours("l4lb/web")]
        api_vip = gl.vip("api")
        wait("api A", lambda: named.lookup("api.lb.example.", "A") == [api_vip])
        assert named.txt("a-api.lb.example.") == [ours("l4lb/api")]
        # The record that was there before is not ours: left alone, reported in status and log.
        conflict = daemon.wait_event("dns-conflict")
        assert conflict["name"] == "taken.lb.example." and conflict["objects"] == ["file " + str(daemon.config)]
        assert named.lookup("taken.lb.example.", "A") == ["192.0.2.99"]
        assert named.txt("a-taken.lb.example.") == []
        status = wait("conflict in status", lambda: dns_status(gl).get("conflicts"))
        assert status == ["DNSProvider lab: taken.lb.example. A: exists without our ownership record; "
                          f"not changed (wanted by file {daemon.config})"]

        # An edit moves one record and deletes a removed one, with its TXT.
        daemon.rewrite(config(provider(secret), lb("web", "203.0.113.20", "web.lb.example"),
                              lb("taken", "203.0.113.12", "taken.lb.example")))
        wait("web moved", lambda: named.lookup("web.lb.example.", "A") == ["203.0.113.20"])
        wait("api gone", lambda: named.lookup("api.lb.example.", "A") == [])
        assert named.txt("a-api.lb.example.") == []
        assert named.txt("a-web.lb.example.") == [ours("l4lb/web")]

        # A record changed behind our back is repaired (repairInterval 1 s).
        named.dig("+short", "web.lb.example.", "A")  # (warm)
        _nsupdate(named, "update delete web.lb.example. A\nupdate add web.lb.example. 30 A 192.0.2.66\n")
        wait("repaired", lambda: named.lookup("web.lb.example.", "A") == ["203.0.113.20"])

        # With the server stopped the data path still changes at once; the record follows later.
        named.stop()
        mark = daemon.rewrite(config(provider(secret), lb("web", "203.0.113.21", "web.lb.example"),
                                     lb("taken", "203.0.113.12", "taken.lb.example")))
        t0 = time.monotonic()
        daemon.wait_event("sync", after=mark, timeout=5)
        result = lab.connect_many("tcp", "203.0.113.21", 80, 6, timeout=5.0)
        assert result.ok == 6 and time.monotonic() - t0 < 5, result.failures
        failed = daemon.wait_event("dns-update-failed", after=mark)
        assert "no DNS server answered" in failed["error"], failed
        named.start()
        wait("web after the server returns", lambda: named.lookup("web.lb.example.", "A") == ["203.0.113.21"])
        assert daemon.wait_event("dns-recovered", after=mark)


def test_wrong_tsig_secret_is_a_clear_error_and_changes_nothing(gl: Gatelb, named: bind.Named) -> None:
    wrong = "d3Jvbmcgc2VjcmV0IGZvciB0aGUga2V5Cg=="
    text = config(provider(wrong), lb("web", "203.0.113.10", "web.lb.example"))
    with gl.daemon(gl.write(text, "gatelb.yaml")) as daemon:
        failed = daemon.wait_event("dns-update-failed")
        assert "TSIG BadSignature" in failed["error"] and "tsigSecret" in failed["error"], failed
        providers = wait("status", lambda: dns_status(gl).get("providers"))
        assert "TSIG BadSignature" in providers["lab"]["lastError"] and not providers["lab"]["inSync"]
        assert named.lookup("web.lb.example.", "A") == [] and named.txt("a-web.lb.example.") == []
        assert "tsig verify failure (BADSIG)" in named.log_text()


def test_bad_provider_is_rejected_with_object_and_field(gl: Gatelb) -> None:
    bad = document("DNSProvider", "lab", {"rfc2136": {"server": DNS_IP, "zone": ZONE, "tsigKeyName": "gatelb",
                                                      "tsigSecret": "not base64!"}})
    out = gl.apply(config(bad, lb("web", "203.0.113.10", "web.lb.example")))
    assert out.code != 0
    assert "DNSProvider lab: spec.rfc2136.tsigSecret: malformed key: not base64" in out.output
    assert gl.table() == ""


def _nsupdate(named: bind.Named, commands: str) -> None:
    """Someone else changing the zone (with the same key: an operator with nsupdate)."""
    import subprocess

    name, algorithm, secret = named.key
    script = f"server {named.address} {named.port}\nzone {named.zone}\n{commands}send\n"
    subprocess.run([*named.prefix, "nsupdate", "-y", f"{algorithm}:{name}:{secret}"], input=script, text=True,
                   check=True, capture_output=True, timeout=20)
