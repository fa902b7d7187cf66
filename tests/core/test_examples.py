"""Every command in examples/quickstart/README.md's "Variations" block is valid: `run --dry-run` checks
the config with its overrides and shows what would start, without training."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
from automodel.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "examples" / "quickstart" / "README.md"


def variations() -> list[str]:
    block = README.read_text().split("## Variations", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("automodel run ")]


def test_the_readme_lists_the_variations():
    assert len(variations()) >= 7


@pytest.mark.parametrize("command", variations(), ids=lambda c: c[len("automodel run examples/quickstart/config.yaml "):][:40])
def test_variation_dry_runs(command, tmp_path, tiny_model_dir):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    # the LoRA variation starts from the model the quickstart exported
    shutil.copytree(tiny_model_dir, tmp_path / "runs" / "quickstart" / "hf")
    args = shlex.split(command)[2:]
    out = run_cli("run", "--dry-run", *args, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dry run" in out.stdout
    assert not list(tmp_path.glob("runs/*/metrics.jsonl"))  # nothing trained
