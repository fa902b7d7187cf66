"""The checkpointer with sharded (DTensor) state: FSDP2 on 2 processes -> consolidated HF export without
gathering, `automodel export` of the sharded checkpoint, and resuming it on 1 plain process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from automodel.testing import make_config, run_cli, tiny_model

pytest.importorskip("automodel_fsdp2", reason="the FSDP2 plugin (automodel-plugins/automodel-fsdp2) provides DTensor state")


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied-embeddings"])
def test_fsdp2_checkpoint_exports_and_resumes_on_one_process(tmp_path: Path, tied: bool) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model(tmp_path, tie_word_embeddings=tied)
    cfg = make_config(
        tmp_path, model_dir,
        step_scheduler={"global_batch_size": 8, "local_batch_size": 4, "max_steps": 4, "log_every_steps": 1, "ckpt_every_steps": 2},
        checkpoint={"keep_last": None, "export_hf": True, "save_final": True},
        parallel=[{"name": "fsdp2", "param_dtype": None, "reduce_dtype": None}],
        launcher={"name": "local", "nproc_per_node": 2},
    )
    run_cli("run", cfg, cwd=tmp_path)
    run = tmp_path / "run"
    step4 = run / "checkpoints" / "step_4"
    assert json.loads((step4 / "meta.json").read_text())["world_size"] == 2
    assert {"__0_0.distcp", "__1_0.distcp"} <= {p.name for p in step4.iterdir()}  # each rank wrote its shards
    hf = run / "hf"
    assert (hf / "model.safetensors.index.json").exists() and not (hf / "sharded").exists()

    out = tmp_path / "exported"
    run_cli("export", step4, out)
    ids = torch.tensor([[1, 20, 9, 26, 9, 22, 23, 9, 4, 12, 9, 16, 16, 19, 5]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(hf)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(out)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir)(ids).logits
    assert torch.equal(a, b) and not torch.equal(a, base)  # trained weights, identical both ways

    resumed = run_cli("run", cfg, "launcher.nproc_per_node=1", "parallel=[]", "step_scheduler.max_steps=6", "--allow-config-change",
                      cwd=tmp_path)
    assert "resuming a 2-process checkpoint with 1 process" in resumed.stdout and "loaded step 4" in resumed.stdout
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert steps == [1, 2, 3, 4, 5, 6]
