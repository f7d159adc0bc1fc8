"""What the kube-apiserver does with a custom resource's body before storing it, per its CRD's
structural OpenAPI v3 schema, in the real server's order and with its messages:

1. decoding: fields the schema does not declare are, with ``fieldValidation=Strict``, a 400
   ``<Kind> in version "<v>" cannot be handled as a <Kind>: strict decoding error: unknown field "spec.x"``;
   with ``Warn`` or ``Ignore`` they are pruned (Warn adds a warning);
2. defaulting: ``default`` of every absent property whose parent object is present;
3. validation: a 422 ``<Kind>.<group> "<name>" is invalid: spec.frontend.port: Invalid value: ...``
   (the field path, the real server's wording for type, enum, required, bounds and lengths).

``apiVersion``, ``kind`` and ``metadata`` at the root are the server's own (ObjectMeta), not the schema's.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import jsonschema

Obj = dict[str, Any]
ROOT_FIELDS = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class Invalid:
    """One field error: a cause of a 422."""

    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, FieldValueTooLong, ...
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _join(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else key


def unknown_fields(schema: Obj, value: Any, path: str = "", root: bool = True) -> list[str]:
    """Paths of the fields in `value` that `schema` does not declare (what strict decoding rejects)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") is True:
        return []
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if root and key in ROOT_FIELDS:
                continue
            here = _join(path, key)
            if props is not None and key in props:
                out += unknown_fields(props[key], sub, here, False)
            elif isinstance(extra, dict):
                out += unknown_fields(extra, sub, here, False)
            elif extra is True:
                continue
            else:
                out.append(here)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += unknown_fields(schema["items"], item, _join(path, i), False)
    return out


def prune(schema: Obj, value: Any, root: bool = True) -> Any:
    """`value` without the fields the schema does not declare (what the server stores otherwise)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") is True:
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out = {}
        for key, sub in value.items():
            if root and key in ROOT_FIELDS:
                out[key] = sub
            elif props is not None and key in props:
                out[key] = prune(props[key], sub, False)
            elif isinstance(extra, dict):
                out[key] = prune(extra, sub, False)
            elif extra is True:
                out[key] = sub
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(schema["items"], v, False) for v in value]
    return value


def apply_defaults(schema: Obj, value: Any) -> Any:
    """Fill `default` of absent properties, inside objects that are present (as the server does)."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 (structural, with Kubernetes extensions) as a JSON Schema for `jsonschema`."""
    if isinstance(node, list):
        return [to_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("nullable", "default", "description")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, default=str)


def _invalid(err: jsonschema.ValidationError) -> Invalid:
    field = _path(err.absolute_path)
    v, want, got = err.validator, err.validator_value, err.instance
    if v == "required":
        missing = next((r for r in want if isinstance(got, dict) and r not in got), "?")
        return Invalid(_join(field, missing), "FieldValueRequired", "Required value")
    if v == "enum":
        supported = ", ".join(_shown(x) for x in want)
        return Invalid(field, "FieldValueNotSupported",
                       f"Unsupported value: {_shown(got)}: supported values: {supported}")
    if v == "type" or v == "anyOf":
        kind = want if v == "type" else "integer or string"
        if isinstance(kind, list):
            kind = next(k for k in kind if k != "null")
        return Invalid(field, "FieldValueTypeInvalid",
                       f"Invalid value: {_shown(got)}: {field} in body must be of type {kind}: {_shown(got)}")
    if v in ("maxLength",):
        return Invalid(field, "FieldValueTooLong", f"Too long: may not be more than {want} bytes")
    words = {"minimum": f"should be greater than or equal to {want}",
             "maximum": f"should be less than or equal to {want}",
             "minItems": f"should have at least {want} items",
             "maxItems": f"should have at most {want} items",
             "minLength": f"should be at least {want} chars long",
             "pattern": f"should match '{want}'"}
    shown = len(got) if v in ("minItems", "maxItems") else _shown(got)
    text = words.get(str(v), err.message)
    return Invalid(field, "FieldValueInvalid", f"Invalid value: {shown}: {field} in body {text}")


def validate(schema: Obj, value: Obj) -> list[Invalid]:
    """Every field error of `value` (sorted by path, as the server lists them)."""
    checker = jsonschema.Draft4Validator(to_jsonschema(schema))
    errors = [_invalid(e) for e in checker.iter_errors(value)]
    return sorted(errors, key=lambda e: e.field)
