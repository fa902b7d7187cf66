"""The hand-written key tables of docs/config.md and docs/data.md list exactly the keys that the generated
reference (docs/gen_config_reference.py, from the factories' signatures) has for the same component: a key
added to a factory and forgotten in the pages (or a documented key that no longer exists) fails here."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from automodel.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
KIND = {"model": "model_loaders", "dataset": "datasets", "loss": "losses", "optimizer": "optimizers",
        "lr_scheduler": "lr_schedulers", "checkpoint": "checkpointers", "launcher": "launchers"}


def _reference_keys(kind: str, name: str) -> set[str]:
    """The keys docs/config-reference.md lists for this component (the generator's own function)."""
    spec = importlib.util.spec_from_file_location("gen_config_reference", DOCS / "gen_config_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    factory = load_plugins().registry.get(kind, name).resolve()
    return {k for k, _, _ in gen._keys(kind, factory)}


def _tables(text: str) -> dict[str, set[str]]:
    """heading -> the backticked keys in the first column of the table right under it."""
    out: dict[str, set[str]] = {}
    heading = None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            continue
        if heading and line.startswith("| `"):
            first = line.split("|")[1]
            out.setdefault(heading, set()).update(re.findall(r"`([a-z_][a-z0-9_]*)`", first))
    return out


def _component_tables(page: Path) -> list[tuple[str, str, str, set[str]]]:
    """(heading, kind, name, keys) for every table under a heading like ### `dataset: {name: instruction}`."""
    found = []
    for heading, keys in _tables(page.read_text()).items():
        m = re.fullmatch(r"`(\w+): \{name: (\w+)\}`", heading)
        if m and m.group(1) in KIND:
            found.append((heading, KIND[m.group(1)], m.group(2), keys))
    return found


def test_config_md_component_tables_list_the_factory_keys():
    tables = _component_tables(DOCS / "config.md")
    assert {(k, n) for _, k, n, _ in tables} >= {("model_loaders", "hf"), ("datasets", "instruction")}
    for heading, kind, name, keys in tables:
        expected = _reference_keys(kind, name)
        assert keys == expected, (f"docs/config.md {heading}: missing {sorted(expected - keys)}, "
                                  f"not keys of the factory {sorted(keys - expected)}")


@pytest.mark.parametrize("name, heading", [("instruction", "`instruction`: prompt/response pairs"),
                                           ("chat", "`chat`: conversations")])
def test_data_md_tables_with_the_shared_options_list_the_factory_keys(name: str, heading: str):
    tables = _tables((DOCS / "data.md").read_text())
    shared = tables["Shared options (`instruction`, `chat`, `squad`)"]
    keys = tables[heading] | shared
    expected = _reference_keys("datasets", name)
    assert keys == expected, (f"docs/data.md {heading} + shared options: missing {sorted(expected - keys)}, "
                              f"not keys of the factory {sorted(keys - expected)}")
