"""examples/lora and examples/chat as documented, shortened to a few steps: the LoRA example starts from the
quickstart's export in its own run directory and its adapter loads with plain peft on the base it names;
the chat example's export carries the chat template it was trained with, and generates with it alone
(also after `automodel export` from a checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from automodel.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["step_scheduler.max_steps=3", "step_scheduler.log_every_steps=1", "step_scheduler.val_every_steps=3",
         "step_scheduler.global_batch_size=8", "step_scheduler.local_batch_size=4", "lr_scheduler.warmup_steps=1"]


def _python(script: Path, *args: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_lora_example_adapts_the_quickstart_export_and_peft_loads_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    base = tmp_path / "runs" / "quickstart" / "hf"  # stands in for the quickstart's export
    shutil.copytree(tiny_model_dir, base)
    before = sorted(p.name for p in base.iterdir())
    out = run_cli("run", ROOT / "examples" / "lora" / "config.yaml", *SHORT, cwd=tmp_path)
    assert "lora: LoRA r=16 alpha=32" in out.stdout and "warning" not in out.stdout + out.stderr
    adapter = tmp_path / "runs" / "lora" / "hf"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve())  # absolute: loads from anywhere
    assert sorted(p.name for p in base.iterdir()) == before  # the base's run is left alone
    text = _python(ROOT / "examples" / "lora" / "generate.py", str(adapter), "10", cwd=ROOT)  # another directory
    assert f"base model (from {adapter}/adapter_config.json): {base.resolve()}" in text
    assert "with the adapter: exact match on 10 held-out words" in text and "adapter disabled: 'reverse " in text


def test_lora_on_the_quickstart_config_is_refused_with_the_way_out(tmp_path: Path) -> None:
    out = run_cli("run", ROOT / "examples" / "quickstart" / "config.yaml", "--dry-run",
                  "transforms=[{name: lora, r: 16, alpha: 32}]", cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "transforms.0: the base model is built from model.config (random weights) and LoRA freezes it" in out.stderr
    assert "examples/lora/config.yaml" in out.stderr and "Traceback" not in out.stderr


def test_chat_example_export_generates_with_its_saved_template(tmp_path: Path, tiny_model_dir: Path) -> None:
    template = (ROOT / "examples" / "chat" / "chat_template.jinja").read_text()
    shutil.copytree(tiny_model_dir, tmp_path / "runs" / "quickstart" / "hf")  # stands in for the quickstart's export
    run_cli("run", ROOT / "examples" / "chat" / "config.yaml", *SHORT, cwd=tmp_path)
    from transformers import AutoTokenizer

    run = tmp_path / "runs" / "chat"
    exported = tmp_path / "exported"
    run_cli("export", run, exported, cwd=tmp_path)  # from the checkpoint: the same template
    for hf in (run / "hf", exported):
        tok = AutoTokenizer.from_pretrained(hf)
        assert tok.chat_template == template, hf
        rendered = tok.apply_chat_template([{"role": "user", "content": "reverse abc"}], add_generation_prompt=True, tokenize=False)
        assert rendered == "<s>reverse abc\n"
    text = _python(ROOT / "examples" / "chat" / "generate.py", str(run / "hf"), "10", cwd=tmp_path)
    assert "<s>reverse " in text or "<s>s: you reverse words.\n" in text
    assert "exact match on the last turn of 10 held-out conversations" in text
