"""End to end, through the real CLI: the quickstart trains, DDP over gloo matches one process,
gradient accumulation is exact, the export loads in transformers, lifecycle hooks fire in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from automodel.testing import make_config, read_metrics, run_cli

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart" / "config.yaml"
FEW_STEPS = ["step_scheduler.max_steps=6", "step_scheduler.log_every_steps=1", "step_scheduler.val_every_steps=3",
             "checkpoint.save_final=false"]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def quickstart_one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs1") / "run"
    proc = run_cli("run", QUICKSTART, f"output_dir={out}", *FEW_STEPS)
    return out, proc


def test_quickstart_trains_logs_and_exports(quickstart_one_process):
    out, proc = quickstart_one_process
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gb"):
        assert all(isinstance(r[key], float) and r[key] >= 0 for r in steps), key
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert "step 6/6 [####################]" in proc.stdout
    assert (out / "config.yaml").exists()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "hf")
    tok = AutoTokenizer.from_pretrained(out / "hf")
    ids = torch.tensor([[tok.bos_token_id] + tok.encode("reverse abc\n", add_special_tokens=False)])
    generated = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape == (1, ids.shape[1] + 4) or generated[0, -1] == tok.eos_token_id


def test_two_processes_ddp_match_one_process(quickstart_one_process, tmp_path):
    one, _ = quickstart_one_process
    two = tmp_path / "run2"
    proc = run_cli("run", QUICKSTART, f"output_dir={two}", "launcher.nproc_per_node=2", *FEW_STEPS)
    assert "mesh dp_replicate=2" in proc.stdout and "32 x 1 accumulation x 2 data-parallel" in proc.stdout
    torch.testing.assert_close(losses(two), losses(one), rtol=1e-5, atol=1e-5)
    val = lambda d: [r["val_loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]  # noqa: E731
    torch.testing.assert_close(val(two), val(one), rtol=1e-5, atol=1e-5)


def test_fsdp2_from_scratch_matches_one_process(quickstart_one_process, tmp_path):
    """The quickstart model is built from a config: on meta and sharded (FSDP2's meta init) it must get
    the same initial weights as the plain model, hence the same losses."""
    pytest.importorskip("automodel_fsdp2", reason="the FSDP2 plugin (automodel-plugins/automodel-fsdp2)")
    one, _ = quickstart_one_process
    two = tmp_path / "fsdp2"
    proc = run_cli("run", QUICKSTART, f"output_dir={two}", "launcher.nproc_per_node=2", "parallel=[{name: fsdp2}]", *FEW_STEPS)
    assert "mesh dp_shard=2" in proc.stdout
    torch.testing.assert_close(losses(two), losses(one), rtol=1e-5, atol=1e-5)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_model_dir):
    runs = {}
    for local in (8, 2):
        d = tmp_path / f"local{local}"
        d.mkdir()
        cfg = make_config(d, tiny_model_dir, step_scheduler={"global_batch_size": 8, "local_batch_size": local, "max_steps": 4})
        run_cli("run", cfg, cwd=d)
        runs[local] = losses(d / "run")
    # different micro-batches pad differently and are summed in another order: fp32 rounding only
    torch.testing.assert_close(runs[2], runs[8], rtol=1e-5, atol=1e-5)


RECORDER = '''
import json
from automodel import hookimpl

def _log(ctx, event, **data):
    with open(ctx.output_dir / f"events.{ctx.rank}.jsonl", "a") as f:
        f.write(json.dumps({"event": event, **data}) + "\\n")

@hookimpl
def on_train_start(ctx, model):
    _log(ctx, "train_start", params=sum(p.numel() for p in model.parameters()))

@hookimpl
def on_step_end(ctx, step, metrics):
    _log(ctx, "step_end", step=step, has_loss="loss" in metrics)

@hookimpl
def on_validation_end(ctx, step, metrics):
    _log(ctx, "validation_end", step=step, val_loss=metrics["val_loss"])

@hookimpl
def on_checkpoint_saved(ctx, step, path):
    _log(ctx, "checkpoint_saved", step=step)

@hookimpl
def on_train_end(ctx, metrics):
    _log(ctx, "train_end")
'''


def test_lifecycle_hooks_fire_in_order_on_every_rank(tmp_path, tiny_model_dir):
    (tmp_path / "recorder.py").write_text(RECORDER)
    data = tmp_path / "val.jsonl"
    from automodel.testing import write_task_data

    write_task_data(data, n=16, seed=1)
    cfg = make_config(
        tmp_path, tiny_model_dir, plugins=["recorder"],
        validation_dataset={"name": "instruction", "path": str(data), "prompt": "question", "response": "answer"},
        step_scheduler={"global_batch_size": 8, "local_batch_size": 4, "max_steps": 4, "val_every_steps": 2,
                        "ckpt_every_steps": 2, "log_every_steps": 2},
    )
    run_cli("run", cfg, "launcher.nproc_per_node=2", cwd=tmp_path)
    for rank in (0, 1):
        events = [json.loads(line) for line in (tmp_path / "run" / f"events.{rank}.jsonl").read_text().splitlines()]
        names = [e["event"] for e in events]
        assert names == ["train_start", "step_end", "step_end", "validation_end", "checkpoint_saved",
                         "step_end", "step_end", "validation_end", "train_end"], names
        assert [e["has_loss"] for e in events if e["event"] == "step_end"] == [False, True, False, True]


FUSED = '''
import torch.nn.functional as F
from automodel import hookimpl

class HiddenCE:
    """Cross-entropy from hidden states and the lm_head weight: exercises the fused-loss path."""
    uses_hidden_states = True

    def __call__(self, *, labels, num_label_tokens, hidden_states=None, lm_head_weight=None, logits=None):
        assert logits is None and hidden_states is not None
        logits = hidden_states @ lm_head_weight.t()
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum") / num_label_tokens

@hookimpl
def register_losses(register):
    register("hidden_ce", HiddenCE)
'''


def test_hidden_state_losses_get_the_same_result_without_logits(tmp_path, tiny_model_dir):
    (tmp_path / "fused.py").write_text(FUSED)
    results = {}
    for loss in ("masked_ce", "hidden_ce"):
        d = tmp_path / loss
        d.mkdir()
        cfg = make_config(d, tiny_model_dir, loss={"name": loss}, plugins=["fused"])
        run_cli("run", cfg, cwd=tmp_path)
        results[loss] = losses(d / "run")
    torch.testing.assert_close(results["hidden_ce"], results["masked_ce"], rtol=1e-5, atol=1e-5)
