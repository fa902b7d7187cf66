"""docs/hook_examples.py (the example under each hook in docs/hooks.md) is a working plugin: every hook has
an example, the conformance kit passes every component it registers, and one training run uses them all."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture()
def examples_importable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(DOCS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(DOCS), os.environ.get("PYTHONPATH", "")]))
    yield
    sys.modules.pop("hook_examples", None)


def test_every_hook_has_an_example_in_the_docs() -> None:
    sys.path.insert(0, str(DOCS))
    try:
        import gen_hooks
    finally:
        sys.path.remove(str(DOCS))
    missing = [name for name, _ in gen_hooks.specs() if name not in gen_hooks.examples()]
    assert not missing, f"add an example for {missing} to docs/hook_examples.py"
    assert "class SmoothedCE" in gen_hooks.render()  # the section, with the class it registers, is shown


def test_examples_pass_the_conformance_kit(examples_importable, tmp_path: Path, tiny_model_dir: Path) -> None:
    from automodel.testing import check_plugin

    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"example {i}"}) + "\n" for i in range(8)))
    report = check_plugin("hook_examples", local_modules=("hook_examples",), args={
        "tiny_random_llama": {"tokenizer": str(tiny_model_dir)},
        "jsonl_text": {"path": str(data)},
    })
    checked = "\n".join(report.checked)
    for name in ("tiny_random_llama", "freeze_embeddings", "max_norm_embeddings", "replicate", "jsonl_text", "smoothed_ce", "sgd_nesterov",
                 "step_decay", "keep_two", "niced", "csv"):
        assert name in checked, (name, str(report))


def test_one_run_uses_every_example(examples_importable, tmp_path: Path, tiny_model_dir: Path) -> None:
    from automodel.testing import make_config, read_metrics, run_cli

    cfg = make_config(
        tmp_path, tiny_model_dir,
        plugins=["hook_examples"],
        model={"name": "tiny_random_llama", "tokenizer": str(tiny_model_dir), "hidden_size": 32},
        transforms=[{"name": "max_norm_embeddings", "max_norm": 0.05}, {"name": "freeze_embeddings"}],
        loss={"name": "smoothed_ce", "smoothing": 0.05},
        optimizer={"name": "sgd_nesterov", "lr": 0.05},
        lr_scheduler={"name": "step_decay", "every": 2},
        checkpoint={"name": "keep_two"},
        launcher={"name": "niced", "niceness": 1},
        loggers=[{"name": "jsonl"}, {"name": "csv"}],
    )
    proc = run_cli("run", cfg, cwd=tmp_path)
    run = tmp_path / "run"
    assert "[example] training" in proc.stdout and "[example] checkpoint for step" in proc.stdout, proc.stdout
    losses = [r["loss"] for r in read_metrics(run)]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    rescaled = [r["max_norm_rescaled"] for r in read_metrics(run)]  # after_optimizer_step ran after every step
    assert rescaled[0] > 0 and rescaled[1:] == rescaled[:1] * 5, rescaled  # frozen: rescaled once, then all at 0.05
    assert (run / "metrics.csv").read_text().count("\n") == 7  # header + one row per step
    assert json.loads((run / "DONE").read_text())
    assert len(list((run / "checkpoints").glob("step_*"))) <= 2
    import click
    import hook_examples
    from click.testing import CliRunner

    group = click.Group()
    hook_examples.register_commands(cli=group)  # what an installed plugin's hook adds to `automodel`
    last = CliRunner().invoke(group, ["last-loss", str(run)])
    assert last.exit_code == 0 and float(last.output.strip()) == pytest.approx(losses[-1]), last.output

    bad = make_config(tmp_path, tiny_model_dir, name="bad.yaml", plugins=["hook_examples"],
                      loss={"name": "smoothed_ce", "smoothing": 1.5})
    proc = run_cli("validate", bad, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "loss.smoothing: must be in [0, 1), got 1.5" in proc.stderr, proc.stderr
