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
