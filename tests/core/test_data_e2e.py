"""The data pipeline through the real CLI: a streaming, packed chat run interrupted mid-run (SIGTERM ->
checkpoint -> exit 75) and resumed continues the uninterrupted run's losses exactly; a hellaswag
validation dataset reports accuracy in metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from automodel.launch import REQUEUE_EXIT_CODE
from automodel.testing import make_config, run_cli

DATA = Path(__file__).resolve().parents[1] / "data"
TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: "
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}</s>{{ '\\n' }}{% endgeneration %}"
    "{% else %}{{ m.content }}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
STEPS = 6
STOP_AT = 3

# a local plugin: SIGTERM to itself after step STOP_AT (the loop checkpoints and exits 75)
HOOKS = f'''
import os, signal
from automodel import hookimpl

@hookimpl
def on_step_end(ctx, step, metrics):
    if step == {STOP_AT} and os.environ.get("DATA_TEST_STOP"):
        os.kill(os.getpid(), signal.SIGTERM)
'''


def records(run_dir: Path) -> tuple[dict[int, float], list[dict]]:
    """(step -> loss, the last record wins after a resume; validation records)."""
    losses, val = {}, []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            losses[rec["step"]] = rec["loss"]
        if "val_accuracy" in rec:
            val.append(rec)
    return losses, val


def config(directory: Path, model_dir: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data_test_hooks.py").write_text(HOOKS)
    cache = str(directory / "hf-cache")
    return make_config(
        directory, model_dir,
        dataset={"name": "chat", "path": str(DATA / "chat.jsonl"), "chat_template": TEMPLATE, "streaming": True,
                 "packing": True, "max_length": 64, "cache_dir": cache},
        validation_dataset={"name": "hellaswag", "path": str(DATA / "hellaswag.jsonl"), "limit": 8, "cache_dir": cache},
        step_scheduler={"global_batch_size": 4, "local_batch_size": 2, "max_steps": STEPS, "log_every_steps": 1,
                        "val_every_steps": STEPS, "ckpt_every_steps": 2},
        checkpoint={"export_hf": False, "save_final": False},
    )


def test_streaming_packed_run_resumes_exactly_and_validation_reports_accuracy(tmp_path, tiny_model_dir):
    reference = config(tmp_path / "reference", tiny_model_dir)
    out = run_cli("run", reference, "--plugin", "data_test_hooks", cwd=reference.parent)
    assert "streaming" in out.stdout and "packed in order into rows of 64 tokens" in out.stdout
    want, val = records(reference.parent / "run")
    assert sorted(want) == list(range(1, STEPS + 1))
    assert len(val) == 1 and val[0]["step"] == STEPS and val[0]["val_examples"] == 8 and 0 <= val[0]["val_accuracy"] <= 1

    cfg = config(tmp_path / "resumed", tiny_model_dir)
    stopped = run_cli("run", cfg, "--plugin", "data_test_hooks", cwd=cfg.parent, env={"DATA_TEST_STOP": "1"}, check=False)
    assert stopped.returncode == REQUEUE_EXIT_CODE, stopped.stdout + stopped.stderr
    assert max(records(cfg.parent / "run")[0]) == STOP_AT
    resumed = run_cli("run", cfg, "--plugin", "data_test_hooks", cwd=cfg.parent)
    assert f"resumed from step {STOP_AT}" in resumed.stdout
    got, val2 = records(cfg.parent / "run")
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-6), f"step {step}: {got[step]} vs {want[step]}"
    assert val2[-1]["val_accuracy"] == pytest.approx(val[0]["val_accuracy"])
