"""The per-document cache gives exactly what load_text gives, and reuses unchanged documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatelb.model import ValidationErrors
from gatelb.sources.file.loader import CachedLoader, load_text, split_documents

EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "gateway.yaml").read_text()


def test_same_result_as_load_text_and_reuse() -> None:
    loader = CachedLoader()
    first = loader.load(EXAMPLE, "x")
    assert first == load_text(EXAMPLE, "x")
    assert loader.hits == 0
    changed = EXAMPLE.replace("198.51.100.12:8080", "198.51.100.14:8080", 1)
    assert changed != EXAMPLE
    second = loader.load(changed, "x")
    assert second == load_text(changed, "x")
    assert loader.misses == 1 and loader.hits >= 5
    # untouched documents are the very same objects, so later stages can skip them by identity
    same = {lb.name for lb in first.load_balancers} & {lb.name for lb in second.load_balancers}
    by_name = {lb.name: lb for lb in first.load_balancers}
    assert sum(1 for lb in second.load_balancers if lb.name in same and by_name[lb.name] is lb) >= 3


@pytest.mark.parametrize("bad", [
    "apiVersion: gatelb.io/v1alpha1\nkind: L4LB\nmetadata: {name: web}\nspec: {frontend: {port: 70000}}\n",
    "kind: [unclosed\n",
])
def test_errors_match_load_text(bad: str) -> None:
    text = EXAMPLE + "---\n" + bad
    loader = CachedLoader()
    loader.load(EXAMPLE, "x")
    with pytest.raises(ValidationErrors) as cached:
        loader.load(text, "x")
    with pytest.raises(ValidationErrors) as plain:
        load_text(text, "x")
    assert str(cached.value) == str(plain.value)


def test_duplicate_document_is_caught_even_when_cached() -> None:
    loader = CachedLoader()
    loader.load(EXAMPLE, "x")
    first_doc = split_documents(EXAMPLE)[1]
    with pytest.raises(ValidationErrors, match="already defined in document"):
        loader.load(EXAMPLE + "---\n" + first_doc, "x")


def test_split() -> None:
    assert split_documents("# c\n---\na: 1\n---\nb: 2\n...\n") == ["a: 1\n", "b: 2\n", ""]
    assert split_documents("a: 1\n") == ["a: 1\n"]
    assert split_documents("--- !tag\na: 1\n") is None
    assert split_documents("%YAML 1.2\n---\na: 1\n") is None


def test_old_module_paths_still_work() -> None:
    from gatelb.sources import cached, standalone
    from gatelb.sources.file import loader

    assert cached.CachedLoader is CachedLoader and standalone.load_text is load_text
    assert standalone._load_balancer is loader._load_balancer  # used by the Kubernetes source


def test_collect_matches_collect_text_and_reuses() -> None:
    from gatelb.sources.file.loader import collect_text

    loader = CachedLoader()
    first = loader.collect(EXAMPLE, "x")
    plain = collect_text(EXAMPLE, "x")
    assert first.lbs == plain.lbs and first.pools == plain.pools and not first.errors
    changed = EXAMPLE.replace("198.51.100.12:8080", "198.51.100.14:8080", 1)
    second = loader.collect(changed, "x")
    assert loader.misses == 1 and second.lbs == collect_text(changed, "x").lbs
    broken = EXAMPLE + "---\nkind: [unclosed\n"
    bad = loader.collect(broken, "x")
    assert [str(e) for e in bad.errors] == [str(e) for e in collect_text(broken, "x").errors]
    assert bad.errors and "malformed YAML" in str(bad.errors[0])
