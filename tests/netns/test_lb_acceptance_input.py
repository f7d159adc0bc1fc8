"""Acceptance of issue 2, bad input: every kind of invalid file gives exit 2, a message naming the
document or object and the field, and leaves the kernel ruleset byte-for-byte as it was (and the
state file too). A good configuration is applied first, so there is something to keep unchanged;
one lab and that one apply serve the whole module, since a rejected file changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from gatelb.lab.topology import Lab

from .gatelb_helpers import Gatelb, backends, config, l4lb, pool, reset_gw, shared_lab

WEB = l4lb("web", frontend={"ip": "203.0.113.10", "port": 80}, backend=backends(),
           sourceRanges=["192.0.2.0/24"], nat="fullnat")
AUTO = l4lb("auto", frontend={"port": 80}, backend=backends((1, 2)))  # address allocated by IPAM
TINY = pool("tiny", ("203.0.113.200/31",), auto=False)  # two addresses, outside the main pool
SMALL = l4lb("small", frontend={"port": 80}, pool="tiny", backend=backends((1,)))
GOOD_DOCS = (TINY, WEB, AUTO, SMALL)
GOOD = config(*GOOD_DOCS)
NEXT_DOC = len(GOOD_DOCS) + 2  # the document a test appends (the standard pool is document 1)


@dataclass(frozen=True)
class Applied:
    gl: Gatelb
    auto_vip: str


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    with shared_lab() as lab:
        reset_gw(lab)
        gl = Gatelb(lab, tmp_path_factory.mktemp("bad-input"))
        gl.apply_ok(GOOD)
        yield Applied(gl, gl.vip("auto"))


def x(**spec: object) -> str:
    """An extra L4LB named x, valid unless `spec` makes it otherwise."""
    return l4lb("x", **{"frontend": {"ip": "203.0.113.11", "port": 80}, "backend": backends(), **spec})


# id -> (extra documents given the auto-allocated address, fragments the message must contain)
Case = tuple[Callable[[str], str], tuple[str, ...]]
CASES: dict[str, Case] = {
    "malformed-yaml": (lambda _: "kind: L4LB\nspec: {frontend: [unclosed\n",
                       (f"document {NEXT_DOC}", "malformed YAML", "line ")),
    "unknown-kind": (lambda _: "apiVersion: gatelb.io/v1alpha1\nkind: L4LoadBalancer\nmetadata: {name: x}\nspec: {}\n",
                     (f"document {NEXT_DOC}", "kind", "unknown kind 'L4LoadBalancer'")),
    "unknown-field": (lambda _: x(algorythm="random"), ("L4LB x", "spec.algorythm", "unknown field")),
    "bad-address": (lambda _: x(backend=["198.51.100.300:8080"]),
                    ("L4LB x", "spec.backend[0]", "'198.51.100.300' is not an IP address")),
    "bad-cidr": (lambda _: x(sourceRanges=["192.0.2.0/33"]), ("L4LB x", "spec.sourceRanges[0]", "not a CIDR")),
    "port-out-of-range": (lambda _: x(frontend={"ip": "203.0.113.11", "port": 70000}),
                          ("L4LB x", "spec.frontend.port", "70000 is not a port")),
    "duplicate-frontend": (lambda _: x(frontend={"ip": "203.0.113.10", "port": 80}),
                           ("L4LB x", "spec.frontend", "203.0.113.10 tcp/80 is already used by L4LB web")),
    "outside-every-pool": (lambda _: x(frontend={"ip": "203.0.113.150", "port": 80}),
                           ("L4LB x", "spec.frontend.ip", "203.0.113.150 is not in any IPPool")),
    "ip-of-another-allocation": (lambda vip: x(frontend={"ip": vip, "port": 81}),
                                 ("L4LB x", "spec.frontend.ip", "is already used by L4LB auto")),
    "exhausted-pool": (lambda _: "---\n".join(l4lb(n, frontend={"port": 80}, pool="tiny", backend=backends())
                                              for n in ("tiny-2", "tiny-3")),
                       ("L4LB tiny-3", "spec.pool", "IPPool tiny has no free IPv4 address")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_names_the_field_and_changes_nothing(applied: Applied, case: str) -> None:
    gl = applied.gl
    extra, fragments = CASES[case]
    ruleset, state = gl.ruleset(), gl.state_text()
    assert "203.0.113.10" in ruleset  # the good configuration is there to be kept
    out = gl.apply(config(*GOOD_DOCS, extra(applied.auto_vip)))
    assert out.code == 2, out.output
    for fragment in fragments:
        assert fragment in out.stderr, f"{fragment!r} not in:\n{out.stderr}"
    assert gl.ruleset() == ruleset
    assert gl.state_text() == state


def test_plan_of_bad_input_exits_2_too(applied: Applied) -> None:
    gl = applied.gl
    ruleset = gl.ruleset()
    out = gl.plan(config(*GOOD_DOCS, x(frontend={"ip": "203.0.113.11", "port": 0})))
    assert out.code == 2 and "L4LB x: spec.frontend.port" in out.stderr, out.output
    assert gl.ruleset() == ruleset


def test_the_good_configuration_still_serves(applied: Applied) -> None:
    """After all the rejected files: the first apply's VIPs still answer."""
    lab: Lab = applied.gl.lab
    for vip in ("203.0.113.10", applied.auto_vip):
        result = lab.connect_many("tcp", vip, 80, 6, timeout=5.0)
        assert result.ok == 6, result.failures
