"""examples/recipes: every recipe validates (offline: no weights, no network). Planning a 1B recipe takes
minutes of CPU on fake tensors, too long for CI: the planned memory is in docs/plan.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from automodel.cli import main
from plan_helpers import ROOT

RECIPES = sorted((ROOT / "examples/recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in RECIPES}
    assert {"llama3.2-1b-full", "llama3.2-1b-lora", "llama3.1-8b-fsdp2", "llama3.2-1b-fp8", "llama3.1-8b-slurm-2node"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(recipe: Path, capsys):
    try:
        main(["validate", str(recipe)])
    except SystemExit as e:
        assert e.code == 0, capsys.readouterr().err
    out = capsys.readouterr()
    assert ": OK (" in out.out + out.err
