"""pydantic's errors in our words: `<field path>: <problem>`, never pydantic's wording or URLs."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
from pydantic import BaseModel
from pydantic_core import ErrorDetails

from gatelb.sources.schema import OBJECT_FORM, STRING_FORM, show

TAGS = frozenset({STRING_FORM, OBJECT_FORM})

_TYPE_NAMES = {
    "int_type": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "float_type": "a number",
}


def field_path(loc: tuple[int | str, ...]) -> str:
    """('spec', 'backend', 1, '<object>', 'address') -> 'spec.backend[1].address'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in TAGS:
            out += f".{part}" if out else part
    return out


def _choices(expected: str) -> list[str]:
    return re.findall(r"'([^']*)'", expected)


def _literal(err: ErrorDetails) -> str:
    options = _choices(str((err.get("ctx") or {}).get("expected", "")))
    if len(options) == 1:
        return f"expected {options[0]}, got {show(err['input'])}"
    return f"{show(err['input'])} is not one of {', '.join(options)}"


def _too_short(err: ErrorDetails) -> str:
    need = (err.get("ctx") or {}).get("min_length", 1)
    return f"needs at least {need} {'entry' if need == 1 else 'entries'}"


_BY_TYPE: dict[str, Callable[[ErrorDetails], str]] = {
    "missing": lambda err: "required",
    "extra_forbidden": lambda err: "unknown field",
    "literal_error": _literal,
    "too_short": _too_short,
    "gatelb": lambda err: str((err.get("ctx") or {})["problem"]),
}


def problem_text(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind in _BY_TYPE:
        return _BY_TYPE[kind](err)
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {show(err['input'])}"
    # Anything we did not foresee still names the field and the value, in neutral words.
    return f"invalid value {show(err['input'])}"


def translate(exc: pydantic.ValidationError) -> Iterator[tuple[str, str]]:
    """(field path, problem) for every error, in pydantic's (field declaration) order."""
    root = _model_named(exc.title)
    for err in exc.errors(include_url=False):
        text = problem_text(err)
        if err["type"] == "extra_forbidden" and root is not None:
            text += _did_you_mean(root, err["loc"])
        yield field_path(err["loc"]), text


def _model_named(name: str) -> type[BaseModel] | None:
    todo: list[type[BaseModel]] = [BaseModel]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's annotation can hold (through Optional, list, dict, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _did_you_mean(root: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """", did you mean 'requestPath'?" for a misspelt field, from the fields that are valid at
    that place (the models the path leads to); "" when nothing is close."""
    models = [root]
    for part in loc[:-1]:
        if isinstance(part, int) or part in TAGS:
            continue
        models = [m for model in models for name, f in model.model_fields.items()
                  if (f.alias or name) == part for m in _models_in(f.annotation)]
    names = sorted({f.alias or n for m in models for n, f in m.model_fields.items()})
    typo = str(loc[-1]) if loc else ""
    close = difflib.get_close_matches(typo, names, n=1, cutoff=0.7) or [
        n for n in names if n.lower() == typo.lower().replace("_", "").replace("-", "")]
    return f", did you mean {close[0]!r}?" if close else ""
