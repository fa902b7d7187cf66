"""examples/recipes: every recipe validates and is planned (offline: no weights, no network, no GPU).

CI plans each recipe at its own world size (fsdp2 over 8 or 16 ranks under the fake process group), with
its loss, transforms and dtype, on a 2-layer copy of its architecture and 256-token rows: the whole
pipeline of `automodel plan` runs for every recipe in seconds. The full-size plans (~20 s each on one
core) are the table in examples/recipes/README.md, written and checked by examples/recipes/plan_table.py
(`nox -s recipes`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
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


def _world_size(recipe: dict) -> int:
    launcher = recipe.get("launcher") or {}
    per_node = launcher.get("nproc_per_node", launcher.get("gpus_per_node", 1))  # local / slurm
    return int(per_node) * int(launcher.get("nodes", 1))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_plans(recipe: Path, tmp_path, capsys, monkeypatch):
    """`automodel plan` on the recipe (2 layers, 256 tokens): its layout, parameters and a sane breakdown."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = yaml.safe_load(recipe.read_text())
    arch = json.loads((recipe.parent / cfg["plan"]["model_config"].replace("${cfg_dir}/", "")).read_text())
    small = {**arch, "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(small))
    try:
        main(["plan", str(recipe), "--json", f"plan.model_config={tmp_path / 'config.json'}", "plan.seq_len=256",
              f"output_dir={tmp_path / 'run'}"])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    data = json.loads(capsys.readouterr().out)
    n = _world_size(cfg)
    assert data["world_size"] == n and (data["layout"] == "single process") == (n == 1), data["layout"]
    assert data["device"] == cfg["plan"]["device"] and data["fits"] is True
    bd = data["breakdown"]
    assert sum(bd.values()) == data["peak_bytes"] and bd["parameters"] > 0 and bd["activations"] > 0
    assert data["flops_per_step"] > 0 and not data["unsupported"], data["unsupported"]
    # the architecture's own parameter count (2 layers): embeddings + 2 blocks (+ lm_head when untied)
    lora = any(t.get("name") in ("lora", "qlora") for t in cfg.get("transforms") or [])
    assert (data["params_trainable"] < 0.1 * data["params_total"]) == lora
    if n > 1:  # fsdp2: each rank keeps 1/n of the optimizer state (AdamW: 2 values per parameter)
        bytes_per = {"bfloat16": 2, "float32": 4}[cfg["model"].get("dtype", "float32")]
        assert 0 < bd["optimizer"] <= 1.05 * 2 * data["params_trainable"] * bytes_per / n
