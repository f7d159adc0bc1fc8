"""The CRDs in deploy/ accept the documented examples, reject bad ones, and match the pydantic schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gatelb.sources.schema import IPPoolSpec, L4LBSpec
from gatelb.sources.schema_dns import DNSProviderSpec

ROOT = Path(__file__).resolve().parents[2]
CRDS = {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "crds.yaml").read_text())}


def schema(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def strict(node: Any) -> Any:
    """The schema as the API server applies it to our objects: unknown fields are pruned there;
    here they are rejected (like gatelb's own extra="forbid"), so a typo in an example shows."""
    node = copy.deepcopy(node)
    if isinstance(node, dict):
        if "properties" in node and node.get("x-kubernetes-preserve-unknown-fields") is not True:
            node["additionalProperties"] = False
        if node.get("nullable"):
            node["type"] = [node["type"], "null"]
        return {k: strict(v) for k, v in node.items()}
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def validate(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, strict(schema(doc["kind"])))


def walk(node: Any) -> list[dict[str, Any]]:
    out = []
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            out += walk(v)
    elif isinstance(node, list):
        for v in node:
            out += walk(v)
    return out


def test_structural_schema_rules() -> None:
    for kind in CRDS:
        for node in walk(schema(kind)):
            assert "$ref" not in node, kind
            assert not ("properties" in node and "additionalProperties" in node), kind
            if "properties" in node or "items" in node:
                assert node.get("type") in ("object", "array"), (kind, node)


@pytest.mark.parametrize("path", ["examples/gateway.yaml"])
def test_documented_examples_validate(path: str) -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d]
    assert {d["kind"] for d in docs} == {"IPPool", "L4LB"}
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize(("kind", "spec", "needle"), [
    ("L4LB", {"frontend": {"port": 70000}}, "70000"),
    ("L4LB", {"frontend": {"port": 80}, "protocol": "sctp"}, "sctp"),
    ("L4LB", {"frontend": {"port": 80}, "algorithm": "fastest"}, "fastest"),
    ("L4LB", {"frontnd": {"port": 80}}, "frontend"),
    ("IPPool", {"addresses": []}, "[]"),
    ("IPPool", {"addresses": ["203.0.113.0/28"], "serviceAllocation": {"priority": "high"}}, "high"),
])
def test_bad_documents_are_rejected(kind: str, spec: dict[str, Any], needle: str) -> None:
    doc = {"apiVersion": "gatelb.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError) as err:
        validate(doc)
    assert needle in str(err.value.message)


def test_crd_fields_match_the_pydantic_schema() -> None:
    for kind, model in (("IPPool", IPPoolSpec), ("L4LB", L4LBSpec), ("DNSProvider", DNSProviderSpec)):
        ours = set(model.model_json_schema(by_alias=True)["properties"])
        crd = set(schema(kind)["properties"]["spec"]["properties"])
        assert crd == ours, kind


def test_l4lb_has_status_subresource_and_printer_columns() -> None:
    version = CRDS["L4LB"]["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["State"] == ".status.state" and columns["Frontend"] == ".status.frontendIP"
    assert "Addresses" in {c["name"] for c in CRDS["IPPool"]["spec"]["versions"][0]["additionalPrinterColumns"]}


# --- the announcement kinds (docs/announce.md) --------------------------------------------------

ANNOUNCE = ("BFDProfile", "BGPPeer", "BGPAdvertisement", "L2Advertisement")
# Kubernetes-only fields, worked out against the cluster before the standalone parser runs
# (sources/kubernetes/config.py): the CRD has them, the pydantic schema rejects them.
KUBE_ONLY = {"BGPPeer": {"nodeSelectors", "passwordSecret"},
             "BGPAdvertisement": {"nodeSelectors", "ipAddressPoolSelectors"},
             "L2Advertisement": {"nodeSelectors", "ipAddressPoolSelectors"}}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return defs[ref.rsplit("/", 1)[1]] if ref else node


@pytest.mark.parametrize("kind", ANNOUNCE)
def test_announce_crd_fields_match_the_pydantic_schema(kind: str) -> None:
    from gatelb.sources.schema_announce import SPECS

    ours = SPECS[kind].model_json_schema(by_alias=True)
    crd = schema(kind)["properties"]["spec"]["properties"]
    assert set(crd) == set(ours["properties"]) | KUBE_ONLY.get(kind, set())
    assert set(schema(kind)["properties"]["spec"].get("required", [])) == set(ours.get("required", []))
    for name, field in ours["properties"].items():  # the same bounds, so the API server rejects early
        field = _resolve(next(iter(field.get("anyOf", [field]))), ours.get("$defs", {}))
        for bound in ("minimum", "maximum"):
            if bound in field:
                assert crd[name].get(bound) == field[bound], (kind, name, bound)


def test_announce_crds_are_cluster_scoped_and_readable_by_the_service_account() -> None:
    rbac = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d["kind"] == "ClusterRole"]
    rules = [(g, r, tuple(rule["verbs"])) for rule in rbac[0]["rules"] for g in rule["apiGroups"]
             for r in rule["resources"]]
    for kind in ANNOUNCE:
        spec = CRDS[kind]["spec"]
        assert spec["scope"] == "Cluster", kind
        assert ("gatelb.io", spec["names"]["plural"], ("list", "watch")) in rules, kind
        assert ("metallb.io", spec["names"]["plural"], ("list", "watch")) in rules, kind
    assert ("metallb.io", "ipaddresspools", ("list", "watch")) in rules


def test_announce_example_of_the_docs_validates() -> None:
    """The two-gateway example of docs/announce.md, applied as CRD objects."""
    text = (ROOT / "docs" / "announce.md").read_text()
    block = text.split("## A complete two-gateway example", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    docs = [d for d in yaml.safe_load_all(block) if d]
    assert {d["kind"] for d in docs} >= set(ANNOUNCE) - {"L2Advertisement"}
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize(("kind", "spec", "needle"), [
    ("BGPPeer", {"myASN": 0, "peerASN": 64500, "peerAddress": "192.0.2.1"}, "0"),
    ("BGPPeer", {"myASN": 64512, "peerAddress": "192.0.2.1"}, "peerASN"),
    ("BGPPeer", {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1", "peerPort": 20000}, "20000"),
    ("BGPPeer", {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1", "passwordSecret": {}}, "name"),
    ("BFDProfile", {"receiveInterval": 5}, "5"),
    ("BFDProfile", {"detectMultiplier": 256}, "256"),
    ("BGPAdvertisement", {"aggregationLength": 33}, "33"),
    ("BGPAdvertisement", {"nodeSelectors": [{"matchExpressions": [{"key": "a", "operator": "Is"}]}]}, "Is"),
    ("L2Advertisement", {"interfaces": ["a-very-long-interface-name"]}, "long"),
])
def test_bad_announce_documents_are_rejected(kind: str, spec: dict[str, Any], needle: str) -> None:
    doc = {"apiVersion": "gatelb.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError) as err:
        validate(doc)
    assert needle in str(err.value.message)
